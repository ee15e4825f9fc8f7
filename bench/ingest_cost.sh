#!/bin/sh
# Cost of device rules and anomaly detection on the event ingest path: JSON device events (the
# simulator's fleet) ingested with rollups on and nothing else ("off"), then with RULES
# threshold rules (each over one site's devices, sustained 3 readings, with hysteresis) and an
# offline rule over the fleet ("rules"), with one anomaly detector over every device's
# temperature and humidity ("anomaly"), and with both ("both"); on fresh data directories,
# alternating RUNS times. Prints events/s and samples/s per run, for runs with a detector the
# seconds after the last acknowledged event until every window was scored, and the server's
# CPU seconds for the run (scoring included).
#   cargo build --release -p strata-server && MODES="off rules anomaly both" bench/ingest_cost.sh
set -eu
BIN="$(dirname "$0")/../target/release/strata"
RUNS="${RUNS:-3}"
MODES="${MODES:-off rules anomaly both}"
SPAN="${SPAN:-2h}"
SITES="${SITES:-25}"
PER_SITE="${PER_SITE:-20}"
RULES="${RULES:-100}"
PORT="${PORT:-19464}"
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
rules() {
    k=0
    while [ "$k" -lt "$RULES" ]; do
        site=$(printf '%02d' $((k % SITES)))
        metric=temperature_celsius; [ $((k % 2)) = 1 ] && metric=humidity_percent
        printf '[[alerting.device_rules]]\nrule_id = "r%d"\ndevice_group = '"'"'{site="site-%s"}'"'"'\nmetric = "%s"\noperator = ">"\nthreshold = 30.0\nsustained_periods = 3\nclear_threshold = 28.0\n' \
            "$k" "$site" "$metric"
        k=$((k + 1))
    done
    printf '[[alerting.device_rules]]\nrule_id = "silent"\nkind = "offline"\ndevice_group = '"'"'{type=~".+"}'"'"'\ninterval = "10s"\n'
}
detector() {
    printf '[[anomaly.detectors]]\nmatch = '"'"'{__name__=~"temperature_celsius|humidity_percent"}'"'"'\n'
}
metric() { curl -s "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
run() { # $1 = off|rules|anomaly|both
    rm -rf "$work/data"; sync; sleep 2 # the previous run's writeback off this one
    : > "$work/strata.toml"
    case "$1" in rules|both) rules >> "$work/strata.toml" ;; esac
    case "$1" in anomaly|both) detector >> "$work/strata.toml" ;; esac
    RUST_LOG=warn "$BIN" serve --config "$work/strata.toml" --data-dir "$work/data" \
        --listen "127.0.0.1:$PORT" & pid=$!
    until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do sleep 0.1; done
    printf '%-8s ' "$1"
    t_start=$(date +%s)
    "$BIN" simulate --url "http://127.0.0.1:$PORT" --backfill "$SPAN" --interval 10s \
        --sites "$SITES" --devices-per-site "$PER_SITE" --connections 4 2>/dev/null
    case "$1" in anomaly|both)
        # The backfill ends at the simulator's start: scored up to the last window final
        # then (its end at least `allowed_lateness`, 2 min, before the last event).
        t0=$(date +%s.%N); want=$(( ((t_start - 120) / 60 - 1) * 60 ))
        while [ "$(metric strata_anomaly_next_window_timestamp_seconds | cut -d. -f1)" -lt "$want" ]; do sleep 0.2; done
        echo "         scored every window $(echo "$(date +%s.%N) - $t0" | bc) s after the last event; windows scored $(metric strata_anomaly_windows_scored_total)"
        ;;
    esac
    # The server's CPU time for the run (user + system, ticks of 1/100 s), once the shards are
    # idle in every mode: steadier than the rate on two cores shared with the simulator.
    sleep 2
    echo "         server CPU $(awk '{ printf "%.2f", ($14 + $15) / 100 }' /proc/$pid/stat) s"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}
i=0
while [ "$i" -lt "$RUNS" ]; do
    for m in $MODES; do run "$m"; done
    i=$((i + 1))
done
