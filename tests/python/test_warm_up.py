"""cuBLAS set up on a helper thread while torch installs a package (megacache.torch.warm_up), on
a fresh GPU machine: the graph then runs on the very handle the helper used, so the process
holds no handle or workspace more than without megacache, finds the kernels of its products
loaded, and computes the same.

Needs a CUDA GPU (skipped elsewhere; CI has none): run on the device machine. Finding a
package's cuBLAS calls and products is tested everywhere (test_precompile.py).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CHILD = r"""
import json, sys, threading
import torch
import megacache
from megacache.torch import warm_up

# The first run of a compiled graph, profiled: how many cuBLAS kernels it loaded itself
# (cuBLAS asks cudaFuncGetAttributes of each kernel it loads, once).
from torch._inductor.output_code import CompiledFxGraph
kernel_loads = []
run_graph = CompiledFxGraph.__call__

def first_run_profiled(self, inputs):
    if kernel_loads:
        return run_graph(self, inputs)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        result = run_graph(self, inputs)
        torch.cuda.synchronize()
    kernel_loads.append(
        sum(e.count for e in profile.key_averages() if e.key == "cudaFuncGetAttributes")
    )
    return result

CompiledFxGraph.__call__ = first_run_profiled
megacache.enable(store=sys.argv[1])
torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256)
).cuda()
x = torch.randn(64, 256, device="cuda")
if sys.argv[3] == "dynamic":
    torch._dynamo.mark_dynamic(x, 0)  # its products' rows: a symbol at its example value, 64
with torch.no_grad():
    out = torch.compile(model)(x)
torch.save(out.cpu(), sys.argv[2])
from torch._dynamo.utils import counters
print(json.dumps({
    "megacache": megacache.automatic_stats(),
    "traced": counters["stats"].get("unique_graphs", 0),
    "warmed_handles": {str(k): v for k, v in warm_up.warmed_handles.items()},
    "handle": torch.cuda.current_blas_handle(),
    "helpers": [t.name for t in threading.enumerate() if t.name.startswith("megacache-cublas")],
    "kernel_loads": kernel_loads,
}))
"""


def fresh_machine(tmp_path, name, store, batch):
    home = tmp_path / name / "home"
    home.mkdir(parents=True)
    env = dict(os.environ, HOME=str(home), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / name / "torch"))
    for variable in ("TRITON_CACHE_DIR", "XDG_CACHE_HOME", "CUDA_CACHE_PATH"):
        env.pop(variable, None)
    out = tmp_path / name / "out.pt"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, store, str(out), batch],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), torch.load(out)


@pytest.mark.parametrize("batch", ["static", "dynamic"])
def test_the_graph_runs_on_the_cublas_handle_and_kernels_set_up_beside_the_install(tmp_path, batch):
    store = f"file://{tmp_path}/store"
    first, first_out = fresh_machine(tmp_path, "first", store, batch)
    assert first["megacache"]["published"] == 1 and first["warmed_handles"] == {}, first
    # Without a package, the graph's first run loads the kernels of its two products.
    assert first["kernel_loads"][0] > 0, first

    second, second_out = fresh_machine(tmp_path, "second", store, batch)
    assert second["megacache"]["hits"] == 1 and second["traced"] == 0, second
    # The helper set cuBLAS up, ended, and handed its handle to the graph's thread.
    assert second["warmed_handles"] == {"0": second["handle"]} and second["handle"] != 0, second
    assert second["helpers"] == [], second
    # The helper ran the graph's products ahead, so the graph's first run loaded none.
    assert second["kernel_loads"] == [0], second
    assert torch.equal(second_out, first_out)
