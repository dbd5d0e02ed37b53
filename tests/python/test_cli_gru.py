"""The GRU family through the rbn tool: `rbn train --cell gru|bngru|lngru` on every task, then
info, eval, forward (against tools/torch_cells.py's plain PyTorch GRUs loaded with the
checkpoint's tensors), sample and popstats; `rbn convert` with nn.GRU both ways; the errors
(--forget-bias with a GRU, a bidirectional nn.GRU missing a reverse tensor, --to-torch of a
normalized GRU).

Run with Debian's interpreter: /usr/bin/python3 -m pytest tests/python/test_cli_gru.py
"""
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
RBN = os.environ.get("RBN_BIN", os.path.join(ROOT, "build", "rbn"))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import torch_cells  # noqa: E402

pytestmark = pytest.mark.skipif(not os.path.exists(RBN), reason="the rbn tool is not built")

GRUS = ["gru", "bngru", "lngru"]
TASKS = ["seqmnist", "pmnist", "ptb", "text8", "text", "seq"]
LM_TASKS = ("ptb", "text8", "text")


def cli(*args, code=0):
    r = subprocess.run([RBN, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert r.returncode == code, r.stderr
    return r


def read_safetensors(path):
    """({name: array}, metadata) of a safetensors file (F32, F64, I32, I64)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    md = header.pop("__metadata__", {})
    kinds = {"F32": "<f4", "F64": "<f8", "I32": "<i4", "I64": "<i8"}
    out = {}
    for name, t in header.items():
        b, e = t["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + b:8 + n + e], dtype=kinds[t["dtype"]]).reshape(t["shape"])
    return out, md


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        b = np.ascontiguousarray(tensors[name], dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def task_args(task, tmp_path):
    """Flags of a tiny run of `task` (data made in tmp_path where the repository has none)."""
    rng = np.random.default_rng(7)
    if task in ("seqmnist", "pmnist"):  # data/mnist holds the test set only: split it
        return ["--task", task, "--data", os.path.join(ROOT, "data", "mnist"),
                "--mnist-split-train", "8000", "--mnist-split-valid", "200", "--batch-size", "4"]
    if task == "ptb":
        return ["--task", "ptb", "--data", os.path.join(ROOT, "data", "ptb"), "--seq-len", "12",
                "--batch-size", "4", "--layers", "2"]
    if task == "text8":
        words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran"]
        text = " ".join(rng.choice(words, size=1500))
        (tmp_path / "text8").write_text(text)
        return ["--task", "text8", "--data", tmp_path / "text8", "--seq-len", "12",
                "--batch-size", "4", "--embed", "5"]
    if task == "text":
        (tmp_path / "corpus.txt").write_bytes(bytes(rng.integers(32, 100, size=4000).astype(np.uint8)))
        return ["--task", "text", "--data", tmp_path / "corpus.txt", "--seq-len", "12",
                "--batch-size", "4"]
    assert task == "seq"  # a class per sequence from 3 features
    data = tmp_path / "seqdata"
    data.mkdir()
    np.save(data / "train.x.npy", rng.standard_normal((9, 60, 3)).astype(np.float32))
    np.save(data / "train.y.npy", rng.integers(0, 3, size=60).astype(np.int32))
    np.save(data / "train.lengths.npy", rng.integers(3, 10, size=60).astype(np.int32))
    return ["--task", "seq", "--data", data, "--batch-size", "8"]


def reference(tensors, md):
    """tools/torch_cells.py's stack with the checkpoint's recurrent tensors, in eval mode (double)."""
    cell, C, H = md["cell"], int(md["input_size"]), int(md["hidden_size"])
    L, t_max = int(md["num_layers"]), int(md["t_max"])
    stack = torch_cells.RecurrentStack(cell, C, H, L, t_max=t_max, eps=float(md["eps"]),
                                       ln_input=md["ln_input"] == "true").double().eval()
    sd = {k: torch.from_numpy(v.astype(np.float64)) for k, v in tensors.items()
          if k.startswith("rnn.")}
    stack.load_state_dict(sd)  # strict: the checkpoint holds exactly the SPEC 2b tensors
    return stack


def reference_outputs(tensors, md, x, ids, lengths):
    """What `rbn forward` must write: logits [N,K] (classify) or [T,N,K] (lm)."""
    stack = reference(tensors, md)
    W = torch.from_numpy(tensors["head.weight"].astype(np.float64))
    b = torch.from_numpy(tensors["head.bias"].astype(np.float64))
    with torch.no_grad():
        if md["head"] == "lm":
            V = int(md["num_classes"])
            if "embed.weight" in tensors:
                x = torch.from_numpy(tensors["embed.weight"].astype(np.float64))[torch.from_numpy(ids)]
            else:
                x = torch.nn.functional.one_hot(torch.from_numpy(ids), V).double()
            y, _ = stack(x, lengths)
            return (y @ W.T + b).numpy()
        _, hT = stack(torch.from_numpy(x.astype(np.float64)), lengths)
        return (hT[-1] @ W.T + b).numpy()


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("cell", GRUS)
def test_every_task(tmp_path, cell, task):
    run = tmp_path / "run"
    cli("train", *task_args(task, tmp_path), "--cell", cell, "--hidden", "6", "--steps", "3",
        "--eval-every", "3", "--eval-batches", "1", "--popstats-batches", "1", "--threads", "1",
        "--seed", "5", "--out", run)
    ck = run / "best.safetensors"
    tensors, md = read_safetensors(ck)
    assert md["cell"] == cell and md["format"] == "rbn/1"
    C, L = int(md["input_size"]), int(md["num_layers"])
    # SPEC 2b / 5: two biases, 3H gate rows, the cell's norms, no LSTM bias
    assert tensors["rnn.0.weight_ih"].shape == (18, C) and tensors["rnn.0.weight_hh"].shape == (18, 6)
    for k in range(L):
        assert tensors[f"rnn.{k}.bias_ih"].shape == (18,) and tensors[f"rnn.{k}.bias_hh"].shape == (18,)
        assert f"rnn.{k}.bias" not in tensors
    norms = {n.split(".", 2)[2] for n in tensors if n.startswith("rnn.0.") and ("bn_" in n or "ln_" in n)}
    if cell == "bngru":
        assert norms == {"bn_x.weight", "bn_h.weight", "bn_x.running_mean", "bn_x.running_var",
                         "bn_h.running_mean", "bn_h.running_var"}
        assert tensors["rnn.0.bn_h.running_mean"].shape == (int(md["t_max"]), 18)
        assert md["popstats"] == "pass"
    elif cell == "lngru":
        assert norms == {"ln_x.weight", "ln_h.weight"}
    else:
        assert norms == set()
    info = json.loads(cli("info", ck, "--json").stdout)
    assert info["metadata"]["cell"] == cell

    r = cli("eval", "--checkpoint", ck, "--split", "valid", "--batch-size", "50", "--threads", "1",
            *(["--windows"] if task in LM_TASKS else []))
    assert "nan" not in r.stdout.lower() and ("accuracy" in r.stdout or "bpc" in r.stdout), r.stdout

    # forward = the PyTorch reference with the same tensors (population statistics, t >= t_max
    # clamped to the last row), uneven lengths
    rng = np.random.default_rng(2)
    N = 3
    lengths = np.array([15, 9, 13], dtype=np.int32)
    np.save(tmp_path / "len.npy", lengths)
    ids = None
    if md["head"] == "lm":
        ids = rng.integers(0, int(md["num_classes"]), size=(15, N)).astype(np.int64)
        np.save(tmp_path / "in.npy", ids)
        x = None
    else:
        x = rng.random((15, N, C)).astype(np.float32)
        np.save(tmp_path / "in.npy", x)
    cli("forward", "--checkpoint", ck, "--input", tmp_path / "in.npy", "--lengths",
        tmp_path / "len.npy", "--output", tmp_path / "out.npy")
    got = np.load(tmp_path / "out.npy")
    want = reference_outputs(tensors, md, x, ids, lengths.tolist())
    if md["head"] == "lm":  # positions past a row's length are not defined outputs
        valid = np.arange(15)[:, None] < lengths[None, :]
        got, want = got[valid], want[valid]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    if task in LM_TASKS:
        a = cli("sample", "--checkpoint", ck, "--length", "30", "--seed", "3").stdout
        b = cli("sample", "--checkpoint", ck, "--length", "30", "--seed", "3").stdout
        assert len(a.strip()) >= 20 and a == b
    if cell == "bngru":
        cli("popstats", "--checkpoint", ck, "--out", tmp_path / "pass.safetensors", "--batches", "2")
        t2, md2 = read_safetensors(tmp_path / "pass.safetensors")
        assert md2["popstats"] == "pass"
        assert not np.array_equal(t2["rnn.0.bn_x.running_mean"], np.zeros_like(t2["rnn.0.bn_x.running_mean"]))
    else:  # nothing to compute: refused, naming the cell
        r = cli("popstats", "--checkpoint", ck, code=2)
        assert cell in r.stderr


def train_seq(tmp_path, cell, *extra, code=0, steps=2):
    return cli("train", *task_args("seq", tmp_path), "--cell", cell, "--hidden", "5",
               "--steps", steps, "--eval-every", "0", "--threads", "1", "--out", tmp_path / "run",
               *extra, code=code)


def one_line(err):
    """The error message, which must be one line (blank lines around it aside)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("cell", GRUS)
def test_forget_bias_with_a_gru_is_an_error(tmp_path, cell):
    line = one_line(train_seq(tmp_path, cell, "--forget-bias", "1", code=2).stderr)
    assert "--forget-bias" in line and "forget gate" in line
    assert not (tmp_path / "run" / "last.safetensors").exists()
    # in a JSON config too
    (tmp_path / "c.json").write_text(json.dumps({"cell": cell, "forget_bias": 2.0}))
    (tmp_path / "d").mkdir()
    r = cli("train", "--config", tmp_path / "c.json", *task_args("seq", tmp_path / "d"),
            "--out", tmp_path / "run2", code=2)
    assert "--forget-bias" in one_line(r.stderr)


def test_gamma_c_with_a_gru_is_an_error(tmp_path):
    line = one_line(train_seq(tmp_path, "bngru", "--gamma-c", "0.5", code=2).stderr)
    assert "--gamma-c" in line and "bngru" in line


def test_lstm_keeps_its_forget_bias(tmp_path):
    """Unset, the LSTMs' forget bias is 1; --forget-bias sets it; config.json says which. (One
    Adam step of lr 1e-9 moves a value by 1e-9 at most: the checkpoint shows the initial one.)"""
    for flag, want in (([], 1.0), (["--forget-bias", "2.5"], 2.5)):
        sub = tmp_path / f"d{want}"
        sub.mkdir()
        cli("train", *task_args("seq", sub), "--cell", "lstm", "--hidden", "4", "--steps", "1",
            "--lr", "1e-9", "--eval-every", "0", "--threads", "1", "--out", sub / "run", *flag)
        t, _ = read_safetensors(sub / "run" / "last.safetensors")
        np.testing.assert_allclose(t["rnn.0.bias"][4:8], np.full(4, want), atol=1e-7)
        cfg = json.loads((sub / "run" / "config.json").read_text())
        assert cfg["forget_bias"] == (None if not flag else want)


def test_help_and_validation_list_every_cell(tmp_path):
    out = cli("train", "--help").stdout
    for cell in ["lstm", "bnlstm", "bnx", "bnx-seq", "lnlstm"] + GRUS:
        assert cell in out, cell
    r = train_seq(tmp_path, "gruu", code=2)
    assert "--cell" in r.stderr and "lngru" in r.stderr and "bnx-seq" in r.stderr


def test_gru_init_biases_zero_and_identity_on_n(tmp_path):
    """The initial values, seen through one Adam step of lr 1e-9 (--steps 0 writes no checkpoint)."""
    train_seq(tmp_path, "gru", "--init-recurrent", "identity", "--lr", "1e-9", steps=1)
    t, _ = read_safetensors(tmp_path / "run" / "last.safetensors")
    assert np.abs(t["rnn.0.bias_ih"]).max() < 1e-7 and np.abs(t["rnn.0.bias_hh"]).max() < 1e-7
    np.testing.assert_allclose(t["rnn.0.weight_hh"][10:15], np.eye(5), atol=1e-7)
    r_block = t["rnn.0.weight_hh"][0:5].astype(np.float64)
    np.testing.assert_allclose(r_block @ r_block.T, np.eye(5), atol=1e-5)  # orthogonal


# ---- rbn convert with nn.GRU ----------------------------------------------------------------

def test_nn_gru_both_ways(tmp_path):
    torch.manual_seed(0)
    gru = torch.nn.GRU(3, 5, num_layers=2)
    head = torch.nn.Linear(5, 4)
    sd = {k: v.detach().numpy() for k, v in gru.state_dict().items()}
    sd.update({"head.weight": head.weight.detach().numpy(), "head.bias": head.bias.detach().numpy()})
    write_safetensors(tmp_path / "torch.safetensors", sd)
    r = cli("convert", "--from-torch", tmp_path / "torch.safetensors", "--out", tmp_path / "rbn.safetensors")
    assert "nn.GRU" in r.stdout and "gru" in r.stdout
    t, md = read_safetensors(tmp_path / "rbn.safetensors")
    assert md["cell"] == "gru" and md["converted_from"] == "torch.nn.GRU" and md["head"] == "classify"
    np.testing.assert_array_equal(t["rnn.1.bias_hh"], sd["bias_hh_l1"])  # kept apart, not summed
    x = torch.randn(7, 4, 3)
    lengths = torch.tensor([7, 3, 5, 1])
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "len.npy", lengths.numpy().astype(np.int32))
    cli("forward", "--checkpoint", tmp_path / "rbn.safetensors", "--input", tmp_path / "x.npy",
        "--lengths", tmp_path / "len.npy", "--output", tmp_path / "y.npy")
    with torch.no_grad():
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        _, hn = gru(packed)
        want = head(hn[-1]).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, atol=1e-5)
    # and back: nn.GRU loaded with the exported state dict is the same module
    cli("convert", "--to-torch", tmp_path / "rbn.safetensors", "--out", tmp_path / "back.safetensors")
    back, _ = read_safetensors(tmp_path / "back.safetensors")
    assert set(back) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)


