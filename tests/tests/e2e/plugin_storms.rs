//! Plugin storms are contained: a tenant whose plugin keeps trapping trips its circuit
//! breaker (handshakes 503 at once, connections failing closed are closed 1013, or
//! events taken with no actions when failing open), recovers after the open period,
//! and the other tenant is served all along. (A call that finds no free instance in
//! `plugin_wait_ms` giving up is tested in `relay/src/plugin/policy.rs`.)

use std::time::Duration;

use anyhow::Result;
use relay_tests::{raw_upgrade, ws, Ended, WAIT};
use serde_json::json;

use super::plugins::{plugin_tenant, two_tenants};

const ROUTES: &str =
    "routes = [{ path = \"/bad\", tenant = \"bad\" }, { path = \"/good\", tenant = \"good\" }]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_plugin_trips_its_breaker_and_recovers_while_others_are_served() -> Result<()> {
    let relay = two_tenants(
        plugin_tenant(
            "bad",
            "bundled:testkit",
            "plugin_breaker_failures = 3\nplugin_breaker_open_ms = 400",
        ),
        plugin_tenant("good", "bundled:testkit", ""),
        ROUTES,
    )
    .await?;
    let addr = relay.addr("ws");
    // A connection made before the storm, on the failing-closed tenant.
    let mut before = ws(addr, "/bad/?user=early").await?;
    for _ in 0..3 {
        let head = raw_upgrade(addr, "/bad/?trap=1", "").await?;
        assert!(
            head.starts_with("HTTP/1.1 500"),
            "a trap is the plugin's fault: {head}"
        );
    }
    assert_eq!(relay.metric("plugin_breaker_trips"), 1);
    // Open: refused at once, with a hint to retry.
    let head = raw_upgrade(addr, "/bad/?user=x", "").await?;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    assert!(relay.metric("plugin_breaker_refused") >= 1);
    // Its connection's next event meets the open breaker: closed 1013 (fail closed).
    before.send(json!({"event": "echo"})).await?;
    assert_eq!(before.ended_within(WAIT).await?, Ended::Close(1013));
    // The other tenant is served meanwhile.
    let mut good = ws(addr, "/good/?user=y").await?;
    good.send(json!({"event": "echo"})).await?;
    assert_eq!(good.recv().await?["event"], "echo");
    // After the open period, a good call closes it again.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let mut back = ws(addr, "/bad/?user=z").await?;
    back.send(json!({"event": "echo"})).await?;
    assert_eq!(back.recv().await?["event"], "echo");
    let head = raw_upgrade(addr, "/bad/?trap=1", "").await?;
    assert!(
        head.starts_with("HTTP/1.1 500"),
        "closed: one failure does not reopen it"
    );
    assert_eq!(relay.metric("plugin_breaker_trips"), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_open_takes_events_with_no_actions_and_keeps_the_connection() -> Result<()> {
    let relay = two_tenants(
        plugin_tenant(
            "bad",
            "bundled:testkit",
            "plugin_breaker_failures = 2\nplugin_breaker_open_ms = 5000\nplugin_failure_mode = \"open\"",
        ),
        plugin_tenant("good", "bundled:testkit", ""),
        ROUTES,
    )
    .await?;
    let addr = relay.addr("ws");
    let mut c = ws(addr, "/bad/?user=a").await?;
    c.send(json!({"event": "trap"})).await?;
    c.send(json!({"event": "trap"})).await?;
    relay
        .eventually("the breaker opened", |r| {
            r.metric("plugin_breaker_trips") == 1
        })
        .await?;
    c.send(json!({"event": "echo"})).await?;
    c.expect_silence(Duration::from_millis(300)).await?;
    assert_eq!(relay.metric("plugin_breaker_closes"), 0, "kept open");
    assert!(relay.metric("plugin_breaker_refused") >= 1);
    Ok(())
}
