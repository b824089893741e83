#!/usr/bin/env bash
# Profiles the server core during a fixed-rate fan-out: ringcast (fed through a private
# nats-server, as in the closed-loop table) and then the `limit` ceiling, same rate, same
# subscribers, each with `perf record` on cpu 0 for PERF_SECONDS in the middle of the run.
# Prints each run's figures and, per run, the share of cpu 0 by process and the hottest
# user-space symbols of the server, so the two can be compared line by line.
#
#   bash tuning/profile.sh
#   RATE=300 CONNS=10000 GATEWAY_FLAGS="--coalesce-bytes 0" bash tuning/profile.sh
#
# RATE (300 msgs/s), CONNS (10000), DURATION (14s), PERF_SECONDS (4), GATEWAY_FLAGS (extra
# `ringcast gateway` flags), TARGETS (ringcast limit), PUBLISH (nats: through the private
# nats-server; http: `POST /api/publish` to the gateway's embedded broker), DIR
# (target/profile-<time>: the JSON results and perf.data files), PORT (18790).
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-300} CONNS=${CONNS:-10000} DURATION=${DURATION:-14s} PERF_SECONDS=${PERF_SECONDS:-4}
GATEWAY_FLAGS=${GATEWAY_FLAGS:-} TARGETS=${TARGETS:-"ringcast limit"} PORT=${PORT:-18790} PUBLISH=${PUBLISH:-nats}
DIR=${DIR:-target/profile-$(date +%Y%m%d-%H%M%S)}
secs=${DURATION%s}
[[ $secs =~ ^[0-9]+$ ]] && [ "$secs" -ge 4 ] || { echo "profile: DURATION is whole seconds, at least 4s (got $DURATION)" >&2; exit 2; }
command -v perf >/dev/null || { echo "profile: perf is missing (apt-get install linux-perf)" >&2; exit 2; }
cargo build --release --workspace --all-targets --locked -q
ulimit -n "$(ulimit -Hn)"
mkdir -p "$DIR"
export PEERS_DIR=${PEERS_DIR:-/tmp/ringcast-bench-peers} PEERS_CPU=0
export NATS_PORT=${NATS_PORT:-15222} NATS_WS_PORT=${NATS_WS_PORT:-15280} MQTT_PORT=${MQTT_PORT:-15883} MQTT_WS_PORT=${MQTT_WS_PORT:-15880}
H=(taskset -c 1 target/release/ringcast-loadtest)
GW=""
cleanup() { [ -n "$GW" ] && kill "$GW" 2>/dev/null; bash scripts/peers.sh stop >/dev/null 2>&1 || true; }
trap cleanup EXIT
bash scripts/peers.sh start >/dev/null
# The harness connects for a few seconds first: profile the middle of the publishing.
perf_middle() {
  sleep $(( secs / 2 ))
  perf record -q -C "${PERF_CPU:-0}" -g -o "$DIR/$1.perf" -- sleep "$PERF_SECONDS" >/dev/null 2>&1
}
for target in $TARGETS; do
  echo "profile: $target, $RATE msgs/s to $CONNS subscribers for $DURATION" >&2
  case $target in
    ringcast)
      (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && { echo "profile: port $PORT is in use (set PORT=...)" >&2; exit 2; }
      case $PUBLISH in
        nats) broker=(--nats nats://127.0.0.1:$NATS_PORT) publish=(--publish nats://127.0.0.1:$NATS_PORT) ;;
        http) broker=() publish=(--api-key profile) ;;
        *) echo "profile: PUBLISH is nats or http" >&2; exit 2 ;;
      esac
      # shellcheck disable=SC2086
      taskset -c 0 target/release/ringcast gateway --listen 127.0.0.1:$PORT --shards 1 --pin 0 --max-connections 19000 \
        --accept-rate 1000000 --log warn --api-key profile "${broker[@]}" $GATEWAY_FLAGS >/dev/null 2>&1 &
      GW=$!
      for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
      "${H[@]}" fanout --url ws://127.0.0.1:$PORT/ws --conns "$CONNS" --rate "$RATE" --duration "$DURATION" \
        "${publish[@]}" --server-pid $GW --label "profile ringcast $PUBLISH $GATEWAY_FLAGS" --json >"$DIR/ringcast.json" &
      run=$!
      perf_middle ringcast
      wait $run
      curl -s 127.0.0.1:$PORT/metrics >"$DIR/ringcast.metrics" || true
      kill $GW; wait $GW 2>/dev/null || true; GW=""
      comm=ringcast-shard- dso=ringcast ;;
    limit)
      "${H[@]}" limit --conns "$CONNS" --rate "$RATE" --duration "$DURATION" --server-cpu 0 --label "profile limit" --json >"$DIR/limit.json" &
      run=$!
      perf_middle limit
      wait $run
      comm=ringcast-loadte dso=ringcast-loadtest ;;
    *) echo "profile: unknown target $target (ringcast, limit)" >&2; exit 2 ;;
  esac
  python3 - "$DIR/$target.json" <<'EOF'
import json, sys
f = json.load(open(sys.argv[1]))["figures"]
keys = ["deliveries_per_s", "lost", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "server_cpu_us_per_delivery", "server_cpu_percent", "harness_cpu_percent"]
print("  " + "  ".join(f"{k} {f.get(k)}" for k in keys))
EOF
  echo "  cpu 0 by process and object:"
  perf report -i "$DIR/$target.perf" --no-children --sort comm,dso --stdio -g none 2>/dev/null | grep '%' | head -6 | sed 's/^/  /'
  echo "  hottest user-space symbols of the server:"
  perf report -i "$DIR/$target.perf" --no-children --comm "$comm" --dso "$dso" --sort sym --stdio -g none 2>/dev/null | grep '%' | head -8 | sed 's/^/  /'
done
echo "profile: results and perf data in $DIR" >&2
