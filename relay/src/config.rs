//! The TOML configuration: listeners, tenants and their limits.
//!
//! Parsing is strict (`deny_unknown_fields`); [`Config::validate`] checks what
//! serde cannot (references between sections, addresses, TLS material) and
//! every error names the key and, when it comes from a file, the line.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

/// The configuration used when `relay serve` is given no `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// A configuration error: the file, line and key at fault, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// File the configuration came from (`<embedded>` for the default).
    pub file: String,
    /// 1-based line of the offending key, when known.
    pub line: Option<usize>,
    /// Dotted key, e.g. `listener[1].bind`.
    pub key: String,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}: {}", self.file, line, self.key, self.message),
            None => write!(f, "{}: {}: {}", self.file, self.key, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-wide settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// Sockets relay listens on (`[[listener]]`).
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Tenants: isolated applications with their own policy and limits (`[[tenant]]`).
    #[serde(default, rename = "tenant")]
    pub tenants: Vec<TenantConfig>,
    /// The file this was loaded from, for error messages and relative paths.
    #[serde(skip)]
    pub source: ConfigSource,
}

/// Where a configuration came from.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// File path, or `None` for the embedded default.
    pub path: Option<PathBuf>,
    /// The text, to turn byte spans into line numbers.
    pub text: String,
}

/// When a write that must be durable (an acknowledged offline message) is flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// One flush per request, one after the other.
    Always,
    /// Requests arriving within the window share one flush (group commit).
    #[default]
    Batch,
    /// No flush: acknowledged at once; the store flushes in the background (a crash may
    /// lose the last few hundred milliseconds).
    None,
}

/// `[server]`: process-wide settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Directory for generated dev certificates, compiled plugins and (later) the store;
    /// relative to the config file (the working directory for the embedded default). Default `relay-data`.
    pub data_dir: PathBuf,
    /// How long shutdown waits for queues to drain and close frames to go out. Default 5000 ms.
    pub shutdown_grace_ms: u64,
    /// When kept (offline) messages are flushed to disk before they are acknowledged:
    /// `always` (a flush each), `batch` (requests within `sync_window_ms` share one),
    /// `none` (acknowledged at once, flushed in the background). Default `batch`.
    pub sync: SyncMode,
    /// `batch`: how long a flush waits for more requests to join it (0–5). With 0 a flush
    /// starts at once and requests arriving meanwhile share the next one. Default 0.
    pub sync_window_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("relay-data"),
            shutdown_grace_ms: 5_000,
            sync: Default::default(),
            sync_window_ms: 0,
        }
    }
}

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
    /// ws/wss: browser `Origin`s allowed to open WebSockets (e.g. `https://app.example.com`).
    /// Empty (default) allows any; requests without `Origin` (non-browser clients) are always allowed.
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

/// The wire profile of a tenant's WebSocket connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum WireProfile {
    /// Raw WebSocket text frames carrying JSON.
    #[serde(rename = "ws-json")]
    WsJson,
    /// Socket.IO (protocol v4 on Engine.IO v4, and v2 on Engine.IO v3: socket.io-client
    /// 1.x–4.x) over HTTP long-polling and WebSocket.
    #[serde(rename = "socket.io")]
    SocketIo,
}

