//! Webhooks against a real local HTTP server: the plugin `webhook` action with retries
//! and backoff, a server that is down, refusals that are not retried, and the
//! login/disconnect lifecycle callbacks (seed 000's `login_cb`/`disconnect_cb`).

use std::time::Duration;

use anyhow::Result;
use relay_tests::{demo_config, ws, HookServer, TestRelay};
use serde_json::json;

fn testkit(extra: &str) -> String {
    format!(
        r#"
[[tenant]]
name = "t"
policy = "wasm"
plugin = "bundled:testkit"
{extra}

[[listener]]
name = "ws"
kind = "ws"
bind = "127.0.0.1:0"
routes = [{{ path = "/", tenant = "t" }}]
"#
    )
}

#[tokio::test]
async fn plugin_webhooks_are_retried_with_backoff_until_they_succeed() -> Result<()> {
    let hooks = HookServer::start(vec![500, 503]).await?;
    let relay = TestRelay::start(&testkit("")).await?;
    let mut c = ws(relay.addr("ws"), "/").await?;
    let url = format!("http://{}/hook?x=1", hooks.addr);
    c.send(json!({"event": "webhook", "method": "POST", "url": url, "body": "hello"}))
        .await?;
    assert_eq!(
        c.recv().await?["queued"],
        true,
        "the hook does not wait for the call"
    );
    relay
        .eventually("the third attempt succeeds", |r| {
            r.metric("webhooks_sent") == 1
        })
        .await?;
    let seen = hooks.requests();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen
        .iter()
        .all(|(m, p, b)| m == "POST" && p == "/hook?x=1" && b == "hello"));
    assert_eq!(relay.metric("webhooks_retried"), 2);
    assert_eq!(relay.metric("webhooks_failed"), 0);
    Ok(())
}

#[tokio::test]
async fn a_down_server_fails_after_the_retries_and_refusals_are_not_retried() -> Result<()> {
    let free = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let down = free.local_addr()?;
    drop(free);
    let refusing = HookServer::start(vec![404]).await?;
    let relay = TestRelay::start(&testkit("webhook_retries = 1\nwebhook_timeout_ms = 500")).await?;
    let mut c = ws(relay.addr("ws"), "/").await?;
    c.send(json!({"event": "webhook", "method": "GET", "url": format!("http://{down}/cb")}))
        .await?;
    c.recv().await?;
    relay
        .eventually("gave up on the down server", |r| {
            r.metric("webhooks_failed") == 1
        })
        .await?;
    assert_eq!(relay.metric("webhooks_retried"), 1);
    c.send(json!({"event": "webhook", "method": "GET", "url": format!("http://{}/gone", refusing.addr)}))
        .await?;
    c.recv().await?;
    relay
        .eventually("404 is final", |r| r.metric("webhooks_failed") == 2)
        .await?;
    assert_eq!(refusing.requests().len(), 1);
    assert_eq!(relay.metric("webhooks_retried"), 1, "no retry after a 404");
    // A webhook the plugin got wrong is dropped with a reason, not attempted.
    c.send(json!({"event": "webhook", "method": "TRACE", "url": "http://x/"}))
        .await?;
    c.recv().await?;
    relay
        .eventually("invalid call dropped", |r| {
            r.metric("webhooks_dropped") == 1
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn login_and_disconnect_callbacks() -> Result<()> {
    let hooks = HookServer::start(vec![]).await?;
    let relay = TestRelay::start(&demo_config(&format!(
        "login_webhook = \"http://{0}/login?app=demo\"\ndisconnect_webhook = \"http://{0}/bye\"",
        hooks.addr
    )))
    .await?;
    let mut anon = ws(relay.addr("ws"), "/").await?;
    let mut ann = ws(relay.addr("ws"), "/?user=ann").await?;
    ann.send(json!({"event": "whoami"})).await?;
    let id = ann.recv().await?["conn"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    relay
        .eventually("login callback", |_| hooks.requests().len() == 1)
        .await?;
    assert_eq!(
        hooks.requests()[0],
        (
            "GET".into(),
            format!("/login?app=demo&sid={id}"),
            String::new()
        )
    );
    ann.close(1000).await?;
    relay
        .eventually("disconnect callback", |_| hooks.requests().len() == 2)
        .await?;
    assert_eq!(hooks.requests()[1].1, format!("/bye?sid={id}"));
    // Connections never identified call neither.
    anon.close(1000).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hooks.requests().len(), 2);
    Ok(())
}
