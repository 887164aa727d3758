"""cuBLAS set up on a helper thread while torch installs a package (megacache.torch.warm_up), on
a fresh GPU machine: the graph then runs on the very handle the helper used, so the process
holds no handle or workspace more than without megacache, finds the kernels of its products
loaded, and computes the same. A second package's helper loads the kernels of its own products.

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

# The first run of each compiled graph, profiled: how many cuBLAS kernels it loaded itself
# (cuBLAS asks cudaFuncGetAttributes of each fp32 kernel it loads, once; bf16 ones load unseen).
from torch._inductor.output_code import CompiledFxGraph
kernel_loads, ran = [], set()
run_graph = CompiledFxGraph.__call__

def first_run_profiled(self, inputs):
    if id(self) in ran:
        return run_graph(self, inputs)
    ran.add(id(self))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        result = run_graph(self, inputs)
        torch.cuda.synchronize()
    kernel_loads.append(
        sum(e.count for e in profile.key_averages() if e.key == "cudaFuncGetAttributes")
    )
    return result

CompiledFxGraph.__call__ = first_run_profiled
megacache.enable(store=sys.argv[1])
case = sys.argv[3]
torch.manual_seed(0)
class Tower(torch.nn.Module):  # code of its own, so a package of its own
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) * 2

# A second model (the "two models" case), in bf16: its package comes second, and its products
# need kernels of their own.
models = [(256, 1024, 64, torch.float32)]
if case == "two models":
    models.append((512, 384, 48, torch.bfloat16))
outs = []
for width, hidden, batch, dtype in models:
    model = torch.nn.Sequential(
        torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, width)
    ).to("cuda", dtype)
    if dtype != torch.float32:
        model = Tower(model)
    x = torch.randn(batch, width, device="cuda", dtype=dtype)
    if case == "dynamic":
        torch._dynamo.mark_dynamic(x, 0)  # its products' rows: a symbol at its example value
    with torch.no_grad():
        outs.append(torch.compile(model)(x).cpu())
torch.save(outs, sys.argv[2])
torch.cuda.synchronize()
from torch._dynamo.utils import counters
print(json.dumps({
    "megacache": megacache.automatic_stats(),
    "traced": counters["stats"].get("unique_graphs", 0),
    "warmed_handles": {str(k): v for k, v in warm_up.warmed_handles.items()},
    "warmed_products": {str(k): len(v) for k, v in warm_up.warmed_products.items()},
    "handle": torch.cuda.current_blas_handle(),
    "helpers": [t.name for t in threading.enumerate() if t.name.startswith("megacache-cublas")],
    "kernel_loads": kernel_loads,
    "allocated": torch.cuda.memory_allocated(),
}))
"""


def fresh_machine(tmp_path, name, store, case):
    home = tmp_path / name / "home"
    home.mkdir(parents=True)
    env = dict(os.environ, HOME=str(home), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / name / "torch"))
    for variable in ("TRITON_CACHE_DIR", "XDG_CACHE_HOME", "CUDA_CACHE_PATH"):
        env.pop(variable, None)
    out = tmp_path / name / "out.pt"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, store, str(out), case],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), torch.load(out)


@pytest.mark.parametrize("case", ["static", "dynamic", "two models"])
def test_the_graph_runs_on_the_cublas_handle_and_kernels_set_up_beside_the_install(tmp_path, case):
    models = 2 if case == "two models" else 1
    store = f"file://{tmp_path}/store"
    first, first_outs = fresh_machine(tmp_path, "first", store, case)
    assert first["megacache"]["published"] == models and first["warmed_handles"] == {}, first
    # Without a package, the graph's first run loads the kernels of its products (cuBLAS asks
    # for the fp32 kernels' attributes; the bf16 ones load unseen).
    assert len(first["kernel_loads"]) == models and first["kernel_loads"][0] > 0, first

    second, second_outs = fresh_machine(tmp_path, "second", store, case)
    assert second["megacache"]["hits"] == models and second["traced"] == 0, second
    # The first helper set cuBLAS up, ended, and handed its handle to the graph's thread.
    assert second["warmed_handles"] == {"0": second["handle"]} and second["handle"] != 0, second
    assert second["helpers"] == [], second
    # The helpers ran each graph's products ahead (the second model's too, none of them twice),
    # so no graph's first run loaded a kernel.
    assert second["warmed_products"] == {"0": 2 * models}, second
    assert second["kernel_loads"] == [0] * models, second
    extra = second["allocated"] - first["allocated"]
    if models == 1:  # nothing left behind: the memory the process holds is torch's own
        assert extra == 0, (first, second)
    else:  # the second helper's handle, back in torch's pool, keeps its workspace
        assert 0 < extra <= 64 << 20, (first, second)
    assert len(second_outs) == len(first_outs) == models
    assert all(torch.equal(a, b) for a, b in zip(second_outs, first_outs))
