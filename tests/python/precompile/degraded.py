"""Subprocess side of tests/python/test_surfaces.py: automatic mode on a torch that lacks a
surface, as a torch newer than megacache knows would.
usage: degraded.py BREAK STORE_URL OUT_FILE

BREAK: "missing" deletes torch._dynamo.guards._Missing (a package surface); "different"
gives CompilePackage.code_context another parameter name; "mega_cache" deletes
CacheArtifactManager._serializer (a Mega-Cache surface). Plain torch.compile uses none of them."""

import json
import logging
import sys

import torch
import torch._dynamo.guards
import torch._dynamo.package
import torch.compiler._cache

BREAK, STORE, OUT = sys.argv[1:4]
if BREAK == "missing":
    del torch._dynamo.guards._Missing
elif BREAK == "different":
    original = torch._dynamo.package.CompilePackage.code_context

    def code_context(self, code_object):  # noqa: ANN001  # the shape a new torch might give it
        return original(self, code_object)

    torch._dynamo.package.CompilePackage.code_context = code_context
elif BREAK == "mega_cache":
    del torch.compiler._cache.CacheArtifactManager._serializer
else:
    raise SystemExit(f"unknown BREAK {BREAK!r}")

warnings = []


class Collect(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())


logging.getLogger("megacache").addHandler(Collect(logging.WARNING))

import megacache  # noqa: E402

megacache.enable(store=STORE)
megacache.enable(store=STORE)  # a second enable() warns no more


def f(x):
    return torch.sin(x) * 2 + x.cos()


compiled = torch.compile(f)
result = compiled(torch.arange(8.0))
second = compiled(torch.arange(8.0) + 1)  # nothing new to publish
torch.save(result, OUT)

from torch._dynamo.utils import counters  # noqa: E402

print(
    json.dumps(
        {
            "automatic": megacache.automatic_stats(),
            "warnings": warnings,
            "inductor": dict(counters["inductor"]),
            "matches_eager": bool(torch.allclose(result, f(torch.arange(8.0)))),
        }
    )
)
