//! The embedded store on `sled`: one database per data directory, one tree
//! per purpose and tenant (`offline/<tenant>`, `history/<tenant>`, and
//! `kvlog/<tenant>` for the key-value log of [`super::kv`]), a schema version.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::cell::DbCell;
use super::{now_ms, HistoryStore, Mailbox, OfflineStore, Pushed, StoreError, StoredMessage};
use crate::protocol::Message;

/// Schema version this relay writes and reads. 2: key-value stores are logs
/// (`kvlog/<tenant>`; a version-1 `kv/<tenant>` tree is moved into its log when opened).
pub const SCHEMA_VERSION: u64 = 2;
const SCHEMA_KEY: &[u8] = b"relay:schema";

/// The relay's embedded database.
#[derive(Clone)]
pub struct SledStore {
    cell: Arc<DbCell>,
    offline: Arc<dashmap::DashMap<String, sled::Tree>>,
    history: Arc<dashmap::DashMap<String, sled::Tree>>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish()
    }
}

impl SledStore {
    /// Open (or create) the database in `dir`, checking its schema version.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let cell = DbCell::new(dir, open_db(dir)?, open_db);
        let store = SledStore {
            cell,
            offline: Default::default(),
            history: Default::default(),
        };
        let (offline, history) = (store.offline.clone(), store.history.clone());
        store.cell.on_reopen(Box::new(move |db| {
            if db.is_none() {
                offline.clear();
                history.clear();
            }
        }));
        Ok(store)
    }

    /// The tree of `tenant`'s offline messages (`offline/<tenant>`).
    fn offline_tree(&self, tenant: &str) -> Result<sled::Tree, StoreError> {
        self.tree(&self.offline, "offline", tenant)
    }

    /// The tree of `tenant`'s room history (`history/<tenant>`).
    fn history_tree(&self, tenant: &str) -> Result<sled::Tree, StoreError> {
        self.tree(&self.history, "history", tenant)
    }

    fn tree(
        &self,
        cache: &dashmap::DashMap<String, sled::Tree>,
        purpose: &str,
        tenant: &str,
    ) -> Result<sled::Tree, StoreError> {
        if let Some(t) = cache.get(tenant) {
            return Ok(t.clone());
        }
        // Cached only under the handle's lock: a reopen clears the cache (see `cell`).
        let opened = self.cell.with(|db| {
            let t = db
                .open_tree(format!("{purpose}/{tenant}"))
                .map_err(StoreError::backend("open tree"))?;
            cache.insert(tenant.to_owned(), t.clone());
            Ok(t)
        });
        self.cell.check(opened.and_then(|t| t))
    }

    /// A fresh id: unique and increasing, also across restarts.
    fn next_id(&self, op: &'static str) -> Result<u64, StoreError> {
        let id = self
            .cell
            .with(|db| db.generate_id().map_err(StoreError::backend(op)));
        self.cell.check(id.and_then(|id| id))
    }

    /// The database handle, shared with the key-value log ([`super::kv::KvLog`]).
    pub fn cell(&self) -> Arc<DbCell> {
        self.cell.clone()
    }
}

/// Open the database in `dir` and check its schema version (at start, and again when the
/// store is reopened after an I/O error).
fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    let path = dir.display().to_string();
    let err = |source| StoreError::Open {
        path: path.clone(),
        source,
    };
    let db = sled::Config::new()
        .path(dir)
        .flush_every_ms(Some(100))
        .open()
        .map_err(err)?;
    match db.get(SCHEMA_KEY).map_err(err)? {
        None => {
            db.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())
                .map_err(err)?;
            db.flush().map_err(err)?;
        }
        Some(v) => {
            let found = <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt { path: path.clone() })?;
            if found > SCHEMA_VERSION {
                return Err(StoreError::TooNew {
                    path,
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            if found < SCHEMA_VERSION {
                // Version 1 differs only in its key-value trees, which are moved as
                // each tenant's store opens (`kv::KvLog::open`).
                db.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())
                    .map_err(err)?;
            }
        }
    }
    Ok(db)
}

/// Key prefix of a mailbox: kind byte, name length (2 bytes), name; an entry's key adds
/// its id (8 bytes, big-endian, so entries sort in storing order).
fn mailbox_prefix(mb: &Mailbox) -> Vec<u8> {
    match mb {
        Mailbox::User(u) => name_prefix(b'u', u),
        Mailbox::Room(r) => name_prefix(b'r', r),
    }
}

