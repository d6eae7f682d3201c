//! TCP listeners served by hyper: limits, TLS, routing to sessions and ingress.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::ListenerKind;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::tenant::Tenant;

/// A TCP listener's runtime settings.
pub struct TcpListenerCtx {
    /// Listener name.
    pub name: String,
    /// ws, wss or http.
    pub kind: ListenerKind,
    /// Path prefix → tenant, longest prefix first.
    pub routes: Vec<(String, Arc<Tenant>)>,
    /// Serve HTTP ingress beside WebSocket.
    pub http_ingress: bool,
    /// Allowed `Origin` values for WebSocket upgrades (empty: any).
    pub allowed_origins: Vec<String>,
    /// Request body limit.
    pub max_body: usize,
    /// TLS handshake and request-head deadline.
    pub handshake_timeout: Duration,
    /// Connections allowed per IP.
    pub max_per_ip: usize,
    /// TLS acceptor for wss.
    pub tls: Option<TlsAcceptor>,
    /// Open connections by IP.
    per_ip: DashMap<IpAddr, usize>,
    /// Permits for `max_connections`.
    permits: Arc<Semaphore>,
}

impl TcpListenerCtx {
    /// Build the context; routes are sorted so the longest prefix matches first.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        kind: ListenerKind,
        mut routes: Vec<(String, Arc<Tenant>)>,
        http_ingress: bool,
        max_body: usize,
        handshake_timeout: Duration,
        max_connections: usize,
        max_per_ip: usize,
        tls: Option<TlsAcceptor>,
    ) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        TcpListenerCtx {
            name,
            kind,
            routes,
            http_ingress: http_ingress || kind == ListenerKind::Http,
            allowed_origins: Vec::new(),
            max_body,
            handshake_timeout,
            max_per_ip,
            tls,
            per_ip: DashMap::new(),
            permits: Arc::new(Semaphore::new(max_connections)),
        }
    }

    /// Whether a WebSocket upgrade's `Origin` is allowed (no header: not a browser, allowed).
    pub fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        if self.allowed_origins.is_empty() {
            return true;
        }
        match headers.get(hyper::header::ORIGIN).map(|v| v.to_str()) {
            None => true,
            Some(Ok(o)) => self
                .allowed_origins
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(o)),
            Some(Err(_)) => false,
        }
    }

    /// The tenant for a path and the path relative to its prefix.
    pub fn route(&self, path: &str) -> Option<(&Arc<Tenant>, String)> {
        self.routes.iter().find_map(|(prefix, t)| {
            let p = prefix.trim_end_matches('/');
            let rest = path.strip_prefix(p)?;
            // `/p/` must not match `/push`: the prefix ends at a path segment boundary.
            if p.is_empty() || rest.is_empty() || rest.starts_with('/') {
                let rel = if rest.starts_with('/') {
                    rest.to_owned()
                } else {
                    format!("/{rest}")
                };
                Some((t, rel))
            } else {
                None
            }
        })
    }
}

/// Holds a connection's place in the listener and per-IP limits until dropped; a WebSocket
/// session keeps it after the upgrade, when hyper's connection task has already ended.
pub struct ConnSlot {
    ctx: Arc<TcpListenerCtx>,
    ip: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Some(mut n) = self.ctx.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
        }
        self.ctx.per_ip.remove_if(&self.ip, |_, n| *n == 0);
    }
}

/// The address a connection counts against for `max_connections_per_ip`: the IPv4
/// address, or the IPv6 /64 (one subscriber usually holds a whole /64).
fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

fn take_slot(ctx: &Arc<TcpListenerCtx>, ip: IpAddr) -> Result<ConnSlot, &'static str> {
    let permit = ctx
        .permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| "listener is at max_connections")?;
    let mut n = ctx.per_ip.entry(ip).or_insert(0);
    if *n >= ctx.max_per_ip {
        return Err("address is at max_connections_per_ip");
    }
    *n += 1;
    drop(n);
    Ok(ConnSlot {
        ctx: ctx.clone(),
        ip,
        _permit: permit,
    })
}

