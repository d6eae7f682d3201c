//! Tenants: an isolated hub, policy and codec per application.

use std::sync::Arc;

use crate::config::{TenantConfig, WireProfile};
use crate::hub::Hub;
use crate::policy::{open::OpenPolicy, Policy};
use crate::protocol::{json::WsJson, Codec};

/// One tenant. Nothing in one tenant can reach another's hub: every route,
/// action and publication names its tenant, and each tenant owns its hub.
pub struct Tenant {
    /// Name from the config.
    pub name: Arc<str>,
    /// Its configuration (limits, timeouts, settings).
    pub config: TenantConfig,
    /// Its connections, rooms and users.
    pub hub: Hub,
    /// Its decisions.
    pub policy: Arc<dyn Policy>,
    /// Its WebSocket wire profile.
    pub codec: Arc<dyn Codec>,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant").field("name", &self.name).finish()
    }
}

impl Tenant {
    /// Build a tenant from its (validated) config.
    pub fn new(config: TenantConfig) -> Result<Self, String> {
        let policy: Arc<dyn Policy> = match config.policy.get_ref().as_str() {
            "open" => Arc::new(OpenPolicy::from_settings(&config.settings())?),
            other => return Err(format!("unknown policy {other:?}")),
        };
        let codec: Arc<dyn Codec> = match config.profile {
            WireProfile::WsJson => Arc::new(WsJson {
                event_field: config.event_field.clone(),
            }),
        };
        Ok(Tenant {
            name: Arc::from(config.name.get_ref().as_str()),
            config,
            hub: Hub::new(),
            policy,
            codec,
        })
    }
}
