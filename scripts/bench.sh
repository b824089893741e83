#!/usr/bin/env bash
# Regenerates the load-test tables of BENCHMARKS.md: ringcast, nats-server's WebSocket
# listener, mosquitto's WebSocket listener and the `limit` ceiling, measured with the same
# harness, every server pinned to cpu 0 and the harness to cpu 1, each figure RUNS times.
# Prints Markdown tables (medians [min–max]) with the host load (`uptime`) under each; the
# raw results stay in $OUT for `ringcast-loadtest summarize`.
#
#   RUNS=3 bash scripts/bench.sh                 # everything (~15 min on 2 cores)
#   TABLES="idle fanout" RUNS=1 bash scripts/bench.sh
#   TABLES=notify RUNS=3 bash scripts/bench.sh   # notifications: embedded Lane, RabbitMQ (+ Redis)
#
# TABLES     which tables: idle fanout burst loaded scale100k max notify [idle fanout burst loaded scale100k max notify]
# TARGETS    which servers: limit ringcast nats-ws mqtt-ws [all four]
# RUNS (3), IDLE_SMALL (10000), IDLE_MAX (18500: under the 20,000-descriptor limit of any
# one server process here), FANOUT_CONNS (10000), FANOUT_RATE (20 msgs/s), DURATION (5s),
# BURST (10000), LOADED_CONNS (2000) LOADED_RATE (800) PUBLISHERS (16), NOTIFY_USERS (2000),
# NOTIFY_RATE (20000: the issue's target with RabbitMQ) NOTIFY_SENDERS (256), NOTIFY_OFFLINE_FOR
# (DURATION/2: when the second half of the users connects; past DURATION for steady-state
# online latency), NOTIFY_MODES (embedded rabbitmq rabbitmq-accept), AMQP_URL
# (amqp://guest:guest@127.0.0.1:5672/%2f), REDIS_URL (redis://127.0.0.1:6379), PORT (18780), SCALE_RATE (5 msgs/s
# to the 100k subscribers), MAX_CONNS (2000: subscribers for the --max table), MAX_P99 (auto:
# the harness's --max-p99 auto, 50ms up to 2,000 subscribers and 25us per subscriber past it;
# at 10k subscribers one fan-out pass alone takes ~90 ms here),
# OUT (target/bench-<time>.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."
TABLES=${TABLES:-"idle fanout burst loaded scale100k max notify"}
TARGETS=${TARGETS:-"limit ringcast nats-ws mqtt-ws"}
want() { [[ " $TARGETS " == *" $1 "* ]]; }
RUNS=${RUNS:-3} IDLE_SMALL=${IDLE_SMALL:-10000} IDLE_MAX=${IDLE_MAX:-18500}
FANOUT_CONNS=${FANOUT_CONNS:-10000} FANOUT_RATE=${FANOUT_RATE:-20} DURATION=${DURATION:-5s} BURST=${BURST:-10000}
LOADED_CONNS=${LOADED_CONNS:-2000} LOADED_RATE=${LOADED_RATE:-800} PUBLISHERS=${PUBLISHERS:-16}
NOTIFY_USERS=${NOTIFY_USERS:-2000} NOTIFY_RATE=${NOTIFY_RATE:-20000} NOTIFY_SENDERS=${NOTIFY_SENDERS:-256}
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f} REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
PORT=${PORT:-18780} SCALE_RATE=${SCALE_RATE:-5} MAX_CONNS=${MAX_CONNS:-2000} MAX_P99=${MAX_P99:-auto}
OUT=${OUT:-target/bench-$(date +%Y%m%d-%H%M%S).jsonl}
bin=target/release
cargo build --release --workspace --all-targets --locked -q  # same build as scripts/test.sh: no rebuild
ulimit -n "$(ulimit -Hn)"

