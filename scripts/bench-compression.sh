#!/usr/bin/env bash
# permessage-deflate on the fan-out path (issue 17 part 1): bytes on the wire and gateway
# CPU per delivery, compressed vs plain, same harness run otherwise. Gateway pinned to cpu 0
# (one shard), harness to cpu 1; modes alternate within each round so host noise hits both.
# Prints one line per run and the medians [min-max].
#
#   RUNS=3 CONNS=5000 bash scripts/bench-compression.sh
#
# CONNS (5000), RATE (20 msgs/s), PAYLOAD (1000 B of telemetry JSON readings: --pad telemetry),
# DURATION (10s), RUNS (3), PORT (18790), MODES ("plain deflate").
#
#   SCENARIO=idle RUNS=3 CONNS=10000 bash scripts/bench-compression.sh
#
# SCENARIO=idle (default fanout): `idle --conns CONNS --duration 3s` instead, for the gateway's
# RSS per idle connection, plain vs permessage-deflate negotiated (compression on in both).
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIO=${SCENARIO:-fanout} CONNS=${CONNS:-5000} RATE=${RATE:-20} PAYLOAD=${PAYLOAD:-1000} DURATION=${DURATION:-10s} RUNS=${RUNS:-3}
PORT=${PORT:-18790} MODES=${MODES:-"plain deflate"}
bin=target/release
ulimit -n "$(ulimit -Hn)"
results=$(mktemp)
GW=""
cleanup() { [ -n "$GW" ] && kill "$GW" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
metric() { curl -s "http://127.0.0.1:$PORT/metrics" | awk -v n="$1" '$1 ~ "^"n"({|$)" { s += $2 } END { printf "%d\n", s }'; }
for run in $(seq 1 "$RUNS"); do
  for mode in $MODES; do
    compression=on; deflate=(--deflate)
    [ "$mode" = plain ] && { deflate=(); [ "$SCENARIO" = idle ] || compression=off; }
    taskset -c 0 "$bin/ringcast" gateway --listen "127.0.0.1:$PORT" --api-key bench --shards 1 \
      --compression "$compression" --max-connections $((CONNS + 1000)) --accept-rate 1000000 --log warn >/dev/null 2>&1 &
    GW=$!
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
    echo "bench-compression: run $run/$RUNS $mode ($SCENARIO, $CONNS connections)" >&2
    if [ "$SCENARIO" = idle ]; then
      json=$(timeout 300 taskset -c 1 "$bin/ringcast-loadtest" idle --url "ws://127.0.0.1:$PORT/ws" \
        --conns "$CONNS" --duration 3s --server-pid "$GW" --json "${deflate[@]}")
      negotiated=$(metric ringcast_deflate_connections_total)
      kill "$GW"; wait "$GW" 2>/dev/null || true; GW=""
      echo "$json" | python3 -c '
import json, sys
r = json.load(sys.stdin); f = {k: v["value"] if isinstance(v, dict) and "value" in v else v for k, v in r["figures"].items()}
print(json.dumps({"mode": sys.argv[1], "rss_per_conn": f.get("server_rss_bytes_per_conn"), "held": f.get("connections_held_at_end"),
                  "deflate_negotiated": int(sys.argv[2]), "rss_loaded_mib": f.get("server_rss_loaded_mib")}))' "$mode" "$negotiated" | tee -a "$results"
      continue
    fi
    json=$(timeout 300 taskset -c 1 "$bin/ringcast-loadtest" fanout --url "ws://127.0.0.1:$PORT/ws" --api-key bench \
      --conns "$CONNS" --rate "$RATE" --duration "$DURATION" --payload "$PAYLOAD" --pad telemetry \
      --server-pid "$GW" --json "${deflate[@]}")
    bytes=$(metric ringcast_bytes_out_total); deliveries=$(metric ringcast_deliveries_total)
    kill "$GW"; wait "$GW" 2>/dev/null || true; GW=""
    echo "$json" | python3 -c '
import json, sys
r = json.load(sys.stdin); f = {k: v["value"] if isinstance(v, dict) and "value" in v else v for k, v in r["figures"].items()}
mode, bytes_, deliveries = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
row = {"mode": mode, "bytes_per_delivery": round(bytes_ / max(deliveries, 1), 1), "cpu_us": f.get("server_cpu_us_per_delivery"),
       "delivered": f.get("deliveries"), "lost": f.get("lost"), "harness_cpu": f.get("harness_cpu_percent"), "p50_ms": f.get("latency_p50_ms"), "p99_ms": f.get("latency_p99_ms"),
       "inflated": f.get("inflated_frames")}
print(json.dumps(row))' "$mode" "$bytes" "$deliveries" | tee -a "$results"
  done
done
python3 - "$results" "$SCENARIO" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
if sys.argv[2] == "idle":
    for mode in sorted({r["mode"] for r in rows}):
        rs = [r for r in rows if r["mode"] == mode]
        vals = [r["rss_per_conn"] for r in rs if isinstance(r.get("rss_per_conn"), (int, float))]
        print(f"{mode}: server RSS bytes/connection {statistics.median(vals):g} [{min(vals):g}-{max(vals):g}], held {[r['held'] for r in rs]}, deflate negotiated {[r['deflate_negotiated'] for r in rs]}, runs {len(rs)}")
    sys.exit(0)
for mode in sorted({r["mode"] for r in rows}):
    rs = [r for r in rows if r["mode"] == mode]
    def s(key):
        vals = [r[key] for r in rs if isinstance(r.get(key), (int, float))]
        return f"{statistics.median(vals):g} [{min(vals):g}-{max(vals):g}]" if vals else "n/a"
    print(f"{mode}: bytes/delivery {s('bytes_per_delivery')}, server CPU-us/delivery {s('cpu_us')}, p99 ms {s('p99_ms')}, runs {len(rs)}")
PY
