//! The per-connection WebSocket writer: drains the bounded queue in batches (with the
//! [`Drain`] Engine.IO polling uses too) and
//! coalesces every frame that is waiting into one `write`, so a busy
//! connection costs one syscall per turn, not one per message.

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::hub::{queue, Link, Outbound, Watcher};
use crate::metrics::Metrics;
use crate::protocol::{engineio, frame};
use crate::transport::drain::{Drain, Piece, BATCH};

/// Frames are copied into one buffer up to this size; bigger frames are written as they are.
const MAX_COALESCE: usize = 64 << 10;
/// Time allowed to finish a partial write and send the close frame when a connection is aborted.
const ABORT_GRACE: Duration = Duration::from_secs(1);

enum Stop {
    /// The connection was aborted; these bytes of the current chunk are still unwritten.
    Killed(Vec<u8>),
    /// The socket failed.
    Io,
}

/// How queued messages become bytes on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Messages are complete WebSocket frames already (ws-json).
    Raw,
    /// Messages are Engine.IO packet records; each becomes one WebSocket frame. Binary
    /// packets carry a leading `4` byte in Engine.IO v3 and nothing in v4.
    EngineIo {
        /// Engine.IO v3 framing of binary packets.
        v3: bool,
    },
}

/// Run until a close frame is written, the connection is aborted, or the socket fails.
pub async fn run<W: AsyncWrite + Unpin>(
    w: W,
    rx: queue::Receiver<Outbound>,
    h: Arc<Link>,
    m: Arc<Metrics>,
) {
    run_framed(w, rx, h, m, Framing::Raw).await
}

/// [`run`] with a choice of framing.
pub async fn run_framed<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: queue::Receiver<Outbound>,
    h: Arc<Link>,
    m: Arc<Metrics>,
    framing: Framing,
) {
    // Both buffers exist only while there is something to write: an idle connection
    // holds neither (idle memory per connection is a goal; see docs/BENCHMARKS.md).
    let mut batch = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if rx.is_empty() && batch.capacity() > 0 {
            batch = Vec::new();
            buf = Vec::new();
        }
        let n = next_batch(&mut rx, &mut batch, &h).await;
        let Some(n) = n else {
            return Box::pin(abort(&mut w, &[], &h, false)).await;
        };
        if n == 0 {
            return;
        }
        let (mut drain, has_close) = {
            let (drain, taken) = Drain::new(&h, &mut batch);
            buf.clear();
            // One allocation for the turn (Engine.IO framing adds at most 14 bytes a packet).
            buf.reserve((taken.bytes + 16 * n).min(MAX_COALESCE));
            (drain, taken.has_close)
        };
        let mut result = Ok(());
        // Matched straight off `next()`, with no binding for the piece: a binding would live
        // across the writes below and grow every writer's state (measured: 32 bytes).
        loop {
            let bytes = match drain.next() {
                None => break,
                Some(Piece::Frame(b)) => match framing {
                    Framing::Raw => b,
                    Framing::EngineIo { v3 } => {
                        // Frame each packet straight into the buffer (one copy, as for Raw).
                        if !buf.is_empty() && buf.len() + b.len() + 16 > MAX_COALESCE {
                            result = write_all(&mut w, &buf, &h, &m).await;
                            if result.is_err() {
                                break;
                            }
                            buf.clear();
                        }
                        frame_records_into(&mut buf, &b, v3);
                        continue;
                    }
                },
                Some(Piece::Control(b) | Piece::Close(b)) => b,
            };
            if !buf.is_empty() && buf.len() + bytes.len() > MAX_COALESCE {
                result = write_all(&mut w, &buf, &h, &m).await;
                if result.is_err() {
                    break;
                }
                buf.clear();
            }
            if bytes.len() > MAX_COALESCE {
                result = write_all(&mut w, &bytes, &h, &m).await;
                if result.is_err() {
                    break;
                }
            } else {
                buf.extend_from_slice(&bytes);
            }
        }
        // Done with the drain before writing on: what the writer holds across a write is
        // state every open connection carries.
        let (mut written, close) = (drain.take_written(), drain.closed());
        drop(drain);
        if result.is_ok() && !buf.is_empty() {
            result = write_all(&mut w, &buf, &h, &m).await;
        }
        if result.is_ok() {
            result = unless_killed(
                &h,
                std::future::poll_fn(|cx| Pin::new(&mut w).poll_flush(cx)),
            )
            .await
            .map_or(Err(Stop::Killed(Vec::new())), |r| r.map_err(|_| Stop::Io));
        }
        if result.is_ok() {
            written.drain(..).for_each(|f| f());
        }
        match result {
            Ok(()) if close => {
                let _ = tokio::time::timeout(ABORT_GRACE, w.shutdown()).await;
                return;
            }
            Ok(()) => {}
            Err(Stop::Killed(tail)) => {
                // Finishing the partly written chunk keeps the stream well-formed, so the
                // close frame can follow it.
                // Boxed, as above: the abort path's timer is not part of every writer's state.
                return Box::pin(abort(&mut w, &tail, &h, has_close)).await;
            }
            Err(Stop::Io) => return,
        }
    }
}

