//! The node: tenants, broker and metrics; runs policy actions.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{Broker, Deliver, Publication};
use crate::hub::{ConnHandle, ConnId, Presence, Target};
use crate::metrics::Metrics;
use crate::policy::{Action, ConnInfo, DisconnectInfo};
use crate::protocol::{Message, OutMessage};
use crate::shutdown::Shutdown;
use crate::store::commit::Committer;
use crate::store::{Mailbox, MessageStore};
use crate::tenant::Tenant;
use crate::webhook::{with_param, Call, Webhooks};

/// A connection's lifecycle moments that may call a tenant's webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Identified as a user.
    Login,
    /// An identified connection ended.
    Disconnect,
}

/// What carrying out actions left for the caller.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Executed {
    /// Offline messages written to the store: durable once `committer.durable()` returns.
    pub stored: usize,
    /// Why keeping an offline message failed, if one did.
    pub store_error: Option<String>,
}

/// Everything a running relay shares between its listeners and sessions.
pub struct Node {
    /// Tenants by name.
    pub tenants: HashMap<String, Arc<Tenant>>,
    /// Carries publications (in memory on one node).
    pub broker: Arc<dyn Broker>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Stop signal and task tracker.
    pub shutdown: Shutdown,
    /// Offline messages.
    pub store: Arc<dyn MessageStore>,
    /// Makes stored messages durable (group commit).
    pub committer: Committer,
    /// Outgoing HTTP calls.
    pub webhooks: Webhooks,
    /// Tenants' message logs.
    pub msglog: crate::msglog::MessageLog,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("tenants", &self.tenants.keys())
            .finish()
    }
}

impl Node {
    /// Hand a message for `target` of `tenant` to the broker; returns local deliveries.
    pub fn publish(
        &self,
        tenant: &Tenant,
        target: Target,
        message: Message,
        exclude: Option<ConnId>,
    ) -> usize {
        Metrics::inc(&self.metrics.publications);
        if tenant.config.history_max > 0 {
            if let Target::Rooms(rooms) = &target {
                return self.publish_with_history(tenant, rooms.clone(), message, exclude);
            }
        }
        let p = Publication {
            tenant: tenant.name.clone(),
            target,
            message: Arc::new(OutMessage::new(message)),
            exclude,
        };
        self.broker.publish(p, self)
    }

    /// The tenant's history epoch (read from the store once).
    fn epoch(&self, tenant: &Tenant) -> Result<String, String> {
        if let Some(e) = tenant.history_epoch.get() {
            return Ok(e.clone());
        }
        let e = self.store.history_epoch(&tenant.name)?;
        Ok(tenant.history_epoch.get_or_init(|| e).clone())
    }

    /// A message to rooms with history: one offset for the publication, appended to each
    /// room's history and delivered with the offset, under the tenant's history lock (so
    /// every member receives history messages in offset order).
    fn publish_with_history(
        &self,
        tenant: &Tenant,
        rooms: Vec<String>,
        mut message: Message,
        exclude: Option<ConnId>,
    ) -> usize {
        let _order = tenant.history_lock.lock();
        let stored = self.epoch(tenant).and_then(|epoch| {
            let off = self.store.history_offset()?;
            for r in &rooms {
                self.store.history_append(
                    &tenant.name,
                    r,
                    off,
                    &message,
                    tenant.config.history_max,
                )?;
            }
            Ok(format!("{epoch}:{off}"))
        });
        match stored {
            Ok(tag) => message.offset = Some(tag),
            Err(e) => {
                tracing::error!(tenant = %tenant.name, error = %e, "room history append failed; delivering without an offset")
            }
        }
        let p = Publication {
            tenant: tenant.name.clone(),
            target: Target::Rooms(rooms),
            message: Arc::new(OutMessage::new(message)),
            exclude,
        };
        self.broker.publish(p, self)
    }

