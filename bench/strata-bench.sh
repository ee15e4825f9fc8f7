#!/bin/sh
# Runs strata as ../shared/bench/peers.sh expects, with the same 100-year retention the peers
# are given there (the workload's timestamps are a year old):
#   STRATA_BIN=bench/strata-bench.sh ../shared/bench/peers.sh strata vm prom
exec "$(dirname "$0")/../target/release/strata" "$@" --retention 100y
