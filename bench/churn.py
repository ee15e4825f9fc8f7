#!/usr/bin/env python3
"""Series churn load for bench/churn.sh: ROUNDS rounds, each writing SERIES new series (a
rotating `instance` label, never reused) a few samples each over Influx line protocol
(`POST /write?precision=ms`), timestamps advancing a STEP per round so that every earlier round's
series are idle and older than any lookback. After each round it optionally forces a flush, then
samples the server's resident memory (/proc/PID/status) and, when given, a self-metric.

Prints one line per round and a last `summary` line; exits 1 when any write was refused.
Standard library only.
"""
import argparse
import http.client
import sys
import time
import urllib.parse

METRICS = 8  # spread the series over metric names, as real fleets (and tsbench) do


def die(msg):
    print(f"churn.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def proc_mb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) // 1024
    except FileNotFoundError:
        die(f"process {pid} is gone (did the server die? see its log)")
    die(f"no {field} in /proc/{pid}/status")


class Client:
    """One keep-alive HTTP connection to the server under test."""

    def __init__(self, base):
        u = urllib.parse.urlsplit(base)
        self.host, self.port = u.hostname, u.port or 80
        self.conn = None

    def request(self, method, path, body=None, timeout=600):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            try:
                self.conn.request(method, path, body=body)
                r = self.conn.getresponse()
                return r.status, r.read()
            except (http.client.HTTPException, OSError):
                # A keep-alive connection the server closed: reconnect once.
                self.conn.close()
                self.conn = None
                if attempt:
                    raise

    def metric(self, name):
        status, body = self.request("GET", "/metrics", timeout=120)
        if status != 200:
            die(f"GET /metrics answered {status}")
        total, seen = 0.0, False
        for line in body.decode().splitlines():
            key = line.split(" ", 1)[0]
            if key == name or key.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
                seen = True
        return int(total) if seen else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True, help="server base URL")
    ap.add_argument("--pid", type=int, required=True, help="server process id (for VmRSS)")
    ap.add_argument("--total", type=int, default=5_000_000, help="distinct series in all")
    ap.add_argument("--round", type=int, default=100_000, help="new series per round")
    ap.add_argument("--samples", type=int, default=3, help="samples per series per round")
    ap.add_argument("--interval-ms", type=int, default=15_000, help="between a series' samples")
    ap.add_argument("--step-ms", type=int, default=600_000, help="timestamp advance per round")
    ap.add_argument("--batch", type=int, default=10_000, help="lines per request")
    ap.add_argument("--flush", action="store_true", help="POST /api/v1/admin/flush after each round")
    ap.add_argument("--series-metric", help="self-metric to print per round (live series)")
    a = ap.parse_args()
    if a.round <= 0 or a.total < a.round:
        die("--total must be at least --round, and --round positive")
    if a.samples * a.interval_ms >= a.step_ms:
        die("a round's samples must fit in --step-ms")
    rounds = a.total // a.round
    # Everything lies in the past, the newest round still a few steps old, so each round's
    # series are idle (and outside a 5-minute lookback) from the next round on.
    now = int(time.time() * 1000)
    t0 = (now - (rounds + 3) * a.step_ms) // 60_000 * 60_000
    c = Client(a.url)
    errors, first_error = 0, None
    print(f"{'round':>5} {'series_total':>12} {'write_s':>7} {'flush_s':>7} {'rss_MB':>7} "
          f"{'hwm_MB':>7} {'live_series':>11} {'refused':>7}", flush=True)
    rss_first = rss_last = 0
    started = time.monotonic()
    for r in range(rounds):
        t_write = time.monotonic()
        base_t = t0 + r * a.step_ms
        lines = []
        for i in range(a.round):
            g = r * a.round + i
            prefix = f"churn_{g % METRICS},job=churn,region=r{g % 4},instance=i{g:08d} value="
            for k in range(a.samples):
                lines.append(f"{prefix}{(g + k) % 1000} {base_t + k * a.interval_ms}\n")
                if len(lines) == a.batch:
                    errors, first_error = send(c, lines, errors, first_error)
                    lines = []
        if lines:
            errors, first_error = send(c, lines, errors, first_error)
        write_s = time.monotonic() - t_write
        flush_s = 0.0
        if a.flush:
            t = time.monotonic()
            status, body = c.request("POST", "/api/v1/admin/flush")
            if status >= 300:
                die(f"flush after round {r} answered {status}: {body[:300]!r}")
            flush_s = time.monotonic() - t
        rss, hwm = proc_mb(a.pid, "VmRSS"), proc_mb(a.pid, "VmHWM")
        live = c.metric(a.series_metric) if a.series_metric else None
        rss_first = rss_first or rss
        rss_last = rss
        print(f"{r:>5} {(r + 1) * a.round:>12} {write_s:>7.2f} {flush_s:>7.2f} {rss:>7} {hwm:>7} "
              f"{'-' if live is None else live:>11} {errors:>7}", flush=True)
    print(f"summary rounds={rounds} series_total={rounds * a.round} rss_first_MB={rss_first} "
          f"rss_last_MB={rss_last} hwm_MB={proc_mb(a.pid, 'VmHWM')} refused_requests={errors} "
          f"seconds={time.monotonic() - started:.0f}", flush=True)
    if errors:
        print(f"churn.py: {errors} write requests refused; first: {first_error}", file=sys.stderr)
        sys.exit(1)


def send(c, lines, errors, first_error):
    status, body = c.request("POST", "/write?precision=ms", "".join(lines).encode())
    if status >= 300:
        errors += 1
        first_error = first_error or f"{status} {body[:300].decode(errors='replace')}"
    return errors, first_error


if __name__ == "__main__":
    main()
