"""Subprocess workloads for the end-to-end tests; each mode runs in a fresh interpreter.

    python workload.py compile-save OUT_DIR     compile, run, save with megacache and torch
    python workload.py load-run BLOB OUT_DIR    load with megacache into an empty cache dir, run
    python workload.py torch-load BLOB          torch.compiler.load_cache_artifacts only

TORCHINDUCTOR_CACHE_DIR is set by the caller; MEGACACHE_TEST_DEVICE picks the device (cpu by
default, cuda on a GPU host). Results are written as JSON and .pt files.
"""

import json
import os
import sys
import time

import torch

import megacache

DEVICE = os.environ.get("MEGACACHE_TEST_DEVICE", "cpu")


def model_and_input():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 16)
    ).eval()
    return model.to(DEVICE), torch.randn(8, 32).to(DEVICE)


def linear_gelu(x, w):
    return torch.nn.functional.gelu(x @ w) + 1


def counters():
    from torch._dynamo.utils import counters as c

    return {group: dict(values) for group, values in c.items()}


def compile_and_run():
    model, x = model_and_input()
    compiled = torch.compile(model)
    with torch.no_grad():
        return compiled(x)


def main():
    mode = sys.argv[1]
    if mode == "compile-save":
        out_dir = sys.argv[2]
        y = compile_and_run()
        ours = megacache.save_cache_artifacts()
        theirs = torch.compiler.save_cache_artifacts()
        with open(os.path.join(out_dir, "megacache.bin"), "wb") as f:
            f.write(ours[0])
        with open(os.path.join(out_dir, "torch.bin"), "wb") as f:
            f.write(theirs[0])
        torch.save(y.cpu(), os.path.join(out_dir, "expected.pt"))
        # Only placeholders, no get_attr: torch 2.11's AOTAutograd cache bypasses graphs
        # that read module attributes, and standalone_compile then cannot save.
        gm = torch.fx.symbolic_trace(linear_gelu)
        x, w = torch.randn(8, 32, device=DEVICE), torch.randn(32, 16, device=DEVICE)
        artifact = torch._inductor.standalone_compile(
            gm, [x, w], dynamic_shapes="from_example_inputs"
        )
        artifact.save(path=os.path.join(out_dir, "standalone.bin"), format="binary")
        report = {
            "ours_info": dict(ours[1].artifacts),
            "torch_info": dict(theirs[1].artifacts),
            "info_type": type(ours[1]).__qualname__,
            "counters": counters(),
        }
    elif mode == "load-run":
        blob_path, out_dir = sys.argv[2], sys.argv[3]
        with open(blob_path, "rb") as f:
            blob = f.read()
        start = time.perf_counter()
        info = megacache.load_cache_artifacts(blob)
        load_seconds = time.perf_counter() - start
        y = compile_and_run()
        torch.save(y.cpu(), os.path.join(out_dir, "actual.pt"))
        report = {
            "loaded": dict(info.artifacts),
            "load_seconds": load_seconds,
            "counters": counters(),
        }
    elif mode == "torch-load":
        with open(sys.argv[2], "rb") as f:
            info = torch.compiler.load_cache_artifacts(f.read())
        report = {"loaded": dict(info.artifacts)}
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
