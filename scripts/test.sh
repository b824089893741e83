#!/usr/bin/env bash
# The one test command (README, CI): engines up, then every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --workspace --all-targets --locked 2>&1 | tail -n 3
# Fuzz targets build on stable (libFuzzer linked, not instrumented) so they cannot rot.
cargo build --release --locked --manifest-path fuzz/Cargo.toml 2>&1 | tail -n 1
cargo test --release --workspace --locked -- --test-threads=2
