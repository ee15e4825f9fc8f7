#!/usr/bin/env bash
# The two-year workload of issue 15 ("Speed"): 500 series at 5-minute resolution for two years
# ending now, loaded into Strata by backfill (POST /api/v1/admin/backfill) and into
# VictoriaMetrics (Influx line protocol on /write), then dashboard queries over two years (step
# 1d) and 90 days (step 1h) on both, and a 24-hour query with the result cache on and off.
#
#   cargo build --release -p strata-server && bench/twoyear.sh
#
# Environment (defaults in brackets):
#   DAYS [730]  SITES [10]  PER_SITE [20]      history length; sites x devices per site: each
#                                              device has temperature_celsius (gauge) and
#                                              energy_wh_total (counter), every other one
#                                              vibration_mm_s (quantile sketch): 500 series
#   RAW_RETENTION [7d]  WARM_RETENTION [90d]   Strata's retention, rollups.retention
#   CHUNK_DAYS [2] days of every series per request (about 18 MB of line protocol for 500
#                  series): requests by time range, as exports come, each touching few blocks
#                  of each tier and few cold-tier files (one per request and day)
#   CONNS [2]      requests in flight while loading
#   REPEAT [5]     runs of each query (the median is reported)
#   RAW_SERIES [50]  series loaded for one year into a raw-only Strata, to measure raw bytes
#                  per series-year in the raw tier itself (0: skip)
#   VM [on]        also load and query VictoriaMetrics (Debian's victoria-metrics)
#   WORK           working directory (default: a fresh temporary one, deleted at the end
#                  unless KEEP=1)
#   STRATA_BIN     the strata binary [target/release/strata]
#
# Each answer's status, series count and Strata-Tiers header (which tiers answered) are printed
# beside its time.
#
# Prints Markdown tables for docs/benchmarks.md: load, bytes per tier, queries.
set -euo pipefail
source "$(dirname "$0")/common.sh"

DAYS=${DAYS:-730} SITES=${SITES:-10} PER_SITE=${PER_SITE:-20}
RAW_RETENTION=${RAW_RETENTION:-7d} WARM_RETENTION=${WARM_RETENTION:-90d}
CHUNK_DAYS=${CHUNK_DAYS:-2} CONNS=${CONNS:-2} REPEAT=${REPEAT:-5} RAW_SERIES=${RAW_SERIES:-50} VM=${VM:-on}
PY="python3 $BENCH_DIR/twoyear.py"
need_strata
[ "$VM" != on ] || command -v victoria-metrics >/dev/null || die "victoria-metrics not installed (apt-get install victoria-metrics), or run with VM=off"

