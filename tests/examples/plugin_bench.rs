//! WASM plugin costs, side by side in one run:
//! 1. a handshake hook through the WASM host (md5-sign plugin) vs the same logic in native Rust;
//! 2. instances created (and initialised) per second;
//! 3. relay handshakes/s with the WASM md5-sign plugin vs the `open` policy.
//!
//! `cargo run --release -p relay-tests --example plugin_bench -- [calls] [connections] [concurrency]`
//!
//! `PLUGIN_BENCH_MD5=path/to/md5_sign.wasm` measures another build of the md5-sign plugin
//! (e.g. other optimisation settings) in place of the bundled one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use relay::plugin::policy::PluginEnv;
use relay::plugin::{PluginLimits, WasmPolicy};
use relay::policy::{HandshakeDecision, HandshakeRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The clients' signing, as cheap as it can be: they share the machine with the server
/// being measured.
fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

const KEY: &str = "bench-key";

/// Unique user ids across storms, so no sign is ever reused.
static NEXT_USER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(10_000_000);

fn request(i: usize) -> HandshakeRequest {
    let (user, ts) = (format!("u{i}"), now());
    HandshakeRequest {
        conn: format!("{i:020}"),
        path: "/".into(),
        query: format!(
            "user={user}&ts={ts}&sign={}",
            md5_hex(&format!("{user}\n{ts}\n{KEY}"))
        ),
        headers: [("host", "127.0.0.1"), ("upgrade", "websocket")]
            .into_iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect(),
        remote: "127.0.0.1:1".parse().expect("addr"),
        tls: false,
        namespace: None,
        auth: None,
    }
}

/// The md5-sign plugin's logic in native Rust (window, sign, replay set).
fn native_handshake(req: &HandshakeRequest, seen: &relay::store::TenantKv) -> bool {
    use relay::store::KvStore;
    let q = |k: &str| req.query_param(k).unwrap_or_default();
    let (user, ts, sign) = (q("user"), q("ts"), q("sign"));
    let Ok(t) = ts.parse::<u64>() else {
        return false;
    };
    if t.abs_diff(now()) > 300 {
        return false;
    }
    if md5_hex(&format!("{user}\n{ts}\n{KEY}")) != sign {
        return false;
    }
    seen.set_if_absent(
        &format!("sign:{sign}"),
        Vec::new(),
        Some(Duration::from_secs(600)),
    )
    .unwrap_or(false)
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

async fn handshake_storm(
    addr: std::net::SocketAddr,
    prefix: &str,
    total: usize,
    conc: usize,
    signed: bool,
) -> f64 {
    let start = Instant::now();
    let per = total / conc;
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0, None);
            for _ in 0..per {
                let n = NEXT_USER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let q = if signed {
                    request(n).query
                } else {
                    format!("user=u{n}")
                };
                let mut s = match tokio::net::TcpStream::connect(addr).await {
                    Ok(s) => s,
                    Err(e) => {
                        failed.get_or_insert(format!("connect: {e}"));
                        continue;
                    }
                };
                let req = format!("GET {prefix}?{q} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
                if let Err(e) = s.write_all(req.as_bytes()).await {
                    failed.get_or_insert(format!("write: {e}"));
                    continue;
                }
                let mut buf = [0u8; 512];
                match s.read(&mut buf).await {
                    Ok(n) if buf[..n].starts_with(b"HTTP/1.1 101") => ok += 1,
                    Ok(n) => {
                        failed.get_or_insert(String::from_utf8_lossy(&buf[..n]).into_owned());
                    }
                    Err(e) => {
                        failed.get_or_insert(format!("read: {e}"));
                    }
                }
            }
            (ok, failed)
        }));
    }
    let (mut ok, mut failed) = (0, None);
    for t in tasks {
        let (n, f) = t.await.unwrap_or((0, Some("task panicked".into())));
        ok += n;
        failed = failed.or(f);
    }
    assert_eq!(
        ok,
        per * conc,
        "every handshake must succeed ({prefix}); first failure: {failed:?}"
    );
    ok as f64 / start.elapsed().as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let calls = arg(1, 20_000);
    let conns = arg(2, 4_000);
    let conc = arg(3, 16);
    let dir = tempfile::tempdir()?;
    let md5_sign = std::env::var_os("PLUGIN_BENCH_MD5")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| relay::plugin::bundled("md5-sign"));
    let mut settings = toml::Table::new();
    settings.insert("key".into(), toml::Value::String(KEY.into()));
    let policy = WasmPolicy::load(PluginEnv {
        tenant: Arc::from("bench"),
        path: md5_sign.clone(),
        cache_dir: dir.path().join("cache"),
        settings,
        limits: PluginLimits {
            deadline: Duration::from_millis(100),
            ..PluginLimits::default()
        },
        kv: Arc::new(relay::store::TenantKv::in_memory(256 << 20)),
        presence: Arc::new(relay::hub::Hub::default()),
        metrics: Arc::new(relay::metrics::Metrics::default()),
        log: Arc::new(relay::msglog::LogTarget {
            dir: dir.path().join("log"),
            max_bytes: 1 << 20,
            keep: 1,
        }),
        headers: Default::default(),
    })
    .map_err(|e| anyhow::anyhow!(e))?;

    // 1. hook call: WASM vs native, same requests (fresh signs each, so the replay set grows alike).
    let reqs: Vec<Arc<HandshakeRequest>> = (0..calls).map(|i| Arc::new(request(i))).collect();
    let mut wasm = Vec::with_capacity(calls);
    for r in &reqs {
        let t = Instant::now();
        let d = policy
            .handshake_blocking(r)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        wasm.push(t.elapsed());
        anyhow::ensure!(
            matches!(d, HandshakeDecision::Accept { .. }),
            "rejected: {d:?}"
        );
    }
    let seen = relay::store::TenantKv::in_memory(256 << 20);
    let mut native = Vec::with_capacity(calls);
    for r in &reqs {
        let t = Instant::now();
        anyhow::ensure!(native_handshake(r, &seen));
        native.push(t.elapsed());
    }
    let (wm, nm) = (percentile(&mut wasm, 0.5), percentile(&mut native, 0.5));
    println!(
        "hook call (md5-sign handshake, {calls} calls): wasm p50 {:.2} µs p99 {:.2} µs | native p50 {:.2} µs | ratio {:.1}x",
        wm.as_secs_f64() * 1e6,
        percentile(&mut wasm, 0.99).as_secs_f64() * 1e6,
        nm.as_secs_f64() * 1e6,
        wm.as_secs_f64() / nm.as_secs_f64().max(1e-9)
    );

    // 2. instantiation rate.
    let n = 500;
    let t = policy.instantiate_many(n).map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "instances created and initialised: {:.0}/s ({n} in {:.3}s)",
        n as f64 / t.as_secs_f64(),
        t.as_secs_f64()
    );

    // 3. handshakes/s against a real relay: open vs wasm md5-sign, same run.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let text = format!(
        r#"
