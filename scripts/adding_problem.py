#!/usr/bin/python3
"""The adding problem (Hochreiter & Schmidhuber 1997) as NumPy files for `rbn train --task seq`.

    /usr/bin/python3 scripts/adding_problem.py OUT_DIR [--T 100] [--train 20000] [--valid 1000]
        [--test 2000] [--seed 1]

Each sequence has T steps of two features: a value drawn uniformly from [0, 1) and a marker that
is 1 at two steps (one in the first half, one in the second) and 0 elsewhere. The target is the
sum of the two marked values: a float per sequence. Predicting the constant 1 scores a mean
squared error of 1/6 ~ 0.167 (the variance of a sum of two uniforms).

Writes OUT_DIR/{train,valid,test}.x.npy (float32 [T,N,2]) and .y.npy (float32 [N]).
"""
import argparse
import os

import numpy as np


def adding(T, n, rng):
    x = np.zeros((T, n, 2), dtype=np.float32)
    x[:, :, 0] = rng.random((T, n), dtype=np.float32)
    half = T // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, T, size=n)
    rows = np.arange(n)
    x[first, rows, 1] = 1.0
    x[second, rows, 1] = 1.0
    y = (x[first, rows, 0] + x[second, rows, 0]).astype(np.float32)
    return x, y


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--valid", type=int, default=1000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.T < 2:
        ap.error("--T: at least 2 steps")
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    for split, n in (("train", a.train), ("valid", a.valid), ("test", a.test)):
        x, y = adding(a.T, n, rng)
        np.save(os.path.join(a.out, f"{split}.x.npy"), x)
        np.save(os.path.join(a.out, f"{split}.y.npy"), y)
        print(f"{split}: x {list(x.shape)}, y {list(y.shape)}; constant-1 MSE {np.mean((y - 1.0) ** 2):.4f}")


if __name__ == "__main__":
    main()
