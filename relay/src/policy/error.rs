//! Why a policy hook failed: the request it served fails, nothing else does.

use std::fmt;
use std::sync::Arc;

use crate::fault::Fault;

/// What went wrong in a hook call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The plugin trapped: a panic, unreachable code, its memory limit.
    Trap(String),
    /// The call ran past its deadline and was interrupted.
    Deadline,
    /// The plugin returned data relay cannot use.
    Malformed(String),
    /// The plugin returned an error value of its own.
    Reported(String),
    /// The plugin could not be run at all (its pool is closed, an instance could not be
    /// made, none was free in time).
    Unavailable(String),
    /// Not called: the plugin kept failing and its circuit breaker is open for this many
    /// milliseconds more.
    CircuitOpen(u64),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Trap(m) => write!(f, "{m}"),
            Failure::Deadline => write!(f, "exceeded its deadline"),
            Failure::Malformed(m) => write!(f, "returned malformed data: {m}"),
            Failure::Reported(m) => write!(f, "returned an error: {m}"),
            Failure::Unavailable(m) => write!(f, "could not run: {m}"),
            Failure::CircuitOpen(ms) => write!(
                f,
                "not called: it keeps failing, its circuit breaker is open for {ms} ms more"
            ),
        }
    }
}

/// A policy hook failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("policy {tenant}: {hook} {failure}")]
pub struct PolicyError {
    /// Tenant whose policy failed.
    pub tenant: Arc<str>,
    /// The hook (`on-handshake`, `on-event`, `on-ingress`, `on-disconnect`).
    pub hook: &'static str,
    /// What happened.
    pub failure: Failure,
}

impl PolicyError {
    /// A failure of `tenant`'s `hook`.
    pub fn new(tenant: Arc<str>, hook: &'static str, failure: Failure) -> Self {
        PolicyError {
            tenant,
            hook,
            failure,
        }
    }

    /// Whose fault: the plugin's, unless relay could not run it at all.
    pub fn fault(&self) -> Fault {
        match self.failure {
            Failure::Unavailable(_) => Fault::Internal,
            _ => Fault::Plugin,
        }
    }

    /// Whether the same call may succeed later: a deadline missed under load or an
    /// unavailable plugin may; a trap or malformed output on the same input will not.
    pub fn retryable(&self) -> bool {
        matches!(
            self.failure,
            Failure::Deadline | Failure::Unavailable(_) | Failure::CircuitOpen(_)
        )
    }
}
