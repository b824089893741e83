#!/usr/bin/env bash
# ringcast's Pusher protocol 7 endpoint vs Sockudo (issue 16), same harness, same settings:
# (a) server memory per idle *subscribed* connection (`idle --channel`: RSS growth / held
# connections) and (b) server CPU-µs per delivery in a fan-out (CONNS subscribers, PAYLOAD-
# byte events triggered through each server's signed HTTP API at RATE/s). The server runs
# pinned to cpu 0 (ringcast: one shard; Sockudo: its tokio runtime sees one cpu), the
# harness to cpu 1; a fresh server per measurement; modes alternate within each round so
# host noise hits both. Prints one JSON line per measurement, then medians [min-max] and
# the per-round ratio ringcast/Sockudo (the figure to trust on a shared host).
#
#   RUNS=3 bash scripts/bench-pusher.sh
#
# IDLE_CONNS (10000), CONNS (5000), RATE (50), PAYLOAD (200), DURATION (10s), HOLD (10s:
# idle hold), PUBLISHERS (1: HTTP connections triggering, one request in flight each, as
# one backend does; a server that answers after writing its broadcast then gets less than
# RATE, see rate_achieved; 4 reach the rate but their messages arrive together, and a
# server may write those together), RUNS (3), PORT (18791), MODES ("ringcast sockudo"), SCENARIOS ("idle fanout"),
# SOCKUDO (binary, /work/sockudo/bin/sockudo; a missing binary drops that mode, and says so).
# Every run is bounded: the harness ends by itself, and each measurement has a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE_CONNS=${IDLE_CONNS:-10000} CONNS=${CONNS:-5000} RATE=${RATE:-50} PAYLOAD=${PAYLOAD:-200}
DURATION=${DURATION:-10s} HOLD=${HOLD:-10s} RUNS=${RUNS:-3} PORT=${PORT:-18791} PUBLISHERS=${PUBLISHERS:-1}
SCENARIOS=${SCENARIOS:-"idle fanout"}
MODES=${MODES:-"ringcast sockudo"} SOCKUDO=${SOCKUDO:-/work/sockudo/bin/sockudo}
APP_ID=4242 APP_KEY=bench-key APP_SECRET=bench-secret
APP="$APP_ID:$APP_KEY:$APP_SECRET"
bin=target/release
ulimit -n "$(ulimit -Hn)"
if [[ " $MODES " == *" sockudo "* && ! -x "$SOCKUDO" ]]; then
  echo "bench-pusher: no Sockudo binary at $SOCKUDO: measuring ringcast alone" >&2
  MODES=${MODES//sockudo/}
fi
results=$(mktemp)
rundir=$(mktemp -d) # Sockudo reads config/config.* relative to its cwd: an empty dir has none
SERVER=""
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$rundir"; }
trap cleanup EXIT

start_server() { # $1 = mode; sets SERVER
  case "$1" in
    ringcast)
      taskset -c 0 "$bin/ringcast" gateway --listen "127.0.0.1:$PORT" --api-key bench --shards 1 \
        --pusher-app "$APP" --max-connections 19000 --accept-rate 1000000 --log warn >/dev/null 2>&1 &
      ;;
    sockudo)
      # In-memory drivers everywhere, rate limiter and metrics off, the app's own limits
      # (100 connections, 100 backend events/s by default) lifted.
      (cd "$rundir" && exec env HOST=127.0.0.1 PORT="$PORT" ADAPTER_DRIVER=local CACHE_DRIVER=memory \
        QUEUE_DRIVER=memory APP_MANAGER_DRIVER=memory RATE_LIMITER_ENABLED=false RATE_LIMITER_DRIVER=memory \
        METRICS_ENABLED=false DEBUG=false RUST_LOG=warn \
        SOCKUDO_DEFAULT_APP_ID="$APP_ID" SOCKUDO_DEFAULT_APP_KEY="$APP_KEY" SOCKUDO_DEFAULT_APP_SECRET="$APP_SECRET" \
        SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=100000 SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=100000 \
        SOCKUDO_DEFAULT_APP_MAX_READ_REQUESTS_PER_SECOND=100000 \
        taskset -c 0 "$SOCKUDO") >"$rundir/sockudo.log" 2>&1 &
      ;;
  esac
  SERVER=$!
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
  sleep 1 # let start-up allocations settle before the RSS baseline
}

stop_server() { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; SERVER=""; sleep 0.5; }

row() { # $1 = mode, $2 = scenario, $3 = round; reads the harness JSON on stdin
  python3 -c '
import json, sys
r = json.load(sys.stdin); f = {k: v["value"] if isinstance(v, dict) and "value" in v else v for k, v in r["figures"].items()}
keys = ["server_rss_bytes_per_conn", "published", "connections_held_at_end", "connections_ready", "server_cpu_us_per_delivery", "deliveries",
        "lost", "latency_p50_ms", "latency_p99_ms", "harness_cpu_percent", "server_cpu_percent", "rate_achieved", "connect_rate_per_s"]
out = {"mode": sys.argv[1], "scenario": sys.argv[2], "round": int(sys.argv[3])}
out.update({k: f[k] for k in keys if k in f})
out["notes"] = r.get("notes", [])
print(json.dumps(out))' "$@"
}