# SO_REUSEPORT lets a second gateway bind a port one already holds, silently splitting the
# clients between them: refuse to start on a port something already listens on.
port_free() { ! (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null || { echo "$(basename "$0"): port $1 is already in use (set PORT=...)" >&2; exit 2; }; }
mkdir -p "$(dirname "$OUT")"
H=(taskset -c 1 "$bin/ringcast-loadtest")

# Private peers pinned to cpu 0, on ports of their own.
export PEERS_DIR=${PEERS_DIR:-/tmp/ringcast-bench-peers} PEERS_CPU=0
export NATS_PORT=${NATS_PORT:-15222} NATS_WS_PORT=${NATS_WS_PORT:-15280} MQTT_PORT=${MQTT_PORT:-15883} MQTT_WS_PORT=${MQTT_WS_PORT:-15880}
LIMIT_PORT=$((PORT + 1))

GW="" LIMIT=""
stop_gateway() {
  for p in $GW; do kill "$p" 2>/dev/null || true; done
  for p in $GW; do for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; kill -9 "$p" 2>/dev/null || true; done
  GW=""
}
stop_limit() { if [ -n "$LIMIT" ]; then exec 7>&-; wait "$LIMIT" 2>/dev/null || true; LIMIT=""; fi; }
stop_peers() { bash scripts/peers.sh stop >/dev/null; }
cleanup() { stop_gateway; stop_limit; stop_peers; }
trap cleanup EXIT

wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "bench: nothing on port $1" >&2; exit 1; }

# One ringcast gateway, or N on one port (SO_REUSEPORT), on cpu 0; extra flags after N.
start_gateway() {
  local n=${1:-1}; shift || true
  port_free $PORT
  for _ in $(seq 1 "$n"); do
    taskset -c 0 $bin/ringcast gateway --listen 127.0.0.1:$PORT --shards 1 --pin 0 --api-key bench --max-connections 19000 --accept-rate 1000000 --share-port --log warn "$@" >/dev/null 2>&1 &
    GW="$GW $!"
  done
  wait_port $PORT
}
# The `limit` ceiling server as a standalone process (for idle and burst), on cpu 0.
start_limit() {
  port_free $LIMIT_PORT
  rm -f "$PEERS_DIR/limit.in"; mkdir -p "$PEERS_DIR"; mkfifo "$PEERS_DIR/limit.in"
  $bin/ringcast-loadtest limit-server --listen 127.0.0.1:$LIMIT_PORT --cpu 0 --lifetime 30m <"$PEERS_DIR/limit.in" >/dev/null &
  LIMIT=$!
  exec 7>"$PEERS_DIR/limit.in"
  wait_port $LIMIT_PORT
}
peer_pid() { cat "$PEERS_DIR/$1.pid"; }

