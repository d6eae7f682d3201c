//! Offline messages: kept durably when nobody is online, delivered in order on the
//! user's next identification or the room's next join, bounded by cap, TTL and size.

use std::time::Duration;

use anyhow::Result;
use relay_tests::sio::SioDriver;
use relay_tests::{demo_config, get, ws, TestRelay};
use serde_json::json;

#[tokio::test]
async fn kept_messages_reach_the_user_in_order_before_live_ones() -> Result<()> {
    let relay = TestRelay::demo().await?;
    let http = relay.addr("http");
    for i in 0..3 {
        let (s, b) = get(http, &format!("/push?user=ann&offline=1&data=m{i}")).await?;
        assert_eq!(s, 200, "{b}");
        assert!(b.contains("\"stored\":true"), "{b}");
    }
    assert_eq!(relay.metric("offline_stored"), 3);
    // Without offline=1 a push to nobody is not kept.
    get(http, "/push?user=ann&data=lost").await?;

    let mut c = ws(relay.addr("ws"), "/?user=ann").await?;
    for i in 0..3 {
        let m = c.recv().await?;
        assert_eq!(
            m,
            json!({"event": "message", "data": format!("m{i}"), "offline": true})
        );
    }
    let (s, b) = get(http, "/push?user=ann&offline=1&data=live").await?;
    assert!(s == 200 && b.contains("\"online\":1"), "{b}");
    assert_eq!(c.recv().await?, json!({"event": "message", "data": "live"}));
    relay
        .eventually("removed once written", |r| {
            r.metric("offline_delivered") == 3
        })
        .await?;
    drop(c);
    // Delivered messages are gone: a second device gets nothing old.
    let mut again = ws(relay.addr("ws"), "/?user=ann").await?;
    again.expect_silence(Duration::from_millis(300)).await?;
    Ok(())
}

#[tokio::test]
async fn a_rooms_messages_go_to_the_room_on_the_next_join() -> Result<()> {
    let relay = TestRelay::demo().await?;
    let http = relay.addr("http");
    let (s, _) = get(http, "/push?room=r1&offline=1&data=while-empty").await?;
    assert_eq!(s, 200);
    let mut a = ws(relay.addr("ws"), "/?user=a").await?;
    a.send(json!({"event": "join", "room": "r1"})).await?;
    // Kept messages come before the join's answer.
    assert_eq!(
        a.recv().await?,
        json!({"event": "message", "data": "while-empty", "offline": true})
    );
    assert_eq!(a.recv().await?["event"], "joined");
    let mut b = ws(relay.addr("ws"), "/?user=b&rooms=r1").await?;
    b.expect_silence(Duration::from_millis(300)).await?;
    Ok(())
}

#[tokio::test]
async fn cap_ttl_and_size_bound_the_mailbox() -> Result<()> {
    let relay = TestRelay::start(&demo_config("offline_max = 2\noffline_max_bytes = 200")).await?;
    let http = relay.addr("http");
    for i in 0..3 {
        get(http, &format!("/push?user=cap&offline=1&data={i}")).await?;
    }
    assert_eq!(relay.metric("offline_dropped"), 1);
    let (s, b) = get(
        http,
        &format!("/push?user=cap&offline=1&data={}", "x".repeat(300)),
    )
    .await?;
    assert_eq!(s, 503);
    assert!(b.contains("offline_max_bytes"), "{b}");
    let mut c = ws(relay.addr("ws"), "/?user=cap").await?;
    assert_eq!(c.recv().await?["data"], "1", "the oldest was dropped");
    assert_eq!(c.recv().await?["data"], "2");
    c.expect_silence(Duration::from_millis(200)).await?;

    let short = TestRelay::start(&demo_config("offline_ttl_ms = 50")).await?;
    get(short.addr("http"), "/push?user=late&offline=1&data=old").await?;
    tokio::time::sleep(Duration::from_millis(120)).await;
    let mut c = ws(short.addr("ws"), "/?user=late").await?;
    c.expect_silence(Duration::from_millis(200)).await?;
    assert_eq!(short.metric("offline_expired"), 1);
    Ok(())
}

#[tokio::test]
async fn kept_messages_survive_a_restart_and_reach_socket_io_clients() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = format!(
        r#"
[server]
data_dir = {:?}
[[tenant]]
name = "chat"
policy = "open"
profile = "socket.io"
[[listener]]
name = "sio"
kind = "ws"
http_ingress = true
bind = "127.0.0.1:0"
routes = [{{ path = "/", tenant = "chat" }}]
"#,
        dir.path().display().to_string()
    );
    let parse = || relay::Config::parse(&config, None).map_err(|e| anyhow::anyhow!("{e}"));
    {
        let running = relay::start(parse()?).await?;
        let (s, _) = get(
            running.addr("sio"),
            "/push?user=zed&offline=1&event=note&data=kept",
        )
        .await?;
        assert_eq!(s, 200);
        assert!(running.stop().await);
    }
    let running = relay::start(parse()?).await?;
    let mut d = SioDriver::start().await?;
    d.connect(
        "zed",
        4,
        &format!("http://{}?user=zed", running.addr("sio")),
        json!({}),
    )
    .await?;
    let m = d.next("zed", "event", Some("note")).await?;
    assert_eq!(
        m["args"],
        json!([{"event": "note", "data": "kept", "offline": true}])
    );
    d.exit().await
}

#[tokio::test]
async fn a_wasm_plugin_keeps_messages_for_offline_users() -> Result<()> {
    let relay = TestRelay::start(
        r#"
[[tenant]]
name = "t"
policy = "wasm"
plugin = "bundled:testkit"

[[listener]]
name = "ws"
kind = "ws"
bind = "127.0.0.1:0"
routes = [{ path = "/", tenant = "t" }]
"#,
    )
    .await?;
    let mut alice = ws(relay.addr("ws"), "/?user=alice").await?;
    alice
        .send(json!({"event": "keep", "user": "bob", "data": "see you"}))
        .await?;
    relay
        .eventually("kept", |r| r.metric("offline_stored") == 1)
        .await?;
    let mut bob = ws(relay.addr("ws"), "/?user=bob").await?;
    assert_eq!(
        bob.recv().await?,
        json!({"event": "kept", "data": "see you", "is_online": false})
    );
    // With bob online the same action delivers at once and keeps nothing.
    alice
        .send(json!({"event": "keep", "user": "bob", "data": "now"}))
        .await?;
    assert_eq!(bob.recv().await?["data"], "now");
    assert_eq!(relay.metric("offline_stored"), 1);
    Ok(())
}
