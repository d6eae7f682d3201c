//! Secure defaults: requests are routed on the path a front proxy sees; admin endpoints
//! and metrics want their token and refuse cross-site and proxied requests.

use anyhow::Result;
use relay_tests::{demo_config, get, http_with, ws, TestRelay};
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

#[tokio::test]
async fn admin_endpoints_and_metrics_want_the_token_and_refuse_cross_site_requests() -> Result<()> {
    // Keys before the first table land in the `[server]` table TestRelay starts with.
    let config = format!(
        "admin_token = \"0123456789abcdef-admin\"\n{}",
        demo_config("")
    );
    let relay = TestRelay::start(&config).await?;
    let http = relay.addr("http");
    let bearer = ("authorization", "Bearer 0123456789abcdef-admin");
    for path in ["/metrics", "/admin/reload"] {
        let method = if path == "/metrics" { "GET" } else { "POST" };
        let (s, h, _) = http_with(http, method, path, &[], b"").await?;
        assert_eq!(
            (s, &h["www-authenticate"]),
            (401, &"Bearer".parse::<http::HeaderValue>()?),
            "{path}"
        );
        let wrong = ("authorization", "Bearer 0123456789abcdef-nope");
        let (s, _, _) = http_with(http, method, path, &[wrong], b"").await?;
        assert_eq!(s, 401, "{path}");
        let (s, _, body) = http_with(http, method, path, &[bearer], b"").await?;
        assert_eq!(s, 200, "{path}: {body:?}");
        if path == "/metrics" {
            let text = String::from_utf8_lossy(&body);
            for gauge in ["relay_runtime_tasks ", "relay_queued_bytes "] {
                assert!(text.contains(gauge), "{gauge}in {text}");
            }
        }
        // A browser page elsewhere cannot use it, token or not (CSRF).
        let cross = ("origin", "https://evil.example");
        let (s, _, _) = http_with(http, method, path, &[bearer, cross], b"").await?;
        assert_eq!(s, 403, "{path}");
        let fetch = ("sec-fetch-site", "cross-site");
        let (s, _, _) = http_with(http, method, path, &[bearer, fetch], b"").await?;
        assert_eq!(s, 403, "{path}");
    }
    // Health stays open (load balancers).
    let (s, _) = get(http, "/healthz").await?;
    assert_eq!(s, 200);
    Ok(())
}

#[tokio::test]
async fn without_a_token_admin_endpoints_refuse_requests_through_a_proxy() -> Result<()> {
    let relay = TestRelay::start(&demo_config("")).await?;
    let http = relay.addr("http");
    let (s, _, _) = http_with(http, "GET", "/metrics", &[], b"").await?;
    assert_eq!(s, 200, "loopback, no proxy: as before");
    for proxy in [
        ("x-forwarded-for", "203.0.113.9"),
        ("forwarded", "for=203.0.113.9"),
        ("x-real-ip", "203.0.113.9"),
    ] {
        let (s, _, body) = http_with(http, "GET", "/metrics", &[proxy], b"").await?;
        assert_eq!(s, 403, "{proxy:?}");
        assert!(String::from_utf8_lossy(&body).contains("set admin_token"));
    }
    // Outside admin_from: refused whatever it carries.
    let config = format!("admin_from = []\n{}", demo_config(""));
    let closed = TestRelay::start(&config).await?;
    let (s, _, _) = http_with(closed.addr("http"), "GET", "/metrics", &[], b"").await?;
    assert_eq!(s, 403);
    Ok(())
}
