"""Bidirectional stacks of tools/torch_cells.py (SPEC section 2b), the reference behind the
`*-bidir` fixtures: the plain cells against torch.nn.LSTM / nn.GRU(bidirectional=True) on packed
input, the normalized cells' reverse direction against a one-directional stack fed each row's
valid steps backwards (the reverse-statistics rule), padding invariance, the statistics pass.

Run with Debian's interpreter: /usr/bin/python3 -m pytest tests/python/test_torch_cells_bidir.py
"""

import copy
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
from torch_cells import (ALL_CELLS, GRU_CELLS, RecurrentStack, TorchGRU,  # noqa: E402
                         TorchLSTM)

T, N, C, H = 5, 4, 3, 4
LENGTHS = [5, 2, 4, 1]


@pytest.fixture(autouse=True)
def _double_precision():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def make_stack(cell, L=2, bidirectional=True, seed=0, **kw):
    """Random parameters, gains and betas away from their init so that each one matters."""
    torch.manual_seed(seed)
    m = RecurrentStack(cell, C, H, L, t_max=T, bidirectional=bidirectional, **kw)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("weight") and ("bn_" in name or "ln_" in name):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias") and ("bn_" in name or "ln_" in name):
                p.normal_(0.0, 0.5)
            else:
                p.normal_(0.0, 0.6)
    return m


def rand_inputs(L, seed=3, T_=T, N_=N):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T_, N_, C, generator=g), torch.randn(2 * L, N_, H, generator=g),
            torch.randn(2 * L, N_, H, generator=g))


def run(m, x, lengths, h0, c0):
    """-> y, hT, cT (None for the GRU family)."""
    if m.is_gru:
        y, hT = m(x, lengths, h0)
        return y, hT, None
    y, (hT, cT) = m(x, lengths, h0, c0)
    return y, hT, cT


def test_names_and_shapes():
    m = make_stack("bnlstm")
    names = [n for n, _ in m.named_parameters()]
    assert names[:3] == ["rnn.0.weight_ih", "rnn.0.weight_hh", "rnn.0.bias"]
    assert "rnn.0.reverse.bn_x.weight" in names and "rnn.1.reverse.bn_c.bias" in names
    # flat order: layer k's forward tensors, then its reverse tensors, then layer k + 1
    first_rev = names.index("rnn.0.reverse.weight_ih")
    assert all(n.startswith("rnn.0.") and ".reverse." not in n for n in names[:first_rev])
    assert all(n.startswith("rnn.0.reverse.") for n in names[first_rev:names.index("rnn.1.weight_ih")])
    p = dict(m.named_parameters())
    assert p["rnn.1.weight_ih"].shape == (4 * H, 2 * H)
    assert p["rnn.1.reverse.weight_ih"].shape == (4 * H, 2 * H)
    assert "rnn.1.reverse.bn_h.running_mean" in dict(m.named_buffers())
    x, h0, c0 = rand_inputs(2)
    y, hT, cT = run(m, x, LENGTHS, h0, c0)
    assert y.shape == (T, N, 2 * H) and hT.shape == (4, N, H) and cT.shape == (4, N, H)
    for n, ln in enumerate(LENGTHS):
        assert (y[ln:, n] == 0).all()
    with pytest.raises(ValueError, match="t0"):
        m(x, LENGTHS, h0, c0, t0=2)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_plain_cells_equal_torch_bidirectional_packed(cell):
    """The reverse rule on the plain cells is PyTorch's: nn.LSTM / nn.GRU(bidirectional=True) on
    a PackedSequence; outputs, states and every gradient."""
    m = make_stack(cell)
    ref = (TorchLSTM if cell == "lstm" else TorchGRU)(C, H, 2, bidirectional=True).double()
    spec = dict(ref.spec_parameters())
    assert sorted(spec) == sorted(n for n, _ in m.named_parameters())
    with torch.no_grad():
        for n, p in m.named_parameters():
            spec[n].copy_(p)
    x, h0, c0 = rand_inputs(2)
    c0 = None if cell == "gru" else c0
    xs = [x.clone().requires_grad_() for _ in range(2)]
    got = run(m, xs[0], LENGTHS, h0, c0)
    if cell == "lstm":
        ry, (rh, rc) = ref(xs[1], LENGTHS, h0, c0)
        want = (ry, rh, rc)
    else:
        want = (*ref(xs[1], LENGTHS, h0), None)
    for a, b in zip(got, want):
        if a is not None:
            assert (a - b).abs().max() < 1e-12
    g = torch.Generator().manual_seed(5)
    w = [torch.randn(t.shape, generator=g) for t in got if t is not None]
    sum((a * b).sum() for a, b in zip([t for t in got if t is not None], w)).backward()
    sum((a * b).sum() for a, b in zip([t for t in want if t is not None], w)).backward()
    assert (xs[0].grad - xs[1].grad).abs().max() < 1e-12
    for n, p in m.named_parameters():
        assert (p.grad - spec[n].grad).abs().max() < 1e-12, n


