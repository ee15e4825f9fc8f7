# Shared by the bench/*.sh scripts of issue 14 (memory, churn, restart, startup, flush latency):
# sourced, not run. Finds the binaries, starts and stops servers on loopback and reads their
# memory and self-metrics. Every failure stops the script with a message naming what failed.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
STRATA_BIN=${STRATA_BIN:-$REPO_DIR/target/release/strata}
# The CEO's load generator, built outside shared/ (read-only) as peers.sh builds it.
SHARED_BENCH=${SHARED_BENCH:-$(for d in "$REPO_DIR/../shared/bench" "$REPO_DIR/../../shared/bench" /work/shared/bench; do [ -x "$d/peers.sh" ] && { echo "$d"; break; }; done)}
TSBENCH_TARGET=${TSBENCH_TARGET:-${TMPDIR:-/tmp}/tsbench-target}
TSBENCH=$TSBENCH_TARGET/release/tsbench

die() { echo "$(basename "$0"): error: $*" >&2; exit 1; }
note() { echo "# $*" >&2; }

need_strata() {
  [ -x "$STRATA_BIN" ] || die "no strata binary at $STRATA_BIN: run 'cargo build --release -p strata-server' (or set STRATA_BIN)"
}

need_tsbench() {
  [ -n "$SHARED_BENCH" ] || die "shared/bench (peers.sh, tsbench) not found beside the repository; set SHARED_BENCH"
  (cd "$SHARED_BENCH/tsbench" && CARGO_TARGET_DIR=$TSBENCH_TARGET cargo build --release -q) \
    || die "building tsbench from $SHARED_BENCH/tsbench failed"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Seconds since the epoch, with nanoseconds.
now_s() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$(now_s) - $1:.3f}')"; }

# wait_http URL SECONDS: polls every 20 ms until URL answers 2xx; dies naming URL otherwise.
wait_http() {
  local url=$1 limit=${2:-60} start
  start=$(date +%s)
  until curl -fs -o /dev/null --max-time 5 "$url"; do
    [ $(( $(date +%s) - start )) -lt "$limit" ] || die "no answer from $url within ${limit}s"
    sleep 0.02
  done
}

# metric BASE NAME: the sum of a self-metric's samples (all label sets) from BASE/metrics.
metric() {
  curl -fs --max-time 60 "$1/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 {s += $NF} END {printf "%.0f", s}'
}

flush() { curl -fs --max-time 600 -X POST -o /dev/null "$1/api/v1/admin/flush" || die "POST $1/api/v1/admin/flush failed"; }

# PIDs this script started, stopped (by id) on exit.
STARTED_PIDS=()
stop_started() {
  local p
  for p in "${STARTED_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${STARTED_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  STARTED_PIDS=()
}

# start_strata DATA_DIR PORT CONFIG LOG: starts `strata serve` in the background and sets
# STRATA_PID (without waiting for it to answer).
start_strata() {
  RUST_LOG=${RUST_LOG:-info} NO_COLOR=1 "$STRATA_BIN" serve --data-dir "$1" --listen "127.0.0.1:$2" --config "$3" >>"$4" 2>&1 &
  STRATA_PID=$!
  STARTED_PIDS+=("$STRATA_PID")
}

# timed_start DATA_DIR PORT CONFIG LOG STOP [--query NAME PROMQL TIME EXPECTED]...: starts strata
# under bench/timed_start.py, which times /health and the queries, reads its memory and stops
# it (STOP: kill or term); prints its key=value line.
timed_start() {
  local dir=$1 port=$2 config=$3 log=$4 stop=$5; shift 5
  python3 "$BENCH_DIR/timed_start.py" --url "http://127.0.0.1:$port" --log "$log" --stop "$stop" "$@" -- \
    env RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1 "$STRATA_BIN" serve --data-dir "$dir" --listen "127.0.0.1:$port" --config "$config" \
    || die "timed start of strata failed (see $log)"
}

# kv LINE KEY: the value of KEY in a line of key=value pairs.
kv() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }

# stop_pid PID [SIGNAL]: signals one started process and waits for it.
stop_pid() {
  kill "-${2:-TERM}" "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local keep=() p
  for p in "${STARTED_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  STARTED_PIDS=("${keep[@]+"${keep[@]}"}")
}

# write_config FILE [TOML lines...]: a strata configuration (top-level keys first, then
# sections, since [rollups] and [query] are appended last); ROLLUPS=on keeps the default rollups
# (the peers keep none, so every bench turns them off unless asked, as bench/strata-bench.toml),
# CACHE=on the query result cache.
write_config() {
  local file=$1; shift
  {
    printf '# written by %s\n' "$(basename "$0")"
    local line
    for line in "$@"; do printf '%s\n' "$line"; done
    [ "${ROLLUPS:-off}" = on ] || printf '[rollups]\nenabled = false\n'
    # Queries are measured evaluated, not answered from the result cache (CACHE=on keeps it).
    [ "${CACHE:-off}" = on ] || printf '[query]\ncache_bytes = 0\n'
  } >"$file"
}

# What the run was: for the summary, so that figures say which build and config made them.
describe_build() {
  local rev
  rev=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)
  echo "# repo $rev, $STRATA_BIN built $(date -u -r "$STRATA_BIN" +%Y-%m-%dT%H:%MZ); $(nproc) cores; run $(date -u +%Y-%m-%dT%H:%MZ); rollups ${ROLLUPS:-off}"
}

# strata_default KEY: the default value of a configuration key, as `strata config` prints it.
strata_default() { "$STRATA_BIN" config | awk -v k="$1" '$1 == k && $2 == "=" {gsub(/"/, "", $3); print $3; exit}'; }

# series_limits N [PER_METRIC]: [limits] lines that let N series in, PER_METRIC of them (default
# N) under one metric name, raising only the caps below that, among the caps this binary has
# (max_series_per_tenant and max_series_total are newer than main).
series_limits() {
  local n=$1 per=${2:-$1} key d want out=()
  for key in max_series_per_metric max_series_per_tenant max_series_total; do
    d=$(strata_default "$key")
    [ -n "$d" ] || continue
    want=$n; [ "$key" != max_series_per_metric ] || want=$per
    [ "$d" -ge "$want" ] || out+=("$key = $want")
  done
  [ ${#out[@]} -eq 0 ] || { echo "[limits]"; printf '%s\n' "${out[@]}"; }
}

# blast ARGS...: tsbench blast (ingest), dying unless every request was acknowledged.
blast() {
  local out
  out=$("$TSBENCH" blast "$@" 2>/dev/null) || die "tsbench blast $* failed"
  case $out in *" errors=0"*) echo "$out" ;; *) die "tsbench blast refused writes: $out" ;; esac
}
