//! The tenants' key-value stores (plugins' `kv-*` host calls): in memory, made
//! durable by a write-behind log in sled.
//!
//! Plugins use their store on hot paths — md5-sign's replay check writes a key on
//! every signed handshake — and a sled write costs ~10 µs here, as much as the whole
//! rest of a handshake. So every operation is a hash-map operation in memory (the
//! store is authoritative there), and each write appends a record of itself to its
//! shard's pending buffer. A background thread, [`KvLog`], writes what is pending as
//! one sled value per tenant every [`KV_WINDOW`] (well under 1 µs per write instead of ~10).
//! Opening a store replays its log; once the log has grown well past the live data,
//! the thread writes the live data as a snapshot and drops the records before it.
//!
//! Durability: a write reaches sled within [`KV_WINDOW`] and the disk within sled's
//! flush interval (100 ms) after that; a crash loses at most the writes of that last
//! stretch (sled alone, which the store used before, gave 100 ms). Stopping
//! ([`KvLog::close`]) writes everything first. The window is a trade: each batch costs
//! the log thread a wake-up and a sled write (~20-30 µs), so at 20 ms a busy store
//! spends a fraction of a percent of a core on its log.
//!
//! A store holds at most `kv_max_bytes` (key and value bytes plus [`ENTRY_OVERHEAD`]
//! per entry); a write beyond is refused with [`KvError::Full`]. Expired entries stop
//! being visible at once and are dropped from memory by [`KvStore::purge_expired`].
//!
//! - `mod.rs`: [`TenantKv`], the store in memory.
//! - `record.rs`: the log's record format. `log.rs`: [`KvLog`], the writer thread.

mod log;
pub(crate) mod record;

pub use log::KvLog;
use log::Wake;
use record::{put_delete, put_set, Op};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use hashbrown::HashTable;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{now_ms, KvStore};

/// How long a write may wait in memory before the log thread writes it to sled.
pub const KV_WINDOW: Duration = Duration::from_millis(20);
/// Longest key.
pub const MAX_KEY: usize = 1024;
/// Longest value.
pub const MAX_VALUE: usize = 1 << 20;
/// What an entry costs besides its key and value bytes, for `kv_max_bytes`
/// (hash-map slot, allocation headers).
pub const ENTRY_OVERHEAD: usize = 64;
/// Shards of a store (each a mutex and a map): writes from both worker threads rarely meet.
const SHARDS: usize = 16;
/// The log is compacted once it holds this many bytes and twice the live data.
const COMPACT_MIN: usize = 4 << 20;
/// Largest snapshot record.
const SNAPSHOT_CHUNK: usize = 1 << 20;

const OP_SET: u8 = 1;
const OP_DELETE: u8 = 2;

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The key or the value is too long.
    #[error("key over {MAX_KEY} bytes or value over {MAX_VALUE} bytes")]
    TooLarge,
    /// The store holds `kv_max_bytes` already.
    #[error("the tenant's key-value store is full (kv_max_bytes = {0})")]
    Full(usize),
    /// The shared store (the cluster's Redis) failed or did not answer; nothing was
    /// written.
    #[error("the cluster's key-value store is unavailable: {0}")]
    Unavailable(String),
    /// `incr` on a value that is not a decimal integer, or a sum past `i64`.
    #[error("the value is not a decimal integer, or the sum overflows")]
    NotInteger,
}

/// The value of a counter kept as decimal text.
fn as_integer(v: &[u8]) -> Result<i64, KvError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or(KvError::NotInteger)
}

/// Expiry (ms since the Unix epoch; 0 = never) of an entry written at `now` with `ttl`.
fn expiry(now: u64, ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |t| now.saturating_add(t.as_millis() as u64).max(1))
}

fn live(expires_ms: u64, now: u64) -> bool {
    expires_ms == 0 || expires_ms > now
}

struct Entry {
    /// The key's hash, kept so that growing the table does not hash every key again.
    hash: u64,
    key: Box<str>,
    value: Box<[u8]>,
    expires_ms: u64,
}

