//! Loading a plugin: read, compile (or take from the cache), check its imports and
//! contract, pre-link, and prove it with one `init`; reloading swaps the loaded version.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use wasmtime::{Store, StoreLimitsBuilder, UpdateDeadline};

use super::bindings::relay::plugin::types::PluginInfo;
use super::bindings::PluginPre;
use super::call::describe;
use super::host::HostState;
use super::policy::{Inner, Instance, Loaded, Spec, INIT_DEADLINE};
use super::runtime::{self, Runtime};
use crate::fault::Fault;
use crate::metrics::Metrics;

/// A plugin could not be loaded; the message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The wasmtime engine could not be made (relay's fault).
    #[error("wasmtime runtime: {0}")]
    Runtime(String),
    /// The tenant's settings cannot be handed to the plugin as JSON.
    #[error("settings: {0}")]
    Settings(serde_json::Error),
    /// The file is unreadable.
    #[error("cannot read plugin {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// It is not a component this relay can compile.
    #[error("{path}: {message}")]
    Compile {
        /// The file.
        path: String,
        /// What the compiler said.
        message: String,
    },
    /// It imports what relay does not provide.
    #[error("{path}: imports {imports} which relay does not provide (plugins get the relay:plugin/host imports and only {allowed})")]
    Forbidden {
        /// The file.
        path: String,
        /// The imports, comma-separated.
        imports: String,
        /// What is allowed, comma-separated.
        allowed: String,
    },
    /// It was built against another version of the contract.
    #[error("{path}: built against relay:plugin@{found}, but this relay implements relay:plugin@{ours}: rebuild the plugin with the current SDK")]
    Contract {
        /// The file.
        path: String,
        /// The contract version it was built for.
        found: String,
        /// Ours.
        ours: &'static str,
    },
    /// It does not fit the `relay:plugin` world.
    #[error("{path}: does not fit the relay:plugin world: {message}")]
    World {
        /// The file.
        path: String,
        /// What the linker said.
        message: String,
    },
    /// Instantiating or its `init` failed.
    #[error("{path}: {why}")]
    Init {
        /// The file.
        path: String,
        /// What failed.
        why: InitError,
    },
}

impl LoadError {
    /// Whose fault: the operator's plugin, unless the engine itself failed.
    pub fn fault(&self) -> Fault {
        match self {
            LoadError::Runtime(_) => Fault::Internal,
            _ => Fault::Operator,
        }
    }

    /// Whether loading again may help without a new file: only an unreadable file (it may
    /// be mid-copy); the same bytes compile, link and initialise the same way again.
    pub fn retryable(&self) -> bool {
        matches!(self, LoadError::Read { .. })
    }
}

/// Why a new instance could not be made.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Instantiation trapped or ran out of memory.
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    /// `init` returned an error: it refuses its settings.
    #[error("init refused the settings: {0}")]
    Refused(String),
    /// `init` trapped.
    #[error("init failed: {0}")]
    Trapped(String),
}

/// What identifies one version of the plugin file: its modification time and length
/// (timestamps are coarse; a file caught half-written has another length).
pub(super) type FileStamp = (SystemTime, u64);

