//! Tenants: an isolated hub, policy and codec per application.

use std::sync::Arc;

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{TenantConfig, WireProfile};
use crate::hub::{Hub, Presence};
use crate::metrics::Metrics;
use crate::plugin::policy::PluginEnv;
use crate::plugin::{PluginLimits, WasmPolicy};
use crate::policy::{open::OpenPolicy, Policy};
use crate::protocol::{json::WsJson, socketio::SioCodec, Codec, Message, OutFormat};
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
    /// socket.io: each namespace and its codec.
    pub namespaces: Vec<(String, Arc<dyn Codec>)>,
    /// Set once the tenant may have offline messages; until then identifications and
    /// joins skip the store lookup.
    pub offline_used: std::sync::atomic::AtomicBool,
    /// Sent just before the authentication deadline closes a connection.
    pub auth_timeout_notice: Option<Message>,
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
}

impl Tenant {
    /// Build a tenant from its (validated) config. Blocking: a wasm policy is compiled
    /// (or loaded from the cache), instantiated and initialised here.
    pub fn new(config: TenantConfig, deps: TenantDeps) -> Result<Self, TenantError> {
        let name: Arc<str> = Arc::from(config.name.get_ref().as_str());
        let hub = Arc::new(Hub::new(config.limits.max_rooms_per_connection));
        let kv = deps.kv.clone();
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
                        },
                        kv: kv.clone(),
                        hub: hub.clone(),
                        metrics: deps.metrics,
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
        let namespaces: Vec<(String, Arc<dyn Codec>)> = match config.profile {
            WireProfile::WsJson => Vec::new(),
            WireProfile::SocketIo => config
                .namespaces
                .iter()
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
        let codec: Arc<dyn Codec> = match namespaces.first() {
            Some((_, c)) => c.clone(),
            None => Arc::new(WsJson {
                event_field: config.event_field.clone(),
                offset_field: config.history.field.clone(),
            }),
        };
        let log = Arc::new(crate::msglog::LogTarget {
            dir: deps.log_dir.clone(),
            max_bytes: config.log.max_bytes,
            keep: config.log.keep,
        });
        let notice = notice_message(config.auth_timeout_notice.as_ref().map(|n| n.get_ref()))?;
        Ok(Tenant {
            presence: hub.clone(),
            log,
            name,
            config,
            hub,
            kv,
            policy,
            codec,
            namespaces,
            offline_used: Default::default(),
            auth_timeout_notice: notice,
        })
    }
}
