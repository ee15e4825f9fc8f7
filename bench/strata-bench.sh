#!/bin/sh
# Runs strata as ../shared/bench/peers.sh expects, with the same 100-year retention the peers
# are given there (the workload's timestamps are a year old), and without rollups, which the
# peers do not keep (bench/rollups.sh measures what rollups cost):
#   STRATA_BIN=bench/strata-bench.sh ../shared/bench/peers.sh strata vm prom
dir="$(dirname "$0")"
exec "$dir/../target/release/strata" "$@" --retention 100y --config "$dir/strata-bench.toml"
