//! The host side of the `relay:plugin/host` interface, and each store's state.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Resource, ResourceTable};
use wasmtime::StoreLimits;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::relay::plugin::host::{self, Level};
use super::bindings::relay::plugin::types;
use super::convert::{AddrText, HeaderFilter};
use super::stdio::LogPipe;
use crate::hub::Presence;
use crate::metrics::Metrics;
use crate::policy::HandshakeRequest;
use crate::store::{KvError, KvStore};

/// Largest `random-bytes` request.
pub const MAX_RANDOM: u32 = 1024;
/// Bytes of stdout/stderr a store may hold before its instance is recycled.
pub const STDIO_CAPACITY: usize = 64 << 10;

/// What one plugin instance's store holds: an empty WASI context, limits, and
/// the tenant's services.
pub struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: StoreLimits,
    pub(crate) tenant: Arc<str>,
    pub(crate) kv: Arc<dyn KvStore>,
    pub(crate) presence: Arc<dyn Presence>,
    pub(crate) metrics: Arc<Metrics>,
    /// The tenant's message log (`log-read`).
    pub(crate) log: Arc<crate::msglog::LogTarget>,
    pub(crate) stdout: LogPipe,
    pub(crate) stderr: LogPipe,
    /// How much of stdout/stderr has already gone to the log.
    pub(crate) logged: (usize, usize),
    /// Log lines written by this call (rate limit).
    pub(crate) log_lines: u32,
    /// The current call's budget.
    pub(crate) call_clock: CallClock,
    /// The handshake of the `on-handshake` call in progress, which the plugin reads
    /// through its `handshake-request` handle.
    pub(crate) handshake: Option<CurrentHandshake>,
}

/// What a `handshake-request` handle names: the store's [`HostState::handshake`]. The
/// handle itself carries nothing (a borrow, it cannot outlive the call).
pub struct HandshakeHandle;

/// A handshake being decided, and the headers its plugin may see.
pub(crate) struct CurrentHandshake {
    pub(crate) req: Arc<HandshakeRequest>,
    pub(crate) headers: HeaderFilter,
}

/// How much of its budget a hook call has used: CPU time of the calling thread (the call
/// runs start to finish on one thread: host imports never suspend it), with a wall-clock
/// cap of 20× the budget.
///
/// Reading a thread's CPU clock is a system call, too dear for every call of a few
/// microseconds; so the clock is read from the first epoch tick on (only calls that last
/// a tick, 1 ms, ever see one), and the time before that tick counts as fully used.
/// Time in host imports (relay's storage) is measured with the cheap wall clock and does
/// not count.
#[derive(Debug, Clone, Copy)]
pub struct CallClock {
    budget: Duration,
    wall_start: std::time::Instant,
    /// Thread CPU time and host time at the first tick.
    at_first_tick: Option<(Duration, Duration)>,
    /// Wall-clock time spent in host imports during this call.
    in_host: Duration,
}

impl CallClock {
    fn new() -> Self {
        CallClock {
            budget: Duration::ZERO,
            wall_start: std::time::Instant::now(),
            at_first_tick: None,
            in_host: Duration::ZERO,
        }
    }

    /// A call with `budget` starts now.
    pub fn start(&mut self, budget: Duration) {
        self.budget = budget;
        self.wall_start = std::time::Instant::now();
        self.at_first_tick = None;
        self.in_host = Duration::ZERO;
    }

    /// At an epoch tick: whether the call has used its budget.
    pub fn over_budget(&mut self) -> bool {
        if self.wall_start.elapsed() >= self.budget * 20 {
            return true;
        }
        self.plugin_cpu() >= self.budget
    }

    /// The plugin's CPU time so far (the time before the first tick counted as one tick).
    fn plugin_cpu(&mut self) -> Duration {
        let now = thread_cpu_time();
        match self.at_first_tick {
            None => {
                self.at_first_tick = Some((now, self.in_host));
                super::runtime::TICK
            }
            Some((cpu0, host0)) => {
                let host = self.in_host.saturating_sub(host0);
                now.saturating_sub(cpu0).saturating_sub(host) + super::runtime::TICK
            }
        }
    }

    /// What the call has used so far: (plugin CPU time, host-import time, wall-clock time).
    pub fn used(&mut self) -> (Duration, Duration, Duration) {
        (self.plugin_cpu(), self.in_host, self.wall_start.elapsed())
    }

    /// Run a host import, keeping its time out of the plugin's budget.
    fn host<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let t = std::time::Instant::now();
        let r = f();
        self.in_host += t.elapsed();
        r
    }
}

/// CPU time used by the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is supported on
    // every Linux relay runs on. On failure `ts` stays zero and only the wall-clock cap applies.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// A refused key-value write traps the call (see `wit/plugin.wit`): the plugin's request
