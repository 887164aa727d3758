"""A fresh GPU machine takes the CUDA driver's JIT builds of cuDNN's attention kernels from the
package instead of compiling their PTX again (about 1.5 s on an H200: docs/benchmarks.md).

Needs a CUDA GPU whose attention runs through cuDNN's runtime-compiled engines (skipped
elsewhere; CI has none): run on the device machine. The format, the checks and the install
are tested everywhere (tests/cpp/test_precompile.cpp, CudaJit).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# One process on a fresh machine: its own empty HOME and torch cache dir. It notes which of
# CUDA's JIT cache entries are there right after megacache installs the package's files, before
# the graph (and cuDNN in it) first runs.
CHILD = r"""
import json, os, sys
import torch
import megacache
from megacache.torch import precompile

jit_dir = os.path.join(os.environ["HOME"], ".nv", "ComputeCache")
def entries():
    found = {}
    for d, _, names in os.walk(jit_dir):
        for name in names:
            if name != "index":
                with open(os.path.join(d, name), "rb") as f:
                    found[os.path.relpath(os.path.join(d, name), jit_dir)] = len(f.read())
    return found
after_install = []
install_files = precompile.install_files
def noting_install_files(package):
    install_files(package)
    after_install.append(entries())
precompile.install_files = noting_install_files

megacache.enable(store=sys.argv[1])

class Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(512, 3 * 512, bias=False)

    def forward(self, x):
        b, t, w = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, 8, 64).unbind(2)
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return out.transpose(1, 2).reshape(b, t, w)

torch.manual_seed(0)
model = Attention().cuda().to(torch.bfloat16)
x = torch.randn(2, 128, 512, device="cuda", dtype=torch.bfloat16)
with torch.no_grad():
    out = torch.compile(model)(x)
from torch._dynamo.utils import counters
print(json.dumps({
    "after_install": after_install,
    "entries": entries(),
    "traced": counters["stats"].get("unique_graphs", 0),
    "megacache": megacache.automatic_stats(),
    "sum": float(out.float().sum()),
}))
"""


def fresh_machine(tmp_path, name, store):
    home = tmp_path / name / "home"
    home.mkdir(parents=True)
    env = dict(os.environ, HOME=str(home), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / name / "torch"))
    for variable in ("TRITON_CACHE_DIR", "XDG_CACHE_HOME", "CUDA_CACHE_PATH", "CUDA_CACHE_DISABLE"):
        env.pop(variable, None)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, store], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_fresh_machine_installs_the_drivers_jit_builds_before_the_graph_runs(tmp_path):
    from megacache import _core

    store = f"file://{tmp_path}/store"
    first = fresh_machine(tmp_path, "first", store)
    assert first["megacache"]["published"] >= 1
    if not first["entries"]:
        pytest.skip(
            "this GPU's attention made no CUDA JIT cache entries (no runtime-compiled cuDNN engine)"
        )
    packages = [
        _core.Package.from_bytes(_core.Store(store).get(name))
        for name, _, _ in _core.Store(store).list()
        if name.startswith("precompile-")
    ]
    carried = {path for package in packages for path in package.cuda_jit_paths}
    assert carried == set(first["entries"]), (carried, first["entries"])
    assert all(
        dict(package.fingerprint)["cuda_driver"] == _core.cuda_driver_version()
        for package in packages
    )

    second = fresh_machine(tmp_path, "second", store)
    assert second["megacache"]["hits"] >= 1 and second["traced"] == 0
    # The entries were in this machine's cache before cuDNN first asked the driver for them.
    assert second["after_install"] and second["after_install"][0] == first["entries"], second
    assert second["sum"] == first["sum"]
