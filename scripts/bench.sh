#!/usr/bin/env bash
# Regenerates the load-test figures in BENCHMARKS.md: ringcast and the `limit` ceiling
# with the same harness, server pinned to cpu 0 and harness to cpu 1, each run RUNS
# times. Prints one JSON object per run (collect with `> results.jsonl`).
#   RUNS=3 CONNS=2000 RATE=200 DURATION=10s bash scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3} CONNS=${CONNS:-2000} RATE=${RATE:-200} DURATION=${DURATION:-10s} IDLE=${IDLE:-15000}
# The loaded pair: many publishers at once (as from many backends), so messages share
# inbox batches and sends; `limit` at the same rate.
LOADED_RATE=${LOADED_RATE:-800} PUBLISHERS=${PUBLISHERS:-16}
PORT=${PORT:-18080}
cargo build --release --workspace --locked -q
bin=target/release
ulimit -n "$(ulimit -Hn)"

start_gateway() {
  taskset -c 0 $bin/ringcast gateway --listen 127.0.0.1:$PORT --shards 1 --pin 0 --api-key bench --log warn >/dev/null 2>&1 &
  GW=$!
  for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return 0; sleep 0.1; done
  echo "gateway did not start" >&2; exit 1
}
stop_gateway() { kill "$GW" 2>/dev/null; wait "$GW" 2>/dev/null || true; }
trap 'stop_gateway' EXIT

for run in $(seq 1 "$RUNS"); do
  echo "run $run/$RUNS: ringcast fanout" >&2
  start_gateway
  taskset -c 1 $bin/ringcast-loadtest fanout --url ws://127.0.0.1:$PORT/ws --conns "$CONNS" --rate "$RATE" \
    --duration "$DURATION" --api-key bench --server-pid "$GW" --json
  stop_gateway
  echo "run $run/$RUNS: limit" >&2
  taskset -c 1 $bin/ringcast-loadtest limit --conns "$CONNS" --rate "$RATE" --duration "$DURATION" --server-cpu 0 --json
  echo "run $run/$RUNS: ringcast fanout, $PUBLISHERS publishers at $LOADED_RATE msgs/s" >&2
  start_gateway
  taskset -c 1 $bin/ringcast-loadtest fanout --url ws://127.0.0.1:$PORT/ws --conns "$CONNS" --rate "$LOADED_RATE" \
    --publishers "$PUBLISHERS" --duration "$DURATION" --api-key bench --server-pid "$GW" --json
  stop_gateway
  echo "run $run/$RUNS: limit at $LOADED_RATE msgs/s" >&2
  taskset -c 1 $bin/ringcast-loadtest limit --conns "$CONNS" --rate "$LOADED_RATE" --duration "$DURATION" --server-cpu 0 --json
  echo "run $run/$RUNS: ringcast idle $IDLE" >&2
  start_gateway
  taskset -c 1 $bin/ringcast-loadtest idle --url ws://127.0.0.1:$PORT/ws --conns "$IDLE" --duration 3s --server-pid "$GW" --json
  stop_gateway
done
