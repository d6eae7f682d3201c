//! [`WasmPolicy`]: a tenant's plugin behind the policy seam.
//!
//! Each call takes an idle instance from the tenant's pool (or instantiates
//! one from the pre-linked component and runs `init`), sets its deadline, and
//! calls the hook synchronously, inline in the calling task: no thread hop, no
//! fiber. A call holds its worker thread for at most its deadline, then traps. A
//! call that traps, times out, exceeds memory or returns malformed data fails
//! alone; its instance is dropped. Reload swaps the whole loaded
//! plugin (component, pool) atomically; calls in flight finish on the old one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use wasmtime::component::Resource;
use wasmtime::{Store, StoreLimitsBuilder, Trap, UpdateDeadline};

use super::bindings::relay::plugin::types::{Hooks, PluginInfo};
use super::bindings::{Plugin, PluginPre};
use super::convert;
use super::host::{CurrentHandshake, HostState};
use super::runtime::{self, Runtime};
use crate::hub::{Hub, Presence};
use crate::metrics::Metrics;
use crate::policy::{
    Action, BoxFuture, ClientEvent, ConnInfo, DisconnectInfo, HandshakeDecision, HandshakeRequest,
    IngressOutcome, IngressRequest, Policy,
};
use crate::policy::{Failure, PolicyError};
use crate::store::KvStore;

/// Sandbox limits of a tenant's plugin.
#[derive(Debug, Clone, Copy)]
pub struct PluginLimits {
    /// Wall-clock budget of one hook call. Default 5 ms.
    pub deadline: Duration,
    /// Linear memory cap per instance. Default 32 MiB.
    pub memory_bytes: usize,
    /// Instances per tenant: at most this many calls run at once (others wait their
    /// turn), each on its own instance, kept for reuse. Default 4.
    pub max_idle: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            deadline: Duration::from_millis(5),
            memory_bytes: 32 << 20,
            max_idle: 4,
        }
    }
}

/// Deadline for `init` (it may parse settings or warm caches).
const INIT_DEADLINE: Duration = Duration::from_secs(1);

struct Instance {
    store: Store<HostState>,
    plugin: Plugin,
}

/// One loaded version of a plugin.
struct Loaded {
    pre: PluginPre<HostState>,
    hash: String,
    /// The optional hooks it implements (from its first `init`): relay calls no others.
    hooks: Hooks,
    /// The tenant's header filter narrowed to the headers it says it reads.
    headers: convert::HeaderFilter,
    idle: Mutex<Vec<Instance>>,
    modified: Option<FileStamp>,
}

/// What identifies one version of the plugin file: its modification time and length
/// (timestamps are coarse; a file caught half-written has another length).
type FileStamp = (SystemTime, u64);

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

enum CallError {
    /// The instance trapped or ran out of memory.
    Trap(String),
    /// The call ran past its deadline.
    Deadline,
    /// The plugin returned an error value.
    Plugin(String),
    /// The plugin returned data relay cannot use.
    Malformed(String),
}

/// What a plugin is loaded from and with: everything but the loaded version.
struct Spec {
    tenant: Arc<str>,
    path: PathBuf,
    cache_dir: PathBuf,
    settings: String,
    limits: PluginLimits,
    kv: Arc<dyn KvStore>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    headers: convert::HeaderFilter,
}

struct Inner {
    spec: Spec,
    current: RwLock<Arc<Loaded>>,
    /// Modification time of the last file a reload was attempted from (so a broken
    /// file is tried once, not on every watch tick).
    attempted: Mutex<Option<FileStamp>>,
    /// Held by the reload in progress: reloads run one at a time, so an older file's
    /// slow reload can never replace a newer one.
    reloading: Mutex<()>,
    /// One permit per instance: calls beyond `plugin_instances` wait for one instead of
    /// creating (and throwing away) more instances.
    permits: tokio::sync::Semaphore,
}

