//! The embedded store on a full filesystem: pushes that must be durable are answered
//! with an error (never a false "stored"), live traffic goes on, the store reopens by
//! itself once space returns (sled keeps an I/O error until it is reopened), and every
//! acknowledged message is there, then and after a restart.
//!
//! Needs root (it mounts a small tmpfs); elsewhere it says why it skipped.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use relay::{Config, Running};
use relay_tests::{demo_config, get, ws};
use serde_json::{json, Value};

/// A tmpfs of `size` mounted on a fresh directory; unmounted when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> Result<SmallFs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        match out.status.success() {
            true => Ok(SmallFs { dir }),
            false => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fill the filesystem at `dir` up with one file; returns its path.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    if let Ok(mut f) = std::fs::File::create(&path) {
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let small = [0u8; 512];
        while f.write_all(&small).is_ok() {}
        let _ = f.sync_all();
    }
    path
}

/// A counter from the relay's metrics.
fn metric(relay: &Running, name: &str) -> u64 {
    relay
        .node
        .metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("relay_{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_default()
}

async fn start(data: &Path) -> Result<Running> {
    let text = format!(
        "[server]\ndata_dir = {:?}\nsync = \"always\"\n{}",
        data.display().to_string(),
        demo_config("")
    );
    Ok(relay::start(Config::parse(&text, None).map_err(|e| anyhow::anyhow!("{e}"))?).await?)
}

#[tokio::test]
async fn a_full_disk_refuses_durable_pushes_and_loses_nothing_acknowledged() -> Result<()> {
    let fs = match SmallFs::mount("16m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED: cannot mount a small tmpfs to fill ({why}); needs root");
            return Ok(());
        }
    };
    let data = fs.path().join("data");
    let relay = start(&data).await?;
    let http = relay.addr("http");
    let mut live = ws(relay.addr("ws"), "/").await?;
    live.send(json!({"event": "join", "room": "r"})).await?;
    assert_eq!(live.recv().await?["event"], "joined");

    let filler = fill(fs.path());
    let big = "x".repeat(4000);
    let (mut acked, mut refused) = (Vec::new(), 0);
    for i in 0..400 {
        let (status, body) = get(http, &format!("/push?user=bob&offline=1&data={i}-{big}")).await?;
        match status {
            200 => {
                let v: Value = serde_json::from_str(&body)?;
                assert_eq!(v["stored"], true, "{body}");
                acked.push(i);
            }
            503 => refused += 1,
            s => anyhow::bail!("push {i}: unexpected {s} {body}"),
        }
        if refused >= 5 {
            break;
        }
    }
    assert!(
        refused >= 5,
        "the full disk never refused a push ({} acked)",
        acked.len()
    );
    // Live delivery does not need the disk.
    let (status, _) = get(http, "/push?room=r&data=live").await?;
    assert_eq!(status, 200);
    assert_eq!(live.recv().await?["data"], "live");

    // Space returns: without a restart, durable pushes are taken again once the store
    // has reopened itself.
    std::fs::remove_file(&filler)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(http, "/push?user=bob&offline=1&data=back").await?;
        match status {
            200 => {
                assert!(body.contains("\"stored\":true"), "{body}");
                break;
            }
            503 if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            s => anyhow::bail!("after space returned: {s} {body}"),
        }
    }
    assert!(
        metric(&relay, "store_reopens") >= 1,
        "the store was never reopened"
    );
    let (status, _) = get(http, "/push?room=r&data=live2").await?;
    assert_eq!(status, 200);
    assert_eq!(live.recv().await?["data"], "live2");
    relay.stop().await;

    // Restarted: every acknowledged message is there, in order, the one taken after the
    // reopen included.
    let relay = start(&data).await?;
    let (status, body) = get(relay.addr("http"), "/push?user=bob&offline=1&data=after").await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"stored\":true"), "{body}");
    let mut bob = ws(relay.addr("ws"), "/?user=bob").await?;
    let mut got = Vec::new();
    while let Ok(v) = bob.recv_within(Duration::from_millis(500)).await {
        let d = v["data"].as_str().context("data")?.to_owned();
        got.push(d.split('-').next().unwrap_or_default().to_owned());
    }
    let want: Vec<String> = acked
        .iter()
        .map(|i| i.to_string())
        .chain(["back".to_owned(), "after".to_owned()])
        .collect();
    assert_eq!(
        got, want,
        "acknowledged before, during and after the full disk"
    );
    relay.stop().await;
    Ok(())
}
