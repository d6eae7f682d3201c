//! The polling → WebSocket upgrade: a WebSocket request carrying a session id, the
//! `2probe`/`3probe` exchange, a noop releasing the pending poll, then `5`, after which
//! the WebSocket takes the outbound queue over.

use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::OpCode;
use hyper::body::Incoming;
use hyper::Request;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use std::sync::atomic::Ordering;

use super::{websocket, EioSession, Env, Transport};
use crate::hub::{queue, Outbound};
use crate::protocol::close;
use crate::transport::websocket::lazy::LazyReader;
use crate::transport::websocket::CLOSE_WAIT;
use crate::transport::ConnSlot;
use crate::web::HttpResponse;

/// How long a WebSocket upgrade may take between its probe and its upgrade packet.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// A WebSocket request carrying a session id: the upgrade of a polling session.
pub fn upgrade(
    mut req: Request<Incoming>,
    env: Arc<Env>,
    s: Arc<EioSession>,
    slot: Arc<ConnSlot>,
) -> HttpResponse {
    // One upgrade at a time, and none once upgraded: a second WebSocket is accepted and
    // closed at once, as the reference server does (never two racing for one queue).
    let first =
        s.transport() == Transport::Polling && !s.upgrade_claimed.swap(true, Ordering::AcqRel);
    let (resp, fut) = match crate::transport::websocket::accept(&mut req) {
        Ok(x) => x,
        Err(resp) => return *resp,
    };
    let tracker = env.tracker.clone();
    tracker.spawn(async move {
        let _slot = slot;
        let ws = match fut.await {
            Ok(ws) => ws.into_inner(),
            Err(e) => {
                tracing::debug!(error = %e, "engine.io upgrade failed");
                if first {
                    s.upgrade_claimed.store(false, Ordering::Release);
                }
                return;
            }
        };
        if !first {
            let mut ws = ws;
            let bye = crate::protocol::frame::close(close::NORMAL, "");
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                ws.write_all(&bye).await?;
                ws.shutdown().await
            })
            .await;
            return;
        }
        websocket::run(ws, s.clone(), env, true).await;
        // An abandoned probe leaves the session on polling, free to upgrade again.
        s.upgrade_claimed.store(false, Ordering::Release);
    });
    resp
}

/// The probe exchange: `2probe` → `3probe`, then the client pauses polling and sends `5`.
/// `false` (the session stays on polling) when it does not complete in time.
pub async fn probe<R, W>(rd: &mut LazyReader<R>, w: &mut W, s: &EioSession) -> bool
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let ok = tokio::time::timeout(UPGRADE_TIMEOUT, async {
        let mut probed = false;
        loop {
            let f = match rd.read_frame().await {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(sid = %s.sid, error = %e, "websocket upgrade: read failed");
                    return None;
                }
            };
            tracing::trace!(sid = %s.sid, opcode = ?f.opcode, payload = ?String::from_utf8_lossy(&f.payload), "upgrade frame");
            if f.opcode != OpCode::Text {
                return None;
            }
            match (&*f.payload, probed) {
                (b"2probe", _) => {
                    let pong = crate::protocol::frame::text(b"3probe");
                    w.write_all(&pong).await.ok()?;
                    w.flush().await.ok()?;
                    if !probed {
                        probed = true;
                        s.set_transport(Transport::Upgrading);
                        s.upgrade.notify_waiters();
                    }
                }
                (b"5", true) => return Some(()),
                _ => return None,
            }
        }
    })
    .await;
    if !matches!(ok, Ok(Some(()))) {
        // A failed upgrade leaves the session on polling.
        if s.transport() == Transport::Upgrading {
            s.set_transport(Transport::Polling);
        }
        tracing::debug!(sid = %s.sid, "websocket upgrade abandoned");
        return false;
    }
    s.set_transport(Transport::WebSocket);
    true
}

/// Take the outbound queue over from polling (a poll being answered gives it back within
/// moments); `None` when it does not come back in time or the session ended.
pub async fn take_queue(s: &EioSession) -> Option<queue::Receiver<Outbound>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(rx) = s.take_rx() {
            return Some(rx);
        }
        if Instant::now() > deadline || s.ended.is_cancelled() {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
