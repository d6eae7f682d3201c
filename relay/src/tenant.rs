//! Tenants: an isolated hub, policy and codec per application.

use std::sync::Arc;

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{glob_match, TenantConfig, WireProfile};
use crate::hub::{Hub, Presence};
use crate::metrics::Metrics;
use crate::plugin::policy::PluginEnv;
use crate::plugin::{PluginLimits, WasmPolicy};
use crate::policy::{open::OpenPolicy, Policy};
use crate::protocol::{
    engineio::EioCodec, json::WsJson, socketio::SioCodec, Codec, Message, OutFormat,
};
use crate::store::KvStore;

/// One tenant. Nothing in one tenant can reach another's hub: every route,
/// action and publication names its tenant, and each tenant owns its hub.
pub struct Tenant {
    /// Name from the config.
    pub name: Arc<str>,
    /// Its configuration (limits, timeouts, settings).
    pub config: TenantConfig,
    /// Its connections, rooms and users on this node.
    pub hub: Arc<Hub>,
    /// Who is online, as hooks and actions ask (on one node, the hub itself).
    pub presence: Arc<dyn Presence>,
    /// Its key-value store (plugins' `kv-*`).
    pub kv: Arc<dyn KvStore>,
    /// Where its message log goes.
    pub log: Arc<crate::msglog::LogTarget>,
    /// Its decisions.
    pub policy: Arc<dyn Policy>,
    /// Its WebSocket wire profile (socket.io: the first namespace's codec).
    pub codec: Arc<dyn Codec>,
    /// socket.io: each namespace named in the config and its codec.
    pub namespaces: Vec<(String, Arc<dyn Codec>)>,
    /// socket.io: the config's namespace patterns (entries with `*`).
    pub namespace_patterns: Vec<String>,
    /// Set once the tenant may have offline messages; until then identifications and
    /// joins skip the store lookup.
    pub offline_used: std::sync::atomic::AtomicBool,
    /// Sent just before the authentication deadline closes a connection.
    pub auth_timeout_notice: Option<Message>,
    /// `max_pushes_per_sec` (none when 0).
    pub pushes: Option<crate::rate::SharedBucket>,
}

impl Tenant {
    /// A connection's inbound rate limits, as this tenant sets them.
    pub fn conn_rate(&self) -> crate::rate::ConnRate {
        let r = &self.config.rates;
        crate::rate::ConnRate::new(
            r.max_messages_per_sec,
            r.max_inbound_bytes_per_sec,
            self.config.limits.max_message_bytes,
            r.rate_limit_close_secs,
        )
    }
}

impl Tenant {
    /// socket.io: the codec of namespace `nsp` if the tenant accepts it (by name, or by
    /// pattern: then a codec of its own, whose messages are encoded per recipient).
    pub fn namespace_codec(&self, nsp: &str) -> Option<Arc<dyn Codec>> {
        if let Some((_, c)) = self.namespaces.iter().find(|(n, _)| n == nsp) {
            return Some(c.clone());
        }
        let ok = nsp.len() <= crate::config::MAX_NAMESPACE_BYTES
            && !nsp.contains([',', '?', '#'])
            && self.namespace_patterns.iter().any(|p| glob_match(p, nsp));
        ok.then(|| {
            Arc::new(SioCodec {
                nsp: nsp.to_owned(),
                format: OutFormat::UNCACHED,
            }) as Arc<dyn Codec>
        })
    }
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant").field("name", &self.name).finish()
    }
}

/// Why a tenant could not be built (each names the config key at fault).
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// The policy refused its settings (`settings`).
    #[error("{0}")]
    Settings(String),
    /// The wasm policy was given no plugin (`plugin`).
    #[error("the wasm policy needs `plugin`")]
    NoPlugin,
    /// The plugin could not be loaded (`plugin`).
    #[error(transparent)]
    Plugin(#[from] crate::plugin::LoadError),
    /// `auth_timeout_notice` is not a message.
    #[error("needs `event` (optional) and `data`: {0}")]
    Notice(String),
}

/// `auth_timeout_notice` as a message.
fn notice_message(table: Option<&toml::Table>) -> Result<Option<Message>, TenantError> {
    let Some(t) = table else { return Ok(None) };
    let v = serde_json::to_value(t).map_err(|e| TenantError::Notice(e.to_string()))?;
    serde_json::from_value(v)
        .map(Some)
        .map_err(|e| TenantError::Notice(e.to_string()))
}

/// What building a tenant needs besides its config.
pub struct TenantDeps {
    /// Where compiled plugins are cached.
    pub cache_dir: PathBuf,
    /// The resolved plugin file, for the wasm policy.
    pub plugin_path: Option<PathBuf>,
    /// The tenant's key-value store.
    pub kv: Arc<dyn KvStore>,
    /// Its message log directory.
    pub log_dir: PathBuf,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// In a cluster, what keeps the hub in Redis (then presence is cluster-wide).
    pub cluster: Option<Arc<crate::cluster::sync::ClusterSync>>,
}

