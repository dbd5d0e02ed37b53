#!/usr/bin/python3
"""Figure 1 of Cooijmans et al.: ||dL/dh_t|| against t at initialization, one curve per initial
gamma, log scale; written by `rbn reproduce gradflow`."""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with open(args.json) as f:
        d = json.load(f)
    cells = list(d["curves"])
    fig, axes = plt.subplots(1, len(cells), figsize=(6 * len(cells), 4.2), dpi=120, squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, cell in zip(axes[0], cells):
        curves = d["curves"][cell]
        gammas = sorted(curves, key=float)
        for i, g in enumerate(gammas):
            ys = curves[g]
            ax.plot(range(1, len(ys) + 1), ys, color=cmap(i / max(1, len(gammas) - 1)),
                    linewidth=1.2, label=f"γ₀ = {g}")
        ax.set_yscale("log")
        ax.set_xlabel("time step t")
        ax.set_ylabel("‖∂loss/∂h_t‖ (batch mean)")
        ax.set_title(f"{cell}: gradient flow at initialization")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"{d.get('data', '')}, H={d.get('hidden')}, batch {d.get('batch_size')}", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
