#!/usr/bin/env python3
"""Turns load-tests/run's results.jsonl into report.md and latency.svg
(no third-party packages: the SVG is written by hand).

Each variant block holds N alternating rounds of nginx and waymark at full
load (wrk), then N alternating rounds of each at half its median rate (sent
open loop by load-tests/pace, latency counted from when a request was due). Figures are medians over
the rounds; a ratio is the median of the per-round ratios, so a drift of the
machine between rounds cancels out. Every ratio to nginx is shown beside the
server's CPU time per request, at full load and at half rate, and its ratio
to nginx's: on a shared VM it is the steadier figure."""
import json
import platform
import statistics
import sys
import time
from pathlib import Path

rows = [json.loads(l) for l in Path(sys.argv[1]).read_text().splitlines() if l.strip()]
out = Path(sys.argv[2])
runs = [r for r in rows if "server" in r]
soak = next((r["soak"] for r in rows if "soak" in r), None)
hits = {r["block"]: r["hits"] for r in rows if "hits" in r}
catch_ups = [r["catch_up"] for r in rows if "catch_up" in r]
mixes = {r["block"]: r for r in rows if "mix" in r}
blocks = list(dict.fromkeys(r["block"] for r in runs))
ROUTES = ("pixel", "click")


def pick(block, server, route, mode):
    return sorted((r for r in runs if (r["block"], r["server"], r["route"], r["mode"]) == (block, server, route, mode)),
                  key=lambda r: r["round"])


def med(rs, field):
    return statistics.median(r["result"][field] for r in rs) if rs else float("nan")


def summary(block, server, route):
    full, half = pick(block, server, route, "max"), pick(block, server, route, "half")
    return {
        "rps": med(full, "rps"),
        "p50": med(full, "p50_us") / 1000,
        "p99": med(full, "p99_us") / 1000,
        "p999": med(full, "p999_us") / 1000,
        "half_p99": med(half, "p99_us") / 1000,
        "half_rps": med(half, "rps"),
        "cpu_us": statistics.median(r["cpu_us_per_request"] for r in half) if half else float("nan"),
        "cpu_max_us": statistics.median(r["cpu_us_per_request"] for r in full) if full else float("nan"),
        "errors": sum(r["result"]["errors"] for r in full + half),
        "rounds": full,
    }


def ratio(block, route):
    ours = {r["round"]: r["result"]["rps"] for r in pick(block, f"waymark-{block}", route, "max")}
    ref = {r["round"]: r["result"]["rps"] for r in pick(block, "nginx", route, "max")}
    per_round = [ours[k] / ref[k] for k in ours if ref.get(k)]
    return statistics.median(per_round) if per_round else float("nan"), per_round


cpu = "unknown CPU"
try:
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
except (OSError, StopIteration):
    pass
rounds = max((r["round"] for r in runs), default=0)
lines = [
    "# Load test report",
    "",
    f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu}, {platform.machine()}; each server pinned to "
    f"the same single core, the load generator on the other; {rounds} alternating rounds of nginx and waymark per route "
    "at full load (wrk) and at half of each one's median rate (load-tests/pace, open loop), medians shown.",
    "",
    "| variant | server | route | rps | ratio to nginx (per round) | CPU µs per request at full load (vs nginx) | CPU µs per request at half rate (vs nginx) | p50 ms | p99 ms | p99.9 ms | p99 ms at half rate (rps reached) | errors |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
]


def cpu_vs(ours, ref):
    return f"{ours:.1f} ({ours / ref:.2f}x)" if ref == ref and ref > 0 else f"{ours:.1f}"

for block in blocks:
    for route in ROUTES:
        for server in ("nginx", f"waymark-{block}"):
            s, ref = summary(block, server, route), summary(block, "nginx", route)
            if not s["rounds"]:
                continue
            if server == "nginx":
                shown = "1.00x"
            else:
                r, per = ratio(block, route)
                shown = f"**{r:.2f}x** ({', '.join(f'{x:.2f}' for x in per)})"
            lines.append(
                f"| {block} | {server} | {route} | {s['rps']:.0f} | {shown} | {cpu_vs(s['cpu_max_us'], ref['cpu_max_us'])} | "
                f"{cpu_vs(s['cpu_us'], ref['cpu_us'])} | {s['p50']:.3f} | {s['p99']:.3f} | "
                f"{s['p999']:.3f} | {s['half_p99']:.3f} ({s['half_rps']:.0f}) | {s['errors']} |"
            )

# The targets, checked against what was measured.
targets = []
for block in blocks:
    for route in ROUTES:
        r, _ = ratio(block, route)
        s, ref = summary(block, f"waymark-{block}", route), summary(block, "nginx", route)
        if r == r:
            targets.append((f"{block} {route}: ≥ 0.8x nginx's rps",
                            f"{r:.2f}x (CPU µs per request {s['cpu_max_us']:.1f} vs nginx's {ref['cpu_max_us']:.1f} at full load, "
                            f"{s['cpu_us']:.1f} vs {ref['cpu_us']:.1f} at half rate)", r >= 0.8))
        if s["half_p99"] == s["half_p99"]:
            targets.append((f"{block} {route}: p99 ≤ 1 ms at half rate",
                            f"{s['half_p99']:.3f} ms (nginx {ref['half_p99']:.3f} ms)", s["half_p99"] <= 1.0))
