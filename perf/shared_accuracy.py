#!/usr/bin/env python3
"""Accuracy driver for perf/shared-accuracy.sh: one client per overload level sends Poisson
arrivals (fixed seed), spread round-robin over the shared replicas, and the *same* arrivals
to one unshared gateway. Each request is timed at its arrival; admitted = any answer but 429.
Prints a Markdown table: admitted in the worst 60 s window (from the start, and starting after
the first minute), the worst 1 s window, and in total, shared vs single, and the difference.

usage: shared_accuracy.py --duration S --rate-per-min R --replicas P1,P2,P3 --single P
                          --level NAME:MULTIPLIER:SOURCE_IP ...
"""
import argparse
import asyncio
import bisect
import json
import random
import sys
import time


async def send(port: int, source: str, timeout: float) -> int:
    """One GET /v1/ping over a fresh connection from `source`; returns the status (0 on error)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), timeout)
        writer.write(b"GET /v1/ping HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        writer.close()
        return int(line.split()[1])
    except (OSError, asyncio.TimeoutError, ValueError, IndexError):
        return 0


def worst_window(times: list, width: float, start_after: float = 0.0) -> int:
    """Most admissions in any window [t, t + width) with t >= start_after (t at an admission)."""
    best = 0
    for i, t in enumerate(times):
        if t < start_after:
            continue
        best = max(best, bisect.bisect_left(times, t + width) - i)
    return best


async def run_level(name, mult, source, args, results):
    rng = random.Random(f"{name}-{mult}")
    rate = args.rate_per_min * mult / 60.0          # arrivals per second
    arrivals, t = [], rng.expovariate(rate)
    while t < args.duration:
        arrivals.append(t)
        t += rng.expovariate(rate)
    shared, single, shared_replica = [], [], []
    status_counts = {"shared": {}, "single": {}}
    slowest = {"shared": 0.0, "single": 0.0}
    tasks = []
    start = args.t0

    async def one(j: int, at: float):
        await asyncio.sleep(max(0.0, start + at - time.monotonic()))
        rep_port = args.replicas[j % len(args.replicas)]
        t_send = time.monotonic()

        async def timed(kind, port):
            st = await send(port, source, args.timeout)
            slowest[kind] = max(slowest[kind], time.monotonic() - t_send)
            return st

        s_shared, s_single = await asyncio.gather(timed("shared", rep_port),
                                                  timed("single", args.single))
        for kind, st, admitted in (("shared", s_shared, shared), ("single", s_single, single)):
            status_counts[kind][st] = status_counts[kind].get(st, 0) + 1
            if st not in (0, 429) and st < 500:
                admitted.append(at)
                if kind == "shared":
                    shared_replica.append((at, j % len(args.replicas)))

    for j, at in enumerate(arrivals):
        tasks.append(asyncio.ensure_future(one(j, at)))
    await asyncio.gather(*tasks)
    shared.sort()
    single.sort()
    results[name] = {
        "mult": mult, "sent": len(arrivals),
        "shared": shared, "single": single, "shared_replica": sorted(shared_replica),
        "statuses": status_counts, "slowest_s": slowest,
    }


def row(label, a, b):
    return f"| {label} | {a} | {b} | {a - b:+d} |"


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--rate-per-min", type=float, default=100)
    ap.add_argument("--burst", type=int, default=20)
    ap.add_argument("--replicas", required=True)
    ap.add_argument("--single", type=int, required=True)
    ap.add_argument("--level", action="append", required=True)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--json", help="also write raw results here")
    args = ap.parse_args()
    args.replicas = [int(p) for p in args.replicas.split(",")]
    args.t0 = time.monotonic() + 0.5
    results = {}
    levels = []
    for spec in args.level:
        name, mult, source = spec.split(":")
        levels.append((name, float(mult), source))
    await asyncio.gather(*(run_level(n, m, s, args, results) for n, m, s in levels))

    ideal = args.rate_per_min * args.duration / 60 + args.burst
    print(f"{len(args.replicas)} replicas vs one gateway, {args.rate_per_min:g}/min burst {args.burst}, "
          f"{args.duration:g} s, Poisson arrivals spread round-robin; ideal total R*W+B = {ideal:g}\n")
    for name, mult, _ in levels:
        r = results[name]
        sh, si = r["shared"], r["single"]
        print(f"**{name}** ({mult:g}x = {args.rate_per_min * mult:g}/min offered, {r['sent']} requests)\n")
        print("| admitted | 3 replicas, shared | one gateway | difference |")
        print("|---|---|---|---|")
        print(row("worst 60 s window", worst_window(sh, 60), worst_window(si, 60)))
        print(row("worst 60 s window after the first minute",
                  worst_window(sh, 60, 60), worst_window(si, 60, 60)))
        print(row("worst 1 s window", worst_window(sh, 1), worst_window(si, 1)))
        print(row("total", len(sh), len(si)))
        pct = (len(sh) - len(si)) / max(1, len(si)) * 100
        print(f"\ntotal shared vs single: {pct:+.2f} %; vs ideal {ideal:g}: "
              f"{(len(sh) - ideal) / ideal * 100:+.2f} %; statuses {json.dumps(r['statuses'])}; "
              f"slowest answer shared {r['slowest_s']['shared']:.3f} s, single {r['slowest_s']['single']:.3f} s\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
