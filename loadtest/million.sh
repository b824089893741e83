#!/usr/bin/env bash
# One million subscribed WebSockets on this host, and one broadcast that reaches them all.
#
# Starts a private nats-server (free ports, no JetStream), PROCS `ringcast gateway`
# processes sharing one port (SO_REUSEPORT, `--shards 1 --pin SERVER_CPU`, each at most
# PER_PROC connections: the per-process descriptor limit here is a hard 20,000) and all
# joined through that nats-server, then runs `ringcast-loadtest fanout` on HARNESS_CPU:
# CONNS connections at RATE/s, each subscribed to one channel, held HOLD with only the
# gateways' heartbeats, then BROADCASTS messages published BROADCAST_GAP apart with one
# `POST /api/publish` each (the second goes out while the first is still being written).
# Prints the connect rate, gateway RSS, kernel and harness memory per connection, CPU
# seconds per 1,000 heartbeats, `broadcast delivered N of M in T s` with publish → receive
# p50/p99 per broadcast, the gateways' own counters (heartbeat timeouts, slow-consumer
# closes, queue drops, scraped from every process), and appends one JSON line to RESULTS.
# Every phase is bounded; everything it started is stopped on exit, error or Ctrl-C.
#
#   bash loadtest/million.sh                              # 1,000,000, 5 min hold
#   CONNS=150000 HOLD=30s bash loadtest/million.sh        # a step on the way up
#   CONNS=4000 PROCS=2 RATE=2000 HOLD=5s bash loadtest/million.sh   # smoke run, < 30 s
#
# Settings (environment): CONNS (1000000); PROCS (enough gateways at FILL% of PER_PROC);
# PER_PROC (19000, each gateway's --max-connections); FILL (95: SO_REUSEPORT spreads by
# hash, not evenly, so processes are planned below their cap); PORT (19200); RATE
# (connects/s, 5000); HOLD (300s); BROADCASTS (2, at most 8); BROADCAST_GAP (100ms);
# DRAIN (120s: longest wait for the broadcasts' last deliveries); HEARTBEAT_TIMEOUT (60s:
# the harness's client-side dead-server check; the gateways ping every 25 s);
# SERVER_CPU (0) and HARNESS_CPU (1); APPLY_TUNING (1: raise tuning/scale.conf first);
# MIN_AVAILABLE_MIB (1024: stop the run if MemAvailable falls below it); RESULTS
# (loadtest/results/<UTC date>/million.jsonl; empty: none); LABEL; GATEWAY_FLAGS.
# Exit: 0 when every connection was ready, none dropped, no heartbeat timeout on either
# side and every broadcast reached every subscriber; 1 when the run fell short (it says
# what); 2 on bad settings; 3 when the host cannot take the run (it says which limit).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0; fi
[ $# -eq 0 ] || { echo "million: no arguments; settings come from the environment (see --help)" >&2; exit 2; }

CONNS=${CONNS:-1000000} PER_PROC=${PER_PROC:-19000} FILL=${FILL:-95} PORT=${PORT:-19200} RATE=${RATE:-5000}
HOLD=${HOLD:-300s} BROADCASTS=${BROADCASTS:-2} BROADCAST_GAP=${BROADCAST_GAP:-100ms} DRAIN=${DRAIN:-120s}
HEARTBEAT_TIMEOUT=${HEARTBEAT_TIMEOUT:-60s} SERVER_CPU=${SERVER_CPU:-0} HARNESS_CPU=${HARNESS_CPU:-1}
MIN_AVAILABLE_MIB=${MIN_AVAILABLE_MIB:-1024}
RESULTS=${RESULTS-loadtest/results/$(date -u +%F)/million.jsonl}
planned=$(( PER_PROC * FILL / 100 ))
PROCS=${PROCS:-$(( (CONNS + planned - 1) / planned ))}
LABEL=${LABEL:-million $CONNS}
KEY=million-$$
bin=target/release
say() { echo "million: $*"; }
die() { local code=$1; shift; echo "million: $*" >&2; exit "$code"; }
secs() { case "$1" in *ms) echo $(( ${1%ms} / 1000 ));; *s) echo "${1%s}";; *m) echo $(( ${1%m} * 60 ));; *) echo "$1";; esac; }
millis() { case "$1" in *ms) echo "${1%ms}";; *s) echo $(( ${1%s} * 1000 ));; *) echo "$1";; esac; }

