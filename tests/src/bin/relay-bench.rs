//! `relay-bench`: the load tool. It drives any server that speaks the bench
//! contract (relay's `open` policy, and the Node peers in `tests/bench/peers`):
//!
//! - clients connect to a URL template such as `ws://127.0.0.1:8080/?rooms={room}`
//!   (`ws://` or `wss://`), with the `ws-json` wire (every text frame is a message)
//!   or the `socket.io` wire (raw Engine.IO v4 WebSocket: `40` is sent after the open
//!   packet, the `40` answer means connected, `2` pings are answered with `3`);
//! - backends push `{"room": R, "data": D}` by HTTP POST or as one UDP datagram;
//! - `D` is a string carrying its send time (`@T<µs>@` then padding), so every
//!   client can take push→receive latency from what it receives.
//!
//! Subcommands: `fanout` (deliveries/s and latency at a fixed or maximal rate),
//! `idle` (RSS per idle connection, over several processes when one process's
//! descriptors are not enough), `handshakes` (connections/s, optionally md5-signed
//! queries) and `push` (HTTP ingress requests/s, optionally signed). Each prints a
//! table, shows progress on stderr and appends one JSON line to `--json`.
//! Loopback only, bounded in count and time.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Parser)]
#[command(
    name = "relay-bench",
    about = "Load tool for relay and its peers (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Clients in rooms, pushes at a fixed or maximal rate: deliveries/s and latency.
    Fanout(FanoutArgs),
    /// Idle connections: server RSS per connection.
    Idle(IdleArgs),
    /// Connection storm: WebSocket handshakes per second.
    Handshakes(HandshakeArgs),
    /// HTTP ingress requests per second (optionally signed).
    Push(PushArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// Name of this run in the report.
    #[arg(long, default_value = "run")]
    label: String,
    /// The server's process id (RSS and CPU are read from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Give up after this many seconds (the whole run).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Wire {
    /// Every text frame is a message.
    WsJson,
    /// Raw Engine.IO v4 WebSocket with Socket.IO packets.
    #[value(name = "socket.io")]
    SocketIo,
}

#[derive(Args, Clone)]
struct ClientArgs {
    /// Client URL; `{room}` is replaced by the client's room (`room-<k>`). Repeat it to
    /// spread clients over several servers (client i uses URL i mod count: the nodes of
    /// a cluster).
    #[arg(long, required = true)]
    url: Vec<String>,
    /// Wire profile.
    #[arg(long, value_enum, default_value = "ws-json")]
    wire: Wire,
    /// Number of clients.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Number of rooms; client i is in room i % rooms.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Source addresses 127.0.0.1 .. 127.0.0.N (more ephemeral ports).
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// Connections opened at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// PEM CA to trust for wss:// (relay writes its dev CA to <data_dir>/dev-certs/ca.pem).
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    clients: ClientArgs,
    /// Where pushes go: `http://host:port/path` (POST JSON) or `udp://host:port`.
    #[arg(long)]
    push: String,
    /// Pushes per second; 0 = as fast as they are delivered (bounded by --window).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Number of pushes (after warm-up).
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    /// Stop pushing after this many seconds even if --messages are not all sent.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// With --rate 0: pushes in flight (sent but not yet delivered to all).
    #[arg(long, default_value_t = 64)]
    window: u64,
    /// Size of the pushed data string, bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Record latency on every k-th client (1 = all).
    #[arg(long, default_value_t = 1)]
    sample: usize,
    /// HTTP connections used for pushing.
    #[arg(long, default_value_t = 4)]
    pushers: usize,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    clients: ClientArgs,
    /// Processes to spread the clients over (each has its own descriptor limit).
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Seconds to wait after the last connection before reading the server's RSS.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    /// Internal: run as worker k of --procs (prints READY and waits for stdin to close).
    #[arg(long, hide = true)]
    worker: Option<usize>,
}

