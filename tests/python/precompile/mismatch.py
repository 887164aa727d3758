"""Subprocess side of the mismatch test: wraps functions with packages that do not fit, then
asks each compiled callable to load its package explicitly, and prints, per check, the error
message of load_package() (or "ok"), and how many packages megacache.compile() refused.
usage: mismatch.py PACKAGE EDITED_FINGERPRINT_DIR"""

import json
import sys

import cases

import megacache
from megacache.torch import precompile

PACKAGE, EDITED = sys.argv[1:3]
results = {}


def attempt(name, fn, package, **kwargs):
    compiled = megacache.compile(fn, package=package)  # a mismatch is logged; fn compiles fresh
    try:
        compiled.load_package(**kwargs)
        results[name] = "ok"
    except megacache.PackageMismatchError as error:
        results[name] = str(error)


attempt("environment", cases.scale, EDITED)
attempt("function", cases.unrelated, PACKAGE)
attempt("source", cases.scale, PACKAGE)
attempt("source_ignored", cases.scale, PACKAGE, ignore_source_changes=True)
attempt("signature", cases.MLP().forward, PACKAGE)
results["refused_at_wrap"] = precompile._stats["refused"]
print(json.dumps(results))
