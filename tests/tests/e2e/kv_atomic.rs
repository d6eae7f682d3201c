//! A plugin's counter kept in the tenant's key-value store loses no update when several
//! devices of one user change it at once, on one node (memory logged to sled) and on
//! three nodes of a cluster (Redis): `kv-incr`, and read, compute, `kv-compare-and-swap`.

use anyhow::{Context, Result};
use relay_tests::redis::RedisServer;
use relay_tests::{ws, TestRelay};
use serde_json::json;

use super::cluster::nodes_with;
use super::plugins::{listeners, plugin_tenant};

const DEVICES: usize = 4;
const EACH: usize = 100;

/// `DEVICES` devices of user `u`, spread over `nodes`, each sending `event` for `key`
/// `EACH` times, all at once; returns every value they were answered.
async fn count(nodes: &[&TestRelay], event: &str, key: &str) -> Result<Vec<i64>> {
    let mut tasks = Vec::new();
    for d in 0..DEVICES {
        let addr = nodes[d % nodes.len()].addr("ws");
        let (event, key) = (event.to_owned(), key.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut c = ws(addr, "/?user=u").await?;
            let mut got = Vec::with_capacity(EACH);
            for _ in 0..EACH {
                c.send(json!({"event": event, "key": key})).await?;
                let v = c.recv().await?;
                got.push(
                    v["value"]
                        .as_i64()
                        .with_context(|| format!("no value in {v}"))?,
                );
            }
            anyhow::Ok(got)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_unstable();
    Ok(all)
}

/// Every increment counted once: the answers are exactly 1..=DEVICES*EACH.
fn assert_all_counted(values: &[i64], what: &str) {
    let want: Vec<i64> = (1..=(DEVICES * EACH) as i64).collect();
    assert_eq!(
        values,
        want.as_slice(),
        "{what}: an increment was lost or repeated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_on_one_node_lose_nothing() -> Result<()> {
    let relay = TestRelay::start(&format!(
        "{}{}",
        plugin_tenant("t", "bundled:testkit", "plugin_instances = 4"),
        listeners("t")
    ))
    .await?;
    assert_all_counted(&count(&[&relay], "kv-incr", "hits").await?, "kv-incr");
    assert_all_counted(
        &count(&[&relay], "kv-cas-incr", "cas").await?,
        "compare-and-swap",
    );
    // Not a number: an error for the plugin, nothing written.
    let mut c = ws(relay.addr("ws"), "/?user=u").await?;
    c.send(json!({"event": "kv-set", "key": "text", "value": "abc"}))
        .await?;
    c.recv().await?;
    c.send(json!({"event": "kv-incr", "key": "text"})).await?;
    let v = c.recv().await?;
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a decimal integer")),
        "{v}"
    );
    c.send(json!({"event": "kv-get", "key": "text"})).await?;
    assert_eq!(c.recv().await?["value"], "abc");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_across_three_nodes_lose_nothing() -> Result<()> {
    let redis = RedisServer::start().await?;
    let config = format!(
        "{}{}",
        plugin_tenant("t", "bundled:testkit", "plugin_instances = 4"),
        listeners("t")
    );
    let n = nodes_with(&redis, 3, &config).await?;
    let nodes: Vec<&TestRelay> = n.iter().collect();
    assert_all_counted(&count(&nodes, "kv-incr", "hits").await?, "kv-incr");
    assert_all_counted(
        &count(&nodes, "kv-cas-incr", "cas").await?,
        "compare-and-swap",
    );
    Ok(())
}
