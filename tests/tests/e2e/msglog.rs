//! The message log: plugin `append-log` lines land in the tenant's dated directory,
//! names cannot escape it, and files rotate by size.

use anyhow::Result;
use relay_tests::{ws, TestRelay};
use serde_json::json;

#[tokio::test]
async fn log_lines_are_confined_dated_and_rotated() -> Result<()> {
    let relay = TestRelay::start(
        r#"
[[tenant]]
name = "t"
policy = "wasm"
plugin = "bundled:testkit"
log_max_bytes = 40
log_keep = 1

[[listener]]
name = "ws"
kind = "ws"
bind = "127.0.0.1:0"
routes = [{ path = "/", tenant = "t" }]
"#,
    )
    .await?;
    let mut c = ws(relay.addr("ws"), "/").await?;
    for i in 0..3 {
        let line = format!("\r\n<br>2018-07-03 9:5:1[127.0.0.1] message:{{\"n\":{i}}}");
        c.send(json!({"event": "log", "file": "demo_test.log", "line": line}))
            .await?;
        c.recv().await?;
    }
    for bad in ["../../escape.log", "a/b.log", ".hidden", ""] {
        c.send(json!({"event": "log", "file": bad, "line": "x"}))
            .await?;
        c.recv().await?;
    }
    relay
        .eventually("three lines written, four refused", |r| {
            r.metric("log_lines") == 3 && r.metric("log_refused") == 4
        })
        .await?;
    let logs = relay.dir.path().join("logs").join("t");
    let days: Vec<_> = std::fs::read_dir(&logs)?.flatten().collect();
    assert_eq!(days.len(), 1, "one dated directory");
    let day = days[0].path();
    let name = days[0].file_name().to_string_lossy().into_owned();
    assert!(
        name.len() == 10 && name.as_bytes()[4] == b'-' && name.as_bytes()[7] == b'-',
        "YYYY-MM-DD: {name}"
    );
    let current = std::fs::read_to_string(day.join("demo_test.log"))?;
    let rotated = std::fs::read_to_string(day.join("demo_test.log.1"))?;
    assert!(current.ends_with("message:{\"n\":2}"), "{current:?}");
    assert!(rotated.ends_with("message:{\"n\":1}"), "{rotated:?}");
    assert!(!day.join("demo_test.log.2").exists(), "log_keep = 1");
    let mut stack = vec![relay.dir.path().to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let p = e.path();
            assert!(!p.ends_with("escape.log") && !p.ends_with("b.log"), "{p:?}");
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    Ok(())
}