[server]
data_dir = {:?}
[[tenant]]
name = "open"
policy = "open"
[[tenant]]
name = "signed"
policy = "wasm"
plugin = {md5_sign:?}
settings = {{ key = "{KEY}" }}
[[tenant]]
name = "kit"
policy = "wasm"
plugin = "bundled:testkit"
[[listener]]
name = "ws"
kind = "ws"
bind = "127.0.0.1:0"
max_connections = 20000
max_connections_per_ip = 20000
routes = [{{ path = "/open", tenant = "open" }}, {{ path = "/signed", tenant = "signed" }}, {{ path = "/kit", tenant = "kit" }}]
"#,
        dir.path().display().to_string()
    );
    rt.block_on(async {
        let running = relay::start(relay::Config::parse(&text, None).map_err(|e| anyhow::anyhow!("{e}"))?).await?;
        let addr = running.addr("ws");
        // Warm up both paths, then alternate to share the machine's noise.
        handshake_storm(addr, "/open", 200, 4, false).await;
        handshake_storm(addr, "/signed", 200, 4, true).await;
        handshake_storm(addr, "/kit", 200, 4, false).await;
        let (mut open, mut signed, mut kit) = (0.0, 0.0, 0.0);
        for _ in 0..2 {
            open += handshake_storm(addr, "/open", conns / 2, conc, false).await;
            signed += handshake_storm(addr, "/signed", conns / 2, conc, true).await;
            kit += handshake_storm(addr, "/kit", conns / 2, conc, false).await;
        }
        println!(
            "handshakes/s ({conns} each, {conc} concurrent): open {:.0} | wasm md5-sign {:.0} ({:.0}% of open) | wasm testkit, no signature or store write {:.0} ({:.0}%)",
            open / 2.0,
            signed / 2.0,
            100.0 * signed / open,
            kit / 2.0,
            100.0 * kit / open
        );
        anyhow::Ok(())
    })?;
    Ok(())
}
