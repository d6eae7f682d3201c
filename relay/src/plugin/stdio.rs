//! A plugin's stdout and stderr: what it prints is kept in memory (up to a capacity)
//! and sent to relay's log after the call.
//!
//! wasmtime-wasi's `MemoryOutputPipe` does the same, but the only way to learn whether
//! anything was written is to copy its contents out, which every call would pay for
//! (twice: both streams). Here that is one atomic load; few calls print.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// One output stream of one store (clones share it).
#[derive(Clone)]
pub struct LogPipe(Arc<Inner>);

struct Inner {
    buf: Mutex<Vec<u8>>,
    /// Bytes in `buf`, readable without the lock.
    len: AtomicUsize,
    capacity: usize,
}

impl LogPipe {
    /// A pipe that holds at most `capacity` bytes; writing more fails the write.
    pub fn new(capacity: usize) -> Self {
        LogPipe(Arc::new(Inner {
            buf: Mutex::new(Vec::new()),
            len: AtomicUsize::new(0),
            capacity,
        }))
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.0.len.load(Ordering::Acquire)
    }

    /// Whether nothing was ever written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `max` of the bytes written from offset `from` on.
    pub fn read_from(&self, from: usize, max: usize) -> Vec<u8> {
        let buf = self.0.buf.lock().unwrap_or_else(|p| p.into_inner());
        let rest = buf.get(from..).unwrap_or_default();
        rest[..rest.len().min(max)].to_vec()
    }

    /// Append what fits; how much did.
    fn append(&self, bytes: &[u8]) -> usize {
        let mut buf = self.0.buf.lock().unwrap_or_else(|p| p.into_inner());
        let n = bytes.len().min(self.0.capacity - buf.len());
        buf.extend_from_slice(&bytes[..n]);
        self.0.len.store(buf.len(), Ordering::Release);
        n
    }

    fn room(&self) -> usize {
        self.0.capacity - self.len()
    }
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

#[async_trait::async_trait]
impl OutputStream for LogPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if bytes.len() > self.room() {
            return Err(StreamError::Trap(wasmtime::Error::msg(
                "plugin output beyond the stdio buffer's capacity",
            )));
        }
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        match self.room() {
            0 => Err(StreamError::Closed),
            n => Ok(n),
        }
    }
}

impl tokio::io::AsyncWrite for LogPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(self.append(buf)))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_keeps_what_fits_and_says_how_much_without_copying() {
        let p = LogPipe::new(8);
        let mut w = p.clone();
        assert!(p.is_empty());
        OutputStream::write(&mut w, Bytes::from_static(b"hello")).unwrap();
        assert_eq!(p.len(), 5);
        assert_eq!(w.check_write().unwrap(), 3);
        assert!(
            OutputStream::write(&mut w, Bytes::from_static(b"world")).is_err(),
            "beyond the capacity"
        );
        assert_eq!(p.len(), 5, "a refused write writes nothing");
        OutputStream::write(&mut w, Bytes::from_static(b"abc")).unwrap();
        assert!(matches!(w.check_write(), Err(StreamError::Closed)));
        assert_eq!(p.read_from(0, 100), b"helloabc");
        assert_eq!(p.read_from(5, 2), b"ab");
        assert_eq!(p.read_from(9, 2), b"", "past the end");
    }
}
