#!/usr/bin/env bash
# p99 write latency during flush and compaction (issue 14: "Flush and compaction move off the
# ingest path so a write is not held behind them (measure p99 write latency during a flush)").
# Starts strata and runs bench/flush_latency.py against it: a steady load of small Influx
# batches from a few concurrent clients, with a flush forced every FLUSH_EVERY seconds (each
# flush compacts too), and prints p50/p90/p99/p99.9/max overall, outside flushes, during
# flushes and during compactions.
#
#   cargo build --release -p strata-server && bench/flush_latency.sh
#
# Environment:
#   CLIENTS=4 BATCH=500 INTERVAL_MS=50   4 x 20 requests/s x 500 samples = 40,000 samples/s
#   SERIES=100000                        series cycled over (each flush persists all of them)
#   DURATION=120 WARMUP=10               seconds measured, and before
#   FLUSH_EVERY=10                       seconds between forced flushes; 0: none forced, the
#                                        server flushes by FLUSH_INTERVAL (storage.flush_interval)
#   FLUSH_INTERVAL                       e.g. 10s; default: the server's default (15m)
#   ROLLUPS=off                          on: keep the default rollups
#   OUT                                  folder for results (default: a temporary folder)
# Configuration: the defaults (timestamps are the wall clock), except rollups off.
source "$(dirname "$0")/common.sh"
CLIENTS=${CLIENTS:-4} BATCH=${BATCH:-500} INTERVAL_MS=${INTERVAL_MS:-50} SERIES=${SERIES:-100000}
DURATION=${DURATION:-120} WARMUP=${WARMUP:-10} FLUSH_EVERY=${FLUSH_EVERY:-10}
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
need_strata
dir=$(mktemp -d) p=$(free_port); base=http://127.0.0.1:$p
trap 'stop_started; rm -rf "$dir"' EXIT
mapfile -t limits < <(series_limits "$SERIES" $(( (SERIES + 7) / 8 )))
storage=()
[ -z "${FLUSH_INTERVAL:-}" ] || storage=("[storage]" "flush_interval = \"$FLUSH_INTERVAL\"")
write_config "$OUT/strata.toml" "${storage[@]+"${storage[@]}"}" "${limits[@]+"${limits[@]}"}"
start_strata "$dir" "$p" "$OUT/strata.toml" "$OUT/strata.log"
wait_http "$base/health"
{
  describe_build
  echo "# config: defaults${FLUSH_INTERVAL:+, storage.flush_interval $FLUSH_INTERVAL}"
} | tee "$OUT/summary.txt"
python3 "$BENCH_DIR/flush_latency.py" --url "$base" --clients "$CLIENTS" --batch "$BATCH" \
  --interval-ms "$INTERVAL_MS" --series "$SERIES" --duration "$DURATION" --warmup "$WARMUP" \
  --flush-every "$FLUSH_EVERY" | tee -a "$OUT/summary.txt" \
  || die "the latency run failed (see above; server log $OUT/strata.log)"
[ -d "/proc/$STRATA_PID" ] || die "strata exited during the run (see $OUT/strata.log)"
echo "results in $OUT"