impl std::ops::Deref for Inner {
    type Target = Spec;
    fn deref(&self) -> &Spec {
        &self.spec
    }
}

/// A tenant's WASM plugin as its policy.
pub struct WasmPolicy {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WasmPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPolicy")
            .field("tenant", &self.inner.tenant)
            .field("path", &self.inner.path)
            .finish()
    }
}

/// Everything a plugin needs from its tenant.
pub struct PluginEnv {
    /// Tenant name.
    pub tenant: Arc<str>,
    /// The `.wasm` file.
    pub path: PathBuf,
    /// Where compiled components are cached.
    pub cache_dir: PathBuf,
    /// The tenant's `settings` table.
    pub settings: toml::Table,
    /// Sandbox limits.
    pub limits: PluginLimits,
    /// The tenant's key-value store.
    pub kv: Arc<dyn KvStore>,
    /// The tenant's hub (presence queries).
    pub hub: Arc<Hub>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Which request headers hooks see.
    pub headers: convert::HeaderFilter,
}

impl WasmPolicy {
    /// Compile (or load from cache), check imports, instantiate once and run `init`.
    /// Blocking: compiling takes a while the first time.
    pub fn load(env: PluginEnv) -> Result<Self, String> {
        let settings =
            serde_json::to_string(&env.settings).map_err(|e| format!("settings: {e}"))?;
        let rt = runtime::runtime()?;
        let spec = Spec {
            tenant: env.tenant,
            path: env.path,
            cache_dir: env.cache_dir,
            settings,
            limits: env.limits,
            kv: env.kv,
            hub: env.hub,
            metrics: env.metrics,
            headers: env.headers,
        };
        let loaded = spec.prepare(rt)?;
        let max_idle = spec.limits.max_idle;
        Ok(WasmPolicy {
            inner: Arc::new(Inner {
                spec,
                current: RwLock::new(Arc::new(loaded)),
                attempted: Mutex::new(None),
                reloading: Mutex::new(()),
                permits: tokio::sync::Semaphore::new(max_idle.max(1)),
            }),
        })
    }

    /// Run the handshake hook to completion on the calling thread, outside any async
    /// runtime (no instance permit is taken). For benchmarks.
    pub fn handshake_blocking(
        &self,
        req: &Arc<HandshakeRequest>,
    ) -> Result<HandshakeDecision, PolicyError> {
        let mut lease = self.inner.lease("on-handshake", None)?;
        let raw = lease.call_on_handshake(req);
        self.inner
            .finish("on-handshake", lease, checked(raw, convert::decision))
    }

    /// Create (and `init`) `n` fresh instances and drop them; returns how long that took.
    /// For measuring instantiation cost.
    pub fn instantiate_many(&self, n: usize) -> Result<Duration, String> {
        let rt = runtime::runtime()?;
        let loaded = self.inner.current();
        let start = std::time::Instant::now();
        for _ in 0..n {
            drop(self.inner.instantiate(rt, &loaded.pre)?);
        }
        Ok(start.elapsed())
    }

    /// SHA-256 of the plugin file currently loaded.
    pub fn hash(&self) -> String {
        self.inner.current().hash.clone()
    }

    /// An instance for one call, once one of the tenant's `plugin_instances` is free.
    async fn lease(&self, hook: &'static str) -> Result<Lease<'_>, PolicyError> {
        let Ok(permit) = self.inner.permits.acquire().await else {
            let closed = Failure::Unavailable("the plugin pool is closed".into());
            return Err(self.inner.err(hook, closed));
        };
        self.inner.lease(hook, Some(permit))
    }
}

/// An instance taken from the pool for one call (and the call's permit): the caller
/// calls the hook on its parts, then hands the result to [`Inner::finish`].
struct Lease<'p> {
    _permit: Option<tokio::sync::SemaphorePermit<'p>>,
    loaded: Arc<Loaded>,
    inst: Instance,
}

