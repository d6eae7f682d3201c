//! Backend ingress: HTTP GET, form POST, JSON POST, limits and errors; UDP with allowlist.

use std::time::Duration;

use anyhow::Result;
use relay_tests::*;
use serde_json::{json, Value};

#[tokio::test]
async fn http_get_form_and_json_pushes_reach_the_room() -> Result<()> {
    let relay = TestRelay::demo().await?;
    let mut c = ws(relay.addr("ws"), "/?rooms=news").await?;
    let http_addr = relay.addr("http");

    let (s, b) = get(http_addr, "/push?room=news&event=flash&data=via%20get").await?;
    assert_eq!((s, b.as_str()), (200, r#"{"ok":true,"online":1}"#));
    assert_eq!(
        c.recv().await?,
        json!({"event": "flash", "data": "via get"})
    );

    let (s, _) = http(
        http_addr,
        "POST",
        "/push",
        Some("application/x-www-form-urlencoded"),
        b"room=news&data=via+form",
    )
    .await?;
    assert_eq!(s, 200);
    assert_eq!(c.recv().await?["data"], "via form");

    let body = json!({"rooms": ["news", "sport"], "data": {"score": [1, 2]}}).to_string();
    let (s, _) = http(
        http_addr,
        "POST",
        "/push",
        Some("application/json"),
        body.as_bytes(),
    )
    .await?;
    assert_eq!(s, 200);
    assert_eq!(c.recv().await?["data"], json!({"score": [1, 2]}));

    // A ws listener with http_ingress off answers plain HTTP with 426.
    let (s, _) = get(relay.addr("ws"), "/push?room=news&data=x").await?;
    assert_eq!(s, 426);
    assert!(relay.metric("http_requests") >= 3);
    Ok(())
}

#[tokio::test]
async fn bad_ingress_requests_get_clear_errors() -> Result<()> {
    let relay = TestRelay::start(&demo_config("").replace(
        "name = \"http\"\nkind = \"http\"",
        "name = \"http\"\nkind = \"http\"\nmax_body_bytes = 64",
    ))
    .await?;
    let a = relay.addr("http");
    let (s, b) = http(a, "POST", "/push", Some("application/json"), b"{not json").await?;
    assert_eq!(s, 400);
    assert!(b.contains("invalid JSON body"), "{b}");
    let (s, b) = get(a, "/push?data=x").await?;
    assert_eq!(s, 400);
    assert!(b.contains("need one of room"), "{b}");
    let (s, b) = get(a, "/push?room=r").await?;
    assert_eq!(
        (s, b.as_str()),
        (400, r#"{"ok":false,"error":"need \"data\""}"#)
    );
    let (s, _) = http(a, "DELETE", "/push", None, b"").await?;
    assert_eq!(s, 405);
    let (s, _) = get(a, "/nope").await?;
    assert_eq!(s, 404);
    let big = vec![b'a'; 65];
    let (s, b) = http(
        a,
        "POST",
        "/push",
        Some("application/x-www-form-urlencoded"),
        &big,
    )
    .await?;
    assert_eq!(s, 413);
    assert!(b.contains("exceeds 64 bytes"), "{b}");
    // The relay still serves after all that.
    let (s, b) = get(a, "/healthz").await?;
    assert_eq!((s, b.as_str()), (200, "ok\n"));
    Ok(())
}

#[tokio::test]
async fn metrics_endpoint_reports_counters() -> Result<()> {
    let relay = TestRelay::demo().await?;
    let _c = ws(relay.addr("ws"), "/").await?;
    relay
        .eventually("connected", |r| r.metric("connections_open") == 1)
        .await?;
    let (s, body) = get(relay.addr("http"), "/metrics").await?;
    assert_eq!(s, 200);
    assert!(body.contains("relay_connections_open 1"), "{body}");
    Ok(())
}

#[tokio::test]
async fn udp_push_from_allowed_source_and_denied_source() -> Result<()> {
    let relay = TestRelay::start(&demo_config("udp_allow = [\"127.0.0.2/32\"]")).await?;
    let mut c = ws(relay.addr("ws"), "/?user=u1").await?;
    let to = relay.addr("udp");
    let msg = json!({"user": "u1", "data": "over udp"}).to_string();

    // 127.0.0.1 is not in the allowlist: dropped, no reply, nothing delivered.
    let reply = udp("127.0.0.1", to, msg.as_bytes(), Duration::from_millis(300)).await?;
    assert_eq!(reply, None);
    c.expect_silence(Duration::from_millis(100)).await?;
    assert_eq!(relay.metric("udp_denied"), 1);

    // 127.0.0.2 is allowed: delivered, and the policy's answer comes back as a datagram.
    let reply = udp("127.0.0.2", to, msg.as_bytes(), WAIT).await?;
    assert_eq!(reply.as_deref(), Some(r#"{"ok":true,"online":1}"#));
    assert_eq!(c.recv().await?["data"], "over udp");

    // Garbage gets a clear error reply, and the listener keeps going.
    let reply = udp("127.0.0.2", to, b"\xffnot json", WAIT)
        .await?
        .unwrap_or_default();
    let v: Value = serde_json::from_str(&reply)?;
    assert_eq!(v["ok"], false);
    assert!(
        v["error"].as_str().unwrap_or_default().contains("not JSON"),
        "{reply}"
    );
    let reply = udp("127.0.0.2", to, msg.as_bytes(), WAIT).await?;
    assert_eq!(reply.as_deref(), Some(r#"{"ok":true,"online":1}"#));
    assert_eq!(c.recv().await?["data"], "over udp");
    Ok(())
}
