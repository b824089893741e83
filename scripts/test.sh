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
status=0
# --lib --bins --tests: unit and integration tests (no doc tests: there are none).
cargo test --release --workspace --locked --lib --bins --tests -- --test-threads=2 2>&1 | tee "$log" || status=1
# The dashboard and ringcast.js in headless Chromium (TAP), and the deploy/ manifests.
bash scripts/browser.sh 2>&1 | tee -a "$log" || status=1
bash deploy/check.sh 2>&1 | tee -a "$log" || status=1
# One closing line over every test binary (cargo's "test result:") and TAP step ("# pass N").
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     /^# pass [0-9]+$/ { p += $3 } /^# fail [0-9]+$/ { f += $3 }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
