"""Subprocess side of the standalone_compile test. usage: standalone.py save|load DIR"""

import json
import sys
from pathlib import Path

import torch
from torch._inductor import CompiledArtifact as TorchArtifact

import megacache

MODE, DIR = sys.argv[1], Path(sys.argv[2])


def linear_gelu(x, w):
    return torch.nn.functional.gelu(x @ w) + 1


x = torch.arange(32.0).reshape(4, 8) / 32
w = torch.ones(8, 8) / 8
if MODE == "save":
    gm = torch.fx.symbolic_trace(linear_gelu)
    artifact = megacache.standalone_compile(gm, [x, w])
    artifact.save(DIR / "ours.bin")
    artifact._inner.save(path=str(DIR / "torch.bin"), format="binary")
    artifact.save(DIR / "unpacked", format="unpacked")
    torch.save(artifact(x, w), DIR / "expected.pt")
    print(json.dumps({"saved": True}))
else:
    from torch._dynamo.utils import counters

    by_torch = TorchArtifact.load(path=str(DIR / "ours.bin"), format="binary")
    by_us = megacache.load_standalone(DIR / "torch.bin")
    unpacked = megacache.load_standalone(DIR / "unpacked", format="unpacked")
    expected = torch.load(DIR / "expected.pt")  # compiled in-process: a tensor; loaded: a list
    print(
        json.dumps(
            {
                "torch_loads_ours": bool(torch.equal(by_torch(x, w)[0], expected)),
                "we_load_torchs": bool(torch.equal(by_us(x, w)[0], expected)),
                "unpacked": bool(torch.equal(unpacked(x, w)[0], expected)),
                "fx_miss": counters["inductor"].get("fxgraph_cache_miss", 0),
            }
        )
    )
