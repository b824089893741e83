#!/usr/bin/env bash
# Presence burst: CONNS identified connections (a user each) connect as fast as they can
# and subscribe to one channel with "presence": true, spread over GATEWAYS gateway
# processes on one port (--share-port; 20,000 descriptors per process here), all writing
# presence to one private redis-server. Prints what Redis absorbed: its CPU over the burst
# (from /proc, user + system), its commands and read events (INFO), and the gateways'
# pipelines (round trips) — the issue's bar is a 50,000-connect burst with Redis under
# one core.
#
#   bash tuning/presence-burst.sh                       # 50,000 over 3 gateways
#   CONNS=20000 GATEWAYS=2 bash tuning/presence-burst.sh
#
# CONNS (50000), GATEWAYS (3), ROOMS (500: channels room.burst.{i} of CONNS/ROOMS members;
# one room of n members costs n² join/leave frames), PORT (18795), REDIS_PORT (16395),
# FLUSH (5ms: the gateway's --presence-flush), BATCH (the gateway's --presence-batch; its
# default when unset).
# Gateways run on cpu 0, the harness on cpu 1, redis-server unpinned.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-50000} GATEWAYS=${GATEWAYS:-3} ROOMS=${ROOMS:-500} PORT=${PORT:-18795} REDIS_PORT=${REDIS_PORT:-16395} FLUSH=${FLUSH:-5ms}
bin=target/release
[ -x $bin/ringcast ] && [ -x $bin/ringcast-loadtest ] || cargo build --release --workspace --all-targets --locked -q
command -v redis-server >/dev/null || bash scripts/services.sh
ulimit -n "$(ulimit -Hn)"
per=$(( (CONNS + GATEWAYS - 1) / GATEWAYS ))
if [ "$per" -gt 19000 ]; then echo "presence-burst: $per connections per gateway is over the 19,000 a process can hold here: raise GATEWAYS" >&2; exit 2; fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
redis_pid=$!; pids+=("$redis_pid")
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
batch=(); [ -n "${BATCH:-}" ] && batch=(--presence-batch "$BATCH")
gws=()
for _ in $(seq 1 "$GATEWAYS"); do
  taskset -c 0 $bin/ringcast gateway --listen 127.0.0.1:$PORT --shards 1 --pin 0 --jwt-secret burst --api-key burst \
    --max-connections 19000 --accept-rate 1000000 --share-port --redis redis://127.0.0.1:$REDIS_PORT \
    --presence-flush "$FLUSH" "${batch[@]}" --log warn >/dev/null 2>&1 &
  pids+=("$!"); gws+=("$!")
done
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
sleep 1  # every gateway registered with Redis

ticks() { awk '{print $14 + $15}' "/proc/$redis_pid/stat"; }
info() { redis-cli -p "$REDIS_PORT" info "$1" | tr -d '\r' | awk -F: -v k="$2" '$1 == k {print $2}'; }
hz=$(getconf CLK_TCK)
t0=$(ticks); c0=$(info stats total_commands_processed); r0=$(info stats total_reads_processed); s0=$(date +%s.%N)
taskset -c 1 $bin/ringcast-loadtest burst --url ws://127.0.0.1:$PORT/ws --conns "$CONNS" --presence room.burst --rooms "$ROOMS" --jwt-secret burst \
  --server-pid "$(IFS=,; echo "${gws[*]}")" --json > target/presence-burst.json
s1=$(date +%s.%N); t1=$(ticks); c1=$(info stats total_commands_processed); r1=$(info stats total_reads_processed)
pipelines=0
# The gateways' own counters (each process answers on the shared port in turn: ask often).
declare -A seen=()
for _ in $(seq 200); do
  m=$(curl -s http://127.0.0.1:$PORT/metrics)
  node=$(grep -m1 '^ringcast_info' <<<"$m" | sed 's/.*node="\([^"]*\)".*/\1/')
  [ -n "$node" ] && [ -z "${seen[$node]:-}" ] || continue
  seen[$node]=1
  pipelines=$((pipelines + $(awk '$1 == "ringcast_presence_pipelines_total" {print $2}' <<<"$m")))
  [ "${#seen[@]}" -ge "$GATEWAYS" ] && break
done
python3 - "$hz" "$t0" "$t1" "$s0" "$s1" "$c0" "$c1" "$r0" "$r1" "$pipelines" "${#seen[@]}" <<'EOF'
import json, sys
hz, t0, t1, s0, s1, c0, c1, r0, r1, pipelines, nodes = sys.argv[1:]
hz = int(hz); secs = float(s1) - float(s0)
report = json.load(open("target/presence-burst.json"))
fig = {f["key"]: f["value"] for f in report.get("figures", [])} if isinstance(report.get("figures"), list) else report.get("figures", {})
ready = fig.get("connections_ready", "?"); hs = fig.get("handshakes_per_s", "?")
cpu = (int(t1) - int(t0)) / hz
print(f"connections ready          {ready} (handshakes/s {hs})")
print(f"burst window               {secs:.1f} s (harness start to end: connects, joins, then every leave)")
print(f"redis CPU                  {cpu:.2f} s = {100 * cpu / secs:.0f}% of one core over the window")
print(f"redis commands             {int(c1) - int(c0)}")
print(f"redis read events          {int(r1) - int(r0)} (a pipeline arrives in one or a few)")
print(f"gateway pipelines          {pipelines} (from {nodes} gateway(s) reached)")
EOF
