//! What the tests that run the `relay` binary share.
#![allow(dead_code)] // each test binary uses its part

use std::io::{BufRead, BufReader};
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
    (child, addrs)
}
