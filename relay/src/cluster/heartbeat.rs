//! The node's liveness entry in Redis, renewed on a timer, and the reaping of nodes
//! that stopped renewing theirs (killed, partitioned): their presence entries go, so a
//! dead node drops out of every answer within `node_ttl_ms` plus one beat.
//!
//! Time is Redis's (`TIME` in the script), so clocks of the nodes need not agree.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Script;
use tokio_util::sync::CancellationToken;

use super::{Cluster, ClusterError};

/// Renew this node's expiry, retire former incarnations of its name, and reap up to 16
/// dead nodes: every presence entry listed in a dead node's key set is removed.
/// `KEYS[1]` the node set; `ARGV`: node, ttl ms (negative: say goodbye), key prefix,
/// name prefix to retire (or empty). Returns `{added, reaped}`: `added` is 1 when this
/// node's entry was missing (Redis lost it: everything must be written again).
const BEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[4] ~= '' then
  for _, n in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    if n ~= ARGV[1] and string.sub(n, 1, #ARGV[4]) == ARGV[4] then
      redis.call('ZADD', KEYS[1], 0, n)
    end
  end
end
local added = redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 16)
for _, n in ipairs(dead) do
  local ks = ARGV[3] .. ':node:' .. n .. ':keys'
  for _, m in ipairs(redis.call('SMEMBERS', ks)) do
    local key = string.sub(m, 3)
    if string.sub(m, 1, 1) == 'h' then redis.call('HDEL', key, n) else redis.call('DEL', key) end
  end
  redis.call('DEL', ks)
  redis.call('ZREM', KEYS[1], n)
end
return {added, #dead}
"#;

/// One heartbeat; `Ok(true)` when Redis did not know this node (write everything).
pub async fn beat(c: &Cluster, ttl_ms: i64, retire: bool) -> Result<bool, ClusterError> {
    let retire = match (&c.name, retire) {
        (Some(n), true) => format!("{n}."),
        _ => String::new(),
    };
    let mut conn = c.conn.clone();
    let started = Instant::now();
    let script = Script::new(BEAT);
    let mut inv = script.key(c.nodes_key());
    inv.arg(&c.node).arg(ttl_ms).arg(&c.prefix).arg(&retire);
    let (added, reaped): (i64, i64) = c.call(inv.invoke_async(&mut conn)).await?;
    c.metrics
        .rtt_us
        .store(started.elapsed().as_micros() as u64, Relaxed);
    if reaped > 0 {
        tracing::info!(node = %c.node, reaped, "removed the presence of nodes that stopped");
    }
    Ok(added == 1)
}

/// How often the node renews its entry: a third of the expiry, and at least every
/// second (a beat is also how a lost link is noticed and pub/sub is reconnected).
pub fn interval(c: &Cluster) -> Duration {
    (c.node_ttl / 3).min(Duration::from_secs(1))
}

/// Beat until `stop`; when Redis did not know this node, ask `sync` to write all of it
/// again. At `stop`, say goodbye (the node's entries go at once).
pub async fn run(c: Arc<Cluster>, sync: Arc<super::sync::ClusterSync>, stop: CancellationToken) {
    let ttl = c.node_ttl.as_millis() as i64;
    let mut first = true;
    loop {
        match beat(&c, ttl, first).await {
            Ok(lost) => {
                if first {
                    tracing::info!(node = %c.node, "joined the cluster");
                }
                first = false;
                if lost {
                    sync.resync();
                }
            }
            Err(e) => tracing::warn!(node = %c.node, error = %e, "cluster heartbeat failed"),
        }
        sync.ping_subscriber().await;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval(&c)) => {}
        }
    }
    if let Err(e) = beat(&c, -1, false).await {
        tracing::warn!(node = %c.node, error = %e, "could not leave the cluster cleanly");
    }
}
