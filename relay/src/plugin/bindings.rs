//! The only `bindgen!` in relay: host-side bindings of `wit/plugin.wit`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
});
