//! What can go wrong in a store, and whether trying again can help.

use crate::fault::Fault;

/// Errors opening or using a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening the database failed (I/O, corruption, locked by another relay).
    #[error("store at {path}: {source}")]
    Open {
        /// Database directory.
        path: String,
        /// The sled error.
        source: sled::Error,
    },
    /// The database was written by a newer relay.
    #[error("store at {path} has schema version {found}, newer than this relay's {supported}; refusing to touch it")]
    TooNew {
        /// Database directory.
        path: String,
        /// Version found.
        found: u64,
        /// Version this relay writes.
        supported: u64,
    },
    /// The schema marker is unreadable.
    #[error("store at {path}: unreadable schema version; the store may be corrupt")]
    Corrupt {
        /// Database directory.
        path: String,
    },
    /// A read or write failed (I/O, corruption).
    #[error("store {op}: {source}")]
    Backend {
        /// What was being done.
        op: &'static str,
        /// The backend's error.
        source: sled::Error,
    },
    /// A message could not be encoded for storage.
    #[error("store {op}: cannot encode the message: {source}")]
    Encode {
        /// What was being done.
        op: &'static str,
        /// The encoder's error.
        source: serde_json::Error,
    },
    /// Something the store keeps is missing or unreadable.
    #[error("store {op}: {what}")]
    Damaged {
        /// What was being done.
        op: &'static str,
        /// What is wrong.
        what: String,
    },
    /// The cluster's Redis failed or did not answer (`[cluster]`).
    #[error("store {op}: {source}")]
    Redis {
        /// What was being done.
        op: &'static str,
        /// The cluster link's error.
        source: crate::cluster::ClusterError,
    },
    /// The embedded database is being reopened after an I/O error (a full disk, say);
    /// calls fail until it is back (see `store::cell`).
    #[error("the store is reopening after an I/O error; try again shortly")]
    Reopening,
    /// The store is shutting down; nothing more is accepted.
    #[error("the store is shutting down")]
    ShuttingDown,
}

impl StoreError {
    /// Whose fault: always the store's (the data or the disk), never the caller's input.
    pub fn fault(&self) -> Fault {
        Fault::Store
    }

    /// Whether the same call may succeed later (I/O errors and shutdown may clear; a newer
    /// schema, damage or an unencodable message will not).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Open { .. }
                | StoreError::Backend { .. }
                | StoreError::Redis { .. }
                | StoreError::Reopening
                | StoreError::ShuttingDown
        )
    }

    /// A backend failure during `op`.
    pub(crate) fn backend(op: &'static str) -> impl Fn(sled::Error) -> StoreError + Copy {
        move |source| StoreError::Backend { op, source }
    }
}
