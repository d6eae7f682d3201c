//! The one-node broker: publishing is delivering here, through the registered handler;
//! room history is kept in the embedded store ([`HistoryStore`]).
//!
//! Ordering: a publication kept in history takes the locks of its rooms (a fixed set of
//! shards, hashed by tenant and room, taken in ascending order so two multi-room
//! publications cannot deadlock), gets its offset, is appended and delivered, and only
//! then releases them. A recovering connection takes its room's lock to attach and
//! replay, so no publication slips in between. These are std mutexes held across sled
//! writes: sled inserts are memory operations (durability is the committer's flush,
//! outside any lock), and nothing here awaits while holding them. Publications without
//! history take no lock at all.

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use dashmap::DashMap;

use super::{
    Broker, BrokerError, HistoryOptions, Publication, PublicationHandler, Published, RecoverFrom,
    Recovery, RecoverySink,
};
use crate::hub::Target;
use crate::protocol::StreamPosition;
use crate::store::{HistoryStore, StoreError};

/// Lock shards for room history (rooms hash onto them; collisions only serialise).
const SHARDS: usize = 64;

/// The in-memory broker of a single node.
pub struct MemoryBroker {
    handler: OnceLock<Arc<dyn PublicationHandler>>,
    history: Arc<dyn HistoryStore>,
    /// Each tenant's history epoch, read from the store once.
    epochs: DashMap<Arc<str>, String>,
    locks: Box<[Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

impl MemoryBroker {
    /// A broker keeping room history in `history`.
    pub fn new(history: Arc<dyn HistoryStore>) -> Self {
        MemoryBroker {
            handler: OnceLock::new(),
            history,
            epochs: DashMap::new(),
            locks: (0..SHARDS).map(|_| Mutex::new(())).collect(),
            hasher: Default::default(),
        }
    }

    fn handler(&self) -> Result<&Arc<dyn PublicationHandler>, BrokerError> {
        self.handler.get().ok_or(BrokerError::NoHandler)
    }

    fn shard(&self, tenant: &str, room: &str) -> usize {
        (self.hasher.hash_one((tenant, room)) % SHARDS as u64) as usize
    }

    /// Lock the shards of `rooms`, in ascending order, each once.
    fn lock_rooms(&self, tenant: &str, rooms: &[String]) -> Vec<MutexGuard<'_, ()>> {
        let mut shards: Vec<usize> = rooms.iter().map(|r| self.shard(tenant, r)).collect();
        shards.sort_unstable();
        shards.dedup();
        shards
            .into_iter()
            // A poisoned lock guards no data: a panic elsewhere leaves nothing half-done here.
            .map(|i| self.locks[i].lock().unwrap_or_else(|p| p.into_inner()))
            .collect()
    }

    fn epoch(&self, tenant: &Arc<str>) -> Result<String, StoreError> {
        if let Some(e) = self.epochs.get(tenant) {
            return Ok(e.clone());
        }
        let e = self.history.history_epoch(tenant)?;
        Ok(self.epochs.entry(tenant.clone()).or_insert(e).clone())
    }

    /// Give `p` the next position and append it to each room's history.
    fn append(
        &self,
        p: &Publication,
        rooms: &[String],
        max: usize,
    ) -> Result<StreamPosition, StoreError> {
        let epoch = self.epoch(&p.tenant)?;
        let offset = self.history.history_offset()?;
        for r in rooms {
            self.history
                .history_append(&p.tenant, r, offset, &p.message, max)?;
        }
        Ok(StreamPosition { epoch, offset })
    }
}

#[async_trait::async_trait]
impl Broker for MemoryBroker {
    fn register_handler(&self, handler: Arc<dyn PublicationHandler>) {
        if self.handler.set(handler).is_err() {
            tracing::error!("a second publication handler was registered: ignored");
        }
    }

    async fn publish(
        &self,
        mut p: Publication,
        history: Option<HistoryOptions>,
    ) -> Result<Published, BrokerError> {
        let handler = self.handler()?;
        let (Some(h), Target::Rooms(rooms)) = (history, &p.target) else {
            let delivered = handler.handle_publication(p);
            return Ok(Published {
                position: None,
                delivered,
            });
        };
        let _order = self.lock_rooms(&p.tenant, rooms);
        match self.append(&p, rooms, h.max) {
            Ok(pos) => p.message.position = Some(pos),
            // As before the seam: the message still goes out, without a position.
            Err(e) => {
                tracing::error!(tenant = %p.tenant, error = %e, "room history append failed; delivering without an offset")
            }
        }
        let position = p.message.position.clone();
        let delivered = handler.handle_publication(p);
        Ok(Published {
            position,
            delivered,
        })
    }

