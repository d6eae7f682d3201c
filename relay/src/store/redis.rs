//! Offline mailboxes in the cluster's Redis, so that a message kept through one node is
//! delivered by whichever node the user or room shows up on.
//!
//! A mailbox is a sorted set `P:t:T:off:u:<user>` (or `off:r:<room>`) scored by message
//! id, each member `<id> <stored ms> <message JSON>`; ids come from one counter
//! (`P:offline:id`), so they increase in the order messages were kept, across nodes.
//! Storing, capping and expiring are Lua scripts (atomic per mailbox, Redis's clock).
//!
//! Durability: a push is acknowledged once Redis has applied it; what that survives is
//! Redis's persistence (`appendonly yes` with `appendfsync always`: a Redis crash; with
//! `everysec`: all but the last second), and with `wait_replicas = N` the answer also
//! waits until N replicas have it (`WAIT`). See docs/cluster.md.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::{Mailbox, OfflineStore, Pushed, StoreError, StoredMessage};
use crate::cluster::Cluster;
use crate::protocol::Message;

/// Store and cap: `KEYS` mailbox, id counter; `ARGV` message JSON, max. Returns `{id, dropped}`.
const PUSH: &str = r#"
local id = redis.call('INCR', KEYS[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], id, id .. ' ' .. now .. ' ' .. ARGV[1])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
if over > 0 then redis.call('ZPOPMIN', KEYS[1], over) else over = 0 end
return {id, over}
"#;

/// Read, dropping what is older than `ARGV[1]` ms: `{expired, members}`.
const PENDING: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out, expired = {}, 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local at = tonumber(string.match(m, '^%d+ (%d+) '))
  if at == nil or at + tonumber(ARGV[1]) < now then
    redis.call('ZREM', KEYS[1], m)
    expired = expired + 1
  else
    out[#out + 1] = m
  end
end
return {expired, out}
"#;

/// Offline mailboxes shared by the nodes of a cluster.
pub struct RedisOffline {
    cluster: Arc<Cluster>,
    wait_replicas: u32,
    push: Script,
    pending: Script,
}

impl std::fmt::Debug for RedisOffline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOffline").finish_non_exhaustive()
    }
}

/// `<id> <stored ms> <json>` → the message as stored.
pub(crate) fn parse_member(m: &str) -> Option<StoredMessage> {
    let (id, rest) = m.split_once(' ')?;
    let (at, json) = rest.split_once(' ')?;
    Some(StoredMessage {
        id: id.parse().ok()?,
        stored_ms: at.parse().ok()?,
        message: serde_json::from_str(json).ok()?,
    })
}

impl RedisOffline {
    /// Mailboxes in `cluster`'s Redis; `wait_replicas` replicas confirm each flush.
    pub fn new(cluster: Arc<Cluster>, wait_replicas: u32) -> Self {
        RedisOffline {
            cluster,
            wait_replicas,
            push: Script::new(PUSH),
            pending: Script::new(PENDING),
        }
    }

    fn key(&self, tenant: &str, mb: &Mailbox) -> String {
        match mb {
            Mailbox::User(u) => self.cluster.key(tenant, &format!("off:u:{u}")),
            Mailbox::Room(r) => self.cluster.key(tenant, &format!("off:r:{r}")),
        }
    }

    fn err(op: &'static str) -> impl Fn(crate::cluster::ClusterError) -> StoreError {
        move |source| StoreError::Redis { op, source }
    }
}

#[async_trait::async_trait]
impl OfflineStore for RedisOffline {
    async fn push(
        &self,
        tenant: &str,
        mb: &Mailbox,
        msg: &Message,
        max: usize,
    ) -> Result<Pushed, StoreError> {
        let json = serde_json::to_string(msg)
            .map_err(|source| StoreError::Encode { op: "push", source })?;
        let mut inv = self.push.key(self.key(tenant, mb));
        inv.key(format!("{}:offline:id", self.cluster.prefix))
            .arg(json)
            .arg(max);
        let mut conn = self.cluster.conn.clone();
        let (id, dropped): (u64, u64) = self
            .cluster
            .call(inv.invoke_async(&mut conn))
            .await
            .map_err(Self::err("push"))?;
        Ok(Pushed {
            id,
            dropped: dropped as usize,
        })
    }

    async fn pending(
        &self,
        tenant: &str,
        mb: &Mailbox,
        ttl: Duration,
    ) -> Result<(Vec<StoredMessage>, usize), StoreError> {
        let mut inv = self.pending.key(self.key(tenant, mb));
        inv.arg(ttl.as_millis() as u64);
        let mut conn = self.cluster.conn.clone();
        let (expired, members): (u64, Vec<String>) = self
            .cluster
            .call(inv.invoke_async(&mut conn))
            .await
            .map_err(Self::err("read mailbox"))?;
        let mut out = Vec::with_capacity(members.len());
        for m in members {
            match parse_member(&m) {
                Some(s) => out.push(s),
                None => {
                    tracing::error!(tenant, ?mb, "unreadable offline message in redis: skipped")
                }
            }
        }
        Ok((out, expired as usize))
    }

    /// Always `true`: another node may keep a message for this tenant at any time, so
    /// joins and logins always look (one round trip).
    async fn has_offline(&self, _tenant: &str) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn remove(&self, tenant: &str, mb: &Mailbox, ids: &[u64]) -> Result<(), StoreError> {
        let key = self.key(tenant, mb);
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.zrembyscore(&key, *id, *id).ignore();
        }
        let mut conn = self.cluster.conn.clone();
        self.cluster
            .call(pipe.query_async::<()>(&mut conn))
            .await
            .map_err(Self::err("remove"))
    }

    /// With `wait_replicas`, wait until that many replicas acknowledged every write so
    /// far on this node's connection; otherwise Redis applying it was enough.
    async fn flush(&self) -> Result<(), StoreError> {
        if self.wait_replicas == 0 {
            return Ok(());
        }
        let timeout_ms = self.cluster.timeout.as_millis() as u64;
        let mut conn = self.cluster.conn.clone();
        let acked: u64 = self
            .cluster
            .call(
                redis::cmd("WAIT")
                    .arg(self.wait_replicas)
                    .arg(timeout_ms)
                    .query_async(&mut conn),
            )
            .await
            .map_err(Self::err("flush"))?;
        match acked >= u64::from(self.wait_replicas) {
            true => Ok(()),
            false => Err(StoreError::Damaged {
                op: "flush",
                what: format!(
                    "only {acked} of {} redis replicas confirmed in time",
                    self.wait_replicas
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse_or_are_refused() {
        let m = parse_member("7 1700000000000 {\"event\":\"e\",\"data\":[1]}").unwrap();
        assert_eq!((m.id, m.stored_ms), (7, 1_700_000_000_000));
        assert_eq!(m.message.data, serde_json::json!([1]));
        for bad in ["", "7", "7 x {}", "x 1 {}", "7 1 not-json"] {
            assert!(parse_member(bad).is_none(), "{bad}");
        }
    }
}
