#!/usr/bin/python3
"""PyTorch side of rbn's benchmark: one training step or one inference pass, timed.

    /usr/bin/python3 bench/torch_baseline.py --cell bnlstm --shape smnist --mode train \
        --repeats 5 --warmup 1 --torch-threads 1 --json out.json
    /usr/bin/python3 bench/torch_baseline.py --cell lstm --shape smnist --sweep-threads --json out.json

`lstm` is torch.nn.LSTM and `gru` torch.nn.GRU (PyTorch's fused kernels; rbn bench times its
bngru and lngru against nn.GRU); the normalized LSTM cells are the plain modules of
tools/torch_cells.py (hoisted input projection, Python loop over time). A training step is forward,
loss, backward, global-norm clipping to 1.0, Adam step; inference is a no-grad forward in eval mode.

Streaming (--mode stream, --cell lstm only): torch.nn.LSTM and the nn.Linear head stepping one
step per call for --batch rows, the state (h, c) carried, as rbn's step API runs it (rbn bench
--stream): per-step times of --steps steps after --warmup steps (the one-hot inputs drawn before
the timing), median and 99th percentile, the better of torch.no_grad and torch.inference_mode.

    /usr/bin/python3 bench/torch_baseline.py --cell lstm --shape ptb --mode stream --batch 1 \
        --steps 400 --warmup 10 --sweep-threads --json out.json

Threads: Debian's PyTorch calls OpenBLAS (OpenMP build) for its matrix products. OpenBLAS keeps its
own thread count (OPENBLAS_NUM_THREADS, default: every core) whatever torch.set_num_threads says,
and ATen's own OpenMP loops follow torch.set_num_threads. On a 2-core machine
torch.set_num_threads(1) with OpenBLAS on 2 threads is the fast setting. Thread pools are sticky
within a process, so --sweep-threads runs each setting in a fresh subprocess with the environment
unchanged, and reports the best.

BLAS kernel: OpenBLAS falls back to its generic "Prescott" kernels on CPUs it does not recognize.
rbn then re-executes itself with OPENBLAS_CORETYPE set (src/util/platform.cpp); --blas-core auto
(the default) does the same here so that both sides use the same kernels; --blas-core keep leaves
OpenBLAS's own choice. The JSON reports the core in use.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

SHAPES = {
    # name: T, N, C (input features), H, K (classes), head
    "smnist": dict(T=784, N=100, C=1, H=100, K=10, head="classify"),
    "ptb": dict(T=100, N=64, C=50, H=1000, K=50, head="lm"),
    "text8": dict(T=180, N=128, C=27, H=2000, K=27, head="lm"),
}
CELLS = ("lstm", "bnlstm", "bnx", "bnx-seq", "lnlstm", "gru")
FUSED = {"lstm": "torch.nn.LSTM", "gru": "torch.nn.GRU"}
FALLBACK_CORES = ("Prescott", "Core2", "Nehalem", "Sandybridge")
REEXEC_MARK = "RBN_TORCH_BASELINE_REEXEC"


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def preferred_core():
    """The core rbn would pick for this CPU (mirrors src/util/platform.cpp)."""
    fl = cpu_flags()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= fl:
        return "SkylakeX"
    if {"avx2", "fma"} <= fl:
        return "Haswell"
    return None


def openblas_info():
    """OpenBLAS as loaded by torch in this process: core, config, threads (None if not found)."""
    import ctypes
    path = None
    with open("/proc/self/maps") as f:
        for line in f:
            name = line.split()[-1]
            if "libopenblas" in os.path.basename(name):
                path = name
                break
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    lib.openblas_get_corename.restype = ctypes.c_char_p
    lib.openblas_get_config.restype = ctypes.c_char_p
    return {"library": path, "core": lib.openblas_get_corename().decode(),
            "config": lib.openblas_get_config().decode(),
            "threads": int(lib.openblas_get_num_threads())}


def maybe_reexec_for_blas_core(args):
    """--blas-core: set OPENBLAS_CORETYPE before OpenBLAS loads, which needs a fresh process."""
    if args.blas_core == "keep" or os.environ.get(REEXEC_MARK):
        return
    if args.blas_core == "auto":
        if os.environ.get("OPENBLAS_CORETYPE"):
            return
        import torch
        torch.ones(8, 8) @ torch.ones(8, 8)  # make sure OpenBLAS is loaded
        info = openblas_info()
        want = preferred_core()
        if info is None or want is None or info["core"] not in FALLBACK_CORES:
            return
    else:
        want = args.blas_core
        if os.environ.get("OPENBLAS_CORETYPE") == want:
            return
    env = dict(os.environ, OPENBLAS_CORETYPE=want, **{REEXEC_MARK: "1"})
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env)


def build(args, shape):
    import torch
    from torch import nn

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
    from torch_cells import RecurrentStack

    T, N, C, H, K = shape["T"], shape["N"], shape["C"], shape["H"], shape["K"]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            if args.cell == "lstm":
                self.rnn = nn.LSTM(C, H)  # fused ATen kernel
            elif args.cell == "gru":
                self.rnn = nn.GRU(C, H)  # fused ATen kernel
            else:
                self.rnn = RecurrentStack(args.cell, C, H, 1, t_max=T)
            self.head = nn.Linear(H, K)

        def forward(self, x):
            y, _ = self.rnn(x)
            if shape["head"] == "classify":
                return self.head(y[-1])  # last step -> classes
            return self.head(y)          # per-step softmax over symbols

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = Net()
    if shape["head"] == "classify":
        x = torch.rand(T, N, C, generator=g)  # pixels in [0, 1]
        target = torch.randint(0, K, (N,), generator=g)
    else:
        ids = torch.randint(0, C, (T, N), generator=g)
        x = torch.nn.functional.one_hot(ids, C).float()
        target = torch.randint(0, K, (T, N), generator=g)
    return model, x, target


def quantile(v, q):
    """Nearest-rank q-quantile (as rbn bench computes it)."""
    v = sorted(v)
    i = max(1, math.ceil(q * len(v)))
    return v[min(len(v), i) - 1]


def stream_one(args, shape):
    """Per-step latency of nn.LSTM + head, one step per call, under each no-grad mode."""
    import torch
    from torch import nn

    T, C, H, K, N = shape["T"], shape["C"], shape["H"], shape["K"], args.batch
    torch.manual_seed(0)
    rnn, head = nn.LSTM(C, H).eval(), nn.Linear(H, K).eval()
    g = torch.Generator().manual_seed(0)
    steps = args.warmup + args.steps
    ids = torch.randint(0, C, (steps, 1, N), generator=g)
    xs = [torch.nn.functional.one_hot(ids[t], C).float() for t in range(steps)]  # [1,N,C] each
    best = None
    for name, ctx in (("no_grad", torch.no_grad), ("inference_mode", torch.inference_mode)):
        with ctx():
            state = (torch.zeros(1, N, H), torch.zeros(1, N, H))
            times = []
            for t in range(steps):
                x = xs[t]
                t0 = time.perf_counter()
                y, state = rnn(x, state)
                head(y)
                dt = (time.perf_counter() - t0) * 1e3
                if t >= args.warmup:
                    times.append(dt)
        r = {"grad_mode": name, "median_ms": statistics.median(times),
             "p99_ms": quantile(times, 0.99), "times_ms": times}
        if best is None or r["median_ms"] < best["median_ms"]:
            best = r
    return best


def run_one(args):
    import torch

    torch.set_num_threads(args.torch_threads)
    shape = SHAPES[args.shape]
    if args.mode == "stream":
        r = stream_one(args, shape)
        return {"tool": "torch_baseline", "cell": "lstm", "implementation": "torch.nn.LSTM",
                "shape": args.shape, **{k: shape[k] for k in ("C", "H", "K")}, "mode": "stream",
                "N": args.batch, "steps": args.steps, "warmup": args.warmup, "repeats": args.steps,
                **r, "min_ms": min(r["times_ms"]), "torch_threads": torch.get_num_threads(),
                "torch_version": torch.__version__, "openblas": openblas_info(),
                "env": {k: os.environ.get(k) for k in
                        ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_CORETYPE")},
                "cpu_count": os.cpu_count()}
    model, x, target = build(args, shape)
    K = shape["K"]
    loss_fn = torch.nn.CrossEntropyLoss()
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)

    def train_step():
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = loss_fn(logits.reshape(-1, K), target.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    def infer_step():
        with torch.no_grad():
            model(x)

    if args.mode == "train":
        model.train()
        step = train_step
    else:
        model.eval()
        step = infer_step
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1e3)
    return {
        "tool": "torch_baseline",
        "cell": args.cell,
        "implementation": FUSED.get(args.cell, "tools/torch_cells.py"),
        "shape": args.shape,
        **{k: shape[k] for k in ("T", "N", "C", "H", "K", "head")},
        "mode": args.mode,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "times_ms": times,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_version": torch.__version__,
        "openblas": openblas_info(),
        "env": {k: os.environ.get(k) for k in
                ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_CORETYPE")},
        "cpu_count": os.cpu_count(),
    }


def sweep(args):
    """Each thread setting in its own process (thread pools do not reset within one)."""
    results = []
    for k in (1, 2):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "r.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--cell", args.cell,
                   "--shape", args.shape, "--mode", args.mode, "--repeats", str(args.repeats),
                   "--warmup", str(args.warmup), "--torch-threads", str(k),
                   "--blas-core", args.blas_core, "--batch", str(args.batch),
                   "--steps", str(args.steps), "--json", out]
            subprocess.run(cmd, check=True, env=os.environ.copy())
            with open(out) as f:
                results.append(json.load(f))
    best = min(results, key=lambda r: r["median_ms"])
    report = dict(best)
    report["sweep"] = [{"torch_threads": r["torch_threads"], "median_ms": r["median_ms"],
                        "times_ms": r["times_ms"]} for r in results]
    return report


def main():
    ap = argparse.ArgumentParser(description="PyTorch baseline for rbn's benchmark")
    ap.add_argument("--cell", choices=CELLS, default="lstm")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="smnist")
    ap.add_argument("--mode", choices=("train", "infer", "stream"), default="train")
    ap.add_argument("--batch", type=int, default=1, help="--mode stream: rows per step")
    ap.add_argument("--steps", type=int, default=400, help="--mode stream: timed steps")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch.set_num_threads (OpenBLAS keeps its own count)")
    ap.add_argument("--sweep-threads", action="store_true",
                    help="try torch threads 1 and 2, one subprocess each; report the best")
    ap.add_argument("--blas-core", default="auto",
                    help="auto (rbn's choice when OpenBLAS falls back to a generic core), keep, "
                         "or an OPENBLAS_CORETYPE name")
    ap.add_argument("--json", help="write the result here (default: stdout only)")
    args = ap.parse_args()
    if args.repeats < 1 or args.warmup < 0 or args.torch_threads < 1:
        ap.error("--repeats >= 1, --warmup >= 0, --torch-threads >= 1")
    if args.mode == "stream" and (args.cell != "lstm" or args.batch < 1 or args.steps < 1):
        ap.error("--mode stream: --cell lstm (nn.LSTM), --batch >= 1, --steps >= 1")

    if args.sweep_threads:
        report = sweep(args)
    else:
        maybe_reexec_for_blas_core(args)
        report = run_one(args)
    text = json.dumps(report, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    summary = (f"{report['cell']} {report['shape']} {report['mode']}: median "
               f"{report['median_ms']:.3f} ms over {report['repeats']} "
               f"(torch threads {report['torch_threads']}, "
               f"BLAS {(report['openblas'] or {}).get('core')})")
    print(summary, file=sys.stderr)
    if not args.json:
        print(text)


if __name__ == "__main__":
    main()
