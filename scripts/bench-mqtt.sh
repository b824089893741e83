#!/usr/bin/env bash
# Devices over MQTT (issue 17 part 3): device -> dashboard latency and loss through a private
# nats-server's MQTT listener, with and without permessage-deflate and --conflate. Starts
# its own nats-server (JetStream in a temp dir, free ports) and one gateway per run on that
# NATS; the harness's devices publish QoS 0 to rc/dev/{i}/temp, which the gateway serves as
# channel dev.{i}.temp; device subscribers follow one device each, dashboards `dev.*.temp`.
# One more dashboard on a slow link (scripts/slow-dashboard.py: 4 KiB receive buffer, does
# not read while the devices publish, then drains) shows what conflation is for: without
# it the gateway closes that dashboard with 4008, with it the dashboard stays and ends on
# every device's last reading (`slow_last_n` against the messages each device published).
# Gateway (one shard) pinned to cpu 0, harness to cpu 1, nats-server unpinned.
# Prints a progress line per run, one JSON row per run, then medians [min-max] per mode.
#
#   RUNS=1 bash scripts/bench-mqtt.sh
#
# RUNS (1), DEVICES (100), DEVICE_RATE (5 msgs/s each), SUBS (10 per device), DASHBOARDS (20),
# PAYLOAD (1000 B, --pad telemetry), DURATION (10s), MODES ("plain deflate plain+conflate
# deflate+conflate"), RUN_TIMEOUT (180 s per harness run).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-1} DEVICES=${DEVICES:-100} DEVICE_RATE=${DEVICE_RATE:-5} SUBS=${SUBS:-10} DASHBOARDS=${DASHBOARDS:-20}
PAYLOAD=${PAYLOAD:-1000} DURATION=${DURATION:-10s} RUN_TIMEOUT=${RUN_TIMEOUT:-180}
MODES=${MODES:-"plain deflate plain+conflate deflate+conflate"}
bin=target/release
for tool in nats-server python3 "$bin/ringcast" "$bin/ringcast-loadtest"; do
  command -v "$tool" >/dev/null || { echo "bench-mqtt: $tool not found (build with cargo build --release --workspace)" >&2; exit 2; }
done
ulimit -n "$(ulimit -Hn)"
dir=$(mktemp -d /tmp/ringcast-bench-mqtt.XXXXXX)
results="$dir/results.jsonl"
NATS="" GW="" SLOW=""
stop() { if [ -n "$1" ]; then kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; fi; }
cleanup() { stop "$SLOW"; stop "$GW"; stop "$NATS"; rm -rf "$dir"; }
trap cleanup EXIT
wait_port() {
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "bench-mqtt: nothing listens on port $1 after 10 s" >&2; exit 1
}
metric() { curl -s "http://127.0.0.1:$GW_PORT/metrics" | awk -v n="$1" '$1 ~ "^"n"({|$)" { s += $2 } END { printf "%d\n", s }'; }
# Three distinct free ports, held together while they are picked.
read -r NATS_PORT MQTT_PORT GW_PORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
cat >"$dir/nats.conf" <<CONF
server_name: rc_bench_mqtt_$NATS_PORT
listen: 127.0.0.1:$NATS_PORT
jetstream { store_dir: "$dir/js" }
mqtt { listen: 127.0.0.1:$MQTT_PORT }
CONF
nats-server -c "$dir/nats.conf" >"$dir/nats.log" 2>&1 &
NATS=$!
wait_port "$NATS_PORT"; wait_port "$MQTT_PORT"
echo "bench-mqtt: nats-server pid $NATS, NATS :$NATS_PORT, MQTT :$MQTT_PORT; gateway :$GW_PORT" >&2
for run in $(seq 1 "$RUNS"); do
  for mode in $MODES; do
    compression=off deflate=() conflate=()
    case $mode in *deflate*) compression=on deflate=(--deflate) ;; esac
    case $mode in *conflate*) conflate=(--conflate 'dev.>') ;; esac
    taskset -c 0 "$bin/ringcast" gateway --listen "127.0.0.1:$GW_PORT" --nats "nats://127.0.0.1:$NATS_PORT" --api-key bench \
      --shards 1 --compression "$compression" "${conflate[@]}" --max-connections 19000 --accept-rate 1000000 --log warn >"$dir/gateway.log" 2>&1 &
    GW=$!
    wait_port "$GW_PORT"
    rm -f "$dir/go"
    python3 scripts/slow-dashboard.py "$GW_PORT" 'dev.*.temp' "$dir/go" >"$dir/slow.json" &
    SLOW=$!
    echo "bench-mqtt: run $run/$RUNS $mode ($DEVICES devices x $DEVICE_RATE/s, $((DEVICES * SUBS)) device subscribers, $DASHBOARDS dashboards, $DURATION)" >&2
    json=$(timeout "$RUN_TIMEOUT" taskset -c 1 "$bin/ringcast-loadtest" telemetry --url "ws://127.0.0.1:$GW_PORT/ws" --api-key bench \
      --publish "mqtt://127.0.0.1:$MQTT_PORT" --devices "$DEVICES" --device-rate "$DEVICE_RATE" --subs-per-device "$SUBS" \
      --dashboards "$DASHBOARDS" --duration "$DURATION" --payload "$PAYLOAD" --pad telemetry --server-pid "$GW" --json "${deflate[@]}") \
      || { echo "bench-mqtt: run $run $mode failed or timed out" >&2; stop "$SLOW"; SLOW=""; stop "$GW"; GW=""; continue; }
    # The devices have stopped: the slow dashboard drains (bounded: slow-dashboard.py).
    touch "$dir/go"; wait "$SLOW" || true; SLOW=""
    slow=$(cat "$dir/slow.json"); [ -n "$slow" ] || slow='{}'
    extra=$(printf '{"bytes_out": %d, "deliveries": %d, "conflated": %d, "compress_in": %d, "compress_out": %d, "closes_4008": %d}' \
      "$(metric ringcast_bytes_out_total)" "$(metric ringcast_deliveries_total)" "$(metric ringcast_conflated_total)" \
      "$(metric ringcast_compress_bytes_in_total)" "$(metric ringcast_compress_bytes_out_total)" "$(metric ringcast_slow_consumer_closes_total)")
    stop "$GW"; GW=""
    echo "$json" | python3 -c '
