#!/usr/bin/python3
"""rbn.torch's cost over rbn's own C++ path, and torch.nn.LSTM beside it: forward + backward.

    PYTHONPATH=build/python /usr/bin/python3 bench/torch_module.py --shapes smnist,ptb \
        --cells lstm,bnlstm,lnlstm --repeats 5 --json build/torch_module.json

Per shape (bench/torch_baseline.py's: smnist T=784 N=100 C=1 H=100; ptb T=100 N=64 C=50 H=1000)
and cell, three timings of one training-mode forward + backward of the recurrent stack alone
(no head, no optimizer; dL/dy given), median over --repeats after --warmup:
  stack    rbn.Stack directly: forward(x) then zero_grad() and backward(dy) on NumPy arrays
  module   rbn.torch's module: y, _ = m(x); y.backward(dy) (parameter gradients into .grad)
  nn.LSTM  torch.nn.LSTM, the same call (lstm only; the best of --torch-threads, each setting in
           a fresh process because thread pools are sticky)
and the inference pair (eval mode under torch.no_grad vs Stack.forward(train=False,
need_backward=False)). --copy-check adds the module's parameter sync with every parameter changed in
place (so copied into the stack) against unchanged (version checks only), on the last shape. stack and module run interleaved in one process with rbn's thread default,
so load from other processes hits both alike; overhead = module / stack - 1 (ratio of medians).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import rbn  # first: it picks OpenBLAS's kernel before torch loads it (rbn/__init__.py)
import numpy as np
import torch

import rbn.torch as rt

SHAPES = {"smnist": dict(T=784, N=100, C=1, H=100), "ptb": dict(T=100, N=64, C=50, H=1000),
          "tiny": dict(T=10, N=4, C=8, H=32)}  # tiny: the fixed per-call cost
CLASSES = {"lstm": rt.LSTM, "bnlstm": rt.BNLSTM, "bnx": rt.BNxLSTM, "lnlstm": rt.LNLSTM}


def interleaved(fns, repeats, warmup):
    """Run every function once per round, `warmup` + `repeats` rounds: name -> [seconds]."""
    out = {name: [] for name in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            if r >= warmup:
                out[name].append(time.perf_counter() - t)
    return out


def rbn_case(cell, shape, repeats, warmup):
    s = SHAPES[shape]
    T, N, C, H = s["T"], s["N"], s["C"], s["H"]
    torch.manual_seed(0)
    kw = {} if cell in ("lstm", "lnlstm") else {"t_max": T}
    m = CLASSES[cell](C, H, **kw)
    st = rbn.Stack(cell, C, H, 1, t_max=T)
    st_sd = m.state_dict_rbn()
    for name in st.param_names + st.buffer_names:
        st.set(name, st_sd[name].numpy())
    x = torch.randn(T, N, C)
    dy = torch.randn(T, N, H)
    xn, dyn = x.numpy(), dy.numpy()

    def module_train():
        y, _ = m(x)
        y.backward(dy)
        m.zero_grad(set_to_none=True)

    def stack_train():
        st.forward(xn, train=True)
        st.zero_grad()
        st.backward(dy=dyn)

    def module_infer():
        with torch.no_grad():
            m(x)

    def stack_infer():
        st.forward(xn, train=False, need_backward=False)

    m.train()
    tr = interleaved({"stack": stack_train, "module": module_train}, repeats, warmup)
    m.eval()
    inf = interleaved({"stack": stack_infer, "module": module_infer}, repeats, warmup)
    return tr, inf


def copy_case(cell, shape, repeats, warmup):
    """What skipping the copy of unchanged parameters saves: the module's parameter sync (the
    step's only copy into the stack) with the parameters unchanged (version checks only) and with
    every parameter changed in place before it (p.add_(0) bumps its version, as an optimizer step
    does; the bump itself is outside the timing)."""
    s = SHAPES[shape]
    torch.manual_seed(0)
    kw = {} if cell in ("lstm", "lnlstm") else {"t_max": s["T"]}
    m = CLASSES[cell](s["C"], s["H"], **kw)
    params = [getattr(m, n) for n in m._param_names]
    state = m._state_for(params[0].dtype)
    m._sync_in(state, params)
    out = {"unchanged": [], "copied": []}
    for r in range(warmup + repeats):
        for what in out:
            if what == "copied":
                with torch.no_grad():
                    for p in params:
                        p.add_(0.0)
            t = time.perf_counter()
            m._sync_in(state, params)
            if r >= warmup:
                out[what].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in out.items()}


def nn_lstm_case(shape, repeats, warmup, threads):
    torch.set_num_threads(threads)
    s = SHAPES[shape]
    torch.manual_seed(0)
    m = torch.nn.LSTM(s["C"], s["H"])
    x = torch.randn(s["T"], s["N"], s["C"])
    dy = torch.randn(s["T"], s["N"], s["H"])

    def train():
        y, _ = m(x)
        y.backward(dy)
        m.zero_grad(set_to_none=True)

    def infer():
        with torch.no_grad():
            m(x)

    return interleaved({"train": train}, repeats, warmup)["train"], \
        interleaved({"infer": infer}, repeats, warmup)["infer"]


def nn_lstm_best(shape, repeats, warmup, thread_list):
    """Each thread setting in a fresh process; the best median (train), its infer beside it."""
    best = None
    for t in thread_list:
        cmd = [sys.executable, os.path.abspath(__file__), "--nn-lstm-only", shape,
               "--torch-threads", str(t), "--repeats", str(repeats), "--warmup", str(warmup)]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        r["torch_threads"] = t
        if best is None or r["train_median"] < best["train_median"]:
            best = r
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="smnist,ptb")
    ap.add_argument("--cells", default="lstm,bnlstm,lnlstm")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--torch-threads", default=",".join(str(t) for t in range(1, os.cpu_count() + 1)))
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--no-table", action="store_true", help="skip the timing table")
    ap.add_argument("--copy-check", action="store_true",
                    help="also time the parameter sync: every parameter changed (copied) vs not")
    ap.add_argument("--nn-lstm-only", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.nn_lstm_only:
        tr, inf = nn_lstm_case(a.nn_lstm_only, a.repeats, a.warmup, int(a.torch_threads))
        print(json.dumps({"train_median": statistics.median(tr),
                          "infer_median": statistics.median(inf)}))
        return
    rows = []
    print(f"{'shape':7} {'cell':7} {'stack ms':>9} {'module ms':>9} {'overhead':>8}   "
          f"{'infer stack':>11} {'infer module':>12} {'overhead':>8}   {'nn.LSTM ms':>10} "
          f"{'threads':>7}")
    for shape in [] if a.no_table else a.shapes.split(","):
        ref = None
        if "lstm" in a.cells.split(","):
            ref = nn_lstm_best(shape, a.repeats, a.warmup,
                               [int(t) for t in a.torch_threads.split(",")])
        for cell in a.cells.split(","):
            tr, inf = rbn_case(cell, shape, a.repeats, a.warmup)
            row = dict(shape=shape, cell=cell, repeats=a.repeats,
                       stack_train=statistics.median(tr["stack"]),
                       module_train=statistics.median(tr["module"]),
                       stack_infer=statistics.median(inf["stack"]),
                       module_infer=statistics.median(inf["module"]))
            row["train_overhead"] = row["module_train"] / row["stack_train"] - 1
            row["infer_overhead"] = row["module_infer"] / row["stack_infer"] - 1
            if cell == "lstm" and ref:
                row.update(nn_lstm_train=ref["train_median"], nn_lstm_infer=ref["infer_median"],
                           nn_lstm_torch_threads=ref["torch_threads"])
            rows.append(row)
            nn_s = f"{1e3 * row['nn_lstm_train']:10.2f} {row['nn_lstm_torch_threads']:7d}" \
                if "nn_lstm_train" in row else f"{'-':>10} {'-':>7}"
            print(f"{shape:7} {cell:7} {1e3 * row['stack_train']:9.2f} "
                  f"{1e3 * row['module_train']:9.2f} {100 * row['train_overhead']:+7.1f}%   "
                  f"{1e3 * row['stack_infer']:11.2f} {1e3 * row['module_infer']:12.2f} "
                  f"{100 * row['infer_overhead']:+7.1f}%   {nn_s}", flush=True)
    if a.copy_check:
        shape = a.shapes.split(",")[-1]
        for cell in a.cells.split(","):
            r = copy_case(cell, shape, a.repeats, a.warmup)
            r.update(shape=shape, cell=cell)
            rows.append(r)
            print(f"{shape} {cell}: parameter sync {1e3 * r['unchanged']:.3f} ms unchanged, "
                  f"{1e3 * r['copied']:.3f} ms with every parameter copied in", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"command": " ".join(sys.argv), "omp_threads": os.environ.get(
                "OMP_NUM_THREADS", "default"), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
