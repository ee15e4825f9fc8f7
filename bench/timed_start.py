#!/usr/bin/env python3
"""Starts a server and times it, for bench/restart.sh and bench/startup.sh: from just before the
process is started until /health answers, then until each --query answers with its expected
value (asked again every 20 ms until it does), then reads the process's memory and stops it.
Timing in one process keeps the figures free of the cost of starting a client per poll.

  timed_start.py --url BASE --log FILE [--query NAME PROMQL TIME EXPECTED]... [--stop kill|term] -- CMD...

Prints one line of key=value: health_s, then per query NAME_s (seconds since the start when it
answered as expected) and NAME_ms (that request's own duration), rss_health_MB (at /health),
rss_MB and hwm_MB (after the queries). Exits 1, naming what failed, when the server dies, does
not answer within --timeout seconds or a query never returns its expected value.
"""
import argparse
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def die(msg, proc=None):
    print(f"timed_start.py: error: {msg}", file=sys.stderr)
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    sys.exit(1)


def mb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
    return 0


def get(url, timeout=300):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def scalar(body):
    """The first sample value of an instant query's answer, as a string ('' when empty)."""
    v = json.loads(body)
    if v.get("status") != "success" or not v["data"]["result"]:
        return ""
    return v["data"]["result"][0]["value"][1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--log", required=True, help="the server's output goes here (appended)")
    ap.add_argument("--query", nargs=4, action="append", default=[],
                    metavar=("NAME", "PROMQL", "TIME", "EXPECTED"))
    ap.add_argument("--stop", choices=["kill", "term"], default="term")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("cmd", nargs="+")
    a = ap.parse_args()
    out = {}
    with open(a.log, "ab") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(a.cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = t0 + a.timeout
        while True:
            if proc.poll() is not None:
                die(f"the server exited with {proc.returncode} before /health answered (see {a.log})")
            try:
                if get(a.url + "/health", timeout=5)[0] == 200:
                    break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                die(f"/health did not answer within {a.timeout:g} s", proc)
            time.sleep(0.01)
        out["health_s"] = f"{time.monotonic() - t0:.3f}"
        out["rss_health_MB"] = mb(proc.pid, "VmRSS")
        for name, promql, at, expected in a.query:
            url = a.url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql, "time": at})
            got = None
            while True:
                s = time.monotonic()
                try:
                    got = scalar(get(url)[1])
                except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
                    got = f"error: {e}"
                e = time.monotonic()
                if got == expected:
                    break
                if proc.poll() is not None:
                    die(f"the server exited with {proc.returncode} during {name} (see {a.log})")
                if e > deadline:
                    die(f"{name}: {promql} answered {got!r}, expected {expected}", proc)
                time.sleep(0.02)
            out[f"{name}_s"] = f"{e - t0:.3f}"
            out[f"{name}_ms"] = f"{(e - s) * 1000:.1f}"
        out["rss_MB"] = mb(proc.pid, "VmRSS")
        out["hwm_MB"] = mb(proc.pid, "VmHWM")
        proc.send_signal(signal.SIGKILL if a.stop == "kill" else signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            die("the server did not stop within 120 s of SIGTERM", proc)
    print(" ".join(f"{k}={v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
