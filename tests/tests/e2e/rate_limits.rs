//! Rate limits: a connection's messages a second (dropped, then closed 1008 when it
//! keeps on), a tenant's pushes a second (HTTP 429 with `Retry-After`, a short UDP
//! reply), UDP replies no larger than the datagram for untrusted sources, and client
//! handshakes a second per address (429).

use std::time::Duration;

use anyhow::Result;
use relay_tests::{demo_config, http_with, raw_upgrade, udp, ws, Ended, TestRelay, WAIT};
use serde_json::json;

#[tokio::test]
async fn a_connection_over_its_message_rate_is_dropped_then_closed_1008() -> Result<()> {
    let relay = TestRelay::start(&demo_config(
        "max_messages_per_sec = 5\nrate_limit_close_secs = 2",
    ))
    .await?;
    let mut c = ws(relay.addr("ws"), "/").await?;
    for i in 0..30 {
        c.send(json!({"event": "join", "room": format!("r{i}")}))
            .await?;
    }
    let mut answers = 0;
    while let Ok(v) = c.recv_within(Duration::from_millis(300)).await {
        answers += usize::from(v["event"] == "joined");
    }
    // The burst (two seconds' worth: 10) and what refilled meanwhile; not 30.
    assert!((10..16).contains(&answers), "{answers} joins answered");
    assert!(relay.metric("messages_rate_limited") >= 14);
    assert_eq!(
        relay.metric("rate_limit_closes"),
        0,
        "dropping, not closing yet"
    );

    // Flooding on for more than rate_limit_close_secs: closed with 1008.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let mut sent = true;
        for _ in 0..10 {
            sent &= c.send(json!({"event": "join", "room": "x"})).await.is_ok();
        }
        if !sent || relay.metric("rate_limit_closes") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(c.ended_within(WAIT).await?, Ended::Close(1008));
    assert_eq!(relay.metric("rate_limit_closes"), 1);
    // Another connection is served as before.
    let mut d = ws(relay.addr("ws"), "/").await?;
    d.send(json!({"event": "join", "room": "y"})).await?;
    assert_eq!(d.recv().await?["event"], "joined");
    Ok(())
}

#[tokio::test]
async fn a_tenant_over_its_push_rate_gets_429_with_retry_after() -> Result<()> {
    let relay = TestRelay::start(&demo_config("max_pushes_per_sec = 3")).await?;
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..10 {
        let (status, headers, _) =
            http_with(relay.addr("http"), "GET", "/push?room=r&data=x", &[], b"").await?;
        match status {
            200 => ok += 1,
            429 => {
                limited += 1;
                let retry = headers
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                assert_eq!(retry, Some(1));
            }
            s => anyhow::bail!("unexpected status {s}"),
        }
    }
    assert!((3..=4).contains(&ok), "{ok} accepted");
    assert_eq!(ok + limited, 10);
    assert_eq!(relay.metric("pushes_rate_limited"), limited);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, _) =
        http_with(relay.addr("http"), "GET", "/push?room=r&data=x", &[], b"").await?;
    assert_eq!(status, 200, "accepted again once the bucket refilled");
    Ok(())
}

#[tokio::test]
async fn udp_replies_are_never_larger_than_the_datagram_from_untrusted_sources() -> Result<()> {
    let relay = TestRelay::start(&demo_config(
        "udp_allow = [\"127.0.0.2/32\"]\nudp_trusted = []\nmax_pushes_per_sec = 2",
    ))
    .await?;
    let to = relay.addr("udp");
    // One byte of garbage: the error reply would be bigger, so none goes out.
    let reply = udp("127.0.0.2", to, b"x", Duration::from_millis(300)).await?;
    assert_eq!(reply, None);
    assert_eq!(relay.metric("udp_replies_suppressed"), 1);
    // A real push is bigger than its answer: answered.
    let push = json!({"room": "r", "data": "a push big enough for its answer"}).to_string();
    let reply = udp("127.0.0.2", to, push.as_bytes(), WAIT).await?;
    assert_eq!(reply.as_deref(), Some(r#"{"ok":true,"online":0}"#));
    // Over the tenant's push rate: a short error reply.
    let reply = udp("127.0.0.2", to, push.as_bytes(), WAIT).await?;
    assert_eq!(reply.as_deref(), Some(r#"{"ok":false,"error":"rate"}"#));
    assert_eq!(relay.metric("pushes_rate_limited"), 1);
    Ok(())
}

#[tokio::test]
async fn handshakes_over_the_per_address_rate_get_429() -> Result<()> {
    let config = demo_config("").replacen(
        "name = \"ws\"\nkind = \"ws\"\n",
        "name = \"ws\"\nkind = \"ws\"\nmax_handshakes_per_ip_per_sec = 2\nrate_limit_exempt = []\n",
        1,
    );
    let relay = TestRelay::start(&config).await?;
    let (mut upgraded, mut limited) = (0, 0);
    for _ in 0..8 {
        let head = raw_upgrade(relay.addr("ws"), "/", "").await?;
        if head.starts_with("HTTP/1.1 101") {
            upgraded += 1;
        } else {
            assert!(head.starts_with("HTTP/1.1 429"), "{head}");
            assert!(
                head.to_ascii_lowercase().contains("retry-after: 1"),
                "{head}"
            );
            limited += 1;
        }
    }
    assert!((4..=5).contains(&upgraded), "{upgraded} upgraded");
    assert_eq!(relay.metric("handshakes_rate_limited"), limited);
    // Pushes are not handshakes: the http listener is not limited by it.
    let (status, _, _) =
        http_with(relay.addr("http"), "GET", "/push?room=r&data=x", &[], b"").await?;
    assert_eq!(status, 200);
    Ok(())
}
