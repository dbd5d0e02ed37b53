"""The Python module: rbn.Stack against the PyTorch reference modules (tools/torch_cells.py);
rbn.torch has its own files (test_torch_*.py). Run with Debian's python3, PYTHONPATH=build/python."""
import os
import sys

import numpy as np
import pytest
import torch

import rbn
from rbn.torch import BNLSTM

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
import torch_cells  # noqa: E402

CELLS = ["lstm", "bnlstm", "bnx", "bnx-seq", "lnlstm"]
T, N, C, H, L = 6, 5, 3, 7, 2
LENGTHS = [6, 2, 5, 6, 1]


def make_pair(cell, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    ref = torch_cells.RecurrentStack(cell, C, H, L, t_max=T, **kw).to(dtype)
    with torch.no_grad():  # move away from the initial values so every parameter matters
        for name, p in ref.named_parameters():
            p.add_(0.3 * torch.randn_like(p))
    st = rbn.Stack(cell, C, H, L, t_max=T, dtype="float64" if dtype == torch.float64 else "float32", **kw)
    sd = ref.state_dict()
    for name in st.param_names + st.buffer_names:
        st.set(name, sd[name].detach().numpy())
    return ref, st


@pytest.mark.parametrize("cell", CELLS)
def test_stack_matches_reference_module_forward_and_backward(cell):
    ref, st = make_pair(cell)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, N, C, dtype=torch.float64, generator=g, requires_grad=True)
    h0 = torch.randn(L, N, H, dtype=torch.float64, generator=g, requires_grad=True)
    c0 = torch.randn(L, N, H, dtype=torch.float64, generator=g, requires_grad=True)
    lengths = torch.tensor(LENGTHS)
    ref.train()
    y, (hT, cT) = ref(x, lengths, h0, c0)
    wy = torch.randn_like(y)
    wh = torch.randn_like(hT)
    loss = (wy * y).sum() + (wh * hT).sum() + cT.sum()
    loss.backward()

    ry, rhT, rcT = st.forward(x.detach().numpy(), np.array(LENGTHS, dtype=np.int32),
                              h0.detach().numpy(), c0.detach().numpy(), train=True)
    np.testing.assert_allclose(ry, y.detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(rhT, hT.detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(rcT, cT.detach().numpy(), atol=1e-10)
    st.zero_grad()
    dx, dh0, dc0 = st.backward(wy.numpy(), wh.numpy(), np.ones_like(rcT))
    np.testing.assert_allclose(dx, x.grad.numpy(), atol=1e-9)
    np.testing.assert_allclose(dh0, h0.grad.numpy(), atol=1e-9)
    np.testing.assert_allclose(dc0, c0.grad.numpy(), atol=1e-9)
    grads = st.grads()
    for name, p in ref.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), atol=1e-9, err_msg=name)
    # running statistics after one training forward
    sd = ref.state_dict()
    for name, v in st.buffers().items():
        np.testing.assert_allclose(v, sd[name].numpy(), atol=1e-12, err_msg=name)


@pytest.mark.parametrize("cell", CELLS)
def test_inference_mode_uses_population_statistics(cell):
    ref, st = make_pair(cell)
    ref.eval()
    g = torch.Generator().manual_seed(2)
    steps = T + 3  # past t_max: the last statistics row
    x = torch.randn(steps, N, C, dtype=torch.float64, generator=g)
    with torch.no_grad():
        y, _ = ref(x)
    ry, _, _ = st.forward(x.numpy(), train=False, need_backward=False)
    np.testing.assert_allclose(ry, y.numpy(), atol=1e-10)


def test_float32_close_to_float64():
    ref, st64 = make_pair("bnlstm")
    st32 = rbn.Stack("bnlstm", C, H, L, t_max=T)
    for name, v in st64.params().items():
        st32.set(name, v.astype(np.float32))
    x = np.random.default_rng(4).standard_normal((T, N, C))
    y64, _, _ = st64.forward(x)
    y32, _, _ = st32.forward(x.astype(np.float32))
    np.testing.assert_allclose(y32, y64, atol=2e-5)


def test_bnlstm_trains_inside_a_torch_model():
    torch.manual_seed(5)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = BNLSTM(2, 16, 1, t_max=12)
            self.head = torch.nn.Linear(16, 2)

        def forward(self, x):
            _, (hT, _) = self.rnn(x)
            return self.head(hT[-1])

    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.randn(12, 32, 2)
    labels = (x[:, :, 0].sum(0) > 0).long()  # the sign of a sum over time
    first = None
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(net(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first
    net.eval()
    with torch.no_grad():
        acc = (net(x).argmax(1) == labels).float().mean().item()
    assert acc > 0.8


def test_bad_shapes_raise_value_error():
    st = rbn.Stack("lstm", 3, 4)
    with pytest.raises(ValueError, match="x"):
        st.forward(np.zeros((2, 2, 5), dtype=np.float32))
    with pytest.raises(ValueError):
        rbn.Stack("gruu", 3, 4)


def test_gemm_backend_switch_keeps_results_to_float_rounding():
    pinned = rbn.gemm_backend()
    assert pinned == os.environ.get("RBN_GEMM", "openblas")
    _, st = make_pair("bnlstm", dtype=torch.float32)
    x = np.random.default_rng(3).standard_normal((T, N, C)).astype(np.float32)
    out = {}
    try:
        for name in ("openblas", "onednn"):
            rbn.set_gemm_backend(name)
            assert rbn.gemm_backend() == name
            out[name] = st.forward(x)[0]
    finally:
        rbn.set_gemm_backend(pinned)
    np.testing.assert_allclose(out["onednn"], out["openblas"], rtol=1e-4, atol=1e-5)
    with pytest.raises(rbn.RbnError, match="set_gemm_backend: unknown GEMM backend 'mkl'"):
        rbn.set_gemm_backend("mkl")
