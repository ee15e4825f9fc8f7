#!/usr/bin/env bash
# Restart after SIGKILL with a full log: blasts POINTS x 2000 series of remote write (rollups
# off, one partition on two cores), SIGKILLs the server the moment the blast ends (nothing
# flushed on purpose), restarts it and times process start to `/health` answering; then checks
# that every sample is back. CKPT is storage.checkpoint_log_bytes (0: flush by time only).
#   cargo build --release -p strata-server
#   POINTS=6600 bench/restart.sh                 # a log just under the 256 MiB default
#   POINTS=14000 CKPT=0 bench/restart.sh         # by time only: the whole 560 MB replayed
# TSBENCH: a built tsbench (default: ../shared/bench/tsbench beside the checkout, SHARED to
# point elsewhere, built in debug into /tmp: it blasts at 1.5 M samples/s or more, enough, the
# figure measured is the restart).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:-$here/../target/release/strata}
POINTS=${POINTS:-6600} CKPT=${CKPT:-268435456}
if [ -z "${TSBENCH:-}" ]; then
  (cd "${SHARED:-$here/../../shared}/bench/tsbench" && CARGO_TARGET_DIR=/tmp/tsbench-debug cargo build -q)
  TSBENCH=/tmp/tsbench-debug/debug/tsbench
fi
work=$(mktemp -d)
trap 'kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
printf '[rollups]\nenabled = false\n[storage]\ncheckpoint_log_bytes = %s\n' "$CKPT" >"$work/cfg.toml"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port
start() {
  "$BIN" serve --data-dir "$work/data" --listen "127.0.0.1:$port" --retention 100y \
    --config "$work/cfg.toml" >>"$work/log.txt" 2>&1 &
  pid=$!
  until curl -fs "$base/health" >/dev/null 2>&1; do sleep 0.02; done
}
start
"$TSBENCH" blast --url "$base/api/v1/write" --format rw --series 2000 --points "$POINTS" \
  --conns 2 --end-ms 1763596800000 2>>"$work/log.txt" | tail -1
curl -fs "$base/metrics" | grep -E '^strata_(flushes_total|log_appended_bytes_total|log_disk_bytes) '
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
t0=$(date +%s.%N)
start
echo "restart_to_health_s=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.2f}')")"
grep -E 'replayed ingest log|flushed the head' "$work/log.txt" | sed 's/\x1b\[[0-9;]*m//g' | tail -3
curl -fs "$base/api/v1/query" --data-urlencode 'query=sum(count_over_time({__name__=~".+"}[2y]))' \
  --data-urlencode time=1763596807 | sed -n 's/.*"value":\[[0-9.]*,"\([0-9]*\)"\].*/samples_back=\1/p'
echo
