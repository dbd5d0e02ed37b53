#!/usr/bin/python3
"""Golden fixtures for rbn's cells, computed in double precision with tools/torch_cells.py.

    /usr/bin/python3 tools/make_fixtures.py [--out tests/fixtures/cells]

Writes one safetensors file per case (names and shapes: tests/fixtures/README.md). The safetensors
format is written by hand (8-byte little-endian header length, JSON header, raw little-endian
bytes) because no Debian package provides it. Output is byte-for-byte deterministic: fixed seeds,
one thread, sorted keys.
"""

import argparse
import copy
import json
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_cells import GRU_CELLS, RecurrentStack, TorchGRU, TorchLSTM  # noqa: E402

EPS = 1e-5
MOMENTUM = 0.1
ADAM = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8)
ADAM_STEPS = 3

# name, cell, ln_input, shape (T, N, C, H, L, lengths, T_infer, infer lengths), seed
MAIN = dict(T=5, N=4, C=3, H=4, L=2, lengths=[5, 3, 5, 1], T_infer=7, infer_lengths=[7, 4, 6, 2])
EDGE = dict(T=1, N=1, C=3, H=4, L=2, lengths=[1], T_infer=3, infer_lengths=[3])
# Bidirectional (SPEC 2b): small, so the files stay a few KB (no Adam steps). Ragged: row 1's
# reverse pass starts at x[1] while the others' start at x[3]; at inference rows of 6 and 5 steps
# take their reverse steps s >= t_max = 4 from row 3.
BIDIR = dict(T=4, N=3, C=2, H=2, L=2, lengths=[4, 2, 4], T_infer=6, infer_lengths=[6, 3, 5],
             bidirectional=True)
CASES = [
    ("lstm", "lstm", True, MAIN, 101),
    ("bnlstm", "bnlstm", True, MAIN, 102),
    ("bnx", "bnx", True, MAIN, 103),
    ("bnx-seq", "bnx-seq", True, MAIN, 104),
    ("lnlstm", "lnlstm", True, MAIN, 105),
    ("lnlstm-ln-input-off", "lnlstm", False, MAIN, 106),
    ("lstm-t1n1", "lstm", True, EDGE, 107),
    ("lnlstm-t1n1", "lnlstm", True, EDGE, 108),
    ("gru", "gru", True, MAIN, 109),
    ("bngru", "bngru", True, MAIN, 110),
    ("lngru", "lngru", True, MAIN, 111),
    ("lngru-ln-input-off", "lngru", False, MAIN, 112),
    ("gru-t1n1", "gru", True, EDGE, 113),
    ("lngru-t1n1", "lngru", True, EDGE, 114),
    ("lstm-bidir", "lstm", True, BIDIR, 115),      # torch.nn.LSTM(bidirectional=True), packed
    ("gru-bidir", "gru", True, BIDIR, 116),        # torch.nn.GRU(bidirectional=True), packed
    ("bnlstm-bidir", "bnlstm", True, BIDIR, 117),  # the reverse-statistics rule
    ("bngru-bidir", "bngru", True, BIDIR, 118),
    ("lnlstm-bidir", "lnlstm", True, BIDIR, 119),
    ("bnx-seq-bidir", "bnx-seq", True, BIDIR, 120),
]
# Statistics-pass batches: (T, lengths). The last one is padded past T_max = 5 but no row is
# longer than 4, so population row 4 is reached by no batch and must keep its previous value.
PASS_BATCHES = [(4, [4, 2, 3]), (2, [2, 1, 2, 2, 1]), (6, [3, 4])]
# The same for the bidirectional cases (t_max = 4): no row is longer than 3, so reverse step 3
# keeps its previous statistics in both directions.
BIDIR_PASS_BATCHES = [(3, [3, 1, 2]), (5, [2, 3])]


def write_safetensors(path, tensors, metadata):
    """tensors: {name: tensor (float64 or int32)}; metadata: {str: str}."""
    header = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu()
        if t.dtype == torch.float64:
            dtype, arr = "F64", t.numpy().astype("<f8")
        elif t.dtype == torch.int32:
            dtype, arr = "I32", t.numpy().astype("<i4")
        else:
            raise TypeError(f"{name}: unsupported dtype {t.dtype}")
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # pad so the data starts 8-byte aligned (spaces are allowed)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)
    os.replace(tmp, path)


