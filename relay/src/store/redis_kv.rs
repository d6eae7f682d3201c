//! A tenant's plugin key-value store in the cluster's Redis: every node reads and writes
//! the same keys (`P:t:T:kv:<key>`), so a nonce used through one node is refused by all
//! of them, and a token registered through one is known to all.
//!
//! The calls are synchronous (host imports inside a wasm call): each is one Redis round
//! trip made with the worker thread handed to the runtime's other tasks meanwhile
//! ([`Cluster::block`]); `set_if_absent` is `SET NX` and so decided by Redis, atomically
//! across nodes. Measured trade-off in docs/cluster.md. `kv_max_bytes` is not enforced
//! here: Redis's `maxmemory` bounds the shared store.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;

use super::kv::{KvError, TenantKv};
use super::KvStore;
use crate::cluster::Cluster;
use crate::metrics::Metrics;

/// One tenant's key-value store, shared by the cluster.
pub struct RedisKv {
    cluster: Arc<Cluster>,
    prefix: String,
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisKv {
    /// `tenant`'s store in `cluster`'s Redis.
    pub fn new(cluster: Arc<Cluster>, tenant: &str) -> Self {
        let prefix = cluster.key(tenant, "kv:");
        RedisKv { cluster, prefix }
    }

    fn run<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, KvError> {
        let r = self.cluster.block(self.cluster.call(f)).and_then(|r| r);
        r.map_err(|e| {
            Metrics::inc(&self.cluster.metrics.kv_failed);
            tracing::warn!(op, error = %e, "cluster key-value call failed");
            KvError::Unavailable(e.to_string())
        })
    }

    fn ttl_ms(ttl: Option<Duration>) -> Option<u64> {
        ttl.map(|t| (t.as_millis() as u64).max(1))
    }
}

impl KvStore for RedisKv {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut conn = self.cluster.conn.clone();
        let k = format!("{}{key}", self.prefix);
        self.run(
            "get",
            async move { conn.get::<_, Option<Vec<u8>>>(k).await },
        )
        .ok()
        .flatten()
    }

    fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), KvError> {
        TenantKv::check(key, &value)?;
        let mut conn = self.cluster.conn.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{}{key}", self.prefix)).arg(value);
        if let Some(ms) = Self::ttl_ms(ttl) {
            cmd.arg("PX").arg(ms);
        }
        self.run("set", async move { cmd.query_async::<()>(&mut conn).await })
    }

    fn set_if_absent(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError> {
        TenantKv::check(key, &value)?;
        let mut conn = self.cluster.conn.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{}{key}", self.prefix))
            .arg(value)
            .arg("NX");
        if let Some(ms) = Self::ttl_ms(ttl) {
            cmd.arg("PX").arg(ms);
        }
        let set = self.run("set_if_absent", async move {
            cmd.query_async::<Option<String>>(&mut conn).await
        })?;
        Ok(set.is_some())
    }

    fn delete(&self, key: &str) -> bool {
        let mut conn = self.cluster.conn.clone();
        let k = format!("{}{key}", self.prefix);
        self.run("delete", async move { conn.del::<_, u64>(k).await })
            .is_ok_and(|n| n > 0)
    }
}
