//! [`LazyReader`]: fastwebsockets' frame reader, held only while a connection is
//! talking.
//!
//! fastwebsockets gives every reader an 8 KiB buffer for its whole life. Most
//! connections of a push server are idle most of the time, and that buffer was the
//! largest part of an idle connection's memory (see docs/BENCHMARKS.md). So an idle
//! connection waits on a one-byte read with no buffer at all; the byte that wakes it
//! is handed to a fresh fastwebsockets reader, and the reader is dropped again as
//! soon as everything it has read has been returned as frames.
//!
//! Knowing that is the subtle part: the reader's buffer is private. [`Source`], the
//! stream the reader reads from, follows frame boundaries in the bytes it hands over
//! (headers only; payloads are skipped by length). When the bytes delivered end on a
//! frame boundary and the reader has returned as many frames as were delivered, its
//! buffer holds nothing, and dropping it loses nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use fastwebsockets::{Frame, OpCode, Role, WebSocketError, WebSocketRead};
use tokio::io::{AsyncRead, ReadBuf};

/// Frame boundaries in a byte stream, from WebSocket frame headers.
#[derive(Debug, Default)]
struct Boundaries {
    /// Header bytes of the frame being read (at most 14).
    head: [u8; 14],
    head_len: usize,
    /// Payload bytes still to come of the current frame (after its header).
    payload_left: u64,
    /// Complete frames seen.
    frames: u64,
    /// A frame header without the mask bit arrived: RFC 6455 §5.1 has the server close
    /// the connection (1002) on an unmasked client frame.
    unmasked: bool,
}

impl Boundaries {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = (bytes.len() as u64).min(self.payload_left);
                self.payload_left -= n;
                bytes = &bytes[n as usize..];
                if self.payload_left == 0 {
                    self.frames += 1;
                }
                continue;
            }
            self.head[self.head_len] = bytes[0];
            self.head_len += 1;
            bytes = &bytes[1..];
            if self.head_len < 2 {
                continue;
            }
            let ext = match self.head[1] & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
            if self.head_len < 2 + ext + mask {
                continue;
            }
            self.unmasked |= mask == 0;
            let len = match ext {
                0 => u64::from(self.head[1] & 0x7f),
                2 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
                _ => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.head[2..10]);
                    u64::from_be_bytes(b)
                }
            };
            self.head_len = 0;
            if len == 0 {
                self.frames += 1;
            } else {
                self.payload_left = len;
            }
        }
    }

    /// Whether the bytes so far end exactly where a frame ends.
    fn at_boundary(&self) -> bool {
        self.head_len == 0 && self.payload_left == 0
    }
}

struct Inner<R> {
    stream: R,
    /// The byte that woke an idle connection, not yet handed to the reader.
    first: Option<u8>,
    seen: Boundaries,
}

/// The stream a fastwebsockets reader reads from: the connection, shared with the
/// [`LazyReader`] that outlives the reader.
struct Source<R>(Arc<Mutex<Inner<R>>>);

impl<R: AsyncRead + Unpin> AsyncRead for Source<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut inner = match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let inner = &mut *inner;
        if let Some(b) = inner.first.take() {
            if buf.remaining() > 0 {
                buf.put_slice(&[b]);
                inner.seen.feed(&[b]);
                return Poll::Ready(Ok(()));
            }
            inner.first = Some(b);
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut inner.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            inner.seen.feed(&buf.filled()[before..]);
        }
        r
    }
}

/// One frame, owning its (unmasked) payload.
pub struct OwnedFrame {
    /// The last frame of its message.
    pub fin: bool,
    /// Its opcode.
    pub opcode: OpCode,
    /// Its payload, unmasked.
    pub payload: Vec<u8>,
}

/// A frame being read: owns fastwebsockets' reader while it reads (boxed, so a connection
/// that is not reading carries no space for it) and gives it back with the frame.
type FrameRead<R> = Pin<
    Box<dyn Future<Output = (WebSocketRead<Source<R>>, Result<OwnedFrame, WebSocketError>)> + Send>,
