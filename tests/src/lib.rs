//! Helpers for end-to-end tests: start a real relay on ephemeral ports and
//! talk to it with real clients (tokio-tungstenite over TCP or rustls, hyper, UDP).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

pub use relay::{Config, Running};

pub mod redis;
pub mod sio;

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(10);

/// A relay running in this process with its own data directory.
pub struct TestRelay {
    /// The running relay.
    pub running: Running,
    /// Its data directory (dev certificates live here).
    pub dir: tempfile::TempDir,
}

/// The usual test config: tenant `demo` (open policy) on ws, wss, http and udp listeners.
/// `tenant_extra` is appended to the demo tenant's table.
pub fn demo_config(tenant_extra: &str) -> String {
    format!(
        r#"
[[tenant]]
name = "demo"
policy = "open"
{tenant_extra}

[[listener]]
name = "ws"
kind = "ws"
bind = "127.0.0.1:0"
routes = [{{ path = "/", tenant = "demo" }}]

[[listener]]
name = "wss"
kind = "wss"
bind = "127.0.0.1:0"
dev_cert = true
routes = [{{ path = "/", tenant = "demo" }}]

[[listener]]
name = "http"
kind = "http"
bind = "127.0.0.1:0"
routes = [{{ path = "/", tenant = "demo" }}]

[[listener]]
name = "udp"
kind = "udp"
bind = "127.0.0.1:0"
tenant = "demo"
"#
    )
}

impl TestRelay {
    /// Start a relay from config text; `[server] data_dir` is set to a fresh temp dir.
    pub async fn start(config: &str) -> Result<TestRelay> {
        let dir = tempfile::tempdir()?;
        let text = format!(
            "[server]\ndata_dir = {:?}\nshutdown_grace_ms = 5000\n{config}",
            dir.path().display().to_string()
        );
        let config = Config::parse(&text, None).map_err(|e| anyhow!("{e}"))?;
        let running = relay::start(config).await?;
        Ok(TestRelay { running, dir })
    }

    /// Start the demo config.
    pub async fn demo() -> Result<TestRelay> {
        Self::start(&demo_config("")).await
    }

