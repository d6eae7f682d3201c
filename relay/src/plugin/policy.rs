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
use std::time::Duration;

use wasmtime::Store;

use super::bindings::relay::plugin::types::Hooks;
use super::bindings::{Plugin, PluginPre};
use super::call::{checked, Lease};
use super::convert;
use super::host::HostState;
use super::load::{stamp, FileStamp, LoadError};
use super::runtime;
use crate::hub::Presence;
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
    /// How long a call waits for a free instance before it fails. Default 1 s.
    pub wait: Duration,
    /// Failures in a row (trap, deadline, malformed) that open the breaker; 0 = never.
    /// Default 20.
    pub breaker_failures: u32,
    /// How long the breaker first stays open (doubling while failures go on, up to
    /// 30 s). Default 1 s.
    pub breaker_open: Duration,
    /// While the breaker is open, event and disconnect hooks are skipped (as if they
    /// asked for nothing) instead of failing. Handshakes and ingress always fail.
    pub fail_open: bool,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            deadline: Duration::from_millis(5),
            memory_bytes: 32 << 20,
            max_idle: 4,
            wait: Duration::from_secs(1),
            breaker_failures: 20,
            breaker_open: Duration::from_secs(1),
            fail_open: false,
        }
    }
}

/// Deadline for `init` (it may parse settings or warm caches).
pub(super) const INIT_DEADLINE: Duration = Duration::from_secs(1);

pub(super) struct Instance {
    pub(super) store: Store<HostState>,
    pub(super) plugin: Plugin,
}

/// One loaded version of a plugin.
pub(super) struct Loaded {
    pub(super) pre: PluginPre<HostState>,
    pub(super) hash: String,
    /// The optional hooks it implements (from its first `init`): relay calls no others.
    pub(super) hooks: Hooks,
    /// The tenant's header filter narrowed to the headers it says it reads.
    pub(super) headers: convert::HeaderFilter,
    pub(super) idle: Mutex<Vec<Instance>>,
    pub(super) modified: Option<FileStamp>,
}
/// What a plugin is loaded from and with: everything but the loaded version.
pub(super) struct Spec {
    pub(super) tenant: Arc<str>,
    pub(super) path: PathBuf,
    pub(super) cache_dir: PathBuf,
    pub(super) settings: String,
    pub(super) limits: PluginLimits,
    pub(super) kv: Arc<dyn KvStore>,
    pub(super) presence: Arc<dyn Presence>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) log: Arc<crate::msglog::LogTarget>,
    pub(super) headers: convert::HeaderFilter,
}

pub(super) struct Inner {
    pub(super) spec: Spec,
    pub(super) current: RwLock<Arc<Loaded>>,
    /// Modification time of the last file a reload was attempted from (so a broken
    /// file is tried once, not on every watch tick).
    pub(super) attempted: Mutex<Option<FileStamp>>,
    /// Held by the reload in progress: reloads run one at a time, so an older file's
    /// slow reload can never replace a newer one.
    pub(super) reloading: Mutex<()>,
    /// One permit per instance: calls beyond `plugin_instances` wait for one instead of
    /// creating (and throwing away) more instances.
    pub(super) permits: tokio::sync::Semaphore,
    /// Stops calling a plugin that keeps failing.
    pub(super) breaker: super::breaker::Breaker,
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
    /// The tenant's presence (the hub on one node; cluster-wide with `[cluster]`).
    pub presence: Arc<dyn Presence>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The tenant's message log (`log-read`).
    pub log: Arc<crate::msglog::LogTarget>,
    /// Which request headers hooks see.
    pub headers: convert::HeaderFilter,
}

impl WasmPolicy {
    /// Compile (or load from cache), check imports, instantiate once and run `init`.
    /// Blocking: compiling takes a while the first time.
    pub fn load(env: PluginEnv) -> Result<Self, LoadError> {
        let settings = serde_json::to_string(&env.settings).map_err(LoadError::Settings)?;
        let rt = runtime::runtime().map_err(LoadError::Runtime)?;
        let spec = Spec {
            tenant: env.tenant,
            path: env.path,
            cache_dir: env.cache_dir,
            settings,
            limits: env.limits,
            kv: env.kv,
            presence: env.presence,
            metrics: env.metrics,
            log: env.log,
            headers: env.headers,
        };
        let loaded = spec.prepare(rt)?;
        let max_idle = spec.limits.max_idle;
        let breaker =
            super::breaker::Breaker::new(spec.limits.breaker_failures, spec.limits.breaker_open);
        Ok(WasmPolicy {
            inner: Arc::new(Inner {
                spec,
                current: RwLock::new(Arc::new(loaded)),
                attempted: Mutex::new(None),
                reloading: Mutex::new(()),
                permits: tokio::sync::Semaphore::new(max_idle.max(1)),
                breaker,
            }),
        })
    }

