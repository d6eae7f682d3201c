//! The read loop every WebSocket connection runs (ws-json sessions and Engine.IO's
//! WebSocket transport): fragments, limits, ping/pong, the close handshake, and the
//! idle and authentication deadlines. Complete messages go to a [`MessageSink`].

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{OpCode, WebSocketError};
use tokio::io::AsyncRead;
use tokio::time::Instant;

use super::lazy::{LazyReader, OwnedFrame};
use super::CLOSE_WAIT;
use crate::hub::{ConnHandle, Link, Watcher};
use crate::metrics::Metrics;
use crate::protocol::close::{self, Close};
use crate::protocol::frame;
use crate::transport::End;

/// What the read loop enforces besides the WebSocket protocol itself.
pub struct ReadOpts {
    /// Close (1001) after this much silence.
    pub idle: Option<Duration>,
    /// Send a WebSocket ping after this much silence.
    pub ping: Option<Duration>,
    /// Close (1008) at this instant unless this connection is authenticated by then.
    pub auth: Option<(Instant, Arc<ConnHandle>)>,
    /// Sent just before that close.
    pub auth_notice: Option<Bytes>,
    /// Largest message, all fragments together (1009 beyond).
    pub max_message: usize,
}

/// Where the read loop hands complete messages.
pub trait MessageSink {
    /// One complete message; `Some` ends the connection with that reason (the sink has
    /// queued any close frame itself).
    fn message(
        &mut self,
        binary: bool,
        payload: Vec<u8>,
    ) -> impl std::future::Future<Output = Option<End>> + Send;
}

/// What woke the read loop.
enum Woke<T> {
    Frame(T),
    Killed,
    Closing,
    Timer,
}

/// The read loop's deadlines and what they are measured from.
struct Clock {
    last_rx: Instant,
    pinged_at: Option<Instant>,
    close_deadline: Option<Instant>,
    /// The instant the timer is set for, if any.
    armed: Option<Instant>,
    auth_deadline: Instant,
    auth_conn: Option<Arc<ConnHandle>>,
}

/// Far enough to mean never.
fn far() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

impl Clock {
    fn new(opts: &ReadOpts) -> Self {
        let (auth_deadline, auth_conn) = match &opts.auth {
            Some((at, c)) => (*at, Some(c.clone())),
            None => (far(), None),
        };
        Clock {
            last_rx: Instant::now(),
            pinged_at: None,
            close_deadline: None,
            armed: None,
            auth_deadline,
            auth_conn,
        }
    }

    fn authed(&self) -> bool {
        self.auth_conn.as_ref().is_none_or(|c| c.is_authenticated())
    }

    /// The deadlines that apply now.
    fn due(&self, h: &Link, opts: &ReadOpts) -> Due {
        let closing = h.is_closing();
        Due {
            idle: opts.idle.filter(|_| !closing).map(|d| self.last_rx + d),
            ping: opts
                .ping
                .filter(|_| self.pinged_at.is_none() && !closing)
                .map(|d| self.last_rx + d),
            auth: (!closing && !self.authed()).then_some(self.auth_deadline),
        }
    }

    /// The instant to reset the timer to, when the earliest deadline changed.
    fn arm(&mut self, due: &Due) -> Option<Instant> {
        let next = [self.close_deadline, due.auth, due.idle, due.ping]
            .into_iter()
            .flatten()
            .min();
        if next == self.armed {
            return None;
        }
        self.armed = next;
        next
    }

    /// The timer went off: end the connection, or close it or ping, as the deadline says.
    fn timer_fired(&mut self, due: &Due, h: &Link, opts: &ReadOpts, m: &Metrics) -> Option<End> {
        self.armed = None;
        let now = Instant::now();
        if self.close_deadline.is_some_and(|t| t <= now) {
            return Some(End::new(Some(h.close_code()), "no close reply from peer"));
        }
        if due.auth.is_some_and(|t| t <= now) {
            if !self.authed() {
                Metrics::inc(&m.auth_timeouts);
                if let Some(n) = &opts.auth_notice {
                    h.send(n.clone());
                }
                h.close_as(close::AUTH_TIMEOUT);
            }
        } else if due.idle.is_some_and(|t| t <= now) {
            Metrics::inc(&m.idle_timeouts);
            h.close_as(close::IDLE);
        } else if due.ping.is_some_and(|t| t <= now) {
            self.pinged_at = Some(now);
            h.send_control(frame::encode(frame::OP_PING, b""));
        }
        None
    }
}

/// The deadlines of one wait (none while closing: then only the close wait counts).
struct Due {
    idle: Option<Instant>,
    ping: Option<Instant>,
    auth: Option<Instant>,
}