def test_trained_gru_to_nn_gru(tmp_path):
    """A GRU trained by the tool, exported, runs in nn.GRU as in `rbn forward` (no head)."""
    train_seq(tmp_path, "gru")
    ck = tmp_path / "run" / "last.safetensors"
    cli("convert", "--to-torch", ck, "--out", tmp_path / "sd.safetensors")
    sd, _ = read_safetensors(tmp_path / "sd.safetensors")
    gru = torch.nn.GRU(3, 5)
    gru.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sd.items() if not k.startswith("head.")})
    head = torch.nn.Linear(5, 3)
    head.load_state_dict({"weight": torch.from_numpy(sd["head.weight"].copy()),
                          "bias": torch.from_numpy(sd["head.bias"].copy())})
    x = np.random.default_rng(0).standard_normal((6, 2, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    cli("forward", "--checkpoint", ck, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    with torch.no_grad():
        _, hn = gru(torch.from_numpy(x))
        want = head(hn[-1]).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, atol=1e-5)


def test_convert_refusals(tmp_path):
    torch.manual_seed(0)
    # a bidirectional nn.GRU converts (test_cli_interop.py), but not with a reverse tensor missing
    bi = torch.nn.GRU(3, 4, bidirectional=True)
    write_safetensors(tmp_path / "bi.safetensors", {k: v.detach().numpy() for k, v in bi.state_dict().items()
                                                    if k != "bias_hh_l0_reverse"})
    r = cli("convert", "--from-torch", tmp_path / "bi.safetensors", "--out", tmp_path / "o.safetensors", code=1)
    assert "bias_hh_l0_reverse" in one_line(r.stderr)
    assert not (tmp_path / "o.safetensors").exists()
    # a shape that is neither nn.LSTM's nor nn.GRU's
    write_safetensors(tmp_path / "odd.safetensors", {"weight_ih_l0": np.zeros((10, 3)), "weight_hh_l0": np.zeros((10, 5))})
    r = cli("convert", "--from-torch", tmp_path / "odd.safetensors", "--out", tmp_path / "o.safetensors", code=1)
    assert "weight_hh_l0" in one_line(r.stderr)
    # a normalized GRU has no nn.GRU counterpart
    train_seq(tmp_path, "bngru")
    r = cli("convert", "--to-torch", tmp_path / "run" / "last.safetensors", "--out", tmp_path / "o.safetensors", code=2)
    assert "--to-torch" in one_line(r.stderr) and "bngru" in r.stderr
