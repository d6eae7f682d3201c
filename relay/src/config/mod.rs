//! The TOML configuration: listeners, tenants and their limits.
//!
//! A leaf: it imports nothing else of relay. Parsing is strict
//! (`deny_unknown_fields`); [`Config::validate`] checks the structure serde cannot
//! (names, references between sections, addresses, limits) and reports every error at
//! once, each naming the key and, when it comes from a file, the line. Whether the
//! things a configuration names can be built (TLS files, plugins, policy settings,
//! webhook URLs) is checked where they are built, once, by the composition root
//! (`server::check`), with errors of the same shape ([`Config::error_at`]).
//!
//! - `mod.rs`: [`Config`], `[server]`, loading and paths.
//! - [`listener`]: `[[listener]]`. [`tenant`]: `[[tenant]]` and the defaults.
//! - [`cluster`]: `[cluster]` (Redis, for several nodes).

pub mod cluster;
mod defaults;
mod error;
pub mod listener;
pub mod tenant;
mod validate;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub use cluster::{ClusterConfig, RedisIngress};
pub use error::{ConfigError, ConfigErrors};
pub use listener::{ListenerConfig, ListenerKind, RouteConfig};
pub use tenant::{
    TenantConfig, WireProfile, BUILTIN_POLICIES, MAX_NAMESPACES, MAX_NAMESPACE_BYTES,
};

/// The configuration used when `relay serve` is given no `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("../default.toml");

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
    /// Several nodes sharing rooms, users and presence through Redis (`[cluster]`);
    /// absent, relay is one node.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
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
    /// The bearer token `/admin/*` and `/metrics` require (`Authorization: Bearer …`);
    /// at least 16 characters. Unset: the `RELAY_ADMIN_TOKEN` environment variable, and
    /// without either, no token (then requests through a proxy are refused).
    pub admin_token: Option<String>,
    /// Addresses `/admin/*` and `/metrics` answer (CIDR). Default loopback.
    pub admin_from: Vec<ipnet::IpNet>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("relay-data"),
            shutdown_grace_ms: 5_000,
            sync: Default::default(),
            sync_window_ms: 0,
            admin_token: None,
            admin_from: defaults::udp_trusted(),
        }
    }
}

impl Config {
    /// Parse and validate the embedded default configuration.
    pub fn embedded_default() -> Result<Config, ConfigErrors> {
        Self::parse(DEFAULT_CONFIG, None)
    }

