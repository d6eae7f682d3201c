//! The plugin SDK's own unit tests (`plugins/sdk`), run on the host as part of the
//! workspace's tests: the SDK is another workspace, built for wasm32 by relay.

use std::path::Path;
use std::process::Command;

#[test]
fn the_plugin_sdk_unit_tests_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let host = Command::new("rustc")
        .arg("-vV")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| {
            v.lines()
                .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        })
        .expect("rustc -vV names the host target");
    let out = Command::new(cargo)
        .args([
            "test",
            "-p",
            "relay-plugin-sdk",
            "--target",
            &host,
            "--target-dir",
        ])
        .arg(root.join("target/plugins-host"))
        .arg("--manifest-path")
        .arg(root.join("plugins/Cargo.toml"))
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("run cargo test for the SDK");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "SDK tests failed:\n{text}");
    assert!(
        text.contains("query_param_decodes_only_what_it_returns ... ok"),
        "the SDK's tests did not run:\n{text}"
    );
}
