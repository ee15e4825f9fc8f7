#!/usr/bin/env bash
# The range query result cache (issue 15): a 24-hour dashboard query repeated as a dashboard
# refreshes it (start = now - 24h, end = now, step 1m), through the cache and with nocache=1.
# The workload is tsbench's (SERIES x POINTS at 15 s, ending now, so the last 10 minutes are
# fresh and recomputed on every refresh, as on a live dashboard: every cached refresh is a
# partial hit, the range moving forward a step each minute).
#
#   cargo build --release -p strata-server && bench/cache.sh
#
# Environment: SERIES=2000 POINTS=5760 REPEAT=10, STRATA_BIN, OUT (folder for results).
# Prints, per query, the median seconds of the uncached and the cached refreshes and what the
# Strata-Cache header said.
source "$(dirname "$0")/common.sh"
SERIES=${SERIES:-2000} POINTS=${POINTS:-5760} REPEAT=${REPEAT:-10}
CACHE=on  # write_config turns the result cache off for every other bench
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
trap 'stop_started' EXIT
need_strata
need_tsbench
describe_build | tee "$OUT/summary.txt"
dir=$(mktemp -d) port=$(free_port) base=http://127.0.0.1:$port
write_config "$dir.toml" "$(series_limits "$SERIES")"
start_strata "$dir" "$port" "$dir.toml" "$OUT/strata.log"
wait_http "$base/health"
end_ms=$(( $(date +%s) / 60 * 60000 ))
note "$(blast --url "$base/api/v1/write" --format rw --series "$SERIES" --points "$POINTS" --conns 2 --end-ms "$end_ms")"
flush "$base"

# refresh QUERY NOCACHE: one dashboard refresh, its range aligned to the step as Grafana aligns
# it; prints "seconds outcome".
refresh() {
  local now start extra=() h
  now=$(( $(date +%s) / 60 * 60 ))
  start=$(( now - 86400 ))
  [ "$2" = 1 ] && extra=(--data-urlencode nocache=1)
  h=$(curl -fs -o /dev/null -D - -w 'time=%{time_total}\n' "$base/api/v1/query_range" \
    --data-urlencode "query=$1" --data-urlencode "start=$start" --data-urlencode "end=$now" \
    --data-urlencode step=60 "${extra[@]}") || die "query $1 failed"
  echo "$(sed -n 's/^time=//p' <<<"$h") $(tr -d '\r' <<<"$h" | sed -n 's/^strata-cache: //Ip')"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

printf '%-44s %12s %12s %8s %s\n' query uncached_s cached_s speedup outcomes | tee -a "$OUT/summary.txt"
for q in 'sum by (site) (rate(packets_total[5m]))' 'avg by (region) (humidity_percent)' \
         'max_over_time(temperature_celsius[10m])'; do
  uncached=$(for _ in $(seq "$REPEAT"); do refresh "$q" 1 | cut -d' ' -f1; done | median)
  first=$(refresh "$q" 0)
  cached=() outcomes=()
  for _ in $(seq "$REPEAT"); do
    sleep 2  # the dashboard's range moves forward a step each minute
    r=$(refresh "$q" 0); cached+=("${r%% *}"); outcomes+=("${r##* }")
  done
  c=$(printf '%s\n' "${cached[@]}" | median)
  printf '%-44s %12s %12s %8s %s\n' "$q" "$uncached" "$c" "$(python3 -c "print(f'{$uncached/$c:.1f}x')")" \
    "first:${first##* } then:$(printf '%s\n' "${outcomes[@]}" | sort | uniq -c | awk '{printf "%s%sx%s", s, $2, $1; s=","}')" \
    | tee -a "$OUT/summary.txt"
done
note "cache bytes: $(metric "$base" strata_query_cache_bytes), entries: $(metric "$base" strata_query_cache_entries)"
rm -rf "$dir" "$dir.toml"
