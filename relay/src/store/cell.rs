//! The embedded database's one open handle, and reopening it after an I/O error.
//!
//! sled keeps the first I/O error it meets (a full disk, say) and fails every later write
//! with it until the database is opened again. [`DbCell`] holds the handle every store
//! uses. When a store call reports an I/O error, a thread (`relay-store-reopen`) takes the
//! handle away, has every tree opened from it dropped (the stores' caches and the
//! key-value log's trees, through [`DbCell::on_reopen`]), and opens the directory again,
//! with backoff, until it works; sled's file lock makes that wait for the last old handle
//! to go. Meanwhile store calls fail with [`StoreError::Reopening`], which is retryable:
//! pushes that must be durable are answered `503`, live traffic goes on. Writes sled had
//! taken but not made durable before the error are gone after the reopen, as after a
//! crash; none of them was acknowledged as durable.
//!
//! Lock order: the handle's lock, then whatever a hook locks. A tree is put in a cache
//! only while the handle's read lock is held ([`DbCell::with`]), so no cache keeps a tree
//! of a handle that was taken away.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::StoreError;

/// Called with `None` when the handle is taken away (drop every tree opened from it) and
/// with the new handle once the database is open again.
type Hook = Box<dyn Fn(Option<&sled::Db>) + Send + Sync>;

/// Wait before the first attempt to reopen.
const FIRST_WAIT: Duration = Duration::from_millis(50);
/// Longest wait between two attempts to reopen.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A reopen this long after the last one starts again from [`FIRST_WAIT`].
const QUIET: Duration = Duration::from_secs(30);

/// The database handle the stores share; see the module comment.
pub struct DbCell {
    path: PathBuf,
    db: RwLock<Option<sled::Db>>,
    reopening: AtomicBool,
    hooks: Mutex<Vec<Hook>>,
    open: fn(&Path) -> Result<sled::Db, StoreError>,
    /// When the last reopen ended, and the wait it started with: reopens that follow each
    /// other (a disk still full) wait longer each time.
    last: Mutex<Option<(Instant, Duration)>>,
}

impl std::fmt::Debug for DbCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbCell").field("path", &self.path).finish()
    }
}

impl DbCell {
    /// Wrap a database opened from `path` by `open`, which reopens it after an I/O error.
    pub(crate) fn new(
        path: &Path,
        db: sled::Db,
        open: fn(&Path) -> Result<sled::Db, StoreError>,
    ) -> Arc<Self> {
        Arc::new(DbCell {
            path: path.to_owned(),
            db: RwLock::new(Some(db)),
            reopening: AtomicBool::new(false),
            hooks: Mutex::default(),
            open,
            last: Mutex::default(),
        })
    }

    /// A handle to the database, or [`StoreError::Reopening`] while there is none.
    pub(crate) fn db(&self) -> Result<sled::Db, StoreError> {
        self.with(|db| db.clone())
    }

