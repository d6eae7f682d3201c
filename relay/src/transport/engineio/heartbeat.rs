//! Engine.IO's own packets and the heartbeat: v4, the server pings every interval and
//! wants a pong within the timeout; v3, the client pings and the next ping is due within
//! interval + timeout.

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::{Event, Settings};
use crate::hub::Link;
use crate::protocol::close;
use crate::protocol::engineio::{text_record, EioIn, EioPacket, EioType};
use crate::transport::End;

/// What a packet from the client means to the layer above, once Engine.IO has answered
/// its own packets.
#[derive(Debug)]
pub enum Received {
    /// A text message (the data of a `4` packet).
    Message(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// Nothing more to do (ping, pong, noop, upgrade).
    Handled,
    /// The client closed the session.
    Closed(End),
    /// Not an Engine.IO packet a client may send.
    Malformed(&'static str),
}

/// A session's heartbeat: when the next ping is sent (v4) or due (v3), and when a pong is.
#[derive(Debug)]
pub struct Heartbeat {
    v3: bool,
    interval: std::time::Duration,
    timeout: std::time::Duration,
    /// v4: when to send the next ping.
    next_ping: Instant,
    /// v4: a ping is out; its pong is due then.
    pong_due: Option<Instant>,
    /// v3: the client's next ping is due then.
    ping_due: Instant,
}

impl Heartbeat {
    /// A heartbeat starting now.
    pub fn new(v3: bool, settings: &Settings) -> Self {
        let (interval, timeout) = (settings.ping_interval, settings.ping_timeout);
        let now = Instant::now();
        Heartbeat {
            v3,
            interval,
            timeout,
            next_ping: now + interval,
            pong_due: None,
            ping_due: now + interval + timeout,
        }
    }

    /// When [`Heartbeat::fire`] has something to do.
    pub fn deadline(&self) -> Instant {
        match (self.v3, self.pong_due) {
            (true, _) => self.ping_due,
            (false, Some(due)) => due,
            (false, None) => self.next_ping,
        }
    }

    /// At [`Heartbeat::deadline`]: send the ping that is due, or end the session whose
    /// client went quiet (queueing its close).
    pub fn fire(&mut self, link: &Link) -> Option<End> {
        if self.v3 || self.pong_due.is_some() {
            link.close_as(close::PING_TIMEOUT);
            return Some(End::new(None, close::PING_TIMEOUT.reason));
        }
        link.send(text_record("2"));
        // Counted from when the ping was due, so that a timer firing late does not add
        // to the time a silent client is given (the reference's interval + timeout); a
        // ping sent very late still leaves the client half its timeout.
        let due = (self.next_ping + self.timeout).max(Instant::now() + self.timeout / 2);
        self.pong_due = Some(due);
        None
    }

    /// After each event: the next v4 ping is an interval after the last pong.
    pub fn settle(&mut self) {
        let now = Instant::now();
        if !self.v3 && self.pong_due.is_none() && now >= self.next_ping {
            self.next_ping = now + self.interval;
        }
    }

    /// A packet from the client: Engine.IO's own are answered here, messages handed on.
    pub fn receive(&mut self, link: &Link, p: EioIn) -> Received {
        let text = match p {
            EioIn::Binary(data) => return Received::Binary(data),
            EioIn::Text(t) => t,
        };
        let Ok(p) = EioPacket::decode(&text) else {
            return Received::Malformed("unknown engine.io packet");
        };
        match p.kind {
            EioType::Ping => {
                // v3 heartbeat (and any client ping): answer with a pong.
                self.ping_due = Instant::now() + self.interval + self.timeout;
                let pong = EioPacket {
                    kind: EioType::Pong,
                    data: p.data,
                };
                link.send(text_record(&pong.encode()));
                Received::Handled
            }
            EioType::Pong => {
                self.pong_due = None;
                Received::Handled
            }
            EioType::Message => Received::Message(p.data),
            EioType::Close => Received::Closed(End::new(None, "closed by client")),
            EioType::Upgrade | EioType::Noop => Received::Handled,
            EioType::Open => Received::Malformed("unknown engine.io packet"),
        }
    }
}

/// What a session's driver handles next.
#[derive(Debug)]
pub enum Step {
    /// A packet from the client, once Engine.IO has answered its own.
    Received(Received),
    /// The session ends: its transport or link ended, the client stopped answering pings,
    /// or the server shuts down.
    End(End),
}

/// Wait for a session's next step: a packet from the client, the end of its transport or
/// link, shutdown (the link is closed with 1001), or the heartbeat's deadline (a ping is
/// sent and the wait goes on, or the session ends). Cancel-safe.
pub async fn next_step(
    rx: &mut mpsc::Receiver<Event>,
    link: &Link,
    hb: &mut Heartbeat,
    shutdown: &CancellationToken,
) -> Step {
    loop {
        let step = tokio::select! {
            ev = rx.recv() => match ev {
                Some(Event::Packet(p)) => Step::Received(hb.receive(link, p)),
                Some(Event::TransportClosed(end)) => Step::End(end),
                None => Step::End(End::new(None, "session ended")),
            },
            _ = link.killed() => Step::End(End::new(Some(link.close_code()), "aborted")),
            _ = shutdown.cancelled() => {
                link.close_as(close::SHUTDOWN);
                Step::End(End::closed(close::SHUTDOWN))
            }
            _ = sleep_until(hb.deadline()) => match hb.fire(link) {
                Some(end) => Step::End(end),
                None => {
                    hb.settle();
                    continue;
                }
            },
        };
        hb.settle();
        return step;
    }
}