def reversed_prefixes(x, lengths):
    """Each row's valid steps backwards, by a loop over rows (independent of reverse_index)."""
    out = torch.zeros_like(x)
    for n, ln in enumerate(lengths):
        for t in range(ln):
            out[t, n] = x[ln - 1 - t, n]
    return out


def reverse_alone(m):
    """A one-directional one-layer stack holding layer 0's reverse direction as its layer 0."""
    one = RecurrentStack(m.cell, C, H, 1, t_max=m.t_max, ln_input=m.ln_input)
    sd = {k.replace("rnn.0.reverse.", "rnn.0."): v for k, v in m.state_dict().items()
          if k.startswith("rnn.0.reverse.")}
    one.load_state_dict(sd)
    return one


VARIANTS = [(c, True) for c in ALL_CELLS] + [("lnlstm", False), ("lngru", False)]


@pytest.mark.parametrize("cell,ln_input", VARIANTS)
@pytest.mark.parametrize("train", [True, False])
def test_reverse_statistics_rule(cell, ln_input, train):
    """Layer 0's reverse direction is the one-directional layer run on each row's reversed valid
    prefix: its output at position t is that run's output at step s = len - 1 - t, its
    statistics rows are s (pooled over the rows having a step s), its final state the one after
    x[0]. Training mode: batch statistics and the running averages; eval: population rows s."""
    m = make_stack(cell, L=1, ln_input=ln_input)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, b in m.named_buffers():
            b.copy_(torch.randn(b.shape, generator=g) if name.endswith("mean")
                    else torch.rand(b.shape, generator=g) + 0.2)
    one = reverse_alone(m)
    m.train(train)
    one.train(train)
    x, h0, c0 = rand_inputs(1)
    gru = cell in GRU_CELLS
    y, hT, cT = run(m, x, LENGTHS, h0, None if gru else c0)
    yr, hr, cr = run(one, reversed_prefixes(x, LENGTHS), LENGTHS, h0[1:2],
                     None if gru else c0[1:2])
    want = reversed_prefixes(yr, LENGTHS)
    assert (y[..., H:] - want).abs().max() < 1e-12
    assert (hT[1] - hr[0]).abs().max() < 1e-12
    if not gru:
        assert (cT[1] - cr[0]).abs().max() < 1e-12
    bufs = dict(m.named_buffers())
    for name, b in one.named_buffers():
        assert torch.equal(bufs[name.replace("rnn.0.", "rnn.0.reverse.")], b), name


