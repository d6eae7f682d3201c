//! The only `bindgen!` in relay: host-side bindings of `wit/plugin.wit`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    // Hooks run on a fiber (the engine has async support) so that a call can run inline
    // on a tokio worker; the host imports answer at once and stay synchronous.
    exports: { default: async },
    // Hook arguments borrow relay's own strings and headers instead of copying them
    // (types used both ways, such as `pair`, get a `...Param` and a `...Result` form).
    ownership: Borrowing { duplicate_if_necessary: true },
    // A refused key-value write (too large, store full) traps the call.
    imports: {
        "relay:plugin/host.kv-set": trappable,
        "relay:plugin/host.kv-set-if-absent": trappable,
    },
});