    /// Read, parse and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: None,
            key: "(file)".into(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, Some(path))
    }

    /// Parse and validate configuration text; `path` is used for messages and relative paths.
    pub fn parse(text: &str, path: Option<&Path>) -> Result<Config, ConfigErrors> {
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

    /// An error about `key` of this configuration, at `span` (a byte range of its text,
    /// for the line) when known.
    pub fn error_at(
        &self,
        span: Option<std::ops::Range<usize>>,
        key: String,
        message: String,
    ) -> ConfigError {
        ConfigError {
            file: self
                .source
                .path
                .as_ref()
                .map_or_else(|| "<embedded>".to_string(), |p| p.display().to_string()),
            line: span.map(|s| line_of(&self.source.text, s.start)),
            key,
            message,
        }
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

    /// What the config allows but probably should not (`relay check` prints these,
    /// `relay serve` logs them at start).
    pub fn warnings(&self) -> Vec<String> {
        self.listeners.iter().flat_map(|l| l.warnings()).collect()
    }

    /// Check everything serde cannot: names, references, addresses, limits; every
    /// error found, not only the first.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut r = validate::Report::new(self);
        if self
            .server
            .admin_token
            .as_ref()
            .is_some_and(|t| t.trim().len() < 16)
        {
            r.add(
                None,
                "server.admin_token".into(),
                "must be at least 16 characters",
            );
        }
        if self.server.sync_window_ms > 5 {
            r.add(
                None,
                "server.sync_window_ms".into(),
                "must be 0 to 5 (milliseconds a flush waits for company)",
            );
        }
        if let Some(c) = &self.cluster {
            c.check(&mut r);
        }
        cluster::check_ingress(self, &mut r);
        let mut tenants = HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            t.check(i, &mut tenants, &mut r);
        }
        let mut seen = listener::Seen::default();
        for (i, l) in self.listeners.iter().enumerate() {
            l.check(i, &mut seen, &tenants, &mut r);
        }
        if self.listeners.is_empty() {
            r.add(
                None,
                "listener".into(),
                "at least one [[listener]] is needed",
            );
        }
        match r.errors.is_empty() {
            true => Ok(()),
            false => Err(ConfigErrors(r.errors)),
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

/// Whether `text` matches `pattern`, where `*` stands for any run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*` at all
    };
    for m in middle {
        match rest.find(m) {
            Some(i) => rest = &rest[i + m.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
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
        let e = Config::parse(text, Some(Path::new("x.toml")))
            .unwrap_err()
            .0
            .remove(0);
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
        let e = Config::parse(text, None).unwrap_err().0.remove(0);
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("bogus"), "{e}");
    }

    #[test]
    fn route_to_missing_tenant() {
        let text = "[[listener]]\nname = \"x\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\nroutes = [{ path = \"/\", tenant = \"ghost\" }]\n";
        let e = Config::parse(text, None).unwrap_err().0.remove(0);
        assert_eq!(e.key, "listener[0].routes[0].tenant");
        assert!(e.message.contains("ghost"));
    }

    #[test]
    fn plugin_headers_must_be_lowercase_header_names() {
        for bad in ["X-Token", "bad name"] {
            let text = format!(
                "[[tenant]]\nname = \"a\"\npolicy = \"open\"\nplugin_headers = [\"host\", \"{bad}\"]\n"
            );
            let e = Config::parse(&text, None).unwrap_err().0.remove(0);
            assert_eq!(e.key, "tenant[0].plugin_headers");
            assert_eq!(e.line, Some(4), "{e}");
            assert!(e.message.contains(bad), "{e}");
        }
        let text = "[[tenant]]\nname = \"a\"\npolicy = \"open\"\nplugin_headers = [\"x-token\"]\n\n[[listener]]\nname = \"x\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\nroutes = [{ path = \"/\", tenant = \"a\" }]\n";
        if let Err(e) = Config::parse(text, None) {
            panic!("{e}");
        }
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let text = "[[tenant]]\nname = \"a b\"\npolicy = \"magic\"\n\n[[listener]]\nname = \"x\"\nkind = \"ws\"\nbind = \"nope\"\nroutes = [{ path = \"/\", tenant = \"ghost\" }]\n";
        let all = Config::parse(text, Some(Path::new("x.toml"))).unwrap_err();
        let keys: Vec<&str> = all.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tenant[0].name",
                "tenant[0].policy",
                "listener[0].bind",
                "listener[0].routes[0].tenant"
            ],
            "{all}"
        );
        assert_eq!(all.to_string().lines().count(), 4, "one line each:\n{all}");
    }

    #[test]
    fn flat_keys_land_in_their_groups_and_unknown_keys_are_named_with_their_line() {
        let tenant = "[[tenant]]\nname = \"a\"\npolicy = \"open\"\nhistory_max = 5\noffline_max = 7\nmax_message_bytes = 99\nplugin_deadline_ms = 3\n";
        let listener = "\n[[listener]]\nname = \"x\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\nroutes = [{ path = \"/\", tenant = \"a\" }]\n";
        let c = Config::parse(&format!("{tenant}{listener}"), None).unwrap();
        let t = &c.tenants[0];
        assert_eq!(
            (
                t.history.max,
                t.offline.max,
                t.limits.max_message_bytes,
                t.wasm.deadline_ms
            ),
            (5, 7, 99, 3)
        );
        assert_eq!(t.timers.idle_timeout_ms, 60_000, "defaults still apply");
        let text = format!("{tenant}colour = \"blue\"\n{listener}");
        let e = Config::parse(&text, None).unwrap_err().0.remove(0);
        assert_eq!(e.key, "tenant[0].colour");
        assert_eq!(e.line, Some(8), "{e}");
        assert!(e.message.contains("unknown field `colour`"), "{e}");
    }
}
