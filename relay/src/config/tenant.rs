//! `[[tenant]]`: an isolated application, its policy, limits and wire profile, and the
//! checks of one tenant's section.

use std::collections::HashSet;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::defaults;
use super::validate::Report;

/// Policies: `open` (built in, development only) and `wasm` (a plugin per tenant).
pub const BUILTIN_POLICIES: &[&str] = &["open", "wasm"];

/// Most entries of a Socket.IO tenant's `namespaces` (each name has its own encoding
/// slot; a pattern with `*` accepts any number of namespaces, which have none).
pub const MAX_NAMESPACES: usize = 8;

/// Longest namespace name (a client's or a configured one).
pub const MAX_NAMESPACE_BYTES: usize = 128;

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
    /// Bare Engine.IO (v4, and v3 for engine.io-client 3.x) over HTTP long-polling and
    /// WebSocket: every Engine.IO message is a client event, every message one
    /// Engine.IO message.
    #[serde(rename = "engine.io")]
    EngineIo,
}

/// `[[tenant]]`: an isolated application. The TOML keys are flat (`max_message_bytes`,
/// `history_max`, …); in code they are grouped by what they govern (`#[serde(flatten)]`).
/// Settings that errors point at keep their spans here; the groups hold plain values.
#[derive(Debug, Clone, Deserialize)]
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
    /// socket.io: the namespaces clients may connect to (at most 8 entries). An entry with
    /// `*` is a pattern (`/room-*` accepts `/room-1` and `/room-lobby`; `*` matches any
    /// run of characters). Default `["/"]`.
    #[serde(default = "defaults::namespaces")]
    pub namespaces: Vec<String>,
    /// Source networks allowed to send UDP datagrams. Default loopback only.
    #[serde(default = "defaults::udp_allow")]
    pub udp_allow: Vec<IpNet>,
    /// Message log directory (relative to the config file). Default `<data_dir>/logs/<tenant>`.
    #[serde(default)]
    pub log_dir: Option<Spanned<String>>,
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
    /// `wasm` policy: the plugin component, a path (relative to the config file) or
    /// `bundled:<name>` for a plugin built from `plugins/` (e.g. `bundled:md5-sign`).
    #[serde(default)]
    pub plugin: Option<Spanned<String>>,
    /// Request headers the plugin sees (lowercase names), for handshakes and HTTP pushes;
    /// unset = all of them (handshakes: all but the WebSocket upgrade's own). Each header
    /// passed costs its hook call a little, so name the ones the plugin reads.
    #[serde(default)]
    pub plugin_headers: Option<Spanned<Vec<String>>>,
    /// Policy-specific settings (keys, secrets, options), handed to the policy as they are.
    #[serde(default)]
    pub settings: Option<Spanned<toml::Table>>,
    /// Redis channels whose messages are pushes to this tenant (`[cluster]` only).
    #[serde(default)]
    pub redis_ingress: Vec<super::cluster::RedisIngress>,
    /// Patterns (`*` = any run) of the cluster Redis's own keys this tenant's plugin may
    /// read with `kv-get("redis:<key>")` (a hash reads as a JSON object; `[cluster]` only).
    #[serde(default)]
    pub redis_read: Vec<String>,
    /// Per-connection limits.
    #[serde(flatten)]
    pub limits: Limits,
    /// Rate limits (`max_*_per_sec`, `rate_limit_close_secs`, `udp_trusted`).
    #[serde(flatten)]
    pub rates: Rates,
    /// Deadlines and heartbeats.
    #[serde(flatten)]
    pub timers: Timers,
    /// Offline mailboxes (`offline_*`).
    #[serde(flatten)]
    pub offline: Offline,
    /// Room history (`history_*`).
    #[serde(flatten)]
    pub history: History,
    /// Message log files (`log_max_bytes`, `log_keep`).
    #[serde(flatten)]
    pub log: LogFiles,
    /// Webhook calls (`webhook_timeout_ms`, `webhook_retries`).
    #[serde(flatten)]
    pub webhook: WebhookCalls,
    /// The wasm policy's sandbox (`plugin_*`, `kv_max_bytes`).
    #[serde(flatten)]
    pub wasm: Wasm,
    /// Keys no group took: each is reported as unknown (`flatten` and serde's
    /// `deny_unknown_fields` do not work together, so unknown keys land here).
    #[serde(flatten)]
    pub unknown: toml::Table,
}