    /// Bound address of a listener.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.running.addr(name)
    }

    /// The dev CA that signed the wss certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("dev-certs").join("ca.pem")
    }

    /// A counter from the metrics.
    pub fn metric(&self, name: &str) -> i64 {
        let mut text = self.running.node.metrics.render();
        if let Some(c) = &self.running.node.cluster {
            text.push_str(&c.cluster().render_metrics());
        }
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("relay_{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    /// Wait until `f` holds (polling), or fail after [`WAIT`].
    pub async fn eventually(&self, what: &str, f: impl Fn(&TestRelay) -> bool) -> Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !f(self) {
            if tokio::time::Instant::now() > deadline {
                bail!("timed out waiting for: {what}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

/// A WebSocket client (tokio-tungstenite) over TCP or TLS.
pub struct Client<S> {
    /// The underlying stream.
    pub ws: WebSocketStream<S>,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// A close frame with this code.
    Close(u16),
    /// A close frame without a code.
    CloseNoCode,
    /// The TCP connection ended without a close frame.
    Eof,
}

/// Connect a plain WebSocket client to `ws://addr{path}`.
pub async fn ws(addr: SocketAddr, path: &str) -> Result<Client<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp)
        .await
        .context("websocket handshake")?;
    Ok(Client { ws })
}

/// A rustls client config trusting only the PEM CA at `ca`.
pub fn tls_client_config(ca: &std::path::Path) -> Result<Arc<tokio_rustls::rustls::ClientConfig>> {
    use rustls_pki_types::{pem::PemObject, CertificateDer};
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// Connect a WebSocket client over TLS to `wss://localhost:port{path}`, trusting `ca`.
pub async fn wss(
    addr: SocketAddr,
    path: &str,
    ca: &std::path::Path,
) -> Result<Client<tokio_rustls::client::TlsStream<TcpStream>>> {
    let connector = tokio_rustls::TlsConnector::from(tls_client_config(ca)?);
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    let tls = connector
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let (ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}{path}", addr.port()), tls)
            .await
            .context("websocket handshake")?;
    Ok(Client { ws })
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Send a JSON text message.
    pub async fn send(&mut self, v: Value) -> Result<()> {
        self.ws.send(WsMessage::Text(v.to_string())).await?;
        Ok(())
    }

    /// Send a raw text message.
    pub async fn send_text(&mut self, t: &str) -> Result<()> {
        self.ws.send(WsMessage::Text(t.to_owned())).await?;
        Ok(())
    }

    /// Next text message as JSON (skipping pings), within [`WAIT`].
    pub async fn recv(&mut self) -> Result<Value> {
        self.recv_within(WAIT).await
    }

    /// Next text message as JSON, within `d`.
    pub async fn recv_within(&mut self, d: Duration) -> Result<Value> {
        let t = self.recv_text_within(d).await?;
        serde_json::from_str(&t).with_context(|| format!("not JSON: {t}"))
    }

    /// Next text message, within `d`.
    pub async fn recv_text_within(&mut self, d: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("no message within {d:?}"))?;
            match m {
                Some(Ok(WsMessage::Text(t))) => return Ok(t),
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                Some(Ok(other)) => bail!("unexpected message {other:?}"),
                Some(Err(e)) => bail!("websocket error: {e}"),
                None => bail!("connection ended"),
            }
        }
    }

    /// Assert no message (pings and pongs aside) arrives for `d`; returns how many pings came.
    pub async fn expect_silence(&mut self, d: Duration) -> Result<usize> {
        let deadline = tokio::time::Instant::now() + d;
        let mut pings = 0;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Ok(pings),
                Ok(Some(Ok(WsMessage::Ping(_)))) => pings += 1,
                Ok(Some(Ok(WsMessage::Pong(_)))) => {}
                Ok(m) => bail!("expected silence, got {m:?}"),
            }
        }
    }

    /// Read until the connection ends (discarding messages), within `d`.
    pub async fn ended_within(&mut self, d: Duration) -> Result<Ended> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("connection still open after {d:?}"))?;
            match m {
                Some(Ok(WsMessage::Close(Some(f)))) => return Ok(Ended::Close(u16::from(f.code))),
                Some(Ok(WsMessage::Close(None))) => return Ok(Ended::CloseNoCode),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ok(Ended::Eof),
            }
        }
    }

    /// Send a close frame with `code`.
    pub async fn close(&mut self, code: u16) -> Result<()> {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        self.ws
            .close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: "".into(),
            }))
            .await?;
        Ok(())
    }
}

/// An HTTP/1.1 request with hyper's client; returns status and body text.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(u16, String)> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::copy_from_slice(body)))?)
        .await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// An HTTP/1.1 request with extra headers; returns status, response headers and body bytes.
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, hyper::HeaderMap, Bytes)> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::copy_from_slice(body)))?)
        .await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, headers, body))
}

/// GET a path; returns status and body.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    http(addr, "GET", path, None, b"").await
}

/// Send one UDP datagram from `from` (an address in 127.0.0.0/8) and wait up to `d` for a reply.
pub async fn udp(
    from: &str,
    to: SocketAddr,
    payload: &[u8],
    d: Duration,
) -> Result<Option<String>> {
    let sock = tokio::net::UdpSocket::bind(format!("{from}:0")).await?;
    sock.send_to(payload, to).await?;
    let mut buf = vec![0u8; 65_536];
    match tokio::time::timeout(d, sock.recv_from(&mut buf)).await {
        Ok(r) => {
            let (n, _) = r?;
            Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned()))
        }
        Err(_) => Ok(None),
    }
}

/// Connect a plain WebSocket client from a chosen local address (e.g. `127.0.0.2`).
pub async fn ws_from(local: &str, addr: SocketAddr, path: &str) -> Result<Client<TcpStream>> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(format!("{local}:0").parse()?)?;
    let tcp = sock.connect(addr).await?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp)
        .await
        .context("websocket handshake")?;
    Ok(Client { ws })
}