    /// Put `h` in `room`: with room history and an offset presented at the handshake,
    /// first replay what the client missed there (or tell it recovery is impossible:
    /// a `recovery` event `{ok: false, room, reason}`); then the room's offline mailbox.
    pub fn join_room(
        &self,
        tenant: &Tenant,
        h: &Arc<ConnHandle>,
        room: &str,
    ) -> Result<(), crate::hub::JoinError> {
        let recover = match tenant.config.history_max {
            0 => None,
            _ => h.state.lock().ok().and_then(|s| s.recover.clone()),
        };
        match recover {
            None => tenant.hub.join(h, room)?,
            Some(tag) => {
                let _order = tenant.history_lock.lock();
                tenant.hub.join(h, room)?;
                self.replay(tenant, h, room, &tag);
            }
        }
        self.deliver_offline(tenant, h, Mailbox::Room(room.to_owned()));
        Ok(())
    }

    fn replay(&self, tenant: &Tenant, h: &ConnHandle, room: &str, tag: &str) {
        let refuse = |reason: &str| {
            Metrics::inc(&self.metrics.history_unrecoverable);
            let m = Message::event(
                "recovery",
                serde_json::json!({"event": "recovery", "ok": false, "room": room, "reason": reason}),
            );
            h.send(h.codec.encode(&m));
        };
        let epoch = match self.epoch(tenant) {
            Ok(e) => e,
            Err(e) => return refuse(&format!("history unavailable: {e}")),
        };
        let after = match tag.split_once(':') {
            Some((e, n)) if e == epoch => match n.parse::<u64>() {
                Ok(n) => n,
                Err(_) => return refuse("malformed offset"),
            },
            Some(_) => return refuse("epoch changed"),
            None => return refuse("malformed offset"),
        };
        let ttl = Duration::from_millis(tenant.config.history_ttl_ms);
        match self.store.history_since(&tenant.name, room, after, ttl) {
            Ok(Some(entries)) => {
                self.metrics
                    .history_replayed
                    .fetch_add(entries.len() as u64, Relaxed);
                for (off, mut m) in entries {
                    m.offset = Some(format!("{epoch}:{off}"));
                    h.send(h.codec.encode(&m));
                }
            }
            Ok(None) => refuse("too old"),
            Err(e) => refuse(&format!("history unavailable: {e}")),
        }
    }

