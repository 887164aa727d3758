"""Triton's key carried in packages (megacache.torch.installed_keys), in fresh processes.

Runs where Triton is installed (the torch 2.15 venv of the matrix); the identity it is keyed by
is tested in C++ (tests/cpp/test_installed.cpp).
"""

import json
import subprocess
import sys

import pytest

pytest.importorskip("triton")

RECORD = r"""
import json
from triton.runtime import cache
from megacache.torch import installed_keys
assert installed_keys.recorded() == []  # nothing computed yet: nothing to record
cache.triton_key()
print(json.dumps(dict(installed_keys.recorded())))
"""

SEED = r"""
import json, sys
from triton.runtime import cache
import torch._inductor.runtime.triton_compat as compat  # binds triton_key by name
from megacache.torch import installed_keys
original = cache.triton_key
fields = json.loads(sys.argv[1])
seeded = installed_keys.seed(fields)
print(json.dumps({"seeded": seeded, "key": cache.triton_key(), "compat": compat.triton_key(),
                  "hashed": original.cache_info().currsize,
                  "recorded": dict(installed_keys.recorded())}))
"""


def run(code, *args):
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_recorded_key_is_used_under_the_same_identity_without_hashing_triton_again():
    fields = run(RECORD)
    assert set(fields) == {"triton_identity", "triton_key"} and len(fields["triton_identity"]) == 64
    loaded = run(SEED, json.dumps(fields))
    assert loaded["seeded"] is True
    assert loaded["key"] == loaded["compat"] == fields["triton_key"]
    assert loaded["hashed"] == 0  # Triton's own triton_key never ran
    assert loaded["recorded"] == fields  # a package made by this process records it again


def test_another_identity_computes_its_own_key():
    fields = run(RECORD)
    forged = dict(fields, triton_identity="0" * 64, triton_key="a key for another Triton")
    loaded = run(SEED, json.dumps(forged))
    assert loaded["seeded"] is False
    assert loaded["key"] == loaded["compat"] == fields["triton_key"]
    assert loaded["hashed"] == 1
