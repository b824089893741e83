#!/usr/bin/env bash
# Starts PRIVATE peer servers for ringcast-loadtest's --target nats-ws / mqtt-ws, on their
# own ports and state directory, separate from the shared engines of scripts/services.sh:
#   nats-server  TCP (publishing) + websocket listener (no TLS)
#   mosquitto    MQTT TCP (publishing) + websockets listener (MQTT 3.1.1, subprotocol mqtt)
# Idempotent: a peer already running from this directory is left alone. Installs the
# Debian packages when missing (Debian's mosquitto 2.0 has websockets built in).
#
#   bash scripts/peers.sh start      # prints the harness flags for each peer
#   bash scripts/peers.sh status
#   bash scripts/peers.sh stop
#
# Settings (environment): PEERS_DIR (/tmp/ringcast-peers), PEERS (nats mosquitto),
# NATS_PORT (14222), NATS_WS_PORT (14280), MQTT_PORT (11883), MQTT_WS_PORT (11880),
# PEERS_CPU (cpu list to pin the peers to with taskset, e.g. 0; unset: no pinning).
set -euo pipefail

DIR=${PEERS_DIR:-/tmp/ringcast-peers}
PEERS=${PEERS:-nats mosquitto}
NATS_PORT=${NATS_PORT:-14222}
NATS_WS_PORT=${NATS_WS_PORT:-14280}
MQTT_PORT=${MQTT_PORT:-11883}
MQTT_WS_PORT=${MQTT_WS_PORT:-11880}
PIN=()
if [ -n "${PEERS_CPU:-}" ]; then PIN=(taskset -c "$PEERS_CPU"); fi

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

apt_updated=0
need_pkg() {
  local bin=$1 pkg=$2
  command -v "$bin" >/dev/null 2>&1 && return 0
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  echo "peers: installing $pkg" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
}

# 30 s: a peer starts in well under a second on a quiet host, but a CI run's parallel
# tests and builds once kept mosquitto from listening within 10 s.
wait_ports() {
  local name=$1; shift
  for _ in $(seq 1 300); do
    local all=1
    for p in "$@"; do listening "$p" || all=0; done
    [ "$all" = 1 ] && return 0
    sleep 0.1
  done
  echo "peers: $name did not listen on 127.0.0.1 ports $* within 30 s; see $DIR/$name.log" >&2
  return 1
}

start_nats() {
  if alive "$DIR/nats.pid"; then return 0; fi
  need_pkg nats-server nats-server
  cat > "$DIR/nats.conf" <<EOF
# Private nats-server for ringcast-loadtest (scripts/peers.sh): client port for
# publishing, websocket listener for the measured subscribers.
listen: 127.0.0.1:$NATS_PORT
pid_file: "$DIR/nats.pid"
websocket {
  host: 127.0.0.1
  port: $NATS_WS_PORT
  no_tls: true
}
EOF
  # The peer gets the same descriptor limit as a gateway process (the hard limit).
  (ulimit -n "$(ulimit -Hn)"; exec "${PIN[@]}" nats-server -c "$DIR/nats.conf" -l "$DIR/nats.log" </dev/null >/dev/null 2>&1) &
  wait_ports nats "$NATS_PORT" "$NATS_WS_PORT"
  for _ in $(seq 1 50); do alive "$DIR/nats.pid" && return 0; sleep 0.1; done
}

start_mosquitto() {
  if alive "$DIR/mosquitto.pid"; then return 0; fi
  need_pkg mosquitto mosquitto
  cat > "$DIR/mosquitto.conf" <<EOF
# Private mosquitto for ringcast-loadtest (scripts/peers.sh): MQTT port for publishing,
# websockets listener for the measured subscribers. Runs as root so it can write here.
user root
per_listener_settings false
allow_anonymous true
persistence false
max_connections -1
log_dest file $DIR/mosquitto.log
# Per-connection log lines would be part of the measured cost.
connection_messages false
log_type error
log_type warning
listener $MQTT_PORT 127.0.0.1
protocol mqtt
listener $MQTT_WS_PORT 127.0.0.1
protocol websockets
EOF
  (ulimit -n "$(ulimit -Hn)"; exec "${PIN[@]}" mosquitto -c "$DIR/mosquitto.conf" </dev/null >/dev/null 2>&1) &
  echo $! > "$DIR/mosquitto.pid"
  wait_ports mosquitto "$MQTT_PORT" "$MQTT_WS_PORT"
}

stop_one() {
  local pidfile=$1
  alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  local pid; pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

print_flags() {
  for peer in $PEERS; do
    case $peer in
      nats) alive "$DIR/nats.pid" && echo "nats-ws:  --target nats-ws --url ws://127.0.0.1:$NATS_WS_PORT --publish nats://127.0.0.1:$NATS_PORT --server-pid $(cat "$DIR/nats.pid")" ;;
      mosquitto) alive "$DIR/mosquitto.pid" && echo "mqtt-ws:  --target mqtt-ws --url ws://127.0.0.1:$MQTT_WS_PORT/mqtt --publish mqtt://127.0.0.1:$MQTT_PORT --server-pid $(cat "$DIR/mosquitto.pid")" ;;
    esac
  done
}

mkdir -p "$DIR"
case "${1:-start}" in
  start)
    for peer in $PEERS; do "start_$peer"; done
    print_flags ;;
  status)
    print_flags ;;
  stop)
    for peer in $PEERS; do
      case $peer in nats) stop_one "$DIR/nats.pid" ;; mosquitto) stop_one "$DIR/mosquitto.pid" ;; esac
    done ;;
  *) echo "usage: scripts/peers.sh start|status|stop (settings in the header of this file)" >&2; exit 2 ;;
esac
