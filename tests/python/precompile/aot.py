"""Subprocess side of tests/python/test_aot.py: torch.compiler.precompile pairs.
usage: aot.py capture OUT_DIR [SIGNING_KEY]   compile with torch's precompile API; save the pair
       aot.py load STORE_URL NAME OUT_DIR     load it with megacache in a fresh process

capture writes OUT_DIR/pair.mcb (megacache's file), OUT_DIR/inputs.pt, OUT_DIR/expected.pt, and
the pair's halves as OUT_DIR/torch.py and OUT_DIR/torch.py.cache (on torch 2.15 the files
capture() wrote)."""

import json
import os
import sys

import torch

import megacache

MODE, ARGS = sys.argv[1], sys.argv[2:]


def step(model, x):
    return torch.relu(model(x)) * 2 + 1


if MODE == "capture":
    out, key = ARGS[0], (ARGS[1] if len(ARGS) > 1 else None)
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 8)
    x = torch.randn(4, 16)
    api = torch.compiler.precompile
    if hasattr(api, "capture"):  # torch 2.15
        artifact, cache_file = os.path.join(out, "torch.py"), os.path.join(out, "torch.py.cache")
        with api.capture(step, artifact_path=artifact, cache_path=cache_file) as captured:
            expected = captured(model, x)
        megacache.save_precompiled(
            os.path.join(out, "pair.mcb"),
            artifact_path=artifact,
            cache_path=cache_file,
            sign_with=key,
        )
    else:  # torch 2.14
        python_code, cache = api(step, model, x)
        expected = step(model, x)
        megacache.save_precompiled(os.path.join(out, "pair.mcb"), python_code, cache, sign_with=key)
        with open(os.path.join(out, "torch.py"), "w") as f:  # the halves, for the tests to edit
            f.write(python_code)
        with open(os.path.join(out, "torch.py.cache"), "wb") as f:
            f.write(cache)
    torch.save({"model": model.state_dict(), "x": x}, os.path.join(out, "inputs.pt"))
    torch.save(expected.detach(), os.path.join(out, "expected.pt"))
    print(json.dumps({"api": "capture" if hasattr(api, "capture") else "callable"}))
elif MODE == "load":
    store, name, out = ARGS
    inputs = torch.load(os.path.join(out, "inputs.pt"))
    model = torch.nn.Linear(16, 8)
    model.load_state_dict(inputs["model"])
    outcome = {}
    try:
        runnable = megacache.load_precompiled(name, store=store)
        torch.save(runnable(model, inputs["x"]).detach(), os.path.join(out, "result.pt"))
        outcome["loaded"] = True
    except (megacache.CorruptionError, megacache.InvalidInputError) as error:
        outcome["refused"] = f"{type(error).__name__}: {error}"
    print(json.dumps(outcome))
else:
    raise SystemExit(f"unknown mode {MODE!r}")