/// The next batch off the queue (its length; 0 once the sender is gone), or `None` once the
/// link is killed (which also wakes the queue's receiver). A poll, not an async fn: the
/// writer's idle state stays what it was inline.
fn next_batch<'a>(
    rx: &'a mut queue::Receiver<Outbound>,
    batch: &'a mut Vec<Outbound>,
    h: &'a Link,
) -> impl Future<Output = Option<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        if h.is_killed() {
            return Poll::Ready(None);
        }
        match rx.poll_recv_many(cx, batch, BATCH) {
            Poll::Ready(n) => Poll::Ready(Some(n)),
            // Killed after the look above: the wake went to the queue or is seen here.
            Poll::Pending if h.is_killed() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
}

/// Append Engine.IO packet records as WebSocket frames: text packets as text frames,
/// binary ones as binary frames.
fn frame_records_into(out: &mut Vec<u8>, records: &[u8], v3: bool) {
    for (binary, payload) in engineio::Records::new(records) {
        if binary {
            if v3 {
                frame::encode_parts_into(out, frame::OP_BINARY, &[&[4u8], payload]);
            } else {
                frame::encode_parts_into(out, frame::OP_BINARY, &[payload]);
            }
        } else {
            frame::encode_parts_into(out, frame::OP_TEXT, &[payload]);
        }
    }
}

/// `f`'s output, or `None` once the link is killed (the writer is woken for that).
async fn unless_killed<F: Future>(h: &Link, f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| {
        if h.watch(Watcher::Writer, cx).0 {
            return Poll::Ready(None);
        }
        f.as_mut().poll(cx).map(Some)
    })
    .await
}

/// Write all of `data`, giving up when the connection is aborted.
async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut data: &[u8],
    h: &Link,
    m: &Metrics,
) -> Result<(), Stop> {
    while !data.is_empty() {
        let d = data;
        let Some(r) = unless_killed(
            h,
            std::future::poll_fn(|cx| Pin::new(&mut *w).poll_write(cx, d)),
        )
        .await
        else {
            return Err(Stop::Killed(data.to_vec()));
        };
        match r {
            Ok(0) | Err(_) => return Err(Stop::Io),
            Ok(n) => {
                Metrics::inc(&m.socket_writes);
                data = &data[n..];
            }
        }
    }
    Ok(())
}

/// Best effort within [`ABORT_GRACE`]: finish the partial chunk, send the abort's close frame
/// (unless the chunk already carries one: a second close frame is a protocol error), shut down.
async fn abort<W: AsyncWrite + Unpin>(w: &mut W, tail: &[u8], h: &Link, close_sent: bool) {
    let close = if close_sent {
        bytes::Bytes::new()
    } else {
        frame::close(h.close_code(), "")
    };
    let _ = tokio::time::timeout(ABORT_GRACE, async {
        w.write_all(tail).await?;
        w.write_all(&close).await?;
        w.flush().await?;
        w.shutdown().await
    })
    .await;
}