/// `[[tenant]]`: an isolated application.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Unique name.
    pub name: Spanned<String>,
    /// Policy deciding on handshakes, events and ingress: `open` (development only).
    pub policy: Spanned<String>,
    /// Wire profile of WebSocket clients. Default `ws-json`.
    #[serde(default = "defaults::profile")]
    pub profile: WireProfile,
    /// ws-json: the JSON field naming a client message's event. Default `event` (seed 004: `method`).
    #[serde(default = "defaults::event_field")]
    pub event_field: String,
    /// Largest client message (all fragments together); larger closes with 1009. Default 65536.
    #[serde(default = "defaults::max_message_bytes")]
    pub max_message_bytes: usize,
    /// Close a connection from which nothing was received for this long (1001). 0 = never. Default 60000 ms.
    #[serde(default = "defaults::idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Send a WebSocket ping after this much silence, so live clients answer. 0 = never. Default 25000 ms.
    #[serde(default = "defaults::ping_interval_ms")]
    pub ping_interval_ms: u64,
    /// socket.io: how long a client may take to answer a ping (v4) or to send its next one
    /// (v3, after `ping_interval_ms`) before it is disconnected. Default 20000 ms.
    #[serde(default = "defaults::ping_timeout_ms")]
    pub ping_timeout_ms: u64,
    /// socket.io: the namespaces clients may connect to (at most 8). Default `["/"]`.
    #[serde(default = "defaults::namespaces")]
    pub namespaces: Vec<String>,
    /// Offline messages kept per user or room; beyond, the oldest are dropped (counted). Default 1000.
    #[serde(default = "defaults::offline_max")]
    pub offline_max: usize,
    /// Offline messages older than this are not delivered. Default 7 days.
    #[serde(default = "defaults::offline_ttl_ms")]
    pub offline_ttl_ms: u64,
    /// Largest offline message (its JSON); larger ones are refused. Default 65536.
    #[serde(default = "defaults::offline_max_bytes")]
    pub offline_max_bytes: usize,
    /// Most bytes the tenant's key-value store holds (keys, values and 64 bytes per
    /// entry; it lives in memory): writes beyond fail the plugin's call. Default 64 MiB.
    #[serde(default = "defaults::kv_max_bytes")]
    pub kv_max_bytes: usize,
    /// Message log directory (relative to the config file). Default `<data_dir>/logs/<tenant>`.
    #[serde(default)]
    pub log_dir: Option<Spanned<String>>,
    /// Rotate a message log file before it grows past this. Default 64 MiB.
    #[serde(default = "defaults::log_max_bytes")]
    pub log_max_bytes: u64,
    /// Rotated message log files kept per file. Default 5.
    #[serde(default = "defaults::log_keep")]
    pub log_keep: usize,
    /// Room history: keep the last this many messages of every room (0 = no history).
    /// Messages to rooms then carry an offset clients can present to recover. Default 0.
    #[serde(default)]
    pub history_max: usize,
    /// Room history entries older than this cannot be recovered. Default 600000 ms.
    #[serde(default = "defaults::history_ttl_ms")]
    pub history_ttl_ms: u64,
    /// ws-json: the field added to object messages with their history offset. Default `offset`.
    #[serde(default = "defaults::history_field")]
    pub history_field: String,
    /// Time allowed for each webhook attempt. Default 5000 ms.
    #[serde(default = "defaults::webhook_timeout_ms")]
    pub webhook_timeout_ms: u64,
    /// Webhook attempts after the first (connection errors, timeouts, 429, 5xx). Default 3.
    #[serde(default = "defaults::webhook_retries")]
    pub webhook_retries: u32,
    /// Called (GET, `sid=<connection id>` appended) when a connection is identified as a
    /// user (seed 000's `login_cb`).
    #[serde(default)]
    pub login_webhook: Option<Spanned<String>>,
    /// Called (GET, `sid=<connection id>` appended) when an identified connection ends
    /// (seed 000's `disconnect_cb`).
    #[serde(default)]
    pub disconnect_webhook: Option<Spanned<String>>,
    /// A message sent to a connection (socket.io: namespace) just before the authentication
    /// deadline closes it, e.g. `{ event = "server_return", data = { errcode = 1 } }`.
    #[serde(default)]
    pub auth_timeout_notice: Option<Spanned<toml::Table>>,
    /// Close a connection not authenticated within this long (1008). Default 30000 ms.
    #[serde(default = "defaults::auth_timeout_ms")]
    pub auth_timeout_ms: u64,
    /// Frames waiting for one connection's socket; a client that lets it fill is closed (1013). Default 1024.
    #[serde(default = "defaults::outbound_queue")]
    pub outbound_queue: usize,
    /// Bytes waiting for one connection's socket; beyond, the client is closed (1013). Default 4 MiB.
    #[serde(default = "defaults::outbound_queue_bytes")]
    pub outbound_queue_bytes: usize,
    /// Rooms one connection may be in at once; further joins are refused. Default 1000.
    #[serde(default = "defaults::max_rooms_per_connection")]
    pub max_rooms_per_connection: usize,
    /// Source networks allowed to send UDP datagrams. Default loopback only.
    #[serde(default = "defaults::udp_allow")]
    pub udp_allow: Vec<IpNet>,
    /// `wasm` policy: the plugin component, a path (relative to the config file) or
    /// `bundled:<name>` for a plugin built from `plugins/` (e.g. `bundled:md5-sign`).
    #[serde(default)]
    pub plugin: Option<Spanned<String>>,
    /// CPU-time budget of one plugin call (20× in wall-clock time at most); past it the
    /// call fails. Default 5 ms.
    #[serde(default = "defaults::plugin_deadline_ms")]
    pub plugin_deadline_ms: u64,
    /// Memory cap of one plugin instance. Default 32 MiB.
    #[serde(default = "defaults::plugin_memory_mb")]
    pub plugin_memory_mb: u64,
    /// Plugin instances per tenant: at most this many calls run at once (more wait their turn). Default 4.
    #[serde(default = "defaults::plugin_instances")]
    pub plugin_instances: usize,
    /// How often the plugin file is checked for changes (hot reload). 0 = never. Default 1000 ms.
    #[serde(default = "defaults::plugin_watch_ms")]
    pub plugin_watch_ms: u64,
    /// Request headers the plugin sees (lowercase names), for handshakes and HTTP pushes;
    /// unset = all of them (handshakes: all but the WebSocket upgrade's own). Each header
    /// passed costs its hook call a little, so name the ones the plugin reads.
    #[serde(default)]
    pub plugin_headers: Option<Spanned<Vec<String>>>,
    /// Policy-specific settings (keys, secrets, options), handed to the policy as they are.
    #[serde(default)]
    pub settings: Option<Spanned<toml::Table>>,
}

