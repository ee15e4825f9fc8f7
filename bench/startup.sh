#!/usr/bin/env bash
# Startup time with many blocks (issue 14: "startup time with 100 blocks of 100,000 series").
# Builds a data directory of BLOCKS raw blocks of the same SERIES series (tsbench's labels,
# SAMPLES samples each per block): one round per block, each round's samples a compaction
# window (12 blocks' spans) later than the last, so no two blocks merge, a flush after each.
# Then stops the server (SIGTERM), and REPEAT times: starts it, times /health and the first
# query (the newest block's series; seconds since the start), then a query over every block
# (its own milliseconds), and reads its resident memory.
#
#   cargo build --release -p strata-server && bench/startup.sh
#
# Environment:
#   BLOCKS=100 SERIES=100000 SAMPLES=2 BLOCK_DURATION_H=2 REPEAT=3
#   DATA      keep the built data directory here and reuse it on the next run with the same sizes
#   ROLLUPS=off  on: keep the default rollups
#   OUT       folder for results (default: a temporary folder)
# Configuration: the defaults, except storage.block_duration, retention 100y (the blocks span
# BLOCKS compaction windows into the past) and rollups off.
source "$(dirname "$0")/common.sh"
BLOCKS=${BLOCKS:-100} SERIES=${SERIES:-100000} SAMPLES=${SAMPLES:-2} BLOCK_DURATION_H=${BLOCK_DURATION_H:-2}
REPEAT=${REPEAT:-3}
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
need_strata
[ "$SERIES" -ge 8 ] || die "SERIES must be at least 8 (tsbench spreads series over 8 metrics)"
bd_ms=$(( BLOCK_DURATION_H * 3600000 ))
window_ms=$(( 12 * bd_ms ))   # strata-tsdb's COMPACT_FACTOR: blocks in one such window merge
[ $(( (SAMPLES - 1) * 15000 )) -lt $(( bd_ms / 2 )) ] || die "SAMPLES x 15 s must fit in half a block"
params="BLOCKS=$BLOCKS SERIES=$SERIES SAMPLES=$SAMPLES BLOCK_DURATION_H=$BLOCK_DURATION_H"
if [ -n "${DATA:-}" ]; then dir=$DATA; keep=1; else dir=$(mktemp -d); keep=0; fi
trap 'stop_started; [ "$keep" = 1 ] || rm -rf "$dir"' EXIT
p=$(free_port); base=http://127.0.0.1:$p
mapfile -t limits < <(series_limits "$SERIES" $(( (SERIES + 7) / 8 )))
write_config "$OUT/strata.toml" 'retention = "100y"' "[storage]" "block_duration = \"${BLOCK_DURATION_H}h\"" \
  "${limits[@]+"${limits[@]}"}"
now=$(date +%s%3N)
if [ -f "$dir/.startup-bench" ] && [ "$(head -1 "$dir/.startup-bench")" = "$params" ]; then
  t0_ms=$(sed -n 2p "$dir/.startup-bench")
  note "reusing the data directory $dir ($params)"
else
  need_tsbench
  [ ! -e "$dir" ] || [ -z "$(ls -A "$dir")" ] || die "DATA=$dir exists and was not built by startup.sh with $params"
  mkdir -p "$dir"
  # The first round's window; the last round ends at least a window before now.
  t0_ms=$(( (now - (BLOCKS + 1) * window_ms) / window_ms * window_ms ))
  note "building $BLOCKS blocks of $SERIES series in $dir"
  b0=$(now_s)
  start_strata "$dir" "$p" "$OUT/strata.toml" "$OUT/build.log"
  wait_http "$base/health"
  for r in $(seq 0 $(( BLOCKS - 1 ))); do
    end=$(( t0_ms + r * window_ms + bd_ms / 2 ))
    blast --url "$base/api/v1/write" --format rw --series "$SERIES" --points "$SAMPLES" --conns 2 --end-ms "$end" >/dev/null
    flush "$base"
    [ $(( (r + 1) % 10 )) != 0 ] || note "round $((r + 1))/$BLOCKS, $(elapsed "$b0") s"
  done
  blocks=$(metric "$base" strata_tsdb_blocks)
  stop_pid "$STRATA_PID"
  [ "$blocks" = "$BLOCKS" ] || die "built $blocks blocks instead of $BLOCKS (did compaction merge them? see COMPACT_FACTOR)"
  printf '%s\n%s\n' "$params" "$t0_ms" >"$dir/.startup-bench"
  note "built in $(elapsed "$b0") s"
fi
last=$(( (t0_ms + (BLOCKS - 1) * window_ms + bd_ms / 2) / 1000 + 7 ))
span=$(( BLOCKS * window_ms / 1000 + 3600 ))
per_metric=$(( (SERIES + 4) / 8 ))   # tsbench's series i is metric i % 8; power_watts is 3
q_first='count(power_watts)'
q_all="count(count_over_time(power_watts[${span}s]))"
{
  describe_build
  echo "# $params: $(du -sh "$dir" | cut -f1) on disk; config: defaults + retention 100y, block_duration ${BLOCK_DURATION_H}h"
  printf '%-4s %9s %14s %17s %13s %16s %7s\n' run health_s first_query_s all_blocks_query_ms rss_health_MB rss_after_all_MB hwm_MB
} | tee "$OUT/summary.txt"
for i in $(seq 1 "$REPEAT"); do
  r=$(timed_start "$dir" "$p" "$OUT/strata.toml" "$OUT/start-$i.log" term \
    --query first "$q_first" "$last" "$per_metric" --query all_blocks "$q_all" "$last" "$per_metric")
  printf '%-4s %9s %14s %17s %13s %16s %7s\n' "$i" "$(kv "$r" health_s)" "$(kv "$r" first_s)" \
    "$(kv "$r" all_blocks_ms)" "$(kv "$r" rss_health_MB)" "$(kv "$r" rss_MB)" "$(kv "$r" hwm_MB)" | tee -a "$OUT/summary.txt"
done
echo "results in $OUT"
