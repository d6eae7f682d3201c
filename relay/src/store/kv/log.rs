//! [`KvLog`]: the thread that writes the stores' pending records to sled every
//! [`KV_WINDOW`](super::KV_WINDOW), replays a log when a store opens, and compacts it.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::record::{ops, Op};
use super::{TenantKv, COMPACT_MIN, KV_WINDOW};
use crate::store::cell::DbCell;
use crate::store::{now_ms, StoreError};

/// Wakes the log thread.
#[derive(Default)]
pub(super) struct Wake {
    /// (something is pending, stop requested)
    flags: Mutex<(bool, bool)>,
    cond: Condvar,
}

impl Wake {
    fn lock(&self) -> MutexGuard<'_, (bool, bool)> {
        self.flags.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn pending(&self) {
        self.lock().0 = true;
        self.cond.notify_one();
    }
}

/// One tenant's key-value store.
pub(super) struct Logged {
    kv: Arc<TenantKv>,
    tenant: String,
    /// The log's tree; `None` while the database is being reopened.
    tree: Option<sled::Tree>,
    next_seq: u64,
    /// Bytes in the log (records since and including the last snapshot).
    log_bytes: usize,
    /// Records may have been lost (the database was reopened after an I/O error): the
    /// next round writes a snapshot of the live data instead of its pending records.
    needs_snapshot: bool,
}

impl Logged {
    /// Append a record. Without a tree (a reopen under way) it is dropped: the snapshot
    /// written once the tree is back holds what it changed.
    fn write(&mut self, rec: &[u8]) -> sled::Result<()> {
        let Some(tree) = &self.tree else {
            self.needs_snapshot = true;
            return Ok(());
        };
        tree.insert(self.next_seq.to_be_bytes(), rec)?;
        self.next_seq += 1;
        self.log_bytes += rec.len();
        Ok(())
    }

    /// Write the live data as a snapshot, make it durable, then drop the records before it.
    fn compact(&mut self) -> sled::Result<()> {
        let Some(tree) = self.tree.clone() else {
            self.needs_snapshot = true;
            return Ok(());
        };
        let first = self.next_seq;
        self.log_bytes = 0;
        for chunk in self.kv.snapshot() {
            self.write(&chunk)?;
        }
        tree.flush()?;
        let old: Vec<sled::IVec> = tree
            .range(..first.to_be_bytes())
            .keys()
            .collect::<sled::Result<_>>()?;
        for k in old {
            tree.remove(k)?;
        }
        self.needs_snapshot = false;
        Ok(())
    }

    /// Follow the database through a reopen: drop the tree, or take the new one and
    /// plan a snapshot (records written while the disk failed may be lost).
    fn reopened(&mut self, db: Option<&sled::Db>) {
        self.tree = None;
        let Some(db) = db else { return };
        match db.open_tree(log_tree(&self.tenant)) {
            Ok(tree) => {
                self.next_seq = match tree.last() {
                    Ok(Some((k, _))) => <[u8; 8]>::try_from(k.as_ref())
                        .map_or(0, |b| u64::from_be_bytes(b).saturating_add(1)),
                    _ => 0,
                };
                self.tree = Some(tree);
            }
            Err(e) => {
                tracing::error!(tenant = %self.tenant, error = %e, "reopening the key-value log failed; its writes are kept in memory only")
            }
        }
        self.needs_snapshot = true;
    }
}

/// The log thread and the stores it writes for.
pub struct KvLog {
    cell: Arc<DbCell>,
    wake: Arc<Wake>,
    stores: Arc<Mutex<Vec<Logged>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for KvLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvLog").finish()
    }
}

/// Tree of a tenant's log.
pub(super) fn log_tree(tenant: &str) -> String {
    format!("kvlog/{tenant}")
}

/// Tree of a tenant's store as schema 1 kept it (one sled entry per key).
pub(super) fn legacy_tree(tenant: &str) -> String {
    format!("kv/{tenant}")
}