/// Accept connections until shutdown.
pub async fn serve(listener: TcpListener, ctx: Arc<TcpListenerCtx>, node: Arc<Node>) {
    let token = node.shutdown.token.clone();
    let mut backoff = Duration::from_millis(5);
    loop {
        let (stream, remote) = tokio::select! {
            _ = token.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => { backoff = Duration::from_millis(5); x }
                Err(e) => {
                    // EMFILE/ENFILE: out of descriptors. Say so clearly and back off.
                    tracing::warn!(listener = %ctx.name, error = %e, "accept failed (out of file descriptors?); retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let ip = limit_key(remote.ip());
        let slot = match take_slot(&ctx, ip) {
            Ok(s) => s,
            Err(why) => {
                Metrics::inc(&node.metrics.connections_refused);
                tracing::debug!(listener = %ctx.name, %remote, why, "connection refused");
                if ctx.tls.is_none() {
                    node.shutdown.tracker.spawn(refuse(stream, why));
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (ctx, node2) = (ctx.clone(), node.clone());
        node.shutdown.tracker.spawn(async move {
            let slot = Arc::new(slot);
            match &ctx.tls {
                Some(acceptor) => {
                    match tokio::time::timeout(ctx.handshake_timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls)) => {
                            serve_conn(tls, remote, ctx.clone(), node2, true, slot).await
                        }
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                }
                None => serve_conn(stream, remote, ctx.clone(), node2, false, slot).await,
            }
        });
    }
    tracing::debug!(listener = %ctx.name, "stopped accepting");
}

/// A clear answer for a connection over the limits, then close.
async fn refuse(mut stream: TcpStream, why: &'static str) {
    let body = format!("{why}\n");
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(resp.as_bytes())).await;
}

async fn serve_conn<I>(
    io: I,
    remote: SocketAddr,
    ctx: Arc<TcpListenerCtx>,
    node: Arc<Node>,
    tls: bool,
    slot: Arc<ConnSlot>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let token = node.shutdown.token.clone();
    let svc = {
        let (ctx, node) = (ctx.clone(), node.clone());
        service_fn(move |req| {
            let (ctx, node, slot) = (ctx.clone(), node.clone(), slot.clone());
            async move { Ok::<_, Infallible>(handle(req, ctx, node, remote, tls, slot).await) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.handshake_timeout)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%remote, error = %e, "http connection error") },
        _ = token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    ctx: Arc<TcpListenerCtx>,
    node: Arc<Node>,
    remote: SocketAddr,
    tls: bool,
    slot: Arc<ConnSlot>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        return text_response(200, "ok\n");
    }
    if path == "/metrics" && ctx.kind == ListenerKind::Http {
        let mut r = text_response(200, &node.metrics.render());
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return r;
    }
    if path == "/admin/reload" && ctx.kind == ListenerKind::Http {
        return admin_reload(&req, &node, remote).await;
    }
    let Some((tenant, rel)) = ctx.route(&path) else {
        return text_response(404, &format!("no route for {path}\n"));
    };
    let tenant = tenant.clone();
    if tenant.config.profile == crate::config::WireProfile::SocketIo
        && crate::session::engineio::is_engine_request(&req)
    {
        if !ctx.kind.websocket() {
            return text_response(400, "this listener does not accept client connections\n");
        }
        return crate::session::engineio::handle(req, tenant, node, ctx, remote, tls, slot).await;
    }
    if fastwebsockets::upgrade::is_upgrade_request(&req) {
        if !ctx.kind.websocket() {
            return text_response(400, "this listener does not accept WebSocket connections\n");
        }
        if !ctx.origin_allowed(req.headers()) {
            Metrics::inc(&node.metrics.handshakes_rejected);
            return text_response(403, "origin not allowed\n");
        }
        return crate::session::handshake(req, tenant, node, remote, tls, slot).await;
    }
    if ctx.http_ingress {
        return crate::ingress::http::handle(
            req,
            tenant,
            node,
            rel,
            remote,
            ctx.max_body,
            ctx.handshake_timeout,
        )
        .await;
    }
    let mut r = text_response(426, "this endpoint speaks WebSocket\n");
    r.headers_mut().insert(
        hyper::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    r
}

/// `POST /admin/reload[?tenant=name]`, from loopback only: reload WASM plugins now.
async fn admin_reload(
    req: &Request<Incoming>,
    node: &Arc<Node>,
    remote: SocketAddr,
) -> Response<Full<Bytes>> {
    if !remote.ip().to_canonical().is_loopback() {
        return text_response(403, "admin endpoints answer loopback clients only\n");
    }
    if req.method() != hyper::Method::POST {
        return text_response(405, "use POST\n");
    }
    let only = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "tenant")
            .map(|(_, v)| v.into_owned())
    });
    let node = node.clone();
    let result = tokio::task::spawn_blocking(move || node.reload_plugins(only.as_deref())).await;
    match result {
        Ok(v) => {
            let failed = v
                .as_object()
                .is_some_and(|o| o.values().any(|r| r["ok"] == false));
            let mut r = text_response(if failed { 422 } else { 200 }, &v.to_string());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => text_response(500, &format!("reload failed: {e}\n")),
    }
}

/// A plain-text response (or whatever body is given) with a status; invalid statuses become 500.
pub fn text_response(status: u16, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r
}

/// Headers as (lowercase name, value) pairs; values that are not UTF-8 are skipped.
pub fn header_pairs(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_owned(), v.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, DEFAULT_CONFIG};

    #[test]
    fn per_ip_limits_group_ipv6_by_64() {
        let k = |s: &str| limit_key(s.parse().unwrap()).to_string();
        assert_eq!(k("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(k("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::");
        assert_eq!(k("::ffff:10.1.2.3"), "10.1.2.3");
        assert_eq!(k("127.0.0.2"), "127.0.0.2");
    }

    #[test]
    fn routes_match_whole_path_segments() {
        let config = Config::parse(DEFAULT_CONFIG, None).expect("default config");
        let tenant = |n: &str| {
            let mut c = config.tenants[0].clone();
            c.name = toml::Spanned::new(0..0, n.to_owned());
            let deps = crate::tenant::TenantDeps {
                cache_dir: "unused".into(),
                plugin_path: None,
                kv: Arc::new(crate::store::TenantKv::in_memory(1 << 20)),
                log_dir: "unused".into(),
                metrics: Default::default(),
            };
            Arc::new(Tenant::new(c, deps).expect("tenant"))
        };
        let ctx = TcpListenerCtx::new(
            "t".into(),
            ListenerKind::Http,
            vec![
                ("/p/".into(), tenant("a")),
                ("/".into(), tenant("b")),
                ("/api".into(), tenant("c")),
            ],
            true,
            1,
            Duration::from_secs(1),
            1,
            1,
            None,
        );
        let r = |p: &str| ctx.route(p).map(|(t, rel)| (t.name.to_string(), rel));
        assert_eq!(
            r("/push"),
            Some(("b".into(), "/push".into())),
            "/p/ must not capture /push"
        );
        assert_eq!(r("/p/push"), Some(("a".into(), "/push".into())));
        assert_eq!(r("/p"), Some(("a".into(), "/".into())));
        assert_eq!(r("/api/x"), Some(("c".into(), "/x".into())));
        assert_eq!(r("/apix"), Some(("b".into(), "/apix".into())));
    }
}