impl Lease<'_> {
    fn parts(&mut self) -> (&Plugin, &mut Store<HostState>, &Loaded) {
        (&self.inst.plugin, &mut self.inst.store, &self.loaded)
    }

    /// Call `on-handshake` with `req`'s query; the plugin reads the rest through its
    /// handle while the call runs (the store holds `req` for exactly that long).
    fn call_on_handshake(
        &mut self,
        req: &Arc<HandshakeRequest>,
    ) -> wasmtime::Result<Result<super::bindings::relay::plugin::types::HandshakeDecision, String>>
    {
        let (p, s, loaded) = self.parts();
        s.data_mut().handshake = Some(CurrentHandshake {
            req: req.clone(),
            headers: loaded.headers.clone(),
        });
        let raw = p.call_on_handshake(&mut *s, &req.query, Resource::new_borrow(0));
        s.data_mut().handshake = None;
        raw
    }
}

impl Spec {
    fn err(&self, hook: &'static str, failure: Failure) -> PolicyError {
        PolicyError::new(self.tenant.clone(), hook, failure)
    }

    /// Read, compile, check and pre-link the plugin file, and prove it with one `init`.
    /// Blocking (compiling and `init` run on the calling thread).
    fn prepare(&self, rt: &Runtime) -> Result<Loaded, String> {
        let path = &self.path;
        let modified = stamp(path);
        let wasm = std::fs::read(path)
            .map_err(|e| format!("cannot read plugin {}: {e}", path.display()))?;
        let compiled = runtime::compile(rt, &wasm, &self.cache_dir)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Metrics::inc(if compiled.cached {
            &self.metrics.plugin_cache_hits
        } else {
            &self.metrics.plugin_compiles
        });
        let forbidden = runtime::forbidden_imports(&rt.engine, &compiled.component);
        if !forbidden.is_empty() {
            return Err(format!(
                "{}: imports {} which relay does not provide (plugins get the relay:plugin/host imports and only {})",
                path.display(),
                forbidden.join(", "),
                runtime::ALLOWED_WASI.join(", ")
            ));
        }
        let pre = rt
            .linker
            .instantiate_pre(&compiled.component)
            .and_then(PluginPre::new)
            .map_err(|e| match runtime::other_contract(&rt.engine, &compiled.component) {
                Some(v) => format!(
                    "{}: built against relay:plugin@{v}, but this relay implements relay:plugin@{}: rebuild the plugin with the current SDK",
                    path.display(),
                    runtime::CONTRACT_VERSION
                ),
                None => format!(
                    "{}: does not fit the relay:plugin world: {e:#}",
                    path.display()
                ),
            })?;
        let (first, info) = self
            .instantiate(rt, &pre)
            .map_err(|e| format!("{}: {e}", path.display()))?;
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
    fn instantiate(
        &self,
        rt: &Runtime,
        pre: &PluginPre<HostState>,
    ) -> Result<(Instance, PluginInfo), String> {
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
            self.hub.clone(),
            self.metrics.clone(),
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
            .map_err(|e| format!("instantiation failed: {}", describe(&e)))?;
        let info = match plugin.call_init(&mut store, &self.settings) {
            Ok(Ok(info)) => info,
            Ok(Err(msg)) => return Err(format!("init refused the settings: {msg}")),
            Err(e) => return Err(format!("init failed: {}", describe(&e))),
        };
        store.data_mut().drain_stdio();
        Metrics::inc(&self.metrics.plugin_instances);
        Ok((Instance { store, plugin }, info))
    }
}

impl Inner {
    fn current(&self) -> Arc<Loaded> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Whether the loaded version implements an optional hook (if not, the call is
    /// skipped and counted).
    fn implements(&self, hook: Hooks) -> bool {
        let yes = match self.current.read() {
            Ok(g) => g.hooks.contains(hook),
            Err(p) => p.into_inner().hooks.contains(hook),
        };
        if !yes {
            Metrics::inc(&self.metrics.plugin_hooks_skipped);
        }
        yes
    }

    /// Take an idle instance (or make one) and start its call's deadline.
    fn lease<'p>(
        &self,
        hook: &'static str,
        permit: Option<tokio::sync::SemaphorePermit<'p>>,
    ) -> Result<Lease<'p>, PolicyError> {
        let rt = runtime::runtime().map_err(|e| self.err(hook, Failure::Unavailable(e)))?;
        let loaded = self.current();
        let taken = loaded.idle.lock().ok().and_then(|mut v| v.pop());
        let mut inst = match taken {
            Some(i) => i,
            None => {
                self.instantiate(rt, &loaded.pre)
                    .map_err(|e| {
                        Metrics::inc(&self.metrics.plugin_traps);
                        self.err(hook, Failure::Trap(e))
                    })?
                    .0
            }
        };
        Metrics::inc(&self.metrics.plugin_calls);
        inst.store.data_mut().call_clock.start(self.limits.deadline);
        inst.store.set_epoch_deadline(1);
        Ok(Lease {
            _permit: permit,
            loaded,
            inst,
        })
    }