    /// Run the handshake hook to completion on the calling thread, outside any async
    /// runtime (no instance permit is taken). For benchmarks (feature `bench`).
    #[cfg(feature = "bench")]
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
    /// For measuring instantiation cost (feature `bench`).
    #[cfg(feature = "bench")]
    pub fn instantiate_many(&self, n: usize) -> Result<Duration, LoadError> {
        let rt = runtime::runtime().map_err(LoadError::Runtime)?;
        let loaded = self.inner.current();
        let start = std::time::Instant::now();
        for _ in 0..n {
            let made = self.inner.instantiate(rt, &loaded.pre);
            drop(made.map_err(|why| LoadError::Init {
                path: self.inner.path.display().to_string(),
                why,
            })?);
        }
        Ok(start.elapsed())
    }

    /// SHA-256 of the plugin file currently loaded.
    pub fn hash(&self) -> String {
        self.inner.current().hash.clone()
    }

    /// Whether the loaded version says (in `init`) that it implements `hook`.
    pub fn declares(&self, hook: Hooks) -> bool {
        self.inner.current().hooks.contains(hook)
    }

    /// The request headers hooks are shown (`None`: every header).
    pub fn header_names(&self) -> Option<Vec<String>> {
        self.inner.current().headers.names()
    }

    /// An instance for one call, once one of the tenant's `plugin_instances` is free
    /// (within `plugin_wait_ms`), unless the tenant's breaker is open.
    async fn lease(&self, hook: &'static str) -> Result<Lease<'_>, PolicyError> {
        let inner = &self.inner;
        if let Err(left) = inner.breaker.admit() {
            Metrics::inc(&inner.metrics.plugin_breaker_refused);
            let ms = left.as_millis() as u64;
            return Err(inner.err(hook, Failure::CircuitOpen(ms)));
        }
        let permit = match tokio::time::timeout(inner.limits.wait, inner.permits.acquire()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => {
                let closed = Failure::Unavailable("the plugin pool is closed".into());
                return Err(inner.err(hook, closed));
            }
            Err(_) => {
                Metrics::inc(&inner.metrics.plugin_wait_timeouts);
                let why = format!(
                    "no plugin instance was free within {} ms",
                    inner.limits.wait.as_millis()
                );
                return Err(inner.err(hook, Failure::Unavailable(why)));
            }
        };
        inner.lease(hook, Some(permit))
    }

    /// Run a hook call: inline when the tenant's deadline is short, otherwise off the
    /// runtime's worker thread, so that a slow plugin cannot hold up the other tasks
    /// queued on that worker (timers, other tenants' connections).
    fn off_worker<R>(&self, call: impl FnOnce() -> R) -> R {
        if self.inner.limits.deadline > INLINE_MAX {
            block_off_worker(call)
        } else {
            call()
        }
    }

    /// Whether a refused event or disconnect hook counts as "no actions" (the tenant
    /// fails open and its breaker is open).
    fn skips(&self, e: &PolicyError) -> bool {
        self.inner.limits.fail_open && matches!(e.failure, Failure::CircuitOpen(_))
    }
}
impl Spec {
    pub(super) fn err(&self, hook: &'static str, failure: Failure) -> PolicyError {
        PolicyError::new(self.tenant.clone(), hook, failure)
    }
}

impl Inner {
    pub(super) fn current(&self) -> Arc<Loaded> {
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
}

impl Policy for WasmPolicy {
    fn shows_header(&self, name: &str) -> bool {
        self.inner.current().headers.passes(name, true)
    }

