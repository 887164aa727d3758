"""Subprocess side of the automatic-mode tests: one process of a fleet.
usage: automatic.py STORE_URL OUT_FILE"""

import json
import sys
import time

import torch

import megacache

STORE, OUT = sys.argv[1:3]
megacache.enable(store=STORE)  # the one line

import cases  # noqa: E402

start = time.monotonic()
model = torch.compile(cases.MLP())
with torch.no_grad():
    result = model(torch.ones(4, 16))
first_result = time.monotonic() - start
torch.save(result, OUT)

from torch._dynamo.utils import counters  # noqa: E402
from megacache.torch import precompile  # noqa: E402

print(json.dumps({
    "automatic": precompile.automatic_stats(),
    "dynamo_cache": dict(counters["dynamo_cache"]),
    "inductor": dict(counters["inductor"]),
    "first_result_s": first_result,
}))