# --- settings and host limits, before anything starts -------------------------------
for v in CONNS PER_PROC FILL PORT RATE BROADCASTS PROCS MIN_AVAILABLE_MIB; do
  [[ "${!v}" =~ ^[0-9]+$ ]] && [ "${!v}" -gt 0 ] || die 2 "$v=${!v} must be a whole number above 0"
done
for v in HOLD BROADCAST_GAP DRAIN HEARTBEAT_TIMEOUT; do
  [[ "${!v}" =~ ^[0-9]+(ms|s|m)$ ]] || die 2 "$v=${!v} must be a duration like 300s, 5m or 100ms"
done
[ "$BROADCASTS" -le 8 ] || die 2 "BROADCASTS=$BROADCASTS: at most 8 are tallied one by one"
gap_ms=$(millis "$BROADCAST_GAP"); [ "$gap_ms" -gt 0 ] || die 2 "BROADCAST_GAP must be above 0"
[ $(( PROCS * PER_PROC )) -ge "$CONNS" ] || die 2 "$PROCS gateways × $PER_PROC connections cannot hold $CONNS; raise PROCS"
[ "$(nproc)" -ge 2 ] || die 3 "needs 2 cores (gateways on SERVER_CPU, harness on HARNESS_CPU); this host has $(nproc)"
[ "$SERVER_CPU" != "$HARNESS_CPU" ] || die 2 "SERVER_CPU and HARNESS_CPU must differ"
[ "$(( (CONNS + 9999) / 10000 ))" -le 254 ] || die 3 "$CONNS connections need $(( (CONNS + 9999) / 10000 )) source addresses at 10,000 each; 127.0.0.1..254 has 254"
for tool in jq curl taskset timeout; do command -v "$tool" >/dev/null || die 3 "needs $tool (Debian: apt-get install $tool)"; done
nats=$(command -v nats-server || echo /usr/sbin/nats-server)
[ -x "$nats" ] || die 3 "needs nats-server (Debian: apt-get install nats-server); the gateways share one for the broadcast"
if [ ! -x $bin/ringcast ] || [ ! -x $bin/ringcast-loadtest ]; then
  say "building (release) first"; cargo build --release --workspace --locked -q
fi
workers=$(( (CONNS + 18999) / 19000 ))
# Memory: per connection ~10.6 KB of kernel memory (client and server socket, measured as
# Slab growth at 150k), ~0.8 KB of gateway RSS, ~0.1 KB of harness: 12 KiB with margin;
# per process ~12 MiB (gateway) and ~4 MiB (worker); 3 GiB for broadcast buffers and the
# rest of the host (builds share it).
need_mib=$(( CONNS * 12 / 1024 + PROCS * 12 + workers * 4 + 3072 ))
avail_mib=$(( $(awk '/^MemAvailable:/ {print $2}' /proc/meminfo) / 1024 ))
if [ "$avail_mib" -lt "$need_mib" ]; then
  die 3 "$CONNS connections need ~$need_mib MiB available (12 KiB each: ~10.6 KB kernel for the client and server sockets, 0.8 KB gateway, 0.1 KB harness; $PROCS gateways and $workers workers; 3 GiB for buffers and the rest of the host); MemAvailable is $avail_mib MiB. Free memory or lower CONNS."
