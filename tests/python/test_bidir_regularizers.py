"""Bidirectional stacks with dropout and zoneout together (SPEC 2b): rbn.Stack's keywords and forward
options (masks by update and global row, a shard draws what the batch draws), the rbn.torch modules'
bidirectional=True with dropout= / zoneout_h= / zoneout_c= (inference: zoneout's expectation in both
directions, checked against nn.LSTMCell / nn.GRUCell step by step, the reverse reading x backwards;
training: torch.manual_seed reproducibility, finite differences with fixed masks), checkpoints.
Run with Debian's python3, PYTHONPATH=build/python."""
import numpy as np
import pytest
import torch
from torch import nn

import rbn
import rbn.torch as rt

T, N, C, H = 5, 4, 3, 6


def test_stack_masks_follow_update_and_global_row():
    s = rbn.Stack("bnlstm", C, H, 2, t_max=T, dtype="float64", bidirectional=True, dropout=0.3,
                  zoneout_h=0.2, zoneout_c=0.5)
    x = np.random.default_rng(0).standard_normal((T, N, C))
    y, hT, cT = s.forward(x, update=4, update_running=False)
    assert y.shape == (T, N, 2 * H) and hT.shape == (4, N, H) and cT.shape == (4, N, H)
    assert np.array_equal(y, s.forward(x, update=4, update_running=False)[0])
    assert not np.allclose(y, s.forward(x, update=5, update_running=False)[0])
    # a stack without batch statistics: a shard of rows [2, 4) with row0 = 2 draws what the whole
    # batch draws for those rows, in both directions and through the dropout between the layers
    p = rbn.Stack("lstm", C, H, 2, dtype="float64", bidirectional=True, dropout=0.3,
                  zoneout_h=0.2, zoneout_c=0.5)
    a, ha, ca = p.forward(x, update=7)
    b, hb, cb = p.forward(x[:, 2:], update=7, row0=2)
    np.testing.assert_allclose(b, a[:, 2:], rtol=0, atol=1e-14)
    np.testing.assert_allclose(hb, ha[:, 2:], rtol=0, atol=1e-14)
    np.testing.assert_allclose(cb, ca[:, 2:], rtol=0, atol=1e-14)
    # train mode without the regularizers = inference mode (no batch statistics in an LSTM)
    np.testing.assert_allclose(p.forward(x, regularize=False)[0], p.forward(x, train=False)[0],
                               rtol=0, atol=1e-14)


def _cell_run(cell_cls, m, suffix, x, h, c, zh, zc):
    """One direction of layer 0 of `m` step by step over x [T,N,C] (already in its reading order)
    with zoneout's expectation: h = zh h_prev + (1 - zh) h~, c = zc c_prev + (1 - zc) c~."""
    cell = cell_cls(m.input_size, m.hidden_size, dtype=x.dtype)
    with torch.no_grad():
        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, n).copy_(getattr(m, n + "_l0" + suffix))
    ys = []
    for t in range(x.shape[0]):
        if cell_cls is nn.GRUCell:
            hn = cell(x[t], h)
        else:
            hn, cn = cell(x[t], (h, c))
            c = zc * c + (1 - zc) * cn
        h = zh * h + (1 - zh) * hn
        ys.append(h)
    return torch.stack(ys), h, c


@pytest.mark.parametrize("cls", [rt.LSTM, rt.GRU])
def test_inference_is_the_expectation_in_both_directions(cls):
    torch.manual_seed(0)
    gru = cls is rt.GRU
    zc = 0.0 if gru else 0.6
    kw = {} if gru else {"zoneout_c": zc}
    m = cls(C, H, 1, dtype=torch.float64, bidirectional=True, zoneout_h=0.3, **kw).eval()
    x = torch.randn(T, N, C, dtype=torch.float64)
    h0 = torch.randn(2, N, H, dtype=torch.float64)
    c0 = torch.randn(2, N, H, dtype=torch.float64)
    y, state = m(x, h0 if gru else (h0, c0))
    cell = nn.GRUCell if gru else nn.LSTMCell
    yf, hf, cf = _cell_run(cell, m, "", x, h0[0], c0[0], 0.3, zc)
    yr, hr, cr = _cell_run(cell, m, "_reverse", x.flip(0), h0[1], c0[1], 0.3, zc)
    assert torch.allclose(y, torch.cat([yf, yr.flip(0)], 2), atol=1e-12)
    hT = state if gru else state[0]
    assert torch.allclose(hT, torch.stack([hf, hr]), atol=1e-12)
    if not gru:
        assert torch.allclose(state[1], torch.stack([cf, cr]), atol=1e-12)


@pytest.mark.parametrize("cls,kw", [(rt.BNLSTM, {"zoneout_c": 0.4, "t_max": 4}),
                                    (rt.LSTM, {"zoneout_c": 0.4}), (rt.GRU, {}),
                                    (rt.BNGRU, {"t_max": 4})])
def test_training_reproducible_and_gradients_with_fixed_masks(cls, kw):
    """Dropout between the layers (on the 2H output of layer 0) and zoneout in both directions:
    the same torch seed gives the same masks, a new call new ones, and finite differences in float64
    with the masks held fixed (torch's generator reseeded before each evaluation)."""
    torch.manual_seed(5)
    m = cls(C, H, 2, dtype=torch.float64, bidirectional=True, dropout=0.3, zoneout_h=0.25, **kw)
    x = torch.randn(4, 3, C, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(3)
    y, _ = m(x)
    assert y.shape == (4, 3, 2 * H)
    torch.manual_seed(3)
    assert torch.equal(m(x)[0], y), "the same torch seed: the same masks"
    assert not torch.equal(m(x)[0], y), "a new call: new masks"

    def f(inp):
        torch.manual_seed(11)
        return m(inp)[0]

    assert torch.autograd.gradcheck(f, (x,))


def test_checkpoint_carries_both(tmp_path):
    torch.manual_seed(6)
    m = rt.BNLSTM(C, H, 2, dropout=0.25, t_max=T, bidirectional=True, zoneout_h=0.05,
                  zoneout_c=0.5)
    rbn.save(tmp_path / "bz.safetensors", m)
    back = rbn.load(tmp_path / "bz.safetensors")
    assert back.metadata["bidirectional"] == "true" and back.metadata["zoneout_c"] == "0.5"
    assert back.rnn.bidirectional
    assert (back.rnn.dropout, back.rnn.zoneout_h, back.rnn.zoneout_c) == (0.25, 0.05, 0.5)
    x = torch.randn(T, N, C)
    m.eval()
    assert torch.allclose(back.rnn(x)[0], m(x)[0], atol=1e-6)
