#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer coverage instrumentation on stable Rust and runs
# each for a bounded time:   bash scripts/fuzz.sh [seconds-per-target, default 60]
# Crashing inputs land in fuzz/artifacts/<target>/; the corpus grows in fuzz/corpus/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
host=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=3 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
# --target keeps RUSTFLAGS off build scripts and proc macros.
cargo build --release --locked --manifest-path fuzz/Cargo.toml --target "$host" 2>&1 | tail -n 1
for target in ws_decode ws_inflate http_parse; do
  mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
  echo "fuzz: $target for ${seconds}s"
  "fuzz/target/$host/release/$target" "fuzz/corpus/$target" -max_total_time="$seconds" \
    -artifact_prefix="fuzz/artifacts/$target/" -print_final_stats=1 2>&1 | grep -E "^(Done|stat::number_of_executed_units|==|SUMMARY)" || true
  # libFuzzer's exit status is lost in the pipe above; a crash leaves an artifact.
  if ls "fuzz/artifacts/$target"/crash-* "fuzz/artifacts/$target"/leak-* "fuzz/artifacts/$target"/timeout-* >/dev/null 2>&1; then
    echo "fuzz: $target found a failing input in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