def read_safetensors(path):
    """The inverse of write_safetensors (for checks): ({name: tensor}, metadata)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        np_dtype = {"F64": "<f8", "I32": "<i4"}[info["dtype"]]
        arr = np.frombuffer(data[base + a:base + b], dtype=np_dtype).reshape(info["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out, meta


def spec_parameters(model):
    """(SPEC name, parameter) pairs: nn.GRU's weight_ih_l0 is rnn.0.weight_ih, and so on."""
    if isinstance(model, (TorchGRU, TorchLSTM)):
        return model.spec_parameters()
    return list(model.named_parameters())


def randomize(model, g):
    """Random parameters, with gains and biases away from their init so that each one matters."""
    with torch.no_grad():
        for name, p in spec_parameters(model):
            norm = ".bn_" in name or ".ln_" in name
            if norm and name.endswith(".weight"):
                # gains in [0.5, 1.5)
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) + 0.5)
            elif name.endswith("bias") or name.endswith("bias_ih") or name.endswith("bias_hh"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            else:
                p.copy_(0.6 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def loss_fn(y, hT, cT, w):
    loss = (w["loss.wy"] * y).sum() + (w["loss.whT"] * hT).sum()
    return loss if cT is None else loss + (w["loss.wcT"] * cT).sum()


def run(model, x, lengths, h0, c0):
    """y, hT, cT (None for the GRU family, which has no cell state)."""
    if isinstance(model, TorchLSTM):
        y, (hT, cT) = model(x, lengths, h0, c0)
        return y, hT, cT
    if isinstance(model, TorchGRU):
        y, hT = model(x, lengths, h0)
        return y, hT, None
    if model.is_gru:
        y, hT = model(x, lengths, h0)
        return y, hT, None
    y, (hT, cT) = model(x, lengths, h0, c0)
    return y, hT, cT


def load_spec(model, tensors):
    """Parameters and buffers by SPEC name."""
    if isinstance(model, (TorchGRU, TorchLSTM)):
        with torch.no_grad():
            for name, p in model.spec_parameters():
                p.copy_(tensors[name])
    else:
        model.load_state_dict(tensors)


def make_case(name, cell, ln_input, shape, seed):
    T, N, C, H, L = shape["T"], shape["N"], shape["C"], shape["H"], shape["L"]
    lengths, t_max = shape["lengths"], T
    bidir = shape.get("bidirectional", False)
    S = 2 * L if bidir else L  # state rows [S,N,H]; y [T,N,O]
    O = 2 * H if bidir else H
    g = torch.Generator().manual_seed(seed)
    D = torch.float64

    def randn(*s, scale=1.0):
        return scale * torch.randn(*s, generator=g, dtype=D)

    gru = cell in GRU_CELLS
    if cell == "gru":  # the plain GRU is torch.nn.GRU itself
        model = TorchGRU(C, H, L, bidirectional=bidir).double()
    elif cell == "lstm" and bidir:  # and the bidirectional plain LSTM torch.nn.LSTM
        model = TorchLSTM(C, H, L, bidirectional=True).double()
    else:
        model = RecurrentStack(cell, C, H, L, t_max=t_max, eps=EPS, momentum=MOMENTUM,
                               ln_input=ln_input, bidirectional=bidir).double()
    randomize(model, g)
    if isinstance(model, RecurrentStack):
        model.reset_running_stats()
    out = {}
    out["input.x"] = randn(T, N, C)
    out["input.lengths"] = torch.tensor(lengths, dtype=torch.int32)
    out["input.h0"] = torch.rand(S, N, H, generator=g, dtype=D) * 1.8 - 0.9
    if not gru:
        out["input.c0"] = randn(S, N, H)
    w = {"loss.wy": randn(T, N, O), "loss.whT": randn(S, N, H)}
    if not gru:
        w["loss.wcT"] = randn(S, N, H)
    out.update(w)
    params = {n: p.detach().clone() for n, p in spec_parameters(model)}
    for n, p in params.items():
        out["param." + n] = p
    has_stats = any(True for _ in model.buffers())

    # training mode: outputs, loss, every gradient, running statistics after this one forward
    m = copy.deepcopy(model).train()
    x = out["input.x"].clone().requires_grad_()
    h0 = out["input.h0"].clone().requires_grad_()
    c0 = None if gru else out["input.c0"].clone().requires_grad_()
    y, hT, cT = run(m, x, lengths, h0, c0)
    loss = loss_fn(y, hT, cT, w)
    loss.backward()
    out["train.y"], out["train.hT"] = y.detach(), hT.detach()
    out["train.loss"] = loss.detach().reshape(1)
    out["grad.x"], out["grad.h0"] = x.grad, h0.grad
    if not gru:
        out["train.cT"], out["grad.c0"] = cT.detach(), c0.grad
    for n, p in spec_parameters(m):
        out["grad." + n] = p.grad.detach().clone()
    for n, b in m.named_buffers():
        out["train.running." + n] = b.detach().clone()

    # inference mode with given population statistics, T_infer > T_max (clamp to the last row)
    Ti = shape["T_infer"]
    pop = {}
    for n, b in model.named_buffers():
        pop[n] = randn(*b.shape) if n.endswith("running_mean") else \
            torch.rand(b.shape, generator=g, dtype=D) * 1.5 + 0.2
        out["infer.pop." + n] = pop[n]
    out["infer.x"] = randn(Ti, N, C)
    out["infer.lengths"] = torch.tensor(shape["infer_lengths"], dtype=torch.int32)
    m = copy.deepcopy(model)
    load_spec(m, {**params, **pop})
    m.eval()
    with torch.no_grad():
        y, hT, cT = run(m, out["infer.x"], shape["infer_lengths"], out["input.h0"],
                        out.get("input.c0"))
    out["infer.y"], out["infer.hT"] = y, hT
    if not gru:
        out["infer.cT"] = cT

    # statistics pass over 3 batches, starting from the infer.pop buffers, zero initial state
    if has_stats:
        m = copy.deepcopy(model)
        m.load_state_dict({**params, **pop})
        m.popstats_begin()
        for k, (Tb, lb) in enumerate(BIDIR_PASS_BATCHES if bidir else PASS_BATCHES, start=1):
            xb = randn(Tb, len(lb), C)
            out[f"pass.batch{k}.x"] = xb
            out[f"pass.batch{k}.lengths"] = torch.tensor(lb, dtype=torch.int32)
            m.popstats_feed(xb, lb)
        m.popstats_finish()
        for n, b in m.named_buffers():
            out["pass.result." + n] = b.detach().clone()

    # three Adam steps on the training loss (training mode, the same inputs); not for the
    # bidirectional cases (the optimizer does not see directions; the files stay small)
    m = copy.deepcopy(model).train()
    opt = torch.optim.Adam([p for _, p in spec_parameters(m)], **ADAM)
    for k in range(1, 0 if bidir else ADAM_STEPS + 1):
        opt.zero_grad()
        y, hT, cT = run(m, out["input.x"], lengths, out["input.h0"], out.get("input.c0"))
        loss_fn(y, hT, cT, w).backward()
        opt.step()
        for n, p in spec_parameters(m):
            out[f"adam.step{k}.{n}"] = p.detach().clone()

    meta = {
        "format": "rbn-fixture/1",
        "case": name,
        "cell": cell,
        "input_size": C,
        "hidden_size": H,
        "num_layers": L,
        "t_max": t_max,
        "eps": repr(EPS),
        "momentum": repr(MOMENTUM),
        "ln_input": "true" if ln_input else "false",
        "t0": 0,
        "torch_version": torch.__version__,
        "seed": seed,
        "loss": ("sum(loss.wy*y) + sum(loss.whT*hT)" if gru else
                 "sum(loss.wy*y) + sum(loss.whT*hT) + sum(loss.wcT*cT)"),
        "adam": json.dumps({"lr": ADAM["lr"], "betas": list(ADAM["betas"]), "eps": ADAM["eps"],
                            "steps": ADAM_STEPS, "weight_decay": 0, "amsgrad": False}),
        "pass_start": "infer.pop" if has_stats else "none",
        "pass_initial_state": "zeros",
        "dtype": "float64",
    }
    if bidir:  # only here, so that the one-directional files keep their bytes
        meta["bidirectional"] = "true"
        meta["adam"] = "none"
    return {k: v.detach().to(torch.int32 if v.dtype == torch.int32 else torch.float64)
            for k, v in out.items()}, meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.normpath(os.path.join(here, "..", "tests", "fixtures", "cells"))
    ap.add_argument("--out", default=default_out)
    args = ap.parse_args()
    torch.set_num_threads(1)  # one thread: the same reduction order, the same bytes, every run
    os.makedirs(args.out, exist_ok=True)
    total = 0
    for name, cell, ln_input, shape, seed in CASES:
        tensors, meta = make_case(name, cell, ln_input, shape, seed)
        path = os.path.join(args.out, name + ".safetensors")
        write_safetensors(path, tensors, meta)
        back, meta_back = read_safetensors(path)  # round trip, so a writer bug cannot hide
        assert set(back) == set(tensors) and meta_back == {k: str(v) for k, v in meta.items()}
        assert all(torch.equal(back[k], tensors[k]) for k in tensors)
        size = os.path.getsize(path)
        total += size
        print(f"{path}: {len(tensors)} tensors, {size} bytes")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
