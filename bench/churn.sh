#!/usr/bin/env bash
# Memory under series churn (issue 14: "memory under churn over time"; "5 million distinct
# series over time (a rotating label) keep resident memory bounded").
# bench/churn.py writes ROUNDS of SERIES_PER_ROUND new series (a rotating `instance` label),
# SAMPLES each, over Influx line protocol, timestamps a STEP further per round (all in the past,
# so each round's series are idle, and out of the 5-minute head lookback, from the next round
# on). Strata is flushed after every round (POST /api/v1/admin/flush: idle series leave the head
# at a flush); resident memory and strata_tsdb_series are printed per round.
#
#   cargo build --release -p strata-server && bench/churn.sh
#
# Environment:
#   TOTAL=5000000 SERIES_PER_ROUND=100000 SAMPLES=3 STEP_MS=600000 (10 min)
#   TARGETS="strata"   add vm for VictoriaMetrics under the same load (its RSS per round)
#   ROLLUPS=off        on: keep the default rollups
#   OUT                folder for results (default: a temporary folder)
# Strata runs at the default configuration except limits.max_series_per_metric, raised to TOTAL
# so that a build whose limiter never forgets (main before issue 14) is measured for memory
# rather than refusing; the per-tenant and total live-series caps, where the build has them,
# stay at their defaults, so a head that does not forget shows as refused writes.
source "$(dirname "$0")/common.sh"
TOTAL=${TOTAL:-5000000} SERIES_PER_ROUND=${SERIES_PER_ROUND:-100000} SAMPLES=${SAMPLES:-3}
STEP_MS=${STEP_MS:-600000} TARGETS=${TARGETS:-strata}
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
trap 'stop_started' EXIT
describe_build | tee "$OUT/summary.txt"
echo "# TOTAL=$TOTAL SERIES_PER_ROUND=$SERIES_PER_ROUND SAMPLES=$SAMPLES STEP_MS=$STEP_MS" | tee -a "$OUT/summary.txt"
status=0
for t in $TARGETS; do
  dir=$(mktemp -d) p=$(free_port); base=http://127.0.0.1:$p
  args=(--url "$base" --total "$TOTAL" --round "$SERIES_PER_ROUND" --samples "$SAMPLES" --step-ms "$STEP_MS")
  case $t in
    strata)
      need_strata
      write_config "$OUT/strata.toml" "[limits]" "max_series_per_metric = $TOTAL"
      start_strata "$dir" "$p" "$OUT/strata.toml" "$OUT/strata.log"
      pid=$STRATA_PID
      wait_http "$base/health"
      args+=(--pid "$pid" --flush --series-metric strata_tsdb_series) ;;
    vm)
      command -v victoria-metrics >/dev/null || die "victoria-metrics is not installed"
      victoria-metrics -storageDataPath="$dir" -httpListenAddr="127.0.0.1:$p" -retentionPeriod=100y \
        -loggerLevel=ERROR >"$OUT/vm.log" 2>&1 &
      pid=$!; STARTED_PIDS+=("$pid")
      wait_http "$base/health"
      args+=(--pid "$pid") ;;
    *) die "unknown target $t (strata or vm)" ;;
  esac
  note "$t: churn load (per-round table in $OUT/rounds-$t.txt)"
  echo "== $t" | tee -a "$OUT/summary.txt"
  python3 "$BENCH_DIR/churn.py" "${args[@]}" | tee "$OUT/rounds-$t.txt" || status=1
  tail -1 "$OUT/rounds-$t.txt" | sed "s/^summary/summary target=$t/" >>"$OUT/summary.txt"
  stop_pid "$pid"
  rm -rf "$dir"
done
echo "results in $OUT"
[ "$status" = 0 ] || die "churn load failed or writes were refused (see above and $OUT)"
