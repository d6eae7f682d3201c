//! Builds the WASM plugins in `plugins/` (their own workspace, target
//! `wasm32-wasip2`) so that a fresh clone's `cargo build`/`cargo test` has
//! them, and tells the crate where they are (`RELAY_PLUGINS_DIR`).
//!
//! rustup does not add a target listed in rust-toolchain.toml to an
//! already-installed toolchain, so this adds `wasm32-wasip2` itself when it
//! is missing, and says so. Set `RELAY_SKIP_PLUGIN_BUILD=1` to skip (the
//! bundled plugins are then missing at run time, with a clear error).

use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root").to_path_buf();
    let plugins = root.join("plugins");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { root.join(d) })
        .unwrap_or_else(|| root.join("target"))
        .join("plugins");
    let out = target_dir.join(TARGET).join("release");
    println!("cargo:rustc-env=RELAY_PLUGINS_DIR={}", out.display());
    println!("cargo:rerun-if-changed={}", plugins.display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!("cargo:rerun-if-env-changed=RELAY_SKIP_PLUGIN_BUILD");
    if std::env::var_os("RELAY_SKIP_PLUGIN_BUILD").is_some() {
        println!(
            "cargo:warning=RELAY_SKIP_PLUGIN_BUILD is set: bundled WASM plugins were not built"
        );
        return;
    }
    ensure_target();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir)
        .arg("--manifest-path")
        .arg(plugins.join("Cargo.toml"))
        // The outer build's settings are for the host, not for wasm.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_PROFILE_RELEASE_DEBUG")
        .status()
        .expect("run cargo to build the WASM plugins");
    if !status.success() {
        panic!(
            "building the WASM plugins in {} failed (see the errors above)",
            plugins.display()
        );
    }
}

/// Add the wasm32-wasip2 target with rustup when the toolchain lacks it.
fn ensure_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        });
    match installed {
        Ok(true) => {}
        Ok(false) => {
            println!("cargo:warning=adding the {TARGET} target with rustup (needed to build the bundled WASM plugins)");
            let ok = Command::new("rustup")
                .args(["target", "add", TARGET])
                .status()
                .map(|s| s.success());
            if !matches!(ok, Ok(true)) {
                panic!("`rustup target add {TARGET}` failed; install the target to build relay's plugins");
            }
        }
        Err(e) => println!(
            "cargo:warning=cannot run rustup ({e}); assuming the {TARGET} target is installed"
        ),
    }
}
