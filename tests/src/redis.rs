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
    /// Its port on 127.0.0.1 (plain).
    pub port: u16,
    dir: tempfile::TempDir,
    /// With TLS: its TLS port, and the files under `dir` (`ca.pem`, `client.pem`,
    /// `client.key`) a client needs.
    tls_port: Option<u16>,
}

/// PEM files for a TLS Redis: a CA, a server certificate for `localhost`/127.0.0.1 and a
/// client certificate, both signed by the CA, written into `dir`.
fn write_certs(dir: &std::path::Path) -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: a leaf named like its issuer would look self-signed.
    ca.distinguished_name
        .push(DnType::CommonName, "relay test redis CA");
    let ca = ca.self_signed(&ca_key)?;
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text);
    write("ca.pem", ca.pem())?;
    for (name, sans) in [
        (
            "server",
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
        ),
        ("client", vec!["relay-node".to_owned()]),
    ] {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        write(&format!("{name}.pem"), cert.pem())?;
        write(&format!("{name}.key"), key.serialize_pem())?;
    }
    Ok(())
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
            tls_port: None,
        };
        r.spawn().await?;
        Ok(r)
    }

    /// Start one that also listens with TLS on another port and requires a client
    /// certificate there (`tls-auth-clients yes`); certificates from a fresh CA.
    pub async fn start_tls() -> Result<RedisServer> {
        let mut r = RedisServer {
            child: None,
            port: free_port()?,
            dir: tempfile::tempdir()?,
            tls_port: Some(free_port()?),
        };
        write_certs(r.dir.path())?;
        r.spawn().await?;
        Ok(r)
    }

    /// The path of one of the TLS files (`ca.pem`, `client.pem`, `client.key`).
    pub fn tls_file(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// `rediss://localhost:<tls port>/0` (`None` without TLS).
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("rediss://localhost:{p}/0"))
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        if let Some(p) = self.tls_port {
            let f = |n: &str| self.dir.path().join(n);
            cmd.args(["--tls-port", &p.to_string(), "--tls-auth-clients", "yes"])
                .arg("--tls-cert-file")
                .arg(f("server.pem"))
                .arg("--tls-key-file")
                .arg(f("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(f("ca.pem"));
        }
        let child = cmd
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
