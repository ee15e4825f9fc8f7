#!/bin/sh
# Device platform costs:
# 1. enrichment: the simulator's backfill (SPAN of history, 500 devices) with the fleet
#    registered and `registry.enrich = ["site", "region", "type", "model", "firmware"]` against
#    no registry labels, alternating RUNS times (events/s as `strata simulate` prints them);
# 2. fleet status with DEVICES registered devices that have all reported: the time of
#    `GET /api/v1/devices` (first page, a status filter, a site filter, a deep cursor), 20 times
#    each, as curl measures it (median and max).
#   cargo build --release -p strata-server && RUNS=3 SPAN=6h DEVICES=100000 bench/devices.sh
set -eu
BIN="$(cd "$(dirname "$0")/.." && pwd)/target/release/strata"
RUNS="${RUNS:-3}"
SPAN="${SPAN:-6h}"
DEVICES="${DEVICES:-100000}"
PORT="${PORT:-19464}"
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
pid=
URL="http://127.0.0.1:$PORT"
start() { # $1 = config
    rm -rf "$work/data"; sync; sleep 1
    printf '%s\n' "$1" > "$work/s.toml"
    RUST_LOG=warn "$BIN" serve --config "$work/s.toml" --data-dir "$work/data" --listen "127.0.0.1:$PORT" & pid=$!
    until curl -sf "$URL/health" >/dev/null; do sleep 0.1; done
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; }
# The simulator's 500 devices as the registry knows them.
python3 - > "$work/fleet.ndjson" <<'PY'
import json
types = ["sensor", "meter", "gateway"]
for i in range(500):
    site = i // 20
    print(json.dumps({"id": f"dev-{i:05d}", "site": f"site-{site:02d}", "region": f"r{site % 3}",
                      "type": types[i % 3], "model": f"M-{i % 3}", "firmware": f"1.{i % 4}"}))
PY
echo "enrichment ($SPAN of history, 25 sites x 20 devices):"
i=0
while [ "$i" -lt "$RUNS" ]; do
    for mode in plain enrich; do
        if [ "$mode" = enrich ]; then
            start '[registry]
enrich = ["site", "region", "type", "model", "firmware"]'
            curl -sf -XPOST "$URL/api/v1/registry/devices/import" -H 'Content-Type: application/x-ndjson' --data-binary @"$work/fleet.ndjson" >/dev/null
        else
            start ''
        fi
        printf '  %-7s ' "$mode"
        "$BIN" simulate --url "$URL" --backfill "$SPAN" --interval 10s --sites 25 --devices-per-site 20 --connections 4 2>/dev/null
        stop
    done
    i=$((i + 1))
done
echo "fleet status, $DEVICES registered devices that reported:"
start ''
python3 - "$DEVICES" "$work" <<'PY'
import json, sys, time
n, work = int(sys.argv[1]), sys.argv[2]
now = int(time.time() * 1000)
with open(f"{work}/reg.ndjson", "w") as r, open(f"{work}/ev.ndjson", "w") as e:
    for i in range(n):
        d = f"d{i:06d}"
        r.write(json.dumps({"id": d, "site": f"s{i % 200:03d}", "type": ["pump", "meter"][i % 2],
                            "expected_interval": "1m"}) + "\n")
        # one in ten silent for an hour: offline
        t = now - (3_600_000 if i % 10 == 0 else 5_000)
        e.write(json.dumps({"device_id": d, "timestamp": t,
                            "readings": {"temperature": 20 + i % 10, "battery": 90}}) + "\n")
PY
curl -sf -XPOST "$URL/api/v1/registry/devices/import" -H 'Content-Type: application/x-ndjson' --data-binary @"$work/reg.ndjson" >/dev/null
split -l 20000 "$work/ev.ndjson" "$work/ev."
for f in "$work"/ev.??; do curl -sf -XPOST "$URL/api/v1/events" -H "Content-Type: application/x-ndjson" --data-binary @"$f" >/dev/null; done
total=$(curl -s "$URL/api/v1/devices?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["counts"]["total"])')
echo "  devices in fleet status: $total"
for q in "limit=100" "status=offline&limit=100" "site=s042&limit=100" "limit=100&cursor=d090000"; do
    for k in $(seq 20); do curl -s -o /dev/null -w '%{time_total}\n' "$URL/api/v1/devices?$q"; done | sort -n > "$work/t"
    printf '  %-28s median %s s, max %s s\n' "$q" "$(sed -n 10p "$work/t")" "$(tail -1 "$work/t")"
done
stop
