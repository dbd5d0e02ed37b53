"""Zoneout (Krueger et al. 2016; SPEC 2b) from Python: the rbn.Stack keywords and forward
options, the rbn.torch modules' zoneout_h= / zoneout_c= (inference: the expectation, checked against
nn.LSTMCell / nn.GRUCell step by step; training: every unit keeps its previous value or takes the new
one, at the rate asked), torch.manual_seed reproducibility, a second backward, checkpoints.
(Dropout between layers: tests/python/test_torch_module.py.) Run with Debian's python3,
PYTHONPATH=build/python."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import rbn
import rbn.torch as rt

T, N, C, H = 6, 5, 3, 8


def binomial_ok(k, n, p):
    return abs(k - n * p) <= 5 * math.sqrt(n * p * (1 - p))


def test_stack_keywords_and_forward_options():
    s = rbn.Stack("lstm", C, H, 2, dtype="float64", zoneout_h=0.2, zoneout_c=0.5, dropout=0.3)
    assert (s.dropout, s.zoneout_h, s.zoneout_c) == (0.3, 0.2, 0.5)
    x = np.random.default_rng(0).standard_normal((T, N, C))
    a = s.forward(x, update=4)[0]
    assert np.array_equal(a, s.forward(x, update=4)[0]), "same update: the same masks"
    assert not np.allclose(a, s.forward(x, update=5)[0]), "another update: other masks"
    # the shard of rows [2, 5) with row0 = 2 draws what the whole batch draws for those rows
    part = s.forward(x[:, 2:], update=4, row0=2)[0]
    np.testing.assert_allclose(part, a[:, 2:], rtol=0, atol=1e-14)
    # train mode without the regularizers = inference mode (no batch statistics in an LSTM)
    np.testing.assert_allclose(s.forward(x, regularize=False)[0], s.forward(x, train=False)[0],
                               rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="zoneout_c"):
        rbn.Stack("gru", C, H, zoneout_c=0.1)
    with pytest.raises(ValueError, match="zoneout_h"):
        rbn.Stack("lstm", C, H, zoneout_h=1.0)


def _by_hand(m, x, h, c, d_h, d_c):
    """A one-layer rbn.torch LSTM or GRU step by step with nn.LSTMCell / nn.GRUCell of its weights:
    h = d_h h_prev + (1 - d_h) h~, c = d_c c_prev + (1 - d_c) c~; d_h(t), d_c(t) give the weights."""
    gru = m._gru
    cell = (nn.GRUCell if gru else nn.LSTMCell)(m.input_size, m.hidden_size, dtype=x.dtype)
    with torch.no_grad():
        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, n).copy_(getattr(m, n + "_l0"))
    ys = []
    for t in range(x.shape[0]):
        if gru:
            hn = cell(x[t], h)
        else:
            hn, cn = cell(x[t], (h, c))
            c = d_c(t) * c + (1 - d_c(t)) * cn
        h = d_h(t) * h + (1 - d_h(t)) * hn
        ys.append(h)
    return torch.stack(ys), h, c


@pytest.mark.parametrize("cls", [rt.LSTM, rt.GRU])
def test_inference_is_the_expectation(cls):
    torch.manual_seed(0)
    zc = {} if cls is rt.GRU else {"zoneout_c": 0.6}
    m = cls(C, H, 1, dtype=torch.float64, zoneout_h=0.3, **zc).eval()
    x = torch.randn(T, N, C, dtype=torch.float64)
    h0, c0 = torch.randn(1, N, H, dtype=torch.float64), torch.randn(1, N, H, dtype=torch.float64)
    y, state = m(x, h0 if cls is rt.GRU else (h0, c0))
    want_y, want_h, want_c = _by_hand(m, x, h0[0], c0[0], lambda t: 0.3, lambda t: 0.6)
    assert torch.allclose(y, want_y, atol=1e-12)
    if cls is rt.GRU:
        assert torch.allclose(state[0], want_h, atol=1e-12)
    else:
        assert torch.allclose(state[0][0], want_h, atol=1e-12)
        assert torch.allclose(state[1][0], want_c, atol=1e-12)
    assert "zoneout_h=0.3" in repr(m)


def test_training_keeps_or_updates_each_unit_at_the_rate_asked():
    """One step from a given state: each unit of h_1 is h_0 (zoned out) or the LSTM's own h~_1, and
    the share of kept units is within the binomial bound of zoneout_h (the same for c)."""
    torch.manual_seed(1)
    zh, zc, n = 0.3, 0.6, 400
    m = rt.LSTM(C, H, 1, dtype=torch.float64, zoneout_h=zh, zoneout_c=zc)
    plain = rt.LSTM(C, H, 1, dtype=torch.float64)
    plain.load_state_dict(m.state_dict())
    x = torch.randn(1, n, C, dtype=torch.float64)
    h0, c0 = torch.randn(1, n, H, dtype=torch.float64), torch.randn(1, n, H, dtype=torch.float64)
    _, (h1, c1) = m(x, (h0, c0))
    _, (ht, ct) = plain(x, (h0, c0))
    for got, prev, new, z in ((h1, h0, ht, zh), (c1, c0, ct, zc)):
        kept = (got == prev)
        assert torch.all(kept | (got == new)), "every unit is the previous or the new value"
        assert binomial_ok(int(kept.sum()), kept.numel(), z), (int(kept.sum()), kept.numel(), z)


@pytest.mark.parametrize("num_layers,dropout", [(1, 0.0), (2, 0.3)])
def test_manual_seed_reproduces_and_backward_twice_agrees(num_layers, dropout):
    torch.manual_seed(2)
    m = rt.BNLSTM(C, H, num_layers, dropout=dropout, dtype=torch.float64, t_max=T,
                  zoneout_h=0.2, zoneout_c=0.4)
    x = torch.randn(T, N, C, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(3)
    y, _ = m(x)
    torch.manual_seed(3)
    assert torch.equal(m(x)[0], y), "the same torch seed: the same masks"
    assert not torch.equal(m(x)[0], y), "a new call: new masks"
    # a second backward through the retained graph recomputes the forward with its own masks
    torch.manual_seed(4)
    y, _ = m(x)
    w = torch.randn_like(y)
    (g1,) = torch.autograd.grad((y * w).sum(), [x], retain_graph=True)
    m(x)  # another forward in between: the stack's activations are now another call's
    (g2,) = torch.autograd.grad((y * w).sum(), [x])
    assert torch.equal(g1, g2)


def test_gradients_with_fixed_masks():
    """Finite differences in float64 through the autograd function with the masks held fixed (the
    update index drawn from torch's generator, reseeded before each evaluation)."""
    torch.manual_seed(5)
    m = rt.LNLSTM(C, H, 2, dtype=torch.float64, zoneout_h=0.25, zoneout_c=0.5)
    x = torch.randn(4, 3, C, dtype=torch.float64, requires_grad=True)

    def f(inp):
        torch.manual_seed(11)
        return m(inp)[0]

    assert torch.autograd.gradcheck(f, (x,))


def test_gru_has_no_cell_state_to_zone_out():
    with pytest.raises(ValueError, match="zoneout_c"):
        rt.GRU(C, H, zoneout_c=0.2)
    with pytest.raises(ValueError, match="zoneout_h"):
        rt.BNGRU(C, H, zoneout_h=1.0)
    assert rt.BNGRU(C, H, zoneout_h=0.1, t_max=3).zoneout_h == 0.1


def test_checkpoint_carries_the_regularizers(tmp_path):
    torch.manual_seed(6)
    m = rt.BNLSTM(C, H, 2, dropout=0.25, t_max=T, zoneout_h=0.05, zoneout_c=0.5)
    rbn.save(tmp_path / "z.safetensors", m)
    back = rbn.load(tmp_path / "z.safetensors")
    assert back.metadata["zoneout_h"] == "0.05" and back.metadata["zoneout_c"] == "0.5"
    assert (back.rnn.dropout, back.rnn.zoneout_h, back.rnn.zoneout_c) == (0.25, 0.05, 0.5)
    x = torch.randn(T, N, C)
    m.eval()
    assert torch.allclose(back.rnn(x)[0], m(x)[0], atol=1e-6)


def test_dropout_statistics_match_nn_lstm():
    """dropout= as nn.LSTM's, statistically (torch's own masks inside nn.LSTM cannot be matched one
    for one): over 400 training-mode calls each, the outputs' means agree element by element within
    5 standard errors, their variances within 15%, and dropout visibly acts (the variance is not 0)."""
    torch.manual_seed(0)
    ref = nn.LSTM(C, H, 2, dropout=0.5, dtype=torch.float64)
    m = rt.LSTM(C, H, 2, dropout=0.5, dtype=torch.float64)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(T, N, C, dtype=torch.float64)
    with torch.no_grad():
        a = torch.stack([ref(x)[0] for _ in range(400)])
        b = torch.stack([m(x)[0] for _ in range(400)])
    se = torch.sqrt(a.var(0) / 400 + b.var(0) / 400)
    assert torch.all((a.mean(0) - b.mean(0)).abs() <= 5 * se + 1e-12)
    va, vb = a.var(0).mean().item(), b.var(0).mean().item()
    assert va > 1e-4 and abs(vb / va - 1) < 0.15, (va, vb)
