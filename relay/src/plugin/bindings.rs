//! The only `bindgen!` in relay: host-side bindings of `wit/plugin.wit`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    // Hooks are synchronous calls, inline on the calling (tokio worker) thread: nothing
    // a plugin can import waits, and a call's deadline bounds how long it holds the thread.
    // Hook arguments borrow relay's own strings and headers instead of copying them
    // (types used both ways, such as `pair`, get a `...Param` and a `...Result` form).
    ownership: Borrowing { duplicate_if_necessary: true },
    // A refused key-value write (too large, store full) traps the call.
    imports: {
        "relay:plugin/host.kv-set": trappable,
        "relay:plugin/host.kv-set-if-absent": trappable,
        "relay:plugin/host.kv-incr": trappable,
        "relay:plugin/host.kv-compare-and-swap": trappable,
        // A handle used outside its call traps (it cannot be: borrows end with the call).
        "relay:plugin/types.[method]handshake-request.conn": trappable,
        "relay:plugin/types.[method]handshake-request.path": trappable,
        "relay:plugin/types.[method]handshake-request.headers": trappable,
        "relay:plugin/types.[method]handshake-request.header": trappable,
        "relay:plugin/types.[method]handshake-request.remote": trappable,
        "relay:plugin/types.[method]handshake-request.tls": trappable,
        "relay:plugin/types.[method]handshake-request.namespace": trappable,
        "relay:plugin/types.[method]handshake-request.auth": trappable,
    },
    // The handshake a hook is called with lives in the store's state for the call; its
    // handle only names it.
    with: {
        "relay:plugin/types.handshake-request": super::host::HandshakeHandle,
    },
});