fn cost(key: &str, value_len: usize) -> usize {
    key.len() + value_len + ENTRY_OVERHEAD
}

/// One shard: its entries, hashed once per operation by the store's SipHash (keys come
/// from plugins, often from client input: the hash is keyed against flooding).
#[derive(Default)]
struct Shard {
    map: HashTable<Entry>,
    /// Log records of writes not yet handed to the log thread.
    pending: Vec<u8>,
}

impl Shard {
    fn get(&self, hash: u64, key: &str) -> Option<&Entry> {
        self.map.find(hash, |e| &*e.key == key)
    }

    fn take(&mut self, hash: u64, key: &str) -> Option<Entry> {
        let found = self.map.find_entry(hash, |e| &*e.key == key).ok()?;
        Some(found.remove().0)
    }

    fn add(&mut self, entry: Entry) {
        self.map.insert_unique(entry.hash, entry, |e| e.hash);
    }
}

pub struct TenantKv {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Bytes held, as counted for `max_bytes`.
    used: AtomicUsize,
    max_bytes: usize,
    /// Set by the first write after the log thread last took what was pending.
    dirty: AtomicBool,
    /// `None`: memory only (`relay check`, benchmarks).
    wake: Option<Arc<Wake>>,
}

impl std::fmt::Debug for TenantKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantKv")
            .field("used", &self.used.load(Ordering::Relaxed))
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl TenantKv {
    fn new(max_bytes: usize, wake: Option<Arc<Wake>>) -> Self {
        TenantKv {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            used: AtomicUsize::new(0),
            max_bytes,
            dirty: AtomicBool::new(false),
            wake,
        }
    }

    /// A store kept in memory only (lost when the process ends), holding at most `max_bytes`.
    pub fn in_memory(max_bytes: usize) -> Self {
        Self::new(max_bytes, None)
    }

    /// `key`'s hash and its shard, locked.
    fn shard(&self, key: &str) -> (u64, MutexGuard<'_, Shard>) {
        let hash = self.hasher.hash_one(key);
        // Bits the shard's table uses for neither bucket index (low) nor tag (top 7).
        let i = ((hash >> 40) as usize) % SHARDS;
        // A panic while holding a shard cannot leave it inconsistent (each change is one
        // map operation, then its log record).
        (
            hash,
            self.shards[i].lock().unwrap_or_else(|p| p.into_inner()),
        )
    }

    /// Bytes held, as counted against `kv_max_bytes`.
    pub fn used_bytes(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Entries held (expired ones included until purged).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.map.len()))
            .sum()
    }

    /// Whether the store holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A write happened: make sure the log thread comes for it.
    fn logged(&self) {
        if let Some(w) = &self.wake {
            if !self.dirty.swap(true, Ordering::AcqRel) {
                w.pending();
            }
        }
    }

    /// Reserve room for an entry growing from `old` to `new` bytes.
    fn reserve(&self, old: usize, new: usize) -> Result<(), KvError> {
        if new <= old {
            self.used.fetch_sub(old - new, Ordering::Relaxed);
            return Ok(());
        }
        let grow = new - old;
        let before = self.used.fetch_add(grow, Ordering::Relaxed);
        if before + grow > self.max_bytes {
            self.used.fetch_sub(grow, Ordering::Relaxed);
            return Err(KvError::Full(self.max_bytes));
        }
        Ok(())
    }

    pub(crate) fn check(key: &str, value: &[u8]) -> Result<(), KvError> {
        if key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return Err(KvError::TooLarge);
        }
        Ok(())
    }

    /// Insert or replace `key` in its locked shard, logging it (one probe of the table);
    /// with `unless_live_at: Some(now)`, leave an entry live at `now` alone instead.
    /// Whether it wrote.
    fn put(
        &self,
        s: &mut Shard,
        hash: u64,
        key: &str,
        value: Vec<u8>,
        expires_ms: u64,
        unless_live_at: Option<u64>,
    ) -> Result<bool, KvError> {
        let Shard { map, pending } = s;
        let entry = map.entry(hash, |e| &*e.key == key, |e| e.hash);
        let old = match &entry {
            hashbrown::hash_table::Entry::Occupied(e) => {
                if unless_live_at.is_some_and(|now| live(e.get().expires_ms, now)) {
                    return Ok(false);
                }
                cost(key, e.get().value.len())
            }
            hashbrown::hash_table::Entry::Vacant(_) => 0,
        };
        self.reserve(old, cost(key, value.len()))?;
        if self.wake.is_some() {
            put_set(pending, key, &value, expires_ms);
        }
        let value = value.into_boxed_slice();
        match entry {
            hashbrown::hash_table::Entry::Occupied(mut e) => {
                let e = e.get_mut();
                e.value = value;
                e.expires_ms = expires_ms;
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(Entry {
                    hash,
                    key: key.into(),
                    value,
                    expires_ms,
                });
            }
        }
        Ok(true)
    }

    fn remove(&self, s: &mut Shard, hash: u64, key: &str) -> Option<Entry> {
        let e = s.take(hash, key)?;
        self.used
            .fetch_sub(cost(key, e.value.len()), Ordering::Relaxed);
        Some(e)
    }

    /// Apply one replayed log operation (no new log record; the cap does not apply:
    /// what was accepted once stays).
    fn replay(&self, op: Op<'_>, now: u64) {
        match op {
            Op::Set(key, value, exp) => {
                let (hash, mut s) = self.shard(key);
                self.remove(&mut s, hash, key);
                if live(exp, now) {
                    self.used
                        .fetch_add(cost(key, value.len()), Ordering::Relaxed);
                    s.add(Entry {
                        hash,
                        key: key.into(),
                        value: value.into(),
                        expires_ms: exp,
                    });
                }
            }
            Op::Delete(key) => {
                let (hash, mut s) = self.shard(key);
                self.remove(&mut s, hash, key);
            }
        }
    }

    /// Take every shard's pending records (in shard order; each shard's in write order).
    fn take_pending(&self, out: &mut Vec<u8>) {
        self.dirty.store(false, Ordering::Release);
        for s in self.shards.iter() {
            let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
            if out.is_empty() {
                std::mem::swap(out, &mut s.pending);
            } else {
                out.extend_from_slice(&s.pending);
                s.pending.clear();
            }
            if s.pending.capacity() > 64 << 10 {
                s.pending = Vec::new();
            }
        }
    }

    /// The live entries as set records, in chunks of about [`SNAPSHOT_CHUNK`] bytes.
    fn snapshot(&self) -> Vec<Vec<u8>> {
        let now = now_ms();
        let mut chunks = vec![Vec::new()];
        for s in self.shards.iter() {
            let s = s.lock().unwrap_or_else(|p| p.into_inner());
            for e in s.map.iter().filter(|e| live(e.expires_ms, now)) {
                let last = chunks.last_mut().filter(|c| c.len() < SNAPSHOT_CHUNK);
                let out = match last {
                    Some(c) => c,
                    None => {
                        chunks.push(Vec::new());
                        chunks.last_mut().expect("just pushed")
                    }
                };
                put_set(out, &e.key, &e.value, e.expires_ms);
            }
        }
        chunks.retain(|c| !c.is_empty());
        chunks
    }
}

