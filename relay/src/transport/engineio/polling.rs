//! HTTP long-polling: a GET takes what is queued (waiting for something), a POST brings
//! the client's packets.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::Request;

use tokio_util::task::TaskTracker;

use super::{eio_error, poll_response, EioSession, Event, Sessions, Settings, Transport};
use crate::protocol::engineio::{decode_poll, text_record, EioIn};
use crate::transport::drain::{Drain, Piece, BATCH};
use crate::transport::End;
use crate::web::{set_header, text_response, HttpResponse};

/// How long a poll during an upgrade waits for its outcome.
const UPGRADE_WAIT: Duration = Duration::from_millis(50);

/// A long-poll: answer with everything queued, waiting for at least one packet (or an
/// upgrade, which answers with a noop, or the end of the session, which answers `1`).
pub async fn poll(s: Arc<EioSession>) -> HttpResponse {
    if s.transport() == Transport::WebSocket {
        return eio_error(3, "Bad request");
    }
    if s.final_poll.load(std::sync::atomic::Ordering::Acquire) {
        // The client closed the session and its last poll was answered: it is gone.
        return eio_error(1, "Session ID unknown");
    }
    let upgrading = s.transport() == Transport::Upgrading
        || s.upgrade_claimed.load(std::sync::atomic::Ordering::Acquire);
    if upgrading {
        // A WebSocket is upgrading the session (or open for it, its probe not yet read)
        // and the client polls on: a poll after the upgrade completes is refused, as every
        // poll after an upgrade; so wait a moment for the outcome (a long-poll waits
        // anyway), then carry on as usual: a poll the client sent before it saw the
        // probe's answer is answered soon (a noop when nothing is queued) so that it can
        // pause polling.
        let until = tokio::time::Instant::now() + UPGRADE_WAIT;
        while s.transport() != Transport::WebSocket && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if s.transport() == Transport::WebSocket {
            return eio_error(3, "Bad request");
        }
    }
    let Some(mut rx) = s.take_rx() else {
        // Engine.IO allows one pending poll per session: a second one is refused and,
        // as the reference server does, ends the session (the first poll answers `1`).
        if s.transport() == Transport::Polling {
            s.transport_closed("a second poll while one was pending")
                .await;
        }
        return eio_error(3, "Bad request");
    };
    let upgrade = s.upgrade.notified();
    tokio::pin!(upgrade);
    upgrade.as_mut().enable();
    let mut batch = Vec::new();
    if s.transport() == Transport::Polling && !s.ended.is_cancelled() {
        tokio::select! {
            _ = rx.recv_many(&mut batch, BATCH) => {}
            _ = &mut upgrade => {}
            _ = s.ended.cancelled() => {}
        }
    }
    // Take whatever else is ready without waiting.
    while let Some(item) = rx.try_recv() {
        batch.push(item);
    }
    s.put_rx(rx);
    let (mut drain, _) = Drain::new(&s.link, &mut batch);
    // Control frames are WebSocket's: polling has none to send.
    let mut items: Vec<Bytes> = drain
        .by_ref()
        .filter_map(|p| match p {
            Piece::Frame(b) => Some(b),
            Piece::Control(_) | Piece::Close(_) => None,
        })
        .collect();
    let closed = drain.closed();
    let written = drain.take_written();
    drop(drain);
    if !closed && items.is_empty() && s.ended.is_cancelled() && s.client_closed() {
        // The client closed the session itself: its pending poll gets a noop.
        items.push(text_record("6"));
        s.final_poll
            .store(true, std::sync::atomic::Ordering::Release);
        s.final_polled.notify_one();
    } else if closed || (items.is_empty() && s.ended.is_cancelled()) {
        items.push(text_record("1"));
        // The client learns of the close now: end the session if the driver has not yet.
        let _ = s
            .inbound
            .try_send(Event::TransportClosed(End::new(None, "closed by server")));
    } else if items.is_empty() {
        items.push(text_record("6"));
    }
    let r = poll_response(items.iter().map(|b| &b[..]), s.v3, s.b64);
    // The response carries everything queued before these: as written as polling gets.
    written.into_iter().for_each(|f| f());
    r
}