/// fails with this reason.
fn kv_trap(call: &str, tenant: &str, metrics: &Metrics, e: KvError) -> wasmtime::Error {
    Metrics::inc(&metrics.kv_refused);
    if let KvError::Full(_) = e {
        tracing::warn!(tenant, "plugin: {call} refused: {e}");
    }
    wasmtime::Error::msg(format!("{call}: {e}"))
}

/// Log lines a plugin may write per call; more are counted but dropped.
pub const MAX_LOG_LINES_PER_CALL: u32 = 20;

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostState {
    /// Fresh state: no environment, arguments, stdin or preopens; stdout and
    /// stderr are in-memory pipes drained into relay's log after each call.
    pub fn new(
        tenant: Arc<str>,
        kv: Arc<dyn KvStore>,
        presence: Arc<dyn Presence>,
        metrics: Arc<Metrics>,
        log: Arc<crate::msglog::LogTarget>,
        limits: StoreLimits,
    ) -> Self {
        let stdout = LogPipe::new(STDIO_CAPACITY);
        let stderr = LogPipe::new(STDIO_CAPACITY);
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limits,
            tenant,
            kv,
            presence,
            metrics,
            log,
            stdout,
            stderr,
            logged: (0, 0),
            log_lines: 0,
            call_clock: CallClock::new(),
            handshake: None,
        }
    }

    fn current_handshake(&self) -> wasmtime::Result<&CurrentHandshake> {
        self.handshake
            .as_ref()
            .ok_or_else(|| wasmtime::Error::msg("handshake-request used outside on-handshake"))
    }

    /// Send new stdout/stderr output to the log (at most 1 KiB per stream per call).
    /// Returns `false` when the pipes are nearly full and the instance should be recycled.
    pub fn drain_stdio(&mut self) -> bool {
        for (pipe, seen, name) in [
            (&self.stdout, &mut self.logged.0, "stdout"),
            (&self.stderr, &mut self.logged.1, "stderr"),
        ] {
            let len = pipe.len();
            if len > *seen {
                let shown = pipe.read_from(*seen, 1024);
                tracing::info!(tenant = %self.tenant, stream = name, truncated = len - *seen > shown.len(), "plugin: {}", String::from_utf8_lossy(&shown).trim_end());
                *seen = len;
            }
        }
        self.log_lines = 0;
        self.logged.0 < STDIO_CAPACITY * 3 / 4 && self.logged.1 < STDIO_CAPACITY * 3 / 4
    }
}

impl types::Host for HostState {}

/// `handshake-request`: each method copies out only what it is asked for.
impl types::HostHandshakeRequest for HostState {
    fn conn(&mut self, _: Resource<HandshakeHandle>) -> wasmtime::Result<String> {
        Ok(self.current_handshake()?.req.conn.clone())
    }

    fn path(&mut self, _: Resource<HandshakeHandle>) -> wasmtime::Result<String> {
        Ok(self.current_handshake()?.req.path.clone())
    }

    fn headers(
        &mut self,
        _: Resource<HandshakeHandle>,
    ) -> wasmtime::Result<Vec<types::PairResult>> {
        let h = self.current_handshake()?;
        Ok(h.headers
            .handshake_headers(&h.req.headers)
            .map(|(name, value)| types::PairResult {
                name: name.to_owned(),
                value: value.to_owned(),
            })
            .collect())
    }

    fn header(
        &mut self,
        _: Resource<HandshakeHandle>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        let name = name.to_ascii_lowercase();
        let h = self.current_handshake()?;
        if h.headers.first_refusal(&name) {
            tracing::warn!(tenant = %self.tenant, header = %name, "the plugin asked for a request header it is not shown: declare it in #[plugin(headers = [...])] (and in the tenant's plugin_headers, if set); logged once per name");
        }
        Ok(h.headers
            .handshake_header(&h.req.headers, &name)
            .map(str::to_owned))
    }

    fn remote(&mut self, _: Resource<HandshakeHandle>) -> wasmtime::Result<String> {
        Ok(AddrText::new(&self.current_handshake()?.req.remote)
            .as_str()
            .to_owned())
    }

    fn tls(&mut self, _: Resource<HandshakeHandle>) -> wasmtime::Result<bool> {
        Ok(self.current_handshake()?.req.tls)
    }

    fn namespace(&mut self, _: Resource<HandshakeHandle>) -> wasmtime::Result<Option<String>> {
        Ok(self.current_handshake()?.req.namespace.clone())
    }

    fn auth(&mut self, _: Resource<HandshakeHandle>) -> wasmtime::Result<Option<String>> {
        Ok(self
            .current_handshake()?
            .req
            .auth
            .as_ref()
            .map(|v| v.to_string()))
    }

    fn drop(&mut self, _: Resource<HandshakeHandle>) -> wasmtime::Result<()> {
        // Only borrows are ever handed out: there is nothing of the plugin's to drop.
        Ok(())
    }
}

