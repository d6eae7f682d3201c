//! `[cluster]`: several relay nodes sharing rooms, users and presence through Redis.
//! Absent, relay is one node on its embedded store.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::validate::Report;

/// `[cluster]`: the Redis that the nodes of one cluster share.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://[:password@]host:port[/db]` or `rediss://…` (TLS: the system's roots,
    /// or `tls_ca`). Required.
    pub redis: Spanned<String>,
    /// `rediss://` only: a PEM file of the CA certificates that Redis's certificate must
    /// chain to, instead of the system's roots (a private CA).
    #[serde(default)]
    pub tls_ca: Option<Spanned<PathBuf>>,
    /// `rediss://` only: this node's client certificate chain (PEM), for a Redis that
    /// requires one (`tls-auth-clients yes`); with `tls_key`.
    #[serde(default)]
    pub tls_cert: Option<Spanned<PathBuf>>,
    /// `rediss://` only: the private key of `tls_cert` (PEM).
    #[serde(default)]
    pub tls_key: Option<Spanned<PathBuf>>,
    /// Prefix of every Redis key and channel, so that several clusters can share one
    /// Redis. Default `relay`.
    #[serde(default = "default_prefix")]
    pub prefix: Spanned<String>,
    /// This node's name (in presence entries and logs). Default: a random id per start.
    #[serde(default)]
    pub node: Option<Spanned<String>>,
    /// A node that has not renewed its heartbeat for this long is dead: its connections
    /// drop out of every presence answer. It renews every third of it. 3000–300000,
    /// default 15000 ms.
    #[serde(default = "default_node_ttl")]
    pub node_ttl_ms: u64,
    /// How long one Redis command may take before it counts as failed (and a presence
    /// answer falls back to this node's view). 10–10000, default 1000 ms.
    #[serde(default = "default_timeout")]
    pub command_timeout_ms: u64,
    /// A kept offline message is acknowledged once this many Redis replicas have it too
    /// (`WAIT`); 0: once the primary applied it. 0–16, default 0.
    #[serde(default)]
    pub wait_replicas: u32,
}

/// One `redis_ingress` entry of a tenant: backends `PUBLISH <channel> <body>` to the
/// cluster's Redis, and one node of the cluster (the channel's holder, elected through
/// Redis) hands each message to the tenant's ingress hook as `POST <path>` with that
/// body, as if it had come over HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisIngress {
    /// The channel, exactly as backends name it (e.g. `xin_common_chat`).
    pub channel: Spanned<String>,
    /// The path the hook sees. Default `/`.
    #[serde(default = "default_ingress_path")]
    pub path: String,
    /// The `content-type` header the hook sees. Default `application/json`.
    #[serde(default = "default_ingress_type")]
    pub content_type: String,
}

fn default_ingress_path() -> String {
    "/".into()
}

fn default_ingress_type() -> String {
    "application/json".into()
}

/// Check every tenant's `redis_ingress`: only with `[cluster]`, channels outside relay's
/// own prefix and each taken by one tenant.
pub(super) fn check_ingress(config: &super::Config, r: &mut Report<'_>) {
    let mut seen = std::collections::HashSet::new();
    for (i, t) in config.tenants.iter().enumerate() {
        if !t.redis_read.is_empty() && config.cluster.is_none() {
            r.add(
                Some(t.name.span()),
                format!("tenant[{i}].redis_read"),
                "needs a [cluster] (the Redis to read from)",
            );
        }
        if t.redis_read.iter().any(String::is_empty) {
            r.add(
                Some(t.name.span()),
                format!("tenant[{i}].redis_read"),
                "patterns must not be empty",
            );
        }
        for (j, ing) in t.redis_ingress.iter().enumerate() {
            let key = format!("tenant[{i}].redis_ingress[{j}]");
            let ch = ing.channel.get_ref();
            let span = || Some(ing.channel.span());
            let Some(cluster) = &config.cluster else {
                r.add(span(), key, "needs a [cluster] (the Redis to subscribe to)");
                continue;
            };
            if ch.is_empty() || ch.len() > 256 {
                r.add(span(), key.clone(), "channel must be 1–256 bytes");
            } else if ch.starts_with(&format!("{}:", cluster.prefix.get_ref())) {
                r.add(
                    span(),
                    key.clone(),
                    "channel must not start with the cluster's prefix",
                );
            } else if !seen.insert(ch.clone()) {
                r.add(
                    span(),
                    key.clone(),
                    format!("channel {ch:?} is taken by another entry"),
                );
            }
            if !ing.path.starts_with('/') {
                r.add(span(), key, "path must start with '/'");
            }
        }
    }
}

