//! Engine.IO over WebSocket: the shared read loop hands each message to the session's
//! driver as a packet; the writer frames each queued packet record as a WebSocket frame.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::{upgrade, EioSession, Env, Event};
use crate::hub::Link;
use crate::metrics::Metrics;
use crate::protocol::close;
use crate::protocol::engineio::EioIn;
use crate::transport::websocket::lazy::LazyReader;
use crate::transport::websocket::read::{read_loop, MessageSink, ReadOpts};
use crate::transport::websocket::writer::{self, Framing};
use crate::transport::websocket::CLOSE_WAIT;
use crate::transport::End;

/// Forwards a WebSocket's messages to the session's driver.
struct EngineSink {
    tx: tokio::sync::mpsc::Sender<Event>,
    v3: bool,
    metrics: Arc<Metrics>,
    link: Arc<Link>,
}

impl MessageSink for EngineSink {
    async fn message(&mut self, binary: bool, payload: Vec<u8>) -> Option<End> {
        let packet = if binary {
            if self.v3 {
                // Engine.IO v3 binary frames start with the packet type (4, message).
                match payload.split_first() {
                    Some((4, rest)) => EioIn::Binary(rest.to_vec()),
                    _ => {
                        Metrics::inc(&self.metrics.protocol_errors);
                        self.link.close_as(close::BINARY_NOT_MESSAGE);
                        return Some(End::new(
                            Some(close::BINARY_NOT_MESSAGE.code),
                            "bad binary frame",
                        ));
                    }
                }
            } else {
                EioIn::Binary(payload)
            }
        } else {
            match String::from_utf8(payload) {
                Ok(t) => EioIn::Text(t),
                Err(_) => {
                    Metrics::inc(&self.metrics.protocol_errors);
                    self.link.close_as(close::INVALID_UTF8);
                    return Some(End::closed(close::INVALID_UTF8));
                }
            }
        };
        if self.tx.send(Event::Packet(packet)).await.is_err() {
            return Some(End::new(None, "session ended"));
        }
        None
    }
}

/// Run a session's WebSocket: for an upgrade, the probe exchange first; then the writer
/// (which takes the outbound queue over from polling) and the read loop.
pub async fn run<S>(io: S, s: Arc<EioSession>, env: Arc<Env>, probe: bool)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, mut w) = tokio::io::split(io);
    let mut rd = LazyReader::new(r, env.settings.max_message);
    // Boxed: what runs once at the start need not be part of the state every open
    // connection carries (idle memory per connection is a goal; see docs/BENCHMARKS.md).
    if probe && !Box::pin(upgrade::probe(&mut rd, &mut w, &s)).await {
        return;
    }
    let Some(rx) = Box::pin(upgrade::take_queue(&s)).await else {
        s.transport_closed("transport busy").await;
        return;
    };
    let metrics = env.metrics.clone();
    let writer = env.tracker.spawn(writer::run_framed(
        w,
        rx,
        s.link.clone(),
        metrics.clone(),
        Framing::EngineIo { v3: s.v3 },
    ));
    let opts = ReadOpts {
        idle: None, // the Engine.IO heartbeat watches liveness
        ping: None,
        auth: None,
        auth_notice: None,
        max_message: env.settings.max_message,
    };
    let mut sink = EngineSink {
        tx: s.inbound.clone(),
        v3: s.v3,
        metrics: metrics.clone(),
        link: s.link.clone(),
    };
    let end = Box::pin(read_loop(&mut rd, &s.link, opts, &metrics, &mut sink)).await;
    let _ = s.inbound.send(Event::TransportClosed(end)).await;
    let abort = writer.abort_handle();
    if !s.link.is_closing() && !s.link.is_killed() {
        s.link.abort(close::NORMAL);
    }
    if tokio::time::timeout(CLOSE_WAIT, writer).await.is_err() {
        abort.abort();
    }
}
