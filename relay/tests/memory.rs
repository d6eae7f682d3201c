//! Memory bounds of the Engine.IO transport under the attacks found by probing, measured
//! on a real `relay serve` child process (its resident set from /proc), so that nothing
//! else in the test process counts:
//!
//! - many long-polling sessions opened over one keep-alive connection: each holds a few
//!   KiB (before the fix: 343 KiB each, and no connection limit applied);
//! - sessions that never connect a namespace announcing 64 binary attachments and
//!   uploading them: nothing is kept (before: every attachment, up to 1.29 GiB for 30
//!   sessions).
#![cfg(target_os = "linux")]

mod common;

use std::process::Child;

use common::Http;
use std::time::Duration;

/// A relay child process serving one socket.io tenant (open policy) on an ephemeral port.
struct Relay {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Relay {
    fn start(max_message_bytes: usize) -> Relay {
        Relay::with_policy(max_message_bytes, "policy = \"open\"")
    }

    fn with_policy(max_message_bytes: usize, policy: &str) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = format!(
            r#"
[server]
data_dir = {data:?}

[[tenant]]
name = "chat"
{policy}
profile = "socket.io"
max_message_bytes = {max_message_bytes}

[[listener]]
name = "sio"
kind = "ws"
bind = "127.0.0.1:0"
max_connections = 100000
max_connections_per_ip = 100000
routes = [{{ path = "/", tenant = "chat" }}]
"#,
            data = dir.path().join("data").display().to_string()
        );
        std::fs::write(dir.path().join("relay.toml"), config).expect("write config");
        let (child, addrs) = common::serve_in(dir.path(), &["sio"]);
        let addr = addrs.into_iter().next().unwrap_or_default();
        Relay {
            child,
            addr,
            _dir: dir,
        }
    }

    /// Resident set size, MiB.
    fn rss_mib(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kib / 1024.0
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Engine.IO requests on a keep-alive connection.
trait EngineIo {
    fn open_session(&mut self) -> String;
}

impl EngineIo for Http {
    /// Open a v4 polling session; its path.
    fn open_session(&mut self) -> String {
        let (status, body) = self.request("GET", "/socket.io/?EIO=4&transport=polling", b"");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let text = String::from_utf8_lossy(&body);
        let sid = text
            .split("\"sid\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("sid")
            .to_owned();
        format!("/socket.io/?EIO=4&transport=polling&sid={sid}")
    }
}

#[test]
fn a_thousand_polling_sessions_over_one_connection_hold_a_few_kib_each() {
    let relay = Relay::start(65536);
    let mut http = Http::connect(&relay.addr);
    // Warm up the allocator and the route with one session.
    http.open_session();
    let before = relay.rss_mib();
    for _ in 0..1000 {
        http.open_session();
    }
    std::thread::sleep(Duration::from_millis(300));
    let grown = relay.rss_mib() - before;
    // Measured: ~11 MiB in a debug build (343 MiB before the fix).
    assert!(
        grown < 40.0,
        "1000 polling sessions grew the resident set by {grown:.1} MiB"
    );
}

#[test]
fn a_session_keeps_only_the_headers_its_hooks_may_see() {
    // sio-reference reads no header: nothing of a 32 KB header is worth keeping.
    let relay = Relay::with_policy(
        65536,
        "policy = \"wasm\"\nplugin = \"bundled:sio-reference\"",
    );
    let mut http = Http::connect(&relay.addr);
    http.open_session();
    let before = relay.rss_mib();
    let junk = format!("x-junk: {}\r\n", "j".repeat(32 << 10));
    for _ in 0..500 {
        let (s, _) = http.request_with("GET", "/socket.io/?EIO=4&transport=polling", &junk, b"");
        assert_eq!(s, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    let grown = relay.rss_mib() - before;
    // Kept, the headers alone would be 500 x 32 KiB = 16 MiB.
    assert!(
        grown < 12.0,
        "500 sessions with a 32 KiB header nobody reads grew the resident set by {grown:.1} MiB"
    );
}

#[test]
fn attachments_before_connect_are_not_kept() {
    // A limit large enough that every event of the attack fits it: what bounds memory is
    // that a session with no namespace connected keeps no attachment at all.
    let relay = Relay::start(1 << 20);
    let mut http = Http::connect(&relay.addr);
    http.open_session();
    let before = relay.rss_mib();
    let placeholders: Vec<String> = (0..64)
        .map(|i| format!("{{\"_placeholder\":true,\"num\":{i}}}"))
        .collect();
    let announce = format!("4564-[\"x\",{}]", placeholders.join(","));
    // One 15 KB attachment, as a polling binary packet (`b` + base64).
    let mut attachment = b"b".to_vec();
    let raw: Vec<u8> = (0..15_000u32).map(|i| (i * 7 + 3) as u8).collect();
    attachment.extend_from_slice(base64(&raw).as_bytes());
    let sessions = 50;
    for _ in 0..sessions {
        let q = http.open_session();
        let (s, _) = http.request("POST", &q, announce.as_bytes());
        assert_eq!(s, 200);
        for _ in 0..63 {
            let (s, b) = http.request("POST", &q, &attachment);
            assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let grown = relay.rss_mib() - before;
    // Kept, these would be 50 x 63 x 15 KB = 47 MB; measured ~3 MiB (debug build).
    assert!(
        grown < 16.0,
        "{sessions} sessions uploading attachments before CONNECT grew the resident set by {grown:.1} MiB"
    );
}

/// Standard base64 (the test has no base64 crate).
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(A[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
