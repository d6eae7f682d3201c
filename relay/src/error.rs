//! Error types, each recording whose fault it is.

use thiserror::Error;

/// Errors of relay's startup and run loop.
#[derive(Debug, Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigErrors),
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
    Tls(#[from] crate::transport::tls::TlsError),
    /// A listener's bind address is not `IP:port`.
    #[error("listener {name:?}: bad bind address {addr:?}")]
    BindAddress {
        /// Listener name.
        name: String,
        /// What the config said.
        addr: String,
    },
    /// The webhook client could not be set up.
    #[error(transparent)]
    Webhooks(#[from] crate::webhook::WebhookError),
    /// The embedded store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The cluster link could not be set up (`[cluster]`).
    #[error("cluster: {0}")]
    Cluster(String),
    /// Any other I/O failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
