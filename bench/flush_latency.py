#!/usr/bin/env python3
"""Write latency during flush and compaction, for bench/flush_latency.sh.

CLIENTS processes (one each, so no client waits on another's interpreter lock) send small
Influx line-protocol batches (`POST /write?precision=ms`, BATCH lines, wall-clock timestamps)
every INTERVAL_MS each, cycling over SERIES series, for DURATION seconds after WARMUP seconds.
Meanwhile the main process forces a flush every FLUSH_EVERY seconds (POST /api/v1/admin/flush;
each flush also compacts, and its window is known exactly) and polls /metrics every POLL_MS for
strata_flushes_total and strata_tsdb_compactions_total (which also finds the flushes and
compactions the server starts by itself, to within a poll interval).

A request counts as "during flush" when its time on the wire overlaps a flush window, "during
compaction" when it overlaps a flush whose compaction counter moved (or a polled interval in
which compactions_total rose). Latency is measured from send to answer, and also from when the
request was due (`sched`), which counts the time a client spent blocked behind a slow request
(coordinated omission). Prints a table of p50/p90/p99/p99.9/max per window kind; exits 1 when a
write failed. Standard library only.
"""
import argparse
import http.client
import multiprocessing as mp
import sys
import threading
import time
import urllib.parse

METRICS = 8


def die(msg):
    print(f"flush_latency.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def connect(base, timeout=120):
    u = urllib.parse.urlsplit(base)
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)


def call(conn, method, path, body=None):
    conn.request(method, path, body=body)
    r = conn.getresponse()
    return r.status, r.read()


def client(idx, a, t_start, t_end, out):
    """One writer: returns [(due, start, end, status)] for requests started in [t_start, t_end)."""
    ids = range(idx, a.series, a.clients)
    prefixes = [
        f"lat_{g % METRICS},job=latency,region=r{g % 4},instance=i{g:07d} value=".encode()
        for g in ids
    ]
    conn = connect(a.url)
    rows, pos, due = [], 0, time.monotonic()
    first_error = None
    while True:
        now = time.monotonic()
        if now >= t_end:
            break
        if now < due:
            time.sleep(due - now)
        ts = int(time.time() * 1000)
        parts = []
        for _ in range(a.batch):
            parts.append(prefixes[pos] + f"{(pos + ts) % 1000} {ts}\n".encode())
            pos = (pos + 1) % len(prefixes)
        body = b"".join(parts)
        start = time.monotonic()
        try:
            status, resp = call(conn, "POST", "/write?precision=ms", body)
        except (http.client.HTTPException, OSError) as e:
            status, resp = 599, str(e).encode()
            conn.close()
            conn = connect(a.url)
        end = time.monotonic()
        if status >= 300 and first_error is None:
            first_error = f"{status} {resp[:300].decode(errors='replace')}"
        if start >= t_start:
            rows.append((due, start, end, status))
        # A fixed schedule: a client held up sends the requests that fell due at once, as a
        # sender with a queue does, and their wait counts in the `sched` latency.
        due += a.interval_ms / 1000
    out.put((idx, rows, first_error))


def metrics(conn):
    status, body = call(conn, "GET", "/metrics")
    if status != 200:
        die(f"GET /metrics answered {status}")
    want = {"strata_flushes_total": 0.0, "strata_tsdb_compactions_total": 0.0}
    for line in body.decode().splitlines():
        key = line.split(" ", 1)[0].split("{", 1)[0]
        if key in want:
            want[key] += float(line.rsplit(" ", 1)[1])
    return want["strata_flushes_total"], want["strata_tsdb_compactions_total"]


def flusher(a, t_start, t_end, windows, stop):
    """Forces a flush every FLUSH_EVERY seconds; records (start, end, compacted)."""
    conn = connect(a.url, timeout=600)
    nxt = t_start + a.flush_every / 2
    while not stop.is_set():
        if time.monotonic() < nxt:
            time.sleep(min(0.05, nxt - time.monotonic()))
            continue
        if time.monotonic() >= t_end:
            break
        _, c0 = metrics(conn)
        s = time.monotonic()
        status, body = call(conn, "POST", "/api/v1/admin/flush")
        e = time.monotonic()
        if status >= 300:
            die(f"POST /api/v1/admin/flush answered {status}: {body[:300]!r}")
        _, c1 = metrics(conn)
        windows.append(("flush", s, e, c1 > c0))
        nxt += a.flush_every


