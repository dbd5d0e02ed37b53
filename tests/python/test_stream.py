"""Streaming inference through rbn.torch's step API: one step per call with t0 = the stream's own
step count, past t_max, under torch.inference_mode, equals one call over the whole sequence (whose
step t reads population row min(t, t_max - 1)). Run with Debian's python3, PYTHONPATH=build/python."""
import pytest
import torch

import rbn.torch as rt

C, H, L, T, T_MAX = 5, 12, 2, 9, 4
CLASSES = {"lstm": rt.LSTM, "bnlstm": rt.BNLSTM, "bnx": rt.BNxLSTM, "lnlstm": rt.LNLSTM,
           "gru": rt.GRU, "bngru": rt.BNGRU, "lngru": rt.LNGRU}


def make(cell):
    torch.manual_seed(0)
    kw = {"t_max": T_MAX} if cell in ("bnlstm", "bnx", "bngru") else {}
    m = CLASSES[cell](C, H, L, dtype=torch.float64, **kw).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # population rows that differ from each other
        for name, b in m.named_buffers():
            if "running_mean" in name:
                b.copy_(0.5 * torch.randn(b.shape, generator=g, dtype=b.dtype))
            elif "running_var" in name:
                b.copy_(0.3 + torch.rand(b.shape, generator=g, dtype=b.dtype))
    return m


@pytest.mark.parametrize("cell", sorted(CLASSES))
@pytest.mark.parametrize("N", [1, 8])
def test_steps_of_one_call_equal_the_whole_sequence(cell, N):
    m = make(cell)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(T, N, C, generator=g, dtype=torch.float64)
    with torch.inference_mode():
        y, state = m(x)
        ys, s = [], None
        for t in range(T):
            yt, s = m(x[t:t + 1], s, t0=t)
            ys.append(yt)
    assert torch.allclose(torch.cat(ys), y, atol=1e-12, rtol=0)
    for a, b in zip(s if isinstance(s, tuple) else (s,), state if isinstance(state, tuple) else (state,)):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("cell", ["bnlstm", "bnx", "bngru"])
def test_population_row_is_the_step_count_clamped(cell):
    m = make(cell)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, C, generator=g, dtype=torch.float64)
    with torch.inference_mode():
        last, _ = m(x, t0=T_MAX - 1)
        assert torch.equal(m(x, t0=T_MAX)[0], last)
        assert torch.equal(m(x, t0=10**6)[0], last)
        assert not torch.equal(m(x, t0=0)[0], last)  # the row matters
