//! TCP listeners served by hyper: the accept loop (limits, TLS) and the routing of each
//! request to a WebSocket session, a Socket.IO session, ingress or the admin endpoints.
//! It sits in the composition root because routing is the one place that knows every
//! kind of handler.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::{ListenerConfig, ListenerKind, WireProfile};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::tenant::Tenant;
use crate::transport::engineio::{self, Sessions};
use crate::transport::websocket::Origins;
use crate::transport::{limits, ConnLimits, Peer};
use crate::web::{text_response, HttpResponse};

/// Where a path prefix leads: a tenant and, for a Socket.IO tenant, its open Engine.IO
/// sessions.
#[derive(Clone)]
pub struct Route {
    /// The tenant.
    pub tenant: Arc<Tenant>,
    /// socket.io: the tenant's Engine.IO sessions (shared by every listener).
    pub engine: Option<Arc<Sessions>>,
}

/// The Engine.IO session table of each Socket.IO tenant, by tenant name: one per tenant,
/// whichever listener a request arrives on.
pub fn engine_tables(node: &Node) -> HashMap<String, Arc<Sessions>> {
    node.tenants
        .iter()
        .filter(|(_, t)| t.config.profile != WireProfile::WsJson)
        .map(|(name, _)| (name.clone(), Arc::default()))
        .collect()
}

/// A TCP listener's runtime settings.
pub struct TcpListenerCtx {
    /// Listener name.
    pub name: String,
    /// ws, wss or http.
    pub kind: ListenerKind,
    /// Path prefix → route, longest prefix first.
    pub routes: Vec<(String, Route)>,
    /// Serve HTTP ingress beside WebSocket.
    pub http_ingress: bool,
    /// Allowed `Origin` values for WebSocket upgrades.
    pub origins: Origins,
    /// Request body limit.
    pub max_body: usize,
    /// TLS handshake and request-head deadline.
    pub handshake_timeout: Duration,
    /// TLS acceptor for wss.
    pub tls: Option<TlsAcceptor>,
    /// `max_connections` and `max_connections_per_ip`.
    pub limits: Arc<ConnLimits>,
    /// `max_handshakes_per_ip_per_sec` (none when 0).
    pub handshakes: Option<crate::rate::PerAddress>,
    /// Addresses exempt from it.
    pub exempt: Vec<ipnet::IpNet>,
    /// Who may use `/admin/*` and `/metrics`.
    pub admin: super::admin::AdminGuard,
}

impl TcpListenerCtx {
    /// Build the context of listener `l`; routes are sorted so the longest prefix matches first.
    pub fn new(
        l: &ListenerConfig,
        node: &Node,
        engines: &HashMap<String, Arc<Sessions>>,
        tls: Option<TlsAcceptor>,
        admin: super::admin::AdminGuard,
    ) -> Self {
        let mut routes: Vec<(String, Route)> = l
            .routes
            .iter()
            .filter_map(|r| {
                let name = r.tenant.get_ref();
                let route = Route {
                    tenant: node.tenants.get(name)?.clone(),
                    engine: engines.get(name).cloned(),
                };
                Some((r.path.get_ref().clone(), route))
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        TcpListenerCtx {
            name: l.name.get_ref().clone(),
            kind: l.kind,
            routes,
            http_ingress: l.http_ingress || l.kind == ListenerKind::Http,
            origins: Origins::new(l.allowed_origins.clone()),
            max_body: l.max_body_bytes,
            handshake_timeout: Duration::from_millis(l.handshake_timeout_ms),
            tls,
            limits: Arc::new(ConnLimits::new(l.max_connections, l.max_connections_per_ip)),
            handshakes: (l.max_handshakes_per_ip_per_sec > 0)
                .then(|| crate::rate::PerAddress::new(l.max_handshakes_per_ip_per_sec)),
            exempt: l.rate_limit_exempt.clone(),
            admin,
        }
    }

    /// Whether a client handshake from `ip` is within the per-address rate.
    fn handshake_allowed(&self, ip: std::net::IpAddr) -> Result<(), Duration> {
        let ip = ip.to_canonical();
        match &self.handshakes {
            Some(p) if !self.exempt.iter().any(|n| n.contains(&ip)) => {
                p.take(crate::transport::limits::limit_key(ip))
            }
            _ => Ok(()),
        }
    }

    /// The route for a path and the path relative to its prefix.
    pub fn route(&self, path: &str) -> Option<(&Route, String)> {
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
        let slot = match ctx.limits.take(remote.ip()) {
            Ok(s) => s,
            Err(why) => {
                Metrics::inc(&node.metrics.connections_refused);
                tracing::debug!(listener = %ctx.name, %remote, why, "connection refused");
                if ctx.tls.is_none() {
                    node.shutdown.tracker.spawn(limits::refuse(stream, why));
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
                            let peer = Peer {
                                remote,
                                tls: true,
                                slot,
                            };
                            serve_conn(tls, ctx.clone(), node2, peer).await
                        }
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                }
                None => {
                    let peer = Peer {
                        remote,
                        tls: false,
                        slot,
                    };
                    serve_conn(stream, ctx.clone(), node2, peer).await
                }
            }
        });
    }
    tracing::debug!(listener = %ctx.name, "stopped accepting");
}