impl KvStore for TenantKv {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let (hash, s) = self.shard(key);
        let e = s.get(hash, key)?;
        live(e.expires_ms, now_ms()).then(|| e.value.to_vec())
    }

    fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), KvError> {
        Self::check(key, &value)?;
        let exp = expiry(now_ms(), ttl);
        {
            let (hash, mut s) = self.shard(key);
            self.put(&mut s, hash, key, value, exp, None)?;
        }
        self.logged();
        Ok(())
    }

    fn set_if_absent(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError> {
        Self::check(key, &value)?;
        let now = now_ms();
        {
            let (hash, mut s) = self.shard(key);
            if !self.put(&mut s, hash, key, value, expiry(now, ttl), Some(now))? {
                return Ok(false);
            }
        }
        self.logged();
        Ok(true)
    }

    fn delete(&self, key: &str) -> bool {
        let was_live = {
            let (hash, mut s) = self.shard(key);
            let Some(e) = self.remove(&mut s, hash, key) else {
                return false;
            };
            if self.wake.is_some() {
                put_delete(&mut s.pending, key);
            }
            live(e.expires_ms, now_ms())
        };
        self.logged();
        was_live
    }

    fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        let now = now_ms();
        let sum = {
            let (hash, mut s) = self.shard(key);
            let (current, kept) = match s.get(hash, key).filter(|e| live(e.expires_ms, now)) {
                Some(e) => (as_integer(&e.value)?, e.expires_ms),
                None => (0, 0),
            };
            let sum = current.checked_add(delta).ok_or(KvError::NotInteger)?;
            let text = sum.to_string().into_bytes();
            Self::check(key, &text)?;
            let exp = if ttl.is_some() {
                expiry(now, ttl)
            } else {
                kept
            };
            self.put(&mut s, hash, key, text, exp, None)?;
            sum
        };
        self.logged();
        Ok(sum)
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError> {
        if let Some(v) = &new {
            Self::check(key, v)?;
        }
        let now = now_ms();
        {
            let (hash, mut s) = self.shard(key);
            let current = s
                .get(hash, key)
                .filter(|e| live(e.expires_ms, now))
                .map(|e| &*e.value);
            if current != expected {
                return Ok(false);
            }
            match new {
                Some(v) => {
                    self.put(&mut s, hash, key, v, expiry(now, ttl), None)?;
                }
                None => {
                    if self.remove(&mut s, hash, key).is_some() && self.wake.is_some() {
                        put_delete(&mut s.pending, key);
                    }
                }
            }
        }
        self.logged();
        Ok(true)
    }

    fn purge_expired(&self) {
        let now = now_ms();
        for s in self.shards.iter() {
            let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
            let mut freed = 0;
            s.map.retain(|e| {
                let keep = live(e.expires_ms, now);
                if !keep {
                    freed += cost(&e.key, e.value.len());
                }
                keep
            });
            self.used.fetch_sub(freed, Ordering::Relaxed);
            // Expiry needs no log record: replaying a log drops what has expired.
        }
    }
}