/// A polling POST: packets from the client. The body must arrive within the body
/// timeout (408 otherwise, like HTTP ingress) and each packet fit the largest message
/// (`maxPayload`, as on WebSocket; 413 and the session ends otherwise).
pub async fn post(req: Request<Incoming>, s: Arc<EioSession>, settings: &Settings) -> HttpResponse {
    if s.transport() == Transport::WebSocket {
        return eio_error(3, "Bad request");
    }
    let binary = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/octet-stream"));
    let collect = Limited::new(req.into_body(), settings.max_body).collect();
    let body = match tokio::time::timeout(settings.body_timeout, collect).await {
        Err(_) => return text_response(408, "request body not received in time\n"),
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                s.transport_closed("payload too large").await;
                return text_response(413, "payload too large\n");
            }
            return text_response(400, "body read failed\n");
        }
    };
    let packets = match decode_poll(&body, s.v3, binary) {
        Ok(p) => p,
        Err(e) => {
            s.transport_closed(&format!("malformed polling payload: {e}"))
                .await;
            return eio_error(3, "Bad request");
        }
    };
    let size = |p: &EioIn| match p {
        EioIn::Text(t) => t.len(),
        EioIn::Binary(b) => b.len(),
    };
    if packets.iter().any(|p| size(p) > settings.max_message) {
        s.transport_closed("message too big").await;
        return text_response(413, "payload too large\n");
    }
    for p in packets {
        if s.inbound.send(Event::Packet(p)).await.is_err() {
            return eio_error(1, "Session ID unknown");
        }
    }
    let mut r = text_response(200, "ok");
    set_header(&mut r, "content-type", "text/html");
    r
}

/// How long a polling session the client closed stays known for its last poll.
const FINAL_POLL_WAIT: Duration = Duration::from_secs(2);

/// The driver ended session `s`: forget it, at once or, when the client closed a polling
/// session with no poll pending, once its next poll has been answered (at most
/// [`FINAL_POLL_WAIT`] later: the session holds its connection place until then).
pub fn forget(sessions: &Arc<Sessions>, s: &Arc<EioSession>, tracker: &TaskTracker) {
    if !awaits_final_poll(s) {
        sessions.remove(&s.sid);
        return;
    }
    let (sessions, s) = (sessions.clone(), s.clone());
    tracker.spawn(async move {
        let answered = s.final_polled.notified();
        if !s.final_poll.load(std::sync::atomic::Ordering::Acquire) {
            let _ = tokio::time::timeout(FINAL_POLL_WAIT, answered).await;
        }
        sessions.remove(&s.sid);
    });
}

/// Polling, the client closed the session and has no poll pending: like the reference
/// server, the session stays known until its next poll is answered (with a noop).
fn awaits_final_poll(s: &EioSession) -> bool {
    s.client_closed()
        && s.transport() == Transport::Polling
        && s.rx.lock().is_ok_and(|g| g.is_some())
}

/// CORS preflight of a browser's polling POST.
pub(super) fn preflight(req: &Request<Incoming>) -> HttpResponse {
    let mut r = text_response(204, "");
    // The methods a browser may try (those the reference server's CORS allows), so that
    // one relay refuses is answered by relay (400, `Bad handshake method`) rather than
    // failing the browser's CORS check.
    set_header(
        &mut r,
        "access-control-allow-methods",
        "GET, HEAD, PUT, PATCH, POST, DELETE, OPTIONS",
    );
    let asked = req
        .headers()
        .get("access-control-request-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("content-type")
        .to_owned();
    set_header(&mut r, "access-control-allow-headers", &asked);
    set_header(&mut r, "access-control-max-age", "86400");
    r
}
