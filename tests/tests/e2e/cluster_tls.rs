//! A cluster over `rediss://`: a Redis that speaks TLS with a private CA and requires
//! client certificates. Nodes given the CA and a client certificate work as over plain
//! TCP; a node without the client certificate never gets in.

use std::time::Duration;

use anyhow::Result;
use relay_tests::redis::RedisServer;
use relay_tests::{demo_config, get, ws, TestRelay};
use serde_json::json;

/// A demo node on `redis`'s TLS port with these `tls_*` lines.
async fn tls_node(redis: &RedisServer, name: &str, tls: &str) -> Result<TestRelay> {
    let url = redis.tls_url().unwrap_or_default();
    let config = format!(
        "[cluster]\nredis = {url:?}\nnode = {name:?}\nnode_ttl_ms = 3000\ncommand_timeout_ms = 500\n{tls}\n{}",
        demo_config("")
    );
    TestRelay::start(&config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_share_a_redis_over_tls_with_a_private_ca_and_client_certificates() -> Result<()> {
    let redis = RedisServer::start_tls().await?;
    let f = |n: &str| redis.tls_file(n).display().to_string();
    let tls = format!(
        "tls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}",
        f("ca.pem"),
        f("client.pem"),
        f("client.key")
    );
    let mut n = Vec::new();
    for name in ["t0", "t1"] {
        let node = tls_node(&redis, name, &tls).await?;
        node.eventually("the node joined over TLS", |r| r.metric("cluster_up") == 1)
            .await?;
        n.push(node);
    }
    let mut m = ws(n[1].addr("ws"), "/").await?;
    m.send(json!({"event": "join", "room": "r"})).await?;
    assert_eq!(m.recv().await?["event"], "joined");
    let (status, body) = get(n[0].addr("http"), "/push?room=r&data=over-tls").await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"online\":1"), "{body}");
    assert_eq!(m.recv().await?["data"], "over-tls");

    // The CA alone is not enough: Redis wants a client certificate.
    let stranger = tls_node(&redis, "t2", &format!("tls_ca = {:?}", f("ca.pem"))).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(stranger.metric("cluster_up"), 0);
    let (status, body) = get(stranger.addr("http"), "/healthz").await?;
    assert_eq!(status, 503, "{body}");
    Ok(())
}