fi
if [ "${APPLY_TUNING:-1}" = 1 ]; then bash tuning/apply.sh tuning/scale.conf | sed 's/^/tuning: /'; fi
fmax=$(awk '{print $1}' /proc/sys/fs/file-max)
[ "$fmax" -ge $(( 2 * CONNS + 65536 )) ] || die 3 "fs.file-max is $fmax; $CONNS loopback connections are $(( 2 * CONNS )) sockets: raise it (tuning/scale.conf, APPLY_TUNING=1, as root)"
if [ -r /proc/sys/net/netfilter/nf_conntrack_max ]; then
  ctmax=$(cat /proc/sys/net/netfilter/nf_conntrack_max)
  [ "$ctmax" -ge $(( CONNS + 65536 )) ] || die 3 "net.netfilter.nf_conntrack_max is $ctmax; $CONNS connections need $(( CONNS + 65536 )) (tuning/scale.conf, APPLY_TUNING=1, as root)"
fi
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge $(( PER_PROC + 500 )) ] || die 3 "the descriptor limit is $(ulimit -n) per process; PER_PROC=$PER_PROC needs $(( PER_PROC + 500 )) (lower PER_PROC, raise PROCS)"

port_busy() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }
# SO_REUSEPORT would let a gateway join a port someone else holds and split the clients.
port_busy "$PORT" && die 2 "port $PORT is already in use (set PORT=...)"
free_port() { local p; for p in $(seq "$1" $(( $1 + 200 ))); do port_busy "$p" || { echo "$p"; return; }; done; die 3 "no free port in $1..$(( $1 + 200 ))"; }

# --- start: nats-server, gateways ----------------------------------------------------
work=$(mktemp -d /tmp/ringcast-million.XXXXXX)
pids=() harness="" nats_pid="" keep_logs=""
cleanup() {
  set +e
  if [ -n "$harness" ] && kill -0 "$harness" 2>/dev/null; then
    kill -TERM -- -"$harness" 2>/dev/null || kill -TERM "$harness"   # timeout leads its own process group: harness and workers
    for _ in $(seq 1 100); do kill -0 "$harness" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- -"$harness" 2>/dev/null
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
  done
  [ -n "$nats_pid" ] && { kill "$nats_pid" 2>/dev/null; sleep 0.2; kill -9 "$nats_pid" 2>/dev/null; }
  if [ -n "$keep_logs" ]; then mkdir -p target/million-logs; cp -r "$work"/* target/million-logs/ 2>/dev/null; echo "million: logs kept in target/million-logs/" >&2; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

nport=$(free_port 14300); mport=$(free_port $(( nport + 1 )))
taskset -c "$SERVER_CPU" "$nats" -a 127.0.0.1 -p "$nport" -m "$mport" -l "$work/nats.log" &
nats_pid=$!
for _ in $(seq 1 50); do port_busy "$nport" && break; sleep 0.1; done
port_busy "$nport" || { keep_logs=1; die 1 "the private nats-server did not start on 127.0.0.1:$nport (log kept)"; }
say "private nats-server on 127.0.0.1:$nport (pid $nats_pid); starting $PROCS gateways on 127.0.0.1:$PORT, cpu $SERVER_CPU"
for i in $(seq 1 "$PROCS"); do
  taskset -c "$SERVER_CPU" $bin/ringcast gateway --listen 127.0.0.1:"$PORT" --shards 1 --pin "$SERVER_CPU" \
    --max-connections "$PER_PROC" --accept-rate 1000000 --share-port --node "million-$i" --log warn \
    --nats nats://127.0.0.1:"$nport" --api-key "$KEY" ${GATEWAY_FLAGS:-} >"$work/gw$i.log" 2>&1 &
  pids+=($!)
done
# Ready when nats-server counts every gateway's connection (bounded: 60 s).
for _ in $(seq 1 600); do
  n=$(curl -s -m 1 "http://127.0.0.1:$mport/varz" | jq -r '.connections // 0' 2>/dev/null || echo 0)
  [ "${n:-0}" -ge "$PROCS" ] && break
  sleep 0.1
done
for i in $(seq 1 "$PROCS"); do
  kill -0 "${pids[$((i - 1))]}" 2>/dev/null || { keep_logs=1; die 1 "gateway $i exited at start; its log: $(tail -n 5 "$work/gw$i.log")"; }
done
[ "${n:-0}" -ge "$PROCS" ] || { keep_logs=1; die 1 "only ${n:-0} of $PROCS gateways connected to nats-server within 60 s"; }
port_busy "$PORT" || { keep_logs=1; die 1 "no gateway answers on 127.0.0.1:$PORT"; }

# --- measuring helpers ----------------------------------------------------------------
meminfo() { awk -v k="$1" '$1 == k":" {print $2}' /proc/meminfo; }
tcp_pages() { awk '/^TCP:/ {for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat; }
conntrack() { cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo 0; }
slab_bytes() { awk 'NR > 2 {print $1, $3 * $4}' /proc/slabinfo 2>/dev/null; }
rss_list() { for p in "${pids[@]}"; do awk '/VmRSS/ {print $2}' /proc/"$p"/status 2>/dev/null; done; }
# Every gateway's /metrics through the shared port: SO_REUSEPORT picks a process per new
# connection by hash, so ask until every node has answered (bounded: 4,000 requests).
scrape_all() {
  local dir=$1 seen=0 tries=0 node
  mkdir -p "$dir"
  while [ "$seen" -lt "$PROCS" ] && [ "$tries" -lt 4000 ]; do
    tries=$((tries + 1))
    curl -s -m 2 "http://127.0.0.1:$PORT/metrics" >"$dir/last" 2>/dev/null || continue
    node=$(sed -n 's/^ringcast_info{node="\([^"]*\)".*/\1/p' "$dir/last")
    if [ -n "$node" ] && [ ! -e "$dir/$node" ]; then mv "$dir/last" "$dir/$node"; seen=$((seen + 1)); fi
  done
  rm -f "$dir/last"
  echo "$seen"
}
metric_sum() { cat "$1"/million-* 2>/dev/null | awk -v m="$2" 'index($0, m) == 1 {s += $NF} END {print s + 0}'; }

