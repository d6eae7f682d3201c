//! The embedded store on `sled`: one database per data directory, one tree
//! per purpose (`kv/<tenant>` for plugin key-value stores), a schema version.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::KvStore;

/// Schema version this relay writes and reads.
pub const SCHEMA_VERSION: u64 = 1;
const SCHEMA_KEY: &[u8] = b"relay:schema";

/// Errors opening or using the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (I/O, corruption).
    #[error("store at {path}: {source}")]
    Sled {
        /// Database directory.
        path: String,
        /// The sled error.
        source: sled::Error,
    },
    /// The database was written by a newer relay.
    #[error("store at {path} has schema version {found}, newer than this relay's {SCHEMA_VERSION}; refusing to touch it")]
    TooNew {
        /// Database directory.
        path: String,
        /// Version found.
        found: u64,
    },
    /// The schema marker is unreadable.
    #[error("store at {path}: unreadable schema version; the store may be corrupt")]
    Corrupt {
        /// Database directory.
        path: String,
    },
}

/// The relay's embedded database.
#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish()
    }
}

impl SledStore {
    /// Open (or create) the database in `dir`, checking its schema version.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.display().to_string();
        let err = |source| StoreError::Sled {
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
                    return Err(StoreError::TooNew { path, found });
                }
            }
        }
        Ok(SledStore { db })
    }

    /// The key-value store of `tenant`.
    pub fn kv(&self, tenant: &str) -> Result<SledKv, sled::Error> {
        Ok(SledKv {
            tree: self.db.open_tree(format!("kv/{tenant}"))?,
        })
    }
}

/// A tenant's key-value store in its own sled tree. Values carry their expiry
/// (milliseconds since the Unix epoch, 0 = never) in an 8-byte prefix.
pub struct SledKv {
    tree: sled::Tree,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn encode(value: &[u8], ttl: Option<Duration>) -> Vec<u8> {
    let exp = ttl.map_or(0, |t| now_ms().saturating_add(t.as_millis() as u64).max(1));
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&exp.to_be_bytes());
    v.extend_from_slice(value);
    v
}

/// The value if the stored entry is live.
fn decode(raw: &[u8]) -> Option<&[u8]> {
    let (exp, value) = raw.split_at_checked(8)?;
    let exp = u64::from_be_bytes(exp.try_into().ok()?);
    (exp == 0 || exp > now_ms()).then_some(value)
}

impl KvStore for SledKv {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let raw = self.tree.get(key).ok()??;
        decode(&raw).map(<[u8]>::to_vec)
    }

    fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) {
        if let Err(e) = self.tree.insert(key, encode(&value, ttl)) {
            tracing::error!(error = %e, "kv store write failed");
        }
    }

    fn set_if_absent(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> bool {
        let new = encode(&value, ttl);
        loop {
            let current = match self.tree.get(key) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "kv store read failed");
                    return false;
                }
            };
            if current.as_deref().is_some_and(|c| decode(c).is_some()) {
                return false;
            }
            match self
                .tree
                .compare_and_swap(key, current, Some(new.as_slice()))
            {
                Ok(Ok(())) => return true,
                Ok(Err(_)) => continue, // raced with another writer: look again
                Err(e) => {
                    tracing::error!(error = %e, "kv store write failed");
                    return false;
                }
            }
        }
    }

    fn delete(&self, key: &str) -> bool {
        match self.tree.remove(key) {
            Ok(Some(raw)) => decode(&raw).is_some(),
            _ => false,
        }
    }

    fn purge_expired(&self) {
        for (k, v) in self.tree.iter().flatten() {
            if decode(&v).is_none() {
                let _ = self
                    .tree
                    .compare_and_swap(&k, Some(&v), None as Option<&[u8]>);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_persists_expires_and_is_per_tenant() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let a = s.kv("a").unwrap();
            a.set("k", b"v".to_vec(), None);
            a.set("gone", b"v".to_vec(), Some(Duration::from_millis(1)));
            assert!(a.set_if_absent("once", vec![], Some(Duration::from_secs(60))));
            assert!(!a.set_if_absent("once", vec![], None));
            assert_eq!(s.kv("b").unwrap().get("k"), None);
            s.db.flush().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
        let s = SledStore::open(dir.path()).unwrap();
        let a = s.kv("a").unwrap();
        assert_eq!(a.get("k"), Some(b"v".to_vec()), "survives reopening");
        assert_eq!(a.get("gone"), None);
        assert!(
            !a.set_if_absent("once", vec![], None),
            "still used after restart"
        );
        a.purge_expired();
        assert_eq!(a.tree.len(), 2);
        assert!(a.delete("k"));
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.db.insert(SCHEMA_KEY, &(SCHEMA_VERSION + 1).to_be_bytes())
                .unwrap();
            s.db.flush().unwrap();
        }
        let e = SledStore::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("newer than this relay"), "{e}");
    }
}
