"""rbn.torch's precision='bf16' and rbn.set_precision: refused in one line on a CPU without
AVX512_BF16 or AMX; through the test override RBN_TEST_BF16=emulate (bf16-rounded factors, fp32
GEMM) a BNLSTM and a GRU stay within a stated tolerance of fp32 in forward and backward, and the
process's precision is restored after every call. Run with Debian's python3, PYTHONPATH=build/python."""
import pytest
import torch

import rbn
import rbn.torch as rt

T, N, C, H = 6, 8, 12, 32


def test_refused_without_bf16(monkeypatch):
    monkeypatch.delenv("RBN_TEST_BF16", raising=False)
    if rbn.cpu_has_bf16():
        assert rt.BNLSTM(C, H, t_max=T, precision="bf16").precision == "bf16"
        return
    with pytest.raises(rbn.RbnError, match=r"^BNLSTM: precision: bf16 needs a CPU with AVX512_BF16 or AMX"):
        rt.BNLSTM(C, H, t_max=T, precision="bf16")
    with pytest.raises(rbn.RbnError, match=r"^set_precision: bf16 needs a CPU"):
        rbn.set_precision("bf16")
    assert rbn.precision() == "fp32"
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16', got 'fp16'"):
        rt.LSTM(C, H, precision="fp16")
    with pytest.raises(rbn.RbnError, match="set_precision: must be 'fp32' or 'bf16', got 'fp16'"):
        rbn.set_precision("fp16")


@pytest.mark.parametrize("cls", [rt.BNLSTM, rt.LNLSTM, rt.GRU])
def test_override_within_tolerance_of_fp32(cls, monkeypatch):
    """The tolerances of tests/cells/test_bf16_stack.cpp: relative RMS error of the outputs 2e-2,
    of the gradients 5e-2, largest error over largest magnitude 8e-2; and not identical (the
    factors were rounded)."""
    monkeypatch.setenv("RBN_TEST_BF16", "emulate")
    kw = {"t_max": T} if cls is rt.BNLSTM else {}
    torch.manual_seed(0)
    a = cls(C, H, 2, **kw)
    b = cls(C, H, 2, precision="bf16", **kw)
    b.load_state_dict(a.state_dict())
    assert "precision='bf16'" in repr(b)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, N, C, generator=g)
    dy = torch.randn(T, N, H, generator=g)
    out = []
    for m in (a, b):
        xi = x.clone().requires_grad_()
        y, _ = m(xi)
        y.backward(dy)
        out.append((y.detach(), xi.grad, [p.grad for p in m.parameters()]))
        assert rbn.precision() == "fp32"  # restored after the forward and the backward

    def rms(u, v):
        return ((u - v).norm() / v.norm()).item()

    def worst(u, v):
        return ((u - v).abs().max() / v.abs().max()).item()

    (ya, dxa, ga), (yb, dxb, gb) = out
    gb, ga = torch.cat([p.flatten() for p in gb]), torch.cat([p.flatten() for p in ga])
    assert 0 < rms(yb, ya) <= 2e-2
    assert rms(dxb, dxa) <= 5e-2
    assert 0 < rms(gb, ga) <= 5e-2
    assert max(worst(yb, ya), worst(dxb, dxa), worst(gb, ga)) <= 8e-2
