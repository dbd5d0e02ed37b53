"""`pip install --no-build-isolation .` into a `python3 -m venv --system-site-packages` (Debian's
Python is externally managed), nothing downloaded (--no-index), then `rbn` imported from outside
the source tree. The extension build goes through setup.py's CMake step on the existing build/
(RBN_BUILD_DIR), so the test costs a pip run, not a compile; a fresh checkout compiles `_rbn`
(about as long as `cmake --build build --target _rbn`)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(ROOT, "build")

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(BUILD, "CMakeCache.txt")),
                                reason="no CMake build in build/ to reuse")


def run(cmd, cwd, env=None):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_pip_install_into_a_venv(tmp_path):
    venv = tmp_path / "venv"
    # Debian's pip comes from the system site-packages; the venv needs none of its own
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], tmp_path)
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["RBN_BUILD_DIR"] = BUILD
    run([py, "-m", "pip", "install", "--no-build-isolation", "--no-index", "--quiet", ROOT], tmp_path, env)
    out = run([py, "-c", """
import os, sys, numpy as np, torch, rbn, rbn.torch
assert rbn.__file__.startswith(sys.prefix), rbn.__file__
s = rbn.Stack("bnlstm", 2, 3, t_max=4)
y, hT, cT = s.forward(np.ones((4, 1, 2), np.float32))
m = rbn.torch.BNLSTM(2, 3, t_max=4)
rbn.save("m.safetensors", m)
back = rbn.load("m.safetensors")
print(rbn.__file__, y.shape, type(back.rnn).__name__)
"""], tmp_path, env)
    assert str(venv) in out and "(4, 1, 3) BNLSTM" in out
    # and it leaves: pip uninstall removes the package
    run([py, "-m", "pip", "uninstall", "--yes", "--quiet", "rbn"], tmp_path, env)
    r = subprocess.run([py, "-c", "import rbn"], cwd=tmp_path, env=env, capture_output=True)
    assert r.returncode != 0