    /// Reload the plugins of every tenant (or of `only`); blocking (compiles).
    /// Returns, per tenant, `{"ok":true,"loaded":...}` or `{"ok":false,"error":...}`.
    pub fn reload_plugins(&self, only: Option<&str>) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for (name, t) in &self.tenants {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let r = match t.policy.reload() {
                None => continue,
                Some(Ok(hash)) => serde_json::json!({"ok": true, "loaded": hash}),
                Some(Err(e)) => serde_json::json!({"ok": false, "error": e}),
            };
            out.insert(name.clone(), r);
        }
        serde_json::Value::Object(out)
    }

    /// What a policy sees of a connection.
    pub fn conn_info(h: &ConnHandle) -> ConnInfo {
        let (user, data) = match h.state.lock() {
            Ok(s) => (s.user.as_ref().map(|u| u.to_string()), s.data.clone()),
            Err(_) => (None, serde_json::Value::Null),
        };
        ConnInfo {
            id: h.id.to_string(),
            user,
            data,
            authenticated: h.is_authenticated(),
            remote: h.remote,
        }
    }

    /// Send `h` what its mailbox (a user's, or a room's to the whole room) holds, in order;
    /// the messages are removed from the store once written to `h`'s socket.
    pub fn deliver_offline(&self, tenant: &Tenant, h: &Arc<ConnHandle>, mailbox: Mailbox) {
        if !tenant.offline_used.load(Relaxed) {
            return;
        }
        let ttl = Duration::from_millis(tenant.config.offline_ttl_ms);
        let (msgs, expired) = match self.store.pending(&tenant.name, &mailbox, ttl) {
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
                    self.publish(tenant, Target::Rooms(vec![r.clone()]), m.message, None);
                }
            }
        }
        let (store, name, metrics) = (
            self.store.clone(),
            tenant.name.clone(),
            self.metrics.clone(),
        );
        h.when_written(Box::new(move || match store.remove(&name, &mailbox, &ids) {
            Ok(()) => {
                metrics.offline_delivered.fetch_add(ids.len() as u64, Relaxed);
            }
            Err(e) => tracing::error!(tenant = %name, error = %e, "removing delivered offline messages failed"),
        }));
    }

    /// A connection ended: forget it, run the disconnect hook and its actions, and call the
    /// disconnect webhook for an identified connection.
    pub async fn disconnected(&self, tenant: &Tenant, h: &ConnHandle, info: &DisconnectInfo) {
        let ci = Self::conn_info(h);
        tenant.hub.unregister(h);
        if ci.user.is_some() {
            self.lifecycle(tenant, Lifecycle::Disconnect, &ci.id);
        }
        match tenant.policy.on_disconnect(&ci, info, &*tenant.hub).await {
            Ok(actions) => {
                self.execute(tenant, None, actions);
            }
            Err(e) => {
                Metrics::inc(&self.metrics.policy_errors);
                tracing::warn!(tenant = %tenant.name, error = %e, "disconnect hook failed");
            }
        }
    }

    /// Call the tenant's lifecycle webhook, if configured (GET with `sid=<conn>`).
    pub fn lifecycle(&self, tenant: &Tenant, moment: Lifecycle, conn: &str) {
        let url = match moment {
            Lifecycle::Login => &tenant.config.login_webhook,
            Lifecycle::Disconnect => &tenant.config.disconnect_webhook,
        };
        let Some(url) = url else { return };
        self.webhook(
            tenant,
            "GET",
            &with_param(url.get_ref(), "sid", conn),
            Vec::new(),
            String::new(),
        );
    }

    /// Queue a webhook call for `tenant`; an invalid call is logged and counted.
    fn webhook(
        &self,
        tenant: &Tenant,
        method: &str,
        url: &str,
        headers: Vec<(String, String)>,
        body: String,
    ) {
        let call = Call::new(
            tenant.name.clone(),
            method,
            url,
            headers,
            bytes::Bytes::from(body),
            Duration::from_millis(tenant.config.webhook_timeout_ms),
            tenant.config.webhook_retries,
        );
        match call {
            Ok(c) => {
                self.webhooks.enqueue(c);
            }
            Err(e) => {
                Metrics::inc(&self.metrics.webhooks_dropped);
                tracing::warn!(tenant = %tenant.name, error = %e, "webhook not made");
            }
        }
    }

    /// `StoreOffline`: deliver now if anyone is online, else keep the message.
    fn store_offline(
        &self,
        tenant: &Tenant,
        user: Option<String>,
        room: Option<String>,
        message: Message,
        out: &mut Executed,
    ) {
        let (mailbox, target, online) = match (user, room) {
            (Some(u), _) => {
                let n = tenant.hub.user_connections(&u).len();
                (Mailbox::User(u.clone()), Target::User(u), n)
            }
            (None, Some(r)) => {
                let n = tenant.hub.room_count(&r);
                (Mailbox::Room(r.clone()), Target::Rooms(vec![r]), n)
            }
            (None, None) => {
                Metrics::inc(&self.metrics.offline_refused);
                out.store_error = Some("store_offline needs a user or a room".into());
                return;
            }
        };
        if online > 0 {
            self.publish(tenant, target, message, None);
            return;
        }
        let size = serde_json::to_vec(&message).map_or(usize::MAX, |v| v.len());
        if size > tenant.config.offline_max_bytes {
            Metrics::inc(&self.metrics.offline_refused);
            out.store_error = Some(format!(
                "offline message of {size} bytes is over offline_max_bytes ({})",
                tenant.config.offline_max_bytes
            ));
            return;
        }
        match self
            .store
            .push(&tenant.name, &mailbox, &message, tenant.config.offline_max)
        {
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

    /// Carry out a policy's actions; `origin` is the connection the hook was about, if any.
    /// Offline messages are written to the store but durable only after
    /// `committer.durable()`; the result says whether any were.
    pub fn execute(
        &self,
        tenant: &Tenant,
        origin: Option<&Arc<ConnHandle>>,
        actions: Vec<Action>,
    ) -> Executed {
        let mut out = Executed::default();
        let resolve = |conn: &Option<String>| -> Option<Arc<ConnHandle>> {
            match conn {
                None => origin.cloned(),
                Some(id) => ConnId::parse(id).and_then(|id| tenant.hub.connection(id)),
            }
        };
        for action in actions {
            match action {
                Action::Reply { message } => match origin {
                    Some(h) => {
                        h.send(h.codec.encode(&message));
                    }
                    None => {
                        tracing::debug!(tenant = %tenant.name, "reply action without a connection: ignored")
                    }
                },
                Action::Emit {
                    target,
                    message,
                    exclude_sender,
                } => {
                    let exclude = if exclude_sender {
                        origin.map(|h| h.id)
                    } else {
                        None
                    };
                    self.publish(tenant, target, message, exclude);
                }
                Action::Join { rooms, conn } => match resolve(&conn) {
                    Some(h) => {
                        for r in &rooms {
                            if let Err(e) = self.join_room(tenant, &h, r) {
                                tracing::debug!(tenant = %tenant.name, conn = %h.id, room = %r, error = ?e, "join refused")
                            }
                        }
                    }
                    None => {
                        tracing::debug!(tenant = %tenant.name, ?conn, "join: no such connection")
                    }
                },
                Action::Leave { rooms, conn } => match resolve(&conn) {
                    Some(h) => rooms.iter().for_each(|r| tenant.hub.leave(&h, r)),
                    None => {
                        tracing::debug!(tenant = %tenant.name, ?conn, "leave: no such connection")
                    }
                },
                Action::SetIdentity { user, data, conn } => match resolve(&conn) {
                    Some(h) => {
                        if let Some(u) = user.as_deref() {
                            tenant.hub.set_user(&h, Some(u));
                        }
                        if let (Some(d), Ok(mut s)) = (data, h.state.lock()) {
                            s.data = d;
                        }
                        h.set_authenticated();
                        if let Some(u) = user {
                            self.lifecycle(tenant, Lifecycle::Login, &h.id.to_string());
                            self.deliver_offline(tenant, &h, Mailbox::User(u));
                        }
                    }
                    None => {
                        tracing::debug!(tenant = %tenant.name, ?conn, "set_identity: no such connection")
                    }
                },
                Action::StoreOffline {
                    user,
                    room,
                    message,
                } => self.store_offline(tenant, user, room, message, &mut out),
                Action::AppendLog { file, line } => {
                    if let Err(e) = self.msglog.append(&tenant.log, &file, line.into_bytes()) {
                        tracing::warn!(tenant = %tenant.name, %file, error = %e, "message log line refused");
                    }
                }
                Action::Webhook {
                    method,
                    url,
                    headers,
                    body,
                } => self.webhook(tenant, &method, &url, headers, body),
                Action::Close { code, reason, conn } => match resolve(&conn) {
                    Some(h) if crate::protocol::frame::valid_close_code(code) => {
                        h.close(code, &reason)
                    }
                    Some(h) => {
                        tracing::warn!(tenant = %tenant.name, code, "policy asked for an invalid close code; closing with 1008");
                        h.close(1008, &reason);
                    }
                    None => {
                        tracing::debug!(tenant = %tenant.name, ?conn, "close: no such connection")
                    }
                },
            }
        }
        out
    }
}

impl Deliver for Node {
    fn deliver(&self, p: &Publication) -> usize {
        self.tenants
            .get(&*p.tenant)
            .map_or(0, |t| t.hub.deliver(&p.target, &p.message, p.exclude))
    }
}