    fn on_handshake<'a>(
        &'a self,
        req: &'a Arc<HandshakeRequest>,
        _presence: &'a dyn Presence,
    ) -> BoxFuture<'a, Result<HandshakeDecision, PolicyError>> {
        const HOOK: &str = "on-handshake";
        Box::pin(async move {
            let mut lease = self.lease(HOOK).await?;
            let raw = self.off_worker(|| lease.call_on_handshake(req));
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
            let mut lease = match self.lease(HOOK).await {
                Ok(l) => l,
                Err(e) if self.skips(&e) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let (p, s, _) = lease.parts();
            let raw = self.off_worker(|| p.call_on_event(s, c.wit(), e.wit()));
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
            let raw = self.off_worker(|| p.call_on_ingress(s, args.wit()));
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
            let mut lease = match self.lease(HOOK).await {
                Ok(l) => l,
                Err(e) if self.skips(&e) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let (p, s, _) = lease.parts();
            let raw = self
                .off_worker(|| p.call_on_disconnect(s, c.wit(), convert::disconnect_info(info)));
            self.inner
                .finish(HOOK, lease, checked(raw, convert::actions))
        })
    }

    fn reload(&self) -> Option<Result<String, String>> {
        let _one_at_a_time = self.inner.reloading.lock();
        Some(self.inner.reload().map_err(|e| e.to_string()))
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
        Some(self.inner.reload().map_err(|e| e.to_string()))
    }
}

/// Deadlines up to this run their calls inline on the runtime worker: such a call holds
/// it at most that long in CPU time. Longer ones move off it ([`block_off_worker`]).
const INLINE_MAX: Duration = Duration::from_millis(10);

/// Run `f` where it cannot hold up the runtime: on a multi-threaded runtime's worker,
/// the worker's other tasks are handed to another thread meanwhile
/// (`tokio::task::block_in_place`); elsewhere (a current-thread runtime, no runtime)
/// `f` runs as it is.
pub(super) fn block_off_worker<R>(f: impl FnOnce() -> R) -> R {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testkit(dir: &std::path::Path, limits: PluginLimits, metrics: Arc<Metrics>) -> WasmPolicy {
        WasmPolicy::load(PluginEnv {
            tenant: Arc::from("t"),
            path: crate::plugin::bundled("testkit"),
            cache_dir: dir.join("cache"),
            settings: toml::Table::new(),
            limits,
            kv: Arc::new(crate::store::TenantKv::in_memory(1 << 20)),
            presence: Arc::new(crate::hub::Hub::default()),
            metrics,
            log: Arc::new(crate::msglog::LogTarget {
                dir: dir.join("log"),
                max_bytes: 1 << 20,
                keep: 1,
            }),
            headers: Default::default(),
        })
        .unwrap()
    }

    /// A plugin looping for its whole (long) deadline does not hold up the other tasks
    /// of the worker it was called on: with one worker thread, a 20 ms timer queued
    /// behind the call still fires in time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_long_call_runs_off_the_worker() {
        let dir = tempfile::tempdir().unwrap();
        let limits = PluginLimits {
            deadline: Duration::from_millis(1000),
            ..PluginLimits::default()
        };
        let policy = Arc::new(testkit(dir.path(), limits, Arc::default()));
        let conn = ConnInfo {
            id: "c1".into(),
            user: None,
            data: serde_json::Value::Null,
            authenticated: true,
            remote: ([127, 0, 0, 1], 1).into(),
        };
        let event = |name: &str| ClientEvent {
            name: Some(name.into()),
            data: Some(serde_json::json!({ "event": name })),
            text: serde_json::json!({ "event": name }).to_string(),
            ack: None,
            namespace: None,
        };
        let hub = crate::hub::Hub::default();
        // An instance made and idle: the next call runs its hook only.
        policy.on_event(&conn, &event("echo"), &hub).await.unwrap();
        // On the worker: start the looping call (it runs next, on this same worker), then
        // time a 20 ms timer.
        let probe = {
            let (policy, event) = (policy.clone(), event("loop"));
            tokio::spawn(async move {
                let looping = tokio::spawn(async move {
                    let hub = crate::hub::Hub::default();
                    policy.on_event(&conn, &event, &hub).await
                });
                let started = std::time::Instant::now();
                tokio::time::sleep(Duration::from_millis(20)).await;
                (started.elapsed(), looping)
            })
        };
        let (waited, looping) = probe.await.unwrap();
        let result = looping.await.unwrap();
        assert!(
            matches!(&result, Err(e) if matches!(e.failure, Failure::Deadline)),
            "{result:?}"
        );
        assert!(
            waited < Duration::from_millis(500),
            "a 20 ms timer waited {waited:?} behind the plugin call"
        );
    }

    #[tokio::test]
    async fn a_call_finding_no_free_instance_gives_up_after_plugin_wait() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let limits = PluginLimits {
            max_idle: 1,
            wait: Duration::from_millis(50),
            ..PluginLimits::default()
        };
        let policy = testkit(dir.path(), limits, metrics.clone());
        // The only instance is busy (its permit held, as a call in progress holds it).
        let busy = policy.inner.permits.acquire().await.unwrap();
        let started = std::time::Instant::now();
        let e = policy.lease("on-event").await.err().unwrap();
        assert!(matches!(e.failure, Failure::Unavailable(_)), "{e}");
        assert!(e.retryable());
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(
            metrics
                .plugin_wait_timeouts
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        drop(busy);
        assert!(policy.lease("on-event").await.is_ok(), "free again");
    }
}
