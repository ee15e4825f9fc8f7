#!/usr/bin/env bash
# Restart time after SIGKILL with a full log (issue 14: "restart time after SIGKILL with a
# full log (target: under 5 s)"). Starts strata, blasts the tsbench workload (remote write) with
# no flush, SIGKILLs it, then restarts it REPEAT times (SIGKILL after each): the time until
# /health answers (the log is replayed before the server listens) and until a query over
# everything, sum(count_over_time(...)), returns every sample blasted.
#
#   cargo build --release -p strata-server && bench/restart.sh
#
# Environment:
#   SERIES=2000 POINTS=5760 CONNS=2   the workload (default: peers.sh's, 11.52 M samples, about
#                                     235 MB of log at about 20 bytes a sample, under the default
#                                     checkpoint_log_bytes of 256 MiB; POINTS=6400 comes closer)
#   REPEAT=3                          restarts of the same log
#   ROLLUPS=off                       on: keep the default rollups (they replay too)
#   OUT                               folder for results (default: a temporary folder)
# Configuration: the defaults, except retention 100y (the workload's timestamps are a year old)
# and rollups off. "Full log" is whatever the default storage.checkpoint_log_bytes (and the
# 15 min flush_interval) let accumulate: the workload stays below it, and the summary shows the
# log bytes and whether any flush happened before the kill (blocks_before_kill).
source "$(dirname "$0")/common.sh"
SERIES=${SERIES:-2000} POINTS=${POINTS:-5760} CONNS=${CONNS:-2} REPEAT=${REPEAT:-3}
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
END_MS=1763596800000
need_strata
need_tsbench
dir=$(mktemp -d) p=$(free_port); base=http://127.0.0.1:$p
trap 'stop_started; rm -rf "$dir"' EXIT
write_config "$OUT/strata.toml" 'retention = "100y"'
ckpt=$(strata_default checkpoint_log_bytes); ckpt=${ckpt:-none}
expected=$((SERIES * POINTS))
# Every sample: the range reaches past the first one, the time past the last (as peers.sh does).
q="sum(count_over_time({__name__=~\".+\"}[$(( POINTS * 15 + 60 ))s]))"
qtime=$(( END_MS / 1000 + 7 ))

start_strata "$dir" "$p" "$OUT/strata.toml" "$OUT/strata.log"
wait_http "$base/health"
b=$(blast --url "$base/api/v1/write" --format rw --series "$SERIES" --points "$POINTS" --conns "$CONNS" --end-ms "$END_MS")
note "blast: $b"
blocks=$(metric "$base" strata_tsdb_blocks)
stop_pid "$STRATA_PID" KILL
[ "$(du -sb "$dir/log" | cut -f1)" -gt 0 ] || die "the log was empty at the kill"

{
  describe_build
  echo "# SERIES=$SERIES POINTS=$POINTS samples=$expected; config: defaults + retention 100y; storage.checkpoint_log_bytes default: $ckpt"
  printf '%-4s %12s %17s %9s %9s %12s %8s\n' run log_bytes blocks_before_kill replay_s health_s full_count_s rss_MB
} | tee "$OUT/summary.txt"
for i in $(seq 1 "$REPEAT"); do
  now_log=$(du -sb "$dir/log" | cut -f1)
  : >"$OUT/restart-$i.log"
  r=$(timed_start "$dir" "$p" "$OUT/strata.toml" "$OUT/restart-$i.log" kill --query full_count "$q" "$qtime" "$expected")
  # The shards log how long their replay took; with several partitions the slowest counts.
  replay_s=$(sed 's/\x1b\[[0-9;]*m//g' "$OUT/restart-$i.log" | grep 'replayed ingest log' \
    | sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' | sort -g | tail -1 | xargs -r printf '%.3f')
  printf '%-4s %12s %17s %9s %9s %12s %8s\n' "$i" "$now_log" "$blocks" "${replay_s:-?}" "$(kv "$r" health_s)" \
    "$(kv "$r" full_count_s)" "$(kv "$r" rss_MB)" | tee -a "$OUT/summary.txt"
done
[ "$blocks" = 0 ] || note "the server flushed before the kill ($blocks blocks; checkpoint_log_bytes $ckpt): the log held only what came after; a smaller workload (POINTS) keeps the whole blast in the log"
echo "results in $OUT"
