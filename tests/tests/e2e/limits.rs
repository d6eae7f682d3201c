//! Connection limits, slowloris guards, slow consumers and graceful shutdown.

use std::time::{Duration, Instant};

use anyhow::Result;
use relay_tests::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn ws_listener_with(extra: &str) -> String {
    demo_config("").replace(
        "name = \"ws\"\nkind = \"ws\"",
        &format!("name = \"ws\"\nkind = \"ws\"\n{extra}"),
    )
}

/// Read until the server closes the socket; returns how long that took.
async fn closed_after(mut s: TcpStream) -> Result<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await?;
    Ok(start.elapsed())
}

#[tokio::test]
async fn slowloris_request_head_and_tls_handshake_time_out() -> Result<()> {
    let cfg = demo_config("")
        .replace(
            "name = \"ws\"\nkind = \"ws\"",
            "name = \"ws\"\nkind = \"ws\"\nhandshake_timeout_ms = 300",
        )
        .replace(
            "name = \"wss\"\nkind = \"wss\"",
            "name = \"wss\"\nkind = \"wss\"\nhandshake_timeout_ms = 300",
        );
    let relay = TestRelay::start(&cfg).await?;
    let mut s = TcpStream::connect(relay.addr("ws")).await?;
    s.write_all(b"GET /?user=slow HTTP/1.1\r\nHost: x\r\n")
        .await?; // never finishes the head
    let t = closed_after(s).await?;
    assert!(
        t >= Duration::from_millis(250) && t < Duration::from_secs(5),
        "closed after {t:?}"
    );

    let s = TcpStream::connect(relay.addr("wss")).await?; // never starts TLS
    let t = closed_after(s).await?;
    assert!(
        t >= Duration::from_millis(250) && t < Duration::from_secs(5),
        "closed after {t:?}"
    );
    Ok(())
}

#[tokio::test]
async fn max_connections_per_listener() -> Result<()> {
    let relay = TestRelay::start(&ws_listener_with("max_connections = 2")).await?;
    let a = ws(relay.addr("ws"), "/").await?;
    let _b = ws(relay.addr("ws"), "/").await?;
    let third = ws(relay.addr("ws"), "/").await;
    let err = format!(
        "{:#}",
        third
            .err()
            .ok_or_else(|| anyhow::anyhow!("third connection was accepted"))?
    );
    assert!(err.contains("503"), "{err}");
    assert_eq!(relay.metric("connections_refused"), 1);
    drop(a);
    // The slot frees when the first connection's socket closes.
    let deadline = Instant::now() + WAIT;
    loop {
        match ws(relay.addr("ws"), "/").await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[tokio::test]
async fn max_connections_per_ip() -> Result<()> {
    let relay = TestRelay::start(&ws_listener_with("max_connections_per_ip = 1")).await?;
    let _a = ws_from("127.0.0.1", relay.addr("ws"), "/").await?;
    let err = ws_from("127.0.0.1", relay.addr("ws"), "/")
        .await
        .err()
        .map(|e| format!("{e:#}"));
    assert!(err.as_deref().is_some_and(|e| e.contains("503")), "{err:?}");
    let _other_ip = ws_from("127.0.0.2", relay.addr("ws"), "/").await?;
    Ok(())
}

#[tokio::test]
async fn slow_consumer_is_disconnected_while_others_keep_receiving() -> Result<()> {
    let relay = TestRelay::start(&demo_config("outbound_queue = 16")).await?;
    let mut fast = ws(relay.addr("ws"), "/?rooms=firehose").await?;
    let mut slow = ws(relay.addr("ws"), "/?rooms=firehose").await?; // never reads until the end
    let big = "x".repeat(60_000);
    let n = 300;
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            let m = fast.recv().await?;
            anyhow::ensure!(m["data"]["i"] == got, "out of order: {m}");
            got += 1;
        }
        fast.send(json!({"event": "whoami"})).await?;
        anyhow::ensure!(fast.recv().await?["event"] == "whoami");
        anyhow::Ok((got, fast))
    });
    for i in 0..n {
        let body = json!({"room": "firehose", "data": {"i": i, "pad": big}}).to_string();
        let (s, b) = http(
            relay.addr("http"),
            "POST",
            "/push",
            Some("application/json"),
            body.as_bytes(),
        )
        .await?;
        assert_eq!(s, 200, "{b}");
    }
    let (got, _fast) = reader.await??;
    assert_eq!(got, n, "the fast client got every message, in order");
    relay
        .eventually("slow consumer cut", |r| r.metric("slow_consumers") == 1)
        .await?;
    // The slow client, reading at last, sees its connection end: a 1013 close frame if the
    // socket had room for it, else just the end of the stream.
    let ended = slow.ended_within(WAIT).await?;
    assert!(
        matches!(ended, Ended::Close(1013) | Ended::Eof),
        "{ended:?}"
    );
    relay
        .eventually("one connection left", |r| r.metric("connections_open") == 1)
        .await?;
    Ok(())
}

#[tokio::test]
async fn graceful_shutdown_delivers_queued_frames_then_closes_1001() -> Result<()> {
    let TestRelay { running, dir: _dir } = TestRelay::demo().await?;
    let mut c = ws(running.addr("ws"), "/?rooms=r").await?;
    let ws_addr = running.addr("ws");
    let node = running.node.clone();
    let tenant = node.tenants["demo"].clone();
    for i in 0..500 {
        let m = relay::protocol::Message::data(json!({"i": i}));
        node.publish(
            &tenant,
            relay::hub::Target::Rooms(vec!["r".into()]),
            m,
            None,
        )
        .await?;
    }
    let stop = tokio::spawn(running.stop());
    for i in 0..500 {
        assert_eq!(c.recv().await?["i"], i);
    }
    assert_eq!(c.ended_within(WAIT).await?, Ended::Close(1001));
    assert!(stop.await?, "every task finished within the grace period");
    assert!(
        TcpStream::connect(ws_addr).await.is_err(),
        "no longer accepting"
    );
    Ok(())
}
