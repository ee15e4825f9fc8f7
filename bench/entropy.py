#!/usr/bin/env python3
"""The information content of ../shared/bench's workload: a floor for bytes per sample.

Regenerates the values tsbench sends (the same splitmix64 streams and random walks as
`SeriesGen` in ../shared/bench/tsbench/src/main.rs) and measures, per metric, the empirical
entropy of each sample given the one before (its step) and of the sample alone (its level).
Each walk's steps are independent draws, so the step entropy is the walk's entropy rate: no
lossless store of these values can average fewer bits, whatever its codec.

    python3 bench/entropy.py [series]      # default 400 of the 2000 series (a few seconds each)
"""
import collections
import math
import sys

MASK = (1 << 64) - 1
METRICS = ["temperature_celsius", "humidity_percent", "battery_soc_percent", "power_watts",
           "packets_total", "errors_total", "cpu_usage_percent", "voltage_volts"]


class Rng:
    def __init__(self, seed):
        self.x = seed & MASK

    def unit(self):
        self.x = (self.x + 0x9E3779B97F4A7C15) & MASK
        z = self.x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return ((z ^ (z >> 31)) >> 11) / float(1 << 53)


def rnd(x):  # Rust's f64::round: halves away from zero
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def walk(i, points):
    rng, kind = Rng(0xC0FFEE ^ ((i * 0x100000001B3) & MASK)), i % 8
    v = {0: lambda: 15.0 + rnd(rng.unit() * 15.0), 1: lambda: 40.0 + rnd(rng.unit() * 30.0),
         2: lambda: 100.0, 3: lambda: 200.0 + rnd(rng.unit() * 800.0),
         4: lambda: rnd(rng.unit() * 1e6), 5: lambda: rnd(rng.unit() * 1e6),
         6: lambda: 20.0}.get(kind, lambda: 230.0)()
    clamp = lambda x, lo, hi: min(max(x, lo), hi)
    r1 = lambda x: rnd(x * 10.0) / 10.0
    for _ in range(points):
        r = rng.unit()
        if kind == 0:
            v = r1(clamp(v + (r - 0.5) * 0.4, -20.0, 60.0))
        elif kind == 1:
            v = r1(clamp(v + (r - 0.5) * 1.0, 0.0, 100.0))
        elif kind == 2:
            v = 100.0 if v <= 5.0 else (r1(v - 0.1) if r < 0.3 else v)
        elif kind == 3:
            v = rnd(clamp(v + (r - 0.5) * 40.0, 0.0, 5000.0))
        elif kind == 4:
            v = v + rnd(r * 2000.0)
        elif kind == 5:
            v = v + (1.0 if r < 0.02 else 0.0)
        elif kind == 6:
            v = rnd(clamp(v + (r - 0.5) * 6.0, 0.0, 100.0) * 100.0) / 100.0
        else:
            v = r1(230.0 + (r - 0.5) * 4.0)
        yield kind, v


def entropy(counts):
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def main():
    series = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    steps = collections.defaultdict(collections.Counter)
    levels = collections.defaultdict(collections.Counter)
    for i in range(series):
        prev = None
        for kind, v in walk(i, 5760):
            if prev is not None:
                steps[kind][round((v - prev) * 100)] += 1
            levels[kind][round(v * 100)] += 1
            prev = v
    total = 0.0
    for kind in sorted(steps):
        hs, hl = entropy(steps[kind]), entropy(levels[kind])
        total += min(hs, hl)
        print(f"{METRICS[kind]:22} step {hs:5.2f} bits  level {hl:5.2f} bits")
    print(f"floor: {total / 8:.3f} bits = {total / 64:.3f} bytes per sample (values alone)")


if __name__ == "__main__":
    main()
