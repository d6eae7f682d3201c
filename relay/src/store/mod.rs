//! Storage: the tenant-scoped key-value store plugins use, behind [`KvStore`]
//! (in memory, made durable by a write-behind log: [`kv`]), and offline messages
//! and room history behind [`MessageStore`], on [`sled`](self::sled). [`commit`]
//! makes message writes durable in groups.

pub mod commit;
pub mod kv;
pub mod sled;

use std::time::Duration;

use serde::{Deserialize, Serialize};

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

/// Offline messages per tenant and mailbox. Writes are not durable until [`flush`]
/// (see [`commit::Committer`], which groups flushes).
///
/// [`flush`]: MessageStore::flush
pub trait MessageStore: Send + Sync + 'static {
    /// Append `msg` to a mailbox, dropping the oldest beyond `max` messages.
    fn push(
        &self,
        tenant: &str,
        mailbox: &Mailbox,
        msg: &Message,
        max: usize,
    ) -> Result<Pushed, String>;
    /// The mailbox's messages in order; those older than `ttl` are removed instead.
    /// Returns the live messages and how many expired.
    fn pending(
        &self,
        tenant: &str,
        mailbox: &Mailbox,
        ttl: Duration,
    ) -> Result<(Vec<StoredMessage>, usize), String>;
    /// Whether the tenant has any offline message at all (lets joins skip the lookup).
    fn has_offline(&self, tenant: &str) -> Result<bool, String>;
    /// Remove delivered messages.
    fn remove(&self, tenant: &str, mailbox: &Mailbox, ids: &[u64]) -> Result<(), String>;
    /// Make every write so far durable (blocking).
    fn flush(&self) -> Result<(), String>;

    /// The tenant's history epoch: created once, kept with the history. A client's
    /// offset from another epoch cannot be recovered from.
    fn history_epoch(&self, tenant: &str) -> Result<String, String>;
    /// A new offset, greater than every one handed out before (all rooms, all tenants).
    fn history_offset(&self) -> Result<u64, String>;
    /// Append `msg` at `offset` to `room`'s history, trimming it to `max` entries.
    fn history_append(
        &self,
        tenant: &str,
        room: &str,
        offset: u64,
        msg: &Message,
        max: usize,
    ) -> Result<(), String>;
    /// `room`'s entries after offset `after`, in order, skipping those older than `ttl`;
    /// `None` when some entry after `after` has already been trimmed or expired (the
    /// missed range cannot be given exactly).
    fn history_since(
        &self,
        tenant: &str,
        room: &str,
        after: u64,
        ttl: Duration,
    ) -> Result<Option<Vec<(u64, Message)>>, String>;
}

/// A tenant's key-value store, as plugins see it through `kv-*` host calls.
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
    /// Drop expired entries (called periodically).
    fn purge_expired(&self) {}
}
