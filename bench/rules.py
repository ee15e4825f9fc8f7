#!/usr/bin/env python3
"""Rule evaluation cost, Strata beside Prometheus, on the same data and rules.

    bench/rules.py --strata target/release/strata [--series 100000] [--rules 1000]

Writes tsbench's fleet (`--series` series, 5 minutes at 15 s ending now) to each target by
remote write, loads `--rules` alerting rules in ten groups evaluated every 15 s (nine in ten a
threshold over one site's series, about 100 each; one in ten an aggregation over one metric's
every series, `avg by (site) (...)`), lets each target evaluate them for --settle seconds,
then reads `/api/v1/rules` and prints per target the evaluation time of one interval (the
sum of its groups' last `evaluationTime`), and its median over the samples taken.
"""
import argparse, json, os, socket, subprocess, sys, tempfile, time, urllib.request

METRICS = ["temperature_celsius", "humidity_percent", "battery_soc_percent", "power_watts",
           "packets_total", "errors_total", "cpu_usage_percent", "voltage_volts"]


def port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def get(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def wait_up(url):
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=2); return
        except Exception:
            time.sleep(0.2)
    sys.exit(f"no answer from {url}")


def rules(n, sites):
    groups = []
    for g in range(10):
        rs = []
        for i in range(g * n // 10, (g + 1) * n // 10):
            m = METRICS[i % len(METRICS)]
            if i % 10 == 9:
                rs.append({"alert": f"Agg{i}", "expr": f"avg by (site) ({m}) > 1e12"})
            else:
                rs.append({"alert": f"Site{i}", "expr": f'{m}{{site="site-{i % sites:03d}"}} > 1e12',
                           "for": "1m", "labels": {"severity": "page"},
                           "annotations": {"summary": "{{ $labels.device }} at {{ $value }}"}})
        groups.append({"name": f"g{g}", "interval": "15s", "rules": rs})
    return {"groups": groups}


def interval_cost(base):
    gs = get(base + "/api/v1/rules")["data"]["groups"]
    if not gs or any(g["lastEvaluation"].startswith("0001") for g in gs):
        return None
    return sum(g["evaluationTime"] for g in gs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strata", default="target/release/strata")
    ap.add_argument("--tsbench", default=os.environ.get("TSBENCH", "/tmp/tsbench-target/release/tsbench"))
    ap.add_argument("--series", type=int, default=100_000)
    ap.add_argument("--rules", type=int, default=1000)
    ap.add_argument("--settle", type=float, default=90)
    ap.add_argument("--targets", default="strata,prom")
    a = ap.parse_args()
    sites = max(1, a.series // len(METRICS) // 100)
    for t in a.targets.split(","):
        work = tempfile.mkdtemp(prefix=f"rules-{t}-")
        rf = os.path.join(work, "rules.yml")
        with open(rf, "w") as f:
            json.dump(rules(a.rules, sites), f)
        p = port(); base = f"http://127.0.0.1:{p}"
        if t == "strata":
            cfg = os.path.join(work, "strata.toml")
            with open(cfg, "w") as f:
                f.write(f'[alerting]\nrule_files = ["{rf}"]\n')
            cmd = [a.strata, "serve", "--config", cfg, "--data-dir", os.path.join(work, "data"),
                   "--listen", f"127.0.0.1:{p}"]
            write = base + "/api/v1/write"
        else:
            cfg = os.path.join(work, "prometheus.yml")
            with open(cfg, "w") as f:
                f.write(f"global:\n  evaluation_interval: 15s\nrule_files:\n  - {rf}\n")
            cmd = ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={work}/data",
                   f"--web.listen-address=127.0.0.1:{p}", "--web.enable-remote-write-receiver"]
            write = base + "/api/v1/write"
        srv = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=dict(os.environ, RUST_LOG="warn"))
        try:
            wait_up(base + ("/health" if t == "strata" else "/-/ready"))
            end_ms = int(time.time() * 1000)
            subprocess.run([a.tsbench, "blast", "--url", write, "--format", "rw", "--series", str(a.series),
                            "--points", "20", "--interval-s", "15", "--conns", "2", "--end-ms", str(end_ms)],
                           check=True, stdout=subprocess.DEVNULL)
            costs, deadline = [], time.time() + a.settle
            while time.time() < deadline:
                time.sleep(15)
                c = interval_cost(base)
                if c is not None:
                    costs.append(c)
            costs.sort()
            med = costs[len(costs) // 2] if costs else float("nan")
            print(f"{t:7s} series={a.series} rules={a.rules} interval_cost_ms median={med * 1000:.1f} "
                  f"samples={[round(c * 1000, 1) for c in costs]}")
        finally:
            srv.kill(); srv.wait()


if __name__ == "__main__":
    main()