impl TenantConfig {
    /// `auth_timeout_notice` as a message.
    pub fn auth_timeout_message(&self) -> Result<Option<crate::protocol::Message>, String> {
        let Some(t) = &self.auth_timeout_notice else {
            return Ok(None);
        };
        let v = serde_json::to_value(t.get_ref()).map_err(|e| e.to_string())?;
        serde_json::from_value(v)
            .map(Some)
            .map_err(|e| format!("needs `event` (optional) and `data`: {e}"))
    }

    /// The policy settings (empty when none are given).
    pub fn settings(&self) -> toml::Table {
        self.settings
            .as_ref()
            .map(|s| s.get_ref().clone())
            .unwrap_or_default()
    }
}

mod defaults {
    use super::*;
    pub fn max_connections() -> usize {
        10_000
    }
    pub fn max_connections_per_ip() -> usize {
        1_000
    }
    pub fn handshake_timeout_ms() -> u64 {
        10_000
    }
    pub fn max_body_bytes() -> usize {
        1 << 20
    }
    pub fn profile() -> WireProfile {
        WireProfile::WsJson
    }
    pub fn event_field() -> String {
        "event".into()
    }
    pub fn max_message_bytes() -> usize {
        64 << 10
    }
    pub fn idle_timeout_ms() -> u64 {
        60_000
    }
    pub fn ping_interval_ms() -> u64 {
        25_000
    }
    pub fn ping_timeout_ms() -> u64 {
        20_000
    }
    pub fn history_ttl_ms() -> u64 {
        600_000
    }
    pub fn history_field() -> String {
        "offset".into()
    }
    pub fn log_max_bytes() -> u64 {
        64 << 20
    }
    pub fn log_keep() -> usize {
        5
    }
    pub fn webhook_timeout_ms() -> u64 {
        5_000
    }
    pub fn webhook_retries() -> u32 {
        3
    }
    pub fn offline_max() -> usize {
        1000
    }
    pub fn offline_ttl_ms() -> u64 {
        7 * 24 * 3600 * 1000
    }
    pub fn offline_max_bytes() -> usize {
        64 << 10
    }
    pub fn kv_max_bytes() -> usize {
        64 << 20
    }
    pub fn namespaces() -> Vec<String> {
        vec!["/".into()]
    }
    pub fn plugin_deadline_ms() -> u64 {
        5
    }
    pub fn plugin_memory_mb() -> u64 {
        32
    }
    pub fn plugin_instances() -> usize {
        4
    }
    pub fn plugin_watch_ms() -> u64 {
        1000
    }
    pub fn auth_timeout_ms() -> u64 {
        30_000
    }
    pub fn outbound_queue() -> usize {
        1024
    }
    pub fn outbound_queue_bytes() -> usize {
        4 << 20
    }
    pub fn max_rooms_per_connection() -> usize {
        1000
    }
    pub fn udp_allow() -> Vec<IpNet> {
        ["127.0.0.0/8", "::1/128"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect()
    }
}

/// Policies: `open` (built in, development only) and `wasm` (a plugin per tenant).
pub const BUILTIN_POLICIES: &[&str] = &["open", "wasm"];

impl Config {
    /// Parse and validate the embedded default configuration.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Self::parse(DEFAULT_CONFIG, None)
    }