#[derive(Args)]
struct HandshakeArgs {
    #[command(flatten)]
    common: Common,
    /// Server `host:port`.
    #[arg(long)]
    addr: SocketAddr,
    /// Request path and query prefix, e.g. `/signed` (the query is generated).
    #[arg(long, default_value = "/")]
    path: String,
    /// Sign each query as md5-sign expects: `user=U&ts=T&sign=md5(U\nT\nkey)`.
    #[arg(long)]
    sign_key: Option<String>,
    /// Handshakes in all.
    #[arg(long, default_value_t = 4000)]
    count: usize,
    /// Handshakes in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Source addresses 127.0.0.1 .. 127.0.0.N.
    #[arg(long, default_value_t = 8)]
    sources: u8,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PushFormat {
    /// `{"room":R,"data":D}` JSON (relay's open policy and the peers).
    Open,
    /// node-socket-im's `/api/notify` form with `sign = md5(source+room_id+data+key)`.
    SocketIm,
}

#[derive(Args)]
struct PushArgs {
    #[command(flatten)]
    common: Common,
    /// `http://host:port/path`.
    #[arg(long)]
    push: String,
    /// Request format.
    #[arg(long, value_enum, default_value = "open")]
    format: PushFormat,
    /// For socket-im: `source:key`.
    #[arg(long)]
    source_key: Option<String>,
    /// Requests in all.
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    /// Keep-alive connections, one request in flight each.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Room pushed to.
    #[arg(long, default_value = "nobody")]
    room: String,
}

/// Microseconds since the tool started (pushes and receipts share this clock).
fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn main() -> Result<()> {
    // Clients need one descriptor each: raise the soft limit to the hard one.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    now_us();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Fanout(a) => fanout(a).await,
            Cmd::Idle(a) => idle(a).await,
            Cmd::Handshakes(a) => handshakes(a).await,
            Cmd::Push(a) => push_bench(a).await,
        }
    })
}

// ---------------------------------------------------------------- server stats

#[derive(Clone, Copy, Default)]
struct ProcSample {
    rss_kib: u64,
    cpu_ticks: u64,
    at: Option<Instant>,
}

fn sample(pid: Option<u32>) -> ProcSample {
    let Some(pid) = pid else {
        return ProcSample::default();
    };
    let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0);
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let cpu_ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    ProcSample {
        rss_kib,
        cpu_ticks,
        at: Some(Instant::now()),
    }
}

/// Server CPU use between two samples, in % of one core (clock ticks are 1/100 s here).
fn cpu_pct(a: ProcSample, b: ProcSample) -> f64 {
    match (a.at, b.at) {
        (Some(x), Some(y)) => {
            let secs = y.duration_since(x).as_secs_f64().max(1e-6);
            (b.cpu_ticks.saturating_sub(a.cpu_ticks)) as f64 / 100.0 / secs * 100.0
        }
        _ => 0.0,
    }
}

fn emit(common: &Common, table: &[(&str, String)], result: Value) -> Result<()> {
    let w = table.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!("== {} ==", common.label);
    for (k, v) in table {
        println!("  {k:<w$}  {v}");
    }
    if let Some(path) = &common.json {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "{result}")?;
    }
    Ok(())
}

/// Prints `what` every second on stderr until dropped.
struct Progress(tokio::task::JoinHandle<()>);

impl Progress {
    fn start(what: impl Fn() -> String + Send + 'static) -> Progress {
        Progress(tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            t.tick().await;
            loop {
                t.tick().await;
                eprintln!("  … {}", what());
            }
        }))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Outcomes of many attempts (connections, handshakes, requests): successes, failures
/// and the first failure's reason.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn record(&self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.ok.fetch_add(1, Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Relaxed);
                if let Ok(mut f) = self.first_error.lock() {
                    f.get_or_insert(e);
                }
            }
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Relaxed)
    }

    fn failed(&self) -> usize {
        self.failed.load(Relaxed)
    }

    fn first_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|f| f.clone())
    }
}

