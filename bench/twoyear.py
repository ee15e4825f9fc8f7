#!/usr/bin/env python3
"""Helpers of bench/twoyear.sh (no third-party modules).

  twoyear.py gen --out DIR --end S [--days D] [--sites N] [--per-site N] [--chunk-days N] [--seed N]
                   [--max-series N] [--part I --parts N]
      Writes the workload as gzip'd Influx line protocol (precision=s), a file per CHUNK days of
      every series:
      every device's `temperature_celsius` (gauge) and `energy_wh_total` (counter, resetting
      now and then), and for every other device `vibration_mm_s` (the sketched metric), one
      sample per 5 minutes on the clock's 5-minute edges for D days up to S. Deterministic for a
      seed. Prints `series=... samples=... bytes=...` (of this part's files).

  twoyear.py query --url URL --query Q --start S --end S --step S [--repeat N] [--param k=v]...
      Runs a range query N times, prints `median_ms=... status=... series=... points=... tiers=...`
      (status is the HTTP status, or `error:<errorType>` for an answered error).

  twoyear.py median FILE
      Median of the numbers in FILE, one a line.
"""
import argparse
import gzip
import json
import math
import os
import random
import statistics
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

STEP_S = 300


def series_list(sites, per_site):
    """(metric, site, device) of every series, in file order."""
    out = []
    n = 0
    for s in range(sites):
        for d in range(per_site):
            site, device = f"s{s:02d}", f"d{n:04d}"
            out.append(("temperature_celsius", site, device))
            out.append(("energy_wh_total", site, device))
            if n % 2 == 0:
                out.append(("vibration_mm_s", site, device))
            n += 1
    return out


def lines(i, metric, site, device, start, end, seed):
    """Series `i`'s lines for `[start, end]`, as one string: a pure function of the series and
    the time (the RNG is seeded by series and chunk), so chunks are made in any order."""
    prefix = f"{metric},site={site},device={device} value="
    ts = range(start, end + 1, STEP_S)
    traits = random.Random(f"{seed}-{i}")
    rng = random.Random(f"{seed}-{i}-{start}")
    if metric == "temperature_celsius":
        phase = traits.random() * 6.283
        base = 15.0 + traits.random() * 10.0
        body = [
            f"{prefix}{base + 6.0 * math.sin(t / 86400.0 * 6.283 + phase) + rng.gauss(0.0, 0.4):.1f} {t}\n"
            for t in ts
        ]
    elif metric == "energy_wh_total":
        # Wh at a steady rate, the meter replaced (restarting from 0) every 40 to 100 days.
        rate = 0.01 + traits.random() * 0.05
        period = int((40 + traits.random() * 60) * 86400)
        phase = int(traits.random() * period)
        body = [f"{prefix}{rate * ((t + phase) % period):.1f} {t}\n" for t in ts]
    else:
        mu = traits.random()
        body = [f"{prefix}{rng.lognormvariate(mu, 0.6):.2f} {t}\n" for t in ts]
    return "".join(body)


def gen(a):
    os.makedirs(a.out, exist_ok=True)
    end = a.end // STEP_S * STEP_S
    start = (end - a.days * 86400) // STEP_S * STEP_S
    all_series = series_list(a.sites, a.per_site)
    if a.max_series:
        all_series = all_series[: a.max_series]
    samples = 0
    total_bytes = 0
    # Time-major files: each holds every series for `chunk_days` (whole UTC days, so whole
    # hours), as exports by time range come.
    chunk = a.chunk_days * 86400
    first = start // 86400 * 86400
    for n, c0 in enumerate(range(first, end + 1, chunk)):
        if n % a.parts != a.part:
            continue
        lo, hi = max(c0, start), min(c0 + chunk - STEP_S, end)
        path = os.path.join(a.out, f"part-{n:05d}.lp.gz")
        with gzip.open(path, "wt", compresslevel=1) as f:
            for i, (m, s, d) in enumerate(all_series):
                text = lines(i, m, s, d, lo, hi, a.seed)
                samples += text.count("\n")
                f.write(text)
        total_bytes += os.path.getsize(path)
    print(f"series={len(all_series)} samples={samples} bytes={total_bytes} start={start} end={end}")


def query(a):
    params = [("query", a.query), ("start", str(a.start)), ("end", str(a.end)), ("step", str(a.step))]
    for p in a.param or []:
        k, _, v = p.partition("=")
        params.append((k, v))
    url = a.url.rstrip("/") + "/api/v1/query_range?" + urllib.parse.urlencode(params)
    times, status, series, points, tiers = [], "?", 0, 0, "-"
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=600) as r:
                body = r.read()
                code = r.status
                tiers = r.headers.get("Strata-Tiers", "-")
        except urllib.error.HTTPError as e:
            body = e.read()
            code = e.code
        times.append((time.perf_counter() - t0) * 1000.0)
        try:
            v = json.loads(body)
        except ValueError:
            status = f"{code}:unreadable"
            continue
        if v.get("status") == "success":
            status = str(code)
            res = v["data"]["result"]
            series = len(res)
            points = sum(len(x.get("values", [])) for x in res)
        else:
            status = f"error:{v.get('errorType', code)}"
    print(
        f"median_ms={statistics.median(times):.1f} status={status} series={series} points={points} tiers={tiers}"
    )


def median(a):
    with open(a.file) as f:
        xs = [float(x) for x in f if x.strip()]
    print(f"{statistics.median(xs):.1f}" if xs else "n/a")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--out", required=True)
    g.add_argument("--end", type=int, required=True, help="last time, Unix seconds")
    g.add_argument("--days", type=int, default=730)
    g.add_argument("--sites", type=int, default=10)
    g.add_argument("--per-site", type=int, default=20)
    g.add_argument("--chunk-days", type=int, default=2)
    g.add_argument("--max-series", type=int, default=0)
    g.add_argument("--seed", type=int, default=15)
    g.add_argument("--part", type=int, default=0, help="write chunks n with n %% parts == part")
    g.add_argument("--parts", type=int, default=1)
    q = sub.add_parser("query")
    q.add_argument("--url", required=True)
    q.add_argument("--query", required=True)
    q.add_argument("--start", type=int, required=True)
    q.add_argument("--end", type=int, required=True)
    q.add_argument("--step", type=int, required=True)
    q.add_argument("--repeat", type=int, default=5)
    q.add_argument("--param", action="append")
    m = sub.add_parser("median")
    m.add_argument("file")
    a = p.parse_args()
    {"gen": gen, "query": query, "median": median}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
