//! Offline-message benchmark, all in one run on in-process relays:
//! acknowledged offline pushes/s with `sync = always`, `batch` and `none`, the same
//! pushes delivered live to an online user (no storage), and the time to deliver a
//! 1000-message backlog when the user logs in.
//!
//! `cargo run --release -p relay-tests --example offline_bench -- [pushes] [concurrency]`

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn config(dir: &std::path::Path, sync: &str) -> String {
    let (sync, window) = sync.split_once('/').unwrap_or((sync, "0"));
    format!(
        r#"
[server]
data_dir = {:?}
sync = "{sync}"
sync_window_ms = {window}
[[tenant]]
name = "b"
policy = "open"
offline_max = 100000
outbound_queue = 100000
outbound_queue_bytes = 1000000000
[[listener]]
name = "http"
kind = "http"
bind = "127.0.0.1:0"
routes = [{{ path = "/", tenant = "b" }}]
[[listener]]
name = "ws"
kind = "ws"
bind = "127.0.0.1:0"
routes = [{{ path = "/", tenant = "b" }}]
"#,
        dir.display().to_string()
    )
}

/// `pushes` GETs over `conc` keep-alive connections; returns pushes/s.
async fn push_all(
    addr: std::net::SocketAddr,
    pushes: usize,
    conc: usize,
    path: Arc<dyn Fn(usize) -> String + Send + Sync>,
) -> Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (next, path) = (next.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= pushes {
                    return anyhow::Ok(());
                }
                let req = hyper::Request::get(path(i))
                    .header("host", "x")
                    .body(Full::new(Bytes::new()))?;
                let resp = send.send_request(req).await?;
                let status = resp.status();
                resp.into_body().collect().await?;
                anyhow::ensure!(status == 200, "push {i}: {status}");
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(pushes as f64 / start.elapsed().as_secs_f64())
}

fn main() -> Result<()> {
    let pushes = arg(1, 20_000);
    let conc = arg(2, 32);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        for sync in ["always", "batch/0", "batch/2", "batch/5", "none"] {
            let dir = tempfile::tempdir()?;
            let cfg = relay::Config::parse(&config(dir.path(), sync), None).map_err(|e| anyhow!("{e}"))?;
            let running = relay::start(cfg).await?;
            // Pushes spread over 1000 offline users.
            let rate = push_all(
                running.addr("http"),
                pushes,
                conc,
                Arc::new(|i| format!("/push?user=u{}&offline=1&data=message-{i:08}-{}", i % 1000, "x".repeat(40))),
            )
            .await?;
            let stored = running.node.metrics.offline_stored.load(Relaxed);
            println!("offline pushes  sync={sync:<8} {rate:>9.0} acknowledged/s  (stored {stored}, concurrency {conc})");
            running.stop().await;
        }

        // The same pushes delivered live to an online user: no storage involved.
        let dir = tempfile::tempdir()?;
        let cfg = relay::Config::parse(&config(dir.path(), "batch"), None).map_err(|e| anyhow!("{e}"))?;
        let running = relay::start(cfg).await?;
        let (mut live, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/?user=live", running.addr("ws"))).await?;
        let reader = tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut n = 0usize;
            while n < pushes {
                match live.next().await {
                    Some(Ok(_)) => n += 1,
                    _ => break,
                }
            }
            n
        });
        let rate = push_all(
            running.addr("http"),
            pushes,
            conc,
            Arc::new(|i| format!("/push?user=live&data=message-{i:08}-{}", "x".repeat(40))),
        )
        .await?;
        let got = reader.await?;
        println!("live pushes     (no storage) {rate:>9.0} acknowledged/s  (delivered {got})");

        // A 1000-message backlog delivered on login.
        push_all(
            running.addr("http"),
            1000,
            conc,
            Arc::new(|i| format!("/push?user=back&offline=1&data=message-{i:08}")),
        )
        .await?;
        let start = Instant::now();
        let (mut c, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/?user=back", running.addr("ws"))).await?;
        let mut n = 0;
        {
            use futures_util::StreamExt;
            while n < 1000 {
                match tokio::time::timeout(Duration::from_secs(10), c.next()).await {
                    Ok(Some(Ok(_))) => n += 1,
                    _ => break,
                }
            }
        }
        let took = start.elapsed();
        println!(
            "backlog on login: {n} messages in {:.1} ms ({:.0} messages/s, including the handshake)",
            took.as_secs_f64() * 1e3,
            n as f64 / took.as_secs_f64()
        );
        running.stop().await;
        anyhow::Ok(())
    })
}
