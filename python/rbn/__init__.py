"""rbn: fused batch-normalized and layer-normalized LSTMs (Cooijmans et al. 2017) from Python.

    import rbn
    s = rbn.Stack("bnlstm", input_size=1, hidden_size=100, t_max=784)
    y, hT, cT = s.forward(x)            # x: float32 [T, N, C]; training mode by default
    dx, dh0, dc0 = s.backward(dy=dy)    # parameter gradients accumulate in s.grads()

`rbn.torch` wraps the same kernels as torch.nn.Modules.
"""
import os as _os


def _select_blas_kernel():
    # OpenBLAS 0.3.21 falls back to slow generic kernels on CPUs it does not know; it reads
    # OPENBLAS_CORETYPE once, when it loads, so this only helps if numpy/torch are not loaded yet.
    if "OPENBLAS_CORETYPE" in _os.environ:
        return
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((l for l in f if l.startswith("flags")), "").split()
    except OSError:
        return
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= set(flags):
        _os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    elif {"avx2", "fma"} <= set(flags):
        _os.environ["OPENBLAS_CORETYPE"] = "Haswell"


_select_blas_kernel()

import numpy as _np  # noqa: E402

from ._rbn import (RbnError, Stack32, Stack64, cells, cpu_has_bf16, gemm_backend,  # noqa: E402,F401
                   precision, set_gemm_backend, set_precision)


def Stack(cell, input_size, hidden_size, num_layers=1, t_max=1, dtype="float32", **kwargs):
    """A stack of recurrent layers. cell: lstm | bnlstm | bnx | bnx-seq | lnlstm | gru | bngru |
    lngru (rbn.cells() lists them).

    kwargs: eps, gamma_x, gamma_h, gamma_c, forget_bias (LSTMs only; default 1), momentum, ln_input,
    learn_init_state, recurrent_init ('orthogonal' | 'identity'), seed, bidirectional (y [T,N,2H],
    states [2L,N,H]: 2k forward, 2k+1 reverse; t0 must be 0). A GRU has no cell state:
    forward returns the given c0 (or zeros) as cT, and backward's dc0 is the given dcT.
    """
    cls = {"float32": Stack32, "float64": Stack64}[_np.dtype(dtype).name]
    return cls(cell, input_size, hidden_size, num_layers, t_max, **kwargs)


def load(path, gemm=None):
    """An rbn checkpoint -> rbn.Model (the rbn.torch stack, its head and embedding as torch
    modules, vocabulary, permutation, metadata); gemm="recorded" switches the process to the GEMM
    backend the run used. docs/python.md, rbn.checkpoint.load."""
    from .checkpoint import load as _load
    return _load(path, gemm)


def save(path, module, head=None, **kwargs):
    """Write an rbn checkpoint that `rbn eval`/`forward`/`sample` accept. rbn.checkpoint.save."""
    from .checkpoint import save as _save
    return _save(path, module, head, **kwargs)


def __getattr__(name):  # rbn.Model without importing torch on `import rbn`
    if name in ("Model", "CheckpointError"):
        from . import checkpoint
        return getattr(checkpoint, name)
    raise AttributeError(f"module 'rbn' has no attribute {name!r}")


__all__ = ["Stack", "Stack32", "Stack64", "RbnError", "cells", "gemm_backend", "set_gemm_backend",
           "precision", "set_precision", "cpu_has_bf16",
           "load", "save", "Model", "CheckpointError"]
