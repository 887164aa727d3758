"""Subprocess side of the CUDA JIT cache test, on the CPU: the driver's JIT cache is simulated
by a dir this process names as CUDA's and, in the "record" role, fills between calls, as the
driver does while graphs first run (cuDNN's attention: the forward during the first call, the
backward after that call has returned and published the package). On a GPU the real driver
does it: tests/python/test_cuda_jit_cache.py.
usage: cuda_jit.py STORE_URL JIT_DIR DRIVER record|load OUT_FILE"""

import json
import os
import sys

import torch

import megacache
from megacache.torch import precompile

STORE, JIT_DIR, DRIVER, ROLE, OUT = sys.argv[1:6]
precompile._cuda_jit_cache = lambda: (JIT_DIR, DRIVER)
megacache.enable(store=STORE)

import cases  # noqa: E402


def driver_compiles(entry):
    os.makedirs(os.path.join(JIT_DIR, os.path.dirname(entry)), exist_ok=True)
    with open(os.path.join(JIT_DIR, entry), "w") as f:
        f.write(f"the driver's build {entry}")


def entries():
    return sorted(
        os.path.relpath(os.path.join(d, name), JIT_DIR)
        for d, _, names in os.walk(JIT_DIR)
        for name in names
    )


plain = cases.MLP()
model = torch.compile(plain)
out = model(torch.ones(4, 16))
if ROLE == "record":
    driver_compiles("1/a/0f1")
installed = entries()
out.pow(2).sum().backward()
if ROLE == "record":
    driver_compiles("2/b/0b2")
torch.save(plain.fc1.weight.grad, OUT)
print(json.dumps({"automatic": megacache.automatic_stats(), "after_first_call": installed}))
