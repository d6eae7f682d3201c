//! The end-to-end suite: a real relay on ephemeral ports driven by real clients.
//!
//! One test binary rather than one per file: every binary links the relay and
//! wasmtime (hundreds of MB in a debug build), so one link instead of eighteen
//! keeps the suite's build time and disk use down. Tests still run two at a time
//! (the default of one per core), as they did per file.

mod bench_tool;
mod close_codes;
mod cluster;
mod cluster_actions;
mod cluster_history;
mod cluster_tls;
mod conformance;
mod disk_full;
mod hardening;
mod history;
mod ingress;
mod kv_atomic;
mod limits;
mod msglog;
mod offline;
mod plugin_storms;
mod plugins;
mod rate_limits;
mod sdk;
mod seed_egg_envelope;
mod seed_mswoole;
mod seed_socket_im;
mod seed_swoole_push;
mod seed_xiaoniu;
mod seeds_all;
mod socketio;
mod webhooks;
mod websocket;
