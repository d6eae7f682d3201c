#!/usr/bin/env bash
# The fuzz smoke that CI runs (.ci/run): build every target with cargo-fuzz (nightly,
# libFuzzer, AddressSanitizer) and run each for FUZZ_SECS seconds (default 20), starting
# from its seed corpus in corpus/<target>. A crash, a failed check or a leak fails the run
# and leaves its input in artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
# The targets need no WASM plugin: skip relay's build of the bundled ones.
export RELAY_SKIP_PLUGIN_BUILD=1
cargo +nightly fuzz build
secs=${FUZZ_SECS:-20}
for t in $(cargo +nightly fuzz list); do
    # New inputs go to a scratch corpus (target/ is not committed); the seeds are read.
    mkdir -p "target/corpus/$t"
    cargo +nightly fuzz run "$t" "target/corpus/$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=4096 -print_final_stats=1 2>&1 |
        grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|cov:|==[0-9]+==|SUMMARY|Done)" | tail -3
done
