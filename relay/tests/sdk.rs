//! The plugin SDK's own tests (signing helpers, JWT, the allocator), run on the host
//! through cargo, so that `cargo test --workspace` covers the SDK too (its crate lives
//! in the plugins' workspace, which builds for wasm32-wasip2).

use std::path::Path;
use std::process::Command;

#[test]
fn the_plugin_sdk_passes_its_own_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO"))
        .args([
            "test",
            "--quiet",
            "-p",
            "relay-plugin-sdk",
            "--manifest-path",
        ])
        .arg(root.join("plugins").join("Cargo.toml"))
        .arg("--target-dir")
        .arg(root.join("target").join("plugins-host"))
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("run cargo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the SDK's tests failed:\n{text}");
    assert!(text.contains("test result: ok"), "no test ran:\n{text}");
}
