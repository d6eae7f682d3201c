//! WebSocket clients over ws and wss: rooms, users, exclusion, isolation, presence.

use std::time::Duration;

use anyhow::Result;
use relay_tests::*;
use serde_json::json;

#[tokio::test]
async fn ws_and_wss_clients_share_a_room() -> Result<()> {
    let relay = TestRelay::demo().await?;
    let mut plain = ws(relay.addr("ws"), "/?user=alice&rooms=lobby").await?;
    let mut tls = wss(
        relay.addr("wss"),
        "/?user=bob&rooms=lobby",
        &relay.ca_path(),
    )
    .await?;
    relay
        .eventually("both in lobby", |r| r.metric("connections_open") == 2)
        .await?;

    tls.send(json!({"event": "emit", "room": "lobby", "data": "hello over tls"}))
        .await?;
    let got = plain.recv().await?;
    assert_eq!(got["data"], "hello over tls");
    assert_eq!(got["user"], "bob");
    let echo = tls.recv().await?;
    assert_eq!(
        echo["data"], "hello over tls",
        "the sender is a member and gets it too"
    );
    Ok(())
}

#[tokio::test]
async fn room_fan_out_reaches_every_member_and_only_members() -> Result<()> {
    let relay = TestRelay::demo().await?;
    let mut members = Vec::new();
    for i in 0..50 {
        members.push(ws(relay.addr("ws"), &format!("/?user=u{i}&rooms=big")).await?);
    }
    let mut outsider = ws(relay.addr("ws"), "/?rooms=other").await?;
    let (status, body) = http(
        relay.addr("http"),
        "POST",
        "/push",
        Some("application/json"),
        json!({"room": "big", "data": {"n": 1}})
            .to_string()
            .as_bytes(),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body)?["online"],
        50
    );
    for m in &mut members {
        assert_eq!(
            m.recv().await?,
            json!({"event": "message", "data": {"n": 1}})
        );
    }
    outsider.expect_silence(Duration::from_millis(200)).await?;
    Ok(())
}