def poller(a, t_end, polls, stop):
    """Reads the flush and compaction counters every POLL_MS: [(start, end, flushes, compactions)]."""
    conn = connect(a.url, timeout=600)
    while not stop.is_set() and time.monotonic() < t_end:
        s = time.monotonic()
        f, c = metrics(conn)
        polls.append((s, time.monotonic(), f, c))
        time.sleep(max(0.0, a.poll_ms / 1000 - (time.monotonic() - s)))


def pct(sorted_ms, q):
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--batch", type=int, default=500, help="lines (samples) per request")
    ap.add_argument("--interval-ms", type=float, default=50, help="per client, between requests")
    ap.add_argument("--series", type=int, default=100_000)
    ap.add_argument("--duration", type=float, default=120, help="seconds measured")
    ap.add_argument("--warmup", type=float, default=10, help="seconds before measuring")
    ap.add_argument("--flush-every", type=float, default=10, help="seconds; 0: the server's own")
    ap.add_argument("--poll-ms", type=float, default=200)
    a = ap.parse_args()
    if a.series < a.clients:
        die("--series must be at least --clients")
    mp.set_start_method("fork")
    t0 = time.monotonic()
    t_start, t_end = t0 + a.warmup, t0 + a.warmup + a.duration
    out = mp.Queue()
    procs = [mp.Process(target=client, args=(i, a, t_start, t_end, out)) for i in range(a.clients)]
    for p in procs:
        p.start()
    windows, polls, stop = [], [], threading.Event()
    threads = [threading.Thread(target=poller, args=(a, t_end, polls, stop), daemon=True)]
    if a.flush_every > 0:
        threads.append(threading.Thread(target=flusher, args=(a, t_start, t_end, windows, stop), daemon=True))
    for t in threads:
        t.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    stop.set()
    for t in threads:
        t.join(timeout=600)
    rows = [r for _, rs, _ in results for r in rs]
    errors = [e for _, _, e in results if e]
    failed = sum(1 for r in rows if r[3] >= 300)

    forced = list(windows)
    # Flushes and compactions the poller saw that no forced flush explains (the server's own).
    for (s0, e0, f0, c0), (s1, e1, f1, c1) in zip(polls, polls[1:]):
        if any(w[1] <= e1 and w[2] >= e0 for w in forced):
            continue
        if f1 > f0:
            windows.append(("flush", e0, e1, c1 > c0))
        elif c1 > c0:
            windows.append(("compaction", e0, e1, True))

    def overlaps(r, kinds):
        return any(w[1] <= r[2] and w[2] >= r[1] for w in windows if kinds(w))

    groups = {
        "all": rows,
        "outside_flush": [r for r in rows if not overlaps(r, lambda w: True)],
        "during_flush": [r for r in rows if overlaps(r, lambda w: w[0] == "flush")],
        "during_compaction": [r for r in rows if overlaps(r, lambda w: w[3])],
    }
    forced_ms = sorted((w[2] - w[1]) * 1000 for w in windows if w[0] == "flush" and w in forced)
    polled = [w for w in windows if w not in forced]
    print(f"# clients={a.clients} batch={a.batch} interval_ms={a.interval_ms:g} series={a.series} "
          f"duration_s={a.duration:g} flush_every_s={a.flush_every:g}: "
          f"{len(rows)} requests, {failed} failed; {len(forced_ms)} forced flushes "
          f"(median {pct(forced_ms, 0.5):.0f} ms, max {max(forced_ms, default=float('nan')):.0f} ms, "
          f"{sum(1 for w in forced if w[3])} compacting); "
          f"{sum(1 for w in polled if w[0] == 'flush')} server flushes and "
          f"{sum(1 for w in polled if w[0] == 'compaction')} other compactions seen by polling "
          f"(each a window of about {a.poll_ms:g} ms at its end)")
    print(f"{'window':<18} {'requests':>8} {'p50_ms':>8} {'p90_ms':>8} {'p99_ms':>8} {'p99.9_ms':>9} "
          f"{'max_ms':>8} {'p99_sched_ms':>12}")
    for name, rs in groups.items():
        lat = sorted((r[2] - r[1]) * 1000 for r in rs)
        sched = sorted((r[2] - r[0]) * 1000 for r in rs)
        print(f"{name:<18} {len(rs):>8} {pct(lat, .5):>8.2f} {pct(lat, .9):>8.2f} {pct(lat, .99):>8.2f} "
              f"{pct(lat, .999):>9.2f} {max(lat, default=float('nan')):>8.2f} {pct(sched, .99):>12.2f}")
    if failed or errors:
        print(f"flush_latency.py: {failed} writes failed; first: {errors[0] if errors else '?'}",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
