#!/usr/bin/python3
"""Learning curves from one or more rbn metrics.jsonl files (rbn plot calls this).

    /usr/bin/python3 tools/plot_metrics.py runs/a/metrics.jsonl runs/b/metrics.jsonl \
        --out curves.png [--metric auto|bpc|accuracy|loss] [--split valid] [--labels a,b]

Validation points come from evaluations with population statistics; the training curve (thin) is
the running mean over each logging interval.
"""
import argparse
import json
import os
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                sys.exit(f"{path}:{n}: not a JSON line")
    if not rows:
        sys.exit(f"{path}: no metrics")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--metric", default="auto", choices=["auto", "bpc", "accuracy", "mse", "loss"])
    ap.add_argument("--labels", default="")
    ap.add_argument("--title", default="")
    ap.add_argument("--no-train", action="store_true", help="validation curves only")
    args = ap.parse_args()
    labels = args.labels.split(",") if args.labels else []
    runs = [load(p) for p in args.files]
    metric = args.metric
    if metric == "auto":
        held = {k for run in runs for r in run for k in r}
        metric = next((k for k in ("bpc", "accuracy", "mse") if k in held), "loss")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (path, rows) in enumerate(zip(args.files, runs)):
        label = labels[i] if i < len(labels) else os.path.basename(os.path.dirname(os.path.abspath(path)))
        color = colors[i % len(colors)]
        tr = [(r["step"], r[metric]) for r in rows if r.get("split") == "train" and metric in r]
        va = [(r["step"], r[metric]) for r in rows if r.get("split") == "valid" and metric in r]
        if tr and not args.no_train:
            ax.plot(*zip(*tr), color=color, alpha=0.35, linewidth=0.8, label=f"{label} (train)")
        if va:
            ax.plot(*zip(*va), color=color, marker="o", markersize=3, linewidth=1.6,
                    label=f"{label} (valid)")
    ax.set_xlabel("training steps")
    for path, rows in zip(args.files, runs):
        if not any(metric in r for r in rows):
            sys.exit(f"{path}: no {metric} values")
    ax.set_ylabel({"bpc": "bits per character", "accuracy": "accuracy", "mse": "mean squared error",
                   "loss": "loss"}[metric])
    # long titles wrap instead of running off the figure
    ax.set_title(textwrap.fill(args.title or f"{metric} against training steps", 70), fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
