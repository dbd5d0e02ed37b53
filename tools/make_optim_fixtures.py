#!/usr/bin/python3
"""Fixtures for rbn's optimizers from torch.optim (run with Debian's python3; deterministic):
tests/fixtures/optim/optim.json holds, per case, the initial parameters, five gradients and the
parameters after each torch step, and one clip_grad_norm_ case."""
import json
import os

import torch

CASES = [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("sgd", dict(lr=0.05, momentum=0.5, dampening=0.1)),
    ("rmsprop", dict(lr=0.01)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, momentum=0.9)),
    ("rmsprop", dict(lr=0.01, centered=True, weight_decay=0.001)),
    ("adam", dict(lr=0.01)),
    ("adam", dict(lr=0.002, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)),
]


def main():
    torch.manual_seed(0)
    out = {"torch_version": torch.__version__, "cases": []}
    for name, kw in CASES:
        p0 = torch.randn(7, dtype=torch.float32)
        grads = [torch.randn(7, dtype=torch.float32) for _ in range(5)]
        p = torch.nn.Parameter(p0.clone())
        opt = {"sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam}[name]([p], **kw)
        after = []
        for g in grads:
            p.grad = g.clone()
            opt.step()
            after.append(p.detach().clone().tolist())
        cfg = dict(kw)
        if "betas" in cfg:
            cfg["beta1"], cfg["beta2"] = cfg.pop("betas")
        out["cases"].append({"optimizer": name, "config": cfg, "p0": p0.tolist(),
                             "grads": [g.tolist() for g in grads], "after": after})
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(4))
    a.grad = torch.tensor([3.0, -4.0, 1.0])
    b.grad = torch.tensor([2.0, 0.5, -1.0, 6.0])
    norm = torch.nn.utils.clip_grad_norm_([a, b], 2.5)
    out["clip"] = {"grads": [[3.0, -4.0, 1.0], [2.0, 0.5, -1.0, 6.0]], "max_norm": 2.5, "norm": float(norm),
                   "after": [a.grad.tolist(), b.grad.tolist()]}
    path = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "optim", "optim.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    print("wrote", os.path.normpath(path))


if __name__ == "__main__":
    main()