# --- run ------------------------------------------------------------------------------
slab_bytes >"$work/slab0"
slab0=$(meminfo Slab) avail0=$(meminfo MemAvailable) tcp0=$(tcp_pages) ct0=$(conntrack)
load0=$(cut -d' ' -f1-3 /proc/loadavg)
say "host before: MemAvailable $((avail0 / 1024)) MiB, Slab $((slab0 / 1024)) MiB, load average $load0"
hold_s=$(secs "$HOLD") drain_s=$(secs "$DRAIN")
bound=$(( CONNS * 3 / (RATE * 2) + hold_s + drain_s + 300 ))
bcast_rate=$(awk -v g="$gap_ms" 'BEGIN {printf "%g", 1000 / g}')
bcast_ms=$(( BROADCASTS * gap_ms ))
pid_list=$(IFS=,; echo "${pids[*]}")
say "harness: $CONNS connections at $RATE/s over $workers workers on cpu $HARNESS_CPU, hold $HOLD, then $BROADCASTS broadcasts ${gap_ms} ms apart; the whole run is bounded by $bound s"
timeout "$bound" taskset -c "$HARNESS_CPU" $bin/ringcast-loadtest fanout --url ws://127.0.0.1:"$PORT"/ws --conns "$CONNS" \
  --connect-rate "$RATE" --connect-timeout 30s --heartbeat-timeout "$HEARTBEAT_TIMEOUT" --hold "$HOLD" \
  --rate "$bcast_rate" --duration "${bcast_ms}ms" --drain "$DRAIN" --api-key "$KEY" --channel million \
  --server-pid "$pid_list" --label "$LABEL" --json >"$work/fanout.json" 2>"$work/progress.log" &
