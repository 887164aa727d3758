"""torch's and Triton's keys carried in packages (megacache.torch.installed_keys), in fresh
processes.

Triton's runs where Triton is installed (the torch 2.15 venv of the matrix); the identity the
keys are keyed by is tested in C++ (tests/cpp/test_installed.cpp).
"""

import importlib.util
import json
import subprocess
import sys

import pytest

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")

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
print(json.dumps({"seeded": "triton_key" in seeded, "key": cache.triton_key(),
                  "compat": compat.triton_key(),
                  "hashed": original.cache_info().currsize,
                  "recorded": dict(installed_keys.recorded())}))
"""


def run(code, *args):
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_triton
def test_a_recorded_key_is_used_under_the_same_identity_without_hashing_triton_again():
    fields = run(RECORD)
    assert set(fields) == {"triton_identity", "triton_key"} and len(fields["triton_identity"]) == 64
    loaded = run(SEED, json.dumps(fields))
    assert loaded["seeded"] is True
    assert loaded["key"] == loaded["compat"] == fields["triton_key"]
    assert loaded["hashed"] == 0  # Triton's own triton_key never ran
    assert loaded["recorded"] == fields  # a package made by this process records it again


@needs_triton
def test_another_identity_computes_its_own_key():
    fields = run(RECORD)
    forged = dict(fields, triton_identity="0" * 64, triton_key="a key for another Triton")
    loaded = run(SEED, json.dumps(forged))
    assert loaded["seeded"] is False
    assert loaded["key"] == loaded["compat"] == fields["triton_key"]
    assert loaded["hashed"] == 1


RECORD_TORCH = r"""
import json
import torch._inductor.codecache as codecache
from megacache.torch import installed_keys
# Not computed yet: nothing of torch's to record (Triton's key may be, where importing computes it).
assert not [name for name, _ in installed_keys.recorded() if name.startswith("torch_")]
codecache.torch_key()
print(json.dumps(dict(installed_keys.recorded())))
"""

# Counts torch's hashing of its sources (torch_key calls codecache.build_code_hash).
SEED_TORCH = r"""
import json, sys
import torch._inductor.codecache as codecache
import torch._inductor.async_compile as async_compile  # binds torch_key by name
from megacache.torch import installed_keys
hashed = []
build_code_hash = codecache.build_code_hash
codecache.build_code_hash = lambda *args: hashed.append(1) or build_code_hash(*args)
if sys.argv[2:] == ["background"]:  # as megacache's hooks do when installed
    installed_keys.take_identities_in_background()
seeded = installed_keys.seed(json.loads(sys.argv[1]))
print(json.dumps({"seeded": "torch_key" in seeded, "key": codecache.torch_key().hex(),
                  "bound": async_compile.torch_key().hex(), "hashed": len(hashed),
                  "recorded": dict(installed_keys.recorded())}))
"""


@pytest.mark.parametrize("identity", ["taken on demand", "background"])
def test_torchs_recorded_key_is_used_under_the_same_identity_without_hashing_torch_again(identity):
    fields = {k: v for k, v in run(RECORD_TORCH).items() if k.startswith("torch_")}
    assert set(fields) == {"torch_identity", "torch_key"} and len(fields["torch_key"]) == 64
    loaded = run(SEED_TORCH, json.dumps(fields), identity)
    assert loaded["seeded"] is True
    assert loaded["key"] == loaded["bound"] == fields["torch_key"]
    assert loaded["hashed"] == 0
    assert {k: v for k, v in loaded["recorded"].items() if k.startswith("torch_")} == fields


def test_torch_computes_its_own_key_under_another_identity_or_from_a_bad_value():
    fields = {k: v for k, v in run(RECORD_TORCH).items() if k.startswith("torch_")}
    for forged in (
        dict(fields, torch_identity="0" * 64, torch_key="ab" * 32),
        dict(fields, torch_key="not hex"),
    ):
        loaded = run(SEED_TORCH, json.dumps(forged))
        assert loaded["seeded"] is False
        assert loaded["key"] == loaded["bound"] == fields["torch_key"]
        assert loaded["hashed"] > 0


def test_a_process_that_exits_while_the_identities_are_taken_exits_cleanly():
    # The walk ends during the interpreter's shutdown (torch's takes longer than the walk): a
    # daemon thread was unwound there through the binding's GIL release, and the process aborted.
    code = (
        "import torch\nfrom megacache.torch import installed_keys\n"
        "installed_keys.take_identities_in_background()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