/// A store and where its log lives.
#[cfg(test)]
mod tests {
    use super::log::{legacy_tree, log_tree};
    use super::record::ops;
    use super::*;

    fn db(dir: &std::path::Path) -> sled::Db {
        sled::Config::new().path(dir).open().unwrap()
    }

    /// `db` as the key-value log takes it (never reopened in these tests).
    fn cell(db: sled::Db) -> Arc<crate::store::cell::DbCell> {
        crate::store::cell::DbCell::new(std::path::Path::new("."), db, |_| {
            Err(crate::store::StoreError::Reopening)
        })
    }

    #[test]
    fn values_expire_and_set_if_absent_sees_only_live_keys() {
        let kv = TenantKv::in_memory(1 << 20);
        assert!(kv
            .set_if_absent("a", b"1".to_vec(), Some(Duration::from_millis(30)))
            .unwrap());
        assert!(!kv.set_if_absent("a", b"2".to_vec(), None).unwrap());
        assert_eq!(kv.get("a"), Some(b"1".to_vec()));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(kv.get("a"), None);
        assert!(kv.set_if_absent("a", b"3".to_vec(), None).unwrap());
        assert!(kv.delete("a"));
        assert!(!kv.delete("a"));
        kv.set("b", vec![], Some(Duration::from_millis(1))).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        kv.purge_expired();
        assert!(kv.is_empty());
        assert_eq!(kv.used_bytes(), 0);
    }

