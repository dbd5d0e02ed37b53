"""population_statistics(): the statistics pass fed by forward calls, against the C++ pass of
rbn.Stack on the same batches and against the weighted average computed here in NumPy; eval()
then uses the statistics and rbn.save marks them as pass statistics."""
import numpy as np
import pytest
import torch

import rbn
import rbn.torch as rt
from rbn import safetensors

T, C, H = 5, 3, 4


def batches():
    g = torch.Generator().manual_seed(3)
    out = []
    for N, lens in ((4, [5, 2, 4, 1]), (3, [3, 5, 5]), (5, None)):
        x = torch.randn(T, N, C, generator=g, dtype=torch.float64)
        out.append((x, None if lens is None else torch.tensor(lens)))
    return out


def make(cls, **kw):
    torch.manual_seed(0)
    m = cls(C, H, num_layers=2, t_max=T, dtype=torch.float64, **kw)
    m.train()
    m(torch.randn(T, 6, C, dtype=torch.float64))  # running averages away from their start
    return m


@pytest.mark.parametrize("cls,kw", [(rt.BNLSTM, {}), (rt.BNxLSTM, {}),
                                    (rt.BNxLSTM, {"sequence_wise": True})])
def test_pass_equals_the_stacks_and_numpy(cls, kw):
    m = make(cls, **kw)
    assert m.popstats_kind == "running"
    # the C++ pass of a bare stack with the module's parameters, same batches
    st = rbn.Stack(m._cell, C, H, 2, T, dtype="float64")
    for name, v in m.state_dict_rbn().items():
        st.set(name, v.numpy())
    st.popstats_begin()
    for x, lengths in batches():
        st.popstats_feed(x.numpy(), None if lengths is None else lengths.numpy().astype(np.int32))
    st.popstats_finish()
    m.eval()  # the mode does not matter inside the block
    with m.population_statistics():
        for x, lengths in batches():
            y, _ = m(x, lengths=lengths)
            assert y.shape == x.shape[:2] + (H,) and not y.requires_grad
    assert m.popstats_kind == "pass"
    got = m.state_dict_rbn()
    for name, v in st.buffers().items():
        np.testing.assert_allclose(got[name].numpy(), v, rtol=1e-12, atol=1e-14, err_msg=name)

    # layer 0's BN of W x, by hand: per-step (or, sequence-wise, per-batch) mean and biased
    # variance over the valid rows, averaged over the batches weighted by the valid-row counts
    W = m.weight_ih_l0.detach().numpy()
    sums, counts = [], []
    for x, lengths in batches():
        z = x.numpy() @ W.T  # [T,N,4H]
        N = z.shape[1]
        valid = np.arange(T)[:, None] < (np.full(N, T) if lengths is None else lengths.numpy())[None]
        if kw.get("sequence_wise"):
            zs = z[valid]
            sums.append((zs.mean(0)[None], zs.var(0)[None]))
            counts.append(np.array([[valid.sum()]]))
        else:
            mean = np.stack([z[t][valid[t]].mean(0) if valid[t].any() else np.zeros(4 * H) for t in range(T)])
            var = np.stack([z[t][valid[t]].var(0) if valid[t].any() else np.zeros(4 * H) for t in range(T)])
            sums.append((mean, var))
            counts.append(valid.sum(1)[:, None])
    w = np.stack(counts).astype(float)  # [B, T or 1, 1]
    mean = (np.stack([s[0] for s in sums]) * w).sum(0) / w.sum(0)
    var = (np.stack([s[1] for s in sums]) * w).sum(0) / w.sum(0)
    rm, rv = got["rnn.0.bn_x.running_mean"].numpy(), got["rnn.0.bn_x.running_var"].numpy()
    np.testing.assert_allclose(rm.reshape(mean.shape), mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rv.reshape(var.shape), var, rtol=1e-10, atol=1e-12)

    # eval() normalizes with them: the bare stack in inference mode with the pass statistics
    x, lengths = batches()[0]
    with torch.no_grad():
        y, (hT, cT) = m(x, lengths=lengths)
    ys, hs, cs = st.forward(x.numpy(), lengths.numpy().astype(np.int32), train=False)
    np.testing.assert_allclose(y.numpy(), ys, rtol=1e-12, atol=1e-13)

    # a training-mode forward updates the running averages: they are no longer the pass's
    m.train()
    m(x)
    assert m.popstats_kind == "running"


def test_save_writes_pass_statistics(tmp_path):
    m = make(rt.BNLSTM)
    rbn.save(tmp_path / "running.safetensors", m)
    assert safetensors.read(tmp_path / "running.safetensors")[1]["popstats"] == "running"
    m.popstats(batches())
    rbn.save(tmp_path / "pass.safetensors", m)
    tensors, md = safetensors.read(tmp_path / "pass.safetensors")
    assert md["popstats"] == "pass" and "popstats_data" not in md
    np.testing.assert_allclose(tensors["rnn.1.bn_c.running_var"],
                               m.bn_c_running_var_l1.numpy(), rtol=1e-6)  # float32 in the file
    back = rbn.load(tmp_path / "pass.safetensors")
    assert back.rnn.popstats_kind == "pass"


def test_failed_pass_leaves_the_statistics():
    m = make(rt.BNLSTM)
    before = {n: b.clone() for n, b in m.named_buffers()}
    with pytest.raises(ZeroDivisionError):
        with m.population_statistics():
            m(batches()[0][0])
            1 / 0
    for n, b in m.named_buffers():
        torch.testing.assert_close(b, before[n], rtol=0, atol=0)
    assert m.popstats_kind == "running"
    with pytest.raises(ValueError, match="from the initial state"):
        with m.population_statistics():
            m(batches()[0][0], t0=2)
    with pytest.raises(RuntimeError, match="do not nest"):
        with m.population_statistics():
            with m.population_statistics():
                pass
    # and the module still runs (eval uses the untouched statistics)
    m.eval()
    x = batches()[2][0]
    with torch.no_grad():
        m(x)