/// `kind`, the name's length (2 bytes), the name: a key prefix no other name shares.
fn name_prefix(kind: u8, name: &str) -> Vec<u8> {
    let name = name.as_bytes();
    let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
    let mut k = Vec::with_capacity(3 + name.len() + 8);
    k.push(kind);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(&name[..usize::from(len)]);
    k
}

/// A stored entry: the time it was stored (ms, 8 bytes) then the message's JSON.
pub(crate) fn entry_value(msg: &Message) -> Result<Vec<u8>, StoreError> {
    let json = serde_json::to_vec(msg).map_err(|source| StoreError::Encode {
        op: "write",
        source,
    })?;
    let mut value = Vec::with_capacity(8 + json.len());
    value.extend_from_slice(&now_ms().to_be_bytes());
    value.extend_from_slice(&json);
    Ok(value)
}

/// The stored time and message of an entry (`None` parts when unreadable).
pub(crate) fn read_entry(v: &[u8]) -> (Option<u64>, Option<Message>) {
    let stored = v
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes);
    let msg = v.get(8..).and_then(|j| serde_json::from_slice(j).ok());
    (stored, msg)
}

/// Remove the oldest entries under `prefix` beyond `max`; returns their keys.
fn trim(tree: &sled::Tree, prefix: &[u8], max: usize) -> Result<Vec<sled::IVec>, StoreError> {
    let count = tree.scan_prefix(prefix).keys().count();
    let excess = count.saturating_sub(max.max(1));
    let mut removed = Vec::new();
    for k in tree.scan_prefix(prefix).keys().take(excess).flatten() {
        if tree
            .remove(&k)
            .map_err(StoreError::backend("trim"))?
            .is_some()
        {
            removed.push(k);
        }
    }
    Ok(removed)
}

fn entry_key(prefix: &[u8], id: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

#[async_trait::async_trait]
impl OfflineStore for SledStore {
    async fn push(
        &self,
        tenant: &str,
        mb: &Mailbox,
        msg: &Message,
        max: usize,
    ) -> Result<Pushed, StoreError> {
        let tree = self.offline_tree(tenant)?;
        let prefix = mailbox_prefix(mb);
        let id = self.next_id("push")?;
        let pushed = (|| {
            tree.insert(entry_key(&prefix, id), entry_value(msg)?)
                .map_err(StoreError::backend("push"))?;
            let dropped = trim(&tree, &prefix, max)?.len();
            Ok(Pushed { id, dropped })
        })();
        self.cell.check(pushed)
    }

    async fn pending(
        &self,
        tenant: &str,
        mb: &Mailbox,
        ttl: Duration,
    ) -> Result<(Vec<StoredMessage>, usize), StoreError> {
        let tree = self.offline_tree(tenant)?;
        self.cell.check(read_mailbox(tenant, &tree, mb, ttl))
    }

    async fn has_offline(&self, tenant: &str) -> Result<bool, StoreError> {
        Ok(!self.offline_tree(tenant)?.is_empty())
    }

    async fn remove(&self, tenant: &str, mb: &Mailbox, ids: &[u64]) -> Result<(), StoreError> {
        let tree = self.offline_tree(tenant)?;
        let prefix = mailbox_prefix(mb);
        let removed = ids.iter().try_for_each(|id| {
            tree.remove(entry_key(&prefix, *id))
                .map(|_| ())
                .map_err(StoreError::backend("remove"))
        });
        self.cell.check(removed)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // fsync: off the runtime's worker threads.
        let db = self.cell.db()?;
        let flushed = tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|_| StoreError::ShuttingDown)?
            .map(|_| ())
            .map_err(StoreError::backend("flush"));
        self.cell.check(flushed)
    }
}

/// The live messages of a mailbox, and how many expired ones it removed.
fn read_mailbox(
    tenant: &str,
    tree: &sled::Tree,
    mb: &Mailbox,
    ttl: Duration,
) -> Result<(Vec<StoredMessage>, usize), StoreError> {
    let err = StoreError::backend("read mailbox");
    let prefix = mailbox_prefix(mb);
    let oldest = now_ms().saturating_sub(ttl.as_millis() as u64);
    let mut out = Vec::new();
    let mut expired = 0;
    for entry in tree.scan_prefix(&prefix) {
        let (k, v) = entry.map_err(err)?;
        let id = key_offset(&k, prefix.len());
        let (stored_ms, message) = read_entry(&v);
        match (id, stored_ms, message) {
            (Some(id), Some(stored_ms), Some(message)) if stored_ms >= oldest => {
                out.push(StoredMessage {
                    id,
                    stored_ms,
                    message,
                })
            }
            (_, Some(_), Some(_)) => {
                expired += 1;
                tree.remove(&k).map_err(err)?;
            }
            _ => {
                tracing::error!(tenant, ?mb, "unreadable offline message: dropped");
                tree.remove(&k).map_err(err)?;
            }
        }
    }
    Ok((out, expired))
}