if [ -n "${WORK:-}" ]; then mkdir -p "$WORK"; else WORK=$(mktemp -d); fi
cleanup() { stop_started; [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"; }
# Everything but the workload is made fresh.
rm -rf "$WORK"/strata "$WORK"/raw1y "$WORK"/vm "$WORK"/*-answers "$WORK"/lp1y
trap cleanup EXIT
note "work dir $WORK"
ROLLUPS=on describe_build

# --- The workload: gzip'd line protocol, a file per CHUNK_DAYS of every series, two generators at once (kept in
# WORK/lp and reused by a later run with the same WORK and settings, ending when it was made). ---
stamp="days=$DAYS sites=$SITES per_site=$PER_SITE chunk_days=$CHUNK_DAYS v2"
if [ -f "$WORK/lp/.done" ] && [ "$(cat "$WORK/lp/.done")" = "$stamp" ]; then
  note "reusing the workload in $WORK/lp"
else
  rm -rf "$WORK/lp"
  END_S=$(date +%s)
  gen_started=$(now_s)
  for part in 0 1; do
    $PY gen --out "$WORK/lp" --end "$END_S" --days "$DAYS" --sites "$SITES" --per-site "$PER_SITE" \
      --chunk-days "$CHUNK_DAYS" --parts 2 --part "$part" >"$WORK/gen-$part.txt" &
  done
  wait
  note "generated in $(elapsed "$gen_started") s"
  echo "$stamp" >"$WORK/lp/.done"
fi
SERIES=$(kv "$(cat "$WORK/gen-0.txt")" series)
SAMPLES=$(( $(kv "$(cat "$WORK/gen-0.txt")" samples) + $(kv "$(cat "$WORK/gen-1.txt")" samples) ))
LP_BYTES=$(( $(kv "$(cat "$WORK/gen-0.txt")" bytes) + $(kv "$(cat "$WORK/gen-1.txt")" bytes) ))
END_S=$(kv "$(cat "$WORK/gen-0.txt")" end)
note "workload: $SERIES series, $SAMPLES samples ($LP_BYTES gzip'd bytes), ending at $END_S"
YEARS=$(python3 -c "print($DAYS / 365)")

# post_all URL DIR OUT: POSTs every gzip'd file of DIR to URL, CONNS at a time, each answer in
# OUT/<file>.json; dies naming a file whose request failed.
post_all() {
  local url=$1 dir=$2 out=$3
  mkdir -p "$out"
  find "$dir" -name '*.lp.gz' -print0 | sort -z | xargs -0 -P "$CONNS" -I{} sh -c '
    f=$1; out=$2/$(basename "$f").json
    code=$(curl -sS -o "$out" -w "%{http_code}" --max-time 3600 -XPOST -H "Content-Type: text/plain" \
      -H "Content-Encoding: gzip" --data-binary @"$f" "$3") || { echo "POST $f failed" >&2; exit 255; }
    case $code in 2*) ;; *) echo "POST $f: HTTP $code: $(head -c 400 "$out")" >&2; exit 255 ;; esac
  ' _ {} "$out" "$url" || die "loading $dir into $url failed"
}

# sum_json DIR KEY...: the sums of numeric keys (a.b for nested) over DIR's JSON answers.
sum_json() {
  python3 - "$@" <<'EOF'
import json, os, sys
d, keys = sys.argv[1], sys.argv[2:]
tot = {k: 0 for k in keys}
for f in os.listdir(d):
    v = json.load(open(os.path.join(d, f)))
    for k in keys:
        x = v
        for p in k.split("."):
            x = x.get(p, 0) if isinstance(x, dict) else 0
        tot[k] += x
print(" ".join(f"{k}={tot[k]}" for k in keys))
EOF
}

bytes_of() { local n=0 p; for p in "$@"; do [ -e "$p" ] && n=$((n + $(du -sb "$p" | cut -f1))); done; echo "$n"; }
per() { python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print(f'{a / b:,.1f}' if b else 'n/a')" "$1" "$2"; }

# --- Strata: backfill. ---
cfg=$WORK/strata.toml
ROLLUPS=on CACHE=on write_config "$cfg" \
  "retention = \"$RAW_RETENTION\"" \
  '[rollups]' "retention = \"$WARM_RETENTION\"" 'quantile_metrics = ["vibration_mm_s"]' \
  '[cold]' 'interval = "1m"'
port=$(free_port); base=http://127.0.0.1:$port
start_strata "$WORK/strata" "$port" "$cfg" "$WORK/strata.log"
wait_http "$base/health" 60
t0=$(now_s)
post_all "$base/api/v1/admin/backfill?precision=s" "$WORK/lp" "$WORK/strata-answers"
load_s=$(elapsed "$t0")
t1=$(now_s); flush "$base"; flush_s=$(elapsed "$t1")
# Timed archiver passes (every minute) compact the cold tier's small files: wait until the file
# count settles (at most 10 minutes) before measuring.
files=-1 settled=0
for _ in $(seq 1 60); do
  now_files=$(metric "$base" strata_cold_files)
  [ "$now_files" = "$files" ] && settled=$((settled + 1)) || settled=0
  [ "$settled" -ge 7 ] && break
  files=$now_files; sleep 10
done
cold_files=$(metric "$base" strata_cold_files)
answers=$(sum_json "$WORK/strata-answers" samples raw windows hours cold_raw hours_written windows_written refused.too_old)
note "strata backfill: $answers in $load_s s, flush $flush_s s"
loaded=$(kv "$answers" samples)
[ "$loaded" = "$SAMPLES" ] || die "strata took $loaded samples of $SAMPLES"
d=$WORK/strata
raw_b=$(bytes_of "$d"/shards/*/tsdb)
warm_b=$(bytes_of "$d"/shards/*/rollups/warm)
hour_b=$(( $(bytes_of "$d"/shards/*/rollups/1h) - $(bytes_of "$d"/shards/*/rollups/1h/1d) ))
day_b=$(bytes_of "$d"/shards/*/rollups/1h/1d)
log_b=$(bytes_of "$d/log")
cold_1h_b=$(bytes_of "$d"/cold/tenant=*/tier=1h)
cold_raw_b=$(bytes_of "$d"/cold/tenant=*/tier=raw)
cold_hours=$(metric "$base" strata_cold_hours_archived_total)
cold_raw_rows=$(metric "$base" strata_cold_raw_samples_archived_total)
note "strata bytes: raw $raw_b, warm $warm_b, 1h $hour_b, 1d $day_b, cold 1h $cold_1h_b ($cold_hours hours), cold raw $cold_raw_b, $cold_files cold files"
cold_raw_years=$(python3 -c "print(max($DAYS - ${RAW_RETENTION%d}, 0) / 365)")

# --- Queries (run against any Prometheus-compatible base URL). ---
Q2Y_START=$((END_S - DAYS * 86400)) Q90_START=$((END_S - 90 * 86400)) Q24_START=$((END_S - 86400))
QUERIES=(
  "2y|$Q2Y_START|86400|avg_over_time(temperature_celsius[1d])"
  "2y|$Q2Y_START|86400|max by (site) (max_over_time(temperature_celsius[1d]))"
  "2y|$Q2Y_START|86400|sum(rate(energy_wh_total[1d]))"
  "2y|$Q2Y_START|86400|quantile_over_time(0.99, vibration_mm_s[1d])"
  "90d|$Q90_START|3600|avg_over_time(temperature_celsius[1h])"
  "90d|$Q90_START|3600|max by (site) (max_over_time(temperature_celsius[1h]))"
  "90d|$Q90_START|3600|sum(rate(energy_wh_total[1h]))"
  "90d|$Q90_START|3600|quantile_over_time(0.99, vibration_mm_s[1h])"
)
Q24="avg by (site) (avg_over_time(temperature_celsius[15m]))"
# run_queries NAME BASE: one line per query: span|query|median|status|series|tiers, into $WORK/q-NAME.
run_queries() {
  local name=$1 url=$2 q span start step expr r
  : >"$WORK/q-$name"
  for q in "${QUERIES[@]}"; do
    IFS='|' read -r span start step expr <<<"$q"
    # Start and end on multiples of the step, as Grafana sends a dashboard's range.
    r=$($PY query --url "$url" --query "$expr" --start "$((start / step * step))" --end "$((END_S / step * step))" --step "$step" --repeat "$REPEAT" --param nocache=1)
    echo "$span|$expr|$(kv "$r" median_ms)|$(kv "$r" status)|$(kv "$r" series)|$(kv "$r" tiers)" >>"$WORK/q-$name"
  done
  for cache in on off; do
    local extra=()
    [ $cache = off ] && extra=(--param nocache=1)
    # One run fills the cache; the repeats are what a refreshed dashboard costs.
    $PY query --url "$url" --query "$Q24" --start "$Q24_START" --end "$END_S" --step 300 --repeat 1 "${extra[@]}" >/dev/null
    r=$($PY query --url "$url" --query "$Q24" --start "$Q24_START" --end "$END_S" --step 300 --repeat "$REPEAT" "${extra[@]}")
    echo "24h cache $cache|$Q24|$(kv "$r" median_ms)|$(kv "$r" status)|$(kv "$r" series)|$(kv "$r" tiers)" >>"$WORK/q-$name"
  done
}
run_queries strata "$base"
note "strata queries:"; sed 's/^/#   /' "$WORK/q-strata" >&2
stop_pid "$STRATA_PID"

# --- The raw tier's own bytes per series-year: one year of RAW_SERIES series, raw only. ---
raw1y_b=0
if [ "$RAW_SERIES" -gt 0 ]; then
  $PY gen --out "$WORK/lp1y" --end "$END_S" --days 365 --sites "$SITES" --per-site "$PER_SITE" --chunk-days 30 --max-series "$RAW_SERIES" >"$WORK/gen-1y.txt"
  write_config "$WORK/raw.toml" 'retention = "400d"' '[cold]' 'enabled = false'
  port=$(free_port); rbase=http://127.0.0.1:$port
  start_strata "$WORK/raw1y" "$port" "$WORK/raw.toml" "$WORK/raw1y.log"
  wait_http "$rbase/health" 60
  post_all "$rbase/write?precision=s" "$WORK/lp1y" "$WORK/raw1y-answers"
  flush "$rbase"
  raw1y_b=$(bytes_of "$WORK"/raw1y/shards/*/tsdb)
  raw1y_samples=$(kv "$(cat "$WORK/gen-1y.txt")" samples)
  stop_pid "$STRATA_PID"
fi

# --- VictoriaMetrics on the same data. ---
vm_load_s=n/a vm_b=0
if [ "$VM" = on ]; then
  port=$(free_port); vbase=http://127.0.0.1:$port
  victoria-metrics -storageDataPath="$WORK/vm" -httpListenAddr="127.0.0.1:$port" -retentionPeriod=3y \
    -influxSkipSingleField -loggerLevel=ERROR >"$WORK/vm.log" 2>&1 &
  VM_PID=$!; STARTED_PIDS+=("$VM_PID")
  wait_http "$vbase/health" 60
  t0=$(now_s)
  post_all "$vbase/write?precision=s" "$WORK/lp" "$WORK/vm-answers"
  curl -fs "$vbase/internal/force_flush" >/dev/null || die "VictoriaMetrics force_flush failed"
  vm_load_s=$(elapsed "$t0")
  note "VictoriaMetrics loaded in $vm_load_s s"
  sleep 10
  run_queries vm "$vbase"
  vm_b=$(bytes_of "$WORK/vm")
  stop_pid "$VM_PID"
fi

# --- The tables. ---
echo
echo "Two-year workload: $SERIES series, $SAMPLES samples at 5 min over $DAYS days; Strata with"
echo "retention $RAW_RETENTION and rollups.retention $WARM_RETENTION (quantile sketch on vibration_mm_s)."
echo
echo "| load | seconds | samples/s |"
echo "|---|---:|---:|"
echo "| Strata backfill ($CONNS connections, gzip'd line protocol, acknowledged durable) | $load_s | $(per "$SAMPLES" "$load_s") |"
echo "| Strata flush afterwards (cold tier brought up to date) | $flush_s | |"
[ "$VM" != on ] || echo "| VictoriaMetrics /write, same files, then force_flush | $vm_load_s | $(per "$SAMPLES" "$vm_load_s") |"
echo
echo "Strata's answers summed: $answers"
echo
echo "| on disk | bytes | per series-year |"
echo "|---|---:|---:|"
echo "| Strata raw tier (last $RAW_RETENTION) | $raw_b | |"
echo "| Strata ingest log | $log_b | |"
echo "| Strata warm tier, 1-minute windows (last $WARM_RETENTION) | $warm_b | |"
echo "| Strata 1-hour tier ($DAYS days) | $hour_b | $(per "$hour_b" "$(python3 -c "print($SERIES * $YEARS)")") |"
echo "| Strata 1-day tier ($DAYS days) | $day_b | $(per "$day_b" "$(python3 -c "print($SERIES * $YEARS)")") |"
echo "| Strata cold tier, 1-hour windows ($cold_hours hours archived: $(per "$cold_1h_b" "$cold_hours") bytes per window) | $cold_1h_b | $(per "$cold_1h_b" "$(python3 -c "print($SERIES * $YEARS)")") |"
echo "| Strata cold tier: $cold_files files after compaction | | |"
echo "| Strata cold tier, raw rows ($cold_raw_rows samples: $(per "$cold_raw_b" "$cold_raw_rows") bytes per sample) | $cold_raw_b | $(per "$cold_raw_b" "$(python3 -c "print($SERIES * $cold_raw_years)")") |"
[ "$RAW_SERIES" -le 0 ] || echo "| Strata raw tier, one year of $RAW_SERIES series loaded raw ($raw1y_samples samples: $(per "$raw1y_b" "$raw1y_samples") bytes per sample) | $raw1y_b | $(per "$raw1y_b" "$RAW_SERIES") |"
[ "$VM" != on ] || echo "| VictoriaMetrics, everything ($DAYS days, not merged) | $vm_b | $(per "$vm_b" "$(python3 -c "print($SERIES * $YEARS)")") |"
if [ "$RAW_SERIES" -gt 0 ]; then
  echo
  echo "1-hour tier per series-year vs the raw tier's: $(python3 -c "h = $hour_b / ($SERIES * $YEARS); r = $raw1y_b / $RAW_SERIES; print(f'{100 * h / r:.2f}%')") (raw measured by loading one series-year into a raw-only Strata); vs the cold raw archive: $(python3 -c "h = $hour_b / ($SERIES * $YEARS); c = $cold_raw_b / ($SERIES * $cold_raw_years) if $cold_raw_years else 0; print(f'{100 * h / c:.2f}%' if c else 'n/a')")"
fi
echo
echo "Queries: median of $REPEAT runs, ms (nocache=1 except the cached 24-hour line); status, series and the tiers that answered."
echo
echo "| span, step | query | Strata ms | Strata answer | VictoriaMetrics ms | VM answer |"
echo "|---|---|---:|---|---:|---|"
i=0
while IFS='|' read -r span expr ms status series tiers; do
  i=$((i + 1))
  vline=$([ -f "$WORK/q-vm" ] && sed -n "${i}p" "$WORK/q-vm" || echo "|||||")
  IFS='|' read -r _ _ vms vstatus vseries _ <<<"$vline"
  step=$([ "$span" = 2y ] && echo 1d || { [ "$span" = 90d ] && echo 1h || echo 5m; })
  echo "| $span, $step | \`$expr\` | $ms | $status, $series series, tiers $tiers | ${vms:-n/a} | ${vstatus:-n/a}, ${vseries:-0} series |"
done <"$WORK/q-strata"
