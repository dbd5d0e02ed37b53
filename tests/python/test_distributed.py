"""torch.distributed (gloo, loopback) with DistributedDataParallel: 2 processes with N/2 rows each
and synchronized batch statistics compute what 1 process computes with N rows — outputs, input
and parameter gradients, running statistics, the step after, a statistics pass — for every
batch-normalized cell (tests/python/dist_worker.py)."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import rbn.torch as rt

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "dist_worker.py")

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or
                                not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world, out_dir):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, WORKER, str(r), str(world), port, str(out_dir)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    try:
        outs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o


def test_two_ranks_equal_one(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    launch(1, tmp_path / "one")
    launch(2, tmp_path / "two")
    for cell in ("bnlstm", "bnx", "bnx-seq"):
        one = np.load(tmp_path / "one" / f"{cell}.rank0.npz")
        ranks = [np.load(tmp_path / "two" / f"{cell}.rank{r}.npz") for r in range(2)]
        for key in one.files:
            if key in ("y", "dx", "y_step2", "y_eval"):  # per row: the ranks' rows side by side
                got = np.concatenate([r[key] for r in ranks], axis=1)
            else:  # replicated: parameter gradients (DDP-averaged), statistics
                np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)
                got = ranks[0][key]
            np.testing.assert_allclose(got, one[key], rtol=1e-9, atol=1e-12,
                                       err_msg=f"{cell}: {key}")
        # the test would pass vacuously if nothing moved
        assert np.abs(one["running.bn_x_running_mean_l0"]).max() > 0
        assert not np.allclose(one["pass.bn_x_running_mean_l0"], one["running.bn_x_running_mean_l0"])


def test_sync_stats_refusals():
    with pytest.raises(TypeError, match="batch-normalized cells only"):
        rt.LNLSTM(3, 4, sync_stats=True)
    if not torch.distributed.is_initialized():
        with pytest.raises(RuntimeError, match="init_process_group"):
            rt.BNLSTM(3, 4, sync_stats=True)
    with pytest.raises(TypeError, match="process_group is for sync_stats"):
        rt.BNLSTM(3, 4, process_group=object())


def test_stack_allreduce_binding():
    """The bound hook: called with a float64 view that it changes in place; a Python error in it
    fails the call instead of leaving local statistics."""
    import numpy as np
    import rbn
    x = np.random.default_rng(0).standard_normal((4, 3, 2))
    ref = rbn.Stack("bnlstm", 2, 3, t_max=4, dtype="float64")
    want = ref.forward(x, update_running=False)[0]
    s = rbn.Stack("bnlstm", 2, 3, t_max=4, dtype="float64")
    calls = []

    def twice(buf):  # two ranks holding the same rows: the same statistics
        assert buf.dtype == np.float64 and buf.ndim == 1
        calls.append(len(buf))
        buf *= 2

    s.set_stat_allreduce(twice)
    np.testing.assert_allclose(s.forward(x, update_running=False)[0], want, rtol=1e-12)
    n_fwd = len(calls)
    s.backward(dy=np.ones_like(want))
    assert n_fwd > 0 and len(calls) > n_fwd  # forward's statistics and backward's sums
    s.set_stat_allreduce(lambda buf: buf.__setitem__(slice(None), 0.0))  # in place: it is used
    assert not np.allclose(s.forward(x, update_running=False)[0], want)
    s.set_stat_allreduce(lambda buf: 1 / 0)
    with pytest.raises(RuntimeError, match="all-reduce callback failed.*ZeroDivisionError"):
        s.forward(x)
    s.set_stat_allreduce(None)
    np.testing.assert_allclose(s.forward(x, update_running=False)[0], want, rtol=1e-12)