/// Read messages until the connection ends; returns how it ended.
pub async fn read_loop<R: AsyncRead + Unpin + Send + 'static, S: MessageSink>(
    rd: &mut LazyReader<R>,
    h: &Link,
    opts: ReadOpts,
    m: &Metrics,
    sink: &mut S,
) -> End {
    let mut clock = Clock::new(&opts);
    let mut fragments: Option<(OpCode, Vec<u8>)> = None;
    // One timer for the earliest deadline (each timer is ~100 bytes of every connection's
    // state), reset when that changes; which deadline it was is worked out on waking.
    // Everything awaited is awaited here, not in helpers: a helper's future would add its
    // arguments to the state every open connection carries.
    let timer = tokio::time::sleep_until(far());
    tokio::pin!(timer);
    loop {
        let due = clock.due(h, &opts);
        if let Some(t) = clock.arm(&due) {
            timer.as_mut().reset(t);
        }
        let (armed, close_deadline) = (clock.armed, clock.close_deadline);
        // The frame first, then the link's flags (the reader's waker is registered
        // with the link: no per-flag future), then the timer.
        let woke = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = rd.poll_frame(cx) {
                return Poll::Ready(Woke::Frame(r));
            }
            match h.watch(Watcher::Reader, cx) {
                (true, _) => return Poll::Ready(Woke::Killed),
                (_, true) if close_deadline.is_none() => return Poll::Ready(Woke::Closing),
                _ => {}
            }
            if armed.is_some() && timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woke::Timer);
            }
            Poll::Pending
        })
        .await;
        let frame = match woke {
            Woke::Frame(Ok(f)) => {
                clock.last_rx = Instant::now();
                clock.pinged_at = None;
                f
            }
            Woke::Frame(Err(e)) => return read_failed(&e, h, m),
            Woke::Killed => return End::new(Some(h.close_code()), "aborted"),
            Woke::Closing => {
                clock.close_deadline = Some(Instant::now() + CLOSE_WAIT);
                continue;
            }
            Woke::Timer => match clock.timer_fired(&due, h, &opts, m) {
                Some(end) => return end,
                None => continue,
            },
        };
        let (opcode, payload) = match assemble(frame, &mut fragments, h, m, opts.max_message) {
            Ok(Some(message)) => message,
            Ok(None) => continue,
            Err(end) => return end,
        };
        if h.is_closing() {
            continue; // closing: messages after our close frame are dropped
        }
        // Boxed: the hook's future exists only while a message is handled, so an idle
        // connection does not carry its space.
        if let Some(end) = Box::pin(sink.message(opcode == OpCode::Binary, payload)).await {
            return end;
        }
    }
}

/// Count a protocol error, queue its close and end with it.
fn broken(h: &Link, m: &Metrics, c: Close) -> End {
    Metrics::inc(&m.protocol_errors);
    h.close_as(c);
    End::closed(c)
}

/// How a read error ends the connection: with a close for what the client got wrong, or
/// without one when the peer just went away.
fn read_failed(e: &WebSocketError, h: &Link, m: &Metrics) -> End {
    match e {
        WebSocketError::FrameTooLarge => broken(h, m, close::TOO_BIG),
        WebSocketError::InvalidUTF8 => broken(h, m, close::INVALID_UTF8),
        WebSocketError::IoError(_)
        | WebSocketError::UnexpectedEOF
        | WebSocketError::ConnectionClosed => {
            End::new(h.is_closing().then(|| h.close_code()), "connection lost")
        }
        _ => broken(h, m, close::PROTOCOL),
    }
}

/// Answer control frames and put fragments together: `Some` complete message, `None`
/// when there is none yet, `Err` when the frame ends the connection.
fn assemble(
    frame: OwnedFrame,
    fragments: &mut Option<(OpCode, Vec<u8>)>,
    h: &Link,
    m: &Metrics,
    max_message: usize,
) -> Result<Option<(OpCode, Vec<u8>)>, End> {
    let OwnedFrame {
        fin,
        opcode,
        payload,
    } = frame;
    if matches!(opcode, OpCode::Close | OpCode::Pong) && payload.len() > 125 {
        return Err(broken(h, m, close::CONTROL_TOO_LONG));
    }
    match opcode {
        OpCode::Close => Err(closed_by_peer(&payload, h)),
        OpCode::Ping => {
            h.send_control(frame::encode(frame::OP_PONG, &payload));
            Ok(None)
        }
        OpCode::Pong => Ok(None),
        OpCode::Text | OpCode::Binary if fragments.is_some() => {
            Err(broken(h, m, close::EXPECTED_CONTINUATION))
        }
        OpCode::Text | OpCode::Binary if !fin => {
            *fragments = Some((opcode, payload));
            Ok(None)
        }
        OpCode::Text | OpCode::Binary => Ok(Some((opcode, payload))),
        OpCode::Continuation => {
            let Some((_, buf)) = fragments.as_mut() else {
                return Err(broken(h, m, close::UNEXPECTED_CONTINUATION));
            };
            if buf.len() + payload.len() > max_message {
                return Err(broken(h, m, close::TOO_BIG));
            }
            buf.extend_from_slice(&payload);
            Ok(if fin { fragments.take() } else { None })
        }
    }
}

/// The peer's close frame: the end of our close handshake, or its start (answered here).
fn closed_by_peer(payload: &[u8], h: &Link) -> End {
    if h.is_closing() {
        // The peer answered our close: done.
        return End::new(Some(h.close_code()), "closed");
    }
    let reply = |c: Close| (Some(c.code), frame::close(c.code, c.reason));
    let (code, reply) = match payload.len() {
        0 => (None, frame::encode(frame::OP_CLOSE, b"")),
        1 => reply(close::BAD_CLOSE_FRAME),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !frame::valid_close_code(code) {
                reply(close::INVALID_CLOSE_CODE)
            } else if std::str::from_utf8(&payload[2..]).is_err() {
                reply(close::INVALID_CLOSE_REASON)
            } else {
                (Some(code), frame::close(code, ""))
            }
        }
    };
    h.send_close(reply, code.unwrap_or(close::NORMAL));
    End::new(code, "closed by peer")
}
