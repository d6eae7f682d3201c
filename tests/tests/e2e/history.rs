//! Room history with recovery: messages to rooms carry offsets; a client reconnecting
//! with its last offset gets exactly what it missed, or is told it cannot.

use std::time::Duration;

use anyhow::Result;
use relay_tests::sio::SioDriver;
use relay_tests::{demo_config, get, ws, TestRelay};
use serde_json::{json, Value};

async fn push(relay: &TestRelay, room: &str, data: &str) -> Result<()> {
    let (s, b) = get(
        relay.addr("http"),
        &format!("/push?room={room}&data={data}"),
    )
    .await?;
    anyhow::ensure!(s == 200, "push: {s} {b}");
    Ok(())
}

#[tokio::test]
async fn a_reconnecting_client_gets_exactly_what_it_missed() -> Result<()> {
    let relay = TestRelay::start(&demo_config("history_max = 5")).await?;
    let mut c = ws(relay.addr("ws"), "/?user=ann&rooms=news").await?;
    push(&relay, "news", "a").await?;
    push(&relay, "news", "b").await?;
    let a = c.recv().await?;
    let b = c.recv().await?;
    assert_eq!(
        (a["data"].clone(), b["data"].clone()),
        (json!("a"), json!("b"))
    );
    let last = b["offset"].as_str().unwrap_or_default().to_owned();
    assert!(last.contains(':'), "offset field: {b}");
    c.close(1000).await?;

    push(&relay, "news", "c").await?;
    push(&relay, "news", "d").await?;
    let mut back = ws(
        relay.addr("ws"),
        &format!("/?user=ann&rooms=news&offset={last}"),
    )
    .await?;
    let c1 = back.recv().await?;
    let d1 = back.recv().await?;
    assert_eq!(
        (c1["data"].clone(), d1["data"].clone()),
        (json!("c"), json!("d"))
    );
    push(&relay, "news", "e").await?;
    assert_eq!(back.recv().await?["data"], "e", "then live messages");
    back.expect_silence(Duration::from_millis(200)).await?;
    assert_eq!(relay.metric("history_replayed"), 2);

    // Offsets from another epoch, or older than the history keeps, cannot be served.
    let mut other = ws(relay.addr("ws"), "/?rooms=news&offset=deadbeef:1").await?;
    let r = other.recv().await?;
    assert_eq!(
        (r["event"].clone(), r["ok"].clone(), r["reason"].clone()),
        (json!("recovery"), json!(false), json!("epoch changed"))
    );
    for i in 0..6 {
        push(&relay, "news", &format!("x{i}")).await?;
    }
    let mut late = ws(relay.addr("ws"), &format!("/?rooms=news&offset={last}")).await?;
    let r = late.recv().await?;
    assert_eq!(
        (r["event"].clone(), r["reason"].clone()),
        (json!("recovery"), json!("too old"))
    );
    Ok(())
}

/// A Socket.IO tenant keeping room history, on a ws listener that also takes pushes.
pub(crate) const SIO_HISTORY: &str = r#"
[[tenant]]
name = "chat"
policy = "open"
profile = "socket.io"
history_max = 100

[[listener]]
name = "http"
kind = "ws"
http_ingress = true
bind = "127.0.0.1:0"
routes = [{ path = "/", tenant = "chat" }]
"#;

#[tokio::test]
async fn socket_io_clients_recover_with_the_offset_as_last_argument() -> Result<()> {
    let relay = TestRelay::start(SIO_HISTORY).await?;
    let url = format!("http://{}?rooms=lobby", relay.addr("http"));
    let mut d = SioDriver::start().await?;
    d.connect("a", 4, &url, json!({})).await?;
    push(&relay, "lobby", "one").await?;
    let m = d.next("a", "event", Some("message")).await?;
    let args = m["args"].as_array().cloned().unwrap_or_default();
    assert_eq!(args.len(), 2, "payload then offset: {m}");
    let offset = args[1].as_str().unwrap_or_default().to_owned();
    d.send(json!({"op": "close", "name": "a"})).await?;
    d.next("a", "disconnect", None).await?;

    push(&relay, "lobby", "two").await?;
    d.connect("b", 4, &url, json!({"auth": {"offset": offset}}))
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