    /// Read, parse and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: None,
            key: "(file)".into(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, Some(path))
    }

    /// Parse and validate configuration text; `path` is used for messages and relative paths.
    pub fn parse(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        let file = path.map_or_else(|| "<embedded>".to_string(), |p| p.display().to_string());
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigError {
                file: file.clone(),
                line,
                key: "(syntax)".into(),
                message: e.message().trim().to_string(),
            }
        })?;
        config.source = ConfigSource {
            path: path.map(Path::to_path_buf),
            text: text.to_string(),
        };
        config.validate()?;
        Ok(config)
    }

    fn err<T>(
        &self,
        span: Option<std::ops::Range<usize>>,
        key: String,
        message: String,
    ) -> Result<T, ConfigError> {
        Err(ConfigError {
            file: self
                .source
                .path
                .as_ref()
                .map_or_else(|| "<embedded>".to_string(), |p| p.display().to_string()),
            line: span.map(|s| line_of(&self.source.text, s.start)),
            key,
            message,
        })
    }

    /// Resolve a path from the config relative to the config file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            return p.to_path_buf();
        }
        match self.source.path.as_ref().and_then(|f| f.parent()) {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }

    /// Check everything serde cannot: names, references, addresses, limits, TLS files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.sync_window_ms > 5 {
            return self.err(
                None,
                "server.sync_window_ms".into(),
                "must be 0 to 5 (milliseconds a flush waits for company)".into(),
            );
        }
        let mut tenants = HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let k = |f: &str| format!("tenant[{i}].{f}");
            if t.name.get_ref().is_empty()
                || !t
                    .name
                    .get_ref()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return self.err(
                    Some(t.name.span()),
                    k("name"),
                    "must be non-empty and use only a-z, 0-9, '-' and '_'".into(),
                );
            }
            if !tenants.insert(t.name.get_ref().as_str()) {
                return self.err(
                    Some(t.name.span()),
                    k("name"),
                    format!("duplicate tenant name {:?}", t.name.get_ref()),
                );
            }
            if !BUILTIN_POLICIES.contains(&t.policy.get_ref().as_str()) {
                return self.err(
                    Some(t.policy.span()),
                    k("policy"),
                    format!(
                        "unknown policy {:?}; known: {}",
                        t.policy.get_ref(),
                        BUILTIN_POLICIES.join(", ")
                    ),
                );
            }
            for (field, value) in [
                ("max_message_bytes", t.max_message_bytes),
                ("outbound_queue", t.outbound_queue),
                ("outbound_queue_bytes", t.outbound_queue_bytes),
                ("max_rooms_per_connection", t.max_rooms_per_connection),
                ("auth_timeout_ms", t.auth_timeout_ms as usize),
                ("offline_max", t.offline_max),
                ("offline_ttl_ms", t.offline_ttl_ms as usize),
                ("offline_max_bytes", t.offline_max_bytes),
                ("kv_max_bytes", t.kv_max_bytes),
            ] {
                if value == 0 {
                    return self.err(
                        Some(t.name.span()),
                        k(field),
                        "must be greater than 0".into(),
                    );
                }
            }
            if t.policy.get_ref() == "open" {
                if let Err(m) = crate::policy::open::OpenPolicy::from_settings(&t.settings()) {
                    let span = t.settings.as_ref().map_or(t.policy.span(), |s| s.span());
                    return self.err(Some(span), k("settings"), m);
                }
            }
            match (t.policy.get_ref().as_str(), &t.plugin) {
                ("wasm", None) => {
                    return self.err(
                        Some(t.policy.span()),
                        k("plugin"),
                        "the wasm policy needs `plugin` (a .wasm path or bundled:<name>)".into(),
                    )
                }
                ("wasm", Some(p)) => {
                    let path = self.plugin_path(p.get_ref());
                    if !path.is_file() {
                        return self.err(
                            Some(p.span()),
                            k("plugin"),
                            format!("no plugin file at {}", path.display()),
                        );
                    }
                }
                (_, Some(p)) => {
                    return self.err(
                        Some(p.span()),
                        k("plugin"),
                        "`plugin` needs policy = \"wasm\"".into(),
                    )
                }
                _ => {}
            }
            if let Some(h) = &t.plugin_headers {
                if let Some(bad) = h.get_ref().iter().find(|n| {
                    http::HeaderName::from_bytes(n.as_bytes()).is_err()
                        || n.bytes().any(|b| b.is_ascii_uppercase())
                }) {
                    return self.err(
                        Some(h.span()),
                        k("plugin_headers"),
                        format!("{bad:?} is not a lowercase HTTP header name"),
                    );
                }
            }
            if t.plugin_deadline_ms == 0 || t.plugin_memory_mb == 0 {
                return self.err(
                    Some(t.name.span()),
                    k("plugin_deadline_ms"),
                    "plugin_deadline_ms and plugin_memory_mb must be greater than 0".into(),
                );
            }
            if t.event_field.is_empty() {
                return self.err(
                    Some(t.name.span()),
                    k("event_field"),
                    "must not be empty".into(),
                );
            }
            if let Some(n) = &t.auth_timeout_notice {
                if let Err(e) = t.auth_timeout_message() {
                    return self.err(Some(n.span()), k("auth_timeout_notice"), e);
                }
            }
            for (field, url) in [
                ("login_webhook", &t.login_webhook),
                ("disconnect_webhook", &t.disconnect_webhook),
            ] {
                if let Some(u) = url {
                    let check = crate::webhook::Call::new(
                        "t".into(),
                        "GET",
                        u.get_ref(),
                        vec![],
                        Default::default(),
                        Default::default(),
                        0,
                    );
                    if let Err(e) = check {
                        return self.err(Some(u.span()), k(field), e);
                    }
                }
            }
            if t.profile == WireProfile::SocketIo {
                if t.ping_interval_ms == 0 || t.ping_timeout_ms == 0 {
                    return self.err(
                        Some(t.name.span()),
                        k("ping_interval_ms"),
                        "socket.io needs ping_interval_ms and ping_timeout_ms greater than 0"
                            .into(),
                    );
                }
                let mut seen = HashSet::new();
                if t.namespaces.is_empty() || t.namespaces.len() > crate::protocol::MAX_NAMESPACES {
                    return self.err(
                        Some(t.name.span()),
                        k("namespaces"),
                        format!("give 1 to {} namespaces", crate::protocol::MAX_NAMESPACES),
                    );
                }
                for n in &t.namespaces {
                    if !n.starts_with('/') || n.contains([',', '?', '#']) || !seen.insert(n) {
                        return self.err(
                            Some(t.name.span()),
                            k("namespaces"),
                            format!("{n:?}: a namespace starts with '/', has no ',', '?' or '#', and appears once"),
                        );
                    }
                }
            }
        }
        let mut names = HashSet::new();
        let mut binds = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let k = |f: &str| format!("listener[{i}].{f}");
            if l.name.get_ref().is_empty() {
                return self.err(Some(l.name.span()), k("name"), "must not be empty".into());
            }
            if !names.insert(l.name.get_ref().as_str()) {
                return self.err(
                    Some(l.name.span()),
                    k("name"),
                    format!("duplicate listener name {:?}", l.name.get_ref()),
                );
            }
            let addr: SocketAddr = match l.bind.get_ref().parse() {
                Ok(a) => a,
                Err(_) => {
                    return self.err(
                        Some(l.bind.span()),
                        k("bind"),
                        format!(
                            "{:?} is not an IP:port address (e.g. \"127.0.0.1:8080\")",
                            l.bind.get_ref()
                        ),
                    )
                }
            };
            let proto = if l.kind == ListenerKind::Udp {
                "udp"
            } else {
                "tcp"
            };
            if addr.port() != 0 && !binds.insert((proto, addr)) {
                return self.err(
                    Some(l.bind.span()),
                    k("bind"),
                    format!("{addr} is bound by another {proto} listener"),
                );
            }
            if l.max_connections == 0
                || l.max_connections_per_ip == 0
                || l.max_body_bytes == 0
                || l.handshake_timeout_ms == 0
            {
                return self.err(
                    Some(l.name.span()),
                    k("max_connections"),
                    "limits (max_connections, max_connections_per_ip, max_body_bytes, handshake_timeout_ms) must be greater than 0".into(),
                );
            }
            match l.kind {
                ListenerKind::Udp => {
                    let Some(t) = &l.tenant else {
                        return self.err(
                            Some(l.name.span()),
                            k("tenant"),
                            "a udp listener needs `tenant`".into(),
                        );
                    };
                    if !tenants.contains(t.get_ref().as_str()) {
                        return self.err(
                            Some(t.span()),
                            k("tenant"),
                            format!("no tenant named {:?}", t.get_ref()),
                        );
                    }
                    if !l.routes.is_empty() {
                        return self.err(
                            Some(l.name.span()),
                            k("routes"),
                            "a udp listener takes `tenant`, not `routes`".into(),
                        );
                    }
                }
                _ => {
                    if let Some(t) = &l.tenant {
                        return self.err(
                            Some(t.span()),
                            k("tenant"),
                            "only udp listeners take `tenant`; use `routes`".into(),
                        );
                    }
                    if l.routes.is_empty() {
                        return self.err(
                            Some(l.name.span()),
                            k("routes"),
                            "needs at least one route, e.g. routes = [{ path = \"/\", tenant = \"demo\" }]".into(),
                        );
                    }
                    let mut paths = HashSet::new();
                    for (j, r) in l.routes.iter().enumerate() {
                        if !r.path.get_ref().starts_with('/') {
                            return self.err(
                                Some(r.path.span()),
                                k(&format!("routes[{j}].path")),
                                "must start with '/'".into(),
                            );
                        }
                        if !paths.insert(r.path.get_ref().as_str()) {
                            return self.err(
                                Some(r.path.span()),
                                k(&format!("routes[{j}].path")),
                                "duplicate route path".into(),
                            );
                        }
                        if !tenants.contains(r.tenant.get_ref().as_str()) {
                            return self.err(
                                Some(r.tenant.span()),
                                k(&format!("routes[{j}].tenant")),
                                format!("no tenant named {:?}", r.tenant.get_ref()),
                            );
                        }
                    }
                }
            }
            if l.kind == ListenerKind::Wss {
                match (&l.cert, &l.key, l.dev_cert) {
                    (Some(c), Some(key), false) => {
                        if let Err(e) = crate::transport::tls::load_server_config(&self.resolve(c.get_ref()), &self.resolve(key.get_ref())) {
                            return self.err(Some(c.span()), k("cert"), format!("tls: {e}"));
                        }
                    }
                    (None, None, true) => {}
                    _ => {
                        return self.err(
                            Some(l.name.span()),
                            k("cert"),
                            "a wss listener needs either `cert` and `key` (PEM files) or `dev_cert = true`".into(),
                        )
                    }
                }
            } else if l.cert.is_some() || l.key.is_some() || l.dev_cert {
                return self.err(
                    Some(l.name.span()),
                    k("cert"),
                    "only wss listeners take `cert`, `key` or `dev_cert`".into(),
                );
            }
        }
        if self.listeners.is_empty() {
            return self.err(
                None,
                "listener".into(),
                "at least one [[listener]] is needed".into(),
            );
        }
        Ok(())
    }

    /// Where a tenant's `plugin` value points: `bundled:<name>` or a path relative to the config file.
    pub fn plugin_path(&self, plugin: &str) -> PathBuf {
        match plugin.strip_prefix("bundled:") {
            Some(name) => crate::plugin::bundled(name),
            None => self.resolve(Path::new(plugin)),
        }
    }

    /// The data directory (relative to the config file's directory, like every path in it).
    pub fn data_dir(&self) -> PathBuf {
        self.resolve(&self.server.data_dir)
    }

    /// The message log directory of a tenant.
    pub fn log_dir(&self, t: &TenantConfig) -> PathBuf {
        match &t.log_dir {
            Some(d) => self.resolve(Path::new(d.get_ref())),
            None => self.data_dir().join("logs").join(t.name.get_ref()),
        }
    }

    /// The tenant named `name`.
    pub fn tenant(&self, name: &str) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| t.name.get_ref() == name)
    }

    /// Replace every listener's port with 0 (tests use this to avoid collisions).
    pub fn with_ephemeral_ports(mut self) -> Self {
        for l in &mut self.listeners {
            if let Ok(mut a) = l.bind.get_ref().parse::<SocketAddr>() {
                a.set_port(0);
                l.bind = Spanned::new(l.bind.span(), a.to_string());
            }
        }
        self
    }
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded_default().expect("default config");
        assert_eq!(c.listeners.len(), 4);
        assert_eq!(c.tenants[0].name.get_ref(), "demo");
    }

    #[test]
    fn errors_name_key_and_line() {
        let text = "[[tenant]]\nname = \"a\"\npolicy = \"open\"\n\n[[listener]]\nname = \"x\"\nkind = \"ws\"\nbind = \"nope\"\nroutes = [{ path = \"/\", tenant = \"a\" }]\n";
        let e = Config::parse(text, Some(Path::new("x.toml"))).unwrap_err();
        assert_eq!(e.line, Some(8));
        assert_eq!(e.key, "listener[0].bind");
        assert!(
            e.to_string().starts_with("x.toml:8: listener[0].bind:"),
            "{e}"
        );
    }

    #[test]
    fn unknown_field_reports_line() {
        let text = "[server]\ndata_dir = \"d\"\nbogus = 1\n";
        let e = Config::parse(text, None).unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("bogus"), "{e}");
    }

    #[test]
    fn route_to_missing_tenant() {
        let text = "[[listener]]\nname = \"x\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\nroutes = [{ path = \"/\", tenant = \"ghost\" }]\n";
        let e = Config::parse(text, None).unwrap_err();
        assert_eq!(e.key, "listener[0].routes[0].tenant");
        assert!(e.message.contains("ghost"));
    }

    #[test]
    fn plugin_headers_must_be_lowercase_header_names() {
        for bad in ["X-Token", "bad name"] {
            let text = format!(
                "[[tenant]]\nname = \"a\"\npolicy = \"open\"\nplugin_headers = [\"host\", \"{bad}\"]\n"
            );
            let e = Config::parse(&text, None).unwrap_err();
            assert_eq!(e.key, "tenant[0].plugin_headers");
            assert_eq!(e.line, Some(4), "{e}");
            assert!(e.message.contains(bad), "{e}");
        }
        let text = "[[tenant]]\nname = \"a\"\npolicy = \"open\"\nplugin_headers = [\"x-token\"]\n\n[[listener]]\nname = \"x\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\nroutes = [{ path = \"/\", tenant = \"a\" }]\n";
        if let Err(e) = Config::parse(text, None) {
            panic!("{e}");
        }
    }
}