impl KvLog {
    /// Start the log thread for stores in the database of `cell`.
    pub fn start(cell: Arc<DbCell>) -> std::io::Result<Arc<Self>> {
        let wake = Arc::new(Wake::default());
        let stores: Arc<Mutex<Vec<Logged>>> = Arc::default();
        let thread = {
            let (wake, stores, cell) = (wake.clone(), stores.clone(), cell.clone());
            std::thread::Builder::new()
                .name("relay-kv-log".into())
                .spawn(move || run(&wake, &stores, &cell))?
        };
        {
            let (wake, stores) = (wake.clone(), stores.clone());
            cell.on_reopen(Box::new(move |db| {
                for s in stores.lock().unwrap_or_else(|p| p.into_inner()).iter_mut() {
                    s.reopened(db);
                }
                if db.is_some() {
                    wake.pending();
                }
            }));
        }
        Ok(Arc::new(KvLog {
            cell,
            wake,
            stores,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Open `tenant`'s store: replay its log (and move a schema-1 store into it), holding
    /// at most `max_bytes`.
    pub fn open(&self, tenant: &str, max_bytes: usize) -> Result<Arc<TenantKv>, StoreError> {
        // Under the handle's lock: the store's tree is registered before a reopen can
        // start, so the reopen sees it (see `store::cell`).
        let opened = self.cell.with(|db| self.open_in(db, tenant, max_bytes));
        self.cell.check(opened.and_then(|kv| kv))
    }

    fn open_in(
        &self,
        db: &sled::Db,
        tenant: &str,
        max_bytes: usize,
    ) -> Result<Arc<TenantKv>, StoreError> {
        let err = StoreError::backend("open key-value log");
        let kv = Arc::new(TenantKv::new(max_bytes, Some(self.wake.clone())));
        let tree = db.open_tree(log_tree(tenant)).map_err(err)?;
        let now = now_ms();
        let (mut next_seq, mut log_bytes) = (0u64, 0usize);
        for item in tree.iter() {
            let (k, rec) = item.map_err(err)?;
            let seq = <[u8; 8]>::try_from(k.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Damaged {
                    op: "open key-value log",
                    what: "a log key is malformed; the store may be corrupt".into(),
                })?;
            for op in ops(&rec) {
                let Some(op) = op else {
                    return Err(StoreError::Damaged {
                        op: "open key-value log",
                        what: format!("log record {seq} is unreadable; the store may be corrupt"),
                    });
                };
                kv.replay(op, now);
            }
            next_seq = seq + 1;
            log_bytes += rec.len();
        }
        let mut logged = Logged {
            kv: kv.clone(),
            tenant: tenant.to_owned(),
            tree: Some(tree),
            next_seq,
            log_bytes,
            needs_snapshot: false,
        };
        // Schema 1 kept one sled entry per key (8-byte expiry, then the value).
        let legacy = legacy_tree(tenant);
        if db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == legacy.as_bytes())
        {
            let old = db.open_tree(&legacy).map_err(err)?;
            for item in old.iter() {
                let (k, v) = item.map_err(err)?;
                let (Ok(key), Some((exp, value))) =
                    (std::str::from_utf8(&k), v.split_at_checked(8))
                else {
                    continue;
                };
                if TenantKv::check(key, value).is_err() {
                    continue;
                }
                let exp = u64::from_be_bytes(exp.try_into().unwrap_or_default());
                kv.replay(Op::Set(key, value, exp), now);
            }
            logged.compact().map_err(err)?;
            drop(old);
            db.drop_tree(legacy.as_bytes()).map_err(err)?;
            tracing::info!(
                tenant,
                keys = kv.len(),
                "key-value store moved to the schema 2 log"
            );
        }
        self.stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(logged);
        Ok(kv)
    }

    /// Write everything pending, flush sled and stop the thread (later writes stay in
    /// memory only). Called at shutdown; idempotent.
    pub fn close(&self) {
        {
            let mut f = self.wake.lock();
            f.1 = true;
        }
        self.wake.cond.notify_one();
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        if let Err(e) = self.cell.db().and_then(|db| {
            db.flush()
                .map_err(StoreError::backend("flush key-value log"))
        }) {
            tracing::error!(error = %e, "flushing the key-value log failed");
        }
    }
}

impl Drop for KvLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// The log thread: wait for writes, let [`KV_WINDOW`] gather more, write each store's
/// pending records as one sled value, compact logs that have grown (and write a snapshot
/// after the database was reopened).
fn run(wake: &Wake, stores: &Mutex<Vec<Logged>>, cell: &Arc<DbCell>) {
    let mut rec = Vec::new();
    loop {
        let stop = {
            let mut f = wake.lock();
            while !f.0 && !f.1 {
                f = wake.cond.wait(f).unwrap_or_else(|p| p.into_inner());
            }
            f.0 = false;
            f.1
        };
        if !stop {
            std::thread::sleep(KV_WINDOW);
        }
        let mut stores = stores.lock().unwrap_or_else(|p| p.into_inner());
        for s in stores.iter_mut() {
            rec.clear();
            s.kv.take_pending(&mut rec);
            if !rec.is_empty() && !s.needs_snapshot {
                if let Err(e) = s.write(&rec) {
                    tracing::error!(tenant = %s.tenant, error = %e, "writing the key-value log failed; these writes are kept in memory only");
                    s.needs_snapshot = true;
                    cell.saw(&e);
                }
            }
            if rec.capacity() > 1 << 20 {
                rec = Vec::new();
            }
            if s.needs_snapshot && s.tree.is_some() {
                match s.compact() {
                    Ok(()) => {
                        tracing::info!(tenant = %s.tenant, "key-value log written out again after the store was reopened")
                    }
                    Err(e) => {
                        tracing::error!(tenant = %s.tenant, error = %e, "writing the key-value log out failed; its writes are kept in memory only");
                        cell.saw(&e);
                    }
                }
            } else if s.log_bytes > COMPACT_MIN && s.log_bytes > 2 * s.kv.used_bytes() {
                let before = s.log_bytes;
                match s.compact() {
                    Ok(()) => {
                        tracing::debug!(tenant = %s.tenant, before, after = s.log_bytes, "key-value log compacted")
                    }
                    Err(e) => {
                        tracing::error!(tenant = %s.tenant, error = %e, "compacting the key-value log failed");
                        cell.saw(&e);
                    }
                }
            }
        }
        if stop {
            return;
        }
    }
}