    /// End a call: keep the instance for the next one unless the call failed in a way
    /// that leaves it suspect (trap, malformed output, stdio nearly full), and say why a
    /// failed call failed.
    fn finish<R>(
        &self,
        hook: &'static str,
        lease: Lease<'_>,
        result: Result<R, CallError>,
    ) -> Result<R, PolicyError> {
        let Lease {
            loaded, mut inst, ..
        } = lease;
        let reusable = inst.store.data_mut().drain_stdio();
        let keep = |inst: Instance| {
            if reusable {
                if let Ok(mut idle) = loaded.idle.lock() {
                    if idle.len() < self.limits.max_idle {
                        idle.push(inst);
                    }
                }
            }
        };
        match result {
            Ok(v) => {
                keep(inst);
                Ok(v)
            }
            Err(CallError::Plugin(msg)) => {
                keep(inst);
                Err(self.err(hook, Failure::Reported(msg)))
            }
            Err(CallError::Malformed(msg)) => {
                Metrics::inc(&self.metrics.plugin_malformed);
                tracing::warn!(tenant = %self.tenant, hook, error = %msg, "plugin returned malformed data; instance discarded");
                Err(self.err(hook, Failure::Malformed(msg)))
            }
            Err(CallError::Trap(msg)) => {
                Metrics::inc(&self.metrics.plugin_traps);
                tracing::warn!(tenant = %self.tenant, hook, error = %msg, "plugin call failed; instance discarded");
                Err(self.err(hook, Failure::Trap(msg)))
            }
            Err(CallError::Deadline) => {
                Metrics::inc(&self.metrics.plugin_traps);
                tracing::warn!(tenant = %self.tenant, hook, "plugin call exceeded its deadline; instance discarded");
                Err(self.err(hook, Failure::Deadline))
            }
        }
    }

    fn reload(&self) -> Result<String, String> {
        let rt = runtime::runtime()?;
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

/// A clear description of why a call failed.
fn describe(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => "exceeded its deadline".into(),
        Some(Trap::UnreachableCodeReached) => {
            "trapped: unreachable code reached (a panic in the plugin?)".into()
        }
        Some(t) => format!("trapped: {t}"),
        None => {
            let s = format!("{e:#}");
            if s.contains("growing memory") || s.contains("memory") && s.contains("limit") {
                format!("exceeded its memory limit ({s})")
            } else {
                s
            }
        }
    }
}

fn trap(e: wasmtime::Error) -> CallError {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::Deadline,
        _ => CallError::Trap(describe(&e)),
    }
}

