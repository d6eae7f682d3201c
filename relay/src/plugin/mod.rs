//! The WASM plugin host: the production implementation of the policy seam.
//!
//! - [`bindings`]: host bindings of `wit/plugin.wit` (the only `bindgen!`).
//! - [`runtime`]: one engine, the linker, the compiled-component cache, the import allow-list.
//! - [`host`]: the `relay:plugin/host` imports and each store's state.
//! - [`convert`]: WIT values ↔ relay's policy types, validating what plugins return.
//! - [`stdio`]: plugins' stdout/stderr, kept for the log.
//! - [`syncio`]: `wasi:io` streams and poll for synchronous calls.
//! - [`policy`]: [`WasmPolicy`]: per-tenant instance pool, limits, deadlines, hot reload;
//!   `load.rs` loads and reloads a plugin, `call.rs` runs one hook call.
//! - [`breaker`]: a tenant's circuit breaker (a plugin that keeps failing).

pub mod bindings;
pub mod breaker;
mod call;
pub mod check;
pub mod convert;
pub mod host;
mod load;
pub mod policy;
pub mod runtime;
pub mod stdio;
pub mod syncio;

pub use check::{check_file, CheckError, PluginSummary};
pub use convert::HeaderFilter;
pub use load::{InitError, LoadError};
pub use policy::{PluginLimits, WasmPolicy};

/// Directory of the plugins bundled in `plugins/`, built by relay's build script.
pub const BUNDLED_DIR: &str = env!("RELAY_PLUGINS_DIR");

/// Path of a bundled plugin by crate name (`md5-sign` → `<dir>/md5_sign.wasm`).
pub fn bundled(name: &str) -> std::path::PathBuf {
    std::path::Path::new(BUNDLED_DIR).join(format!("{}.wasm", name.replace('-', "_")))
}
