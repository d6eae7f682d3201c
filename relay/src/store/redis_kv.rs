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

/// What `kv-get("redis:<key>")` reads, by the key's type: a hash as `{field: value}`
/// (JSON), a string as itself; anything else as absent.
const READ_RAW: &str = r#"
local t = redis.call('TYPE', KEYS[1]).ok
if t == 'hash' then return {'hash', redis.call('HGETALL', KEYS[1])} end
if t == 'string' then return {'string', {redis.call('GET', KEYS[1])}} end
return {'none', {}}
"#;

/// `incr`: INCRBY, then the expiry when one is given; `{"notint"}` when the value is
/// not an integer or the sum overflows (nothing written). ARGV: delta, ttl ms (0: keep).
const INCR: &str = r#"
local r = redis.pcall('INCRBY', KEYS[1], ARGV[1])
if type(r) == 'table' and r.err then return {'notint', 0} end
if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return {'ok', r}
"#;

/// `compare_and_swap`. ARGV: expected present (1/0), expected, new present (1/0), new,
/// ttl ms (0: none).
const CAS: &str = r#"
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if (not cur) or cur ~= ARGV[2] then return 0 end
elseif cur then
  return 0
end
if ARGV[3] == '0' then
  redis.call('DEL', KEYS[1])
elseif tonumber(ARGV[5]) > 0 then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
else
  redis.call('SET', KEYS[1], ARGV[4])
end
return 1
"#;

/// One tenant's key-value store, shared by the cluster.
pub struct RedisKv {
    cluster: Arc<Cluster>,
    prefix: String,
    /// `redis_read`: patterns of Redis's own keys the plugin may read.
    readable: Vec<String>,
    read_raw: redis::Script,
    incr: redis::Script,
    cas: redis::Script,
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisKv {
    /// `tenant`'s store in `cluster`'s Redis; its plugin may also read the Redis keys
    /// matching `readable` (never relay's own, under the cluster's prefix).
    pub fn new(cluster: Arc<Cluster>, tenant: &str, readable: Vec<String>) -> Self {
        let prefix = cluster.key(tenant, "kv:");
        RedisKv {
            cluster,
            prefix,
            readable,
            read_raw: redis::Script::new(READ_RAW),
            incr: redis::Script::new(INCR),
            cas: redis::Script::new(CAS),
        }
    }

    /// `redis:<key>` when `<key>` is readable: the key.
    fn raw_key<'k>(&self, key: &'k str) -> Option<&'k str> {
        let raw = key.strip_prefix("redis:")?;
        let own = raw
            .strip_prefix(self.cluster.prefix.as_str())
            .is_some_and(|r| r.starts_with(':'));
        (!own
            && self
                .readable
                .iter()
                .any(|p| crate::config::glob_match(p, raw)))
        .then_some(raw)
    }

    /// A readable Redis key: a hash as a JSON object, a string as its bytes.
    fn read_raw(&self, key: &str) -> Option<Vec<u8>> {
        let mut conn = self.cluster.conn.clone();
        let inv = self.read_raw.key(key);
        let (kind, items): (String, Vec<Vec<u8>>) = self
            .run("read", async move { inv.invoke_async(&mut conn).await })
            .ok()?;
        match kind.as_str() {
            "hash" => {
                let obj: serde_json::Map<String, serde_json::Value> = items
                    .chunks(2)
                    .filter_map(|kv| match kv {
                        [k, v] => Some((
                            String::from_utf8_lossy(k).into_owned(),
                            serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
                        )),
                        _ => None,
                    })
                    .collect();
                serde_json::to_vec(&obj).ok()
            }
            "string" => items.into_iter().next(),
            _ => None,
        }
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
        if let Some(raw) = self.raw_key(key) {
            return self.read_raw(raw);
        }
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

    fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        TenantKv::check(key, b"")?;
        let mut conn = self.cluster.conn.clone();
        let mut inv = self.incr.key(format!("{}{key}", self.prefix));
        inv.arg(delta).arg(Self::ttl_ms(ttl).unwrap_or(0));
        let (kind, n): (String, i64) =
            self.run("incr", async move { inv.invoke_async(&mut conn).await })?;
        match kind.as_str() {
            "ok" => Ok(n),
            _ => Err(KvError::NotInteger),
        }
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError> {
        if let Some(v) = &new {
            TenantKv::check(key, v)?;
        }
        let mut conn = self.cluster.conn.clone();
        let mut inv = self.cas.key(format!("{}{key}", self.prefix));
        inv.arg(u8::from(expected.is_some()))
            .arg(expected.unwrap_or_default())
            .arg(u8::from(new.is_some()))
            .arg(new.unwrap_or_default())
            .arg(Self::ttl_ms(ttl).unwrap_or(0));
        let swapped: i64 = self.run("compare_and_swap", async move {
            inv.invoke_async(&mut conn).await
        })?;
        Ok(swapped == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_listed_keys_outside_relays_own_are_readable() {
        let text = "[cluster]\nredis = \"redis://127.0.0.1:1\"\nprefix = \"px\"\n\n[[tenant]]\nname = \"a\"\npolicy = \"open\"\n\n[[listener]]\nname = \"u\"\nkind = \"udp\"\nbind = \"127.0.0.1:0\"\ntenant = \"a\"\n";
        let config = crate::Config::parse(text, None).unwrap();
        let c = Cluster::new(config.cluster.as_ref().unwrap(), None).unwrap();
        let kv = RedisKv::new(c.clone(), "a", vec!["login*".into()]);
        assert_eq!(kv.raw_key("redis:login7"), Some("login7"));
        assert_eq!(kv.raw_key("redis:logout7"), None, "not listed");
        assert_eq!(kv.raw_key("login7"), None, "a plugin's own key");
        let all = RedisKv::new(c, "a", vec!["*".into()]);
        assert_eq!(
            all.raw_key("redis:px:t:b:kv:secret"),
            None,
            "relay's own keys"
        );
        assert_eq!(all.raw_key("redis:px:nodes"), None);
        assert_eq!(all.raw_key("redis:pxy"), Some("pxy"));
    }
}