pub(super) fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Spec {
    /// Read, compile, check and pre-link the plugin file, and prove it with one `init`.
    /// Blocking (compiling and `init` run on the calling thread).
    pub(super) fn prepare(&self, rt: &Runtime) -> Result<Loaded, LoadError> {
        let path = &self.path;
        let shown = || path.display().to_string();
        let modified = stamp(path);
        let wasm = std::fs::read(path).map_err(|source| LoadError::Read {
            path: shown(),
            source,
        })?;
        let compiled =
            runtime::compile(rt, &wasm, &self.cache_dir).map_err(|message| LoadError::Compile {
                path: shown(),
                message,
            })?;
        Metrics::inc(if compiled.cached {
            &self.metrics.plugin_cache_hits
        } else {
            &self.metrics.plugin_compiles
        });
        let forbidden = runtime::forbidden_imports(&rt.engine, &compiled.component);
        if !forbidden.is_empty() {
            return Err(LoadError::Forbidden {
                path: shown(),
                imports: forbidden.join(", "),
                allowed: runtime::ALLOWED_WASI.join(", "),
            });
        }
        let pre = rt
            .linker
            .instantiate_pre(&compiled.component)
            .and_then(PluginPre::new)
            .map_err(
                |e| match runtime::other_contract(&rt.engine, &compiled.component) {
                    Some(found) => LoadError::Contract {
                        path: shown(),
                        found,
                        ours: runtime::CONTRACT_VERSION,
                    },
                    None => LoadError::World {
                        path: shown(),
                        message: format!("{e:#}"),
                    },
                },
            )?;
        let (first, info) = self
            .instantiate(rt, &pre)
            .map_err(|why| LoadError::Init { path: shown(), why })?;
        let loaded = Loaded {
            pre,
            hash: compiled.hash,
            hooks: info.hooks,
            headers: self.headers.narrowed(info.headers.as_deref()),
            idle: Mutex::new(vec![first]),
            modified,
        };
        tracing::info!(tenant = %self.tenant, plugin = %path.display(), hash = %&loaded.hash[..12], cached = compiled.cached, hooks = ?loaded.hooks, headers = ?info.headers, "plugin loaded");
        Ok(loaded)
    }

    /// A new instance with its own store, limits and `init` already run, and what its
    /// `init` says of the plugin (optional hooks, headers read).
    pub(super) fn instantiate(
        &self,
        rt: &Runtime,
        pre: &PluginPre<HostState>,
    ) -> Result<(Instance, PluginInfo), InitError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .instances(16)
            .tables(16)
            .memories(4)
            .table_elements(100_000)
            .trap_on_grow_failure(true)
            .build();
        let state = HostState::new(
            self.tenant.clone(),
            self.kv.clone(),
            self.presence.clone(),
            self.metrics.clone(),
            self.log.clone(),
            limits,
        );
        let mut store = Store::new(&rt.engine, state);
        store.limiter(|s| &mut s.limits);
        // The deadline is CPU time this call has used, checked at every epoch tick (1 ms):
        // on a busy machine a worker thread can be descheduled for milliseconds mid-call,
        // and a wall-clock deadline would fail calls that used microseconds. A call that
        // takes longer than 20× its budget in wall-clock time fails anyway.
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            Ok(if state.call_clock.over_budget() {
                let (cpu, host, wall) = state.call_clock.used();
                tracing::debug!(tenant = %state.tenant, ?cpu, ?host, ?wall, "plugin call over its deadline");
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Continue(1)
            })
        });
        store.data_mut().call_clock.start(INIT_DEADLINE);
        store.set_epoch_deadline(1);
        let plugin = pre
            .instantiate(&mut store)
            .map_err(|e| InitError::Instantiate(describe(&e)))?;
        let info = match plugin.call_init(&mut store, &self.settings) {
            Ok(Ok(info)) => info,
            Ok(Err(msg)) => return Err(InitError::Refused(msg)),
            Err(e) => return Err(InitError::Trapped(describe(&e))),
        };
        store.data_mut().drain_stdio();
        Metrics::inc(&self.metrics.plugin_instances);
        Ok((Instance { store, plugin }, info))
    }
}

impl Inner {
    pub(super) fn reload(&self) -> Result<String, LoadError> {
        let rt = runtime::runtime().map_err(LoadError::Runtime)?;
        match self.prepare(rt) {
            Ok(loaded) => {
                let hash = loaded.hash.clone();
                match self.current.write() {
                    Ok(mut g) => *g = Arc::new(loaded),
                    Err(p) => *p.into_inner() = Arc::new(loaded),
                }
                Metrics::inc(&self.metrics.plugin_reloads);
                tracing::info!(tenant = %self.tenant, hash = %&hash[..12], "plugin reloaded; new calls use it");
                Ok(hash)
            }
            Err(e) => {
                Metrics::inc(&self.metrics.plugin_reload_failures);
                tracing::error!(tenant = %self.tenant, error = %e, "plugin reload rejected; the previous version stays");
                Err(e)
            }
        }
    }
}
