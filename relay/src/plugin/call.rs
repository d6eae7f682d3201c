//! One hook call: lease an instance from the tenant's pool, call it under its deadline,
//! and finish — keep the instance or drop it, and say why a failed call failed.

use std::sync::Arc;

use wasmtime::component::Resource;
use wasmtime::{Store, Trap};

use super::bindings::Plugin;
use super::host::{CurrentHandshake, HostState};
use super::policy::{Inner, Instance, Loaded};
use super::runtime;
use crate::metrics::Metrics;
use crate::policy::{Failure, HandshakeRequest, PolicyError};

pub(super) enum CallError {
    /// The instance trapped or ran out of memory.
    Trap(String),
    /// The call ran past its deadline.
    Deadline,
    /// The plugin returned an error value.
    Plugin(String),
    /// The plugin returned data relay cannot use.
    Malformed(String),
}

/// An instance taken from the pool for one call (and the call's permit): the caller
/// calls the hook on its parts, then hands the result to [`Inner::finish`].
pub(super) struct Lease<'p> {
    _permit: Option<tokio::sync::SemaphorePermit<'p>>,
    loaded: Arc<Loaded>,
    inst: Instance,
}

impl Lease<'_> {
    pub(super) fn parts(&mut self) -> (&Plugin, &mut Store<HostState>, &Loaded) {
        (&self.inst.plugin, &mut self.inst.store, &self.loaded)
    }

    /// Call `on-handshake` with `req`'s query; the plugin reads the rest through its
    /// handle while the call runs (the store holds `req` for exactly that long).
    pub(super) fn call_on_handshake(
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

impl Inner {
    /// Take an idle instance (or make one) and start its call's deadline.
    pub(super) fn lease<'p>(
        &self,
        hook: &'static str,
        permit: Option<tokio::sync::SemaphorePermit<'p>>,
    ) -> Result<Lease<'p>, PolicyError> {
        let rt = runtime::runtime().map_err(|e| self.err(hook, Failure::Unavailable(e)))?;
        let loaded = self.current();
        let taken = loaded.idle.lock().ok().and_then(|mut v| v.pop());
        let mut inst = match taken {
            Some(i) => i,
            // A fresh instance runs `init` (up to INIT_DEADLINE): off the worker.
            None => {
                super::policy::block_off_worker(|| self.instantiate(rt, &loaded.pre))
                    .map_err(|e| {
                        Metrics::inc(&self.metrics.plugin_traps);
                        self.err(hook, Failure::Trap(e.to_string()))
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
    pub(super) fn finish<R>(
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
        match &result {
            Ok(_) | Err(CallError::Plugin(_)) => self.breaker.success(),
            Err(_) => {
                if let Some(open) = self.breaker.failure() {
                    Metrics::inc(&self.metrics.plugin_breaker_trips);
                    tracing::warn!(tenant = %self.tenant, hook, open_ms = open.as_millis() as u64, "plugin keeps failing: circuit breaker open, calls refused meanwhile");
                }
            }
        }
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
}

/// A clear description of why a call failed.
pub(super) fn describe(e: &wasmtime::Error) -> String {
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
pub(super) fn checked<W, R>(
    raw: wasmtime::Result<Result<W, String>>,
    conv: impl FnOnce(W) -> Result<R, String>,
) -> Result<R, CallError> {
    match raw {
        Err(e) => Err(trap(e)),
        Ok(Err(msg)) => Err(CallError::Plugin(msg)),
        Ok(Ok(w)) => conv(w).map_err(CallError::Malformed),
    }
}
