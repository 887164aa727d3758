"""Subprocess side of the mismatch test: loads packages that do not fit and prints, per
check, the error message (or "ok"). usage: mismatch.py PACKAGE EDITED_FINGERPRINT_DIR"""

import json
import sys

import cases
import megacache

PACKAGE, EDITED = sys.argv[1:3]
results = {}


def attempt(name, fn, package, **kwargs):
    try:
        megacache.compile(fn, package=package, **kwargs)
        results[name] = "ok"
    except megacache.PackageMismatchError as error:
        results[name] = str(error)


attempt("environment", cases.scale, EDITED)
attempt("function", cases.unrelated, PACKAGE)
attempt("source", cases.scale, PACKAGE)
attempt("source_ignored", cases.scale, PACKAGE, ignore_source_changes=True)
attempt("signature", cases.MLP().forward, PACKAGE)
print(json.dumps(results))