impl HistoryStore for SledStore {
    fn history_epoch(&self, tenant: &str) -> Result<String, StoreError> {
        let tree = self.history_tree(tenant)?;
        self.cell.check(epoch(&tree))
    }

    fn history_offset(&self) -> Result<u64, StoreError> {
        self.next_id("history offset")
    }

    fn history_append(
        &self,
        tenant: &str,
        room: &str,
        offset: u64,
        msg: &Message,
        max: usize,
    ) -> Result<(), StoreError> {
        let tree = self.history_tree(tenant)?;
        self.cell.check(append(&tree, room, offset, msg, max))
    }

    fn history_since(
        &self,
        tenant: &str,
        room: &str,
        after: u64,
        ttl: Duration,
    ) -> Result<Option<Vec<(u64, Message)>>, StoreError> {
        let tree = self.history_tree(tenant)?;
        self.cell.check(since(&tree, room, after, ttl))
    }
}

/// A tenant's history epoch, made when first asked for.
fn epoch(tree: &sled::Tree) -> Result<String, StoreError> {
    let fresh = format!("{:016x}", rand::random::<u64>());
    let _ = tree
        .compare_and_swap(EPOCH_KEY, None as Option<&[u8]>, Some(fresh.as_bytes()))
        .map_err(StoreError::backend("history epoch"))?;
    let v = tree
        .get(EPOCH_KEY)
        .map_err(StoreError::backend("history epoch"))?
        .ok_or(StoreError::Damaged {
            op: "history epoch",
            what: "the epoch vanished".into(),
        })?;
    Ok(String::from_utf8_lossy(&v).into_owned())
}

/// Append to a room's history, trimming it to `max` entries.
fn append(
    tree: &sled::Tree,
    room: &str,
    offset: u64,
    msg: &Message,
    max: usize,
) -> Result<(), StoreError> {
    let prefix = history_prefix(b'd', room);
    tree.insert(entry_key(&prefix, offset), entry_value(msg)?)
        .map_err(StoreError::backend("history append"))?;
    for k in trim(tree, &prefix, max)? {
        if let Some(off) = key_offset(&k, prefix.len()) {
            mark_trimmed(tree, room, off)?;
        }
    }
    Ok(())
}

/// A room's entries after `after` (`None` when some of them were trimmed or expired).
fn since(
    tree: &sled::Tree,
    room: &str,
    after: u64,
    ttl: Duration,
) -> Result<Option<Vec<(u64, Message)>>, StoreError> {
    let err = StoreError::backend("history read");
    let prefix = history_prefix(b'd', room);
    let oldest = now_ms().saturating_sub(ttl.as_millis() as u64);
    let mut out = Vec::new();
    for entry in tree.scan_prefix(&prefix) {
        let (k, v) = entry.map_err(err)?;
        let Some(off) = key_offset(&k, prefix.len()) else {
            continue;
        };
        let (stored, message) = read_entry(&v);
        if stored.unwrap_or(0) < oldest {
            // Expired: gone from the history like a trimmed entry.
            tree.remove(&k).map_err(err)?;
            mark_trimmed(tree, room, off)?;
            continue;
        }
        if let (true, Some(m)) = (off > after, message) {
            out.push((off, m));
        }
    }
    let trimmed = tree
        .get(history_prefix(b't', room))
        .map_err(err)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, u64::from_be_bytes);
    Ok((trimmed <= after).then_some(out))
}

const EPOCH_KEY: &[u8] = b"epoch";

/// Keys of a room's history: `d` entries, `t` its highest trimmed offset.
fn history_prefix(kind: u8, room: &str) -> Vec<u8> {
    name_prefix(kind, room)
}

fn key_offset(k: &[u8], prefix_len: usize) -> Option<u64> {
    k.get(prefix_len..)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
}

