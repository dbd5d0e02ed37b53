#!/usr/bin/python3
"""The population statistics of a batch-normalized checkpoint across time steps (the paper's
observation that they settle to stationary values after the first steps).

    /usr/bin/python3 tools/plot_popstats.py CHECKPOINT.safetensors --out popstats.png [--units 6]

Reads the safetensors file directly (numpy): for each normalization of layer 0 (bn_x, bn_h, bn_c)
that has per-step statistics [T_max, F], draws the mean and the variance of a few features
against t, plus the spread over all features (median, 10-90% band) of |stat_t - stat_T|/...
"""
import argparse
import json
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        sys.exit(f"{path}: not a safetensors file (truncated)")
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, v in header.items():
        if name == "__metadata__" or v["dtype"] not in ("F32", "F64"):
            continue
        s, e = v["data_offsets"]
        out[name] = np.frombuffer(data[s:e], dtype=np.float32 if v["dtype"] == "F32" else np.float64).reshape(v["shape"])
    return out, header.get("__metadata__", {})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--out", required=True)
    ap.add_argument("--units", type=int, default=6, help="features drawn per statistic")
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, meta = read_safetensors(a.checkpoint)
    norms = [n for n in ("bn_x", "bn_h", "bn_c")
             if f"rnn.{a.layer}.{n}.running_mean" in t and t[f"rnn.{a.layer}.{n}.running_mean"].ndim == 2
             and t[f"rnn.{a.layer}.{n}.running_mean"].shape[0] > 1]
    if not norms:
        sys.exit(f"{a.checkpoint}: no per-step population statistics in layer {a.layer}")
    fig, axes = plt.subplots(2, len(norms), figsize=(4.2 * len(norms), 6.4), squeeze=False)
    rng = np.random.default_rng(0)
    summary = {}
    for j, n in enumerate(norms):
        mean = t[f"rnn.{a.layer}.{n}.running_mean"].astype(np.float64)
        var = t[f"rnn.{a.layer}.{n}.running_var"].astype(np.float64)
        T, F = mean.shape
        # features that vary (an all-zero input column has nothing to show)
        live = np.where(var.std(axis=0) > 0)[0]
        pick = rng.choice(live, size=min(a.units, len(live)), replace=False) if len(live) else []
        steps = np.arange(T)
        for k in pick:
            axes[0][j].plot(steps, mean[:, k], lw=0.8)
            axes[1][j].plot(steps, var[:, k], lw=0.8)
        axes[0][j].set_title(f"{n}: population mean")
        axes[1][j].set_title(f"{n}: population variance")
        axes[1][j].set_yscale("log")
        for r in (0, 1):
            axes[r][j].set_xlabel("time step t")
            axes[r][j].grid(alpha=0.3)
        # how far each step is from the average of the last quarter, relative to that average's scale
        tail = var[3 * T // 4:].mean(axis=0)
        dev = np.abs(var - tail) / (np.abs(tail) + 1e-8)
        summary[n] = {f"t={s}": float(np.median(dev[s])) for s in (0, 1, 2, 5, 10, 20, 50, 100, T // 2) if s < T}
    fig.suptitle(a.title or f"population statistics across time: {a.checkpoint}", fontsize=10)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(json.dumps({"checkpoint": a.checkpoint,
                      "median |var_t - var_tail| / var_tail": summary}, indent=1))


if __name__ == "__main__":
    main()
