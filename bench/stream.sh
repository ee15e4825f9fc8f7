#!/bin/sh
# The live stream (/api/v1/stream): push latency from a write's acknowledgement to each
# subscriber's receipt with 1, 100 and 1,000 subscribers; ingest throughput with 1,000
# subscribers (one device each) against none, in a fleet of 100,000 devices (1% of readings
# pushed, a dashboard's load) and of 1,000 (every reading pushed), with the server's CPU time
# of each run; the server's memory per idle connection. The clients run on the same machine.
#   cargo build --release -p strata-server --bin strata --example stream_bench && RUNS=3 bench/stream.sh
set -eu
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/target/release/strata"
CLIENT="$ROOT/target/release/examples/stream_bench"
RUNS="${RUNS:-3}"
SECONDS_EACH="${SECONDS_EACH:-20}"
PORT="${PORT:-19464}"
URL="http://127.0.0.1:$PORT"
work=$(mktemp -d)
pid=
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
ulimit -n 20000 2>/dev/null || true
start() {
    rm -rf "$work/data"
    "$BIN" serve --data-dir "$work/data" --listen "127.0.0.1:$PORT" >/dev/null 2>"$work/log" & pid=$!
    until curl -sf "$URL/health" >/dev/null 2>&1; do sleep 0.1; done
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }

[ "${SKIP_LATENCY:-}" ] || {
start
for n in 1 100 1000; do
    for r in $(seq "$RUNS"); do "$CLIENT" latency "$URL" "$n"; done
done
stop
}

# ingest: a client thread per subscriber; ingest-one-thread: every subscriber on one thread,
# leaving the cores to the server and the writers as remote clients would.
for mode in ${MODES:-ingest ingest-one-thread}; do
for fleet in 100000 1000; do
    for r in $(seq "$RUNS"); do
        for n in 0 1000; do
            start
            printf '%s fleet=%s ' "$mode" "$fleet"
            "$CLIENT" "$mode" "$URL" "$n" "$SECONDS_EACH" "$fleet" | tr -d '\n'
            # The server's CPU time over the run (user + system), from its start.
            awk -v hz="$(getconf CLK_TCK)" '{printf " server_cpu_s=%.2f\n", ($14 + $15) / hz}' "/proc/$pid/stat"
            stop
        done
    done
done
done

start
before=$(rss)
"$CLIENT" hold "$URL" 1000 8 & holder=$!
sleep 6
after=$(rss)
wait $holder
stop
echo "memory: rss_before_kb=$before rss_with_1000_connections_kb=$after per_connection_kb=$(( (after - before) / 1000 ))"
