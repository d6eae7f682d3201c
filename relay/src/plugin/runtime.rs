//! The process-wide wasmtime engine, the linker (host imports plus the few
//! WASI interfaces Rust's std needs), the on-disk cache of compiled
//! components, and the import allow-list.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasData, Linker, ResourceTable};
use wasmtime::{Config, Engine};

use super::bindings;
use super::host::HostState;
use super::syncio::SyncIo;

/// Epoch ticks per second: the granularity of call deadlines.
pub const TICK: Duration = Duration::from_millis(1);

/// WASI interfaces a plugin may import (Rust's std for `wasm32-wasip2` imports
/// some even when the plugin does no I/O). They are satisfied with an empty
/// context: no environment, arguments, stdin or preopens; stdout/stderr go to the log.
pub const ALLOWED_WASI: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:io/error",
    "wasi:io/streams",
    "wasi:io/poll",
    // std's HashMap seeds its hasher from here (the seed is no secret; plugins get real
    // randomness from the host's `random-bytes`).
    "wasi:random/insecure-seed",
];

/// The engine and linker every tenant shares.
pub struct Runtime {
    /// One engine for the process (epoch interruption on).
    pub engine: Engine,
    /// Host imports + allowed WASI.
    pub linker: Linker<HostState>,
}

struct HasIo;
impl HasData for HasIo {
    type Data<'a> = &'a mut ResourceTable;
}

struct HasSyncIo;
impl HasData for HasSyncIo {
    type Data<'a> = SyncIo<'a>;
}

struct HasHost;
impl HasData for HasHost {
    type Data<'a> = &'a mut HostState;
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The shared runtime, created on first use (and its epoch ticker thread started).
pub fn runtime() -> Result<&'static Runtime, String> {
    RUNTIME.get_or_init(build).as_ref().map_err(Clone::clone)
}

fn build() -> Result<Runtime, String> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    if std::env::var_os("RELAY_WASM_PERFMAP").is_some() {
        // Name the plugins' compiled code for `perf` (/tmp/perf-PID.map).
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let engine = Engine::new(&config).map_err(|e| format!("wasmtime engine: {e:#}"))?;
    let mut linker: Linker<HostState> = Linker::new(&engine);
    let link = |r: wasmtime::Result<()>| r.map_err(|e| format!("linking host imports: {e:#}"));
    link(bindings::relay::plugin::host::add_to_linker::<
        HostState,
        HasHost,
    >(&mut linker, |s| s))?;
    link(bindings::relay::plugin::types::add_to_linker::<
        HostState,
        HasHost,
    >(&mut linker, |s| s))?;
    {
        use wasmtime_wasi::cli::{WasiCli, WasiCliView};
        use wasmtime_wasi::p2::bindings::{cli, io};
        let l = &mut linker;
        link(cli::environment::add_to_linker::<HostState, WasiCli>(
            l,
            HostState::cli,
        ))?;
        link(cli::exit::add_to_linker::<HostState, WasiCli>(
            l,
            HostState::cli,
        ))?;
        link(cli::stdin::add_to_linker::<HostState, WasiCli>(
            l,
            HostState::cli,
        ))?;
        link(cli::stdout::add_to_linker::<HostState, WasiCli>(
            l,
            HostState::cli,
        ))?;
        link(cli::stderr::add_to_linker::<HostState, WasiCli>(
            l,
            HostState::cli,
        ))?;
        // No terminals: these answer "not a terminal".
        link(cli::terminal_input::add_to_linker::<HostState, WasiCli>(
            l,
            HostState::cli,
        ))?;
        link(cli::terminal_output::add_to_linker::<HostState, WasiCli>(
            l,
            HostState::cli,
        ))?;
        link(cli::terminal_stdin::add_to_linker::<HostState, WasiCli>(
            l,
            HostState::cli,
        ))?;
        link(cli::terminal_stdout::add_to_linker::<HostState, WasiCli>(
            l,
            HostState::cli,
        ))?;
        link(cli::terminal_stderr::add_to_linker::<HostState, WasiCli>(
            l,
            HostState::cli,
        ))?;
        // Calls are synchronous; wasmtime-wasi's synchronous streams would enter a tokio
        // runtime of their own, which a worker thread forbids: see `syncio`.
        link(io::error::add_to_linker::<HostState, HasIo>(l, |s| {
            &mut s.table
        }))?;
        link(
            wasmtime_wasi::p2::bindings::sync::io::poll::add_to_linker::<HostState, HasSyncIo>(
                l,
                |s| SyncIo(&mut s.table),
            ),
        )?;
        link(
            wasmtime_wasi::p2::bindings::sync::io::streams::add_to_linker::<HostState, HasSyncIo>(
                l,
                |s| SyncIo(&mut s.table),
            ),
        )?;
        link(
            wasmtime_wasi::p2::bindings::random::insecure_seed::add_to_linker::<
                HostState,
                wasmtime_wasi::random::WasiRandom,
            >(l, |s| s.wasi.random()),
        )?;
    }
    let ticker = engine.weak();
    std::thread::Builder::new()
        .name("relay-wasm-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(TICK);
            match ticker.upgrade() {
                Some(e) => e.increment_epoch(),
                None => return,
            }
        })
        .map_err(|e| format!("epoch thread: {e}"))?;
    Ok(Runtime { engine, linker })
}

