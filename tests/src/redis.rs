//! A real `redis-server` for cluster tests: started on a free port with no persistence,
//! stopped (killed) when dropped; it can be stopped and started again on the same port.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::WAIT;

/// A `redis-server` child process.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
}

/// A TCP port nobody listens on now.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl RedisServer {
    /// Start one on a free port and wait until it answers.
    pub async fn start() -> Result<RedisServer> {
        let mut r = RedisServer {
            child: None,
            port: free_port()?,
            dir: tempfile::tempdir()?,
        };
        r.spawn().await?;
        Ok(r)
    }

    async fn spawn(&mut self) -> Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (is it installed?)")?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.cmd(&["PING"]).await.ok().as_deref() != Some("+PONG") {
            if tokio::time::Instant::now() > deadline {
                bail!("redis-server on port {} did not answer", self.port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kill it (its data is gone: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port, empty.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn().await
    }

    /// Send one command (inline form) and return the first line of the answer.
    pub async fn cmd(&self, args: &[&str]) -> Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).await?;
        let mut line = String::new();
        line.push('*');
        line.push_str(&args.len().to_string());
        line.push_str("\r\n");
        for a in args {
            line.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(line.as_bytes()).await?;
        let mut buf = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await??;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        Ok(text.lines().next().unwrap_or("").to_owned())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