>;

/// Reads WebSocket frames from a client, holding fastwebsockets' reader (and its
/// buffer) only while there is something to read.
pub struct LazyReader<R> {
    shared: Arc<Mutex<Inner<R>>>,
    reader: Option<WebSocketRead<Source<R>>>,
    /// The frame being read, if one is.
    reading: Option<FrameRead<R>>,
    /// Frames the current reader has returned.
    returned: u64,
    /// fastwebsockets refuses a frame when `len >= max`.
    max_frame: usize,
}

impl<R: AsyncRead + Unpin + Send + 'static> LazyReader<R> {
    /// A server-side reader; frames of `max_message` bytes are allowed, longer ones fail
    /// with `FrameTooLarge`.
    pub fn new(stream: R, max_message: usize) -> Self {
        LazyReader {
            shared: Arc::new(Mutex::new(Inner {
                stream,
                first: None,
                seen: Boundaries::default(),
            })),
            reader: None,
            reading: None,
            returned: 0,
            max_frame: max_message.saturating_add(1),
        }
    }

    /// Whether fastwebsockets' reader (and its buffer) is currently held.
    #[cfg(test)]
    fn holds_buffer(&self) -> bool {
        self.reader.is_some()
    }

    /// The next frame. Auto-close and auto-pong are off: the caller answers both.
    pub async fn read_frame(&mut self) -> Result<OwnedFrame, WebSocketError> {
        std::future::poll_fn(|cx| self.poll_frame(cx)).await
    }

    /// Poll for the next frame (a poll, not a future: a connection waiting for its
    /// client keeps no future state for it). Auto-close and auto-pong are off: the
    /// caller answers both.
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<OwnedFrame, WebSocketError>> {
        loop {
            if let Some(f) = self.reading.as_mut() {
                let Poll::Ready((rd, res)) = f.as_mut().poll(cx) else {
                    return Poll::Pending;
                };
                self.reading = None;
                self.reader = Some(rd);
                if res.is_ok() {
                    self.returned += 1;
                    let (drained, unmasked) = match self.shared.lock() {
                        Ok(inner) => (
                            inner.seen.at_boundary() && inner.seen.frames == self.returned,
                            inner.seen.unmasked,
                        ),
                        Err(_) => (false, false),
                    };
                    if unmasked {
                        // A protocol error (close 1002), like any other invalid frame.
                        return Poll::Ready(Err(WebSocketError::InvalidValue));
                    }
                    if drained {
                        // Everything read has been returned: the reader's buffer is empty.
                        self.reader = None;
                    }
                }
                return Poll::Ready(res);
            }
            if self.reader.is_none() {
                // Idle: wait for one byte, with no buffer but that byte.
                let first = {
                    let mut inner = match self.shared.lock() {
                        Ok(g) => g,
                        Err(p) => p.into_inner(),
                    };
                    let mut one = [0u8; 1];
                    let mut buf = ReadBuf::new(&mut one);
                    match Pin::new(&mut inner.stream).poll_read(cx, &mut buf) {
                        Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                            return Poll::Ready(Err(WebSocketError::UnexpectedEOF))
                        }
                        Poll::Ready(Ok(())) => one[0],
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(WebSocketError::IoError(e))),
                        Poll::Pending => return Poll::Pending,
                    }
                };
                if let Ok(mut inner) = self.shared.lock() {
                    inner.first = Some(first);
                    inner.seen = Boundaries::default();
                }
                let (mut rd, _) = fastwebsockets::after_handshake_split(
                    Source(self.shared.clone()),
                    tokio::io::sink(),
                    Role::Server,
                );
                rd.set_auto_close(false);
                rd.set_auto_pong(false);
                rd.set_max_message_size(self.max_frame);
                self.reader = Some(rd);
                self.returned = 0;
            }
            let Some(mut rd) = self.reader.take() else {
                return Poll::Ready(Err(WebSocketError::ConnectionClosed));
            };
            self.reading = Some(Box::pin(async move {
                let mut no_obligations = |_: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
                let res = rd
                    .read_frame(&mut no_obligations)
                    .await
                    .map(|f| OwnedFrame {
                        fin: f.fin,
                        opcode: f.opcode,
                        payload: f.payload.to_vec(),
                    });
                (rd, res)
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [1u8, 2, 3, 4];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn boundaries_follow_headers_and_payloads_across_splits() {
        let mut stream = Vec::new();
        let sizes = [0usize, 1, 125, 126, 300, 65535, 65536, 70000];
        for n in sizes {
            stream.extend(masked(1, &vec![b'a'; n]));
        }
        for chunk in [1usize, 2, 3, 7, 100, 4096, stream.len()] {
            let mut b = Boundaries::default();
            for c in stream.chunks(chunk) {
                b.feed(c);
            }
            assert!(b.at_boundary(), "chunk {chunk}");
            assert_eq!(b.frames, sizes.len() as u64, "chunk {chunk}");
        }
        let mut b = Boundaries::default();
        b.feed(&stream[..stream.len() - 1]);
        assert!(!b.at_boundary());
        assert_eq!(b.frames, sizes.len() as u64 - 1);
    }

    #[tokio::test]
    async fn frames_arrive_intact_and_the_buffer_goes_when_idle() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut rd = LazyReader::new(server, 1 << 20);
        let (mut client_r, mut client) = tokio::io::split(client);
        let _keep = &mut client_r;
        assert!(!rd.holds_buffer());

        // Two frames in one write: the first leaves the second buffered, so the reader stays.
        let mut two = masked(1, b"hello");
        two.extend(masked(2, &[9u8; 300]));
        client.write_all(&two).await.unwrap();
        let f = rd.read_frame().await.unwrap();
        assert_eq!(&*f.payload, b"hello");
        assert!(rd.holds_buffer(), "the second frame is still in the buffer");
        let f = rd.read_frame().await.unwrap();
        assert_eq!(&*f.payload, &[9u8; 300][..]);
        assert!(!rd.holds_buffer(), "nothing left: the buffer is dropped");

        // A frame split across writes, and a big one.
        let big = masked(1, &vec![b'z'; 100_000]);
        let (a, b) = big.split_at(3);
        client.write_all(a).await.unwrap();
        let read = tokio::spawn(async move {
            let f = rd.read_frame().await.map(|f| f.payload.to_vec());
            (rd, f)
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        client.write_all(b).await.unwrap();
        let (mut rd, f) = read.await.unwrap();
        assert_eq!(f.unwrap(), vec![b'z'; 100_000]);
        assert!(!rd.holds_buffer());

        // Limits still apply; EOF is reported.
        let mut small = LazyReader::new(tokio::io::duplex(64).1, 10);
        assert!(matches!(
            small.read_frame().await,
            Err(WebSocketError::UnexpectedEOF)
        ));
        client.write_all(&masked(1, &[b'x'; 11][..])).await.unwrap();
        rd.max_frame = 11;
        assert!(matches!(
            rd.read_frame().await,
            Err(WebSocketError::FrameTooLarge)
        ));
        drop(client);
    }

    #[tokio::test]
    async fn an_unmasked_frame_is_a_protocol_error() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut rd = LazyReader::new(server, 1 << 20);
        client.write_all(&masked(1, b"fine")).await.unwrap();
        assert_eq!(rd.read_frame().await.unwrap().payload, b"fine");
        client
            .write_all(&[0x81, 4, b'b', b'a', b'r', b'e'])
            .await
            .unwrap();
        assert!(matches!(
            rd.read_frame().await,
            Err(WebSocketError::InvalidValue)
        ));
    }
}