/// Per-connection limits of a tenant.
#[derive(Debug, Clone, Deserialize)]
pub struct Limits {
    /// Largest client message (all fragments together); larger closes with 1009. Default 65536.
    #[serde(default = "defaults::max_message_bytes")]
    pub max_message_bytes: usize,
    /// Frames waiting for one connection's socket; a client that lets it fill is closed (1013). Default 1024.
    #[serde(default = "defaults::outbound_queue")]
    pub outbound_queue: usize,
    /// Bytes waiting for one connection's socket; beyond, the client is closed (1013). Default 4 MiB.
    #[serde(default = "defaults::outbound_queue_bytes")]
    pub outbound_queue_bytes: usize,
    /// Rooms one connection may be in at once; further joins are refused. Default 1000.
    #[serde(default = "defaults::max_rooms_per_connection")]
    pub max_rooms_per_connection: usize,
}

/// Rate limits of a tenant, per node (0: unlimited).
#[derive(Debug, Clone, Deserialize)]
pub struct Rates {
    /// Messages a second one connection may send (bursts of two seconds' worth); beyond,
    /// messages are dropped and counted. Default 100.
    #[serde(default = "defaults::max_messages_per_sec")]
    pub max_messages_per_sec: u32,
    /// Bytes a second one connection may send (bursts of two seconds' worth, and at least
    /// one `max_message_bytes`); beyond, messages are dropped. Default 1 MiB.
    #[serde(default = "defaults::max_inbound_bytes_per_sec")]
    pub max_inbound_bytes_per_sec: u64,
    /// A connection that had messages dropped in this many consecutive seconds is closed
    /// (1008). 0 = never. Default 5.
    #[serde(default = "defaults::rate_limit_close_secs")]
    pub rate_limit_close_secs: u32,
    /// Pushes a second the tenant takes over HTTP, UDP and Redis ingress together (bursts
    /// of one second's worth); beyond, HTTP answers 429 with `Retry-After`. Default 10000.
    #[serde(default = "defaults::max_pushes_per_sec")]
    pub max_pushes_per_sec: u32,
    /// UDP sources that may get a reply larger than their datagram. Others get at most as
    /// many bytes as they sent (no reflection amplifier). Default loopback.
    #[serde(default = "defaults::udp_trusted")]
    pub udp_trusted: Vec<IpNet>,
}

/// Deadlines and heartbeats of a tenant's connections.
#[derive(Debug, Clone, Deserialize)]
pub struct Timers {
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
    /// Close a connection not authenticated within this long (1008). Default 30000 ms.
    #[serde(default = "defaults::auth_timeout_ms")]
    pub auth_timeout_ms: u64,
}

/// Offline mailboxes of a tenant.
#[derive(Debug, Clone, Deserialize)]
pub struct Offline {
    /// Offline messages kept per user or room; beyond, the oldest are dropped (counted). Default 1000.
    #[serde(rename = "offline_max", default = "defaults::offline_max")]
    pub max: usize,
    /// Offline messages older than this are not delivered. Default 7 days.
    #[serde(rename = "offline_ttl_ms", default = "defaults::offline_ttl_ms")]
    pub ttl_ms: u64,
    /// Largest offline message (its JSON); larger ones are refused. Default 65536.
    #[serde(rename = "offline_max_bytes", default = "defaults::offline_max_bytes")]
    pub max_bytes: usize,
}

/// Room history of a tenant.
#[derive(Debug, Clone, Deserialize)]
pub struct History {
    /// Room history: keep the last this many messages of every room (0 = no history).
    /// Messages to rooms then carry an offset clients can present to recover. Default 0.
    #[serde(rename = "history_max", default)]
    pub max: usize,
    /// Room history entries older than this cannot be recovered. Default 600000 ms.
    #[serde(rename = "history_ttl_ms", default = "defaults::history_ttl_ms")]
    pub ttl_ms: u64,
    /// ws-json: the field added to object messages with their history offset. Default `offset`.
    #[serde(rename = "history_field", default = "defaults::history_field")]
    pub field: String,
}

/// A tenant's message log files.
#[derive(Debug, Clone, Deserialize)]
pub struct LogFiles {
    /// Rotate a message log file before it grows past this. Default 64 MiB.
    #[serde(rename = "log_max_bytes", default = "defaults::log_max_bytes")]
    pub max_bytes: u64,
    /// Rotated message log files kept per file. Default 5.
    #[serde(rename = "log_keep", default = "defaults::log_keep")]
    pub keep: usize,
}

