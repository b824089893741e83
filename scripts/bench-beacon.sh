#!/usr/bin/env bash
# Fan-out through NATS with two gateway nodes vs one embedded node, same harness, same
# server core budget (BENCHMARKS.md, "Beacon").
#
#   bash scripts/bench-beacon.sh            # RUNS=3 CONNS=10000 DURATION=10s RATE=100
#
# Server side on cpu 0: either one embedded gateway, or two gateways sharing one port
# (SO_REUSEPORT spreads the subscribers over both) plus a private nats-server. Harness on
# cpu 1. For each run it prints the harness's JSON and the CPU (ms) each server thread and
# the nats-server used, so the bridge thread's share is visible. Everything it starts is
# stopped at the end, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
CONNS=${CONNS:-10000}
DURATION=${DURATION:-10s}
RATE=${RATE:-100}
PUBLISHERS=${PUBLISHERS:-16}
SERVER_CPU=${SERVER_CPU:-0}
HARNESS_CPU=${HARNESS_CPU:-1}
bin=target/release
out=${OUT:-target/bench-beacon}
mkdir -p "$out"
ulimit -n "$(ulimit -Hn)"
[ -x "$bin/ringcast" ] && [ -x "$bin/ringcast-loadtest" ] || cargo build --release --workspace >/dev/null

pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Per-thread CPU (utime+stime, ms) of the given pids, as "pid/thread=ms" lines.
thread_cpu() {
  python3 - "$@" <<'PY'
import os, sys
tick = os.sysconf("SC_CLK_TCK")
for pid in sys.argv[1:]:
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
            fields = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            print(f"{pid}.{tid}/{comm}={(int(fields[11]) + int(fields[12])) * 1000 // tick}")
        except FileNotFoundError:
            pass
PY
}

start_gateway() { # port, extra args...
  local port=$1; shift
  taskset -c "$SERVER_CPU" "$bin/ringcast" gateway --listen "127.0.0.1:$port" --shards 1 --pin "$SERVER_CPU" \
    --api-key bench --log warn --max-connections 100000 --accept-rate 1000000 "$@" >"$out/gateway-$port-$RANDOM.log" 2>&1 &
  pids+=($!)
  echo $!
}

wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

harness() { # port, label
  taskset -c "$HARNESS_CPU" "$bin/ringcast-loadtest" fanout --url "ws://127.0.0.1:$1/ws" --conns "$CONNS" \
    --rate "$RATE" --duration "$DURATION" --publishers "$PUBLISHERS" --api-key bench --cpus "$HARNESS_CPU" --json
}

# One JSON line: setup, the harness's JSON object, per-thread CPU before and after.
record() {
  python3 -c 'import json, sys; print(json.dumps({"setup": sys.argv[1], "harness": json.loads(sys.argv[2]), "cpu_ms_before": sys.argv[3].split(), "cpu_ms_after": sys.argv[4].split()}))' "$@"
}

run_embedded() {
  local port; port=$(free_port)
  local pid; pid=$(start_gateway "$port")
  wait_port "$port"
  local before; before=$(thread_cpu "$pid")
  local result; result=$(harness "$port")
  local after; after=$(thread_cpu "$pid")
  record "embedded, 1 node" "$result" "$before" "$after"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

run_nats() {
  local nport; nport=$(free_port)
  local store; store=$(mktemp -d)
  taskset -c "$SERVER_CPU" nats-server -a 127.0.0.1 -p "$nport" -js -sd "$store" >/dev/null 2>&1 &
  local npid=$!; pids+=($npid)
  wait_port "$nport"
  local port; port=$(free_port)
  local a; a=$(start_gateway "$port" --nats "nats://127.0.0.1:$nport" --node bench-a)
  local b; b=$(start_gateway "$port" --nats "nats://127.0.0.1:$nport" --node bench-b)
  wait_port "$port"; sleep 0.5
  local before; before=$(thread_cpu "$a" "$b" "$npid")
  local result; result=$(harness "$port")
  local after; after=$(thread_cpu "$a" "$b" "$npid")
  record "nats, 2 nodes" "$result" "$before" "$after"
  kill "$a" "$b" "$npid"; wait "$a" "$b" "$npid" 2>/dev/null || true
  rm -rf "$store"
}

results="$out/results.jsonl"
: >"$results"
for run in $(seq 1 "$RUNS"); do
  echo "bench-beacon: run $run/$RUNS: embedded" >&2
  run_embedded | tee -a "$results"
  echo "bench-beacon: run $run/$RUNS: nats, 2 nodes" >&2
  run_nats | tee -a "$results"
done
python3 scripts/bench-beacon-table.py "$results"
