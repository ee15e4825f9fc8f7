#!/usr/bin/env bash
# Peak resident memory of Strata beside VictoriaMetrics, same workload, same run (issue 14:
# "Peak memory at 500,000 and 2,000,000 series", target: no more than VictoriaMetrics').
# Runs ../shared/bench/peers.sh once per size (it reports VmHWM as peak_MB, read after the blast
# and the query suite, before the server stops) and collects its summary lines.
#
#   cargo build --release -p strata-server && bench/memory.sh
#
# Environment (defaults are the issue's sizes):
#   SIZES="500000 2000000"  series counts, one peers.sh run each
#   POINTS=12               samples per series (15 s apart)
#   TARGETS="strata vm"     peers.sh targets (prom also works)
#   OUT                     folder for results (default: a temporary folder)
#   STRATA_BIN              strata binary (default: target/release/strata)
# Strata runs as bench/strata-bench.sh runs it (retention 100y, rollups off like the peers),
# with any series cap lower than the workload needs (all series per tenant, an eighth of them
# per metric) raised to it, since a cap would refuse series and refused series cost no memory,
# and the default configuration otherwise.
source "$(dirname "$0")/common.sh"
SIZES=${SIZES:-500000 2000000} POINTS=${POINTS:-12} TARGETS=${TARGETS:-strata vm}
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
need_strata
[ -x "$SHARED_BENCH/peers.sh" ] || die "no peers.sh in SHARED_BENCH=${SHARED_BENCH:-} (shared/bench beside the repository)"

rows=()
for series in $SIZES; do
  run=$OUT/$series; mkdir -p "$run"
  mapfile -t limits < <(series_limits "$series" $(( (series + 7) / 8 )))
  write_config "$run/strata.toml" "${limits[@]+"${limits[@]}"}"
  printf '#!/bin/sh\nexec "%s" "$@" --retention 100y --config "%s"\n' "$STRATA_BIN" "$run/strata.toml" >"$run/strata.sh"
  chmod +x "$run/strata.sh"
  note "SERIES=$series POINTS=$POINTS: peers.sh $TARGETS (log: $run/peers.log)"
  # shellcheck disable=SC2086
  SERIES=$series POINTS=$POINTS STRATA_BIN=$run/strata.sh OUT=$run "$SHARED_BENCH/peers.sh" $TARGETS >"$run/peers.log" 2>&1 \
    || { tail -20 "$run/peers.log" >&2; die "peers.sh failed at SERIES=$series (see $run/peers.log)"; }
  [ -s "$run/summary.txt" ] || die "peers.sh wrote no summary at SERIES=$series (see $run/peers.log)"
  while read -r target rate errors bps peak _; do
    [ "$target" = target ] && continue
    rows+=("$series $target $rate $errors $bps $peak")
  done <"$run/summary.txt"
done

describe_build
printf '%-9s %-7s %12s %7s %13s %8s %12s\n' series target samples/s errors bytes/sample peak_MB peak_vs_vm
bad=0
for r in "${rows[@]}"; do
  read -r series target rate errors bps peak <<<"$r"
  vm=$(printf '%s\n' "${rows[@]}" | awk -v s="$series" '$1 == s && $2 == "vm" {print $6}')
  ratio=$([ -n "$vm" ] && [ "$vm" -gt 0 ] && python3 -c "print(f'{$peak/$vm:.2f}')" || echo -)
  printf '%-9s %-7s %12s %7s %13s %8s %12s\n' "$series" "$target" "$rate" "$errors" "$bps" "$peak" "$ratio"
  [ "$errors" = 0 ] || bad=1
done
echo "results in $OUT"
[ "$bad" = 0 ] || die "some writes were refused (errors column): the peak figures do not cover every series; see $OUT/*/<target>.log"
