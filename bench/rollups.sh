#!/bin/sh
# End-to-end cost of rollups: JSON device events ingested with rollups on, then off, on fresh
# data directories, alternating RUNS times. Prints events/s and samples/s per run.
#   cargo build --release -p strata-server && bench/rollups.sh
set -eu
BIN="$(dirname "$0")/../target/release/strata"
RUNS="${RUNS:-3}"
SPAN="${SPAN:-2h}"
SITES="${SITES:-25}"
PER_SITE="${PER_SITE:-20}"
PORT="${PORT:-19464}"
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
run() { # $1 = on|off
    enabled=true; [ "$1" = off ] && enabled=false
    rm -rf "$work/data"
    printf '[rollups]\nenabled = %s\n' "$enabled" > "$work/strata.toml"
    RUST_LOG=warn "$BIN" serve --config "$work/strata.toml" --data-dir "$work/data" \
        --listen "127.0.0.1:$PORT" & pid=$!
    until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do sleep 0.1; done
    printf 'rollups %-3s ' "$1"
    "$BIN" simulate --url "http://127.0.0.1:$PORT" --backfill "$SPAN" --interval 10s \
        --sites "$SITES" --devices-per-site "$PER_SITE" --connections 4 2>/dev/null
    kill "$pid"; wait "$pid" 2>/dev/null || true
}
i=0
while [ "$i" -lt "$RUNS" ]; do
    run on
    run off
    i=$((i + 1))
done
