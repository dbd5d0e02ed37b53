"""The rbn tool with PyTorch: nn.LSTM weights in and out (rbn convert), rbn forward against
nn.LSTM, and a trained checkpoint through forward and sample."""
import json
import os
import struct
import subprocess

import numpy as np
import pytest
import torch

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
RBN = os.environ.get("RBN_BIN", os.path.join(ROOT, "build", "rbn"))

pytestmark = pytest.mark.skipif(not os.path.exists(RBN), reason="the rbn tool is not built")


def write_safetensors(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype=np.float32)
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = metadata or {"format": "pt"}
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + b:8 + n + e], dtype=np.float32).reshape(t["shape"])
    return out, header.get("__metadata__", {})


def run(*args):
    r = subprocess.run([RBN, *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r


def test_nn_lstm_weights_both_ways(tmp_path):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 5, num_layers=2)
    sd = {k: v.detach().numpy() for k, v in lstm.state_dict().items()}
    write_safetensors(tmp_path / "torch.safetensors", sd)
    run("convert", "--from-torch", str(tmp_path / "torch.safetensors"), "--out", str(tmp_path / "rbn.safetensors"))
    x = torch.randn(7, 4, 3)
    np.save(tmp_path / "x.npy", x.numpy())
    run("forward", "--checkpoint", str(tmp_path / "rbn.safetensors"), "--input", str(tmp_path / "x.npy"),
        "--output", str(tmp_path / "y.npy"))
    y = np.load(tmp_path / "y.npy")
    with torch.no_grad():
        want, _ = lstm(x)
    np.testing.assert_allclose(y, want.numpy(), atol=1e-5)
    # and back: an nn.LSTM loaded with the exported weights gives the same outputs
    run("convert", "--to-torch", str(tmp_path / "rbn.safetensors"), "--out", str(tmp_path / "back.safetensors"))
    back, _ = read_safetensors(tmp_path / "back.safetensors")
    lstm2 = torch.nn.LSTM(3, 5, num_layers=2)
    lstm2.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in back.items()})
    with torch.no_grad():
        y2, _ = lstm2(x)
    np.testing.assert_allclose(y2.numpy(), want.numpy(), atol=1e-5)


def test_trained_checkpoint_forward_and_sample(tmp_path):
    out = tmp_path / "run"
    run("train", "--task", "ptb", "--data", os.path.join(ROOT, "data", "ptb"), "--cell", "bnlstm",
        "--hidden", "16", "--seq-len", "20", "--batch-size", "8", "--steps", "20", "--eval-every", "10",
        "--eval-batches", "2", "--popstats-batches", "2", "--out", str(out))
    ck = str(out / "best.safetensors")
    ids = np.random.default_rng(0).integers(0, 50, size=(30, 2)).astype(np.int64)
    np.save(tmp_path / "ids.npy", ids)
    run("forward", "--checkpoint", ck, "--input", str(tmp_path / "ids.npy"), "--output", str(tmp_path / "logits.npy"))
    logits = np.load(tmp_path / "logits.npy")
    assert logits.shape == (30, 2, 50) and np.isfinite(logits).all()
    r = run("sample", "--checkpoint", ck, "--length", "40", "--seed", "2")
    assert len(r.stdout.strip()) >= 40
    r2 = run("sample", "--checkpoint", ck, "--length", "40", "--seed", "2")
    assert r.stdout == r2.stdout  # seeded
    info = json.loads(run("info", ck, "--json").stdout)
    assert info["metadata"]["cell"] == "bnlstm" and info["metadata"]["popstats"] == "pass"
