#!/usr/bin/python3
"""Summary of bench/failover/run.sh's results.jsonl: per side and scenario the median and p99
(nearest rank) of the write block, the median block over the writes that survived, the median
of "command -> writes accepted", failed attempts and lost acknowledged writes, the load averages
seen, and the ratios the issue asks for (peer / instactl: above 1 means instactl is faster)."""
import json
import math
import sys
from collections import defaultdict


def pct(xs, p):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)]


def fmt(x, unit="s"):
    return "-" if x is None else f"{x:.3f}{unit}"


rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = defaultdict(list)
for r in rows:
    by[(r.get("side", "?"), r.get("scenario", "?"))].append(r)

print(f"{'side':9} {'scenario':34} {'n':>3} {'block p50':>10} {'block p99':>10} {'durable p50':>12} {'accept p50':>11} "
      f"{'failed':>7} {'lost':>6}  load (1m at each event)")
stats = {}
for (side, scen), rs in sorted(by.items()):
    b50, b99 = pct([r.get("block_s") for r in rs], 50), pct([r.get("block_s") for r in rs], 99)
    a50 = pct([r.get("accept_s") for r in rs], 50)
    d50 = pct([r.get("durable_block_s") for r in rs], 50)
    failed = sum(r.get("failed", 0) for r in rs)
    lost = sum(r.get("lost", 0) for r in rs)
    loads = " ".join(str(r.get("load", "?")).split()[0] for r in rs)
    stats[(side, scen)] = (b50, b99, a50, failed, lost, len(rs), d50)
    print(f"{side:9} {scen:34} {len(rs):>3} {fmt(b50):>10} {fmt(b99):>10} {fmt(d50):>12} {fmt(a50):>11} {failed:>7} {lost:>6}  {loads}")


def find(side, prefix):
    for (s, scen), v in stats.items():
        if s == side and scen.startswith(prefix):
            return scen, v
    return None, None


print()
for what, ours, theirs, idx in [
    ("planned Postgres switchover, write block p50", "instactl-pg-switchover", "pg-switchover@ttl10", 0),
    # Sentinel's old master keeps acknowledging writes it then throws away: compare the block
    # over the writes that survived.
    ("planned Redis switchover, block over surviving writes p50", "instactl-redis-switchover", "redis-failover", 6),
    ("commanded Postgres failover, cmd -> writes accepted p50", "instactl-pg-kill+cmd", "pg-kill+cmd@ttl10", 2),
    ("commanded Redis failover, cmd -> writes accepted p50", "instactl-redis-kill+cmd", "redis-kill+cmd", 2),
]:
    _, a = find("instactl", ours)
    sc, b = find("peer", theirs)
    if a is None:
        continue
    line = f"{what}: instactl {fmt(a[idx])} (failed {a[3]}, lost {a[4]}, n={a[5]})"
    if b is not None and a[idx] and b[idx]:
        line += f"; {sc} {fmt(b[idx])} (failed {b[3]}, lost {b[4]}, n={b[5]}); ratio {b[idx] / a[idx]:.1f}x"
    print(line)
