#!/bin/sh
# Cost of device rules on the event ingest path: JSON device events (the simulator's fleet)
# ingested with rollups on and no device rules, then with RULES threshold rules (each over one
# site's devices, sustained 3 readings, with hysteresis) and one offline rule over the fleet,
# on fresh data directories, alternating RUNS times. Prints events/s and samples/s per run.
#   cargo build --release -p strata-server && bench/device_rules.sh
set -eu
BIN="$(dirname "$0")/../target/release/strata"
RUNS="${RUNS:-3}"
SPAN="${SPAN:-2h}"
SITES="${SITES:-25}"
PER_SITE="${PER_SITE:-20}"
RULES="${RULES:-100}"
PORT="${PORT:-19464}"
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
run() { # $1 = off|on
    rm -rf "$work/data"
    : > "$work/strata.toml"
    if [ "$1" = on ]; then
        k=0
        while [ "$k" -lt "$RULES" ]; do
            site=$(printf '%02d' $((k % SITES)))
            metric=temperature_celsius; [ $((k % 2)) = 1 ] && metric=humidity_percent
            printf '[[alerting.device_rules]]\nrule_id = "r%d"\ndevice_group = '"'"'{site="site-%s"}'"'"'\nmetric = "%s"\noperator = ">"\nthreshold = 30.0\nsustained_periods = 3\nclear_threshold = 28.0\n' \
                "$k" "$site" "$metric" >> "$work/strata.toml"
            k=$((k + 1))
        done
        printf '[[alerting.device_rules]]\nrule_id = "silent"\nkind = "offline"\ndevice_group = '"'"'{type=~".+"}'"'"'\ninterval = "10s"\n' >> "$work/strata.toml"
    fi
    RUST_LOG=warn "$BIN" serve --config "$work/strata.toml" --data-dir "$work/data" \
        --listen "127.0.0.1:$PORT" & pid=$!
    until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do sleep 0.1; done
    printf 'device rules %-3s ' "$1"
    "$BIN" simulate --url "http://127.0.0.1:$PORT" --backfill "$SPAN" --interval 10s \
        --sites "$SITES" --devices-per-site "$PER_SITE" --connections 4 2>/dev/null
    kill "$pid"; wait "$pid" 2>/dev/null || true
}
i=0
while [ "$i" -lt "$RUNS" ]; do
    run off
    run on
    i=$((i + 1))
done
