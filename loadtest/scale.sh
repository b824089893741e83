#!/usr/bin/env bash
# Holds CONNS idle WebSockets on this machine across PROCS `ringcast gateway` processes
# sharing one port (SO_REUSEPORT), each at most PER_PROC connections (the per-process fd
# limit here is 20,000 and cannot be raised), with the harness's worker processes
# spreading source addresses over 127.0.0.1..127.0.0.K. Prints the harness's idle report
# (server RSS per connection summed over the gateway processes), each process's RSS, and
# the kernel memory the sockets took; stops everything by itself.
#   bash loadtest/scale.sh                       # 150,000 over 9 processes
#   CONNS=50000 PROCS=3 HOLD=10s bash loadtest/scale.sh
# Settings: CONNS (150000), PROCS (9), PER_PROC (19000), PORT (19100), RATE (connects/s,
# 10000), HOLD (20s), APPLY_TUNING (1: raise the sysctls in tuning/scale.conf first),
# SERVER_CPU (0) and HARNESS_CPU (1): cpus for the gateways and the harness,
# GATEWAY_FLAGS (extra `ringcast gateway` flags). Logs of a run that fell short are kept
# in target/scale-logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-150000} PROCS=${PROCS:-9} PER_PROC=${PER_PROC:-19000} PORT=${PORT:-19100}
RATE=${RATE:-10000} HOLD=${HOLD:-20s} SERVER_CPU=${SERVER_CPU:-0} HARNESS_CPU=${HARNESS_CPU:-1}
bin=target/release
if [ ! -x $bin/ringcast ] || [ ! -x $bin/ringcast-loadtest ]; then cargo build --release --workspace --locked -q; fi
ulimit -n "$(ulimit -Hn)"

# SO_REUSEPORT lets a second gateway bind a port one already holds, silently splitting the
# clients between them: refuse to start on a port something already listens on.
port_free() { ! (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null || { echo "$(basename "$0"): port $1 is already in use (set PORT=...)" >&2; exit 2; }; }
if [ $((PROCS * PER_PROC)) -lt "$CONNS" ]; then
  echo "scale: $PROCS processes × $PER_PROC connections cannot hold $CONNS; raise PROCS" >&2; exit 2
fi
if [ "${APPLY_TUNING:-1}" = 1 ]; then bash tuning/apply.sh tuning/scale.conf; fi

port_free "$PORT"
work=$(mktemp -d /tmp/ringcast-scale.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  if [ -n "${keep_logs:-}" ]; then mkdir -p target/scale-logs; cp "$work"/* target/scale-logs/ 2>/dev/null || true; echo "scale: logs kept in target/scale-logs/" >&2; fi
  rm -rf "$work"
}
trap cleanup EXIT

for i in $(seq 1 "$PROCS"); do
  taskset -c "$SERVER_CPU" $bin/ringcast gateway --listen 127.0.0.1:"$PORT" --shards 1 --pin "$SERVER_CPU" \
    --max-connections "$PER_PROC" --accept-rate 1000000 --share-port --node "scale-$i" --log warn ${GATEWAY_FLAGS:-} >"$work/gw$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.1; done
sleep 0.5
for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || { echo "scale: gateway $p exited; log:" >&2; cat "$work"/gw*.log >&2; exit 1; }; done

kmem() { awk '/^(MemAvailable|Slab):/ {printf "%s %s ", $1, $2}' /proc/meminfo; awk '/^TCP:/ {print "tcp_mem_pages", $NF}' /proc/net/sockstat; }
echo "scale: $PROCS gateways on 127.0.0.1:$PORT (pids ${pids[*]}), harness on cpu $HARNESS_CPU; uptime: $(uptime)"
before=$(kmem)
# The whole run is bounded: connecting at RATE, holding, stopping.
bound=$(( CONNS * 3 / RATE + 240 + ${HOLD%s} ))
# (the harness creates progress.log; the loop below waits for its lines)
timeout "$bound" taskset -c "$HARNESS_CPU" $bin/ringcast-loadtest idle --url ws://127.0.0.1:"$PORT"/ws --conns "$CONNS" \
  --connect-rate "$RATE" --duration "$HOLD" --server-pid "$(IFS=,; echo "${pids[*]}")" --label "scale $CONNS" --json \
  >"$work/idle.json" 2>"$work/progress.log" &
harness=$!
sampled=""
while kill -0 "$harness" 2>/dev/null; do
  if [ -z "$sampled" ] && grep -qs "ready $CONNS " "$work/progress.log"; then
    sleep 2
    sampled=$(kmem)
    echo "scale: all $CONNS ready; per-process RSS (KiB): $(for p in "${pids[@]}"; do awk '/VmRSS/ {printf "%s ", $2}' /proc/"$p"/status; done)"
  fi
  sleep 1
done
wait "$harness" || echo "scale: the harness exited with $? (timeout is 124)" >&2
tail -n 3 "$work/progress.log" >&2
for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || { echo "scale: gateway pid $p exited during the run" >&2; keep_logs=1; }; done
jq -r '.figures | to_entries[] | "\(.key)\t\(.value)"' "$work/idle.json"
jq -r '.notes[]' "$work/idle.json" | sed 's/^/note: /'
if [ -n "$sampled" ]; then
  echo "kernel before: $before"
  echo "kernel held:   $sampled"
  read -r _ avail0 _ slab0 _ pages0 <<<"$before"
  read -r _ avail1 _ slab1 _ pages1 <<<"$sampled"
  echo "kernel memory per connection (client and server socket together): MemAvailable drop $(( (avail0 - avail1) * 1024 / CONNS )) B, Slab growth $(( (slab1 - slab0) * 1024 / CONNS )) B"
else
  keep_logs=1
  for i in $(seq 1 "$PROCS"); do kill -0 "${pids[$((i - 1))]}" 2>/dev/null || echo "scale: gateway $i (pid ${pids[$((i - 1))]}) is gone" >&2; done
  echo "scale: not all $CONNS connections became ready; see the failures and notes above" >&2
fi
