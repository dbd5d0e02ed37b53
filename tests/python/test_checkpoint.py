"""rbn.load / rbn.save: checkpoints trained by the rbn tool opened in Python, written back, and run
again by the tool (forward, eval, sample) for every cell and head; the safetensors reader and
writer against the format's rules."""
import json
import os
import subprocess

import numpy as np
import pytest
import torch

import rbn
from rbn import safetensors

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
RBN = os.environ.get("RBN_BIN", os.path.join(ROOT, "build", "rbn"))
needs_cli = pytest.mark.skipif(not os.path.exists(RBN), reason="the rbn tool is not built")

CELLS = ["lstm", "bnlstm", "bnx", "bnx-seq", "lnlstm", "gru", "bngru", "lngru"]
NO_STATS = ("lstm", "lnlstm", "gru", "lngru")  # cells without population statistics


def cli(*args):
    r = subprocess.run([RBN, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


def train(out, cell, head):
    common = ["--cell", cell, "--hidden", "6", "--steps", "3", "--eval-every", "3",
              "--eval-batches", "1", "--popstats-batches", "1", "--threads", "1", "--seed", "5",
              "--out", out]
    if head == "classify":  # permuted MNIST (784 steps of one pixel), 10 classes
        task = ["--task", "pmnist", "--data", os.path.join(ROOT, "data", "mnist"),
                "--mnist-split-train", "8000", "--mnist-split-valid", "200", "--batch-size", "4"]
    else:  # PTB characters; an embedding for two of the cells, one-hot input for the others
        task = ["--task", "ptb", "--data", os.path.join(ROOT, "data", "ptb"), "--seq-len", "12",
                "--batch-size", "4", "--layers", "2"]
        if cell in ("bnx-seq", "lnlstm", "lngru"):
            task += ["--embed", "5"]
    cli("train", *task, *common)
    return out / "best.safetensors"


def cli_forward(tmp_path, ck, x):
    np.save(tmp_path / "in.npy", x)
    cli("forward", "--checkpoint", ck, "--input", tmp_path / "in.npy", "--output", tmp_path / "out.npy")
    return np.load(tmp_path / "out.npy")


def cli_eval(ck, cell):
    # The statistics the file holds (cells without population statistics take no --popstats).
    stats = [] if cell in NO_STATS else ["--popstats", "checkpoint"]
    r = cli("eval", "--checkpoint", ck, "--split", "valid", *stats,
            "--batch-size", "50", "--windows", "--threads", "1")
    return r.stdout.split(": ", 1)[1].split(";")[0]  # "accuracy 0.1 (loss 2.3 nats, N sequences"


@needs_cli
@pytest.mark.parametrize("head", ["classify", "lm"])
@pytest.mark.parametrize("cell", CELLS)
def test_cli_python_cli(tmp_path, cell, head):
    ck = train(tmp_path / "run", cell, head)
    m = rbn.load(ck)
    md = m.metadata
    assert isinstance(m.rnn, rbn.checkpoint._CLASSES[cell][0]) and m.rnn._cell == cell
    assert m.head_kind == head and not m.training
    assert m.rnn.popstats_kind == md["popstats"] == "pass" or cell in NO_STATS
    rng = np.random.default_rng(1)
    if head == "classify":
        assert m.permutation.shape == (784,) and sorted(m.permutation) == list(range(784))
        assert m.vocab is None and m.head.out_features == 10
        x = rng.random((784, 3, 1), dtype=np.float32)
    else:
        assert m.permutation is None and m.vocab["kind"] == "ptb"
        assert len(m.vocab["symbols"]) == m.head.out_features
        assert (m.embed is not None) == (cell in ("bnx-seq", "lnlstm", "lngru"))
        x = rng.integers(0, m.head.out_features, size=(15, 3)).astype(np.int64)  # past seq-len
    want = cli_forward(tmp_path, ck, x)
    with torch.no_grad():
        got = m(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    # unchanged, written back: the tool reads the same model (same outputs, same evaluation)
    rbn.save(tmp_path / "back.safetensors", m)
    np.testing.assert_array_equal(cli_forward(tmp_path, tmp_path / "back.safetensors", x), want)
    assert cli_eval(tmp_path / "back.safetensors", cell) == cli_eval(ck, cell)
    info = json.loads(cli("info", tmp_path / "back.safetensors", "--json").stdout)["metadata"]
    for k in ("cell", "hidden_size", "num_layers", "t_max", "head", "popstats", "popstats_data",
              "config", "vocab", "data.task"):
        assert info.get(k) == md.get(k), k
    assert "optim" not in info and "schedule" not in info  # a model file, as `rbn popstats` writes

    # changed in Python (every parameter, the statistics, the head): the tool follows
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape))
        for n, b in m.rnn.named_buffers():
            b.mul_(1.1) if "var" in n else b.add_(0.1)
    rbn.save(tmp_path / "changed.safetensors", m)
    with torch.no_grad():
        got = m(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(cli_forward(tmp_path, tmp_path / "changed.safetensors", x), got,
                               rtol=1e-4, atol=1e-5)
    if head == "lm":
        a = cli("sample", "--checkpoint", tmp_path / "changed.safetensors", "--length", "30",
                "--seed", "3").stdout
        # one-byte symbols are stored as their byte values (docs/file-format.md)
        chars = {chr(v) if isinstance(v, int) else v for v in m.vocab["symbols"]}
        assert len(a.strip()) >= 30 and set(a.strip()) <= chars | {" ", "\n"}
    # read back: the same tensors (LSTMs: bias_ih + bias_hh as the one rbn bias; GRUs: both)
    again = rbn.load(tmp_path / "changed.safetensors")
    a, b = again.rnn.state_dict_rbn(), m.rnn.state_dict_rbn()
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=0, atol=0, msg=n)
    for (n, p), q in zip(m.named_parameters(), again.parameters()):
        if not n.startswith("rnn."):
            torch.testing.assert_close(q, p, rtol=0, atol=0, msg=n)
    assert again.rnn.popstats_kind == m.rnn.popstats_kind
    assert "popstats_data" not in again.metadata  # the statistics were changed by hand


@needs_cli
def test_built_in_python_runs_under_the_tool(tmp_path):
    """A model made in PyTorch (no CLI run behind it) is written and run by `rbn forward`."""
    torch.manual_seed(0)
    rnn = rbn.torch.BNLSTM(3, 5, num_layers=2, t_max=4)
    head = torch.nn.Linear(5, 4)
    rnn.train()
    rnn(torch.randn(4, 8, 3))  # running averages move away from their initial values
    rbn.save(tmp_path / "m.safetensors", rnn, head)
    md = safetensors.read(tmp_path / "m.safetensors")[1]
    assert md["popstats"] == "running" and md["head"] == "classify" and md["num_classes"] == "4"
    x = torch.randn(6, 2, 3)
    rnn.eval()
    with torch.no_grad():
        _, (hT, _) = rnn(x)
        want = head(hT[-1]).numpy()
    np.testing.assert_allclose(cli_forward(tmp_path, tmp_path / "m.safetensors", x.numpy()), want,
                               rtol=1e-4, atol=1e-5)
    m = rbn.load(tmp_path / "m.safetensors")
    with torch.no_grad():
        np.testing.assert_allclose(m(x).numpy(), want, rtol=1e-6, atol=1e-6)


def test_save_refuses_what_the_format_cannot_hold(tmp_path):
    rnn = rbn.torch.LSTM(3, 5)
    with pytest.raises(ValueError, match="nn.Linear\\(5, K\\)"):
        rbn.save(tmp_path / "a.safetensors", rnn, torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="one-hot language model needs input_size"):
        rbn.save(tmp_path / "a.safetensors", rnn, torch.nn.Linear(5, 7), head_kind="lm")
    with pytest.raises(TypeError, match="not an rbn.torch module"):
        rbn.save(tmp_path / "a.safetensors", torch.nn.LSTM(3, 5))
    assert not os.listdir(tmp_path)


def test_safetensors_round_trip_and_rbn_layout(tmp_path):
    t = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array([1, -2], np.int32),
         "c": np.zeros((0, 4), np.float64)}
    safetensors.write(tmp_path / "x.safetensors", t, {"k": "v"})
    raw = (tmp_path / "x.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0
    header = json.loads(raw[8:8 + n])
    assert [k for k in header if k != "__metadata__"] == ["a", "b", "c"]
    assert header["__metadata__"]["checksum"].startswith("crc32:")
    back, md = safetensors.read(tmp_path / "x.safetensors")
    assert md["k"] == "v" and set(back) == set(t)
    for k in t:
        assert back[k].dtype == t[k].dtype
        np.testing.assert_array_equal(back[k], t[k])
    # a flipped data byte fails the checksum; a truncated file names the problem
    bad = bytearray(raw)
    bad[-1] ^= 1
    (tmp_path / "bad.safetensors").write_bytes(bytes(bad))
    with pytest.raises(safetensors.SafetensorsError, match="bad.safetensors: checksum"):
        safetensors.read(tmp_path / "bad.safetensors")
    (tmp_path / "short.safetensors").write_bytes(raw[:8 + n + 4])
    with pytest.raises(safetensors.SafetensorsError, match="out of range"):
        safetensors.read(tmp_path / "short.safetensors")
    with pytest.raises(rbn.CheckpointError, match="x.safetensors: unknown format"):
        rbn.load(tmp_path / "x.safetensors")


SEQ_TARGETS = {  # --task seq: the targets' shape and kind decide the head (docs/data.md)
    "tag": lambda rng, T, N: rng.integers(0, 3, size=(T, N)).astype(np.int32),
    "regress-seq": lambda rng, T, N: rng.standard_normal((N, 2)).astype(np.float32),
    "regress-step": lambda rng, T, N: rng.standard_normal((T, N)).astype(np.float32),
}


@needs_cli
@pytest.mark.parametrize("ids", [False, True])
@pytest.mark.parametrize("target", sorted(SEQ_TARGETS))
def test_cli_python_cli_seq_heads(tmp_path, target, ids):
    """`--task seq` models (heads tag and regress, features or token ids): rbn.load gives what
    `rbn forward` writes; written back by rbn.save, the tool reads the same model."""
    rng = np.random.default_rng(3)
    T, N = 6, 40
    data = tmp_path / "data"
    data.mkdir()
    x = (rng.integers(0, 4, size=(T, N)).astype(np.int32) if ids
         else rng.standard_normal((T, N, 3)).astype(np.float32))
    np.save(data / "train.x.npy", x)
    np.save(data / "train.y.npy", SEQ_TARGETS[target](rng, T, N))
    np.save(data / "train.lengths.npy", rng.integers(2, T + 1, size=N).astype(np.int32))
    ck = tmp_path / "run" / "last.safetensors"
    cli("train", "--task", "seq", "--data", data, "--cell", "bnlstm", "--hidden", "5",
        "--batch-size", "8", "--steps", "3", "--eval-every", "0", "--threads", "1", "--seed", "2",
        "--out", tmp_path / "run")
    m = rbn.load(ck)
    assert m.head_kind == target.split("-")[0]
    assert m.per_step == (target != "regress-seq") and m.input_ids == ids
    xin = x[:, :7]
    lengths = np.array([6, 2, 5, 6, 3, 4, 6], dtype=np.int32)
    np.save(tmp_path / "len.npy", lengths)
    np.save(tmp_path / "in.npy", xin)

    def tool(path):
        cli("forward", "--checkpoint", path, "--input", tmp_path / "in.npy", "--lengths",
            tmp_path / "len.npy", "--output", tmp_path / "out.npy")
        return np.load(tmp_path / "out.npy")

    want = tool(ck)
    with torch.no_grad():
        got = m(torch.from_numpy(xin), lengths=torch.from_numpy(lengths)).numpy()
    assert got.shape == want.shape
    valid = (np.arange(T)[:, None] < lengths[None, :]) if m.per_step else np.ones(7, bool)
    np.testing.assert_allclose(got[valid], want[valid], rtol=1e-4, atol=1e-5)
    rbn.save(tmp_path / "back.safetensors", m)
    np.testing.assert_array_equal(tool(tmp_path / "back.safetensors"), want)
    again = rbn.load(tmp_path / "back.safetensors")
    assert (again.head_kind, again.per_step, again.input_ids) == (m.head_kind, m.per_step, ids)


@needs_cli
def test_load_names_or_takes_the_runs_gemm_backend(tmp_path):
    """A checkpoint trained on the other GEMM backend: rbn.load warns (the process's backend is
    kept), gemm="recorded" switches the process to the run's, anything else is refused."""
    mine = rbn.gemm_backend()
    other = "onednn" if mine == "openblas" else "openblas"
    out = tmp_path / "run"
    cli("train", "--task", "ptb", "--data", os.path.join(ROOT, "data", "ptb"), "--seq-len", "12",
        "--batch-size", "4", "--cell", "lstm", "--hidden", "6", "--steps", "2", "--eval-every", "2",
        "--eval-batches", "1", "--threads", "1", "--gemm", other, "--out", out)
    ck = out / "best.safetensors"
    try:
        with pytest.warns(UserWarning, match=f"trained with GEMM backend {other}"):
            rbn.load(ck)
        assert rbn.gemm_backend() == mine
        with pytest.raises(ValueError, match="gemm must be None or 'recorded'"):
            rbn.load(ck, gemm="fast")
        rbn.load(ck, gemm="recorded")
        assert rbn.gemm_backend() == other
        tensors, md = safetensors.read(ck)
        safetensors.write(tmp_path / "odd.safetensors", tensors, dict(md, gemm_backend="mkl"))
        with pytest.raises(rbn.CheckpointError, match="'gemm_backend' = 'mkl': .*unknown GEMM backend 'mkl'"):
            rbn.load(tmp_path / "odd.safetensors", gemm="recorded")
    finally:
        rbn.set_gemm_backend(mine)