harness=$!
ready_at="" aborted="" tcp_peak=${tcp0:-0} last_print=0 started=$(date +%s)
while kill -0 "$harness" 2>/dev/null; do
  sleep 1
  now=$(date +%s)
  avail=$(meminfo MemAvailable)
  t=$(tcp_pages); [ "${t:-0}" -gt "$tcp_peak" ] && tcp_peak=$t
  if [ $(( avail / 1024 )) -lt "$MIN_AVAILABLE_MIB" ]; then
    aborted="memory: MemAvailable fell to $(( avail / 1024 )) MiB (MIN_AVAILABLE_MIB=$MIN_AVAILABLE_MIB) at: $(tail -n 1 "$work/progress.log")"
    echo "million: stopping: $aborted" >&2
    kill -TERM -- -"$harness" 2>/dev/null; break
  fi
  for i in $(seq 1 "$PROCS"); do
    kill -0 "${pids[$((i - 1))]}" 2>/dev/null || { aborted="gateway $i (pid ${pids[$((i - 1))]}) exited during the run"; }
  done
  if [ -n "$aborted" ]; then echo "million: stopping: $aborted" >&2; keep_logs=1; kill -TERM -- -"$harness" 2>/dev/null; break; fi
  if [ -z "$ready_at" ] && grep -qs "ready $CONNS failed" "$work/progress.log"; then
    ready_at=$now
    sleep 2
    slab_bytes >"$work/slab1"
    slab1=$(meminfo Slab) avail1=$(meminfo MemAvailable) tcp1=$(tcp_pages) ct1=$(conntrack)
    rss=$(rss_list | sort -n)
    rss_sum=$(echo "$rss" | awk '{s += $1} END {print s}')
    say "all $CONNS ready after $(( now - started )) s; gateway RSS per process $(echo "$rss" | head -n 1)-$(echo "$rss" | tail -n 1) KiB (sum $((rss_sum / 1024)) MiB); Slab +$(( (slab1 - slab0) / 1024 )) MiB; MemAvailable −$(( (avail0 - avail1) / 1024 )) MiB; conntrack entries ${ct1}"
    seen=$(scrape_all "$work/ready")
    conns_each=$(for f in "$work"/ready/million-*; do awk '$1 == "ringcast_connections" {print $2}' "$f"; done | sort -n)
    per_min=$(echo "$conns_each" | head -n 1) per_max=$(echo "$conns_each" | tail -n 1)
    say "connections per gateway ($seen of $PROCS scraped): $per_min-$per_max (cap $PER_PROC)"
  fi
  if [ $(( now - last_print )) -ge 10 ]; then
    last_print=$now
    echo "million: [$(( now - started ))s] $(tail -n 1 "$work/progress.log" | tr -d '\r') | MemAvailable $(( avail / 1024 )) MiB | load $(cut -d' ' -f1 /proc/loadavg)"
  fi
done
wait "$harness"; rc=$?
harness=""
[ "$rc" -eq 0 ] || { keep_logs=1; echo "million: the harness exited with $rc (124: the $bound s bound)" >&2; tail -n 5 "$work/progress.log" >&2; }
seen_end=$(scrape_all "$work/end")
load1=$(cut -d' ' -f1-3 /proc/loadavg)
[ -s "$work/fanout.json" ] || { keep_logs=1; die 1 "no result from the harness${aborted:+ ($aborted)}; its last lines: $(tail -n 3 "$work/progress.log")"; }

