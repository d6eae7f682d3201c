//! Cluster-wide presence: every answer counts the connections of every live node.
//!
//! Hooks ask synchronously, so an answer is one Redis round trip (a Lua script that
//! also skips entries of dead nodes) made with the worker thread handed over to the
//! runtime's other tasks ([`Cluster::block`]). Before asking, the node waits until its
//! own changes are written ([`ClusterSync::settle`]): a connection sees its own join.
//! While Redis is unreachable, answers come from this node's view (counted in
//! `relay_cluster_presence_fallbacks`), so hooks keep working, less exactly.

use std::sync::Arc;

use redis::Script;

use super::sync::ClusterSync;
use super::{Cluster, ClusterError};
use crate::hub::{Hub, Member, Presence};
use crate::metrics::Metrics;

/// The values of the live nodes' fields of a presence hash. `KEYS`: the hash, the node set.
const LIVE_ENTRIES: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #h, 2 do
  local exp = redis.call('ZSCORE', KEYS[2], h[i])
  if exp and tonumber(exp) > now then out[#out + 1] = h[i + 1] end
end
return out
"#;

/// Over live nodes: with `ARGV[2]` empty, how many connections; else whether that
/// connection is open (0/1). `KEYS[1]`: the node set; `ARGV[1]`: `P:t:T:nc:`.
const CONNECTIONS: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = 0
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  if ARGV[2] == '' then
    n = n + redis.call('HLEN', ARGV[1] .. node)
  elseif redis.call('HEXISTS', ARGV[1] .. node, ARGV[2]) == 1 then
    return 1
  end
end
return n
"#;

/// A tenant's presence across the cluster.
pub struct ClusterPresence {
    tenant: Arc<str>,
    hub: Arc<Hub>,
    sync: Arc<ClusterSync>,
    live_entries: Script,
    connections: Script,
}

/// Split `<count> <json>`.
fn parse_entry(v: &str) -> Option<(usize, &str)> {
    let (n, json) = v.split_once(' ')?;
    Some((n.parse().ok()?, json))
}

impl ClusterPresence {
    /// `tenant`'s presence; `hub` answers while Redis cannot.
    pub fn new(tenant: Arc<str>, hub: Arc<Hub>, sync: Arc<ClusterSync>) -> Self {
        ClusterPresence {
            tenant,
            hub,
            sync,
            live_entries: Script::new(LIVE_ENTRIES),
            connections: Script::new(CONNECTIONS),
        }
    }

    fn cluster(&self) -> &Cluster {
        self.sync.cluster()
    }

    /// Ask Redis (after this node's own changes are written), or this node's view.
    fn ask<T, F>(&self, what: &str, q: F, local: impl FnOnce() -> T) -> T
    where
        F: std::future::Future<Output = Result<T, ClusterError>>,
    {
        let c = self.cluster();
        let r = match c.is_up() {
            true => c.block(async {
                self.sync.settle().await;
                q.await
            }),
            false => Err(ClusterError::Timeout(c.timeout)),
        };
        match r.and_then(|r| r) {
            Ok(v) => v,
            Err(e) => {
                Metrics::inc(&c.metrics.presence_fallbacks);
                tracing::debug!(tenant = %self.tenant, what, error = %e, "presence from this node only");
                local()
            }
        }
    }

    async fn entries(&self, key: String) -> Result<Vec<String>, ClusterError> {
        let c = self.cluster();
        let mut conn = c.conn.clone();
        let mut inv = self.live_entries.key(key);
        inv.key(c.nodes_key());
        c.call(inv.invoke_async(&mut conn)).await
    }

    async fn conns(&self, conn: &str) -> Result<i64, ClusterError> {
        let c = self.cluster();
        let mut redis_conn = c.conn.clone();
        let mut inv = self.connections.key(c.nodes_key());
        inv.arg(c.key(&self.tenant, "nc:")).arg(conn);
        c.call(inv.invoke_async(&mut redis_conn)).await
    }

    fn room_key(&self, room: &str) -> String {
        self.cluster().key(&self.tenant, &format!("room:{room}"))
    }
}

impl Presence for ClusterPresence {
    fn room_count(&self, room: &str) -> usize {
        let q = async {
            let key = self.cluster().key(&self.tenant, &format!("rc:{room}"));
            let v = self.entries(key).await?;
            Ok(v.iter().filter_map(|n| n.parse::<usize>().ok()).sum())
        };
        self.ask("room_count", q, || self.hub.room_count(room))
    }

    fn room_members(&self, room: &str) -> Vec<Member> {
        let q = async {
            let v = self.entries(self.room_key(room)).await?;
            let mut out = Vec::new();
            for (_, json) in v.iter().filter_map(|e| parse_entry(e)) {
                let list: Vec<(String, Option<String>)> =
                    serde_json::from_str(json).unwrap_or_default();
                out.extend(list.into_iter().map(|(conn, user)| Member { conn, user }));
            }
            Ok(out)
        };
        self.ask("room_members", q, || self.hub.room_members(room))
    }

    fn user_connections(&self, user: &str) -> Vec<String> {
        let q = async {
            let key = self.cluster().key(&self.tenant, &format!("user:{user}"));
            let v = self.entries(key).await?;
            let mut out = Vec::new();
            for (_, json) in v.iter().filter_map(|e| parse_entry(e)) {
                let list: Vec<String> = serde_json::from_str(json).unwrap_or_default();
                out.extend(list);
            }
            Ok(out)
        };
        self.ask("user_connections", q, || self.hub.user_connections(user))
    }

    fn connection_count(&self) -> usize {
        let q = async { Ok(self.conns("").await?.max(0) as usize) };
        self.ask("connection_count", q, || self.hub.connection_count())
    }

    fn connection_exists(&self, conn: &str) -> bool {
        if conn.is_empty() {
            return false;
        }
        if self.hub.connection_exists(conn) {
            return true;
        }
        let q = async { Ok(self.conns(conn).await? == 1) };
        self.ask("connection_exists", q, || false)
    }
}

impl std::fmt::Debug for ClusterPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPresence")
            .field("tenant", &self.tenant)
            .finish()
    }
}
