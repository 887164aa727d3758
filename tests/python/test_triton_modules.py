"""A fresh GPU machine takes Triton's compiled modules from the package instead of running gcc,
and starts no compile workers to load it.

Needs a CUDA GPU with Triton (skipped elsewhere; CI has none): run on the device machine, as
docs/benchmarks.md records. The format, the checks and the install are tested everywhere
(tests/cpp/test_precompile.cpp, TritonModules).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# One process on a fresh machine: its own empty HOME and torch cache dir. It notes every module
# a compiler builds (Triton's _build runs the compiler through subprocess.check_call).
CHILD = r"""
import json, os, subprocess, sys, traceback
built = []
_check_call = subprocess.check_call
def check_call(command, *args, **kwargs):
    if isinstance(command, (list, tuple)) and "-o" in command:
        where = [f"{f.filename.split('site-packages/')[-1]}:{f.lineno} {f.name}"
                 for f in traceback.extract_stack()[-14:-1]]
        built.append([os.path.basename(str(command[command.index("-o") + 1])), where])
    return _check_call(command, *args, **kwargs)
subprocess.check_call = check_call

import torch
import megacache
megacache.enable(store=sys.argv[1])
torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64)
).cuda()
with torch.no_grad():
    out = torch.compile(model)(torch.randn(8, 64, device="cuda"))
from torch._dynamo.utils import counters
from triton.runtime import driver
from megacache.torch import precompile
def child_processes():
    mine = str(os.getpid())
    commands = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[1] == mine:
                    with open(f"/proc/{pid}/cmdline") as cmdline:
                        commands.append(cmdline.read().replace("\0", " "))
        except OSError:  # it ended while listed
            pass
    return commands
print(json.dumps({
    "children": child_processes(),
    "triton_dirs": precompile._triton_cache_dirs(),
    "built": built,
    "driver_helper": driver.active.utils.load_binary.__self__.__file__,
    "traced": counters["stats"].get("unique_graphs", 0),
    "megacache": megacache.automatic_stats(),
    "sum": float(out.sum()),
}))
"""


def fresh_machine(tmp_path, name, store):
    home = tmp_path / name / "home"
    home.mkdir(parents=True)
    # Four compile threads whatever the host's cores: Inductor's compile-worker pool is on.
    env = dict(
        os.environ,
        HOME=str(home),
        TORCHINDUCTOR_CACHE_DIR=str(tmp_path / name / "torch"),
        TORCHINDUCTOR_COMPILE_THREADS="4",
    )
    env.pop("TRITON_CACHE_DIR", None)
    env.pop("XDG_CACHE_HOME", None)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, store], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), tmp_path / name


def built_helper(report):
    return [stack for name, stack in report["built"] if name.startswith("cuda_utils")]


def test_a_fresh_machine_loads_tritons_driver_helper_from_the_package(tmp_path):
    from megacache import _core

    store = f"file://{tmp_path}/store"
    first, _ = fresh_machine(tmp_path, "first", store)
    assert first["megacache"]["published"] >= 1
    assert built_helper(first), first["built"]
    packages = [
        _core.Package.from_bytes(_core.Store(store).get(name))
        for name, _, _ in _core.Store(store).list()
        if name.startswith("precompile-")
    ]
    carried = [path for package in packages for path in package.triton_module_paths]
    assert any("/cuda_utils." in path for path in carried), (carried, first)

    second, machine = fresh_machine(tmp_path, "second", store)
    assert second["megacache"]["hits"] >= 1 and second["traced"] == 0
    assert not built_helper(second), second
    # Triton loaded the helper the package carried, from this machine's own dirs.
    assert second["driver_helper"].startswith(str(machine)), second["driver_helper"]
    assert second["sum"] == first["sum"]


def test_loading_a_package_starts_no_compile_workers(tmp_path):
    """torch's output code starts Inductor's pool of compile workers (processes that each import
    torch, shut down at exit) at its first Triton kernel, even when every kernel is cached. A
    load from a package compiles nothing and starts none; the compile that made it does."""
    store = f"file://{tmp_path}/store"
    first, _ = fresh_machine(tmp_path, "first", store)
    assert any("compile_worker" in command for command in first["children"]), first["children"]
    second, _ = fresh_machine(tmp_path, "second", store)
    assert second["megacache"]["hits"] >= 1 and second["traced"] == 0
    assert second["children"] == [], second["children"]
    assert second["sum"] == first["sum"]