# --- figures --------------------------------------------------------------------------
gw_hb=$(metric_sum "$work/end" 'ringcast_closes_total{shard="0",reason="heartbeat_timeout"}')
gw_slow=$(metric_sum "$work/end" 'ringcast_slow_consumer_closes_total ')
gw_qdrops=$(metric_sum "$work/end" 'ringcast_fanout_queue_drops_total')
gw_dropped=$(metric_sum "$work/end" 'ringcast_fanout_dropped_total ')
gw_nats_slow=$(metric_sum "$work/end" 'ringcast_nats_slow_consumer_total ')
extra=$(jq -n --argjson procs "$PROCS" --argjson per_proc "$PER_PROC" --argjson conns "$CONNS" \
  --arg slab0 "${slab0:-}" --arg slab1 "${slab1:-}" --arg avail0 "$avail0" --arg avail1 "${avail1:-}" \
  --arg tcp0 "${tcp0:-0}" --arg tcp1 "${tcp1:-0}" --arg tcp_peak "$tcp_peak" --arg ct1 "${ct1:-0}" \
  --arg rss_sum "${rss_sum:-0}" --arg per_min "${per_min:-0}" --arg per_max "${per_max:-0}" \
  --argjson seen "$seen_end" --argjson hb "$gw_hb" --argjson slow "$gw_slow" --argjson qd "$gw_qdrops" \
  --argjson fd "$gw_dropped" --argjson ns "$gw_nats_slow" --arg load0 "$load0" --arg load1 "$load1" --arg aborted "$aborted" '
  def n: if . == "" then null else tonumber end;
  {figures: ({
    gateway_procs: $procs, gateway_max_connections: $per_proc,
    gateway_connections_min: ($per_min | n), gateway_connections_max: ($per_max | n),
    gateway_rss_held_mib: (($rss_sum | n) / 1024 | floor),
    kernel_slab_bytes_per_conn: (if $slab1 == "" then null else ((($slab1 | n) - ($slab0 | n)) * 1024 / $conns | floor) end),
    kernel_memavailable_drop_bytes_per_conn: (if $avail1 == "" then null else ((($avail0 | n) - ($avail1 | n)) * 1024 / $conns | floor) end),
    tcp_mem_pages_held: ($tcp1 | n), tcp_mem_pages_peak: ($tcp_peak | n), conntrack_entries_held: ($ct1 | n),
    gateways_scraped: $seen, gateway_heartbeat_timeouts: $hb, gateway_slow_consumer_closes: $slow,
    gateway_queue_drops: ($qd + $fd), gateway_nats_slow_consumer: $ns}),
   host_load: {before: $load0, after: $load1}, aborted: (if $aborted == "" then null else $aborted end)}')
jq --argjson x "$extra" '.figures += $x.figures | .host.load_average = $x.host_load | .parameters.gateway_flags = env.GATEWAY_FLAGS | (if $x.aborted then .notes += ["aborted: " + $x.aborted] else . end)' \
  "$work/fanout.json" >"$work/result.json"
if [ -n "$RESULTS" ]; then mkdir -p "$(dirname "$RESULTS")"; jq -c . "$work/result.json" >>"$RESULTS"; fi
if [ -s "$work/slab1" ]; then
  top=$(join <(sort "$work/slab0") <(sort "$work/slab1") | awk -v n="$CONNS" '{d = ($3 - $2) / n; if (d >= 16) printf "%s %.0f\n", $1, d}' | sort -k2 -nr | head -n 8 | awk '{printf "%s %s B, ", $1, $2}')
fi

f() { jq -r --arg k "$1" '.figures[$k] | if . == null then "n/a" else tostring end' "$work/result.json"; }
echo
echo "=== ringcast: $(f connections_ready) of $CONNS WebSockets on $PROCS gateways sharing 127.0.0.1:$PORT (cpu $SERVER_CPU), harness on cpu $HARNESS_CPU ==="
echo "connect rate                      $(f connect_rate_per_s)/s (asked $RATE/s); handshake p50 $(f handshake_p50_ms) ms, p99 $(f handshake_p99_ms) ms; failures $(f connect_failures)"
echo "connections per gateway           $(f gateway_connections_min)-$(f gateway_connections_max) (cap $PER_PROC)"
echo "gateway RSS per connection        $(f server_rss_bytes_per_conn) B (summed over $PROCS processes: $(f server_rss_baseline_mib) MiB before, $(f server_rss_connected_mib) MiB connected)"
echo "kernel memory per connection      Slab +$(f kernel_slab_bytes_per_conn) B, MemAvailable −$(f kernel_memavailable_drop_bytes_per_conn) B (client + server socket$([ "${ct1:-0}" -gt 0 ] && echo " + conntrack entry"); conntrack entries held: ${ct1:-0})"
[ -n "${top:-}" ] && echo "  slab caches grown, per connection: ${top%, }"
echo "harness RSS per connection        $(f harness_rss_bytes_per_conn) B"
echo "hold                              $(f hold_s) s: dropped $(f dropped_during_hold), heartbeat timeouts $(f client_heartbeat_timeouts_during_hold) client-side / $gw_hb gateway-side (all $seen_end gateways scraped)"
echo "heartbeats                        $(f heartbeats_during_hold) in the hold ($(f heartbeats_per_s)/s); CPU s per 1,000: gateways $(f server_cpu_s_per_1000_heartbeats), harness $(f harness_cpu_s_per_1000_heartbeats); gateway CPU $(f hold_server_cpu_percent)% of a core"
jq -r '.notes[] | select(startswith("broadcast"))' "$work/result.json"
echo "broadcasts                        published $(f published) of $BROADCASTS (publish errors $(jq -c '.figures.publish_errors // {}' "$work/result.json")); lost $(f lost) of $(f expected); broadcast 2 went out $(f broadcast2_published_after_ms) ms after broadcast 1, while it was still being written: $(f broadcast2_during_broadcast1)"
echo "gateway counters                  slow-consumer closes $gw_slow, queue drops $(( gw_qdrops + gw_dropped )), NATS slow consumer $gw_nats_slow; TCP buffer pages held ${tcp1:-?}, peak $tcp_peak (tcp_mem max $(awk '{print $3}' /proc/sys/net/ipv4/tcp_mem))"
echo "host load average                 before $load0, after $load1 (other work on these 2 cores counts here)"
jq -r '.notes[] | select(startswith("broadcast") | not)' "$work/result.json" | sed 's/^/note: /'
[ -n "$RESULTS" ] && echo "result appended to $RESULTS"

# --- verdict ------------------------------------------------------------------------------
short=()
[ -z "$aborted" ] || short+=("$aborted")
[ "$(f connections_ready)" = "$CONNS" ] || short+=("only $(f connections_ready) of $CONNS connections became ready (failures: $(jq -c '.figures.failures_by_kind' "$work/result.json"))")
[ "$(f dropped_after_ready)" = 0 ] || short+=("$(f dropped_after_ready) connections dropped after ready ($(jq -c '.figures.failures_at_end' "$work/result.json"))")
[ "$(f client_heartbeat_timeouts_total)" = 0 ] || short+=("$(f client_heartbeat_timeouts_total) client-side heartbeat timeouts")
[ "$gw_hb" = 0 ] || short+=("$gw_hb gateway-side heartbeat timeouts")
[ "$seen_end" = "$PROCS" ] || short+=("only $seen_end of $PROCS gateways answered /metrics")
# A broadcast whose publish failed has no tally: it must count as a shortfall, not as equal nulls.
[ "$(f published)" = "$BROADCASTS" ] || short+=("only $(f published) of $BROADCASTS broadcasts were published (publish errors: $(jq -c '.figures.publish_errors' "$work/result.json"))")
for k in $(seq 1 "$BROADCASTS"); do
  d=$(f broadcast${k}_delivered) n=$(f broadcast${k}_subscribers)
  [[ "$d" =~ ^[0-9]+$ ]] && [ "$d" = "$n" ] || short+=("broadcast $k delivered $d of $n")
done
if [ ${#short[@]} -gt 0 ]; then
  keep_logs=1
  printf 'million: FELL SHORT: %s\n' "${short[@]}" >&2
  exit 1
fi
say "ok: $CONNS held, 0 dropped, 0 heartbeat timeouts, every broadcast reached every subscriber"
