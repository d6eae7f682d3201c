//! Room history in the cluster's Redis, kept by the publishing script itself.
//!
//! Keys (prefix `P`, tenant `T`):
//! - `P:t:T:hist` hash: `epoch` (made once, with the first publication kept) and
//!   `offset` (the tenant's counter; every publication kept takes the next one);
//! - `P:t:T:h:<room>` sorted set scored by offset, each member
//!   `<offset> <stored ms> <publication JSON>`, trimmed to `history_max` entries and
//!   expiring `history_ttl_ms` after the room's last publication;
//! - `P:t:T:hm:<room>` hash: `trimmed` (the highest offset trimmed away) and `last`
//!   (the room's last offset), so that a gap can be told from "nothing happened" after
//!   the entries themselves are gone; it expires [`MARKER_SLACK`] after the entries.
//!
//! One Lua script takes the offset, appends to every room, and `PUBLISH`es to every
//! room's channel with the position in the payload's first line, so the order of
//! offsets and the order of delivery on each channel are the same. If the `hist` hash is
//! lost (a Redis without persistence restarted), the next publication makes a new epoch:
//! clients holding an old position are told they cannot recover.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::{BrokerError, Publication};
use crate::cluster::{ChannelKind, Cluster, ClusterError};
use crate::hub::Target;
use crate::protocol::{Message, StreamPosition};

/// How long a room's trim marker outlives its entries.
pub const MARKER_SLACK: Duration = Duration::from_secs(7 * 86_400);