async fn serve_conn<I>(io: I, ctx: Arc<TcpListenerCtx>, node: Arc<Node>, peer: Peer)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let token = node.shutdown.token.clone();
    let remote = peer.remote;
    let svc = {
        let (ctx, node) = (ctx.clone(), node.clone());
        service_fn(move |req| {
            let (ctx, node, peer) = (ctx.clone(), node.clone(), peer.clone());
            async move { Ok::<_, Infallible>(handle(req, ctx, node, peer).await) }
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

/// `ok` on one node; in a cluster also whether Redis answers (`503` when it does not:
/// the node serves its own connections, but cluster-wide answers are degraded).
fn healthz(node: &Node) -> HttpResponse {
    match &node.cluster {
        None => text_response(200, "ok\n"),
        Some(c) if c.cluster().is_up() => {
            text_response(200, &format!("ok\nredis: up\nnode: {}\n", c.cluster().node))
        }
        Some(c) => text_response(
            503,
            &format!("degraded\nredis: down\nnode: {}\n", c.cluster().node),
        ),
    }
}

async fn handle(
    mut req: Request<Incoming>,
    ctx: Arc<TcpListenerCtx>,
    node: Arc<Node>,
    peer: Peer,
) -> HttpResponse {
    let path = match normalize(&mut req) {
        Ok(p) => p,
        Err(refused) => return *refused,
    };
    if path == "/healthz" {
        return healthz(&node);
    }
    let admin_path = path == "/metrics" || path.starts_with("/admin/");
    if admin_path && ctx.kind == ListenerKind::Http {
        if let Err(refused) = ctx.admin.check(req.headers(), peer.remote) {
            return *refused;
        }
    }
    if path == "/metrics" && ctx.kind == ListenerKind::Http {
        let text = node.render_metrics();
        let mut r = text_response(200, &text);
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return r;
    }
    if path == "/admin/reload" && ctx.kind == ListenerKind::Http {
        return super::admin::reload(&req, &node).await;
    }
    let Some((route, rel)) = ctx.route(&path) else {
        return text_response(404, &format!("no route for {path}\n"));
    };
    let tenant = route.tenant.clone();
    let engine = route.engine.is_some() && engineio::is_engine_request(&req);
    if let Err(refused) = handshake_rate(&req, engine, &ctx, &node, peer.remote) {
        return *refused;
    }
    if let Some(sessions) = &route.engine {
        if engine {
            if !ctx.kind.websocket() {
                return text_response(400, "this listener does not accept client connections\n");
            }
            let (sessions, origins) = (sessions.clone(), &ctx.origins);
            return crate::session::socketio::handle(
                req,
                tenant,
                node,
                sessions,
                crate::session::socketio::ListenerRules {
                    origins,
                    max_body: ctx.max_body,
                    body_timeout: ctx.handshake_timeout,
                },
                peer,
            )
            .await;
        }
    }
    if fastwebsockets::upgrade::is_upgrade_request(&req) {
        if !ctx.kind.websocket() {
            return text_response(400, "this listener does not accept WebSocket connections\n");
        }
        if !ctx.origins.allowed(req.headers()) {
            Metrics::inc(&node.metrics.handshakes_rejected);
            return text_response(403, "origin not allowed\n");
        }
        return crate::session::wsjson::handshake(req, tenant, node, peer).await;
    }
    if ctx.http_ingress {
        return crate::ingress::http::handle(
            req,
            tenant,
            node,
            rel,
            peer.remote,
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

/// Route (and hand hooks) the path a front proxy would see; refuse what proxies could
/// read differently. The request's URI is rewritten to the normalised path.
fn normalize(req: &mut Request<Incoming>) -> Result<String, Box<HttpResponse>> {
    let path = match crate::web::normalize_path(req.uri().path()) {
        Ok(p) => p.into_owned(),
        Err(why) => return Err(Box::new(text_response(400, &format!("{why}\n")))),
    };
    if path != req.uri().path() {
        let pq = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        let Ok(pq) = pq.parse::<http::uri::PathAndQuery>() else {
            return Err(Box::new(text_response(400, "malformed path\n")));
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    Ok(path)
}

/// A client handshake (WebSocket upgrade, or Engine.IO open: an engine request without
/// `sid`) over the listener's per-address rate gets 429 with `Retry-After`.
fn handshake_rate(
    req: &Request<Incoming>,
    engine: bool,
    ctx: &TcpListenerCtx,
    node: &Node,
    remote: std::net::SocketAddr,
) -> Result<(), Box<HttpResponse>> {
    let handshake = match engine {
        true => !req
            .uri()
            .query()
            .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "sid")),
        false => fastwebsockets::upgrade::is_upgrade_request(req),
    };
    if !handshake || !ctx.kind.websocket() {
        return Ok(());
    }
    let Err(wait) = ctx.handshake_allowed(remote.ip()) else {
        return Ok(());
    };
    Metrics::inc(&node.metrics.handshakes_rate_limited);
    let mut r = text_response(429, "too many handshakes from this address\n");
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    r.headers_mut()
        .insert(hyper::header::RETRY_AFTER, http::HeaderValue::from(secs));
    Err(Box::new(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, DEFAULT_CONFIG};

    #[test]
    fn routes_match_whole_path_segments() {
        let config = Config::parse(DEFAULT_CONFIG, None).expect("default config");
        let route = |n: &str| {
            let mut c = config.tenants[0].clone();
            c.name = toml::Spanned::new(0..0, n.to_owned());
            let deps = crate::tenant::TenantDeps {
                cache_dir: "unused".into(),
                plugin_path: None,
                kv: Arc::new(crate::store::TenantKv::in_memory(1 << 20)),
                log_dir: "unused".into(),
                metrics: Default::default(),
                cluster: None,
            };
            let tenant = Arc::new(Tenant::new(c, deps).expect("tenant"));
            Route {
                tenant,
                engine: None,
            }
        };
        let mut routes = vec![
            ("/p/".to_owned(), route("a")),
            ("/".to_owned(), route("b")),
            ("/api".to_owned(), route("c")),
        ];
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        let ctx = TcpListenerCtx {
            name: "t".into(),
            kind: ListenerKind::Http,
            routes,
            http_ingress: true,
            origins: Origins::default(),
            max_body: 1,
            handshake_timeout: Duration::from_secs(1),
            tls: None,
            limits: Arc::new(ConnLimits::new(1, 1)),
            handshakes: None,
            exempt: Vec::new(),
            admin: super::super::admin::AdminGuard::new(&Default::default()),
        };
        let r = |p: &str| {
            ctx.route(p)
                .map(|(t, rel)| (t.tenant.name.to_string(), rel))
        };
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
