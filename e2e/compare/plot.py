#!/usr/bin/env python3
"""Draws target/bench/compare.json (written by bench-compare) into compare.png: per case, the
created->Ready latency distribution of each system (every sandbox of every repeat, as an
empirical CDF) and the throughput of each system beside its bare-client ceiling.

    plot.py [compare.json [compare.png]]

Needs matplotlib (make bench-compare installs it into ~/.cache/palisade/venv-bench).
"""
import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"palisade": "#1f77b4", "agent-sandbox": "#d62728"}


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "target/bench/compare.json")
    dst = Path(sys.argv[2] if len(sys.argv) > 2 else src.with_suffix(".png"))
    doc = json.loads(src.read_text())
    runs = doc["runs"]
    cases = list(dict.fromkeys(r["case"] for r in runs))
    systems = list(dict.fromkeys(r["system"] for r in runs))
    if not cases:
        print("plot.py: no runs in", src, file=sys.stderr)
        return 1

    fig, axes = plt.subplots(
        len(cases), 2, figsize=(12, 3.2 * len(cases)), squeeze=False,
        gridspec_kw={"width_ratios": [2, 1]},
    )
    for row, case in zip(axes, cases):
        lat_ax, tp_ax = row
        for system in systems:
            lat = sorted(
                x for r in runs
                if r["case"] == case and r["system"] == system and r["mode"] == "controller"
                for x in r.get("latencies_ms", [])
            )
            if lat:
                n = len(lat)
                lat_ax.step(lat, [(i + 1) / n for i in range(n)], where="post",
                            color=COLORS.get(system), label=f"{system} (n={n})")
            bare = sorted(
                x for r in runs
                if r["case"] == case and r["system"] == system and r["mode"] == "bare"
                for x in r.get("latencies_ms", [])
            )
            if bare:
                n = len(bare)
                lat_ax.step(bare, [(i + 1) / n for i in range(n)], where="post",
                            color=COLORS.get(system), linestyle=":", alpha=0.7,
                            label=f"{system} bare client")
        lat_ax.set_title(f"{case}: created→Ready")
        lat_ax.set_xlabel("ms")
        lat_ax.set_ylabel("fraction Ready")
        lat_ax.set_xscale("log")
        lat_ax.grid(True, which="both", alpha=0.3)
        lat_ax.legend(fontsize=7, loc="lower right")

        labels, values, lows, highs, colors = [], [], [], [], []
        for system in systems:
            for mode in ("controller", "bare"):
                tps = [r["throughput"] for r in runs
                       if r["case"] == case and r["system"] == system and r["mode"] == mode
                       and isinstance(r.get("throughput"), (int, float))]
                if not tps:
                    continue
                med = statistics.median_low(tps)
                labels.append(system if mode == "controller" else f"{system}\nbare")
                values.append(med)
                lows.append(med - min(tps))
                highs.append(max(tps) - med)
                colors.append(COLORS.get(system))
        bars = tp_ax.bar(range(len(values)), values, yerr=[lows, highs], capsize=4, color=colors)
        for bar, label in zip(bars, labels):
            if label.endswith("bare"):
                bar.set_alpha(0.45)
                bar.set_hatch("//")
        tp_ax.set_xticks(range(len(values)), labels, fontsize=7)
        tp_ax.set_title("throughput (median, min–max)")
        tp_ax.set_ylabel("sandboxes Ready / s")
        tp_ax.grid(True, axis="y", alpha=0.3)

    fig.suptitle("Palisade vs agent-sandbox v0.5.6 (local control plane, kwok nodes)")
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print(f"plot.py: wrote {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