import json, sys
r = json.load(sys.stdin); f = {k: v["value"] if isinstance(v, dict) and "value" in v else v for k, v in r["figures"].items()}
m = json.loads(sys.argv[2])
row = {"mode": sys.argv[1], "published": f.get("published"), "rate": f.get("rate_achieved"),
       "device_lost": f.get("device_lost"), "dashboard_lost": f.get("dashboard_lost"), "device_gaps": f.get("device_gaps"),
       "device_p50_ms": f.get("device_latency_p50_ms"), "device_p99_ms": f.get("device_latency_p99_ms"),
       "dashboard_p50_ms": f.get("dashboard_latency_p50_ms"), "dashboard_p99_ms": f.get("dashboard_latency_p99_ms"),
       "bytes_per_delivery": round(m["bytes_out"] / max(m["deliveries"], 1), 1),
       "ratio": round(m["compress_in"] / m["compress_out"], 2) if m["compress_out"] else None,
       "conflated": m["conflated"], "cpu_us": f.get("server_cpu_us_per_delivery")}
sl = json.loads(sys.argv[3])
row.update({"per_device": round(f.get("published", 0) / int(sys.argv[4]), 2), "closes_4008": m["closes_4008"],
            "slow_closed": sl.get("closed"), "slow_messages": sl.get("messages"), "slow_last_n": [sl.get("last_n_min"), sl.get("last_n_max")]})
print(json.dumps(row))' "$mode" "$extra" "$slow" "$DEVICES" | tee -a "$results"
  done
done
[ -s "$results" ] || { echo "bench-mqtt: no run finished" >&2; exit 1; }
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
keys = ["device_p50_ms", "device_p99_ms", "dashboard_p50_ms", "dashboard_p99_ms", "device_lost", "dashboard_lost", "bytes_per_delivery", "cpu_us", "conflated", "slow_messages", "closes_4008"]
print("| mode | runs | " + " | ".join(keys) + " |")
print("|---" * (len(keys) + 2) + "|")
for mode in dict.fromkeys(r["mode"] for r in rows):
    rs = [r for r in rows if r["mode"] == mode]
    def s(key):
        vals = [r[key] for r in rs if isinstance(r.get(key), (int, float))]
        return f"{statistics.median(vals):g} [{min(vals):g}–{max(vals):g}]" if vals else "n/a"
    print(f"| {mode} | {len(rs)} | " + " | ".join(s(k) for k in keys) + " |")
PY
