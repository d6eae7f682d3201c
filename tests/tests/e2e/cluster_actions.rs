//! A plugin's actions on a connection that lives on another node of the cluster (join,
//! leave, close with an explicit `conn`) are carried out by that node, in order with
//! the publications before them: seed 001's kick of a device logged in elsewhere.

use std::time::Duration;

use anyhow::{Context, Result};
use relay_tests::redis::RedisServer;
use relay_tests::{ws, Client, Ended, WAIT};
use serde_json::{json, Value};
use tokio::net::TcpStream;

use super::cluster::nodes_with;
use super::plugins::{listeners, plugin_tenant};

/// Send `emit` to `room` from `from` until `to` receives it (the join travels through
/// Redis to the other node first).
async fn emit_until_received(
    from: &mut Client<TcpStream>,
    to: &mut Client<TcpStream>,
    room: &str,
) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        from.send(json!({"event": "emit", "room": room, "data": "hi"}))
            .await?;
        if let Ok(v) = to.recv_within(Duration::from_millis(200)).await {
            return Ok(v);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "never received");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn join_and_close_on_a_connection_of_another_node_are_carried_out_there() -> Result<()> {
    let redis = RedisServer::start().await?;
    let config = format!(
        "{}{}",
        plugin_tenant("t", "bundled:testkit", ""),
        listeners("t")
    );
    let n = nodes_with(&redis, 2, &config).await?;
    let mut a = ws(n[0].addr("ws"), "/?user=a").await?;
    a.send(json!({"event": "whoami"})).await?;
    let a_id = a.recv().await?["conn"]
        .as_str()
        .context("conn id")?
        .to_owned();
    let mut b = ws(n[1].addr("ws"), "/?user=b").await?;
    b.send(json!({"event": "join-other", "conn": a_id, "room": "x"}))
        .await?;
    let got = emit_until_received(&mut b, &mut a, "x").await?;
    assert_eq!(got, json!({"event": "message", "data": "hi"}));
    assert_eq!(n[0].metric("connections_open"), 1, "a stays where it was");

    b.send(json!({"event": "close-other", "conn": a_id}))
        .await?;
    match a.ended_within(WAIT).await? {
        Ended::Close(code) => assert_eq!(code, 4000),
        other => anyhow::bail!("ended without the close asked for: {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_001_a_device_logging_in_on_another_node_kicks_the_first() -> Result<()> {
    use crate::seed_swoole_push::{access_token, register, seed_config};
    let redis = RedisServer::start().await?;
    let n = nodes_with(&redis, 2, &seed_config()?).await?;
    register(&n[0], "9", "app", "t-9").await?;
    let token = access_token("9", "t-9", "app");
    let mut first = ws(
        n[0].addr("ws"),
        &format!("/?access_token={token}&token=device-aaaa"),
    )
    .await?;
    assert_eq!(first.recv().await?["code"], 200);
    let mut second = ws(
        n[1].addr("ws"),
        &format!("/?access_token={token}&token=device-bbbb"),
    )
    .await?;
    assert_eq!(
        second.recv().await?["message"],
        "授权成功,该账号已在别处登录，已被您踢下线。"
    );
    // As on one node: the 441 frame, then the close.
    assert_eq!(
        first.recv().await?,
        json!({"message": "该账号已在别处登录，您被踢下线", "type": "login", "code": 441, "data": []})
    );
    assert!(matches!(first.ended_within(WAIT).await?, Ended::Close(_)));
    Ok(())
}
