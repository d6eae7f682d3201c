//! `[[listener]]`: one socket and its routes, and the checks of one listener's section.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::defaults;
use super::validate::Report;

/// The kind of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// Plain WebSocket (and, with `http_ingress`, HTTP push) over TCP.
    Ws,
    /// WebSocket over TLS (rustls; TLS 1.2 and 1.3 only).
    Wss,
    /// HTTP push API only (no WebSocket upgrades).
    Http,
    /// UDP datagram ingress.
    Udp,
}

impl ListenerKind {
    /// Whether this listener accepts WebSocket upgrades.
    pub fn websocket(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }
}

/// `[[listener]]`: one socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Unique name, used in logs, metrics and by tests to find the bound address.
    pub name: Spanned<String>,
    /// `ws`, `wss`, `http` or `udp`.
    pub kind: ListenerKind,
    /// Address to bind, e.g. `127.0.0.1:8080` (port 0 picks a free port).
    pub bind: Spanned<String>,
    /// wss: PEM certificate chain file.
    #[serde(default)]
    pub cert: Option<Spanned<PathBuf>>,
    /// wss: PEM private key file.
    #[serde(default)]
    pub key: Option<Spanned<PathBuf>>,
    /// wss: generate (on first run) and use a development certificate in `<data_dir>/dev-certs`.
    #[serde(default)]
    pub dev_cert: bool,
    /// ws/wss/http: path prefix → tenant; the longest matching prefix wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// udp: the tenant every datagram belongs to.
    #[serde(default)]
    pub tenant: Option<Spanned<String>>,
    /// ws/wss: also hand plain HTTP requests to the tenant's ingress hook (Socket.IO-era
    /// servers served both on one port). Always on for `http` listeners. Default false.
    #[serde(default)]
    pub http_ingress: bool,
    /// ws/wss: browser `Origin`s allowed to open WebSockets and Engine.IO sessions (e.g.
    /// `https://app.example.com`). Empty (default) or `*` allows any, but only listed
    /// origins get Engine.IO's `access-control-allow-credentials` (cookies); requests
    /// without `Origin` (non-browser clients) are always allowed.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Open connections (TCP) allowed at once on this listener. Default 10000.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Open connections allowed at once from one IPv4 address or IPv6 /64. Default 1000.
    #[serde(default = "defaults::max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Time allowed for the TLS handshake and the HTTP request head (slowloris guard). Default 10000 ms.
    #[serde(default = "defaults::handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Largest HTTP request body or UDP datagram accepted (413 above). Default 1 MiB.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// ws/wss: client handshakes (WebSocket upgrades, Engine.IO opens) a second from one
    /// IPv4 address or IPv6 /64, bursts of two seconds' worth; beyond, 429 with
    /// `Retry-After`. 0 = unlimited. Default 20.
    #[serde(default = "defaults::max_handshakes_per_ip_per_sec")]
    pub max_handshakes_per_ip_per_sec: u32,
    /// Addresses the per-address handshake limit does not apply to. Default loopback
    /// (behind a same-host proxy every client is loopback: limit at the proxy, or set
    /// this to `[]`).
    #[serde(default = "defaults::udp_trusted")]
    pub rate_limit_exempt: Vec<ipnet::IpNet>,
}

/// One `routes` entry of a listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path prefix, starting with `/`.
    pub path: Spanned<String>,
    /// Tenant name.
    pub tenant: Spanned<String>,
}

impl ListenerConfig {
    /// What is allowed but probably unwise: a ws/wss listener reachable beyond loopback
    /// that accepts any browser `Origin` (any web page can open a connection from a
    /// visitor's browser, with the visitor's cookies on the WebSocket handshake).
    pub fn warnings(&self) -> Vec<String> {
        let any_origin =
            self.allowed_origins.is_empty() || self.allowed_origins.iter().any(|o| o == "*");
        let public = self
            .bind
            .get_ref()
            .parse::<SocketAddr>()
            .is_ok_and(|a| !a.ip().is_loopback());
        match self.kind.websocket() && any_origin && public {
            true => vec![format!(
                "listener {:?} on {} accepts connections from any browser Origin: a page on any site can connect with its visitors' cookies (cross-site WebSocket hijacking); list allowed_origins (docs/security.md)",
                self.name.get_ref(),
                self.bind.get_ref()
            )],
            false => Vec::new(),
        }
    }