impl Tenant {
    /// Build a tenant from its (validated) config. Blocking: a wasm policy is compiled
    /// (or loaded from the cache), instantiated and initialised here.
    pub fn new(config: TenantConfig, deps: TenantDeps) -> Result<Self, TenantError> {
        let name: Arc<str> = Arc::from(config.name.get_ref().as_str());
        let hub = Arc::new(Hub::new(config.limits.max_rooms_per_connection));
        let presence: Arc<dyn Presence> = match &deps.cluster {
            Some(sync) => {
                sync.attach(name.clone(), hub.clone());
                Arc::new(crate::cluster::presence::ClusterPresence::new(
                    name.clone(),
                    hub.clone(),
                    sync.clone(),
                ))
            }
            None => hub.clone(),
        };
        let kv = deps.kv.clone();
        let log = Arc::new(crate::msglog::LogTarget {
            dir: deps.log_dir.clone(),
            max_bytes: config.log.max_bytes,
            keep: config.log.keep,
        });
        let policy: Arc<dyn Policy> = match config.policy.get_ref().as_str() {
            "open" => Arc::new(
                OpenPolicy::from_settings(&config.settings()).map_err(TenantError::Settings)?,
            ),
            "wasm" => {
                let path = deps.plugin_path.ok_or(TenantError::NoPlugin)?;
                Arc::new(
                    WasmPolicy::load(PluginEnv {
                        tenant: name.clone(),
                        path,
                        cache_dir: deps.cache_dir,
                        settings: config.settings(),
                        limits: PluginLimits {
                            deadline: Duration::from_millis(config.wasm.deadline_ms),
                            memory_bytes: usize::try_from(config.wasm.memory_mb << 20)
                                .unwrap_or(usize::MAX),
                            max_idle: config.wasm.instances,
                            wait: Duration::from_millis(config.wasm.wait_ms),
                            breaker_failures: config.wasm.breaker_failures,
                            breaker_open: Duration::from_millis(config.wasm.breaker_open_ms),
                            fail_open: config.wasm.failure_mode
                                == crate::config::tenant::FailureMode::Open,
                        },
                        kv: kv.clone(),
                        presence: presence.clone(),
                        metrics: deps.metrics,
                        log: log.clone(),
                        headers: crate::plugin::HeaderFilter::new(
                            config
                                .plugin_headers
                                .as_ref()
                                .map(|h| h.get_ref().as_slice()),
                        ),
                    })
                    .map_err(TenantError::Plugin)?,
                )
            }
            other => return Err(TenantError::Settings(format!("unknown policy {other:?}"))),
        };
        let (patterns, names): (Vec<&String>, Vec<&String>) =
            config.namespaces.iter().partition(|n| n.contains('*'));
        let namespaces: Vec<(String, Arc<dyn Codec>)> = match config.profile {
            WireProfile::WsJson | WireProfile::EngineIo => Vec::new(),
            WireProfile::SocketIo => names
                .into_iter()
                .enumerate()
                .map(|(i, n)| {
                    let c: Arc<dyn Codec> = Arc::new(SioCodec {
                        nsp: n.clone(),
                        format: OutFormat::socketio(i),
                    });
                    (n.clone(), c)
                })
                .collect(),
        };
        let namespace_patterns = match config.profile {
            WireProfile::SocketIo => patterns.into_iter().cloned().collect(),
            _ => Vec::new(),
        };
        let codec: Arc<dyn Codec> = match config.profile {
            WireProfile::EngineIo => Arc::new(EioCodec),
            _ => match namespaces.first() {
                Some((_, c)) => c.clone(),
                None => Arc::new(WsJson {
                    event_field: config.event_field.clone(),
                    offset_field: config.history.field.clone(),
                }),
            },
        };
        let notice = notice_message(config.auth_timeout_notice.as_ref().map(|n| n.get_ref()))?;
        let per_sec = config.rates.max_pushes_per_sec;
        let pushes = (per_sec > 0).then(|| crate::rate::SharedBucket::per_second(per_sec));
        Ok(Tenant {
            presence,
            log,
            name,
            config,
            hub,
            kv,
            policy,
            codec,
            namespaces,
            namespace_patterns,
            offline_used: Default::default(),
            auth_timeout_notice: notice,
            pushes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn namespace_patterns_match_any_run_of_characters() {
        for (p, t, want) in [
            ("/room-*", "/room-1", true),
            ("/room-*", "/room-", true),
            ("/room-*", "/room", false),
            ("/room-*", "/rooms-1", false),
            ("/*", "/", true),
            ("/*", "/anything/at/all", true),
            ("/a*b*c", "/axxbyyc", true),
            ("/a*b*c", "/axxbyy", false),
            ("/a*bc", "/abc", true),
            ("/ab*bc", "/abc", false),
            ("/chat", "/chat", true),
            ("/chat", "/chats", false),
        ] {
            assert_eq!(glob_match(p, t), want, "{p} vs {t}");
        }
    }
}