    async fn recover(
        &self,
        from: RecoverFrom<'_>,
        sink: &dyn RecoverySink,
    ) -> Result<Recovery, BrokerError> {
        let tenant: Arc<str> = Arc::from(from.tenant);
        let epoch = self.epoch(&tenant);
        let _order = self.lock_rooms(from.tenant, std::slice::from_ref(&from.room.to_owned()));
        if let Err(e) = sink.attach() {
            return Ok(Recovery::NotJoined(e));
        }
        let epoch = match epoch {
            Ok(e) => e,
            Err(e) => return Ok(Recovery::Unrecoverable(format!("history unavailable: {e}"))),
        };
        if from.since.epoch != epoch {
            return Ok(Recovery::Unrecoverable("epoch changed".into()));
        }
        let entries =
            match self
                .history
                .history_since(from.tenant, from.room, from.since.offset, from.ttl)
            {
                Ok(Some(entries)) => entries,
                Ok(None) => return Ok(Recovery::Unrecoverable("too old".into())),
                Err(e) => return Ok(Recovery::Unrecoverable(format!("history unavailable: {e}"))),
            };
        let n = entries.len();
        for (offset, mut m) in entries {
            m.position = Some(StreamPosition {
                epoch: epoch.clone(),
                offset,
            });
            sink.replay(m);
        }
        Ok(Recovery::Replayed(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::JoinError;
    use crate::protocol::Message;
    use crate::store::sled::SledStore;
    use serde_json::json;
    use std::time::Duration;

    /// Records what it is handed.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Publication>>);

    impl PublicationHandler for Recorder {
        fn handle_publication(&self, p: Publication) -> usize {
            let mut v = self.0.lock().unwrap();
            v.push(p);
            v.len()
        }

        fn handle_part(&self, p: Publication, _part: usize) -> usize {
            self.handle_publication(p)
        }
    }

    #[derive(Default)]
    struct Sink {
        attached: Mutex<bool>,
        replayed: Mutex<Vec<Message>>,
    }

    impl RecoverySink for Sink {
        fn attach(&self) -> Result<(), JoinError> {
            *self.attached.lock().unwrap() = true;
            Ok(())
        }
        fn replay(&self, m: Message) {
            self.replayed.lock().unwrap().push(m);
        }
    }

    fn publication(room: &str, i: i64) -> Publication {
        Publication {
            tenant: Arc::from("t"),
            target: Target::Rooms(vec![room.into()]),
            message: Message::data(json!(i)),
            exclude: None,
        }
    }

    #[tokio::test]
    async fn history_positions_come_from_the_broker_and_recovery_replays_exactly_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        let broker = MemoryBroker::new(Arc::new(SledStore::open(dir.path()).unwrap()));
        let e = broker.publish(publication("r", 0), None).await.unwrap_err();
        assert!(matches!(e, BrokerError::NoHandler), "{e}");
        let seen = Arc::new(Recorder::default());
        broker.register_handler(seen.clone());

        let keep = Some(HistoryOptions {
            max: 10,
            ttl: Duration::from_secs(60),
        });
        let mut positions = Vec::new();
        for i in 0..4 {
            let out = broker.publish(publication("r", i), keep).await.unwrap();
            positions.push(out.position.expect("kept in history"));
        }
        let plain = broker.publish(publication("r", 9), None).await.unwrap();
        assert_eq!(plain.position, None, "no history asked, no position");
        assert!(positions.windows(2).all(|w| w[0].offset < w[1].offset));
        assert!(positions.iter().all(|p| p.epoch == positions[0].epoch));
        {
            let delivered = seen.0.lock().unwrap();
            assert_eq!(delivered.len(), 5);
            assert_eq!(delivered[1].message.position.as_ref(), Some(&positions[1]));
        }

        let day = Duration::from_secs(86_400);
        let sink = Sink::default();
        let from = RecoverFrom {
            tenant: "t",
            room: "r",
            since: &positions[1],
            ttl: day,
        };
        assert_eq!(
            broker.recover(from, &sink).await.unwrap(),
            Recovery::Replayed(2)
        );
        assert!(*sink.attached.lock().unwrap());
        {
            let replayed = sink.replayed.lock().unwrap();
            assert_eq!(
                replayed.iter().map(|m| m.data.clone()).collect::<Vec<_>>(),
                [json!(2), json!(3)]
            );
            assert_eq!(replayed[0].position.as_ref(), Some(&positions[2]));
        }

        let stranger = StreamPosition {
            epoch: "other".into(),
            offset: 1,
        };
        let sink = Sink::default();
        let from = RecoverFrom {
            since: &stranger,
            ..from
        };
        assert_eq!(
            broker.recover(from, &sink).await.unwrap(),
            Recovery::Unrecoverable("epoch changed".into())
        );
        assert!(*sink.attached.lock().unwrap(), "attached all the same");
    }
}