impl host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES_PER_CALL {
            return;
        }
        let t = &self.tenant;
        match level {
            Level::Trace => tracing::trace!(tenant = %t, "plugin: {message}"),
            Level::Debug => tracing::debug!(tenant = %t, "plugin: {message}"),
            Level::Info => tracing::info!(tenant = %t, "plugin: {message}"),
            Level::Warn => tracing::warn!(tenant = %t, "plugin: {message}"),
            Level::Error => tracing::error!(tenant = %t, "plugin: {message}"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn random_bytes(&mut self, len: u32) -> Vec<u8> {
        let mut v = vec![0u8; len.min(MAX_RANDOM) as usize];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut v);
        v
    }

    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        let kv = &self.kv;
        self.call_clock.host(|| kv.get(&key))
    }

    fn kv_set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_secs: Option<u32>,
    ) -> wasmtime::Result<()> {
        let kv = &self.kv;
        self.call_clock
            .host(|| kv.set(&key, value, ttl_secs.map(|s| Duration::from_secs(s.into()))))
            .map_err(|e| kv_trap("kv-set", &self.tenant, &self.metrics, e))
    }

    fn kv_set_if_absent(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_secs: Option<u32>,
    ) -> wasmtime::Result<bool> {
        let kv = &self.kv;
        self.call_clock
            .host(|| kv.set_if_absent(&key, value, ttl_secs.map(|s| Duration::from_secs(s.into()))))
            .map_err(|e| kv_trap("kv-set-if-absent", &self.tenant, &self.metrics, e))
    }

    fn kv_delete(&mut self, key: String) -> bool {
        let kv = &self.kv;
        self.call_clock.host(|| kv.delete(&key))
    }

    fn kv_incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_secs: Option<u32>,
    ) -> wasmtime::Result<Result<i64, String>> {
        let kv = &self.kv;
        match self
            .call_clock
            .host(|| kv.incr(&key, delta, ttl_secs.map(|s| Duration::from_secs(s.into()))))
        {
            Ok(n) => Ok(Ok(n)),
            Err(KvError::NotInteger) => Ok(Err(KvError::NotInteger.to_string())),
            Err(e) => Err(kv_trap("kv-incr", &self.tenant, &self.metrics, e)),
        }
    }

    fn kv_compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
        ttl_secs: Option<u32>,
    ) -> wasmtime::Result<bool> {
        let kv = &self.kv;
        let ttl = ttl_secs.map(|s| Duration::from_secs(s.into()));
        self.call_clock
            .host(|| kv.compare_and_swap(&key, expected.as_deref(), new, ttl))
            .map_err(|e| kv_trap("kv-compare-and-swap", &self.tenant, &self.metrics, e))
    }

    fn log_read(&mut self, file: String) -> Option<Vec<u8>> {
        match crate::msglog::read(&self.log, &file) {
            Ok(content) => content,
            Err(e) => {
                tracing::debug!(tenant = %self.tenant, "plugin: log-read refused: {e}");
                None
            }
        }
    }

    fn room_count(&mut self, room: String) -> u32 {
        self.presence.room_count(&room) as u32
    }

    fn user_connections(&mut self, user: String) -> Vec<String> {
        self.presence.user_connections(&user)
    }

    fn connection_exists(&mut self, conn: String) -> bool {
        self.presence.connection_exists(&conn)
    }
}

#[cfg(test)]
mod tests {
    use super::{thread_cpu_time, CallClock};
    use std::time::Duration;

    /// Burn `d` of this thread's CPU time (not wall time: the machine may be busy).
    fn spin(d: Duration) {
        let t = thread_cpu_time();
        while thread_cpu_time().saturating_sub(t) < d {
            std::hint::black_box(0u64);
        }
    }

    #[test]
    fn the_budget_is_the_plugins_cpu_time_not_waiting_or_host_time() {
        let budget = Duration::from_millis(5);
        // Waiting (a descheduled thread) uses no CPU: within budget, unlike a wall clock.
        let mut c = CallClock::new();
        c.start(budget);
        assert!(!c.over_budget(), "first tick");
        std::thread::sleep(Duration::from_millis(20));
        assert!(!c.over_budget(), "20 ms asleep is not 5 ms of CPU");
        // Host imports do not count.
        c.host(|| spin(Duration::from_millis(4)));
        assert!(
            !c.over_budget(),
            "4 ms in the host (plus the first tick) does not count"
        );
        // The plugin's own CPU does.
        spin(Duration::from_millis(20));
        assert!(c.over_budget(), "20 ms of plugin CPU is over 5 ms");
        // And so does wall-clock time past 20x the budget, whatever the CPU.
        c.start(budget);
        std::thread::sleep(budget * 21);
        assert!(c.over_budget());
    }
}