    #[test]
    fn incr_and_compare_and_swap_follow_their_contract() {
        let kv = TenantKv::in_memory(1 << 20);
        assert_eq!(kv.incr("n", 5, None), Ok(5), "absent counts as 0");
        assert_eq!(kv.incr("n", -7, None), Ok(-2));
        assert_eq!(kv.get("n"), Some(b"-2".to_vec()), "kept as decimal text");
        kv.set("t", b"x".to_vec(), None).unwrap();
        assert_eq!(kv.incr("t", 1, None), Err(KvError::NotInteger));
        assert_eq!(kv.get("t"), Some(b"x".to_vec()), "nothing written");
        kv.set("big", i64::MAX.to_string().into_bytes(), None)
            .unwrap();
        assert_eq!(
            kv.incr("big", 1, None),
            Err(KvError::NotInteger),
            "overflow"
        );
        // An expiry given is set; none keeps the existing one.
        kv.incr("e", 1, Some(Duration::from_millis(30))).unwrap();
        kv.incr("e", 1, None).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(kv.get("e"), None, "the expiry was kept");
        assert_eq!(kv.incr("e", 1, None), Ok(1), "expired counts as 0");

        assert!(kv
            .compare_and_swap("c", None, Some(b"1".to_vec()), None)
            .unwrap());
        assert!(
            !kv.compare_and_swap("c", None, Some(b"2".to_vec()), None)
                .unwrap(),
            "not absent"
        );
        assert!(!kv
            .compare_and_swap("c", Some(b"0"), Some(b"2".to_vec()), None)
            .unwrap());
        assert!(kv
            .compare_and_swap("c", Some(b"1"), Some(b"2".to_vec()), None)
            .unwrap());
        assert_eq!(kv.get("c"), Some(b"2".to_vec()));
        assert!(
            kv.compare_and_swap("c", Some(b"2"), None, None).unwrap(),
            "delete"
        );
        assert_eq!(kv.get("c"), None);
    }

    #[test]
    fn the_cap_refuses_writes_beyond_it_and_frees_with_deletes() {
        let kv = TenantKv::in_memory(3 * (ENTRY_OVERHEAD + 10));
        for k in ["k1", "k2", "k3"] {
            kv.set(k, vec![0; 8], None).unwrap();
        }
        assert_eq!(
            kv.set("k4", vec![0; 8], None),
            Err(KvError::Full(3 * (ENTRY_OVERHEAD + 10)))
        );
        assert_eq!(
            kv.set_if_absent("k4", vec![0; 8], None),
            Err(KvError::Full(3 * (ENTRY_OVERHEAD + 10)))
        );
        // Replacing a value with one of the same size fits.
        kv.set("k1", vec![1; 8], None).unwrap();
        assert!(kv.delete("k2"));
        kv.set("k4", vec![0; 8], None).unwrap();
        assert_eq!(
            kv.set(&"x".repeat(MAX_KEY + 1), vec![], None),
            Err(KvError::TooLarge)
        );
        assert_eq!(
            kv.set("v", vec![0; MAX_VALUE + 1], None),
            Err(KvError::TooLarge)
        );
    }

