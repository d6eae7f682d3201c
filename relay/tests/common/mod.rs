//! What the tests that run the `relay` binary share.
#![allow(dead_code)] // each test binary uses its part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// The `relay` binary under test.
pub fn relay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_relay"))
}

/// `relay serve --config <config>` (log level info) and its log lines, on a channel.
pub fn serve(config: &Path) -> (std::process::Child, Receiver<String>) {
    let mut child = relay()
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relay");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, lines)
}

/// `relay serve --config <dir>/relay.toml` with its log lines on a channel; the
/// addresses of its listeners, from the "listening" lines.
pub fn serve_in(dir: &Path, listeners: &[&str]) -> (std::process::Child, Vec<String>) {
    let (child, addrs, _) = serve_in_with_log(dir, listeners);
    (child, addrs)
}

/// [`serve_in`], and the log lines that follow the "listening" ones.
pub fn serve_in_with_log(
    dir: &Path,
    listeners: &[&str],
) -> (std::process::Child, Vec<String>, Receiver<String>) {
    let (child, lines) = serve(&dir.join("relay.toml"));
    let mut addrs = vec![String::new(); listeners.len()];
    let deadline = Instant::now() + Duration::from_secs(60);
    while addrs.iter().any(String::is_empty) && Instant::now() < deadline {
        let Ok(line) = lines.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        for (i, l) in listeners.iter().enumerate() {
            if line.contains("listening") && line.contains(&format!("listener={l} ")) {
                addrs[i] = line
                    .split("addr=")
                    .nth(1)
                    .and_then(|a| a.split_whitespace().next())
                    .unwrap_or_default()
                    .to_owned();
            }
        }
    }
    assert!(addrs.iter().all(|a| !a.is_empty()), "relay did not start");
    (child, addrs, lines)
}

/// A keep-alive HTTP/1.1 connection: one request at a time.
pub struct Http {
    s: BufReader<TcpStream>,
}

impl Http {
    pub fn connect(addr: &str) -> Http {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Http {
            s: BufReader::new(s),
        }
    }

    /// Status and body.
    pub fn request(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        self.request_with(method, path, "", body)
    }

    /// Status and body, with `extra` header lines (each ending in CRLF).
    pub fn request_with(
        &mut self,
        method: &str,
        path: &str,
        extra: &str,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\n{extra}content-length: {}\r\n\r\n",
            body.len()
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        self.s.get_mut().write_all(&req).expect("write request");
        let mut status = 0;
        let mut len = 0;
        loop {
            let mut line = String::new();
            self.s.read_line(&mut line).expect("read head");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(rest) = line.strip_prefix("HTTP/1.1 ") {
                status = rest[..3].parse().expect("status");
            } else if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().expect("length");
                }
            }
        }
        let mut body = vec![0; len];
        self.s.read_exact(&mut body).expect("read body");
        (status, body)
    }
}

/// Open a WebSocket (blocking, minimal client) and collect text messages until `quiet`
/// passes without one.
pub fn ws_texts(addr: &str, path: &str, quiet: Duration) -> Vec<String> {
    let mut s = TcpStream::connect(addr).expect("connect ws");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").expect("upgrade");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).expect("read head"),
            1,
            "closed during upgrade"
        );
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.set_read_timeout(Some(quiet)).expect("timeout");
    let mut out = Vec::new();
    let mut read_exact = |n: usize| -> Option<Vec<u8>> {
        let mut v = vec![0u8; n];
        s.read_exact(&mut v).ok().map(|_| v)
    };
    while let Some(h) = read_exact(2) {
        let len = match h[1] & 0x7f {
            126 => read_exact(2).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize),
            127 => {
                read_exact(8).map(|l| u64::from_be_bytes(l.try_into().unwrap_or_default()) as usize)
            }
            n => Some(n as usize),
        };
        let Some(payload) = len.and_then(&mut read_exact) else {
            break;
        };
        if h[0] & 0x0f == 1 {
            out.push(String::from_utf8_lossy(&payload).into_owned());
        }
    }
    out
}
