//! relay: a high-throughput, WebAssembly-extensible real-time edge relay.
//!
//! Clients connect over WebSocket (plain or TLS); backends push over HTTP and
//! UDP; every decision about a connection or a push is made by the tenant's
//! policy; messages fan out through a broker to the hub, encoded once and
//! shared by every recipient.
//!
//! # Layout
//! Modules the binary, the tests and benchmarks use are public; the rest are
//! `pub(crate)` (named in `code` style below).
//!
//! - [`config`]: TOML configuration, validated with key and line in errors.
//! - [`error`]: error types and whose fault they are.
//! - [`shutdown`]: cancellation token and task tracker.
//! - [`node`]: owns tenants, broker and metrics; runs policy actions.
//! - `tenant`: a tenant's hub, policy and codec.
//! - [`transport`]: listener limits, TLS, WebSocket and Engine.IO transports.
//! - `web`: HTTP response helpers (a leaf every layer may use).
//! - `session`: what a client's connection means: ws-json, and Socket.IO over Engine.IO.
//! - [`protocol`]: wire profiles (codecs) and WebSocket frame encoding.
//! - [`hub`]: sharded rooms, users and connections; fan-out; presence.
//! - [`policy`]: the policy seam (four hooks, actions) and the built-in `open` policy.
//! - [`plugin`]: the WASM plugin host (wasmtime components), the production policy.
//! - [`store`]: storage seams (the tenant key-value store plugins use).
//! - `ingress`: HTTP push and UDP datagrams.
//! - `broker`: the broker seam (publications, room history): one-node and Redis brokers.
//! - [`cluster`]: several nodes through Redis: heartbeat, presence, subscriptions.
//! - [`fault`]: whose fault an error is.
//! - `fuzzing`: entry points of the fuzz targets in `fuzz/` (hidden; not an API).
//! - [`metrics`]: counters, rendered for `/metrics`.
//! - [`rate`]: rate limits (token buckets): per connection, per tenant, per address.
//! - `server`: the composition root: builds each part once from the config, binds the
//!   listeners and routes their requests, starts the background tasks ([`start`], [`check`], [`Running`]).

pub(crate) mod broker;
pub mod cluster;
pub mod config;
pub mod error;
pub mod fault;
#[doc(hidden)]
pub mod fuzzing;
pub mod hub;
pub(crate) mod ingress;
pub mod metrics;
pub mod msglog;
pub mod node;
pub mod plugin;
pub mod policy;
#[cfg(test)]
mod proptests;
pub mod protocol;
pub mod rate;
mod server;
pub(crate) mod session;
pub mod shutdown;
pub mod store;
pub(crate) mod tenant;
pub mod transport;
pub(crate) mod web;
pub(crate) mod webhook;

pub use config::Config;
pub use error::Error;
pub use server::{check, start, Running};
