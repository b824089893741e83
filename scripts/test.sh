#!/usr/bin/env bash
# The one test command (README, CI): engines up, then every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --workspace --all-targets --locked 2>&1 | tail -n 3
# Fuzz targets: coverage-instrumented libFuzzer builds on the stable toolchain (the
# sancov flags below are what cargo-fuzz passes, minus its nightly-only sanitizer), then
# FUZZ_SECONDS of fuzzing each. A crash fails the run and leaves the input in fuzz/artifacts.
bash scripts/fuzz.sh "${FUZZ_SECONDS:-15}"
log=target/test-output.log
mkdir -p target
# --lib --bins --tests: unit and integration tests (no doc tests: there are none).
cargo test --release --workspace --locked --lib --bins --tests -- --test-threads=2 2>&1 | tee "$log"
# One closing line over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
