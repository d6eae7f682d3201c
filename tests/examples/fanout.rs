//! Quick fan-out baseline: N WebSocket clients in one room of an in-process
//! relay, one publisher emitting M messages of ~100 bytes to the room with a
//! bounded window; reports deliveries/s. The full load tool is a later issue.
//!
//! `cargo run --release -p relay-tests --example fanout -- [clients] [messages] [window] [ws-json|socket.io]`
//!
//! With `socket.io`, every client is a raw Engine.IO v4 WebSocket client of the
//! Socket.IO profile (the same bytes a socket.io-client 4.x reads after its upgrade).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Count complete server text frames in a byte stream (server frames are unmasked);
/// with `only_events`, only Socket.IO event packets (`42…`).
async fn count_frames(mut s: TcpStream, counter: Arc<AtomicU64>, only_events: bool) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut pos = 0;
        let mut frames = 0;
        while let Some((opcode, payload, used)) = relay_tests::server_frame(&pending[pos..]) {
            if opcode == 1 && (!only_events || payload.starts_with(b"42")) {
                frames += 1;
            }
            pos += used;
        }
        pending.drain(..pos);
        counter.fetch_add(frames, Relaxed);
    }
}

/// A minimal client handshake, so the counting reader owns the raw socket.
async fn raw_handshake(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await? == 0 {
            anyhow::bail!("closed during handshake");
        }
        head.push(b[0]);
    }
    anyhow::ensure!(
        head.starts_with(b"HTTP/1.1 101"),
        "handshake refused: {}",
        String::from_utf8_lossy(&head)
    );
    Ok(s)
}

fn main() -> anyhow::Result<()> {
    let clients = arg(1, 1000);
    let messages = arg(2, 2000);
    let window = arg(3, 64);
    let socketio = std::env::args().nth(4).as_deref() == Some("socket.io");
    let profile = if socketio { "socket.io" } else { "ws-json" };
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let data = tempfile::tempdir()?;
    let config = relay::Config::parse(
        &format!(
            r#"
[server]
data_dir = {:?}
[[tenant]]
name = "bench"
policy = "open"
profile = "{profile}"
outbound_queue = 4096
ping_interval_ms = {ping}
idle_timeout_ms = 0
[[listener]]
name = "ws"
kind = "ws"
bind = "127.0.0.1:0"
max_connections = 20000
max_connections_per_ip = 20000
routes = [{{ path = "/", tenant = "bench" }}]
"#,
            data.path().display().to_string(),
            ping = if socketio { 60_000 } else { 0 },
        ),
        None,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let running = server_rt.block_on(relay::start(config))?;
    let addr = running.addr("ws");

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    client_rt.block_on(async move {
        let received = Arc::new(AtomicU64::new(0));
        let base = if socketio { "/socket.io/?EIO=4&transport=websocket&" } else { "/?" };
        for _ in 0..clients {
            let mut tcp = raw_handshake(addr, &format!("{base}rooms=room")).await?;
            if socketio {
                // CONNECT to `/`: a masked text frame "40" (zero mask).
                use tokio::io::AsyncWriteExt;
                tcp.write_all(&[0x81, 0x82, 0, 0, 0, 0, b'4', b'0']).await?;
            }
            tokio::spawn(count_frames(tcp, received.clone(), socketio));
        }
        let tcp = TcpStream::connect(addr).await?;
        let (mut publisher, _) =
            tokio_tungstenite::client_async(format!("ws://{addr}{}", &base[..base.len() - 1]), tcp).await?;
        if socketio {
            publisher.send(Message::Text("40".into())).await?;
        }
        // Wait until every client is registered in the room.
        while running.node.tenants["bench"].hub.all().len() < clients as usize + 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let payload = "x".repeat(40);
        let start = Instant::now();
        for i in 0..messages {
            while i.saturating_sub(received.load(Relaxed) / clients) > window {
                tokio::task::yield_now().await;
            }
            let m = if socketio {
                format!(r#"42["emit",{{"room":"room","data":"{payload}{i:08}"}}]"#)
            } else {
                format!(r#"{{"event":"emit","room":"room","data":"{payload}{i:08}"}}"#)
            };
            publisher.send(Message::Text(m)).await?;
        }
        let total = clients * messages;
        let deadline = Instant::now() + Duration::from_secs(60);
        while received.load(Relaxed) < total && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = start.elapsed();
        let got = received.load(Relaxed);
        let frames = running.node.metrics.frames_queued.load(Relaxed);
        let writes = running.node.metrics.socket_writes.load(Relaxed).max(1);
        println!(
            "profile={profile} clients={clients} messages={messages} delivered={got}/{total} elapsed={:.3}s deliveries/s={:.0} frames/write={:.1}",
            elapsed.as_secs_f64(),
            got as f64 / elapsed.as_secs_f64(),
            frames as f64 / writes as f64
        );
        anyhow::Ok(())
    })?;
    Ok(())
}