    /// Check the `i`-th listener's section: `names` and `binds` collect what earlier
    /// listeners took, `tenants` are the tenants that exist.
    pub(super) fn check<'c>(
        &'c self,
        i: usize,
        seen: &mut Seen<'c>,
        tenants: &HashSet<&str>,
        r: &mut Report<'_>,
    ) {
        let k = |f: &str| format!("listener[{i}].{f}");
        let name = self.name.get_ref();
        if name.is_empty() {
            r.add(Some(self.name.span()), k("name"), "must not be empty");
        } else if !seen.names.insert(name.as_str()) {
            r.add(
                Some(self.name.span()),
                k("name"),
                format!("duplicate listener name {name:?}"),
            );
        }
        match self.bind.get_ref().parse::<SocketAddr>() {
            Ok(addr) => {
                let proto = if self.kind == ListenerKind::Udp {
                    "udp"
                } else {
                    "tcp"
                };
                if addr.port() != 0 && !seen.binds.insert((proto, addr)) {
                    r.add(
                        Some(self.bind.span()),
                        k("bind"),
                        format!("{addr} is bound by another {proto} listener"),
                    );
                }
            }
            Err(_) => r.add(
                Some(self.bind.span()),
                k("bind"),
                format!(
                    "{:?} is not an IP:port address (e.g. \"127.0.0.1:8080\")",
                    self.bind.get_ref()
                ),
            ),
        }
        if self.max_connections == 0
            || self.max_connections_per_ip == 0
            || self.max_body_bytes == 0
            || self.handshake_timeout_ms == 0
        {
            r.add(
                Some(self.name.span()),
                k("max_connections"),
                "limits (max_connections, max_connections_per_ip, max_body_bytes, handshake_timeout_ms) must be greater than 0",
            );
        }
        match self.kind {
            ListenerKind::Udp => self.check_udp(&k, tenants, r),
            _ => self.check_routes(&k, tenants, r),
        }
        self.check_tls(&k, r);
    }

    fn check_udp(&self, k: &dyn Fn(&str) -> String, tenants: &HashSet<&str>, r: &mut Report<'_>) {
        match &self.tenant {
            None => r.add(
                Some(self.name.span()),
                k("tenant"),
                "a udp listener needs `tenant`",
            ),
            Some(t) if !tenants.contains(t.get_ref().as_str()) => r.add(
                Some(t.span()),
                k("tenant"),
                format!("no tenant named {:?}", t.get_ref()),
            ),
            Some(_) => {}
        }
        if !self.routes.is_empty() {
            r.add(
                Some(self.name.span()),
                k("routes"),
                "a udp listener takes `tenant`, not `routes`",
            );
        }
    }

    fn check_routes(
        &self,
        k: &dyn Fn(&str) -> String,
        tenants: &HashSet<&str>,
        r: &mut Report<'_>,
    ) {
        if let Some(t) = &self.tenant {
            r.add(
                Some(t.span()),
                k("tenant"),
                "only udp listeners take `tenant`; use `routes`",
            );
        }
        if self.routes.is_empty() {
            r.add(
                Some(self.name.span()),
                k("routes"),
                "needs at least one route, e.g. routes = [{ path = \"/\", tenant = \"demo\" }]",
            );
        }
        let mut paths = HashSet::new();
        for (j, route) in self.routes.iter().enumerate() {
            let key = |f: &str| k(&format!("routes[{j}].{f}"));
            if !route.path.get_ref().starts_with('/') {
                r.add(Some(route.path.span()), key("path"), "must start with '/'");
            } else if !paths.insert(route.path.get_ref().as_str()) {
                r.add(Some(route.path.span()), key("path"), "duplicate route path");
            }
            if !tenants.contains(route.tenant.get_ref().as_str()) {
                r.add(
                    Some(route.tenant.span()),
                    key("tenant"),
                    format!("no tenant named {:?}", route.tenant.get_ref()),
                );
            }
        }
    }

    fn check_tls(&self, k: &dyn Fn(&str) -> String, r: &mut Report<'_>) {
        let tls_keys = self.cert.is_some() || self.key.is_some() || self.dev_cert;
        match (self.kind, &self.cert, &self.key, self.dev_cert) {
            (ListenerKind::Wss, Some(_), Some(_), false)
            | (ListenerKind::Wss, None, None, true) => {}
            (ListenerKind::Wss, ..) => r.add(
                Some(self.name.span()),
                k("cert"),
                "a wss listener needs either `cert` and `key` (PEM files) or `dev_cert = true`",
            ),
            _ if tls_keys => r.add(
                Some(self.name.span()),
                k("cert"),
                "only wss listeners take `cert`, `key` or `dev_cert`",
            ),
            _ => {}
        }
    }
}

/// Names and addresses taken by the listeners checked so far.
#[derive(Default)]
pub(super) struct Seen<'c> {
    names: HashSet<&'c str>,
    binds: HashSet<(&'static str, SocketAddr)>,
}
