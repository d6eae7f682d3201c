//! Room history in a cluster: kept in Redis by the publishing node, recovered on any
//! node with nothing lost or repeated, even while the room keeps receiving.

use std::time::Duration;

use anyhow::{Context, Result};
use relay_tests::redis::RedisServer;
use relay_tests::sio::SioDriver;
use relay_tests::{demo_config, get, ws, TestRelay};
use serde_json::{json, Value};

use super::cluster::{nodes_with, push};

/// `room=<room>&data=<data>` through `node`; must be accepted.
async fn push_ok(node: &TestRelay, room: &str, data: &str) -> Result<()> {
    let (status, reply) = push(node, &format!("room={room}&data={data}")).await?;
    anyhow::ensure!(status == 200, "push {data}: {status} {reply}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_recovers_on_another_node_exactly_what_it_missed() -> Result<()> {
    let redis = RedisServer::start().await?;
    let n = nodes_with(&redis, 3, &demo_config("history_max = 5")).await?;
    let mut c = ws(n[0].addr("ws"), "/?user=ann").await?;
    c.send(json!({"event": "join", "room": "news"})).await?;
    assert_eq!(c.recv().await?["event"], "joined");
    push_ok(&n[1], "news", "a").await?;
    push_ok(&n[2], "news", "b").await?;
    let (a, b) = (c.recv().await?, c.recv().await?);
    assert_eq!((&a["data"], &b["data"]), (&json!("a"), &json!("b")));
    let last = b["offset"].as_str().context("offset field")?.to_owned();
    c.close(1000).await?;

    push_ok(&n[2], "news", "c").await?;
    push_ok(&n[0], "news", "d").await?;
    let mut back = ws(
        n[1].addr("ws"),
        &format!("/?user=ann&rooms=news&offset={last}"),
    )
    .await?;
    let (c1, d1) = (back.recv().await?, back.recv().await?);
    assert_eq!((&c1["data"], &d1["data"]), (&json!("c"), &json!("d")));
    push_ok(&n[0], "news", "e").await?;
    assert_eq!(back.recv().await?["data"], "e", "then live messages");
    back.expect_silence(Duration::from_millis(200)).await?;
    assert_eq!(n[1].metric("history_replayed"), 2);

    // A position from another history, or older than it keeps, is refused clearly.
    let mut other = ws(n[2].addr("ws"), "/?rooms=news&offset=deadbeef:1").await?;
    let r = other.recv().await?;
    assert_eq!(
        (&r["event"], &r["ok"], &r["reason"]),
        (&json!("recovery"), &json!(false), &json!("epoch changed"))
    );
    for i in 0..6 {
        push_ok(&n[1], "news", &format!("x{i}")).await?;
    }
    let mut late = ws(n[2].addr("ws"), &format!("/?rooms=news&offset={last}")).await?;
    let r = late.recv().await?;
    assert_eq!(
        (&r["event"], &r["reason"]),
        (&json!("recovery"), &json!("too old"))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recovering_while_the_room_keeps_receiving_loses_and_repeats_nothing() -> Result<()> {
    let redis = RedisServer::start().await?;
    let n = nodes_with(&redis, 2, &demo_config("history_max = 1000")).await?;
    const TOTAL: i64 = 600;
    let mut c = ws(n[0].addr("ws"), "/").await?;
    c.send(json!({"event": "join", "room": "feed"})).await?;
    assert_eq!(c.recv().await?["event"], "joined");
    let pusher_node = n[0].addr("http");
    let pusher = tokio::spawn(async move {
        for i in 0..TOTAL {
            let (s, b) = get(pusher_node, &format!("/push?room=feed&data={i}")).await?;
            anyhow::ensure!(s == 200, "push {i}: {s} {b}");
        }
        anyhow::Ok(())
    });
    // Every 40 messages, leave and come back on the other node (with the last offset
    // seen) while pushes go on: each message must arrive once, in order.
    let mut next = 0;
    let mut rejoins = 0;
    while next < TOTAL {
        let v = c.recv().await?;
        let i: i64 = v["data"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("unexpected message {v}"))?;
        assert_eq!(i, next, "after {rejoins} recoveries: {v}");
        next += 1;
        if i % 40 == 20 {
            let last = v["offset"].as_str().context("offset")?.to_owned();
            c.close(1000).await?;
            rejoins += 1;
            let node = &n[rejoins % 2];
            c = ws(node.addr("ws"), &format!("/?rooms=feed&offset={last}")).await?;
        }
    }
    pusher.await??;
    c.expect_silence(Duration::from_millis(200)).await?;
    assert_eq!(rejoins, 15);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_socket_io_client_recovers_its_offset_on_another_node() -> Result<()> {
    let redis = RedisServer::start().await?;
    let n = nodes_with(&redis, 2, super::history::SIO_HISTORY).await?;
    let url = |i: usize| format!("http://{}?rooms=lobby", n[i].addr("http"));
    let mut d = SioDriver::start().await?;
    d.connect("a", 4, &url(0), json!({})).await?;
    // The room is joined after the CONNECT; push once node 0 has subscribed to it.
    n[0].eventually("node 0 subscribed to the room", |r| {
        r.metric("cluster_subscriptions") == 1
    })
    .await?;
    push_ok(&n[1], "lobby", "one").await?;
    let m = d.next("a", "event", Some("message")).await?;
    let args = m["args"].as_array().cloned().unwrap_or_default();
    assert_eq!(args.len(), 2, "payload then offset: {m}");
    let offset = args[1].as_str().unwrap_or_default().to_owned();
    d.send(json!({"op": "close", "name": "a"})).await?;
    d.next("a", "disconnect", None).await?;

    push_ok(&n[0], "lobby", "two").await?;
    d.connect("b", 4, &url(1), json!({"auth": {"offset": offset}}))
        .await?;
    let m = d.next("b", "event", Some("message")).await?;
    assert_eq!(m["args"][0]["data"], "two", "{m}");
    assert!(
        !d.sees_within(Duration::from_millis(300), |v: &Value| v["name"] == "b"
            && v["event"] == "message")
            .await?,
        "only what was missed"
    );
    d.exit().await
}
