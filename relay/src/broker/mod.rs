//! The broker seam, shaped after centrifuge's: every publication goes through a
//! [`Broker`] and comes back to each node through the [`PublicationHandler`] it
//! registered once at start, so one node and many share one delivery path.
//!
//! Room history lives behind the broker too: when a tenant keeps history, the broker
//! gives a publication its [`StreamPosition`] and appends it, atomically per room, so
//! that the order of offsets and the order of delivery agree; joining a room with a
//! presented position ([`Broker::recover`]) replays what was missed with nothing lost or
//! repeated. [`memory::MemoryBroker`] is the one-node broker on the embedded store;
//! [`redis::RedisBroker`] carries publications between the nodes of a cluster.

pub mod memory;
pub mod redis;
pub(crate) mod redis_history;
mod redis_recovery;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fault::Fault;
use crate::hub::{ConnId, JoinError, Target};
use crate::protocol::{Message, StreamPosition};
use crate::store::StoreError;

pub use memory::MemoryBroker;

/// One message on its way to recipients, as it travels between nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    /// Tenant whose hubs deliver it.
    pub tenant: Arc<str>,
    /// Recipients.
    pub target: Target,
    /// The message; the broker sets its `position` when it keeps it in history.
    pub message: Message,
    /// A connection not to deliver to (the sender, for "emit to others").
    pub exclude: Option<ConnId>,
}

/// A publication's byte form: every field, the position included (which a `Message`'s
/// own serde form leaves out, so that plugins can neither see nor forge it).
#[derive(Serialize, Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    tenant: std::borrow::Cow<'a, str>,
    target: Target,
    message: Message,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    position: Option<StreamPosition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exclude: Option<ConnId>,
}

impl Publication {
    /// The bytes another node decodes with [`Publication::decode`] (JSON).
    pub fn encode(&self) -> Result<Vec<u8>, BrokerError> {
        let env = Envelope {
            tenant: std::borrow::Cow::Borrowed(&self.tenant),
            target: self.target.clone(),
            message: self.message.clone(),
            position: self.message.position.clone(),
            exclude: self.exclude,
        };
        serde_json::to_vec(&env).map_err(|e| BrokerError::Codec(e.to_string()))
    }

    /// Decode what [`Publication::encode`] made; a clear error for anything else.
    pub fn decode(bytes: &[u8]) -> Result<Self, BrokerError> {
        let env: Envelope<'_> =
            serde_json::from_slice(bytes).map_err(|e| BrokerError::Codec(e.to_string()))?;
        let mut message = env.message;
        message.position = env.position;
        Ok(Publication {
            tenant: Arc::from(env.tenant.as_ref()),
            target: env.target,
            message,
            exclude: env.exclude,
        })
    }
}

/// Delivers publications to this node's connections. A node registers one with its
/// broker, once, at start; the broker calls it for every publication that may have
/// recipients here, this node's own included.
pub trait PublicationHandler: Send + Sync + 'static {
    /// Deliver `p` to local recipients; returns how many connections got it.
    fn handle_publication(&self, p: Publication) -> usize;

    /// Deliver the copy of a publication to several rooms that came through the channel
    /// of `rooms[part]`: to that room's members not in an earlier room of the list (who
    /// get that room's copy), so each connection gets it once.
    fn handle_part(&self, p: Publication, part: usize) -> usize;

    /// A command for a connection of `tenant` that may live here (see
    /// [`Broker::command`]): carry it out if the connection is this node's.
    fn handle_command(&self, _tenant: &str, _command: &[u8]) {}
}

/// How a publication is kept in room history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Entries kept per room (older ones are trimmed).
    pub max: usize,
    /// Entries older than this are not recovered (a shared store may drop them).
    pub ttl: Duration,
}

/// What publishing did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// The publication's place in the tenant's history, when it was kept there.
    pub position: Option<StreamPosition>,
    /// Connections of this node that got it (other nodes' are not counted).
    pub delivered: usize,
}

/// A connection recovering a room: what [`Broker::recover`] calls, in this order.
pub trait RecoverySink: Sync {
    /// Start receiving the room's publications (join it on this node).
    fn attach(&self) -> Result<(), JoinError>;
    /// One missed publication, oldest first, each before any newer publication arrives.
    fn replay(&self, message: Message);
}

