//! Carrying out a policy's actions: one arm per [`Action`], in the order the policy gave.

use std::sync::Arc;

use super::{Lifecycle, Node};
use crate::hub::{ConnHandle, ConnId};
use crate::policy::Action;
use crate::protocol::{close, frame};
use crate::store::Mailbox;
use crate::tenant::Tenant;

/// What carrying out actions left for the caller.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Executed {
    /// Offline messages written to the store: durable once `committer.durable()` returns.
    pub stored: usize,
    /// Why keeping an offline message failed, if one did.
    pub store_error: Option<String>,
    /// Why publishing a message failed, if one did.
    pub publish_error: Option<String>,
}

impl Node {
    /// Carry out a policy's actions; `origin` is the connection the hook was about, if any.
    /// Offline messages are written to the store but durable only after
    /// `committer.durable()`; the result says whether any were.
    pub async fn execute(
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
            if self.cluster.is_some() {
                if let Some(id) = super::delivery::addressed_conn(&action) {
                    if resolve(&Some(id.to_owned())).is_none() {
                        self.forward(tenant, &action).await;
                        continue;
                    }
                }
            }
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
                    let exclude = origin.filter(|_| exclude_sender).map(|h| h.id);
                    if let Err(e) = self.publish(tenant, target, message, exclude).await {
                        let (fault, retryable) = (e.fault(), e.retryable());
                        tracing::error!(tenant = %tenant.name, error = %e, ?fault, retryable, "publishing failed");
                        out.publish_error = Some(e.to_string());
                    }
                }
                Action::Join { rooms, conn } => match resolve(&conn) {
                    Some(h) => {
                        for r in &rooms {
                            if let Err(e) = self.join_room(tenant, &h, r).await {
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
                    Some(h) => self.set_identity(tenant, &h, user, data).await,
                    None => {
                        tracing::debug!(tenant = %tenant.name, ?conn, "set_identity: no such connection")
                    }
                },
                Action::StoreOffline {
                    user,
                    room,
                    message,
                } => {
                    self.store_offline(tenant, user, room, message, &mut out)
                        .await
                }
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
                    Some(h) if frame::valid_close_code(code) => h.disconnect(code, &reason),
                    Some(h) => {
                        tracing::warn!(tenant = %tenant.name, code, "policy asked for an invalid close code; closing with 1008");
                        h.disconnect(close::POLICY_VIOLATION, &reason);
                    }
                    None => {
                        tracing::debug!(tenant = %tenant.name, ?conn, "close: no such connection")
                    }
                },
            }
        }
        out
    }

    /// In a cluster, an action on a connection that is not here goes to the other nodes;
    /// the one holding the connection carries it out.
    async fn forward(&self, tenant: &Tenant, action: &Action) {
        let command = match serde_json::to_vec(action) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(tenant = %tenant.name, error = %e, "cannot encode an action for another node");
                return;
            }
        };
        if let Err(e) = self.broker.command(&tenant.name, command).await {
            tracing::warn!(tenant = %tenant.name, error = %e, "action for a connection on another node not sent");
        }
    }

    /// `SetIdentity`: bind the user, replace the session data, mark authenticated; a new
    /// user gets the login webhook and their offline mailbox.
    async fn set_identity(
        &self,
        tenant: &Tenant,
        h: &Arc<ConnHandle>,
        user: Option<String>,
        data: Option<serde_json::Value>,
    ) {
        if let Some(u) = user.as_deref() {
            tenant.hub.set_user(h, Some(u));
            self.settle().await;
        }
        if let (Some(d), Ok(mut s)) = (data, h.state.lock()) {
            s.data = d;
        }
        h.set_authenticated();
        if let Some(u) = user {
            self.lifecycle(tenant, Lifecycle::Login, &h.id.to_string());
            self.deliver_offline(tenant, h, Mailbox::User(u)).await;
        }
    }
}
