//! `relay plugin check FILE`: load one plugin component the way a tenant would, without
//! a config, and say what relay found in it.

use std::path::Path;
use std::sync::Arc;

use super::bindings::relay::plugin::types::Hooks;
use super::policy::{PluginEnv, PluginLimits, WasmPolicy};
use super::LoadError;

/// What relay found in a plugin that loaded and passed `init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSummary {
    /// SHA-256 of the file.
    pub hash: String,
    /// The hooks relay will call (`on-handshake` always).
    pub hooks: Vec<&'static str>,
    /// The request headers the plugin says it reads (`None`: every header).
    pub headers: Option<Vec<String>>,
}

/// Why a plugin did not pass the check.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// `--settings` is not a JSON object TOML can hold.
    #[error("--settings must be a JSON object: {0}")]
    Settings(String),
    /// A scratch directory for the compiled code could not be made.
    #[error("cannot make a scratch directory: {0}")]
    Scratch(std::io::Error),
    /// Reading, compiling, linking or `init` failed.
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Load `file` with `settings` (a JSON object, the tenant's `settings` table), under the
/// default limits, with an empty in-memory store: compile it, check its imports and its
/// contract version, and run its `init`.
pub fn check_file(file: &Path, settings: Option<&str>) -> Result<PluginSummary, CheckError> {
    let settings: toml::Table = match settings {
        None => toml::Table::new(),
        Some(text) => {
            serde_json::from_str(text).map_err(|e| CheckError::Settings(e.to_string()))?
        }
    };
    let scratch = std::env::temp_dir().join(format!("relay-plugin-check-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(CheckError::Scratch)?;
    let loaded = WasmPolicy::load(PluginEnv {
        tenant: Arc::from("check"),
        path: file.to_owned(),
        cache_dir: scratch.join("cache"),
        settings,
        limits: PluginLimits::default(),
        kv: Arc::new(crate::store::TenantKv::in_memory(1 << 20)),
        presence: Arc::new(crate::hub::Hub::default()),
        metrics: Arc::default(),
        log: Arc::new(crate::msglog::LogTarget {
            dir: scratch.join("log"),
            max_bytes: 1 << 20,
            keep: 1,
        }),
        headers: Default::default(),
    });
    let _ = std::fs::remove_dir_all(&scratch);
    let policy = loaded?;
    let mut hooks = vec!["on-handshake"];
    for (flag, name) in [
        (Hooks::ON_EVENT, "on-event"),
        (Hooks::ON_INGRESS, "on-ingress"),
        (Hooks::ON_DISCONNECT, "on-disconnect"),
    ] {
        if policy.declares(flag) {
            hooks.push(name);
        }
    }
    Ok(PluginSummary {
        hash: policy.hash(),
        hooks,
        headers: policy.header_names(),
    })
}
