//! The one way a connection's outbound queue is drained, whichever transport writes it:
//! the WebSocket writer and Engine.IO polling responses both take a batch off the queue
//! and walk it with a [`Drain`].

use bytes::Bytes;

use crate::hub::{Link, Outbound, WrittenFn};

/// Most queue items taken per turn.
pub const BATCH: usize = 512;

/// What a transport writes, in queue order.
pub enum Piece {
    /// A message (complete WebSocket frames, or Engine.IO packet records).
    Frame(Bytes),
    /// WebSocket control frames (a polling transport skips them).
    Control(Bytes),
    /// The close frame: the last piece of the batch.
    Close(Bytes),
}

/// One batch taken off a link's queue: its bytes are off the link's books, its pieces come
/// in order up to and including a close, and its written-callbacks are kept aside, to be
/// run once what came before them is written.
pub struct Drain<'a> {
    items: std::vec::Drain<'a, Outbound>,
    written: Vec<WrittenFn>,
    closed: bool,
}

/// What [`Drain::new`] found in a batch.
#[derive(Debug, Clone, Copy)]
pub struct Taken {
    /// Bytes taken off the queue.
    pub bytes: usize,
    /// Whether the batch holds a close frame.
    pub has_close: bool,
}

impl<'a> Drain<'a> {
    /// Take `batch` (just received from `link`'s queue) off the link's books. (What was
    /// found is returned beside the drain, not kept in it: the writer holds a drain across
    /// its writes, so every field is state an open connection carries.)
    pub fn new(link: &Link, batch: &'a mut Vec<Outbound>) -> (Self, Taken) {
        let bytes: usize = batch.iter().map(|o| o.bytes().len()).sum();
        link.dequeued(bytes);
        let has_close = batch.iter().any(|o| matches!(o, Outbound::Close(_)));
        let drain = Drain {
            items: batch.drain(..),
            written: Vec::new(),
            closed: false,
        };
        (drain, Taken { bytes, has_close })
    }

    /// Whether the close piece has been handed out.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// The written-callbacks met so far; run them once what was handed out is written.
    pub fn take_written(&mut self) -> Vec<WrittenFn> {
        std::mem::take(&mut self.written)
    }
}

impl Iterator for Drain<'_> {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        if self.closed {
            // Nothing is written after a close frame.
            return None;
        }
        loop {
            match self.items.next()? {
                Outbound::Frame(b) => return Some(Piece::Frame(b)),
                Outbound::Control(b) => return Some(Piece::Control(b)),
                Outbound::Close(b) => {
                    self.closed = true;
                    return Some(Piece::Close(b));
                }
                Outbound::Written(f) => self.written.push(f),
            }
        }
    }
}
