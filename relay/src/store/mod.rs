//! Storage: the tenant-scoped key-value store plugins use, behind [`KvStore`]
//! (in memory, made durable by a write-behind log: [`kv`]), and offline messages
//! behind [`OfflineStore`] and room history behind [`HistoryStore`], both on
//! [`sled`](self::sled). [`commit`]
//! makes message writes durable in groups.

pub mod cell;
pub mod commit;
mod error;
pub mod kv;
pub mod redis;
pub mod redis_kv;
pub mod sled;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::StoreError;
pub use kv::{KvError, TenantKv};

/// Wall-clock milliseconds since the Unix epoch (stored expiry times outlive the process).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

use crate::protocol::Message;

/// Whose offline messages: a user's (delivered when one of their connections is next
/// identified) or a room's (delivered to the room when someone next joins it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mailbox {
    /// A user id.
    User(String),
    /// A room name.
    Room(String),
}

/// An offline message as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// Its id: unique in the store, increasing in the order messages were stored.
    pub id: u64,
    /// When it was stored (milliseconds since the Unix epoch).
    pub stored_ms: u64,
    /// The message.
    pub message: Message,
}

/// What storing an offline message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// The new message's id.
    pub id: u64,
    /// Older messages dropped to respect the mailbox cap.
    pub dropped: usize,
}

/// Offline messages per tenant and mailbox. Asynchronous, so that a shared backend
/// (Redis, for several nodes) can serve the same calls; the sled store answers at once.
/// Writes are not durable until [`flush`] (see [`commit::Committer`], which groups
/// flushes).
///
/// [`flush`]: OfflineStore::flush
#[async_trait::async_trait]
pub trait OfflineStore: Send + Sync + 'static {
    /// Append `msg` to a mailbox, dropping the oldest beyond `max` messages.
    async fn push(
        &self,
        tenant: &str,
        mailbox: &Mailbox,
        msg: &Message,
        max: usize,
    ) -> Result<Pushed, StoreError>;
    /// The mailbox's messages in order; those older than `ttl` are removed instead.
    /// Returns the live messages and how many expired.
    async fn pending(
        &self,
        tenant: &str,
        mailbox: &Mailbox,
        ttl: Duration,
    ) -> Result<(Vec<StoredMessage>, usize), StoreError>;
    /// Whether the tenant has any offline message at all (lets joins skip the lookup).
    async fn has_offline(&self, tenant: &str) -> Result<bool, StoreError>;
    /// Remove delivered messages.
    async fn remove(&self, tenant: &str, mailbox: &Mailbox, ids: &[u64]) -> Result<(), StoreError>;
    /// Make every write so far durable.
    async fn flush(&self) -> Result<(), StoreError>;
}

/// Room history, as the in-memory broker keeps it (`broker::memory`). Synchronous on
/// purpose: the broker appends under the room's lock so that offsets and delivery agree,
/// and a lock held across an `.await` would stall every task waiting on it. A broker for
/// several nodes keeps history itself (Redis streams) and does not use this trait.
pub trait HistoryStore: Send + Sync + 'static {
    /// The tenant's history epoch: created once, kept with the history. A client's
    /// offset from another epoch cannot be recovered from.
    fn history_epoch(&self, tenant: &str) -> Result<String, StoreError>;
    /// A new offset, greater than every one handed out before (all rooms, all tenants).
    fn history_offset(&self) -> Result<u64, StoreError>;
    /// Append `msg` at `offset` to `room`'s history, trimming it to `max` entries.
    fn history_append(
        &self,
        tenant: &str,
        room: &str,
        offset: u64,
        msg: &Message,
        max: usize,
    ) -> Result<(), StoreError>;
    /// `room`'s entries after offset `after`, in order, skipping those older than `ttl`;
    /// `None` when some entry after `after` has already been trimmed or expired (the
    /// missed range cannot be given exactly).
    fn history_since(
        &self,
        tenant: &str,
        room: &str,
        after: u64,
        ttl: Duration,
    ) -> Result<Option<Vec<(u64, Message)>>, StoreError>;
}

/// A tenant's key-value store, as plugins see it through `kv-*` host calls.
///
/// Synchronous, and answered from memory: hook calls are synchronous calls into wasm
/// under a CPU deadline, so a host import cannot wait for a network round trip. The
/// embedded store is this memory, logged to sled behind the calls ([`kv::KvLog`]). A
/// store shared by several nodes must keep this shape: a local copy that it keeps
/// current, with `set_if_absent` decided where all nodes agree (see docs/architecture.md).
pub trait KvStore: Send + Sync + 'static {
    /// The value of `key`, unless absent or expired.
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Set `key`, optionally expiring after `ttl`.
    fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), KvError>;
    /// Set `key` only if absent or expired; `Ok(true)` if it was set.
    fn set_if_absent(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError>;
    /// Delete `key`; `true` if it existed (and had not expired).
    fn delete(&self, key: &str) -> bool;
    /// Add `delta` to the decimal integer at `key` (absent or expired: 0) and return the
    /// sum, atomically. With `ttl` the key expires that long from now; without, an
    /// existing expiry is kept.
    fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError>;
    /// Set `key` to `new` (delete it when `None`) only if its live value is `expected`
    /// (`None`: absent or expired); `Ok(true)` if it was swapped.
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError>;
    /// Drop expired entries (called periodically).
    fn purge_expired(&self) {}
}