/// The `relay:plugin` contract version this relay implements (`wit/plugin.wit`).
pub const CONTRACT_VERSION: &str = "0.7.0";

/// The `relay:plugin` version a component was built against, if its imports name one
/// other than [`CONTRACT_VERSION`] (so a load failure can say "rebuild it").
pub fn other_contract(engine: &Engine, component: &Component) -> Option<String> {
    let names: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    other_contract_in(names.iter().map(String::as_str))
}

fn other_contract_in<'a>(imports: impl Iterator<Item = &'a str>) -> Option<String> {
    imports
        .filter_map(|name| name.strip_prefix("relay:plugin/"))
        .filter_map(|rest| rest.split_once('@').map(|(_, v)| v))
        .find(|v| *v != CONTRACT_VERSION)
        .map(str::to_owned)
}

/// Every import of `component` that relay does not provide, by name. Types a world
/// `use`s (such as the `handshake-request` resource) are imports too, but name no
/// capability: what can be done with them comes through an interface.
pub fn forbidden_imports(engine: &Engine, component: &Component) -> Vec<String> {
    use wasmtime::component::types::ComponentItem;
    component
        .component_type()
        .imports(engine)
        .filter(|(_, item)| !matches!(item.ty, ComponentItem::Type(_) | ComponentItem::Resource(_)))
        .map(|(name, _)| name.to_owned())
        .filter(|name| {
            let base = name.split('@').next().unwrap_or(name);
            !(base.starts_with("relay:plugin/") || ALLOWED_WASI.contains(&base))
        })
        .collect()
}

/// A compiled component and where it came from.
pub struct Compiled {
    /// The component.
    pub component: Component,
    /// SHA-256 of the `.wasm` file (hex).
    pub hash: String,
    /// Whether it was loaded from the on-disk cache rather than compiled.
    pub cached: bool,
}

/// Compile `wasm` (or load it from `cache_dir`, keyed by the file's hash and the
/// engine's compatibility hash, so a restart does not recompile).
pub fn compile(rt: &Runtime, wasm: &[u8], cache_dir: &Path) -> Result<Compiled, String> {
    let hash = hex::encode(Sha256::digest(wasm));
    let mut key = Sha256::new();
    key.update(hash.as_bytes());
    {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        rt.engine.precompile_compatibility_hash().hash(&mut h);
        key.update(h.finish().to_le_bytes());
    }
    let file: PathBuf = cache_dir.join(format!("{}.cwasm", hex::encode(key.finalize())));
    if file.exists() {
        // SAFETY: the file was written by `Component::serialize` of this same engine
        // configuration (its name includes the engine's compatibility hash) into relay's
        // own data directory; wasmtime also checks the header and refuses a mismatch.
        match unsafe { Component::deserialize_file(&rt.engine, &file) } {
            Ok(component) => {
                return Ok(Compiled {
                    component,
                    hash,
                    cached: true,
                })
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "ignoring unusable compiled-plugin cache entry")
            }
        }
    }
    let component =
        Component::new(&rt.engine, wasm).map_err(|e| format!("not a valid component: {e:#}"))?;
    match component.serialize() {
        Ok(bytes) => {
            let tmp = file.with_extension("tmp");
            let written = std::fs::create_dir_all(cache_dir)
                .and_then(|_| std::fs::write(&tmp, bytes))
                .and_then(|_| std::fs::rename(&tmp, &file));
            if let Err(e) = written {
                tracing::warn!(dir = %cache_dir.display(), error = %e, "cannot write the compiled-plugin cache");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot serialize compiled plugin"),
    }
    Ok(Compiled {
        component,
        hash,
        cached: false,
    })
}

#[cfg(test)]
mod tests {
    use super::{other_contract_in, CONTRACT_VERSION};

    #[test]
    fn a_plugin_built_against_another_contract_is_named() {
        let old = [
            "wasi:cli/stdout@0.2.6",
            "relay:plugin/types@0.2.0",
            "relay:plugin/host@0.2.0",
        ];
        assert_eq!(other_contract_in(old.into_iter()).as_deref(), Some("0.2.0"));
        let current = format!("relay:plugin/host@{CONTRACT_VERSION}");
        assert_eq!(
            other_contract_in([current.as_str(), "wasi:io/error@0.2.6"].into_iter()),
            None
        );
        assert!(include_str!("../../../wit/plugin.wit")
            .contains(&format!("package relay:plugin@{CONTRACT_VERSION};")));
    }
}