measure() { # $1 = mode, $2 = scenario, $3 = round
  local mode=$1 scenario=$2 round=$3 json
  start_server "$mode"
  local common=(--target pusher --pusher-app "$APP" --url "ws://127.0.0.1:$PORT" --server-pid "$SERVER" --cpus 1 --json)
  if [ "$scenario" = idle ]; then
    json=$(timeout 300 "$bin/ringcast-loadtest" idle "${common[@]}" --channel idle-room --conns "$IDLE_CONNS" --duration "$HOLD") || json=""
  else
    json=$(timeout 300 "$bin/ringcast-loadtest" fanout "${common[@]}" --channel bench --conns "$CONNS" --rate "$RATE" \
      --duration "$DURATION" --payload "$PAYLOAD" --publishers "$PUBLISHERS") || json=""
  fi
  stop_server
  if [ -z "$json" ]; then
    echo "{\"mode\": \"$mode\", \"scenario\": \"$scenario\", \"round\": $round, \"failed\": true}" | tee -a "$results"
    [ "$mode" = sockudo ] && tail -5 "$rundir/sockudo.log" >&2
    return 0
  fi
  echo "$json" | row "$mode" "$scenario" "$round" | tee -a "$results"
}

echo "bench-pusher: modes [$MODES], $RUNS rounds; idle $IDLE_CONNS subscribed for $HOLD; fan-out $CONNS subscribers, $PAYLOAD B at $RATE/s for $DURATION over $PUBLISHERS publishers" >&2
for round in $(seq 1 "$RUNS"); do
  for scenario in $SCENARIOS; do
    for mode in $MODES; do
      echo "[round $round/$RUNS] $scenario $mode ($(cut -d' ' -f1-3 /proc/loadavg) load)" >&2
      measure "$mode" "$scenario" "$round"
    done
  done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def spread(vals, fmt="{:,.0f}"):
    vals = [v for v in vals if isinstance(v, (int, float))]
    if not vals:
        return "n/a"
    return f"{fmt.format(statistics.median(vals))} [{fmt.format(min(vals))}–{fmt.format(max(vals))}]"
modes = sorted({r["mode"] for r in rows}, key=lambda m: m != "ringcast")
print("| server | idle B/subscribed conn | held | fan-out CPU-µs/delivery | msgs/s achieved | deliveries | lost | p50 ms | p99 ms | server CPU % | harness CPU % | runs |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for m in modes:
    idle = [r for r in rows if r["mode"] == m and r["scenario"] == "idle" and not r.get("failed")]
    fan = [r for r in rows if r["mode"] == m and r["scenario"] == "fanout" and not r.get("failed")]
    g = lambda rs, k: [r.get(k) for r in rs]
    print(f"| {m} | {spread(g(idle, 'server_rss_bytes_per_conn'))} | {spread(g(idle, 'connections_held_at_end'))} | "
          f"{spread(g(fan, 'server_cpu_us_per_delivery'), '{:.2f}')} | {spread(g(fan, 'rate_achieved'), '{:.1f}')} | {spread(g(fan, 'deliveries'))} | {spread(g(fan, 'lost'))} | "
          f"{spread(g(fan, 'latency_p50_ms'), '{:.2f}')} | {spread(g(fan, 'latency_p99_ms'), '{:.2f}')} | "
          f"{spread(g(fan, 'server_cpu_percent'), '{:.0f}')} | {spread(g(fan, 'harness_cpu_percent'), '{:.0f}')} | {len(idle)}+{len(fan)} |")
failed = [r for r in rows if r.get("failed")]
if failed:
    print(f"\nfailed measurements: {[(r['mode'], r['scenario'], r['round']) for r in failed]}")
if "ringcast" in modes and "sockudo" in modes:
    for scenario, key, what in [("idle", "server_rss_bytes_per_conn", "memory per idle subscribed connection"),
                                ("fanout", "server_cpu_us_per_delivery", "CPU per delivery")]:
        ratios = []
        for rnd in sorted({r["round"] for r in rows}):
            a = [r.get(key) for r in rows if r["round"] == rnd and r["scenario"] == scenario and r["mode"] == "ringcast"]
            b = [r.get(key) for r in rows if r["round"] == rnd and r["scenario"] == scenario and r["mode"] == "sockudo"]
            if a and b and isinstance(a[0], (int, float)) and isinstance(b[0], (int, float)) and b[0] > 0:
                ratios.append(a[0] / b[0])
        print(f"\nringcast / Sockudo, {what}, per round: {spread(ratios, '{:.3f}')} ({len(ratios)} rounds)")
for r in rows:
    for n in r.get("notes", []):
        print(f"note ({r['mode']} {r['scenario']} round {r['round']}): {n}")
PY
