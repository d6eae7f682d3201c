//! Secure defaults: requests are routed on the path a front proxy sees.

use anyhow::Result;
use relay_tests::{get, ws, TestRelay};
use serde_json::json;

const TWO_TENANTS: &str = r#"
[[tenant]]
name = "main"
policy = "open"

[[tenant]]
name = "other"
policy = "open"

[[listener]]
name = "ws"
kind = "ws"
http_ingress = true
bind = "127.0.0.1:0"
routes = [{ path = "/other", tenant = "other" }, { path = "/", tenant = "main" }]
"#;

#[tokio::test]
async fn routes_match_the_normalised_path_and_ambiguous_paths_are_refused() -> Result<()> {
    let relay = TestRelay::start(TWO_TENANTS).await?;
    let addr = relay.addr("ws");
    let mut other = ws(addr, "/other/").await?;
    other.send(json!({"event": "join", "room": "r"})).await?;
    assert_eq!(other.recv().await?["event"], "joined");
    // An escaped letter routes where a proxy would send it: to the `/other` tenant.
    let (status, body) = get(addr, "/%6Fther/push?room=r&data=escaped").await?;
    assert_eq!((status, body.as_str()), (200, r#"{"ok":true,"online":1}"#));
    assert_eq!(other.recv().await?["data"], "escaped");
    // Dot segments, encoded slashes and bad escapes are refused, not guessed at.
    for bad in [
        "/other/../push?room=r&data=x",
        "/x/%2e%2e/other/push?room=r&data=x",
        "/other%2Fpush?room=r&data=x",
        "/other/push%zz?room=r&data=x",
    ] {
        let (status, body) = get(addr, bad).await?;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    other
        .expect_silence(std::time::Duration::from_millis(200))
        .await?;
    Ok(())
}
