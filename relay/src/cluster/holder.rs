//! Which node takes the messages of a tenant's `redis_ingress` channel. Every node could
//! subscribe, but then each message would be pushed once per node; instead one node holds
//! each channel (a Redis key set with `NX` and an expiry, renewed on every beat) and only
//! the holder subscribes. When it dies, its hold expires within `node_ttl_ms` and another
//! node takes the channel. Messages published while no node holds it are lost, as any
//! Redis pub/sub message with no subscriber is.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use redis::Script;
use tokio_util::sync::CancellationToken;

use super::subscriber::Subscriber;
use super::{heartbeat, Cluster, ClusterError};

/// Take or renew the hold: `KEYS[1]` the hold, `ARGV` node, ttl ms. 1 if this node holds it.
const HOLD: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// Release the hold if this node has it (at shutdown).
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Hold what can be held of `channels` until `stop`, subscribing to what this node holds.
pub async fn run(
    c: Arc<Cluster>,
    subscriber: Arc<Subscriber>,
    channels: Vec<String>,
    stop: CancellationToken,
) {
    if channels.is_empty() {
        return;
    }
    let hold = Script::new(HOLD);
    let mut held = vec![false; channels.len()];
    loop {
        for (i, ch) in channels.iter().enumerate() {
            let now = match take(&c, &hold, ch).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::debug!(channel = %ch, error = %e, "cannot renew the hold of an ingress channel");
                    held[i] // unknown: keep what we had; the expiry decides
                }
            };
            let changed = match (held[i], now) {
                (false, true) => subscriber.subscribe(std::slice::from_ref(ch)).await,
                (true, false) => subscriber.unsubscribe(std::slice::from_ref(ch)).await,
                _ => Ok(()),
            };
            match changed {
                Ok(()) if held[i] != now => {
                    held[i] = now;
                    tracing::info!(node = %c.node, channel = %ch, holding = now, "redis ingress channel");
                }
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(channel = %ch, error = %e, "cannot (un)subscribe an ingress channel")
                }
            }
        }
        c.metrics
            .ingress_held
            .store(held.iter().filter(|h| **h).count() as u64, Relaxed);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(heartbeat::interval(&c)) => {}
        }
    }
    let release = Script::new(RELEASE);
    for (ch, _) in channels.iter().zip(&held).filter(|(_, h)| **h) {
        let mut conn = c.conn.clone();
        let mut inv = release.key(hold_key(&c, ch));
        inv.arg(&c.node);
        let _ = c.call(inv.invoke_async::<i64>(&mut conn)).await;
    }
}

fn hold_key(c: &Cluster, channel: &str) -> String {
    format!("{}:ingress:{channel}", c.prefix)
}

async fn take(c: &Cluster, hold: &Script, channel: &str) -> Result<bool, ClusterError> {
    let mut conn = c.conn.clone();
    let mut inv = hold.key(hold_key(c, channel));
    inv.arg(&c.node).arg(c.node_ttl.as_millis() as u64);
    let n: i64 = c.call(inv.invoke_async(&mut conn)).await?;
    Ok(n == 1)
}
