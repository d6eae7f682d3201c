//! Error types, each recording whose fault it is.

use thiserror::Error;

/// Who caused an error: decides the log level and whether a retry can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client or backend sent something wrong; retrying the same input fails again.
    Client,
    /// The tenant's policy (plugin) failed.
    Policy,
    /// A bug or resource problem in relay itself.
    Internal,
}

/// Errors of relay's startup and run loop.
#[derive(Debug, Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A listener could not bind.
    #[error("listener {name:?} cannot bind {addr}: {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address it tried.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS material could not be loaded or generated.
    #[error("tls: {0}")]
    Tls(String),
    /// The embedded store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Any other I/O failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A policy hook failed; the request it served fails, nothing else does.
#[derive(Debug, Error, Clone)]
#[error("policy {tenant}: {message}")]
pub struct PolicyError {
    /// Tenant whose policy failed.
    pub tenant: String,
    /// What happened (trap, timeout, malformed result, ...).
    pub message: String,
}

impl PolicyError {
    /// The fault class of a policy error.
    pub fn fault(&self) -> Fault {
        Fault::Policy
    }
}