    /// Run `f` on the database while the handle cannot be taken away.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&sled::Db) -> R) -> Result<R, StoreError> {
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map(f).ok_or(StoreError::Reopening)
    }

    /// Register what to do when the handle is taken away and when it is back.
    pub(crate) fn on_reopen(&self, hook: Hook) {
        self.hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(hook);
    }

    /// Pass a result on; an I/O error in it starts a reopen.
    pub(crate) fn check<T>(self: &Arc<Self>, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Backend {
            source: sled::Error::Io(_),
            ..
        }) = &r
        {
            self.reopen();
        }
        r
    }

    /// Note a sled error met outside a store call (the key-value log's thread).
    pub(crate) fn saw(self: &Arc<Self>, e: &sled::Error) {
        if matches!(e, sled::Error::Io(_)) {
            self.reopen();
        }
    }

    /// Start reopening the database, unless that is under way already.
    fn reopen(self: &Arc<Self>) {
        if self.reopening.swap(true, Ordering::AcqRel) {
            return;
        }
        let cell = self.clone();
        let spawned = std::thread::Builder::new()
            .name("relay-store-reopen".into())
            .spawn(move || cell.reopen_now());
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the thread that reopens the store");
            self.reopening.store(false, Ordering::Release);
        }
    }

    fn run_hooks(&self, db: Option<&sled::Db>) {
        for hook in self.hooks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            hook(db);
        }
    }

    fn reopen_now(&self) {
        tracing::error!(path = %self.path.display(), "store I/O error: reopening the database; durable writes fail until it is back");
        {
            let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
            let old = guard.take();
            self.run_hooks(None);
            drop(old);
        }
        let mut wait = {
            let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            match *last {
                Some((at, w)) if at.elapsed() < QUIET => (w * 2).min(MAX_BACKOFF),
                _ => FIRST_WAIT,
            }
        };
        let first = wait;
        let mut attempts = 0u32;
        loop {
            std::thread::sleep(wait);
            attempts += 1;
            match (self.open)(&self.path) {
                Ok(db) => {
                    let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
                    self.run_hooks(Some(&db));
                    *guard = Some(db);
                    break;
                }
                Err(e) => {
                    // The old handle's last users may still be finishing (the file lock),
                    // or the disk is still full.
                    if attempts % 10 == 1 {
                        tracing::warn!(error = %e, attempts, "reopening the store failed; trying again");
                    }
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
            }
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), first));
        tracing::info!(path = %self.path.display(), attempts, "store reopened");
        self.reopening.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::store::kv::KvLog;
    use crate::store::sled::SledStore;
    use crate::store::{KvStore, OfflineStore};

    /// A small tmpfs on a fresh directory (root only), unmounted when dropped.
    struct SmallFs(tempfile::TempDir);

    impl SmallFs {
        fn mount(size: &str) -> Option<SmallFs> {
            let dir = tempfile::tempdir().ok()?;
            let ok = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .output()
                .is_ok_and(|o| o.status.success());
            ok.then_some(SmallFs(dir))
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0.path()).status();
        }
    }

    /// Fill the filesystem at `dir` with one file; returns its path.
    fn fill(dir: &Path) -> PathBuf {
        use std::io::Write;
        let path = dir.join("filler");
        if let Ok(mut f) = std::fs::File::create(&path) {
            let block = vec![0u8; 64 * 1024];
            while f.write_all(&block).is_ok() {}
            while f.write_all(&[0u8; 512]).is_ok() {}
        }
        path
    }

    fn value(i: usize) -> Vec<u8> {
        format!("{i:04}").repeat(250).into_bytes()
    }

    /// Key-value writes made while the disk is full are kept in memory, and once space
    /// returns the reopened store's log holds all of them: a fresh open reads them back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_key_value_log_is_written_out_again_after_the_disk_was_full() {
        let Some(fs) = SmallFs::mount("8m") else {
            eprintln!("SKIPPED: cannot mount a small tmpfs to fill; needs root");
            return;
        };
        let dir = fs.0.path().join("store");
        let keys = 1500;
        {
            let store = SledStore::open(&dir).unwrap();
            let reopens = Arc::new(AtomicUsize::new(0));
            let seen = reopens.clone();
            store.cell().on_reopen(Box::new(move |db| {
                if db.is_none() {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            }));
            let log = KvLog::start(store.cell()).unwrap();
            let kv = log.open("t", 64 << 20).unwrap();
            let filler = fill(fs.0.path());
            for i in 0..keys {
                kv.set(&format!("k{i}"), value(i), None).unwrap();
                if i % 100 == 0 {
                    let _ = store.flush().await;
                    tokio::time::sleep(KV_PAUSE).await;
                }
            }
            assert!(
                reopens.load(Ordering::SeqCst) >= 1,
                "the full disk never made the store reopen"
            );
            std::fs::remove_file(filler).unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while store.flush().await.is_err() {
                assert!(Instant::now() < deadline, "the store never came back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // The log thread's last round writes the snapshot the reopen asked for.
            log.close();
        }
        // sled's flusher may hold the file lock for a moment after the last handle goes.
        let deadline = Instant::now() + Duration::from_secs(10);
        let store = loop {
            match SledStore::open(&dir) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("reopening: {e}"),
            }
        };
        let log = KvLog::start(store.cell()).unwrap();
        let kv = log.open("t", 64 << 20).unwrap();
        let missing: Vec<usize> = (0..keys)
            .filter(|i| kv.get(&format!("k{i}")) != Some(value(*i)))
            .collect();
        assert!(
            missing.is_empty(),
            "{} keys lost: {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }

    const KV_PAUSE: Duration = Duration::from_millis(30);
}
