#!/usr/bin/env python3
"""Summarises scripts/bench-beacon.sh results (one JSON object per line) as a Markdown
table: median [min-max] per setup of deliveries/s, latency, loss, and where the server
core's time went (gateway shard threads, bridge threads, nats-server)."""

import json
import statistics
import sys
from collections import defaultdict


def cpu_deltas(run):
    before = dict(item.split("=") for item in run["cpu_ms_before"])
    after = dict(item.split("=") for item in run["cpu_ms_after"])
    shards = bridge = nats = other = 0
    for key, value in after.items():
        delta = int(value) - int(before.get(key, 0))
        thread = key.split("/", 1)[1]
        if thread.startswith("ringcast-shard"):
            shards += delta
        elif thread == "ringcast-bridge":
            bridge += delta
        elif thread.startswith("nats-server") or "nats" in thread:
            nats += delta
        else:
            other += delta
    return shards, bridge, nats, other


def cell(values, fmt="{:,.0f}"):
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{fmt.format(med)} [{fmt.format(min(values))}–{fmt.format(max(values))}]"


def main(path):
    rows = defaultdict(lambda: defaultdict(list))
    for line in open(path):
        line = line.strip()
        if not line:
            continue
        run = json.loads(line)
        figures = run["harness"]["figures"]
        row = rows[run["setup"]]
        row["deliveries"].append(figures.get("deliveries_per_s", 0))
        row["p50"].append(figures.get("latency_p50_ms", 0))
        row["p99"].append(figures.get("latency_p99_ms", 0))
        row["lost"].append(figures.get("lost", 0))
        shards, bridge, nats, other = cpu_deltas(run)
        total = max(shards + bridge + nats + other, 1)
        row["bridge_share"].append(100 * bridge / total)
        row["nats_share"].append(100 * nats / total)
        row["server_ms"].append(total)
    setups = list(rows)
    print("| figure | " + " | ".join(setups) + " |")
    print("|---|" + "---|" * len(setups))
    lines = [
        ("deliveries/s", "deliveries", "{:,.0f}"),
        ("latency p50 (ms)", "p50", "{:.1f}"),
        ("latency p99 (ms)", "p99", "{:.1f}"),
        ("lost", "lost", "{:,.0f}"),
        ("server CPU used (ms, all threads)", "server_ms", "{:,.0f}"),
        ("bridge threads' share of it (%)", "bridge_share", "{:.1f}"),
        ("nats-server's share (%)", "nats_share", "{:.1f}"),
    ]
    for label, key, fmt in lines:
        print(f"| {label} | " + " | ".join(cell(rows[s][key], fmt) for s in setups) + " |")
    if len(setups) == 2:
        a, b = (statistics.median(rows[s]["deliveries"]) for s in setups)
        if a:
            print(f"\n{setups[1]} delivers {100 * b / a:.0f}% of {setups[0]} (medians).")


if __name__ == "__main__":
    main(sys.argv[1])