/// Run `count` attempts on `workers` (one task each, attempts handed out in order),
/// showing progress; returns the tally and the seconds taken.
async fn storm<W, F, Fut>(
    what: &'static str,
    count: usize,
    workers: Vec<W>,
    attempt: F,
) -> Result<(Arc<Tally>, f64)>
where
    W: Send + 'static,
    F: Fn(W, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = (W, Result<(), String>)> + Send,
{
    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let _p = {
        let tally = tally.clone();
        Progress::start(move || format!("{what} {}/{count}", tally.ok()))
    };
    let mut tasks = Vec::new();
    for mut w in workers {
        let (tally, next, attempt) = (tally.clone(), next.clone(), attempt.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= count {
                    return;
                }
                let (back, outcome) = attempt(w, i).await;
                w = back;
                tally.record(outcome);
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok((tally, start.elapsed().as_secs_f64()))
}

/// Report a storm: the table and the JSON line (`extra` adds scenario fields).
fn report_rate(
    common: &Common,
    (scenario, what): (&str, &str),
    count: usize,
    (tally, secs): (&Tally, f64),
    (before, after): (ProcSample, ProcSample),
    extra: Value,
) -> Result<()> {
    let (ok, failed, err) = (tally.ok(), tally.failed(), tally.first_error());
    let mut result = json!({
        "scenario": scenario,
        "label": common.label,
        "count": count,
        "ok": ok,
        "failed": failed,
        "first_error": err,
        "per_s": ok as f64 / secs,
        "server": {"cpu_pct": cpu_pct(before, after), "rss_kib": after.rss_kib},
    });
    if let (Some(r), Value::Object(x)) = (result.as_object_mut(), extra) {
        r.extend(x);
    }
    emit(
        common,
        &[
            (
                what,
                format!("{ok} of {count} in {secs:.2} s ({failed} failed)"),
            ),
            ("per second", format!("{:.0}", ok as f64 / secs)),
            ("first error", err.unwrap_or_else(|| "-".into())),
            ("server CPU", format!("{:.0}%", cpu_pct(before, after))),
        ],
        result,
    )
}

// ---------------------------------------------------------------- clients

/// What one client task shares with the run.
struct Shared {
    wire: Wire,
    /// Messages received (frames carrying `@T`), all clients.
    received: AtomicU64,
    /// Clients connected (ws: upgraded; socket.io: `40` received).
    ready: AtomicUsize,
    /// Clients that have received a message since `armed` (warm-up probe).
    warm: AtomicUsize,
    /// Bumped to restart the warm-up count.
    armed: AtomicU64,
    /// Clients whose connection ended.
    closed: AtomicUsize,
    /// Record latency only while set.
    measuring: AtomicBool,
    /// When the last message arrived (µs, see `now_us`).
    last_rx: AtomicU64,
    /// Latency histograms (µs), sharded to keep lock contention down.
    hist: Vec<Mutex<Histogram<u64>>>,
}

impl Shared {
    fn new(wire: Wire) -> Result<Arc<Shared>> {
        let mut hist = Vec::new();
        for _ in 0..16 {
            hist.push(Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3)?));
        }
        Ok(Arc::new(Shared {
            wire,
            received: AtomicU64::new(0),
            ready: AtomicUsize::new(0),
            warm: AtomicUsize::new(0),
            armed: AtomicU64::new(0),
            closed: AtomicUsize::new(0),
            measuring: AtomicBool::new(false),
            last_rx: AtomicU64::new(0),
            hist,
        }))
    }

    fn merged(&self) -> Result<Histogram<u64>> {
        let mut all = Histogram::new_with_bounds(1, 120_000_000, 3)?;
        for h in &self.hist {
            if let Ok(h) = h.lock() {
                all.add(&*h)?;
            }
        }
        Ok(all)
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

struct Target {
    addr: SocketAddr,
    host: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    path: String,
}

fn parse_url(url: &str, ca: Option<&std::path::Path>) -> Result<Target> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("ws://") {
        (false, r)
    } else {
        bail!("--url must start with ws:// or wss://");
    };
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path }.to_owned();
    let addr = resolve(host)?;
    ensure!(
        addr.ip().is_loopback(),
        "relay-bench only targets loopback addresses"
    );
    let tls = if tls {
        let ca = ca.context("wss:// needs --ca <PEM file>")?;
        let connector = tokio_rustls::TlsConnector::from(relay_tests::tls_client_config(ca)?);
        let name = rustls_pki_types::ServerName::try_from(
            host.rsplit_once(':').map_or(host, |(h, _)| h).to_owned(),
        )?;
        Some((connector, name))
    } else {
        None
    };
    Ok(Target {
        addr,
        host: host.to_owned(),
        tls,
        path,
    })
}

fn resolve(host: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let addr = host
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("no IPv4 address for {host}"))?;
    ensure!(
        addr.ip().is_loopback(),
        "relay-bench only targets loopback addresses"
    );
    Ok(addr)
}

fn source(i: usize, sources: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        1 + (i % sources.max(1) as usize) as u8,
    ))
}

async fn tcp_from(src: IpAddr, addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(src, 0))?;
    let tcp = s.connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Connect and upgrade; returns the stream and any bytes read past the response head.