# Runs one measurement per target for the scenario in "$@" (target flags are added).
# Targets: ringcast nats-ws mqtt-ws. PUBLISHES=1 adds each target's way to publish.
each_target() {
  local label=$1; shift
  local rc_pub=() nats_pub=() mqtt_pub=()
  if [ "${PUBLISHES:-0}" = 1 ]; then
    rc_pub=(--api-key bench); nats_pub=(--publish nats://127.0.0.1:$NATS_PORT); mqtt_pub=(--publish mqtt://127.0.0.1:$MQTT_PORT)
  fi
  for run in $(seq 1 "$RUNS"); do
    echo "bench: $label, run $run/$RUNS" >&2
    if want ringcast; then
      start_gateway
      "${H[@]}" "$@" --url ws://127.0.0.1:$PORT/ws "${rc_pub[@]}" --server-pid "${GW// /}" --label "$label ringcast" --json >>"$OUT" || echo "bench: $label ringcast failed" >&2
      stop_gateway
    fi
    if want nats-ws; then
      "${H[@]}" "$@" --target nats-ws --url ws://127.0.0.1:$NATS_WS_PORT "${nats_pub[@]}" \
        --server-pid "$(peer_pid nats)" --label "$label nats-ws" --json >>"$OUT" || echo "bench: $label nats-ws failed" >&2
    fi
    if want mqtt-ws; then
      "${H[@]}" "$@" --target mqtt-ws --url ws://127.0.0.1:$MQTT_WS_PORT/mqtt "${mqtt_pub[@]}" \
        --server-pid "$(peer_pid mosquitto)" --label "$label mqtt-ws" --json >>"$OUT" || echo "bench: $label mqtt-ws failed" >&2
    fi
    # Peers are restarted between runs so each starts from the same memory.
    stop_peers; bash scripts/peers.sh start >/dev/null
  done
}

table() {
  local title=$1 figures=$2 pattern=$3
  echo
  echo "### $title"
  jq -c "select(.parameters.label != null and (.parameters.label | startswith(\"$pattern\")))" "$OUT" >"$OUT.sel" 2>/dev/null || true
  $bin/ringcast-loadtest summarize "$OUT.sel" --figures "$figures"
  echo "host load during these runs: $(uptime | sed 's/.*load average/load average/')"
}

bash scripts/peers.sh start >/dev/null
echo "bench: results in $OUT; uptime: $(uptime)" >&2

for t in $TABLES; do
  case $t in
  idle)
    for n in "$IDLE_SMALL" "$IDLE_MAX"; do
      # Idle memory: the harness reads each server's RSS before and after holding n.
      for run in $(seq 1 "$RUNS"); do
        want limit || break
        start_limit
        "${H[@]}" idle --url ws://127.0.0.1:$LIMIT_PORT/ws --conns "$n" --duration 3s --server-pid "$LIMIT" --label "idle $n limit" --json >>"$OUT" || true
        stop_limit
      done
      each_target "idle $n" idle --conns "$n" --duration 3s
      table "Idle: $n connections held (server RSS per connection)" server_rss_bytes_per_conn,server_rss_loaded_mib,connect_rate_per_s,connections_held_at_end,harness_rss_bytes_per_conn "idle $n"
    done ;;
  fanout)
    # Fan-out at FANOUT_CONNS subscribers: the same publish rate for every target.
    for run in $(seq 1 "$RUNS"); do
      want limit || break
      "${H[@]}" limit --conns "$FANOUT_CONNS" --rate "$FANOUT_RATE" --duration "$DURATION" --server-cpu 0 --label "fanout $FANOUT_CONNS limit" --json >>"$OUT" || true
    done
    PUBLISHES=1 each_target "fanout $FANOUT_CONNS" fanout --conns "$FANOUT_CONNS" --rate "$FANOUT_RATE" --duration "$DURATION"
    table "Fan-out: $FANOUT_CONNS subscribers, $FANOUT_RATE msgs/s, 200-byte payload" \
      deliveries_per_s,deliveries_per_s_until_last,lost,latency_p50_ms,latency_p99_ms,latency_max_ms,server_cpu_us_per_delivery,server_cpu_percent,harness_cpu_percent "fanout $FANOUT_CONNS" ;;
  loaded)
    # ringcast with many publishers (as from many backends) against the ceiling at the same rate.
    for run in $(seq 1 "$RUNS"); do
      if want ringcast; then
        start_gateway
        "${H[@]}" fanout --url ws://127.0.0.1:$PORT/ws --api-key bench --conns "$LOADED_CONNS" --rate "$LOADED_RATE" --publishers "$PUBLISHERS" \
          --duration "$DURATION" --server-pid "${GW// /}" --label "loaded ringcast" --json >>"$OUT" || true
        stop_gateway
      fi
      if want limit; then
        "${H[@]}" limit --conns "$LOADED_CONNS" --rate "$LOADED_RATE" --duration "$DURATION" --server-cpu 0 --label "loaded limit" --json >>"$OUT" || true
      fi
    done
    # The peers at the same rate, each from one pipelined publisher (NATS / MQTT need no
    # more connections to keep a rate).
    PUBLISHES=1 TARGETS="${TARGETS/ringcast/}" each_target "loaded" fanout --conns "$LOADED_CONNS" --rate "$LOADED_RATE" --duration "$DURATION"
    table "Loaded fan-out: $LOADED_CONNS subscribers, $LOADED_RATE msgs/s from $PUBLISHERS publishers" \
      deliveries_per_s,deliveries_per_s_until_last,lost,latency_p50_ms,latency_p99_ms,server_cpu_us_per_delivery,server_cpu_percent "loaded" ;;
  burst)
    for run in $(seq 1 "$RUNS"); do
      want limit || break
      start_limit
      "${H[@]}" burst --url ws://127.0.0.1:$LIMIT_PORT/ws --conns "$BURST" --label "burst $BURST limit" --json >>"$OUT" || true
      stop_limit
    done
    each_target "burst $BURST" burst --conns "$BURST"
    table "Connect burst: $BURST connections as fast as possible" handshakes_per_s,handshake_p50_ms,handshake_p99_ms,connect_failures "burst $BURST" ;;
  scale100k)
    # 100,000 subscribers need several gateway processes (20,000 descriptors each here)
    # and the NATS bridge, so that one publish reaches every process.
    if ! $bin/ringcast gateway --help | grep -q -- '--nats '; then
      echo; echo "### Fan-out: 100,000 subscribers"; echo "not measured: this gateway build has no --nats bridge (issue 4); every process must see each publish"
      continue
    fi
    for run in $(seq 1 "$RUNS"); do
      start_gateway 6 --nats nats://127.0.0.1:$NATS_PORT
      "${H[@]}" fanout --url ws://127.0.0.1:$PORT/ws --conns 100000 --rate "$SCALE_RATE" --duration "$DURATION" --connect-rate 5000 \
        --publish nats://127.0.0.1:$NATS_PORT --server-pid "$(echo $GW | tr ' ' ,)" --label "fanout 100k ringcast" --json >>"$OUT" || true
      stop_gateway
    done
    table "Fan-out: 100,000 subscribers over 6 gateway processes (one port, one NATS), $SCALE_RATE msgs/s" \
      deliveries_per_s,lost,latency_p50_ms,latency_p99_ms,server_cpu_us_per_delivery,harness_cpu_percent "fanout 100k" ;;
  max)
    # Closed loop (--max): the highest publish rate each server sustains with MAX_CONNS
    # subscribers, nothing lost and p99 within MAX_P99; ringcast and nats-server both fed by
    # a pipelined NATS publisher (ringcast through its bridge), mosquitto by one MQTT
    # publisher, `limit` paces itself.
    for run in $(seq 1 "$RUNS"); do
      if want limit; then
        "${H[@]}" limit --conns "$MAX_CONNS" --max --max-p99 "$MAX_P99" --duration 2s --server-cpu 0 --label "max $MAX_CONNS limit" --json >>"$OUT" || true
      fi
      if want ringcast; then
        start_gateway 1 --nats nats://127.0.0.1:$NATS_PORT
        "${H[@]}" fanout --url ws://127.0.0.1:$PORT/ws --conns "$MAX_CONNS" --max --max-p99 "$MAX_P99" --duration 2s --publish nats://127.0.0.1:$NATS_PORT \
          --server-pid "${GW// /}" --label "max $MAX_CONNS ringcast" --json >>"$OUT" || true
        stop_gateway
      fi
      if want nats-ws; then
        "${H[@]}" fanout --target nats-ws --url ws://127.0.0.1:$NATS_WS_PORT --conns "$MAX_CONNS" --max --max-p99 "$MAX_P99" --duration 2s \
          --publish nats://127.0.0.1:$NATS_PORT --server-pid "$(peer_pid nats)" --label "max $MAX_CONNS nats-ws" --json >>"$OUT" || true
      fi
      if want mqtt-ws; then
        "${H[@]}" fanout --target mqtt-ws --url ws://127.0.0.1:$MQTT_WS_PORT/mqtt --conns "$MAX_CONNS" --max --max-p99 "$MAX_P99" --duration 2s \
          --publish mqtt://127.0.0.1:$MQTT_PORT --server-pid "$(peer_pid mosquitto)" --label "max $MAX_CONNS mqtt-ws" --json >>"$OUT" || true
      fi
      stop_peers; bash scripts/peers.sh start >/dev/null
    done
    bound=$MAX_P99; [ "$bound" = auto ] && bound="$(( MAX_CONNS > 2000 ? MAX_CONNS * 25 / 1000 : 50 ))ms (--max-p99 auto)"
    table "Closed loop (--max): $MAX_CONNS subscribers, highest rate with nothing lost and p99 <= $bound" \
      max_sustained_rate,deliveries_per_s,latency_p50_ms,latency_p99_ms,server_cpu_us_per_delivery,server_cpu_percent "max $MAX_CONNS" ;;
  notify)
    # In-app notifications through the Lane: the embedded store (redb, fsync per accept,
    # worker in-process), and RabbitMQ (publisher confirms; worker in-process) with Redis
    # presence when this build has them. Half the users connect DURATION/2 after sending
    # starts; every notification must arrive (missing = 0) within 30 s after sending.
    if ! $bin/ringcast gateway --help | grep -q -- '--lane-dir'; then
      echo; echo "### Notifications"; echo "not measured: this gateway build has no Lane (issue 5)"
      continue
    fi
    modes=${NOTIFY_MODES:-"embedded rabbitmq rabbitmq-accept"}
    redis=(--redis "$REDIS_URL")
    offline=${NOTIFY_OFFLINE_FOR:-$(( ${DURATION%s} / 2 ))s}
    for run in $(seq 1 "$RUNS"); do
      for mode in $modes; do
        prefix="bench.$$.$run.${mode//-/_}"
        lane=(--lane-dir "$PEERS_DIR/lane-$$-$run")
        users=$NOTIFY_USERS rate=$NOTIFY_RATE settle=30s
        case $mode in
          rabbitmq) lane=(--amqp "$AMQP_URL" --lane-prefix "$prefix" --lane-worker "${redis[@]}") ;;
          # Accept capacity alone: no worker, so nothing is delivered (missing = accepted
          # by design); closed loop, every sender sends again as soon as it is answered.
          rabbitmq-accept) lane=(--amqp "$AMQP_URL" --lane-prefix "$prefix" --lane-worker false); users=200 rate=0 settle=1s ;;
        esac
        rm -rf "$PEERS_DIR/lane-$$-$run"
        start_gateway 1 --jwt-secret bench "${lane[@]}"
        "${H[@]}" notify --url ws://127.0.0.1:$PORT/ws --api-key bench --jwt-secret bench --users "$users" \
          --rate "$rate" --senders "$NOTIFY_SENDERS" --duration "$DURATION" --offline-for "$offline" --settle "$settle" \
          --server-pid "${GW// /}" --label "notify $mode" --json >>"$OUT" || echo "bench: notify $mode failed" >&2
        stop_gateway
        rm -rf "$PEERS_DIR/lane-$$-$run"
        # The run's RabbitMQ queues (what no worker took stays in them otherwise).
        if [ "$mode" != embedded ] && command -v rabbitmqctl >/dev/null; then
          rabbitmqctl eval "lists:foldl(fun(Q, N) -> {resource, _, queue, Name} = amqqueue:get_name(Q), case binary:match(Name, [<<\"$prefix.\">>]) of {0, _} -> rabbit_amqqueue:delete(Q, false, false, <<\"bench\">>), N + 1; _ -> N end end, 0, rabbit_amqqueue:list(<<\"/\">>))." >/dev/null 2>&1 || true
        fi
      done
    done
    table "Notifications: $NOTIFY_USERS users (half back after $offline), $NOTIFY_RATE/s asked over $NOTIFY_SENDERS connections" \
      accepted_per_s,accept_latency_p50_ms,accept_latency_p99_ms,online_latency_p50_ms,online_latency_p99_ms,pending_delay_p50_ms,pending_delay_p99_ms,duplicates,missing,server_cpu_percent "notify" ;;
  *) echo "bench: unknown table $t" >&2; exit 2 ;;
  esac
done
