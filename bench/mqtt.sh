#!/bin/sh
# MQTT ingest through mosquitto: how fast Strata drains N messages queued at the broker for its
# persistent session (QoS 1: each acknowledged after the ingest log's fsync; QoS 0), against
# the broker's own limit, a mosquitto_sub consumer draining the same queue into /dev/null.
# Each message is one JSON device event with 6 readings (the simulator's). Prints messages/s
# and samples/s per run.
#   cargo build --release -p strata-server && N=200000 RUNS=3 bench/mqtt.sh
set -eu
BIN="$(cd "$(dirname "$0")/.." && pwd)/target/release/strata"
N="${N:-200000}"
RUNS="${RUNS:-3}"
MQ="${MQ:-19883}"
PORT="${PORT:-19464}"
work=$(mktemp -d)
trap 'kill $broker $pid 2>/dev/null || true; rm -rf "$work"' EXIT
pid=
cat > "$work/mosquitto.conf" <<CONF
listener $MQ 127.0.0.1
allow_anonymous true
user root
persistence false
max_inflight_messages 1000
max_queued_messages 0
queue_qos0_messages true
log_type error
CONF
/usr/sbin/mosquitto -c "$work/mosquitto.conf" & broker=$!
sleep 0.5
# The messages, written once: N events over 500 devices (topic devices/<id>/telemetry).
python3 - "$N" > "$work/lines" <<'PY'
import sys, time
n = int(sys.argv[1]); t0 = int(time.time() * 1000) - n * 10
for i in range(n):
    d = i % 500
    print(f'dev-{d:05d} {{"event_id":"e{i}","timestamp":{t0 + i * 10},"readings":{{"temperature_celsius":{20 + i % 10},"humidity_percent":{40 + i % 7},"battery_percent":90,"power_watts":{100 + i % 50},"energy_wh_total":{i},"error_code":0}}}}')
PY
mkdir -p "$work/by"
awk -v dir="$work/by" '{ f = $1; $1 = ""; sub(/^ /, ""); print > (dir "/" f) }' "$work/lines"
queue() { # $1 = topic prefix, $2 = qos: one mosquitto_pub per device, 8 at a time
    pids=
    for f in "$work"/by/*; do
        d=$(basename "$f")
        mosquitto_pub -h 127.0.0.1 -p "$MQ" -q "$2" -t "$1/$d/telemetry" -l < "$f" &
        pids="$pids $!"
        set -- "$1" "$2"
        n=$(echo $pids | wc -w)
        if [ "$n" -ge 8 ]; then wait $pids; pids=; fi
    done
    [ -z "$pids" ] || wait $pids
}
metric() { curl -s "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
strata_run() { # $1 = qos
    rm -rf "$work/data"
    printf '[[sources.mqtt]]\nname = "b"\nurl = "mqtt://127.0.0.1:%s"\ntopics = ["devices/+/telemetry"]\ndevice_from_topic = "devices/{device_id}/telemetry"\nqos = %s\nclient_id = "strata-bench-%s"\nshadow_delta_topic = ""\n' "$MQ" "$1" "$1" > "$work/s.toml"
    # A first start makes the session (subscribed), then Strata is stopped and the messages
    # queue at the broker.
    RUST_LOG=warn "$BIN" serve --config "$work/s.toml" --data-dir "$work/data" --listen "127.0.0.1:$PORT" & pid=$!
    until [ "$(metric 'strata_source_connected{source="b"}' 2>/dev/null)" = 1 ]; do sleep 0.1; done
    sleep 0.5; kill "$pid"; wait "$pid" 2>/dev/null || true
    queue devices "$1"
    RUST_LOG=warn "$BIN" serve --config "$work/s.toml" --data-dir "$work/data" --listen "127.0.0.1:$PORT" & pid=$!
    until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do sleep 0.02; done
    t0=; deadline=$(( $(date +%s) + 120 ))
    while :; do
        if [ "$(date +%s)" -gt "$deadline" ]; then echo "strata qos$1: stuck: $(curl -s "http://127.0.0.1:$PORT/metrics" | grep 'strata_source_.*source="b"' | tr '\n' ' ')"; break; fi
        m=$(metric 'strata_source_messages_total{source="b"}'); a=$(metric 'strata_source_acked_total{source="b"}')
        if [ -z "$t0" ] && [ "${m:-0}" -gt 0 ]; then t0=$(date +%s.%N); m0=$m; fi
        [ "${a:-0}" -ge "$N" ] && break
        sleep 0.05
    done
    t1=$(date +%s.%N)
    s=$(metric 'strata_source_samples_total{source="b"}')
    echo "strata qos$1: $N messages in $(echo "$t1 - $t0" | bc) s: $(echo "($N - $m0) / ($t1 - $t0)" | bc) msg/s, $(echo "$s / ($t1 - $t0)" | bc) samples/s"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}
broker_run() { # $1 = qos
    id="sub-bench-$1-$$"
    mosquitto_sub -h 127.0.0.1 -p "$MQ" -c -i "$id" -q "$1" -t "b$1/+/telemetry" -C 1 -W 1 >/dev/null 2>&1 || true
    queue "b$1" "$1"
    t0=$(date +%s.%N)
    mosquitto_sub -h 127.0.0.1 -p "$MQ" -c -i "$id" -q "$1" -t "b$1/+/telemetry" -C "$N" > /dev/null
    t1=$(date +%s.%N)
    echo "mosquitto_sub qos$1: $N messages in $(echo "$t1 - $t0" | bc) s: $(echo "$N / ($t1 - $t0)" | bc) msg/s"
}
i=0
while [ "$i" -lt "$RUNS" ]; do
    for q in 1 0; do broker_run "$q"; strata_run "$q"; done
    i=$((i + 1))
done
