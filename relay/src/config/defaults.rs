//! Default values of config keys (serde `default = "defaults::…"`).

use ipnet::IpNet;

use super::tenant::WireProfile;

pub fn max_connections() -> usize {
    10_000
}
pub fn max_connections_per_ip() -> usize {
    1_000
}
pub fn handshake_timeout_ms() -> u64 {
    10_000
}
pub fn max_body_bytes() -> usize {
    1 << 20
}
pub fn profile() -> WireProfile {
    WireProfile::WsJson
}
pub fn event_field() -> String {
    "event".into()
}
pub fn max_message_bytes() -> usize {
    64 << 10
}
pub fn max_messages_per_sec() -> u32 {
    100
}
pub fn max_inbound_bytes_per_sec() -> u64 {
    1 << 20
}
pub fn rate_limit_close_secs() -> u32 {
    5
}
pub fn max_pushes_per_sec() -> u32 {
    10_000
}
pub fn max_handshakes_per_ip_per_sec() -> u32 {
    20
}
pub fn udp_trusted() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}
pub fn idle_timeout_ms() -> u64 {
    60_000
}
pub fn ping_interval_ms() -> u64 {
    25_000
}
pub fn ping_timeout_ms() -> u64 {
    20_000
}
pub fn history_ttl_ms() -> u64 {
    600_000
}
pub fn history_field() -> String {
    "offset".into()
}
pub fn log_max_bytes() -> u64 {
    64 << 20
}
pub fn log_keep() -> usize {
    5
}
pub fn webhook_timeout_ms() -> u64 {
    5_000
}
pub fn webhook_retries() -> u32 {
    3
}
pub fn offline_max() -> usize {
    1000
}
pub fn offline_ttl_ms() -> u64 {
    7 * 24 * 3600 * 1000
}
pub fn offline_max_bytes() -> usize {
    64 << 10
}
pub fn kv_max_bytes() -> usize {
    64 << 20
}
pub fn namespaces() -> Vec<String> {
    vec!["/".into()]
}
pub fn plugin_deadline_ms() -> u64 {
    5
}
pub fn plugin_memory_mb() -> u64 {
    32
}
pub fn plugin_instances() -> usize {
    4
}
pub fn plugin_watch_ms() -> u64 {
    1000
}
pub fn auth_timeout_ms() -> u64 {
    30_000
}
pub fn outbound_queue() -> usize {
    1024
}
pub fn outbound_queue_bytes() -> usize {
    4 << 20
}
pub fn max_rooms_per_connection() -> usize {
    1000
}
pub fn udp_allow() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}
pub fn plugin_wait_ms() -> u64 {
    1_000
}
pub fn plugin_breaker_failures() -> u32 {
    20
}
pub fn plugin_breaker_open_ms() -> u64 {
    1_000
}
pub fn plugin_failure_mode() -> super::tenant::FailureMode {
    super::tenant::FailureMode::Closed
}