#[tokio::test]
async fn one_user_on_three_connections_gets_every_message_on_each() -> Result<()> {
    let relay = TestRelay::demo().await?;
    let mut phone = ws(relay.addr("ws"), "/?user=carol").await?;
    let mut laptop = ws(relay.addr("ws"), "/?user=carol").await?;
    let mut tablet = wss(relay.addr("wss"), "/?user=carol", &relay.ca_path()).await?;
    let mut other = ws(relay.addr("ws"), "/?user=dave").await?;
    relay
        .eventually("4 connections", |r| r.metric("connections_open") == 4)
        .await?;

    let (status, body) = http(
        relay.addr("http"),
        "GET",
        "/push?user=carol&data=ping",
        None,
        b"",
    )
    .await?;
    assert_eq!((status, body.as_str()), (200, r#"{"ok":true,"online":3}"#));
    for c in [&mut phone, &mut laptop] {
        assert_eq!(c.recv().await?["data"], "ping");
    }
    assert_eq!(tablet.recv().await?["data"], "ping");
    other.expect_silence(Duration::from_millis(200)).await?;

    // A client can address a user too (every device), excluding nobody.
    other
        .send(json!({"event": "emit", "user": "carol", "data": 7}))
        .await?;
    assert_eq!(phone.recv().await?["data"], 7);
    assert_eq!(laptop.recv().await?["data"], 7);
    assert_eq!(tablet.recv().await?["data"], 7);
    Ok(())
}

#[tokio::test]
async fn emit_excluding_sender() -> Result<()> {
    let relay = TestRelay::demo().await?;
    let mut a = ws(relay.addr("ws"), "/?rooms=r").await?;
    let mut b = ws(relay.addr("ws"), "/?rooms=r").await?;
    a.send(json!({"event": "emit", "room": "r", "data": "x", "exclude_self": true}))
        .await?;
    assert_eq!(b.recv().await?["data"], "x");
    a.expect_silence(Duration::from_millis(200)).await?;
    // Without exclusion the sender gets its own message.
    a.send(json!({"event": "emit", "room": "r", "data": "y"}))
        .await?;
    assert_eq!(a.recv().await?["data"], "y");
    assert_eq!(b.recv().await?["data"], "y");
    Ok(())
}

#[tokio::test]
async fn join_leave_presence_and_direct_connection_emit() -> Result<()> {
    let relay = TestRelay::demo().await?;
    let mut a = ws(relay.addr("ws"), "/?user=ann").await?;
    let mut b = ws(relay.addr("ws"), "/").await?;
    a.send(json!({"event": "join", "room": "r1"})).await?;
    assert_eq!(a.recv().await?, json!({"event": "joined", "rooms": ["r1"]}));
    b.send(json!({"event": "presence", "room": "r1"})).await?;
    let p = b.recv().await?;
    assert_eq!(p["count"], 1);
    assert_eq!(p["members"][0]["user"], "ann");
    let a_id = p["members"][0]["conn"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(a_id.len(), 20, "connection ids are 20 url-safe characters");

    b.send(json!({"event": "emit", "conn": a_id, "data": "direct"}))
        .await?;
    assert_eq!(a.recv().await?["data"], "direct");

    a.send(json!({"event": "leave", "room": "r1"})).await?;
    assert_eq!(a.recv().await?["event"], "left");
    let (_, body) = get(relay.addr("http"), "/presence?room=r1").await?;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body)?["count"],
        0
    );
    Ok(())
}

#[tokio::test]
async fn tenants_are_isolated() -> Result<()> {
    let relay = TestRelay::start(
        r#"
[[tenant]]
name = "a"
policy = "open"
[[tenant]]
name = "b"
policy = "open"
[[listener]]
name = "ws"
kind = "ws"
bind = "127.0.0.1:0"
routes = [{ path = "/a", tenant = "a" }, { path = "/b", tenant = "b" }]
[[listener]]
name = "http"
kind = "http"
bind = "127.0.0.1:0"
routes = [{ path = "/a", tenant = "a" }, { path = "/b", tenant = "b" }]
"#,
    )
    .await?;
    let mut in_a = ws(relay.addr("ws"), "/a?user=same&rooms=shared").await?;
    let mut in_b = ws(relay.addr("ws"), "/b?user=same&rooms=shared").await?;

    // Same room name, same user id, different tenants: nothing crosses.
    let (_, body) = http(
        relay.addr("http"),
        "POST",
        "/a/push",
        Some("application/x-www-form-urlencoded"),
        b"room=shared&data=for-a",
    )
    .await?;
    assert_eq!(body, r#"{"ok":true,"online":1}"#);
    assert_eq!(in_a.recv().await?["data"], "for-a");
    in_b.send(json!({"event": "emit", "user": "same", "data": "from-b"}))
        .await?;
    assert_eq!(in_b.recv().await?["data"], "from-b");
    in_a.expect_silence(Duration::from_millis(200)).await?;
    // A connection id from tenant a is unknown in tenant b.
    in_a.send(json!({"event": "whoami"})).await?;
    let a_id = in_a.recv().await?["conn"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (_, body) = http(
        relay.addr("http"),
        "GET",
        &format!("/b/push?conn={a_id}&data=sneak"),
        None,
        b"",
    )
    .await?;
    assert_eq!(body, r#"{"ok":true,"online":0}"#);
    in_a.expect_silence(Duration::from_millis(200)).await?;
    Ok(())
}

#[tokio::test]
async fn policy_rejection_reaches_the_client_as_http() -> Result<()> {
    let relay = TestRelay::start(&demo_config("settings = { require_user = true }")).await?;
    let resp = raw_upgrade(relay.addr("ws"), "/", "").await?;
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("x-relay-error: user required"),
        "{resp}"
    );
    assert!(
        resp.ends_with(r#"{"error":"a user query parameter is required"}"#),
        "{resp}"
    );
    assert_eq!(relay.metric("handshakes_rejected"), 1);
    // With a user the same policy accepts.
    let mut c = ws(relay.addr("ws"), "/?user=ok").await?;
    c.send(json!({"event": "whoami"})).await?;
    assert_eq!(c.recv().await?["user"], "ok");
    Ok(())
}

#[tokio::test]
async fn allowed_origins_are_enforced_for_browsers() -> Result<()> {
    let cfg = demo_config("").replace(
        "name = \"ws\"\nkind = \"ws\"",
        "name = \"ws\"\nkind = \"ws\"\nallowed_origins = [\"https://app.example\"]",
    );
    let relay = TestRelay::start(&cfg).await?;
    let resp = raw_upgrade(relay.addr("ws"), "/", "Origin: https://evil.example\r\n").await?;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.ends_with("origin not allowed\n"), "{resp}");
    let resp = raw_upgrade(relay.addr("ws"), "/", "Origin: https://app.example\r\n").await?;
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    // Non-browser clients send no Origin and are allowed.
    let resp = raw_upgrade(relay.addr("ws"), "/", "").await?;
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    Ok(())
}

#[tokio::test]
async fn a_malformed_sec_websocket_key_is_refused_with_400() -> Result<()> {
    let relay = TestRelay::demo().await?;
    // Not base64; base64 of 5 bytes; base64 of 32 bytes (RFC 6455 §4.2.1 wants 16).
    for key in [
        "not-base64!",
        "c2hvcnQ=",
        "dGhlIHNhbXBsZSBub25jZSB0aGF0IGlzIHRvbyBsb25n",
    ] {
        let resp = upgrade_with_key(relay.addr("ws"), key).await?;
        assert!(resp.starts_with("HTTP/1.1 400"), "key {key:?}: {resp}");
        assert!(resp.contains("Sec-WebSocket-Key"), "{resp}");
    }
    let ok = upgrade_with_key(relay.addr("ws"), "dGhlIHNhbXBsZSBub25jZQ==").await?;
    assert!(ok.starts_with("HTTP/1.1 101"), "{ok}");
    Ok(())
}

/// Send an upgrade request with this `Sec-WebSocket-Key`; the response head (and body).
async fn upgrade_with_key(addr: std::net::SocketAddr, key: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "GET /?user=k HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await??;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test]
async fn an_unmasked_client_frame_closes_the_connection_with_1002() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let relay = TestRelay::demo().await?;
    let mut s = tokio::net::TcpStream::connect(relay.addr("ws")).await?;
    let req =
        "GET /?user=u&rooms=r HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    s.write_all(req.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(WAIT, s.read_exact(&mut byte)).await??;
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // A text frame without the mask bit: {"event":"whoami"}.
    let payload = br#"{"event":"whoami"}"#;
    let mut frame = vec![0x81, payload.len() as u8];
    frame.extend_from_slice(payload);
    s.write_all(&frame).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let close = tokio::time::timeout(WAIT, async {
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                anyhow::bail!("closed without a close frame: {got:?}");
            }
            got.extend_from_slice(&buf[..n]);
            while let Some((op, body, used)) = server_frame(&got) {
                if op == 8 {
                    return Ok(u16::from_be_bytes([body[0], body[1]]));
                }
                assert_ne!(op, 1, "an unmasked frame must not be answered");
                got.drain(..used);
            }
        }
    })
    .await??;
    assert_eq!(close, 1002);
    Ok(())
}