/// Append and publish. `KEYS`: `hist`, then each room's entries, then each room's
/// marker. `ARGV`: epoch candidate, origin, publication JSON, max, entries ttl ms,
/// marker ttl ms, then each room's channel. Returns `{epoch, offset}`.
const APPEND: &str = r#"
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = (#KEYS - 1) / 2
local max = tonumber(ARGV[4])
for i = 1, n do
  local h, m = KEYS[1 + i], KEYS[1 + n + i]
  redis.call('ZADD', h, offset, offset .. ' ' .. now .. ' ' .. ARGV[3])
  local over = redis.call('ZCARD', h) - max
  if over > 0 then
    local gone = redis.call('ZPOPMIN', h, over)
    local top = tonumber(gone[#gone])
    if top > tonumber(redis.call('HGET', m, 'trimmed') or '0') then
      redis.call('HSET', m, 'trimmed', top)
    end
  end
  redis.call('HSET', m, 'last', offset)
  redis.call('PEXPIRE', h, ARGV[5])
  redis.call('PEXPIRE', m, ARGV[6])
end
local payload = ARGV[2] .. ' ' .. epoch .. ':' .. offset .. '\n' .. ARGV[3]
for i = 7, #ARGV do
  redis.call('PUBLISH', ARGV[i], payload)
end
return {epoch, offset}
"#;

/// A room's entries after an offset, then a barrier published to the reading node.
/// `KEYS`: `hist`, entries, marker. `ARGV`: after, ttl ms, the node's channel, the
/// barrier's id. Returns `{epoch or '', complete (1/0), members}`: not complete when an
/// entry after `after` was trimmed or has expired.
const SINCE: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch') or ''
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local after, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local complete = 1
if tonumber(redis.call('HGET', KEYS[3], 'trimmed') or '0') > after then complete = 0 end
local out = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf')) do
  local at = tonumber(string.match(m, '^%d+ (%d+) '))
  if at == nil or at + ttl < now then complete = 0 else out[#out + 1] = m end
end
if #out == 0 and tonumber(redis.call('HGET', KEYS[3], 'last') or '0') > after then
  complete = 0
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return {epoch, complete, out}
"#;

/// What [`RedisHistory::since`] found.
#[derive(Debug)]
pub enum Gap {
    /// The tenant's history has another epoch (or none) than the client's position.
    EpochChanged,
    /// Some of what came after the position is gone (trimmed or expired).
    TooOld,
    /// Everything after the position, oldest first, each with its position.
    Entries(Vec<Message>),
}

/// The cluster's room history.
pub struct RedisHistory {
    cluster: Arc<Cluster>,
    append: Script,
    since: Script,
}

impl RedisHistory {
    /// History in `cluster`'s Redis.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        RedisHistory {
            cluster,
            append: Script::new(APPEND),
            since: Script::new(SINCE),
        }
    }

    /// Keep `p` (to `rooms`) in each room's history and publish it with its position;
    /// `payload` is the publication's JSON.
    pub async fn publish(
        &self,
        p: &Publication,
        rooms: &[String],
        payload: &[u8],
        max: usize,
        ttl: Duration,
    ) -> Result<StreamPosition, ClusterError> {
        let c = &self.cluster;
        let mut inv = self.append.key(c.key(&p.tenant, "hist"));
        for r in rooms {
            inv.key(c.key(&p.tenant, &format!("h:{r}")));
        }
        for r in rooms {
            inv.key(c.key(&p.tenant, &format!("hm:{r}")));
        }
        let ttl_ms = ttl.as_millis().max(1) as u64;
        inv.arg(format!("{:016x}", rand::random::<u64>()))
            .arg(&c.node)
            .arg(payload)
            .arg(max)
            .arg(ttl_ms)
            .arg(ttl_ms + MARKER_SLACK.as_millis() as u64);
        for r in rooms {
            inv.arg(c.channel(&p.tenant, Some((ChannelKind::Room, r))));
        }
        let mut conn = c.conn.clone();
        let (epoch, offset): (String, u64) = c.call(inv.invoke_async(&mut conn)).await?;
        Ok(StreamPosition { epoch, offset })
    }

    /// `room`'s history after `since`, skipping nothing: the entries, or why not; then
    /// publish `barrier` to this node's channel.
    pub async fn since(
        &self,
        tenant: &str,
        room: &str,
        since: &StreamPosition,
        ttl: Duration,
        barrier: u64,
    ) -> Result<Gap, BrokerError> {
        let c = &self.cluster;
        let mut inv = self.since.key(c.key(tenant, "hist"));
        inv.key(c.key(tenant, &format!("h:{room}")))
            .key(c.key(tenant, &format!("hm:{room}")))
            .arg(since.offset)
            .arg(ttl.as_millis() as u64)
            .arg(c.node_channel())
            .arg(barrier);
        let mut conn = c.conn.clone();
        let (epoch, complete, members): (String, u8, Vec<Vec<u8>>) =
            c.call(inv.invoke_async(&mut conn)).await?;
        if epoch != since.epoch {
            return Ok(Gap::EpochChanged);
        }
        if complete != 1 {
            return Ok(Gap::TooOld);
        }
        let mut out = Vec::with_capacity(members.len());
        for m in members {
            let (offset, p) = parse_entry(&m)?;
            let mut message = p.message;
            message.position = Some(StreamPosition {
                epoch: epoch.clone(),
                offset,
            });
            out.push(message);
        }
        Ok(Gap::Entries(out))
    }
}

/// `<offset> <stored ms> <publication JSON>` → the offset and the publication.
pub(crate) fn parse_entry(m: &[u8]) -> Result<(u64, Publication), BrokerError> {
    let bad = || BrokerError::Codec("malformed room-history entry in redis".into());
    let mut parts = m.splitn(3, |&b| b == b' ');
    let offset = parts
        .next()
        .and_then(|o| std::str::from_utf8(o).ok())
        .and_then(|o| o.parse().ok())
        .ok_or_else(bad)?;
    let _stored = parts.next().ok_or_else(bad)?;
    let p = Publication::decode(parts.next().ok_or_else(bad)?)?;
    match p.target {
        Target::Rooms(_) => Ok((offset, p)),
        _ => Err(bad()),
    }
}

/// What follows the origin node on a payload's first line.
#[derive(Debug, PartialEq)]
pub enum Tag {
    /// A publication.
    Plain,
    /// A publication kept in room history, at this position.
    Position(StreamPosition),
    /// A command for whichever node holds a connection ([`COMMAND`]).
    Command,
}

/// The tag of a command payload: `<origin> cmd`.
pub const COMMAND: &str = "cmd";

/// The first line of a payload: `<origin>`, `<origin> <epoch>:<offset>` or
/// `<origin> cmd`.
pub fn parse_origin(line: &[u8]) -> Option<(&[u8], Tag)> {
    match line.iter().position(|&b| b == b' ') {
        None => Some((line, Tag::Plain)),
        Some(i) => {
            let tag = std::str::from_utf8(&line[i + 1..]).ok()?;
            let tag = match tag {
                COMMAND => Tag::Command,
                pos => Tag::Position(StreamPosition::parse(pos)?),
            };
            Some((&line[..i], tag))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_and_origin_lines_parse_or_are_refused() {
        let p = Publication {
            tenant: Arc::from("t"),
            target: Target::Rooms(vec!["r".into()]),
            message: Message::data(json!([1])),
            exclude: None,
        };
        let mut m = b"7 1700000000000 ".to_vec();
        m.extend_from_slice(&p.encode().unwrap());
        let (offset, back) = parse_entry(&m).unwrap();
        assert_eq!((offset, back), (7, p.clone()));
        let mut user = b"7 1 ".to_vec();
        user.extend_from_slice(
            &Publication {
                target: Target::User("u".into()),
                ..p
            }
            .encode()
            .unwrap(),
        );
        for bad in [&b""[..], b"7", b"x 1 {}", b"7 1 not-json", &user] {
            assert!(parse_entry(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_origin(b"n1.ab"), Some((&b"n1.ab"[..], Tag::Plain)));
        assert_eq!(parse_origin(b"n1 cmd"), Some((&b"n1"[..], Tag::Command)));
        let (o, tag) = parse_origin(b"n1 e:9").unwrap();
        let pos = StreamPosition {
            epoch: "e".into(),
            offset: 9,
        };
        assert_eq!((o, tag), (&b"n1"[..], Tag::Position(pos)));
        assert_eq!(parse_origin(b"n1 e:x"), None);
        assert_eq!(parse_origin(b"n1 "), None);
    }
}
