//! Every close code relay sends, and the close handshake.

use std::time::Duration;

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use relay_tests::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn relay_with(extra: &str) -> Result<TestRelay> {
    TestRelay::start(&demo_config(extra)).await
}

fn whoami_padded(len: usize) -> String {
    let base = r#"{"event":"whoami","pad":""}"#;
    let pad = "x".repeat(len - base.len());
    format!(r#"{{"event":"whoami","pad":"{pad}"}}"#)
}

#[tokio::test]
async fn message_size_limit_1009() -> Result<()> {
    let relay = relay_with("max_message_bytes = 1024").await?;
    // Exactly the limit is fine.
    let mut c = ws(relay.addr("ws"), "/").await?;
    c.send_text(&whoami_padded(1024)).await?;
    assert_eq!(c.recv().await?["event"], "whoami");
    // One byte more in a single frame closes with 1009.
    c.send_text(&whoami_padded(1025)).await?;
    assert_eq!(c.ended_within(WAIT).await?, Ended::Close(1009));

    // The limit covers all fragments of a message together.
    let mut c = ws(relay.addr("ws"), "/").await?;
    c.ws.send(raw::data(true, &[b' '; 400], false)).await?;
    c.ws.send(raw::cont(&[b' '; 400], false)).await?;
    c.ws.send(raw::cont(&[b' '; 400], true)).await?;
    assert_eq!(c.ended_within(WAIT).await?, Ended::Close(1009));
    assert!(relay.metric("protocol_errors") >= 2);
    Ok(())
}

#[tokio::test]
async fn fragmented_message_is_reassembled() -> Result<()> {
    let relay = TestRelay::demo().await?;
    let mut c = ws(relay.addr("ws"), "/").await?;
    let msg = r#"{"event":"whoami"}"#.as_bytes();
    c.ws.send(raw::data(true, &msg[..5], false)).await?;
    // A ping between fragments is allowed and answered.
    c.ws.send(Message::Ping(b"between".to_vec())).await?;
    c.ws.send(raw::cont(&msg[5..11], false)).await?;
    c.ws.send(raw::cont(&msg[11..], true)).await?;
    let mut got_pong = false;
    loop {
        match tokio::time::timeout(WAIT, c.ws.next()).await? {
            Some(Ok(Message::Pong(p))) => {
                assert_eq!(p, b"between");
                got_pong = true;
            }
            Some(Ok(Message::Text(t))) => {
                assert_eq!(
                    serde_json::from_str::<serde_json::Value>(&t)?["event"],
                    "whoami"
                );
                break;
            }
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    assert!(
        got_pong,
        "ping answered with pong carrying the same payload"
    );
    Ok(())
}

#[tokio::test]
async fn invalid_utf8_1007() -> Result<()> {
    let relay = TestRelay::demo().await?;
    let mut c = ws(relay.addr("ws"), "/").await?;
    c.ws.send(raw::data(true, b"{\"a\":\"\xff\xfe\"}", true))
        .await?;
    assert_eq!(c.ended_within(WAIT).await?, Ended::Close(1007));
    // Split inside a multi-byte sequence is fine; a bad sequence across fragments is not.
    let mut c = ws(relay.addr("ws"), "/").await?;
    let ok = "{\"event\":\"whoami\",\"x\":\"é\"}".as_bytes();
    let cut = ok.iter().position(|&b| b == 0xc3).unwrap_or(0) + 1;
    c.ws.send(raw::data(true, &ok[..cut], false)).await?;
    c.ws.send(raw::cont(&ok[cut..], true)).await?;
    assert_eq!(c.recv().await?["event"], "whoami");
    c.ws.send(raw::data(true, b"\"abc\xc3", false)).await?;
    c.ws.send(raw::cont(b"\x28\"", true)).await?;
    assert_eq!(c.ended_within(WAIT).await?, Ended::Close(1007));
    Ok(())
}

#[tokio::test]
async fn protocol_errors_1002() -> Result<()> {
    let relay = TestRelay::demo().await?;
    let mut c = ws(relay.addr("ws"), "/").await?;
    c.ws.send(raw::cont(b"orphan", true)).await?;
    assert_eq!(c.ended_within(WAIT).await?, Ended::Close(1002));

    let mut c = ws(relay.addr("ws"), "/").await?;
    c.ws.send(raw::text_with_rsv1(b"{}")).await?;
    assert_eq!(c.ended_within(WAIT).await?, Ended::Close(1002));

    let mut c = ws(relay.addr("ws"), "/").await?;
    c.ws.send(raw::data(true, b"[", false)).await?;
    c.ws.send(raw::data(true, b"]", true)).await?;
    assert_eq!(
        c.ended_within(WAIT).await?,
        Ended::Close(1002),
        "new message inside a fragmented one"
    );

    // A close frame with a reserved code is answered with 1002.
    let mut c = ws(relay.addr("ws"), "/").await?;
    c.ws.send(raw::close(&1005u16.to_be_bytes())).await?;
    assert_eq!(c.ended_within(WAIT).await?, Ended::Close(1002));
    Ok(())
}

#[tokio::test]
async fn binary_is_unsupported_in_ws_json_1003() -> Result<()> {
    let relay = TestRelay::demo().await?;
    let mut c = ws(relay.addr("ws"), "/").await?;
    c.ws.send(Message::Binary(vec![1, 2, 3])).await?;
    assert_eq!(c.ended_within(WAIT).await?, Ended::Close(1003));
    Ok(())
}

#[tokio::test]
async fn client_close_is_echoed_and_policy_close_uses_its_code() -> Result<()> {
    let relay = TestRelay::demo().await?;
    let mut c = ws(relay.addr("ws"), "/").await?;
    c.close(4321).await?;
    assert_eq!(c.ended_within(WAIT).await?, Ended::Close(4321));

    let mut c = ws(relay.addr("ws"), "/").await?;
    c.send(json!({"event": "close", "code": 4001})).await?;
    assert_eq!(c.ended_within(WAIT).await?, Ended::Close(4001));
    // A code that may not be sent (1005) becomes 1008 rather than a malformed close frame.
    let mut c = ws(relay.addr("ws"), "/").await?;
    c.send(json!({"event": "close", "code": 1005})).await?;
    assert_eq!(c.ended_within(WAIT).await?, Ended::Close(1008));
    relay
        .eventually("all closed", |r| r.metric("connections_open") == 0)
        .await?;
    Ok(())
}

#[tokio::test]
async fn authentication_deadline_1008() -> Result<()> {
    let relay = relay_with("auth_timeout_ms = 300\nsettings = { require_login = true }").await?;
    let mut lazy = ws(relay.addr("ws"), "/").await?;
    let mut prompt = ws(relay.addr("ws"), "/").await?;
    lazy.send(json!({"event": "whoami"})).await?;
    assert_eq!(
        lazy.recv().await?["event"],
        "error",
        "deferred connections must log in first"
    );
    prompt
        .send(json!({"event": "login", "user": "pat"}))
        .await?;
    assert_eq!(prompt.recv().await?["ok"], true);

    assert_eq!(lazy.ended_within(WAIT).await?, Ended::Close(1008));
    // The one that authenticated is still served after the deadline.
    tokio::time::sleep(Duration::from_millis(400)).await;
    prompt.send(json!({"event": "whoami"})).await?;
    assert_eq!(prompt.recv().await?["user"], "pat");
    assert_eq!(relay.metric("auth_timeouts"), 1);
    Ok(())
}

#[tokio::test]
async fn idle_timeout_1001_and_pings_keep_live_clients() -> Result<()> {
    // No server pings: a silent client is cut after 300 ms.
    let relay = relay_with("idle_timeout_ms = 300\nping_interval_ms = 0").await?;
    let mut silent = ws(relay.addr("ws"), "/").await?;
    let started = std::time::Instant::now();
    assert_eq!(silent.ended_within(WAIT).await?, Ended::Close(1001));
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(relay.metric("idle_timeouts"), 1);

    // With server pings, a client that answers them (tungstenite does while reading) stays.
    let relay = relay_with("idle_timeout_ms = 400\nping_interval_ms = 100").await?;
    let mut live = ws(relay.addr("ws"), "/").await?;
    let pings = live.expect_silence(Duration::from_millis(1200)).await?;
    assert!(
        pings >= 3,
        "server pinged the silent client ({pings} pings)"
    );
    live.send(json!({"event": "whoami"})).await?;
    assert_eq!(live.recv().await?["event"], "whoami");
    assert_eq!(relay.metric("idle_timeouts"), 0);
    Ok(())
}
