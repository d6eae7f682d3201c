//! Process-wide counters, exposed as Prometheus text on `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

macro_rules! metrics {
    ($($(#[$doc:meta])* $name:ident : $ty:ident),* $(,)?) => {
        /// Counters and gauges; all relaxed atomics (no lock on any hot path).
        #[derive(Debug, Default)]
        pub struct Metrics { $($(#[$doc])* pub $name: $ty,)* }
        impl Metrics {
            /// Prometheus text exposition of every counter.
            pub fn render(&self) -> String {
                let mut out = String::with_capacity(2048);
                $(
                    let kind = if stringify!($ty) == "AtomicI64" { "gauge" } else { "counter" };
                    let _ = writeln!(out, "# TYPE relay_{} {}", stringify!($name), kind);
                    let _ = writeln!(out, "relay_{} {}", stringify!($name), self.$name.load(Relaxed));
                )*
                out
            }
        }
    };
}

metrics! {
    /// WebSocket connections open now.
    connections_open: AtomicI64,
    /// WebSocket connections accepted since start.
    connections_total: AtomicU64,
    /// TCP connections refused by `max_connections` or `max_connections_per_ip`.
    connections_refused: AtomicU64,
    /// Handshakes the policy rejected.
    handshakes_rejected: AtomicU64,
    /// Client messages received.
    messages_in: AtomicU64,
    /// Frames handed to connection queues.
    frames_queued: AtomicU64,
    /// write() calls made by connection writers (frames_queued / writes = coalescing factor).
    socket_writes: AtomicU64,
    /// Connections closed because their outbound queue was full (close 1013).
    slow_consumers: AtomicU64,
    /// Connections closed for protocol errors (1002, 1007, 1009).
    protocol_errors: AtomicU64,
    /// Client messages dropped over a connection's rate limit.
    messages_rate_limited: AtomicU64,
    /// Connections closed for staying over their rate limit (1008).
    rate_limit_closes: AtomicU64,
    /// Pushes refused over a tenant's `max_pushes_per_sec` (HTTP 429, UDP, Redis).
    pushes_rate_limited: AtomicU64,
    /// Times a tenant's plugin circuit breaker opened.
    plugin_breaker_trips: AtomicU64,
    /// Hook calls refused at once while a breaker was open.
    plugin_breaker_refused: AtomicU64,
    /// Connections closed (1013) because their event met an open breaker (failing closed).
    plugin_breaker_closes: AtomicU64,
    /// Hook calls that found no free plugin instance within `plugin_wait_ms`.
    plugin_wait_timeouts: AtomicU64,
    /// Handshakes refused over a listener's `max_handshakes_per_ip_per_sec` (429).
    handshakes_rate_limited: AtomicU64,
    /// Times the embedded store was reopened after an I/O error (a full disk, say).
    store_reopens: AtomicU64,
    /// UDP replies not sent: larger than the datagram, to a source not in `udp_trusted`.
    udp_replies_suppressed: AtomicU64,
    /// Connections closed by the idle timeout.
    idle_timeouts: AtomicU64,
    /// Connections closed by the authentication deadline.
    auth_timeouts: AtomicU64,
    /// Policy hook failures.
    policy_errors: AtomicU64,
    /// HTTP ingress requests handled.
    http_requests: AtomicU64,
    /// UDP datagrams handled.
    udp_datagrams: AtomicU64,
    /// UDP datagrams dropped by the source allowlist.
    udp_denied: AtomicU64,
    /// Publications handed to the broker.
    publications: AtomicU64,
    /// Actions relay could not carry out (kept for compatibility; now always 0).
    actions_dropped: AtomicU64,
    /// Webhook calls answered with a 2xx/3xx status.
    webhooks_sent: AtomicU64,
    /// Webhook calls given up (refused with 4xx, or every attempt failed).
    webhooks_failed: AtomicU64,
    /// Webhook attempts repeated after a failure.
    webhooks_retried: AtomicU64,
    /// Webhook calls dropped: queue full or the call was invalid.
    webhooks_dropped: AtomicU64,
    /// Room-history messages replayed to reconnecting clients.
    history_replayed: AtomicU64,
    /// Recoveries refused (epoch changed, too old, malformed offset).
    history_unrecoverable: AtomicU64,
    /// Message log lines written.
    log_lines: AtomicU64,
    /// Message log lines refused (bad file name, full queue, write error).
    log_refused: AtomicU64,
    /// Offline messages kept (nobody was online to receive them).
    offline_stored: AtomicU64,
    /// Offline messages written to a socket and removed from the store.
    offline_delivered: AtomicU64,
    /// Offline messages dropped because their mailbox was full (oldest first).
    offline_dropped: AtomicU64,
    /// Offline messages that expired before delivery.
    offline_expired: AtomicU64,
    /// Offline messages refused (too large, no target, or a store failure).
    offline_refused: AtomicU64,
    /// Plugin hook calls made.
    plugin_calls: AtomicU64,
    /// Hook calls not made: the plugin does not implement that optional hook.
    plugin_hooks_skipped: AtomicU64,
    /// Key-value writes refused (key or value too large, or the store full); each fails
    /// its plugin call.
    kv_refused: AtomicU64,
    /// Plugin calls that trapped, ran past their deadline or exceeded memory.
    plugin_traps: AtomicU64,
    /// Plugin calls whose result was malformed (bad JSON, invalid status, ...).
    plugin_malformed: AtomicU64,
    /// Plugin instances created (and initialised).
    plugin_instances: AtomicU64,
    /// Plugins compiled from source (cache misses).
    plugin_compiles: AtomicU64,
    /// Plugins loaded from the compiled cache.
    plugin_cache_hits: AtomicU64,
    /// Successful plugin reloads.
    plugin_reloads: AtomicU64,
    /// Rejected plugin reloads (the old plugin stayed).
    plugin_reload_failures: AtomicU64,
}

impl Metrics {
    /// Add one to a counter.
    #[inline]
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }
}
