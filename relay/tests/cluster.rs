//! Nodes that die without saying goodbye, as `relay serve` child processes sharing a real
//! `redis-server`: a node killed with SIGKILL drops out of the cluster's presence within
//! its expiry, a node restarted under its name leaves no ghost of its former self, and
//! the mailboxes and room history kept through a killed node are served by another.
#![cfg(target_os = "linux")]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ws_texts, Http};

/// A `redis-server` on a free port, no persistence; killed when dropped.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A relay node: a child process with ws and http listeners for tenant `demo`.
struct Node {
    child: Child,
    ws: String,
    http: String,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(redis: &Redis, name: &str, ttl_ms: u64) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        write_config(dir.path(), redis.port, name, ttl_ms);
        let (child, addrs) = common::serve_in(dir.path(), &["ws", "http"]);
        let [ws, http] = <[String; 2]>::try_from(addrs).expect("two listeners");
        Node {
            child,
            ws,
            http,
            _dir: dir,
        }
    }

    fn sigkill(&mut self) {
        let _ = self.child.kill(); // SIGKILL: no goodbye to the cluster
        let _ = self.child.wait();
    }

    /// How many are in `room`, as this node answers.
    fn room_count(&self, room: &str) -> u64 {
        let (status, body) =
            Http::connect(&self.http).request("GET", &format!("/presence?room={room}"), b"");
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        v["count"].as_u64().expect("count")
    }

    /// A WebSocket client that joined `room` at its handshake (kept open while held).
    fn member(&self, room: &str) -> TcpStream {
        let mut s = TcpStream::connect(&self.ws).expect("connect");
        let req = format!("GET /?rooms={room} HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n");
        s.write_all(req.as_bytes()).expect("upgrade");
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).expect("answer");
        assert_eq!(&buf, b"HTTP/1.1 101");
        s
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.sigkill();
    }
}

fn write_config(dir: &Path, redis_port: u16, name: &str, ttl_ms: u64) {
    let config = format!(
        r#"
[server]
data_dir = {data:?}

[cluster]
redis = "redis://127.0.0.1:{redis_port}/0"
node = "{name}"
node_ttl_ms = {ttl_ms}

[[tenant]]
name = "demo"
policy = "open"
history_max = 10

[[listener]]
name = "ws"
kind = "ws"
bind = "127.0.0.1:0"
routes = [{{ path = "/", tenant = "demo" }}]

[[listener]]
name = "http"
kind = "http"
bind = "127.0.0.1:0"
routes = [{{ path = "/", tenant = "demo" }}]
"#,
        data = dir.join("data").display().to_string()
    );
    std::fs::write(dir.join("relay.toml"), config).expect("write config");
}

/// Wait until `f` holds; how long it took.
fn until(what: &str, limit: Duration, f: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

#[test]
fn a_killed_node_drops_out_within_its_expiry_and_a_restarted_one_leaves_no_ghost() {
    let redis = Redis::start();
    let a = Node::start(&redis, "a", 3_000);
    let mut b = Node::start(&redis, "b", 3_000);
    let _m = b.member("p");
    until("a sees b's member", Duration::from_secs(10), || {
        a.room_count("p") == 1
    });
    b.sigkill();
    let gone = until(
        "b's member drops out after SIGKILL",
        Duration::from_secs(10),
        || a.room_count("p") == 0,
    );
    eprintln!("killed node's member gone after {gone:?} (node_ttl_ms 3000)");

    // A long expiry: only the restart, not the expiry, can clear the ghost in time.
    let mut c = Node::start(&redis, "c", 120_000);
    let _m2 = c.member("p");
    until("a sees c's member", Duration::from_secs(10), || {
        a.room_count("p") == 1
    });
    c.sigkill();
    let _c2 = Node::start(&redis, "c", 120_000);
    let gone = until(
        "the restarted node retired its former self",
        Duration::from_secs(20),
        || a.room_count("p") == 0,
    );
    eprintln!("ghost of the restarted node gone after {gone:?} (node_ttl_ms 120000)");
}

#[test]
fn a_mailbox_and_room_history_kept_through_a_node_killed_with_sigkill_are_served_by_another() {
    let redis = Redis::start();
    let mut a = Node::start(&redis, "a", 3_000);
    let b = Node::start(&redis, "b", 3_000);
    // A member of `news` on node a sees h1 (and its offset).
    let http_a = a.http.clone();
    let pusher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        Http::connect(&http_a).request("GET", "/push?room=news&data=h1", b"")
    });
    let seen = ws_texts(&a.ws, "/?rooms=news", Duration::from_millis(800));
    let (status, _) = pusher.join().expect("pusher");
    assert_eq!(status, 200);
    let h1: serde_json::Value = seen
        .iter()
        .find_map(|m| serde_json::from_str(m).ok())
        .unwrap_or_else(|| panic!("h1 not seen: {seen:?}"));
    assert_eq!(h1["data"], "h1", "{seen:?}");
    let offset = h1["offset"].as_str().expect("offset").to_owned();
    let (status, body) = Http::connect(&a.http).request(
        "GET",
        "/push?user=bob&data=kept-before-the-crash&offline=1",
        b"",
    );
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"stored\":true"), "{body}");
    a.sigkill();
    // The room's client reconnects to node b with its offset: exactly what it missed.
    let (status, _) = Http::connect(&b.http).request("GET", "/push?room=news&data=h2", b"");
    assert_eq!(status, 200);
    let got = ws_texts(
        &b.ws,
        &format!("/?rooms=news&offset={offset}"),
        Duration::from_millis(500),
    );
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("\"h2\""), "{got:?}");
    // Bob's client reconnects, to the node still up, and gets what was kept.
    let got = ws_texts(&b.ws, "/?user=bob", Duration::from_millis(500));
    assert!(
        got.iter().any(|m| m.contains("kept-before-the-crash")),
        "{got:?}"
    );
    // Once: a second device gets nothing more.
    std::thread::sleep(Duration::from_millis(200));
    let again = ws_texts(&b.ws, "/?user=bob", Duration::from_millis(300));
    assert!(
        !again.iter().any(|m| m.contains("kept-before-the-crash")),
        "{again:?}"
    );
}
