//! WASM plugins as tenant policies: every hook, the sandbox (traps, loops,
//! memory, malformed output, forbidden imports), the compiled cache and hot reload.
//! The plugins are the real components built from `plugins/` by relay's build script.

use std::time::Duration;

use anyhow::Result;
use relay_tests::*;
use serde_json::{json, Value};

/// A wasm tenant. Unless a test sets its own, the call deadline is generous (1 s) so a
/// loaded CI machine cannot fail ordinary calls; the deadline tests set a short one.
pub(crate) fn plugin_tenant(name: &str, plugin: &str, extra: &str) -> String {
    let deadline = if extra.contains("plugin_deadline_ms") {
        ""
    } else {
        "plugin_deadline_ms = 1000"
    };
    format!(
        r#"
[[tenant]]
name = "{name}"
policy = "wasm"
plugin = "{plugin}"
{deadline}
{extra}
"#
    )
}

pub(crate) fn listeners(tenant: &str) -> String {
    format!(
        r#"
[[listener]]
name = "ws"
kind = "ws"
bind = "127.0.0.1:0"
routes = [{{ path = "/", tenant = "{tenant}" }}]

[[listener]]
name = "http"
kind = "http"
bind = "127.0.0.1:0"
routes = [{{ path = "/", tenant = "{tenant}" }}]

[[listener]]
name = "udp"
kind = "udp"
bind = "127.0.0.1:0"
tenant = "{tenant}"
"#
    )
}

/// Two tenants behind one ws listener; `listener` gives its routes (and other keys).
pub(crate) async fn two_tenants(
    first: String,
    second: String,
    listener: &str,
) -> Result<TestRelay> {
    TestRelay::start(&format!(
        "{first}{second}\n[[listener]]\nname = \"ws\"\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\n{listener}\n"
    ))
    .await
}

/// A testkit tenant whose data (store, compiled cache) lives in `dir`, for restart tests.
async fn testkit_in(dir: &std::path::Path) -> Result<Running> {
    let text = format!(
        "[server]\ndata_dir = {:?}\n{}{}",
        dir.display().to_string(),
        plugin_tenant("t", "bundled:testkit", ""),
        listeners("t")
    );
    Ok(relay::start(Config::parse(&text, None).map_err(|e| anyhow::anyhow!("{e}"))?).await?)
}

async fn testkit(extra: &str) -> Result<TestRelay> {
    TestRelay::start(&format!(
        "{}{}",
        plugin_tenant("t", "bundled:testkit", extra),
        listeners("t")
    ))
    .await
}

#[tokio::test]
async fn handshake_hook_accepts_rejects_and_defers() -> Result<()> {
    let relay = testkit("settings = { version = \"7\" }").await?;
    let mut c = ws(relay.addr("ws"), "/?user=ann&rooms=a,b").await?;
    c.send(json!({"event": "whoami"})).await?;
    let me = c.recv().await?;
    assert_eq!(
        (me["user"].as_str(), me["authenticated"].as_bool()),
        (Some("ann"), Some(true))
    );

    let ok = raw_upgrade(relay.addr("ws"), "/?user=x", "").await?;
    assert!(
        ok.to_ascii_lowercase().contains("x-plugin-version: 7"),
        "{ok}"
    );
    let refused = raw_upgrade(relay.addr("ws"), "/?reject=1", "").await?;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("message: error auth"),
        "{refused}"
    );

    let mut d = ws(relay.addr("ws"), "/?defer=1").await?;
    assert_eq!(
        d.recv().await?["login"],
        "required",
        "defer's actions run once the socket is open"
    );
    d.send(json!({"event": "login", "user": "late"})).await?;
    assert_eq!(d.recv().await?["ok"], true);
    d.send(json!({"event": "whoami"})).await?;
    assert_eq!(d.recv().await?["user"], "late");
    Ok(())
}

