#!/usr/bin/python3
"""Reference results for rbn's optimizers, gradient clipping and learning-rate schedules, from
torch.optim / torch.nn.utils / torch.optim.lr_scheduler (torch 1.13, CPU, float32).

Run with Debian's interpreter, which has torch:  /usr/bin/python3 tools/make_optim_fixtures.py
Deterministic (fixed seed, single thread). Writes tests/fixtures/optim/optim.json:

  cases[]:    optimizer, config (torch's keyword arguments; betas as beta1/beta2), params
              (name -> initial values), grads[step] (name -> gradient), after[step] (name ->
              parameters after torch's step), state (slot -> name -> torch's state after the last
              step, under torch's slot names)
  clip[]:     grads (name -> values), max_norm, norm (returned), after (name -> clipped gradients)
  schedules[]: kind, arguments, and the learning rate torch uses for each of a run of steps (or,
              for plateau, after each metric; a NaN metric is written as null)

Two parameters per case: "w" with 7 values (torch's scalar loop) and "rnn.0.bias" with 21 values
(vectorized loop plus a tail; the name has dots, as rbn's do). Floats are written with 9
significant digits, which identify a float32 exactly.
"""
import json
import math
import os

import torch

OPT_CASES = [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("sgd", dict(lr=0.05, momentum=0.5, dampening=0.1, weight_decay=0.001)),
    ("rmsprop", dict(lr=0.01)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, momentum=0.9)),
    ("rmsprop", dict(lr=0.01, centered=True, weight_decay=0.001)),
    ("rmsprop", dict(lr=0.005, alpha=0.95, eps=1e-6, momentum=0.5, centered=True)),
    ("adam", dict(lr=0.01)),
    ("adam", dict(lr=0.002, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)),
    ("adam", dict(lr=0.1, betas=(0.5, 0.9))),
]
SIZES = {"w": 7, "rnn.0.bias": 21}
STEPS = 5


def f9(x):
    """A float32 as the shortest decimal of at most 9 significant digits (reads back exactly)."""
    return float("%.9g" % x)


def vec(t):
    return [f9(x) for x in t.reshape(-1).tolist()]


def optimizer_cases():
    cases = []
    for name, kw in OPT_CASES:
        params = {n: torch.randn(k, dtype=torch.float32) for n, k in SIZES.items()}
        grads = []
        for _ in range(STEPS):
            g = {n: torch.randn(k, dtype=torch.float32) for n, k in SIZES.items()}
            g["w"][0] = 0.0  # a zero gradient: 0/(0 + eps) and friends
            grads.append(g)
        live = {n: torch.nn.Parameter(v.clone()) for n, v in params.items()}
        cls = {"sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam}[name]
        opt = cls(list(live.values()), **kw)
        after = []
        for g in grads:
            for n, p in live.items():
                p.grad = g[n].clone()
            opt.step()
            after.append({n: vec(p.detach()) for n, p in live.items()})
        state = {}
        for n, p in live.items():
            for slot, v in opt.state[p].items():
                if torch.is_tensor(v) and v.numel() == p.numel():
                    state.setdefault(slot, {})[n] = vec(v)
        cfg = dict(kw)
        if "betas" in cfg:
            cfg["beta1"], cfg["beta2"] = cfg.pop("betas")
        cases.append({"optimizer": name, "config": cfg,
                      "params": {n: vec(v) for n, v in params.items()},
                      "grads": [{n: vec(v) for n, v in g.items()} for g in grads],
                      "after": after, "state": state})
    return cases


def clip_cases():
    out = []
    for max_norm, scale in [(2.5, 1.0), (100.0, 1.0), (0.5, 30.0)]:
        grads = {"a": torch.tensor([3.0, -4.0, 1.0]), "b": torch.randn(21) * scale}
        live = {n: torch.nn.Parameter(torch.zeros_like(g)) for n, g in grads.items()}
        for n, p in live.items():
            p.grad = grads[n].clone()
        norm = torch.nn.utils.clip_grad_norm_(list(live.values()), max_norm)
        out.append({"grads": {n: vec(g) for n, g in grads.items()}, "max_norm": max_norm,
                    "norm": float(norm), "after": {n: vec(p.grad) for n, p in live.items()}})
    return out


def schedule_cases():
    def run(make, steps, metrics=None):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=0.1)
        sched = make(opt)
        lrs = []
        if metrics is None:
            for _ in range(steps):
                lrs.append(opt.param_groups[0]["lr"])  # the rate of this step's update
                opt.step()
                sched.step()
        else:
            for m in metrics:
                sched.step(m)
                lrs.append(opt.param_groups[0]["lr"])  # the rate after seeing this metric
        return lrs

    S = torch.optim.lr_scheduler
    metrics = [1.0, 0.9, 0.8999, 0.95, 0.91, 0.5, 0.5, 0.49999, 0.6, math.nan, 0.7, 0.4, 0.45, 0.45,
               0.45, 0.45, 0.45, 0.45, 0.45, 0.45]
    listed = [None if math.isnan(m) else m for m in metrics]  # JSON has no NaN: null
    return [
        {"kind": "step", "lr": 0.1, "gamma": 0.5, "every": 3, "lrs": run(lambda o: S.StepLR(o, 3, 0.5), 12)},
        {"kind": "exp", "lr": 0.1, "gamma": 0.9, "every": 1, "lrs": run(lambda o: S.ExponentialLR(o, 0.9), 12)},
        {"kind": "plateau", "lr": 0.1, "gamma": 0.5, "patience": 2, "min_lr": 0.0, "metrics": listed,
         "lrs": run(lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=2), 0, metrics)},
        {"kind": "plateau", "lr": 0.1, "gamma": 0.1, "patience": 0, "min_lr": 0.0005, "metrics": listed,
         "lrs": run(lambda o: S.ReduceLROnPlateau(o, factor=0.1, patience=0, min_lr=0.0005), 0, metrics)},
    ]


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    out = {"torch_version": torch.__version__, "cases": optimizer_cases(), "clip": clip_cases(),
           "schedules": schedule_cases()}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "optim",
                        "optim.json")
    with open(path, "w") as f:
        # one case per line: diffs stay readable and the file small
        f.write("{\n")
        keys = sorted(out)
        for i, k in enumerate(keys):
            v = out[k]
            if isinstance(v, list):
                f.write(json.dumps(k) + ": [\n")
                f.write(",\n".join(json.dumps(x, sort_keys=True, allow_nan=False) for x in v))
                f.write("\n]")
            else:
                f.write(json.dumps(k) + ": " + json.dumps(v))
            f.write(",\n" if i + 1 < len(keys) else "\n")
        f.write("}\n")
    print("wrote", os.path.normpath(path), os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