/// Raw frames for protocol tests.
pub mod raw {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
    use tokio_tungstenite::tungstenite::Message;

    /// A data frame (text if `text`), final or not, with arbitrary bytes.
    pub fn data(text: bool, payload: &[u8], fin: bool) -> Message {
        let op = OpCode::Data(if text { Data::Text } else { Data::Binary });
        Message::Frame(Frame::message(payload.to_vec(), op, fin))
    }

    /// A continuation frame.
    pub fn cont(payload: &[u8], fin: bool) -> Message {
        Message::Frame(Frame::message(
            payload.to_vec(),
            OpCode::Data(Data::Continue),
            fin,
        ))
    }

    /// A text frame with RSV1 set (no extension was negotiated, so this is a protocol error).
    pub fn text_with_rsv1(payload: &[u8]) -> Message {
        let header = FrameHeader {
            is_final: true,
            rsv1: true,
            opcode: OpCode::Data(Data::Text),
            ..FrameHeader::default()
        };
        Message::Frame(Frame::from_payload(header, payload.to_vec()))
    }

    /// A close frame with an arbitrary payload.
    pub fn close(payload: &[u8]) -> Message {
        let header = FrameHeader {
            is_final: true,
            opcode: OpCode::Control(Control::Close),
            ..FrameHeader::default()
        };
        Message::Frame(Frame::from_payload(header, payload.to_vec()))
    }
}

/// Send a WebSocket upgrade request by hand and return the whole HTTP response text
/// (for handshakes the server refuses; the connection is closed after reading).
pub async fn raw_upgrade(addr: SocketAddr, path: &str, extra_headers: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    // Read until the body announced by content-length is complete (or the server closes).
    tokio::time::timeout(WAIT, async {
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&out);
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                if out.len() >= end + 4 + len {
                    break;
                }
            }
        }
        anyhow::Ok(())
    })
    .await??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A real HTTP server for webhook tests: records every request and answers with the
/// scripted statuses in turn (200 once the script runs out).
pub struct HookServer {
    /// Its address.
    pub addr: SocketAddr,
    /// Requests seen: method, path with query, body.
    pub seen: Arc<std::sync::Mutex<Vec<(String, String, String)>>>,
}

impl HookServer {
    /// Listen on a free port.
    pub async fn start(script: Vec<u16>) -> Result<HookServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let script = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(
            script,
        )));
        let (seen2, script2) = (seen.clone(), script.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (seen, script) = (seen2.clone(), script2.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (seen, script) = (seen.clone(), script.clone());
                            async move {
                                let method = req.method().to_string();
                                let path = req.uri().to_string();
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                if let Ok(mut s) = seen.lock() {
                                    s.push((
                                        method,
                                        path,
                                        String::from_utf8_lossy(&body).into_owned(),
                                    ));
                                }
                                let status = script
                                    .lock()
                                    .ok()
                                    .and_then(|mut s| s.pop_front())
                                    .unwrap_or(200);
                                let mut resp =
                                    hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
                                *resp.status_mut() = hyper::StatusCode::from_u16(status)
                                    .unwrap_or(hyper::StatusCode::OK);
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Ok(HookServer { addr, seen })
    }

    /// Requests seen so far.
    pub fn requests(&self) -> Vec<(String, String, String)> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The first complete WebSocket frame in `buf` (server frames: unmasked): its opcode,
/// its payload and the bytes it takes; `None` until the whole frame is there.
pub fn server_frame(buf: &[u8]) -> Option<(u8, &[u8], usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (hdr, len): (usize, usize) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (10, usize::try_from(u64::from_be_bytes(b)).ok()?)
        }
        126 | 127 => return None,
        l => (2, l as usize),
    };
    let end = hdr.checked_add(len)?;
    (buf.len() >= end).then(|| (buf[0] & 0x0f, &buf[hdr..end], end))
}
