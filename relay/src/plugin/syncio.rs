//! `wasi:io` streams and poll for synchronous calls.
//!
//! Hooks are plain synchronous calls on the caller's thread (no fiber: a call never
//! waits on anything, and switching stacks costs every call ~1k instructions). The
//! only WASI functions that are asynchronous in wasmtime-wasi are the blocking stream
//! and poll operations, and its synchronous versions run them inside a tokio runtime of
//! their own, which a tokio worker thread forbids. Here they are polled once instead:
//! every stream a plugin can reach is ready at once (stdout/stderr are
//! [`LogPipe`](super::stdio::LogPipe)s, stdin is empty), so one poll completes them, and
//! one that would not traps the call rather than blocking a worker.

use std::future::Future;
use std::task::{Context, Poll, Waker};

use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::io::{poll as apoll, streams as astreams};
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamError, StreamResult};

/// The store's resource table, as the synchronous `wasi:io` host.
pub struct SyncIo<'a>(pub &'a mut ResourceTable);

const WOULD_BLOCK: &str =
    "the plugin waited on a stream that is not ready (relay's streams never wait)";

/// Poll `f` once: its output, or `None` if it would have to wait.
fn once<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

fn now<T>(f: impl Future<Output = wasmtime::Result<T>>) -> wasmtime::Result<T> {
    once(f).unwrap_or_else(|| Err(wasmtime::format_err!("{WOULD_BLOCK}")))
}

fn now_stream<T>(f: impl Future<Output = StreamResult<T>>) -> StreamResult<T> {
    once(f).unwrap_or_else(|| Err(StreamError::trap(WOULD_BLOCK)))
}

impl streams::Host for SyncIo<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        Ok(astreams::Host::convert_stream_error(self.0, err)?.into())
    }
}

impl streams::HostOutputStream for SyncIo<'_> {
    fn drop(&mut self, s: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        now(astreams::HostOutputStream::drop(self.0, s))
    }

    fn check_write(&mut self, s: Resource<DynOutputStream>) -> StreamResult<u64> {
        astreams::HostOutputStream::check_write(self.0, s)
    }

    fn write(&mut self, s: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        astreams::HostOutputStream::write(self.0, s, bytes)
    }

    fn blocking_write_and_flush(
        &mut self,
        s: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        now_stream(astreams::HostOutputStream::blocking_write_and_flush(
            self.0, s, bytes,
        ))
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        s: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        now_stream(astreams::HostOutputStream::blocking_write_zeroes_and_flush(
            self.0, s, len,
        ))
    }

    fn subscribe(
        &mut self,
        s: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        astreams::HostOutputStream::subscribe(self.0, s)
    }

    fn write_zeroes(&mut self, s: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        astreams::HostOutputStream::write_zeroes(self.0, s, len)
    }

    fn flush(&mut self, s: Resource<DynOutputStream>) -> StreamResult<()> {
        astreams::HostOutputStream::flush(self.0, s)
    }

    fn blocking_flush(&mut self, s: Resource<DynOutputStream>) -> StreamResult<()> {
        now_stream(astreams::HostOutputStream::blocking_flush(self.0, s))
    }

    fn splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        astreams::HostOutputStream::splice(self.0, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        now_stream(astreams::HostOutputStream::blocking_splice(
            self.0, dst, src, len,
        ))
    }
}

impl streams::HostInputStream for SyncIo<'_> {
    fn drop(&mut self, s: Resource<DynInputStream>) -> wasmtime::Result<()> {
        now(astreams::HostInputStream::drop(self.0, s))
    }

    fn read(&mut self, s: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        astreams::HostInputStream::read(self.0, s, len)
    }

    fn blocking_read(&mut self, s: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        now_stream(astreams::HostInputStream::blocking_read(self.0, s, len))
    }

    fn skip(&mut self, s: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        astreams::HostInputStream::skip(self.0, s, len)
    }

    fn blocking_skip(&mut self, s: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        now_stream(astreams::HostInputStream::blocking_skip(self.0, s, len))
    }

    fn subscribe(
        &mut self,
        s: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        astreams::HostInputStream::subscribe(self.0, s)
    }
}

impl poll::Host for SyncIo<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        now(apoll::Host::poll(self.0, pollables))
    }
}

impl poll::HostPollable for SyncIo<'_> {
    fn ready(&mut self, p: Resource<DynPollable>) -> wasmtime::Result<bool> {
        now(apoll::HostPollable::ready(self.0, p))
    }

    fn block(&mut self, p: Resource<DynPollable>) -> wasmtime::Result<()> {
        now(apoll::HostPollable::block(self.0, p))
    }

    fn drop(&mut self, p: Resource<DynPollable>) -> wasmtime::Result<()> {
        apoll::HostPollable::drop(self.0, p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime_wasi::p2::bindings::sync::io::streams::HostOutputStream as _;

    #[test]
    fn a_log_pipe_is_written_without_an_executor_and_a_pending_stream_traps() {
        let mut table = ResourceTable::new();
        let pipe = super::super::stdio::LogPipe::new(64);
        let out: DynOutputStream = Box::new(pipe.clone());
        let s = table.push(out).unwrap();
        let mut io = SyncIo(&mut table);
        io.blocking_write_and_flush(Resource::new_borrow(s.rep()), b"hello".to_vec())
            .unwrap();
        assert_eq!(pipe.read_from(0, 64), b"hello");
        assert!(once(std::future::pending::<()>()).is_none());
        assert!(now(std::future::pending::<wasmtime::Result<()>>()).is_err());
    }
}
