"""Subprocess side of test_precompile.py: one case, cold or loaded, in a fresh interpreter.

usage: workload.py CASE MODE PACKAGE OUT
  MODE cold: compile with megacache.compile(package=PACKAGE) (absent: compiles), run, save
             the package (binary, unpacked beside it, and into the store OUT/store) and the
             outputs. PACKAGE may be a store URL.
  MODE load: the same under fail_on_recompile; any recompile raises.
Prints one JSON line: counters and megacache's automatic stats.
"""

import json
import os
import sys

import cases
import torch
from torch._dynamo.utils import counters

import megacache

CASE, MODE, PACKAGE, OUT = sys.argv[1:5]


def inputs(*shape):
    return torch.arange(float(torch.Size(shape).numel())).reshape(shape) / 10


def run():
    """Returns the outputs to compare; compiles (cold) or loads (warm) on the first call."""
    if CASE == "plain":
        model = megacache.compile(cases.MLP(), package=PACKAGE)
        scale = megacache.compile(cases.scale, package=PACKAGE)
        with torch.no_grad():
            return [model(inputs(4, 16)), scale(inputs(3))], model
    if CASE == "graph_break":
        fn = megacache.compile(cases.graph_break, package=PACKAGE)
        return [fn(inputs(5))], fn
    if CASE == "dynamic":
        fn = megacache.compile(cases.dynamic, package=PACKAGE, dynamic=True)
        shapes = [(4, 8), (6, 8)] if MODE == "cold" else [(4, 8), (6, 8), (9, 8)]
        return [fn(inputs(*s)) for s in shapes], fn
    if CASE == "training":
        model = cases.MLP()
        compiled = megacache.compile(model, package=PACKAGE)
        loss = compiled(inputs(4, 16)).pow(2).sum()
        loss.backward()
        return [loss.detach(), model.fc1.weight.grad, model.fc2.bias.grad], compiled
    if CASE == "recompile":
        fn = megacache.compile(cases.recompile, package=PACKAGE, dynamic=False)
        return [fn(inputs(2, 3)), fn(inputs(5, 7))], fn
    raise SystemExit(f"unknown case {CASE}")


if MODE == "load":
    torch.compiler.set_stance("fail_on_recompile")
outputs, compiled = run()
if MODE == "cold":
    megacache.save_package(PACKAGE)
    megacache.save_package(PACKAGE + ".unpacked", format="unpacked")
    megacache.save_package("file://" + os.path.join(OUT, "store"))  # one entry per function
torch.save(outputs, os.path.join(OUT, f"{MODE}.pt"))

print(json.dumps({k: dict(counters[k]) for k in ("dynamo_cache", "inductor", "stats")}))