for block, h in hits.items():
    targets.append((f"{block}: no hit dropped on the way to the sink", f"{h['dropped']} of {h['recorded']}", h["dropped"] == 0))
if "kafka" in blocks and "kafka-down" in blocks:
    for route in ROUTES:
        up, down = summary("kafka", "waymark-kafka", route), summary("kafka-down", "waymark-kafka-down", route)
        rr = down["rps"] / up["rps"]
        pr = down["half_p99"] / up["half_p99"]
        targets.append((f"{route}: broker down vs up, rps within 10%", f"{rr:.2f}x", rr >= 0.9))
        targets.append((f"{route}: broker down vs up, p99 at half rate within 10%", f"{pr:.2f}x", pr <= 1.1))
if catch_ups:
    behind = [c for c in catch_ups if c["delivered"] < c["spooled"]]
    targets.append(("kafka: every spooled event acknowledged by the brokers after each run",
                    f"{len(catch_ups) - len(behind)} of {len(catch_ups)} runs", not behind))
if soak:
    mib = soak["max_rss_kib"] / 1024
    targets.append((f"soak: peak RSS < 128 MiB over {soak['events']} events", f"{mib:.1f} MiB", mib < 128))
if mixes:
    lines += ["", "## Request mixes"]
    if set(blocks) - set(mixes):
        lines += ["", f"{', '.join(b for b in blocks if b not in mixes)}: 20,000 messages, one token each, and the ten "
                  "user agents of load-tests/user-agents.txt, picked at random per request."]
    for block, m in mixes.items():
        mix = m["mix"]
        by = ", ".join(f"{n} {v}" for v, n in mix["by_verdict"].items())
        short = "" if mix["user_agents"] >= mix["wanted"] else (
            f" **Only {mix['user_agents']} of the {mix['wanted']} wanted: the corpus has no more distinct user agents;"
            " the figures are not those of the full mix.**")
        lines.append("")
        lines.append(f"{block}: {m['messages']} messages hit again and again, one token each, with {mix['user_agents']} "
                     f"distinct real user agents ({by}) sampled by load-tests/hard-mix from {mix['corpus']} "
                     f"({mix['corpus_distinct']} distinct), picked at random per request; nginx gets the same requests.{short}")
lines += ["", "## Targets", "", "| target | measured | met |", "|---|---:|---|"]
lines += [f"| {name} | {value} | {'yes' if ok else 'NO'} |" for name, value, ok in targets]
if catch_ups:
    lines += ["", "## Kafka delivery", "",
              "The Kafka threads run in the idle scheduling class: requests come first, and under full load delivery "
              "falls behind while the spool holds the events. Seconds from the end of each waymark run until the "
              "brokers had acknowledged as many events as were spooled:", "",
              "| route | load | round | caught up after (s) | acknowledged / spooled |", "|---|---|---:|---:|---:|"]
    lines += [f"| {c['route']} | {c['mode']} | {c['round']} | {c['seconds']:.1f} | {c['delivered']} / {c['spooled']} |"
              for c in catch_ups]
lines += ["", "![latency](latency.svg)", ""]
(out / "report.md").write_text("\n".join(lines))

# A grouped bar chart of p50/p99/p99.9 at full load per variant, server and route.
bars = []
for block in blocks:
    for route in ROUTES:
        for server in ("nginx", f"waymark-{block}"):
            s = summary(block, server, route)
            if s["rounds"]:
                label = f"{server} {route}" if server != "nginx" else f"nginx {route} ({block})"
                bars.append((label, s["p50"], s["p99"], s["p999"]))
width, row_h, left = 960, 22, 260
height = 60 + row_h * len(bars) * 3
peak = max([b[3] for b in bars] + [0.001])
colors = {"p50": "#4c78a8", "p99": "#f58518", "p99.9": "#e45756"}
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
       '<rect width="100%" height="100%" fill="white"/>',
       '<text x="10" y="20" font-size="15">Latency at full load (ms, medians of the rounds), one core each</text>']
y = 40
for label, *vals in bars:
    for (name, color), v in zip(colors.items(), vals):
        w = (width - left - 80) * v / peak
        svg.append(f'<text x="10" y="{y + 13}">{label} {name}</text>')
        svg.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{row_h - 5}" fill="{color}"/>')
        svg.append(f'<text x="{left + w + 4:.1f}" y="{y + 13}">{v:.2f}</text>')
        y += row_h
svg.append("</svg>")
(out / "latency.svg").write_text("\n".join(svg))
