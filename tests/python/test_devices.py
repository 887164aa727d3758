"""One package for every GPU of a machine (megacache.torch.devices), in fresh processes.

These need 2 CUDA GPUs and are skipped elsewhere (CI has none): run them on a 2-GPU machine,
as docs/device-index.md records. The C++ rewrite they rely on is tested everywhere
(tests/cpp/test_device_index.cpp).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")

CHILD = r"""
import json, os, sys
import torch
mode, case, store, out_path = sys.argv[1:5]
torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
if mode == "megacache":
    import megacache
    megacache.enable(store=store)

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.LayerNorm(256), torch.nn.GELU(),
                            torch.nn.Linear(256, 64))
x = torch.randn(33, 64)
if case == "split":
    # One compiled function on two GPUs: code for several devices is loaded as it is.
    first, second = model[:2].to("cuda:0"), model[2:].to("cuda:1")

    def fn(x):
        return second(first(x).to("cuda:1"))

    compiled, inputs = torch.compile(fn), [x.to("cuda:0")]
else:
    model = model.cuda()
    compiled, inputs = torch.compile(model), [x.cuda()]
    if case == "dynamic":
        inputs = [torch.randn(n, 64).cuda() for n in (33, 70)]
        for t in inputs:
            torch._dynamo.mark_dynamic(t, 0)
result = {}
for i, t in enumerate(inputs):
    if case == "train":
        out = compiled(t)
        out.pow(2).mean().backward()
        result["grad"] = model[0].weight.grad.cpu()
    else:
        with torch.no_grad():
            out = compiled(t)
    result[f"out{i}"] = out.detach().cpu()
torch.save(result, out_path)
from torch._dynamo.utils import counters
report = {"traced": counters["stats"].get("unique_graphs", 0),
          "inductor_compiles": counters["inductor"].get("fxgraph_cache_miss", 0)}
if mode == "megacache":
    report["megacache"] = megacache.automatic_stats()
print(json.dumps(report))
"""


def run(tmp_path, mode, case, rank, store=""):
    cache_dir = tmp_path / f"{mode}-{case}-{rank}-{len(list(tmp_path.iterdir()))}"
    out_path = str(cache_dir) + ".pt"
    env = dict(os.environ, LOCAL_RANK=str(rank), TORCHINDUCTOR_CACHE_DIR=str(cache_dir))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, case, store, out_path],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), torch.load(out_path)


@pytest.mark.parametrize("case", ["infer", "dynamic", "train"])
def test_a_package_from_cuda0_runs_on_cuda1_without_a_trace_or_a_compile(tmp_path, case):
    store = f"file://{tmp_path}/store"
    built, _ = run(tmp_path, "megacache", case, 0, store)
    assert built["traced"] > 0 and built["megacache"]["published"] >= 1
    moved, outputs = run(tmp_path, "megacache", case, 1, store)
    _, torch_outputs = run(tmp_path, "torch", case, 1)
    assert moved["traced"] == 0 and moved["inductor_compiles"] == 0, moved
    assert moved["megacache"]["moved"] == 1 and moved["megacache"]["hits"] == 1, moved
    assert outputs.keys() == torch_outputs.keys()
    for name in outputs:
        assert torch.equal(outputs[name], torch_outputs[name]), name
    # And back: the package (still cuda:0's) loads on cuda:0 as it is.
    again, _ = run(tmp_path, "megacache", case, 0, store)
    assert (
        again["traced"] == 0
        and again["megacache"]["moved"] == 0
        and again["megacache"]["hits"] == 1
    )


def test_code_for_two_gpus_is_loaded_as_it_is_and_never_crashes(tmp_path):
    store = f"file://{tmp_path}/store"
    run(tmp_path, "megacache", "split", 0, store)
    loaded, outputs = run(tmp_path, "megacache", "split", 1, store)
    _, torch_outputs = run(tmp_path, "torch", "split", 1)
    assert loaded["megacache"]["moved"] == 0 and loaded["megacache"]["refused"] == 0, loaded
    assert loaded["traced"] == 0, loaded  # its guards match: the tensors are where they were
    assert torch.equal(outputs["out0"], torch_outputs["out0"])
