//! Real socket.io-client 2.x and 4.x, driven through `tests/node/sio-driver.js`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::WAIT;

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node")
}

/// Install the pinned client packages (`npm ci`) once, if they are missing.
fn ensure_packages() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = node_dir();
        if dir.join("node_modules/sio2/package.json").is_file()
            && dir.join("node_modules/sio4/package.json").is_file()
        {
            return Ok(());
        }
        let out = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .map_err(|e| {
                format!(
                    "running npm ci in {}: {e} (is Node.js installed?)",
                    dir.display()
                )
            })?;
        if !out.status.success() {
            return Err(format!(
                "npm ci in {} failed: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// A Node process running socket.io clients: commands in, observed events out.
pub struct SioDriver {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    backlog: VecDeque<Value>,
}

impl SioDriver {
    /// Start the driver (installs the npm packages on first use).
    pub async fn start() -> Result<SioDriver> {
        ensure_packages()?;
        let mut child = Command::new("node")
            .arg(node_dir().join("sio-driver.js"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting node (is Node.js installed?)")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut d = SioDriver {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            backlog: VecDeque::new(),
        };
        d.expect("driver ready", |v| v["type"] == "ready").await?;
        Ok(d)
    }

    /// Send one command.
    pub async fn send(&mut self, cmd: Value) -> Result<()> {
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Connect client `name` (socket.io-client `version` 2 or 4) to `url` with `opts`;
    /// returns its `connect` event.
    pub async fn connect(
        &mut self,
        name: &str,
        version: u8,
        url: &str,
        opts: Value,
    ) -> Result<Value> {
        self.send(
            json!({"op": "connect", "name": name, "version": version, "url": url, "opts": opts}),
        )
        .await?;
        self.expect(&format!("{name} connects"), |v| {
            v["name"] == name && v["type"] == "connect"
        })
        .await
    }

    /// Emit an event from client `name`.
    pub async fn emit(&mut self, name: &str, event: &str, args: Value, ack: bool) -> Result<()> {
        self.send(json!({"op": "emit", "name": name, "event": event, "args": args, "ack": ack}))
            .await
    }

    /// The next event of client `name` of type `kind` (and, for events, named `event`).
    pub async fn next(&mut self, name: &str, kind: &str, event: Option<&str>) -> Result<Value> {
        let what = format!("{name}: {kind} {}", event.unwrap_or(""));
        self.expect(&what, |v| {
            v["name"] == name && v["type"] == kind && event.is_none_or(|e| v["event"] == e)
        })
        .await
    }

    /// The first printed object (earlier unmatched ones included, in order) for which `f`
    /// holds, within [`WAIT`].
    pub async fn expect(&mut self, what: &str, f: impl Fn(&Value) -> bool) -> Result<Value> {
        self.expect_within(what, WAIT, f).await
    }

    /// [`expect`](Self::expect) with a deadline.
    pub async fn expect_within(
        &mut self,
        what: &str,
        d: Duration,
        f: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        if let Some(i) = self.backlog.iter().position(&f) {
            return self.backlog.remove(i).context("backlog");
        }
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let line = match tokio::time::timeout_at(deadline, self.lines.next_line()).await {
                Err(_) => bail!(
                    "timed out waiting for {what}; unmatched: {:?}",
                    self.backlog
                ),
                Ok(r) => r?.ok_or_else(|| anyhow!("driver exited while waiting for {what}"))?,
            };
            let v: Value =
                serde_json::from_str(&line).with_context(|| format!("driver said {line:?}"))?;
            if v["type"] == "error" && v.get("name").is_none() {
                bail!("driver error: {v}");
            }
            if f(&v) {
                return Ok(v);
            }
            self.backlog.push_back(v);
        }
    }

    /// Whether anything matching `f` is printed within `d` (unmatched output is kept).
    pub async fn sees_within(&mut self, d: Duration, f: impl Fn(&Value) -> bool) -> Result<bool> {
        match self.expect_within("", d, f).await {
            Ok(_) => Ok(true),
            Err(e) if e.to_string().starts_with("timed out") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Poll client `name`'s status until its transport is `transport`.
    pub async fn wait_transport(&mut self, name: &str, transport: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.send(json!({"op": "status", "name": name})).await?;
            let s = self.next(name, "status", None).await?;
            if s["transport"] == transport && s["connected"] == true {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{name} never reached transport {transport}: {s}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Close every client and stop the process.
    pub async fn exit(mut self) -> Result<()> {
        self.send(json!({"op": "exit"})).await?;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        Ok(())
    }
}
