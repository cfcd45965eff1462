#!/usr/bin/env python3
"""Turns load-tests/run's results.jsonl into report.md and latency.svg
(no third-party packages: the SVG is written by hand)."""
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

rows = [json.loads(l) for l in Path(sys.argv[1]).read_text().splitlines() if l.strip()]
out = Path(sys.argv[2])
runs = [r for r in rows if "server" in r]
soak = next((r["soak"] for r in rows if "soak" in r), None)


def get(server, route, mode):
    return next((r["result"] for r in runs if r["server"] == server and r["route"] == route and r["mode"] == mode), None)


cpu = "unknown CPU"
try:
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
except (OSError, StopIteration):
    pass
servers = sorted({r["server"] for r in runs if r["server"] != "nginx"})
lines = [
    "# Load test report",
    "",
    f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu}, {platform.machine()}; each server pinned to one core, wrk on the other.",
    "",
    "| server | route | rps | ratio to nginx | p50 ms | p99 ms | p99.9 ms | p99 ms at half rate | errors |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|",
]
for route in ("pixel", "click"):
    ref = get("nginx", route, "max")
    for server in ["nginx"] + servers:
        m, h = get(server, route, "max"), get(server, route, "half")
        if not m:
            continue
        ratio = m["rps"] / ref["rps"] if ref else float("nan")
        lines.append(
            f"| {server} | {route} | {m['rps']:.0f} | {ratio:.2f}x | {m['p50_us']/1000:.3f} | {m['p99_us']/1000:.3f} | "
            f"{m['p999_us']/1000:.3f} | {(h['p99_us']/1000 if h else float('nan')):.3f} | {m['errors']} |"
        )
if soak:
    lines += ["", f"Soak: {soak['events']} events with distinct message ids and user agents; peak RSS {soak['max_rss_kib']/1024:.1f} MiB."]
lines += ["", "![latency](latency.svg)", ""]
(out / "report.md").write_text("\n".join(lines))

# A grouped bar chart of p50/p99/p99.9 per server and route.
bars = []
for route in ("pixel", "click"):
    for server in ["nginx"] + servers:
        m = get(server, route, "max")
        if m:
            bars.append((f"{server} {route}", m["p50_us"], m["p99_us"], m["p999_us"]))
width, row_h, left = 900, 26, 230
height = 60 + row_h * len(bars) * 3
peak = max([b[3] for b in bars] + [1])
colors = {"p50": "#4c78a8", "p99": "#f58518", "p99.9": "#e45756"}
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
       f'<text x="10" y="20" font-size="15">Latency at full load (µs), one core each</text>']
y = 40
for label, *vals in bars:
    for (name, color), v in zip(colors.items(), vals):
        w = (width - left - 80) * v / peak
        svg.append(f'<text x="10" y="{y + 14}">{label} {name}</text>')
        svg.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{row_h - 6}" fill="{color}"/>')
        svg.append(f'<text x="{left + w + 4:.1f}" y="{y + 14}">{v}</text>')
        y += row_h
svg.append("</svg>")
(out / "latency.svg").write_text("\n".join(svg))
