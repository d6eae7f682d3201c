//! Whose fault an error is: decides how loudly it is logged and whether retrying can help.
//! A leaf: every error type of the library says its [`Fault`] through this one enum.

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client or backend sent something wrong; retrying the same input fails again.
    Client,
    /// The tenant's policy (plugin) failed: a trap, its deadline, malformed output, or an
    /// error it reported.
    Plugin,
    /// A store (sled, later Redis) failed or is shutting down.
    Store,
    /// The broker (delivery between nodes) failed.
    Broker,
    /// The operator's configuration or files (certificates, plugins) are wrong.
    Operator,
    /// A bug or resource problem in relay itself.
    Internal,
}

impl Fault {
    /// The log level such a failure deserves: a client's mistake is routine (debug), a
    /// plugin's is the tenant's to fix (warn), the rest are ours or the operator's (error).
    pub fn level(self) -> tracing::Level {
        match self {
            Fault::Client => tracing::Level::DEBUG,
            Fault::Plugin => tracing::Level::WARN,
            Fault::Store | Fault::Broker | Fault::Operator | Fault::Internal => {
                tracing::Level::ERROR
            }
        }
    }
}