/// Remember that `room`'s history no longer has everything up to `offset`.
fn mark_trimmed(tree: &sled::Tree, room: &str, offset: u64) -> Result<(), StoreError> {
    tree.fetch_and_update(history_prefix(b't', room), |old| {
        let old = old
            .and_then(|v| <[u8; 8]>::try_from(v).ok())
            .map_or(0, u64::from_be_bytes);
        Some(old.max(offset).to_be_bytes().to_vec())
    })
    .map(|_| ())
    .map_err(StoreError::backend("history trim"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_logs_live_in_the_store_and_survive_reopening() {
        use crate::store::{kv::KvLog, KvStore};
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let log = KvLog::start(s.cell()).unwrap();
            let a = log.open("a", 1 << 20).unwrap();
            a.set("k", b"v".to_vec(), None).unwrap();
            assert!(a
                .set_if_absent("once", vec![], Some(Duration::from_secs(60)))
                .unwrap());
            assert_eq!(log.open("b", 1 << 20).unwrap().get("k"), None);
            log.close();
        }
        let s = SledStore::open(dir.path()).unwrap();
        let log = KvLog::start(s.cell()).unwrap();
        let a = log.open("a", 1 << 20).unwrap();
        assert_eq!(a.get("k"), Some(b"v".to_vec()), "survives reopening");
        assert!(
            !a.set_if_absent("once", vec![], None).unwrap(),
            "still used after restart"
        );
    }

    #[tokio::test]
    async fn offline_mailboxes_keep_order_cap_and_ttl_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let u = Mailbox::User("ann".into());
        let r = Mailbox::Room("ann".into());
        let m = |i: i64| Message::data(serde_json::json!(i));
        {
            let s = SledStore::open(dir.path()).unwrap();
            for i in 0..5 {
                let p = s.push("t", &u, &m(i), 3).await.unwrap();
                assert_eq!(p.dropped, usize::from(i >= 3));
            }
            s.push("t", &r, &m(100), 3).await.unwrap();
            s.push("other", &u, &m(200), 3).await.unwrap();
            s.flush().await.unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        let (got, expired) = s.pending("t", &u, Duration::from_secs(60)).await.unwrap();
        assert_eq!(expired, 0);
        assert_eq!(
            got.iter()
                .map(|g| g.message.data.clone())
                .collect::<Vec<_>>(),
            [2, 3, 4].map(|i| serde_json::json!(i)),
            "oldest dropped, order kept, reopened"
        );
        assert!(got.windows(2).all(|w| w[0].id < w[1].id));
        s.remove("t", &u, &[got[0].id]).await.unwrap();
        assert_eq!(
            s.pending("t", &u, Duration::from_secs(60))
                .await
                .unwrap()
                .0
                .len(),
            2
        );
        assert_eq!(
            s.pending("t", &r, Duration::from_secs(60))
                .await
                .unwrap()
                .0
                .len(),
            1,
            "rooms and users apart"
        );
        std::thread::sleep(Duration::from_millis(5));
        let (got, expired) = s.pending("t", &u, Duration::from_millis(1)).await.unwrap();
        assert_eq!((got.len(), expired), (0, 2), "expired messages are removed");
        assert_eq!(
            s.pending("t", &u, Duration::from_secs(60))
                .await
                .unwrap()
                .0
                .len(),
            0
        );
    }

    #[test]
    fn history_gives_the_exact_missed_range_or_says_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let epoch = s.history_epoch("t").unwrap();
        assert_eq!(s.history_epoch("t").unwrap(), epoch, "stable");
        let mut offs = Vec::new();
        for i in 0..5 {
            let o = s.history_offset().unwrap();
            s.history_append("t", "r", o, &Message::data(serde_json::json!(i)), 3)
                .unwrap();
            offs.push(o);
        }
        let day = Duration::from_secs(86_400);
        // Entries 2, 3, 4 are kept; after offset 2 (entry index 2) exactly 3 and 4 follow.
        let got = s.history_since("t", "r", offs[2], day).unwrap().unwrap();
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            offs[3..].to_vec()
        );
        assert_eq!(
            s.history_since("t", "r", offs[4], day).unwrap(),
            Some(vec![])
        );
        assert_eq!(
            s.history_since("t", "r", offs[0], day).unwrap(),
            None,
            "entry 1 was trimmed"
        );
        assert_eq!(s.history_since("t", "other", 0, day).unwrap(), Some(vec![]));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            s.history_since("t", "r", offs[3], Duration::from_millis(1))
                .unwrap(),
            None,
            "expired entries cannot be recovered"
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let db = s.cell().db().unwrap();
            db.insert(SCHEMA_KEY, &(SCHEMA_VERSION + 1).to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        // sled's background flusher may hold the file lock for a moment after
        // the first handle is dropped; wait for it rather than fail on the lock.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let e = loop {
            let e = SledStore::open(dir.path()).unwrap_err().to_string();
            if !e.contains("could not acquire lock") || std::time::Instant::now() > deadline {
                break e;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(e.contains("newer than this relay"), "{e}");
    }
}