/// How a recovery ended (the sink was attached unless `NotJoined`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// This many missed publications were replayed (possibly none).
    Replayed(usize),
    /// What was missed cannot be given exactly; the client is told why.
    Unrecoverable(String),
    /// Attaching failed; nothing was replayed.
    NotJoined(JoinError),
}

/// A room to recover, and from where.
#[derive(Debug, Clone, Copy)]
pub struct RecoverFrom<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// Room.
    pub room: &'a str,
    /// The last position the client saw.
    pub since: &'a StreamPosition,
    /// Entries older than this are not recovered.
    pub ttl: Duration,
}

/// Carries publications to every node, this one included.
#[async_trait::async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Register this node's handler; called once, before the first publication.
    fn register_handler(&self, handler: Arc<dyn PublicationHandler>);

    /// Publish `p`. With `history`, a publication to rooms gets the next position of the
    /// tenant's stream and is appended to each room's history first, atomically per room
    /// with its delivery (members receive history in offset order).
    async fn publish(
        &self,
        p: Publication,
        history: Option<HistoryOptions>,
    ) -> Result<Published, BrokerError>;

    /// Send `command` (a policy action on one connection, as JSON) to every other node,
    /// for the one holding the connection. One node has no other node: nothing to do.
    async fn command(&self, _tenant: &str, _command: Vec<u8>) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Attach `sink` to a room and replay what was published there after `from.since`,
    /// with nothing lost or repeated in between. An `Err` means the broker failed before
    /// attaching: the caller joins the room itself and tells the client.
    async fn recover(
        &self,
        from: RecoverFrom<'_>,
        sink: &dyn RecoverySink,
    ) -> Result<Recovery, BrokerError>;
}

/// A broker failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The store behind the broker's history failed.
    #[error("broker history: {0}")]
    Store(#[from] StoreError),
    /// A publication could not be encoded or decoded.
    #[error("publication codec: {0}")]
    Codec(String),
    /// The broker has no handler yet (a start-up ordering bug).
    #[error("the broker has no publication handler registered")]
    NoHandler,
    /// The cluster's Redis did not take the publication (it reached this node only).
    #[error("publication not sent to the cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

impl BrokerError {
    /// Whose fault: a store failure is the store's, the rest ours.
    pub fn fault(&self) -> Fault {
        match self {
            BrokerError::Store(_) => Fault::Store,
            BrokerError::Codec(_) | BrokerError::Cluster(_) => Fault::Broker,
            BrokerError::NoHandler => Fault::Internal,
        }
    }

    /// Whether publishing again may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            BrokerError::Store(e) => e.retryable(),
            BrokerError::Cluster(_) => true,
            BrokerError::Codec(_) | BrokerError::NoHandler => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_publication_round_trips_through_bytes_with_every_field() {
        let mut message = Message::event("news", json!({"a": [1, "two", null]}));
        message.ack = Some(7);
        message.position = Some(StreamPosition {
            epoch: "e1".into(),
            offset: 99,
        });
        let targets = [
            Target::Connection(ConnId::random().to_string()),
            Target::User("ann".into()),
            Target::Rooms(vec!["a".into(), "b".into()]),
            Target::Tenant,
        ];
        for target in targets {
            let p = Publication {
                tenant: Arc::from("t"),
                target,
                message: message.clone(),
                exclude: Some(ConnId::random()),
            };
            let back = Publication::decode(&p.encode().unwrap()).unwrap();
            assert_eq!(back, p);
        }
        let bare = Publication {
            tenant: Arc::from("t"),
            target: Target::Tenant,
            message: Message::data(json!("x")),
            exclude: None,
        };
        assert_eq!(Publication::decode(&bare.encode().unwrap()).unwrap(), bare);
    }

    #[test]
    fn garbage_is_a_clear_decode_error() {
        for bad in [&b""[..], b"{}", b"[1]", b"{\"tenant\":1}"] {
            let e = Publication::decode(bad).unwrap_err();
            assert!(matches!(e, BrokerError::Codec(_)), "{e}");
        }
    }
}
