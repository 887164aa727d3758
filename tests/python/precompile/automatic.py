"""Subprocess side of the automatic-mode tests: one process of a fleet.
usage: automatic.py STORE_URL OUT_FILE [train|lengths]

lengths: two calls with different batch sizes, so the function compiles twice (the second time
with a dynamic batch dim) and publishes after each."""

import json
import sys
import time

import torch

import megacache

STORE, OUT = sys.argv[1:3]
TRAIN = sys.argv[3:] == ["train"]
LENGTHS = sys.argv[3:] == ["lengths"]
megacache.enable(store=STORE)  # the one line

import cases  # noqa: E402

start = time.monotonic()
plain = cases.MLP()
model = torch.compile(plain)
if TRAIN:  # the backward compiles on the first backward call, after forward has returned
    model(torch.ones(4, 16)).pow(2).sum().backward()
    result = plain.fc1.weight.grad
elif LENGTHS:
    with torch.no_grad():
        result = torch.cat([model(torch.ones(4, 16)), model(torch.ones(6, 16))])
else:
    with torch.no_grad():
        result = model(torch.ones(4, 16))
first_result = time.monotonic() - start
torch.save(result, OUT)

from torch._dynamo.utils import counters  # noqa: E402

print(
    json.dumps(
        {
            "automatic": megacache.automatic_stats(),
            "dynamo_cache": dict(counters["dynamo_cache"]),
            "inductor": dict(counters["inductor"]),
            "first_result_s": first_result,
        }
    )
)