/// How a tenant's webhooks are called.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookCalls {
    /// Time allowed for each webhook attempt. Default 5000 ms.
    #[serde(
        rename = "webhook_timeout_ms",
        default = "defaults::webhook_timeout_ms"
    )]
    pub timeout_ms: u64,
    /// Webhook attempts after the first (connection errors, timeouts, 429, 5xx). Default 3.
    #[serde(rename = "webhook_retries", default = "defaults::webhook_retries")]
    pub retries: u32,
}

/// What event and disconnect hooks do while a plugin's breaker is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Fail, as when the plugin fails.
    Closed,
    /// Skip the hook: no actions.
    Open,
}

/// The wasm policy's sandbox: limits of a tenant's plugin.
#[derive(Debug, Clone, Deserialize)]
pub struct Wasm {
    /// CPU-time budget of one plugin call (20× in wall-clock time at most); past it the
    /// call fails. Default 5 ms.
    #[serde(
        rename = "plugin_deadline_ms",
        default = "defaults::plugin_deadline_ms"
    )]
    pub deadline_ms: u64,
    /// Memory cap of one plugin instance. Default 32 MiB.
    #[serde(rename = "plugin_memory_mb", default = "defaults::plugin_memory_mb")]
    pub memory_mb: u64,
    /// Plugin instances per tenant: at most this many calls run at once (more wait their turn). Default 4.
    #[serde(rename = "plugin_instances", default = "defaults::plugin_instances")]
    pub instances: usize,
    /// How long a call waits for a free instance before it fails (handshake: 503).
    /// Default 1000 ms.
    #[serde(rename = "plugin_wait_ms", default = "defaults::plugin_wait_ms")]
    pub wait_ms: u64,
    /// Failures in a row (trap, deadline, malformed output) that open the tenant's
    /// circuit breaker: its hooks are then refused at once (handshakes 503) for
    /// `plugin_breaker_open_ms`, doubling while failures go on (up to 30 s). 0 = never.
    /// Default 20.
    #[serde(
        rename = "plugin_breaker_failures",
        default = "defaults::plugin_breaker_failures"
    )]
    pub breaker_failures: u32,
    /// How long the breaker first stays open. Default 1000 ms.
    #[serde(
        rename = "plugin_breaker_open_ms",
        default = "defaults::plugin_breaker_open_ms"
    )]
    pub breaker_open_ms: u64,
    /// While the breaker is open: `closed` (default) closes a connection whose event
    /// meets it (1013); `open` takes the event with no actions (and skips disconnect
    /// hooks). Handshakes and pushes are refused either way.
    #[serde(
        rename = "plugin_failure_mode",
        default = "defaults::plugin_failure_mode"
    )]
    pub failure_mode: FailureMode,
    /// How often the plugin file is checked for changes (hot reload). 0 = never. Default 1000 ms.
    #[serde(rename = "plugin_watch_ms", default = "defaults::plugin_watch_ms")]
    pub watch_ms: u64,
    /// Most bytes the tenant's key-value store holds (keys, values and 64 bytes per
    /// entry; it lives in memory): writes beyond fail the plugin's call. Default 64 MiB.
    #[serde(default = "defaults::kv_max_bytes")]
    pub kv_max_bytes: usize,
}

impl TenantConfig {
    /// The policy settings (empty when none are given).
    pub fn settings(&self) -> toml::Table {
        self.settings
            .as_ref()
            .map(|s| s.get_ref().clone())
            .unwrap_or_default()
    }
}

/// Where `key = ` first starts a line after byte `from` of `text` (a tenant's keys
/// follow its name), for the line of an unknown key; `None` if it is not found there.
fn key_span(text: &str, from: usize, key: &str) -> Option<std::ops::Range<usize>> {
    let mut at = from.min(text.len());
    for line in text.get(at..)?.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let rest = trimmed.strip_prefix(key).map(str::trim_start);
        if rest.is_some_and(|r| r.starts_with('=')) {
            let start = at + (line.len() - trimmed.len());
            return Some(start..start + key.len());
        }
        at += line.len();
    }
    None
}