@pytest.mark.parametrize("cell", ["bnlstm", "bngru", "lnlstm", "bnx-seq"])
@pytest.mark.parametrize("train", [True, False])
def test_padding_invariance(cell, train):
    """Extra padded steps and all-padding rows, filled with junk, change nothing valid: outputs,
    states, statistics, gradients."""
    m1 = make_stack(cell)
    m2 = copy.deepcopy(m1)
    m1.train(train)
    m2.train(train)
    x, h0, c0 = rand_inputs(2)
    gru = cell in GRU_CELLS
    g = torch.Generator().manual_seed(9)
    xp = 50 * torch.randn(8, 6, C, generator=g)
    xp[:T, :N] = x
    for n, ln in enumerate(LENGTHS):
        xp[ln:, n] = 1e3 * torch.randn(8 - ln, C, generator=g)
    h0p = torch.cat([h0, torch.randn(4, 2, H, generator=g)], 1)
    c0p = torch.cat([c0, torch.randn(4, 2, H, generator=g)], 1)
    y1, h1, c1 = run(m1, x, LENGTHS, h0, None if gru else c0)
    y2, h2, c2 = run(m2, xp, LENGTHS + [0, 0], h0p, None if gru else c0p)
    assert (y2[:T, :N] - y1).abs().max() < 1e-12
    assert (y2[T:] == 0).all() and (y2[:, N:] == 0).all()
    assert (h2[:, :N] - h1).abs().max() < 1e-12 and torch.equal(h2[:, N:], h0p[:, N:])
    if not gru:
        assert (c2[:, :N] - c1).abs().max() < 1e-12 and torch.equal(c2[:, N:], c0p[:, N:])
    b1, b2 = dict(m1.named_buffers()), dict(m2.named_buffers())
    for k in b1:
        assert (b1[k] - b2[k]).abs().max() < 1e-12, k
    wy = torch.randn(8, 6, 2 * H, generator=g)
    loss1 = (wy[:T, :N] * y1).sum() + h1.sum() + (0 if gru else c1.sum())
    loss2 = (wy * y2).sum() + h2[:, :N].sum() + (0 if gru else c2[:, :N].sum())
    loss1.backward()
    loss2.backward()
    p1, p2 = dict(m1.named_parameters()), dict(m2.named_parameters())
    for k in p1:
        assert (p1[k].grad - p2[k].grad).abs().max() < 1e-10, k


@pytest.mark.parametrize("cell", ["bnlstm", "bngru", "bnx", "bnx-seq"])
def test_popstats_pass_per_direction(cell):
    """The statistics pass fills each direction's own tables: the reverse ones are what a
    one-directional stack gets from the same batches read backwards."""
    m = make_stack(cell, L=1)
    one = reverse_alone(m)
    batches = [(4, [4, 2, 3]), (2, [2, 1, 2])]
    g = torch.Generator().manual_seed(6)
    m.popstats_begin()
    one.popstats_begin()
    for Tb, lb in batches:
        xb = torch.randn(Tb, len(lb), C, generator=g)
        m.popstats_feed(xb, lb)
        one.popstats_feed(reversed_prefixes(xb, lb), lb)
    m.popstats_finish()
    one.popstats_finish()
    bufs = dict(m.named_buffers())
    for name, b in one.named_buffers():
        assert (bufs[name.replace("rnn.0.", "rnn.0.reverse.")] - b).abs().max() < 1e-12, name
    # the forward direction's tables differ from the reverse ones (the rule matters here)
    assert not torch.allclose(bufs["rnn.0.bn_x.running_mean"],
                              bufs["rnn.0.reverse.bn_x.running_mean"])
    if cell in ("bnlstm", "bngru", "bnx"):  # row 4: no batch reaches it, both keep 0 / 1
        for name, b in bufs.items():
            assert (b[4] == (1.0 if name.endswith("var") else 0.0)).all(), name


def test_gradcheck_bidirectional_bnlstm():
    m = make_stack("bnlstm", L=2)
    x, h0, c0 = rand_inputs(2, T_=3, N_=3)
    lengths = [3, 1, 2]
    x.requires_grad_()

    def f(x_):
        y, hT, cT = run(m, x_, lengths, h0, c0)
        return y, hT, cT

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-6)