#[tokio::test]
async fn deferred_login_deadline_applies_to_plugins() -> Result<()> {
    let relay = testkit("auth_timeout_ms = 300").await?;
    let mut d = ws(relay.addr("ws"), "/?defer=1").await?;
    assert_eq!(d.recv().await?["event"], "hello");
    assert_eq!(d.ended_within(WAIT).await?, Ended::Close(1008));
    Ok(())
}

#[tokio::test]
async fn event_and_ingress_hooks_use_host_imports() -> Result<()> {
    let relay = testkit("").await?;
    let mut a = ws(relay.addr("ws"), "/?user=a&rooms=r").await?;
    let mut b = ws(relay.addr("ws"), "/?user=b&rooms=r").await?;

    a.send(json!({"event": "emit", "room": "r", "data": "hi"}))
        .await?;
    assert_eq!(b.recv().await?["data"], "hi");
    assert_eq!(a.recv().await?["data"], "hi");

    a.send(json!({"event": "kv-set", "key": "k", "value": "v1"}))
        .await?;
    assert_eq!(a.recv().await?["ok"], true);
    b.send(json!({"event": "kv-get", "key": "k"})).await?;
    assert_eq!(
        b.recv().await?["value"],
        "v1",
        "the key-value store is shared by the tenant's instances"
    );
    a.send(json!({"event": "kv-once", "key": "nonce-1"}))
        .await?;
    assert_eq!(a.recv().await?["fresh"], true);
    b.send(json!({"event": "kv-once", "key": "nonce-1"}))
        .await?;
    assert_eq!(b.recv().await?["fresh"], false);

    a.send(json!({"event": "presence", "room": "r"})).await?;
    assert_eq!(a.recv().await?["count"], 2);
    a.send(json!({"event": "now"})).await?;
    let ms = a.recv().await?["ms"].as_u64().unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    assert!(ms.abs_diff(now) < 60_000, "wall clock {ms} vs {now}");
    a.send(json!({"event": "random"})).await?;
    let r1 = a.recv().await?["bytes"].clone();
    a.send(json!({"event": "random"})).await?;
    let r2 = a.recv().await?["bytes"].clone();
    assert_eq!(r1.as_array().map(Vec::len), Some(16));
    assert_ne!(r1, r2);
    // std's HashMap works (its seed import is the one wasi:random interface allowed).
    a.send(json!({"event": "count", "text": "a b a"})).await?;
    assert_eq!(a.recv().await?["words"], json!([["a", 2], ["b", 1]]));

    let (s, body) = http(
        relay.addr("http"),
        "POST",
        "/push",
        Some("application/json"),
        br#"{"room":"r","data":"from http"}"#,
    )
    .await?;
    assert_eq!((s, body.as_str()), (200, r#"{"ok":true,"online":2}"#));
    assert_eq!(a.recv().await?["data"], "from http");
    assert_eq!(b.recv().await?["data"], "from http");
    let reply = udp(
        "127.0.0.1",
        relay.addr("udp"),
        br#"{"room":"r","data":"from udp"}"#,
        WAIT,
    )
    .await?;
    assert_eq!(reply.as_deref(), Some(r#"{"ok":true,"online":2}"#));
    assert_eq!(a.recv().await?["data"], "from udp");
    Ok(())
}

// Multi-threaded like relay's own runtime: calls then run in place (block_in_place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_plugin_call_fails_alone() -> Result<()> {
    let relay = testkit("plugin_deadline_ms = 200\nplugin_memory_mb = 16").await?;
    let mut c = ws(relay.addr("ws"), "/?user=u").await?;
    let mut other = ws(relay.addr("ws"), "/?user=v").await?;
    for (event, extra) in [
        ("trap", json!({})),
        ("loop", json!({})),
        ("alloc", json!({"mb": 64})),
        ("bad-json", json!({})),
    ] {
        let mut msg = json!({"event": event});
        if let (Value::Object(m), Value::Object(e)) = (&mut msg, extra) {
            m.extend(e);
        }
        let started = std::time::Instant::now();
        c.send(msg).await?;
        // No reply for the failed call...
        c.expect_silence(Duration::from_millis(150)).await?;
        // ...and the connection, and everyone else, keep being served.
        c.send(json!({"event": "echo"})).await?;
        assert_eq!(c.recv().await?["event"], "echo", "after {event}");
        other.send(json!({"event": "echo"})).await?;
        assert_eq!(other.recv().await?["event"], "echo", "after {event}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{event} took {:?}",
            started.elapsed()
        );
    }
    // Within the limits the same calls work.
    c.send(json!({"event": "alloc", "mb": 2})).await?;
    assert_eq!(c.recv().await?["len"], 2 << 20);
    assert_eq!(
        relay.metric("plugin_traps"),
        3,
        "trap, loop (deadline) and alloc (memory)"
    );
    assert_eq!(relay.metric("plugin_malformed"), 1);
    assert!(relay.metric("policy_errors") >= 4);
    // A trapping handshake refuses that connection only.
    let resp = raw_upgrade(relay.addr("ws"), "/?trap=1", "").await?;
    assert!(resp.starts_with("HTTP/1.1 500"), "{resp}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_stdout_does_not_break_it() -> Result<()> {
    let relay = testkit("").await?;
    let mut c = ws(relay.addr("ws"), "/").await?;
    for _ in 0..3 {
        c.send(json!({"event": "print"})).await?;
        assert_eq!(c.recv().await?["event"], "print");
    }
    Ok(())
}

/// The error a relay with this one plugin tenant fails to start with.
async fn load_error(plugin: &str, extra: &str) -> String {
    TestRelay::start(&format!(
        "{}{}",
        plugin_tenant("t", plugin, extra),
        listeners("t")
    ))
    .await
    .err()
    .map(|e| format!("{e:#}"))
    .unwrap_or_default()
}

#[tokio::test]
async fn forbidden_imports_and_bad_settings_are_refused_at_load() -> Result<()> {
    let err = load_error("bundled:fs-intruder", "").await;
    assert!(
        err.contains("wasi:filesystem"),
        "the refusal names the import: {err}"
    );
    let err = load_error("bundled:testkit", "settings = { fail_init = true }").await;
    assert!(
        err.contains("init refused the settings: init failed as asked"),
        "{err}"
    );
    let err = load_error("bundled:md5-sign", "").await;
    assert!(err.contains("settings.key (string) is required"), "{err}");
    Ok(())
}

#[tokio::test]
async fn compiled_plugins_are_cached_on_disk() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let first = testkit_in(dir.path()).await?;
    let m = |r: &Running, name: &str| {
        r.node
            .metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("relay_{name} ")).map(str::to_owned))
            .unwrap_or_default()
    };
    assert_eq!(
        (m(&first, "plugin_compiles"), m(&first, "plugin_cache_hits")),
        ("1".into(), "0".into())
    );
    assert!(first.stop().await);
    let cached: Vec<_> = std::fs::read_dir(dir.path().join("plugin-cache"))?
        .filter_map(|e| e.ok())
        .collect();
    assert_eq!(cached.len(), 1, "one compiled artefact");
    let second = testkit_in(dir.path()).await?;
    assert_eq!(
        (
            m(&second, "plugin_compiles"),
            m(&second, "plugin_cache_hits")
        ),
        ("0".into(), "1".into())
    );
    let mut c = ws(second.addr("ws"), "/").await?;
    c.send(json!({"event": "echo"})).await?;
    assert_eq!(c.recv().await?["event"], "echo");
    Ok(())
}

fn md5_hex(s: &str) -> String {
    use md5::{Digest, Md5};
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn signed(user: &str, key: &str, ts: u64) -> String {
    format!(
        "/?user={user}&ts={ts}&sign={}",
        md5_hex(&format!("{user}\n{ts}\n{key}"))
    )
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[tokio::test]
async fn md5_sign_plugin_verifies_window_and_replay() -> Result<()> {
    let relay = TestRelay::start(&format!(
        "{}{}",
        plugin_tenant(
            "t",
            "bundled:md5-sign",
            "settings = { key = \"s3cret\", window_secs = 60 }"
        ),
        listeners("t")
    ))
    .await?;
    let now = unix_now();
    let path = signed("ann", "s3cret", now);
    let mut c = ws(relay.addr("ws"), &path).await?;
    c.send(json!({"event": "join", "room": "r"})).await?;
    assert_eq!(c.recv().await?["event"], "joined");
    for (bad, why) in [
        (path.clone(), "sign already used"),
        (signed("ann", "wrong", now + 1), "bad sign"),
        (
            signed("ann", "s3cret", now - 3600),
            "ts outside the allowed window",
        ),
        ("/?user=ann".to_owned(), "user, ts and sign are required"),
    ] {
        let resp = raw_upgrade(relay.addr("ws"), &bad, "").await?;
        assert!(
            resp.starts_with("HTTP/1.1 401") && resp.ends_with(why),
            "{bad}: {resp}"
        );
    }
    // A sign is good for its own user and ts only. Under the old, unseparated scheme
    // (`md5(user + ts + key)`) each of these re-readings of a real sign logged in as
    // someone else: `bob0` as `bob` (ts with a leading 0), `carol+` as `carol` (ts
    // with a +), `120` as `12`.
    let t = now.to_string();
    for (issued_to, attack_user, attack_ts) in [
        ("bob0", "bob", format!("0{t}")),
        ("carol+", "carol", format!("+{t}")),
        ("120", "12", format!("0{t}")),
    ] {
        let sign = md5_hex(&format!("{issued_to}\n{t}\ns3cret"));
        let old_sign = md5_hex(&format!("{issued_to}{t}s3cret"));
        for s in [sign, old_sign] {
            let ts = attack_ts.replace('+', "%2B");
            let path = format!("/?user={attack_user}&ts={ts}&sign={s}");
            let resp = raw_upgrade(relay.addr("ws"), &path, "").await?;
            assert!(resp.starts_with("HTTP/1.1 401"), "{path}: {resp}");
        }
        // The canonical ts itself does not help either: the user is part of the text.
        let path = format!(
            "/?user={attack_user}&ts={t}&sign={}",
            md5_hex(&format!("{issued_to}\n{t}\ns3cret"))
        );
        let resp = raw_upgrade(relay.addr("ws"), &path, "").await?;
        assert!(resp.ends_with("bad sign"), "{path}: {resp}");
    }
    for (bad, why) in [
        (
            format!("/?user=a%0Ab&ts={t}&sign=00"),
            "user must be 1-128 characters, none of them control characters",
        ),
        (
            format!("/?user=ann&ts=0{t}&sign=00"),
            "ts must be unix seconds in plain decimal",
        ),
    ] {
        let resp = raw_upgrade(relay.addr("ws"), &bad, "").await?;
        assert!(
            resp.starts_with("HTTP/1.1 401") && resp.ends_with(why),
            "{bad}: {resp}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn hooks_a_plugin_leaves_out_are_not_called() -> Result<()> {
    // md5-sign defines on_handshake and on_event only; testkit adds on_ingress.
    let relay = two_tenants(
        plugin_tenant("m", "bundled:md5-sign", "settings = { key = \"k\" }"),
        plugin_tenant("t", "bundled:testkit", ""),
        "http_ingress = true\nroutes = [{ path = \"/m\", tenant = \"m\" }, { path = \"/t\", tenant = \"t\" }]",
    )
    .await?;
    let path = signed("ann", "k", unix_now()).replacen("/?", "/m?", 1);
    let mut c = ws(relay.addr("ws"), &path).await?;
    c.send(json!({"event": "join", "room": "r"})).await?;
    assert_eq!(c.recv().await?["event"], "joined");
    assert_eq!(relay.metric("plugin_calls"), 2, "handshake and event");
    c.close(1000).await?;
    relay
        .eventually("the connection is gone", |r| {
            r.metric("connections_open") == 0
        })
        .await?;
    // No on-ingress: a push is answered 404 without a call, as an empty hook would.
    let (status, body) = http(
        relay.addr("ws"),
        "POST",
        "/m/push",
        Some("application/json"),
        br#"{"room":"r","data":1}"#,
    )
    .await?;
    assert_eq!((status, body.as_str()), (404, r#"{"error":"not found"}"#));
    assert_eq!(
        relay.metric("plugin_calls"),
        2,
        "no disconnect or ingress call"
    );
    assert_eq!(relay.metric("plugin_hooks_skipped"), 2);
    // testkit's on_ingress is called.
    let (status, _) = http(
        relay.addr("ws"),
        "POST",
        "/t/push",
        Some("application/json"),
        br#"{"room":"r","data":1}"#,
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(relay.metric("plugin_calls"), 3);
    Ok(())
}

#[tokio::test]
async fn hooks_see_only_the_headers_the_plugin_names_and_the_tenant_allows() -> Result<()> {
    let seen = |resp: &str| {
        resp.lines()
            .find_map(|l| l.strip_prefix("x-seen-headers: "))
            .map(|v| v.trim().to_owned())
    };
    // The headers testkit names in `#[plugin(headers = [...])]` (host, origin, x-token),
    // not the others (x-other), nor the WebSocket upgrade's own.
    let relay = testkit("").await?;
    let resp = raw_upgrade(
        relay.addr("ws"),
        "/?headers=1",
        "X-Token: t1\r\nOrigin: http://a\r\nX-Other: o\r\n",
    )
    .await?;
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    let mut names: Vec<String> = seen(&resp)
        .unwrap_or_default()
        .split(',')
        .map(str::to_owned)
        .collect();
    names.sort();
    assert_eq!(names, ["host", "origin", "x-token"], "{resp}");
    // plugin_headers narrows them.
    let relay = testkit("plugin_headers = [\"x-token\"]").await?;
    let resp = raw_upgrade(
        relay.addr("ws"),
        "/?headers=1",
        "X-Token: t1\r\nOrigin: http://a\r\n",
    )
    .await?;
    assert_eq!(seen(&resp).as_deref(), Some("x-token"), "{resp}");
    // One header through `header(name)`: any case; none for one the plugin may not see.
    let one = |resp: &str| {
        resp.lines()
            .find_map(|l| l.strip_prefix("x-seen-header: "))
            .map(|v| v.trim().to_owned())
    };
    for (asked, want) in [("X-Token", "t1"), ("origin", "-"), ("x-other", "-")] {
        let resp = raw_upgrade(
            relay.addr("ws"),
            &format!("/?header={asked}"),
            "X-Token: t1\r\nOrigin: http://a\r\nX-Other: o\r\n",
        )
        .await?;
        assert_eq!(one(&resp).as_deref(), Some(want), "{asked}: {resp}");
    }
    Ok(())
}

#[tokio::test]
async fn a_handshake_hook_reads_the_request_through_its_handle() -> Result<()> {
    let relay = testkit("").await?;
    let resp = raw_upgrade(relay.addr("ws"), "/?whoami=1", "").await?;
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    let seen = resp
        .lines()
        .find_map(|l| l.strip_prefix("x-seen-request: "))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default();
    // conn=<20-character id> path=/ remote=127.0.0.1:<port> tls=false
    let fields: Vec<(&str, &str)> = seen.split(' ').filter_map(|f| f.split_once('=')).collect();
    let get = |k: &str| fields.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    assert_eq!(get("conn").map(str::len), Some(20), "{seen}");
    assert_eq!(get("path"), Some("/"), "{seen}");
    assert!(
        get("remote").is_some_and(|r| r.starts_with("127.0.0.1:")),
        "{seen}"
    );
    assert_eq!(get("tls"), Some("false"), "{seen}");
    Ok(())
}

#[tokio::test]
async fn a_full_or_oversized_key_value_write_fails_that_call_only() -> Result<()> {
    // Room for three small entries (each counts its key, its value and 64 bytes).
    let relay = testkit("kv_max_bytes = 240").await?;
    let mut c = ws(relay.addr("ws"), "/?user=u").await?;
    for k in ["k1", "k2", "k3"] {
        c.send(json!({"event": "kv-set", "key": k, "value": "v"}))
            .await?;
        assert_eq!(c.recv().await?["ok"], true, "{k}");
    }
    c.send(json!({"event": "kv-set", "key": "k4", "value": "v"}))
        .await?;
    c.expect_silence(Duration::from_millis(200)).await?;
    c.send(json!({"event": "kv-once", "key": "k5"})).await?;
    c.expect_silence(Duration::from_millis(200)).await?;
    let long_key = "x".repeat(1025);
    c.send(json!({"event": "kv-set", "key": long_key, "value": "v"}))
        .await?;
    c.expect_silence(Duration::from_millis(200)).await?;
    assert_eq!(relay.metric("kv_refused"), 3);
    assert_eq!(relay.metric("plugin_traps"), 3);
    // What is there stays readable, replacing a value of the same size fits, and the
    // connection keeps being served.
    c.send(json!({"event": "kv-get", "key": "k2"})).await?;
    assert_eq!(c.recv().await?["value"], "v");
    c.send(json!({"event": "kv-set", "key": "k1", "value": "w"}))
        .await?;
    assert_eq!(c.recv().await?["ok"], true);
    c.send(json!({"event": "kv-get", "key": "k1"})).await?;
    assert_eq!(c.recv().await?["value"], "w");
    Ok(())
}

#[tokio::test]
async fn hot_reload_swaps_plugins_without_dropping_connections() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tenant.wasm");
    std::fs::copy(relay::plugin::bundled("testkit"), &file)?;
    let relay = TestRelay::start(&format!(
        "{}{}",
        plugin_tenant(
            "t",
            &file.display().to_string(),
            "settings = { key = \"k\" }\nplugin_watch_ms = 100"
        ),
        listeners("t")
    ))
    .await?;
    let mut live = ws(relay.addr("ws"), "/?user=first").await?;
    live.send(json!({"event": "echo"})).await?;
    assert_eq!(live.recv().await?["event"], "echo");

    // Swap in another plugin and reload through the admin endpoint.
    std::fs::copy(relay::plugin::bundled("md5-sign"), &file)?;
    let (s, body) = http(relay.addr("http"), "POST", "/admin/reload", None, b"").await?;
    assert_eq!(s, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body)?["t"]["ok"], true);
    let resp = raw_upgrade(relay.addr("ws"), "/?user=second", "").await?;
    assert!(
        resp.starts_with("HTTP/1.1 401"),
        "new handshakes meet the new plugin: {resp}"
    );
    live.send(json!({"event": "echo"})).await?;
    assert_eq!(
        live.recv().await?["error"],
        "use join or emit with a room",
        "the live connection stayed and now talks to the new plugin"
    );

    // A broken version is rejected with its error and the current one stays.
    std::fs::write(&file, b"\0asm garbage")?;
    let (s, body) = http(relay.addr("http"), "POST", "/admin/reload", None, b"").await?;
    assert_eq!(s, 422, "{body}");
    assert!(body.contains("not a valid component"), "{body}");
    live.send(json!({"event": "echo"})).await?;
    assert_eq!(live.recv().await?["error"], "use join or emit with a room");
    assert!(relay.metric("plugin_reload_failures") >= 1);

    // Replacing the file is enough: the watcher reloads it (and tried the broken file once only).
    let failures = relay.metric("plugin_reload_failures");
    let reloads = relay.metric("plugin_reloads");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        relay.metric("plugin_reload_failures") <= failures + 1,
        "a broken file is not retried on every tick"
    );
    std::fs::copy(relay::plugin::bundled("testkit"), &file)?;
    relay
        .eventually("watcher reloaded testkit", |r| {
            r.metric("plugin_reloads") > reloads
        })
        .await?;
    let mut again = ws(relay.addr("ws"), "/?user=third").await?;
    again.send(json!({"event": "whoami"})).await?;
    assert_eq!(again.recv().await?["user"], "third");
    let (s, _) = get(relay.addr("http"), "/admin/reload").await?;
    assert_eq!(s, 405);
    // One tenant by name; a name this relay does not have is a 404, not a silent 200.
    let (s, body) = http(
        relay.addr("http"),
        "POST",
        "/admin/reload?tenant=t",
        None,
        b"",
    )
    .await?;
    assert_eq!(s, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body)?["t"]["ok"], true);
    let (s, body) = http(
        relay.addr("http"),
        "POST",
        "/admin/reload?tenant=nope",
        None,
        b"",
    )
    .await?;
    assert_eq!(s, 404, "{body}");
    assert!(body.contains("no tenant named"), "{body}");
    Ok(())
}

#[tokio::test]
async fn tenants_have_their_own_store_and_keep_serving_while_another_misbehaves() -> Result<()> {
    let relay = two_tenants(
        plugin_tenant("t1", "bundled:testkit", "plugin_deadline_ms = 2000"),
        plugin_tenant("t2", "bundled:testkit", ""),
        "routes = [{ path = \"/a\", tenant = \"t1\" }, { path = \"/b\", tenant = \"t2\" }]",
    )
    .await?;
    let mut a = ws(relay.addr("ws"), "/a?user=x").await?;
    let mut b = ws(relay.addr("ws"), "/b?user=x").await?;
    a.send(json!({"event": "kv-set", "key": "shared-name", "value": "t1's"}))
        .await?;
    assert_eq!(a.recv().await?["ok"], true);
    b.send(json!({"event": "kv-get", "key": "shared-name"}))
        .await?;
    assert_eq!(
        b.recv().await?["value"],
        Value::Null,
        "t2 cannot see t1's keys"
    );
    a.send(json!({"event": "kv-get", "key": "shared-name"}))
        .await?;
    assert_eq!(
        a.recv().await?["value"],
        "t1's",
        "and t1's keys persist across calls"
    );

    // t1's plugin spins for its whole 2 s deadline; t2 answers meanwhile.
    a.send(json!({"event": "loop"})).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    b.send(json!({"event": "echo"})).await?;
    assert_eq!(b.recv().await?["event"], "echo");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "t2 waited {:?} for t1's loop",
        started.elapsed()
    );
    relay
        .eventually("t1's loop hit its deadline", |r| {
            r.metric("plugin_traps") == 1
        })
        .await?;
    a.send(json!({"event": "echo"})).await?;
    assert_eq!(a.recv().await?["event"], "echo");
    Ok(())
}

#[tokio::test]
async fn the_key_value_store_survives_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let first = testkit_in(dir.path()).await?;
    let mut c = ws(first.addr("ws"), "/").await?;
    c.send(json!({"event": "kv-set", "key": "token:123456", "value": "abc"}))
        .await?;
    assert_eq!(c.recv().await?["ok"], true);
    c.close(1000).await?;
    assert!(first.stop().await);

    let second = testkit_in(dir.path()).await?;
    let mut c = ws(second.addr("ws"), "/").await?;
    c.send(json!({"event": "kv-get", "key": "token:123456"}))
        .await?;
    assert_eq!(
        c.recv().await?["value"],
        "abc",
        "kept in the sled store across the restart"
    );
    Ok(())
}
