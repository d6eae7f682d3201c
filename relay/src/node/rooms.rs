//! Rooms and mailboxes: joining a room (replaying missed history through the broker),
//! delivering offline messages, and keeping a message for someone who is not online.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::{Executed, Node};
use crate::broker::{RecoverFrom, Recovery, RecoverySink};
use crate::hub::{ConnHandle, JoinError, Target};
use crate::metrics::Metrics;
use crate::protocol::{Message, StreamPosition};
use crate::store::Mailbox;
use crate::tenant::Tenant;

/// A connection recovering a room: attaching joins it in the hub, replaying sends.
struct Joining<'a> {
    tenant: &'a Tenant,
    h: &'a Arc<ConnHandle>,
    room: &'a str,
    replayed: &'a Metrics,
}

impl RecoverySink for Joining<'_> {
    fn attach(&self) -> Result<(), JoinError> {
        self.tenant.hub.join(self.h, self.room)
    }

    fn replay(&self, message: Message) {
        Metrics::inc(&self.replayed.history_replayed);
        self.h.send(self.h.codec.encode(&message));
    }
}

impl Node {
    /// Put `h` in `room`: with room history and an offset presented at the handshake,
    /// first replay what the client missed there (or tell it recovery is impossible:
    /// a `recovery` event `{ok: false, room, reason}`); then the room's offline mailbox.
    pub async fn join_room(
        &self,
        tenant: &Tenant,
        h: &Arc<ConnHandle>,
        room: &str,
    ) -> Result<(), JoinError> {
        let presented = match tenant.config.history.max {
            0 => None,
            _ => h.state.lock().ok().and_then(|s| s.recover.clone()),
        };
        match presented {
            None => tenant.hub.join(h, room)?,
            Some(text) => self.recover(tenant, h, room, &text).await?,
        }
        self.settle().await;
        self.deliver_offline(tenant, h, Mailbox::Room(room.to_owned()))
            .await;
        Ok(())
    }

    /// Join `room` replaying what came after the position the client presented.
    async fn recover(
        &self,
        tenant: &Tenant,
        h: &Arc<ConnHandle>,
        room: &str,
        presented: &str,
    ) -> Result<(), JoinError> {
        let refuse = |reason: &str| {
            Metrics::inc(&self.metrics.history_unrecoverable);
            let m = Message::event(
                "recovery",
                serde_json::json!({"event": "recovery", "ok": false, "room": room, "reason": reason}),
            );
            h.send(h.codec.encode(&m));
        };
        let Some(since) = StreamPosition::parse(presented) else {
            tenant.hub.join(h, room)?;
            refuse("malformed offset");
            return Ok(());
        };
        let from = RecoverFrom {
            tenant: &tenant.name,
            room,
            since: &since,
            ttl: Duration::from_millis(tenant.config.history.ttl_ms),
        };
        let sink = Joining {
            tenant,
            h,
            room,
            replayed: &self.metrics,
        };
        match self.broker.recover(from, &sink).await {
            Ok(Recovery::Replayed(_)) => Ok(()),
            Ok(Recovery::Unrecoverable(reason)) => {
                refuse(&reason);
                Ok(())
            }
            Ok(Recovery::NotJoined(e)) => Err(e),
            Err(e) => {
                tracing::error!(tenant = %tenant.name, room, error = %e, "history recovery failed");
                tenant.hub.join(h, room)?;
                refuse(&format!("history unavailable: {e}"));
                Ok(())
            }
        }
    }

    /// Send `h` what its mailbox (a user's, or a room's to the whole room) holds, in order;
    /// the messages are removed from the store once written to `h`'s socket.
    pub async fn deliver_offline(&self, tenant: &Tenant, h: &Arc<ConnHandle>, mailbox: Mailbox) {
        if !tenant.offline_used.load(Relaxed) {
            return;
        }
        let ttl = Duration::from_millis(tenant.config.offline.ttl_ms);
        let (msgs, expired) = match self.offline.pending(&tenant.name, &mailbox, ttl).await {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(tenant = %tenant.name, ?mailbox, error = %e, "reading offline messages failed");
                return;
            }
        };
        self.metrics
            .offline_expired
            .fetch_add(expired as u64, Relaxed);
        if msgs.is_empty() {
            return;
        }
        let ids: Vec<u64> = msgs.iter().map(|m| m.id).collect();
        for m in msgs {
            match &mailbox {
                Mailbox::User(_) => {
                    h.send(h.codec.encode(&m.message));
                }
                Mailbox::Room(r) => {
                    let to = Target::Rooms(vec![r.clone()]);
                    if let Err(e) = self.publish(tenant, to, m.message, None).await {
                        tracing::error!(tenant = %tenant.name, room = %r, error = %e, "publishing an offline message failed");
                    }
                }
            }
        }
        let (store, name, metrics, tracker) = (
            self.offline.clone(),
            tenant.name.clone(),
            self.metrics.clone(),
            self.shutdown.tracker.clone(),
        );
        h.when_written(Box::new(move || {
            tracker.spawn(async move {
                match store.remove(&name, &mailbox, &ids).await {
                    Ok(()) => {
                        metrics.offline_delivered.fetch_add(ids.len() as u64, Relaxed);
                    }
                    Err(e) => tracing::error!(tenant = %name, error = %e, "removing delivered offline messages failed"),
                }
            });
        }));
    }

    /// `StoreOffline`: deliver now if anyone is online, else keep the message.
    pub(super) async fn store_offline(
        &self,
        tenant: &Tenant,
        user: Option<String>,
        room: Option<String>,
        message: Message,
        out: &mut Executed,
    ) {
        let (mailbox, target, online) = match (user, room) {
            (Some(u), _) => {
                let n = tenant.presence.user_connections(&u).len();
                (Mailbox::User(u.clone()), Target::User(u), n)
            }
            (None, Some(r)) => {
                let n = tenant.presence.room_count(&r);
                (Mailbox::Room(r.clone()), Target::Rooms(vec![r]), n)
            }
            (None, None) => {
                Metrics::inc(&self.metrics.offline_refused);
                out.store_error = Some("store_offline needs a user or a room".into());
                return;
            }
        };
        if online > 0 {
            if let Err(e) = self.publish(tenant, target, message, None).await {
                tracing::error!(tenant = %tenant.name, error = %e, "publishing failed");
                out.store_error = Some(format!("publish failed: {e}"));
            }
            return;
        }
        let size = serde_json::to_vec(&message).map_or(usize::MAX, |v| v.len());
        if size > tenant.config.offline.max_bytes {
            Metrics::inc(&self.metrics.offline_refused);
            out.store_error = Some(format!(
                "offline message of {size} bytes is over offline_max_bytes ({})",
                tenant.config.offline.max_bytes
            ));
            return;
        }
        let pushed = self
            .offline
            .push(&tenant.name, &mailbox, &message, tenant.config.offline.max)
            .await;
        match pushed {
            Ok(p) => {
                tenant.offline_used.store(true, Relaxed);
                out.stored += 1;
                Metrics::inc(&self.metrics.offline_stored);
                self.metrics
                    .offline_dropped
                    .fetch_add(p.dropped as u64, Relaxed);
            }
            Err(e) => {
                Metrics::inc(&self.metrics.offline_refused);
                tracing::error!(tenant = %tenant.name, ?mailbox, error = %e, "storing an offline message failed");
                out.store_error = Some(format!("store failed: {e}"));
            }
        }
    }
}