/// Whether a name is non-empty and uses only `a-z`, `0-9`, `-` and `_` (any case).
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl TenantConfig {
    /// Check the `i`-th tenant's section; `names` collects tenant names (duplicates are errors).
    pub(super) fn check<'c>(&'c self, i: usize, names: &mut HashSet<&'c str>, r: &mut Report<'_>) {
        let k = |f: &str| format!("tenant[{i}].{f}");
        let name = self.name.get_ref();
        if !plain_name(name) {
            r.add(
                Some(self.name.span()),
                k("name"),
                "must be non-empty and use only a-z, 0-9, '-' and '_'",
            );
        }
        if !names.insert(name.as_str()) {
            r.add(
                Some(self.name.span()),
                k("name"),
                format!("duplicate tenant name {name:?}"),
            );
        }
        let policy = self.policy.get_ref().as_str();
        if !BUILTIN_POLICIES.contains(&policy) {
            r.add(
                Some(self.policy.span()),
                k("policy"),
                format!(
                    "unknown policy {policy:?}; known: {}",
                    BUILTIN_POLICIES.join(", ")
                ),
            );
        }
        for (field, value) in [
            ("max_message_bytes", self.limits.max_message_bytes),
            ("outbound_queue", self.limits.outbound_queue),
            ("outbound_queue_bytes", self.limits.outbound_queue_bytes),
            (
                "max_rooms_per_connection",
                self.limits.max_rooms_per_connection,
            ),
            ("auth_timeout_ms", self.timers.auth_timeout_ms as usize),
            ("offline_max", self.offline.max),
            ("offline_ttl_ms", self.offline.ttl_ms as usize),
            ("offline_max_bytes", self.offline.max_bytes),
            ("kv_max_bytes", self.wasm.kv_max_bytes),
            ("plugin_deadline_ms", self.wasm.deadline_ms as usize),
            ("plugin_memory_mb", self.wasm.memory_mb as usize),
        ] {
            if value == 0 {
                r.add(Some(self.name.span()), k(field), "must be greater than 0");
            }
        }
        match (policy, &self.plugin) {
            ("wasm", None) => r.add(
                Some(self.policy.span()),
                k("plugin"),
                "the wasm policy needs `plugin` (a .wasm path or bundled:<name>)",
            ),
            ("wasm", Some(_)) | (_, None) => {}
            (_, Some(p)) => r.add(
                Some(p.span()),
                k("plugin"),
                "`plugin` needs policy = \"wasm\"",
            ),
        }
        if let Some(h) = &self.plugin_headers {
            let bad = h.get_ref().iter().find(|n| {
                http::HeaderName::from_bytes(n.as_bytes()).is_err()
                    || n.bytes().any(|b| b.is_ascii_uppercase())
            });
            if let Some(bad) = bad {
                r.add(
                    Some(h.span()),
                    k("plugin_headers"),
                    format!("{bad:?} is not a lowercase HTTP header name"),
                );
            }
        }
        for key in self.unknown.keys() {
            let span = key_span(r.text(), self.name.span().start, key);
            r.add(span, k(key), format!("unknown field `{key}`"));
        }
        if self.event_field.is_empty() {
            r.add(
                Some(self.name.span()),
                k("event_field"),
                "must not be empty",
            );
        }
        if self.profile != WireProfile::WsJson
            && (self.timers.ping_interval_ms == 0 || self.timers.ping_timeout_ms == 0)
        {
            r.add(
                Some(self.name.span()),
                k("ping_interval_ms"),
                "socket.io and engine.io need ping_interval_ms and ping_timeout_ms greater than 0",
            );
        }
        if self.profile == WireProfile::SocketIo {
            self.check_socketio(&k, r);
        }
    }

    fn check_socketio(&self, k: &dyn Fn(&str) -> String, r: &mut Report<'_>) {
        if self.namespaces.is_empty() || self.namespaces.len() > MAX_NAMESPACES {
            r.add(
                Some(self.name.span()),
                k("namespaces"),
                format!("give 1 to {MAX_NAMESPACES} namespaces"),
            );
        }
        let mut seen = HashSet::new();
        for n in &self.namespaces {
            if !n.starts_with('/')
                || n.contains([',', '?', '#'])
                || n.len() > MAX_NAMESPACE_BYTES
                || !seen.insert(n)
            {
                r.add(
                    Some(self.name.span()),
                    k("namespaces"),
                    format!("{n:?}: a namespace starts with '/', has no ',', '?' or '#', is at most {MAX_NAMESPACE_BYTES} bytes, and appears once"),
                );
            }
        }
    }
}