    #[test]
    fn the_log_brings_back_every_write_and_delete_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = KvLog::start(cell(db(dir.path()))).unwrap();
            let a = log.open("a", 1 << 20).unwrap();
            let b = log.open("b", 1 << 20).unwrap();
            a.set("k", b"1".to_vec(), None).unwrap();
            a.set("k", b"2".to_vec(), None).unwrap();
            a.set("gone", b"x".to_vec(), None).unwrap();
            assert!(a.delete("gone"));
            a.set("short", b"x".to_vec(), Some(Duration::from_millis(50)))
                .unwrap();
            assert!(a
                .set_if_absent("n", vec![], Some(Duration::from_secs(60)))
                .unwrap());
            b.set("k", b"b".to_vec(), None).unwrap();
            log.close();
        }
        std::thread::sleep(Duration::from_millis(60));
        let log = KvLog::start(cell(db(dir.path()))).unwrap();
        let a = log.open("a", 1 << 20).unwrap();
        let b = log.open("b", 1 << 20).unwrap();
        assert_eq!(a.get("k"), Some(b"2".to_vec()));
        assert_eq!(a.get("gone"), None);
        assert_eq!(a.get("short"), None, "expired while the relay was down");
        assert!(
            !a.set_if_absent("n", vec![], None).unwrap(),
            "a nonce stays used"
        );
        assert_eq!(b.get("k"), Some(b"b".to_vec()), "tenants are apart");
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn writes_reach_sled_within_the_window_without_a_close() {
        let dir = tempfile::tempdir().unwrap();
        let sled = db(dir.path());
        let log = KvLog::start(cell(sled.clone())).unwrap();
        let a = log.open("a", 1 << 20).unwrap();
        a.set("k", b"v".to_vec(), None).unwrap();
        let tree = sled.open_tree(log_tree("a")).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while tree.is_empty() {
            assert!(std::time::Instant::now() < deadline, "no log record");
            std::thread::sleep(Duration::from_millis(1));
        }
        let (_, rec) = tree.iter().next().unwrap().unwrap();
        assert!(matches!(
            ops(&rec).next(),
            Some(Some(Op::Set("k", b"v", 0)))
        ));
    }

    #[test]
    fn compaction_keeps_the_live_data_and_drops_old_records() {
        let dir = tempfile::tempdir().unwrap();
        let sled = db(dir.path());
        {
            let log = KvLog::start(cell(sled.clone())).unwrap();
            let a = log.open("a", 64 << 20).unwrap();
            // 80 rewrites of the same 1,000 keys (~15 MB): the log grows far past the
            // live data (~0.2 MB).
            for round in 0..80u32 {
                for i in 0..1000u32 {
                    a.set(&format!("key{i}"), round.to_be_bytes().repeat(40), None)
                        .unwrap();
                }
                if round % 8 == 7 {
                    std::thread::sleep(KV_WINDOW * 2);
                }
            }
            log.close();
        }
        let records = sled.open_tree(log_tree("a")).unwrap().len();
        let bytes: usize = sled
            .open_tree(log_tree("a"))
            .unwrap()
            .iter()
            .map(|r| r.unwrap().1.len())
            .sum();
        assert!(
            bytes < COMPACT_MIN + (1 << 20),
            "log still {bytes} bytes in {records} records"
        );
        let log = KvLog::start(cell(sled)).unwrap();
        let a = log.open("a", 64 << 20).unwrap();
        assert_eq!(a.len(), 1000);
        assert_eq!(a.get("key7"), Some(79u32.to_be_bytes().repeat(40)));
    }

    #[test]
    fn a_schema_1_store_moves_into_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let sled = db(dir.path());
        let old = sled.open_tree(legacy_tree("a")).unwrap();
        let mut v = 0u64.to_be_bytes().to_vec();
        v.extend_from_slice(b"kept");
        old.insert("token", v).unwrap();
        let mut expired = 1u64.to_be_bytes().to_vec();
        expired.extend_from_slice(b"old");
        old.insert("stale", expired).unwrap();
        drop(old);
        {
            let log = KvLog::start(cell(sled.clone())).unwrap();
            let a = log.open("a", 1 << 20).unwrap();
            assert_eq!(a.get("token"), Some(b"kept".to_vec()));
            assert_eq!(a.get("stale"), None);
            log.close();
        }
        assert!(!sled
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == legacy_tree("a").as_bytes()));
        let log = KvLog::start(cell(sled)).unwrap();
        assert_eq!(
            log.open("a", 1 << 20).unwrap().get("token"),
            Some(b"kept".to_vec())
        );
    }

    #[test]
    fn an_unreadable_log_record_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let sled = db(dir.path());
        sled.open_tree(log_tree("a"))
            .unwrap()
            .insert(0u64.to_be_bytes(), &[OP_SET, 0, 9, b'k'][..])
            .unwrap();
        let log = KvLog::start(cell(sled)).unwrap();
        let e = log.open("a", 1 << 20).unwrap_err();
        assert!(e.to_string().contains("log record 0 is unreadable"), "{e}");
    }
}