fn default_prefix() -> Spanned<String> {
    Spanned::new(0..0, "relay".into())
}

fn default_node_ttl() -> u64 {
    15_000
}

fn default_timeout() -> u64 {
    1_000
}

/// Whether `s` fits in a Redis key without quoting surprises: a-z, A-Z, 0-9, `-_.`.
fn key_safe(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl ClusterConfig {
    /// Structural checks (whether Redis answers is `relay check`'s business).
    pub(super) fn check(&self, r: &mut Report<'_>) {
        let url = self.redis.get_ref();
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            r.add(
                Some(self.redis.span()),
                "cluster.redis".into(),
                "must be a redis://host:port/db or rediss://… URL",
            );
        } else if let Err(e) = redis::Client::open(url.as_str()) {
            r.add(
                Some(self.redis.span()),
                "cluster.redis".into(),
                format!("not a Redis URL: {e}"),
            );
        }
        let tls = [&self.tls_ca, &self.tls_cert, &self.tls_key];
        if !url.starts_with("rediss://") {
            for (name, v) in ["tls_ca", "tls_cert", "tls_key"].iter().zip(tls) {
                if let Some(v) = v {
                    r.add(
                        Some(v.span()),
                        format!("cluster.{name}"),
                        "only with a rediss:// URL",
                    );
                }
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            let span = self
                .tls_cert
                .as_ref()
                .or(self.tls_key.as_ref())
                .map(|v| v.span());
            r.add(
                span,
                "cluster.tls_cert".into(),
                "tls_cert and tls_key go together",
            );
        }
        if !key_safe(self.prefix.get_ref()) {
            r.add(
                Some(self.prefix.span()).filter(|s| !s.is_empty()),
                "cluster.prefix".into(),
                "must be 1–64 characters of a-z, A-Z, 0-9, '-', '_', '.'",
            );
        }
        if let Some(n) = &self.node {
            if !key_safe(n.get_ref()) {
                r.add(
                    Some(n.span()),
                    "cluster.node".into(),
                    "must be 1–64 characters of a-z, A-Z, 0-9, '-', '_', '.'",
                );
            }
        }
        if !(3_000..=300_000).contains(&self.node_ttl_ms) {
            r.add(
                None,
                "cluster.node_ttl_ms".into(),
                "must be 3000 to 300000 (milliseconds)",
            );
        }
        if self.wait_replicas > 16 {
            r.add(None, "cluster.wait_replicas".into(), "must be 0 to 16");
        }
        if !(10..=10_000).contains(&self.command_timeout_ms) {
            r.add(
                None,
                "cluster.command_timeout_ms".into(),
                "must be 10 to 10000 (milliseconds)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const LISTENER: &str = "\n[[tenant]]\nname = \"a\"\npolicy = \"open\"\n\n[[listener]]\nname = \"x\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\nroutes = [{ path = \"/\", tenant = \"a\" }]\n";

    #[test]
    fn a_cluster_section_is_optional_and_checked() {
        assert!(Config::parse(LISTENER, None).unwrap().cluster.is_none());
        let ok = format!("[cluster]\nredis = \"redis://127.0.0.1:6379/2\"\n{LISTENER}");
        let c = Config::parse(&ok, None).unwrap().cluster.unwrap();
        assert_eq!(c.prefix.get_ref(), "relay");
        assert_eq!(c.node_ttl_ms, 15_000);
        let bad = format!(
            "[cluster]\nredis = \"http://x\"\nprefix = \"a b\"\nnode = \"\"\nnode_ttl_ms = 5\n{LISTENER}"
        );
        let all = Config::parse(&bad, None).unwrap_err();
        let found: Vec<(&str, Option<usize>)> =
            all.0.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert_eq!(
            found,
            [
                ("cluster.redis", Some(2)),
                ("cluster.prefix", Some(3)),
                ("cluster.node", Some(4)),
                ("cluster.node_ttl_ms", None),
            ],
            "{all}"
        );
    }
}
