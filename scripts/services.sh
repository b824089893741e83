#!/usr/bin/env bash
# Installs (from Debian packages) and starts the engines ringcast's tests talk to, only
# where missing or not listening. Idempotent: run it as often as you like.
#   NATS with JetStream 127.0.0.1:4222 · Redis 127.0.0.1:6379 · RabbitMQ 127.0.0.1:5672
#   (guest/guest) · Mosquitto 127.0.0.1:1883 (and its clients, mosquitto_pub)
set -euo pipefail

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

apt_updated=0
need_pkg() {
  local bin=$1 pkg=$2
  command -v "$bin" >/dev/null 2>&1 && return 0
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  echo "services: installing $pkg"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
}

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 120); do listening "$port" && return 0; sleep 0.5; done
  echo "services: $name did not start listening on 127.0.0.1:$port; see its log" >&2
  return 1
}

start_nats() {
  listening 4222 && return 0
  need_pkg nats-server nats-server
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server)" -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_port 4222 nats-server
}

start_redis() {
  listening 6379 && return 0
  need_pkg redis-server redis-server
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port 6379 redis
}

start_rabbitmq() {
  listening 5672 && return 0
  need_pkg rabbitmq-server rabbitmq-server
  rabbitmq-server -detached
  wait_port 5672 rabbitmq
}

start_mosquitto() {
  # mosquitto_pub: the real MQTT client of the IoT test (tests/it/mqtt.rs).
  need_pkg mosquitto_pub mosquitto-clients
  listening 1883 && return 0
  need_pkg mosquitto mosquitto
  mosquitto -d -c /etc/mosquitto/mosquitto.conf
  wait_port 1883 mosquitto
}

# Node.js and npm: the dashboard's browser test and the Pusher clients (pusher-js, Laravel
# Echo, the npm pusher library; tests/it/pusher.rs runs `npm ci` in tests/pusher).
need_pkg node nodejs
need_pkg npm npm
# python3 with venv: the PyPI pusher library's test makes a virtualenv under target/.
need_pkg python3 python3
python3 -c 'import ensurepip, venv' 2>/dev/null || { apt_updated=1; apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }

for service in ${SERVICES:-nats redis rabbitmq mosquitto}; do
  "start_$service"
done
echo "services: ready (${SERVICES:-nats redis rabbitmq mosquitto})"