async fn connect(t: &Target, src: IpAddr, path: &str) -> Result<(Box<dyn Stream>, Vec<u8>)> {
    let tcp = tcp_from(src, t.addr).await?;
    let mut s: Box<dyn Stream> = match &t.tls {
        Some((c, name)) => Box::new(c.connect(name.clone(), tcp).await.context("TLS")?),
        None => Box::new(tcp),
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        t.host
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = s.read(&mut chunk).await?;
        ensure!(n > 0, "closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        ensure!(buf.len() < 16 * 1024, "response head too large");
    };
    ensure!(
        buf.starts_with(b"HTTP/1.1 101"),
        "upgrade refused: {}",
        String::from_utf8_lossy(&buf[..end])
            .lines()
            .next()
            .unwrap_or("")
    );
    Ok((s, buf.split_off(end)))
}

/// A masked client text frame (zero mask: the payload goes as is).
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// One client: answer pings, count messages, record latency when sampled.
async fn client_loop(
    s: Box<dyn Stream>,
    mut pending: Vec<u8>,
    shared: Arc<Shared>,
    index: usize,
    sampled: bool,
) {
    let (mut rd, mut wr) = tokio::io::split(s);
    let sio = shared.wire == Wire::SocketIo;
    let mut ready = !sio;
    if ready {
        shared.ready.fetch_add(1, Relaxed);
    }
    let mut warm_epoch = u64::MAX;
    let mut buf = vec![0u8; 64 * 1024];
    let shard = &shared.hist[index % shared.hist.len()];
    'outer: loop {
        let mut pos = 0;
        let mut got = 0u64;
        let mut replies: Vec<u8> = Vec::new();
        while let Some((opcode, payload, used)) = relay_tests::server_frame(&pending[pos..]) {
            match opcode {
                0x0..=0x2 => {
                    if let Some(at) = memchr::memmem::find(payload, b"@T") {
                        got += 1;
                        if sampled && shared.measuring.load(Relaxed) {
                            let digits = &payload[at + 2..];
                            let end = digits
                                .iter()
                                .position(|b| !b.is_ascii_digit())
                                .unwrap_or(digits.len());
                            if let Some(t) = std::str::from_utf8(&digits[..end])
                                .ok()
                                .and_then(|d| d.parse::<u64>().ok())
                            {
                                if let Ok(mut h) = shard.lock() {
                                    let _ = h.record(now_us().saturating_sub(t).max(1));
                                }
                            }
                        }
                    } else if sio {
                        if payload == b"2" {
                            replies.extend_from_slice(&text_frame(b"3"));
                        } else if payload.first() == Some(&b'0') {
                            replies.extend_from_slice(&text_frame(b"40"));
                        } else if payload.starts_with(b"40") && !ready {
                            ready = true;
                            shared.ready.fetch_add(1, Relaxed);
                        }
                    }
                }
                0x8 => break 'outer,
                0x9 => {
                    // Pong with the same payload.
                    let mut f = vec![0x8a, 0x80 | payload.len() as u8, 0, 0, 0, 0];
                    f.extend_from_slice(payload);
                    replies.extend_from_slice(&f);
                }
                _ => {}
            }
            pos += used;
        }
        pending.drain(..pos);
        if got > 0 {
            shared.received.fetch_add(got, Relaxed);
            shared.last_rx.store(now_us(), Relaxed);
            let epoch = shared.armed.load(Relaxed);
            if epoch != warm_epoch {
                warm_epoch = epoch;
                shared.warm.fetch_add(1, Relaxed);
            }
        }
        if !replies.is_empty() && wr.write_all(&replies).await.is_err() {
            break;
        }
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
    shared.closed.fetch_add(1, Relaxed);
}

/// Open `args.clients` clients (indices `offset..offset+n`), `connect_concurrency` at a time.
/// Returns (connected, failures, first error, seconds taken).
async fn open_clients(
    args: &ClientArgs,
    shared: &Arc<Shared>,
    offset: usize,
    n: usize,
    sample_every: usize,
) -> Result<(usize, usize, Option<String>, f64)> {
    let targets = args
        .url
        .iter()
        .map(|u| parse_url(u, args.ca.as_deref()).map(Arc::new))
        .collect::<Result<Vec<_>>>()?;
    let (rooms, sources) = (args.rooms.max(1), args.sources);
    let workers = vec![(); args.connect_concurrency.max(1)];
    let (shared, sample_every) = (shared.clone(), sample_every.max(1));
    let (tally, secs) = storm("connected", n, workers, move |w, k| {
        let i = offset + k;
        let (target, shared) = (targets[i % targets.len()].clone(), shared.clone());
        async move {
            let path = target
                .path
                .replace("{room}", &format!("room-{}", i % rooms));
            let outcome = match connect(&target, source(i, sources), &path).await {
                Ok((s, rest)) => {
                    let sampled = i.is_multiple_of(sample_every);
                    tokio::spawn(client_loop(s, rest, shared, i, sampled));
                    Ok(())
                }
                Err(e) => Err(format!("{e:#}")),
            };
            (w, outcome)
        }
    })
    .await?;
    Ok((tally.ok(), tally.failed(), tally.first_error(), secs))
}

async fn wait_until(what: &str, secs: f64, f: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    while !f() {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

// ---------------------------------------------------------------- pushing

enum Pusher {
    Http {
        sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
        uri: String,
        host: String,
    },
    Udp {
        sock: tokio::net::UdpSocket,
    },
}

impl Pusher {
    async fn open(url: &str) -> Result<Pusher> {
        if let Some(rest) = url.strip_prefix("udp://") {
            let addr = resolve(rest)?;
            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
            sock.connect(addr).await?;
            return Ok(Pusher::Udp { sock });
        }
        let rest = url
            .strip_prefix("http://")
            .context("--push must start with http:// or udp://")?;
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let addr = resolve(host)?;
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        Ok(Pusher::Http {
            sender,
            uri: if path.is_empty() { "/" } else { path }.to_owned(),
            host: host.to_owned(),
        })
    }

    /// Send one request; returns the HTTP status and body (UDP: 200, empty).
    async fn send(
        &mut self,
        body: bytes::Bytes,
        content_type: &str,
    ) -> Result<(u16, bytes::Bytes)> {
        match self {
            Pusher::Udp { sock } => {
                sock.send(&body).await?;
                Ok((200, bytes::Bytes::new()))
            }
            Pusher::Http { sender, uri, host } => {
                use http_body_util::BodyExt;
                sender.ready().await?;
                let req = http::Request::post(uri.as_str())
                    .header("host", host.as_str())
                    .header("content-type", content_type)
                    .body(http_body_util::Full::new(body))?;
                let res = sender.send_request(req).await?;
                let status = res.status().as_u16();
                let body = res.into_body().collect().await?.to_bytes();
                Ok((status, body))
            }
        }
    }
}

/// `{"room": R, "data": "@T<now>@xxxx"}` with data of `size` bytes.
fn push_body(room: &str, size: usize) -> bytes::Bytes {
    let stamp = format!("@T{}@", now_us());
    let pad = size.saturating_sub(stamp.len());
    let data = format!("{stamp}{}", "x".repeat(pad));
    bytes::Bytes::from(json!({"room": room, "data": data}).to_string())
}

// ---------------------------------------------------------------- fanout

async fn fanout(a: FanoutArgs) -> Result<()> {
    let timeout = Duration::from_secs(a.common.timeout);
    match tokio::time::timeout(timeout, fanout_run(a)).await {
        Ok(r) => r,
        Err(_) => bail!("the run exceeded --timeout"),
    }
}

async fn fanout_run(a: FanoutArgs) -> Result<()> {
    let c = &a.clients;
    ensure!(
        c.clients > 0 && c.rooms > 0,
        "--clients and --rooms must be positive"
    );
    let shared = Shared::new(c.wire)?;
    let base = sample(a.common.server_pid);
    let (ok, failed, err, secs) = open_clients(c, &shared, 0, c.clients, a.sample).await?;
    ensure!(
        failed == 0,
        "{failed} of {} connections failed: {}",
        c.clients,
        err.unwrap_or_default()
    );
    wait_until("socket.io connects", 30.0, || {
        shared.ready.load(Relaxed) >= ok
    })
    .await?;
    let connected = sample(a.common.server_pid);

    // Room sizes (for expected deliveries).
    let rooms = c.rooms;
    let members: Vec<u64> = (0..rooms)
        .map(|r| ((c.clients + rooms - 1 - r) / rooms) as u64)
        .collect();
    let mut pushers = Vec::new();
    for _ in 0..a.pushers.max(1) {
        pushers.push(Pusher::open(&a.push).await?);
    }

    // Warm-up: push to every room until every client has received something.
    {
        let epoch = shared.armed.fetch_add(1, Relaxed) + 1;
        let _ = epoch;
        shared.warm.store(0, Relaxed);
        let deadline = Instant::now() + Duration::from_secs(30);
        let p = &mut pushers[0];
        while shared.warm.load(Relaxed) < ok {
            ensure!(
                Instant::now() < deadline,
                "warm-up: only {} of {ok} clients received a message",
                shared.warm.load(Relaxed)
            );
            for r in 0..rooms {
                p.send(push_body(&format!("room-{r}"), a.size), "application/json")
                    .await?;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let the warm-up's stragglers arrive, then start from zero.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let received0 = shared.received.load(Relaxed);
    shared.measuring.store(true, Relaxed);

    let expected = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let push_errors = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let avg_members = (c.clients as u64 / rooms as u64).max(1);
    let start = Instant::now();
    let start_us = now_us();
    let before = sample(a.common.server_pid);
    let me_before = sample(Some(std::process::id()));
    let _p = {
        let (shared, sent) = (shared.clone(), sent.clone());
        Progress::start(move || {
            let got = shared.received.load(Relaxed) - received0;
            format!(
                "pushed {} delivered {} ({:.0}/s)",
                sent.load(Relaxed),
                got,
                got as f64 / start.elapsed().as_secs_f64()
            )
        })
    };
    let per = a.messages / pushers.len() as u64;
    let npushers = pushers.len() as u64;
    let mut tasks = Vec::new();
    for (k, mut p) in pushers.into_iter().enumerate() {
        let (shared, expected, sent, push_errors, lost, members) = (
            shared.clone(),
            expected.clone(),
            sent.clone(),
            push_errors.clone(),
            lost.clone(),
            members.clone(),
        );
        let (rate, window, size, duration) = (a.rate, a.window, a.size, a.duration);
        tasks.push(tokio::spawn(async move {
            let mut rng = (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut stalled_since: Option<(Instant, u64)> = None;
            for i in 0..per {
                if start.elapsed().as_secs_f64() > duration {
                    break;
                }
                if rate > 0.0 {
                    // Fixed rate: this pusher's i-th slot.
                    let at =
                        start + Duration::from_secs_f64((i * npushers + k as u64) as f64 / rate);
                    tokio::time::sleep_until(at.into()).await;
                } else {
                    // As fast as delivered: bounded pushes in flight.
                    loop {
                        let got = shared.received.load(Relaxed) - received0 + lost.load(Relaxed);
                        let exp = expected.load(Relaxed);
                        if exp.saturating_sub(got) <= window * avg_members {
                            stalled_since = None;
                            break;
                        }
                        // Nothing for a second (UDP loss): count the rest as lost.
                        match stalled_since {
                            Some((t, g)) if g == got && t.elapsed() > Duration::from_secs(1) => {
                                lost.fetch_add(exp - got, Relaxed);
                                stalled_since = None;
                            }
                            Some((_, g)) if g == got => {}
                            _ => stalled_since = Some((Instant::now(), got)),
                        }
                        // Timer granularity is 1 ms: the window must cover it.
                        tokio::time::sleep(Duration::from_micros(500)).await;
                    }
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let r = (rng % members.len() as u64) as usize;
                expected.fetch_add(members[r], Relaxed);
                match p
                    .send(push_body(&format!("room-{r}"), size), "application/json")
                    .await
                {
                    Ok((s, _)) if s < 300 => {
                        sent.fetch_add(1, Relaxed);
                    }
                    _ => {
                        expected.fetch_sub(members[r], Relaxed);
                        push_errors.fetch_add(1, Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let push_secs = start.elapsed().as_secs_f64();
    // Drain: wait for every expected delivery (at most 10 s more).
    let exp = expected.load(Relaxed);
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    let mut last = (shared.received.load(Relaxed), Instant::now());
    loop {
        let got = shared.received.load(Relaxed) - received0;
        if got >= exp || Instant::now() > drain_deadline {
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    shared.measuring.store(false, Relaxed);
    let after = sample(a.common.server_pid);
    let me_after = sample(Some(std::process::id()));
    // Up to the last delivery: time spent waiting for lost messages does not count.
    let elapsed = (shared.last_rx.load(Relaxed).saturating_sub(start_us) as f64 / 1e6)
        .clamp(1e-3, start.elapsed().as_secs_f64());
    let got = shared.received.load(Relaxed) - received0;
    let h = shared.merged()?;
    let sent = sent.load(Relaxed);
    let perr = push_errors.load(Relaxed);
    let closed = shared.closed.load(Relaxed);
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    let result = json!({
        "scenario": "fanout",
        "label": a.common.label,
        "wire": match c.wire { Wire::WsJson => "ws-json", Wire::SocketIo => "socket.io" },
        "clients": c.clients,
        "rooms": rooms,
        "rate_target": a.rate,
        "pushes": sent,
        "push_rate": sent as f64 / push_secs,
        "expected": exp,
        "delivered": got,
        "elapsed_s": elapsed,
        "deliveries_per_s": got as f64 / elapsed,
        "latency_ms": {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": h.max() as f64 / 1000.0, "samples": h.len()},
        "connect_per_s": ok as f64 / secs,
        "errors": {"connect": failed, "push": perr, "closed": closed, "lost": exp.saturating_sub(got)},
        "server": {
            "rss_kib_idle": base.rss_kib,
            "rss_kib_connected": connected.rss_kib,
            "rss_kib_end": after.rss_kib,
            "cpu_pct": cpu_pct(before, after),
        },
        "load_tool_cpu_pct": cpu_pct(me_before, me_after),
    });
    emit(
        &a.common,
        &[
            ("clients / rooms", format!("{} / {rooms}", c.clients)),
            (
                "pushes",
                format!("{sent} ({:.0}/s)", sent as f64 / push_secs),
            ),
            ("delivered", format!("{got} of {exp} in {elapsed:.2} s")),
            ("deliveries/s", format!("{:.0}", got as f64 / elapsed)),
            (
                "latency ms",
                format!(
                    "p50 {:.2}  p99 {:.2}  p999 {:.2}  max {:.2}  ({} samples)",
                    q(0.5),
                    q(0.99),
                    q(0.999),
                    h.max() as f64 / 1000.0,
                    h.len()
                ),
            ),
            ("connections/s", format!("{:.0}", ok as f64 / secs)),
            (
                "errors",
                format!("connect {failed}, push {perr}, closed {closed}"),
            ),
            (
                "server",
                format!(
                    "RSS {} → {} → {} KiB, CPU {:.0}%",
                    base.rss_kib,
                    connected.rss_kib,
                    after.rss_kib,
                    cpu_pct(before, after)
                ),
            ),
            (
                "load tool CPU",
                format!("{:.0}%", cpu_pct(me_before, me_after)),
            ),
        ],
        result,
    )
}

// ---------------------------------------------------------------- idle

async fn idle(a: IdleArgs) -> Result<()> {
    let c = &a.clients;
    let procs = a.procs.max(1);
    let share = |k: usize| (k * c.clients / procs, (k + 1) * c.clients / procs);
    let shared = Shared::new(c.wire)?;
    if let Some(k) = a.worker {
        // Worker: open my share, report, hold until stdin closes.
        let (from, to) = share(k);
        let (ok, failed, err, secs) = open_clients(c, &shared, from, to - from, usize::MAX).await?;
        wait_until("socket.io connects", 60.0, || {
            shared.ready.load(Relaxed) >= ok
        })
        .await?;
        println!(
            "READY {ok} {failed} {secs} {}",
            err.unwrap_or_default().replace('\n', " ")
        );
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
        return Ok(());
    }
    let base = sample(a.common.server_pid);
    let start = Instant::now();
    let mut children = Vec::new();
    for k in 1..procs {
        let mut args: Vec<String> = std::env::args().skip(1).collect();
        args.extend(["--worker".into(), k.to_string()]);
        let child = tokio::process::Command::new(std::env::current_exe()?)
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        children.push(child);
    }
    let (from, to) = share(0);
    let (mut ok, mut failed, mut err, _) =
        open_clients(c, &shared, from, to - from, usize::MAX).await?;
    wait_until("socket.io connects", 60.0, || {
        shared.ready.load(Relaxed) >= ok
    })
    .await?;
    for child in &mut children {
        let out = child.stdout.as_mut().context("worker stdout")?;
        let mut line = String::new();
        let mut b = [0u8; 1];
        while !line.ends_with('\n') {
            if out.read(&mut b).await? == 0 {
                bail!("a worker ended before it was ready");
            }
            line.push(b[0] as char);
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        ensure!(f.first() == Some(&"READY"), "worker said {line:?}");
        ok += f.get(1).and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
        failed += f.get(2).and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
        if err.is_none() && f.len() > 4 {
            err = Some(f[4..].join(" "));
        }
    }
    let setup = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
    let held = sample(a.common.server_pid);
    let per = (held.rss_kib.saturating_sub(base.rss_kib)) as f64 * 1024.0 / ok.max(1) as f64;
    let closed = shared.closed.load(Relaxed);
    drop(children);
    let result = json!({
        "scenario": "idle",
        "label": a.common.label,
        "url": c.url.join(" "),
        "clients": c.clients,
        "connected": ok,
        "failed": failed,
        "first_error": err,
        "procs": procs,
        "connect_per_s": ok as f64 / setup,
        "closed_early": closed,
        "server": {"rss_kib_before": base.rss_kib, "rss_kib_held": held.rss_kib, "bytes_per_conn": per},
    });
    emit(
        &a.common,
        &[
            (
                "connections",
                format!("{ok} of {} ({failed} failed; {procs} processes)", c.clients),
            ),
            ("first error", err.clone().unwrap_or_else(|| "-".into())),
            ("connections/s", format!("{:.0}", ok as f64 / setup)),
            (
                "server RSS",
                format!("{} → {} KiB", base.rss_kib, held.rss_kib),
            ),
            (
                "RSS per connection",
                format!("{:.0} bytes ({:.2} KiB)", per, per / 1024.0),
            ),
        ],
        result,
    )
}

// ---------------------------------------------------------------- handshakes

fn md5_hex(s: &str) -> String {
    use md5::{Digest, Md5};
    hex_lower(&Md5::digest(s.as_bytes()))
}

/// Lowercase hex (the load tool signs every handshake: it should cost the machine as
/// little as it can, since the server being measured shares it).
fn hex_lower(b: &[u8]) -> String {
    hex::encode(b)
}

async fn handshakes(a: HandshakeArgs) -> Result<()> {
    ensure!(
        a.addr.ip().is_loopback(),
        "relay-bench only targets loopback addresses"
    );
    let salt = std::process::id();
    let target = Arc::new(Target {
        addr: a.addr,
        host: a.addr.to_string(),
        tls: None,
        path: a.path.clone(),
    });
    let (key, sources) = (a.sign_key.clone(), a.sources);
    let before = sample(a.common.server_pid);
    let workers = vec![(); a.concurrency.max(1)];
    let (tally, secs) = storm("handshakes", a.count, workers, move |w, i| {
        let (target, key) = (target.clone(), key.clone());
        async move {
            let user = format!("b{salt}x{i}");
            let query = match &key {
                Some(key) => {
                    let ts = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or_default();
                    format!(
                        "user={user}&ts={ts}&sign={}",
                        md5_hex(&format!("{user}\n{ts}\n{key}"))
                    )
                }
                None => format!("user={user}"),
            };
            let sep = if target.path.contains('?') { '&' } else { '?' };
            let path = format!("{}{sep}{query}", target.path);
            let outcome = connect(&target, source(i, sources), &path)
                .await
                .map(drop)
                .map_err(|e| format!("{e:#}"));
            (w, outcome)
        }
    })
    .await?;
    let after = sample(a.common.server_pid);
    report_rate(
        &a.common,
        ("handshakes", "handshakes"),
        a.count,
        (&tally, secs),
        (before, after),
        json!({"path": a.path, "signed": a.sign_key.is_some()}),
    )
}

// ---------------------------------------------------------------- push

fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

async fn push_bench(a: PushArgs) -> Result<()> {
    let (ct, make): (&str, Box<dyn Fn(usize) -> bytes::Bytes + Send + Sync>) = match a.format {
        PushFormat::Open => {
            let room = a.room.clone();
            ("application/json", Box::new(move |_| push_body(&room, 100)))
        }
        PushFormat::SocketIm => {
            let sk = a
                .source_key
                .clone()
                .context("--format socket-im needs --source-key source:key")?;
            let (source, key) = sk.split_once(':').context("--source-key is source:key")?;
            let (source, key, room) = (source.to_owned(), key.to_owned(), a.room.clone());
            (
                "application/x-www-form-urlencoded",
                Box::new(move |i| {
                    let data = format!("@T{}@bench message {i}", now_us());
                    let sign = md5_hex(&format!("{source}{room}{data}{key}"));
                    bytes::Bytes::from(format!(
                        "source={}&room_id={}&data={}&sign={sign}",
                        form_encode(&source),
                        form_encode(&room),
                        form_encode(&data)
                    ))
                }),
            )
        }
    };
    let make = Arc::new(make);
    let mut pushers = Vec::new();
    for _ in 0..a.concurrency.max(1) {
        pushers.push(Pusher::open(&a.push).await?);
    }
    let before = sample(a.common.server_pid);
    let format = a.format;
    let (tally, secs) = storm("requests", a.count, pushers, move |mut p, i| {
        let make = make.clone();
        async move {
            let outcome = match p.send(make(i), ct).await {
                // socket-im always answers 200; success is `"code":1`.
                Ok((200, body))
                    if format == PushFormat::Open
                        || memchr::memmem::find(&body, b"\"code\":1").is_some() =>
                {
                    Ok(())
                }
                Ok((s, body)) => Err(format!("HTTP {s}: {}", String::from_utf8_lossy(&body))),
                Err(e) => Err(format!("{e:#}")),
            };
            (p, outcome)
        }
    })
    .await?;
    let after = sample(a.common.server_pid);
    let format = match a.format {
        PushFormat::Open => "open",
        PushFormat::SocketIm => "socket-im",
    };
    report_rate(
        &a.common,
        ("push", "requests"),
        a.count,
        (&tally, secs),
        (before, after),
        json!({"format": format}),
    )
}
