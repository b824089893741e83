#!/usr/bin/env bash
# Runs one ringcast-loadtest scenario against a fresh gateway for every combination of a
# grid of gateway settings, RUNS times each, and prints one table (medians [min–max]).
#
#   bash tuning/sweep.sh
#   GRID="shards=1,2 outbound-limit=128KiB,1MiB epoll=false,true" \
#   SCENARIO="fanout --conns 2000 --rate 400 --publishers 8 --duration 5s" RUNS=3 bash tuning/sweep.sh
#
# GRID      space-separated `flag=v1,v2,..` over `ringcast gateway` flags (without the
#           dashes): shards, uring-entries, read-buffer, outbound-limit, shard-inbox,
#           bridge-inbox, heartbeat, epoll (true/false), ... [shards=1,2 outbound-limit=128KiB,1MiB epoll=false,true]
# SCENARIO  ringcast-loadtest arguments; --url, --api-key, --server-pid, --label, --json
#           are added here [fanout --conns 2000 --rate 400 --publishers 8 --duration 5s]
# FIGURES   table columns, keys of the JSON `figures` [deliveries_per_s,latency_p50_ms,latency_p99_ms,lost,server_cpu_us_per_delivery]
# RUNS (1), PORT (19300), HARNESS_CPU (1: keep the harness off the gateway's first core),
# OUT (results file, default target/sweep-<time>.jsonl; kept for `ringcast-loadtest summarize`).
set -euo pipefail
cd "$(dirname "$0")/.."
GRID=${GRID:-"shards=1,2 outbound-limit=128KiB,1MiB epoll=false,true"}
SCENARIO=${SCENARIO:-"fanout --conns 2000 --rate 400 --publishers 8 --duration 5s"}
FIGURES=${FIGURES:-deliveries_per_s,latency_p50_ms,latency_p99_ms,lost,server_cpu_us_per_delivery}
RUNS=${RUNS:-1} PORT=${PORT:-19300} HARNESS_CPU=${HARNESS_CPU:-1}
OUT=${OUT:-target/sweep-$(date +%Y%m%d-%H%M%S).jsonl}
bin=target/release
if [ ! -x $bin/ringcast ] || [ ! -x $bin/ringcast-loadtest ]; then cargo build --release --workspace --locked -q; fi
ulimit -n "$(ulimit -Hn)"

# SO_REUSEPORT lets a second gateway bind a port one already holds, silently splitting the
# clients between them: refuse to start on a port something already listens on.
port_free() { ! (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null || { echo "$(basename "$0"): port $1 is already in use (set PORT=...)" >&2; exit 2; }; }
mkdir -p "$(dirname "$OUT")"

# Expands the grid into one line per combination: "flag=value flag=value ...".
combos=("")
for axis in $GRID; do
  flag=${axis%%=*}; values=${axis#*=}
  next=()
  for c in "${combos[@]}"; do
    IFS=, read -ra vs <<<"$values"
    for v in "${vs[@]}"; do next+=("${c:+$c }$flag=$v"); done
  done
  combos=("${next[@]}")
done

GW=""
stop_gateway() {
  [ -n "$GW" ] || return 0
  kill "$GW" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$GW" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$GW" 2>/dev/null || true
  GW=""
}
trap stop_gateway EXIT

echo "sweep: ${#combos[@]} combinations × $RUNS run(s) of: ringcast-loadtest $SCENARIO" >&2
echo "sweep: uptime at start: $(uptime)" >&2
for combo in "${combos[@]}"; do
  args=()
  for kv in $combo; do args+=("--${kv%%=*}" "${kv#*=}"); done
  # Load tests connect fast: lift the per-shard accept rate unless the grid sweeps it.
  case " $combo " in *" accept-rate="*) ;; *) args+=(--accept-rate 1000000) ;; esac
  for run in $(seq 1 "$RUNS"); do
    port_free "$PORT"
    $bin/ringcast gateway --listen 127.0.0.1:"$PORT" --api-key sweep --log warn "${args[@]}" >/dev/null 2>"$OUT.gateway.log" &
    GW=$!
    for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.1; done
    kill -0 "$GW" 2>/dev/null || { echo "sweep: the gateway refused: ringcast gateway ${args[*]}: $(cat "$OUT.gateway.log")" >&2; exit 2; }
    echo "sweep: [$combo] run $run/$RUNS" >&2
    # shellcheck disable=SC2086 # SCENARIO is a list of arguments
    timeout 600 $bin/ringcast-loadtest $SCENARIO --url ws://127.0.0.1:"$PORT"/ws --api-key sweep --server-pid "$GW" \
      --cpus "$HARNESS_CPU" --label "$combo" --json >>"$OUT" 2>/dev/null || echo "sweep: [$combo] run $run failed" >&2
    stop_gateway
  done
done
echo "sweep: uptime at end: $(uptime)" >&2
echo "results: $OUT"
$bin/ringcast-loadtest summarize "$OUT" --figures "$FIGURES"
