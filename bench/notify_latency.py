#!/usr/bin/env python3
"""Notification latency of device rules: from the acknowledgement of the write that decides an
alert to the notifier's request arriving at a webhook receiver.

    bench/notify_latency.py --strata target/release/strata [--n 200]

Strata runs with one partition, a webhook notifier pointing at a receiver in this script, and a
device rule that fires on a device's first reading above 80. For each of --n devices, one
request carries the deciding reading and a later reading of another device that moves the
watermark past it (so what is measured is Strata's path: commit, judging, the outbox's fsync,
delivery), and the time from its acknowledgement to the receiver's arrival is recorded.
Prints p50, p90, p99 and max in milliseconds.
"""
import argparse, http.server, json, os, socket, subprocess, sys, tempfile, threading, time, urllib.request

arrived = {}


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        t = time.monotonic()
        for a in json.loads(body).get("alerts", []):
            if a["status"] == "firing":
                arrived.setdefault(a["labels"].get("device"), t)
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()

    def log_message(self, *a):
        pass


def port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strata", default="target/release/strata")
    ap.add_argument("--n", type=int, default=200)
    a = ap.parse_args()
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    work = tempfile.mkdtemp(prefix="notify-lat-")
    cfg = os.path.join(work, "strata.toml")
    with open(cfg, "w") as f:
        f.write(f"""partitions = 1
[[alerting.notifiers]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:{hook.server_port}/hook"
group_by = ["device"]
[[alerting.device_rules]]
rule_id = "hot"
device_group = '{{site="lat"}}'
metric = "temp"
operator = ">"
threshold = 80.0
""")
    p = port(); base = f"http://127.0.0.1:{p}"
    srv = subprocess.Popen([a.strata, "serve", "--config", cfg, "--data-dir", os.path.join(work, "data"),
                            "--listen", f"127.0.0.1:{p}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=dict(os.environ, RUST_LOG="warn"))
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/health", timeout=2); break
            except Exception:
                time.sleep(0.1)
        acked = {}
        t0 = int(time.time() * 1000) - 600_000
        for k in range(a.n):
            t = t0 + k * 1000
            body = (json.dumps({"device_id": f"d{k}", "timestamp": t, "readings": {"temp": 90},
                                "labels": {"site": "lat"}}) + "\n" +
                    json.dumps({"device_id": "tick", "timestamp": t + 11_000, "readings": {"tick": 1}}) + "\n")
            req = urllib.request.Request(base + "/api/v1/events", data=body.encode(), method="POST",
                                         headers={"Content-Type": "application/x-ndjson"})
            urllib.request.urlopen(req, timeout=30).read()
            acked[f"d{k}"] = time.monotonic()
            time.sleep(0.02)
        deadline = time.time() + 30
        while len(arrived) < a.n and time.time() < deadline:
            time.sleep(0.1)
        lat = sorted((arrived[d] - acked[d]) * 1000 for d in acked if d in arrived)
        if not lat:
            sys.exit("no notification arrived")
        q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
        print(f"device-rule notification latency over {len(lat)} of {a.n} alerts: p50={q(0.5):.1f} ms "
              f"p90={q(0.9):.1f} ms p99={q(0.99):.1f} ms max={lat[-1]:.1f} ms")
    finally:
        srv.kill(); srv.wait(); hook.shutdown()


if __name__ == "__main__":
    main()
