//! A plugin that reads a file. Its component imports `wasi:filesystem`, which
//! relay does not provide: loading it must fail with a message naming the import.

use relay_plugin_sdk::*;

struct Intruder;

#[relay_plugin_sdk::plugin]
impl Plugin for Intruder {
    fn on_handshake(_req: &HandshakeRequest) -> Result<HandshakeDecision, String> {
        let secret = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        Ok(accept(Some(secret.len().to_string()), vec![]))
    }
}