/// Map a hook's raw result through a checked conversion.
fn checked<W, R>(
    raw: wasmtime::Result<Result<W, String>>,
    conv: impl FnOnce(W) -> Result<R, String>,
) -> Result<R, CallError> {
    match raw {
        Err(e) => Err(trap(e)),
        Ok(Err(msg)) => Err(CallError::Plugin(msg)),
        Ok(Ok(w)) => conv(w).map_err(CallError::Malformed),
    }
}

impl Policy for WasmPolicy {
    fn on_handshake<'a>(
        &'a self,
        req: &'a Arc<HandshakeRequest>,
        _presence: &'a dyn Presence,
    ) -> BoxFuture<'a, Result<HandshakeDecision, PolicyError>> {
        const HOOK: &str = "on-handshake";
        Box::pin(async move {
            let mut lease = self.lease(HOOK).await?;
            let raw = lease.call_on_handshake(req);
            self.inner
                .finish(HOOK, lease, checked(raw, convert::decision))
        })
    }

    fn on_event<'a>(
        &'a self,
        conn: &'a ConnInfo,
        event: &'a ClientEvent,
        _presence: &'a dyn Presence,
    ) -> BoxFuture<'a, Result<Vec<Action>, PolicyError>> {
        const HOOK: &str = "on-event";
        if !self.inner.implements(Hooks::ON_EVENT) {
            return Box::pin(std::future::ready(Ok(Vec::new())));
        }
        Box::pin(async move {
            let (c, e) = (convert::ConnArgs::new(conn), convert::EventArgs::new(event));
            let mut lease = self.lease(HOOK).await?;
            let (p, s, _) = lease.parts();
            let raw = p.call_on_event(s, c.wit(), e.wit());
            self.inner
                .finish(HOOK, lease, checked(raw, convert::actions))
        })
    }

    fn on_ingress<'a>(
        &'a self,
        req: &'a IngressRequest,
        _presence: &'a dyn Presence,
    ) -> BoxFuture<'a, Result<IngressOutcome, PolicyError>> {
        const HOOK: &str = "on-ingress";
        if !self.inner.implements(Hooks::ON_INGRESS) {
            let not_found =
                IngressOutcome::json(404, &serde_json::json!({"error": "not found"}), Vec::new());
            return Box::pin(std::future::ready(Ok(not_found)));
        }
        Box::pin(async move {
            let mut lease = self.lease(HOOK).await?;
            let (p, s, loaded) = lease.parts();
            let args = convert::IngressArgs::new(req, &loaded.headers);
            let raw = p.call_on_ingress(s, args.wit());
            self.inner
                .finish(HOOK, lease, checked(raw, convert::outcome))
        })
    }

    fn on_disconnect<'a>(
        &'a self,
        conn: &'a ConnInfo,
        info: &'a DisconnectInfo,
        _presence: &'a dyn Presence,
    ) -> BoxFuture<'a, Result<Vec<Action>, PolicyError>> {
        const HOOK: &str = "on-disconnect";
        if !self.inner.implements(Hooks::ON_DISCONNECT) {
            return Box::pin(std::future::ready(Ok(Vec::new())));
        }
        Box::pin(async move {
            let c = convert::ConnArgs::new(conn);
            let mut lease = self.lease(HOOK).await?;
            let (p, s, _) = lease.parts();
            let raw = p.call_on_disconnect(s, c.wit(), convert::disconnect_info(info));
            self.inner
                .finish(HOOK, lease, checked(raw, convert::actions))
        })
    }

    fn reload(&self) -> Option<Result<String, String>> {
        let _one_at_a_time = self.inner.reloading.lock();
        Some(self.inner.reload())
    }

    fn reload_if_changed(&self) -> Option<Result<String, String>> {
        let _one_at_a_time = self.inner.reloading.lock();
        let now = stamp(&self.inner.path)?;
        if Some(now) == self.inner.current().modified {
            return None;
        }
        {
            let mut attempted = self.inner.attempted.lock().ok()?;
            if *attempted == Some(now) {
                return None;
            }
            *attempted = Some(now);
        }
        Some(self.inner.reload())
    }
}
