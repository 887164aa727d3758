"""The main job, end to end: compile once, save with megacache, start warm elsewhere.

1. A fresh process with an empty torch cache dir compiles a small model and saves its
   artifacts with megacache.save().
2. Another fresh process, with another empty cache dir, loads them with megacache.load()
   and calls the model: Inductor finds its FX graph in the cache instead of compiling.

It prints the time of the first call in each process, and the whole-process wall time.
"""

import json
import os
import subprocess
import sys
import tempfile
import time


def child(mode, package):
    import torch

    import megacache

    load_seconds = 0.0
    if mode == "load":
        start = time.perf_counter()
        megacache.load(package)
        load_seconds = time.perf_counter() - start

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64)
    ).eval()
    x = torch.randn(8, 64)
    compiled = torch.compile(model)
    start = time.perf_counter()
    with torch.no_grad():
        y = compiled(x)
    first_call = time.perf_counter() - start

    if mode == "compile":
        megacache.save(package)
    from torch._dynamo.utils import counters

    print(json.dumps({
        "first_call_s": first_call,
        "load_s": load_seconds,
        "fxgraph_hits": counters["inductor"]["fxgraph_cache_hit"],
        "fxgraph_misses": counters["inductor"]["fxgraph_cache_miss"],
        "checksum": float(y.sum()),
    }))


def run(mode, package, cache_dir):
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir)
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, mode, package], env=env, check=True,
        capture_output=True, text=True,
    ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    report["process_s"] = time.perf_counter() - start
    return report


def main():
    with tempfile.TemporaryDirectory(prefix="megacache-demo-") as work:
        package = os.path.join(work, "model.megacache")
        print("compiling in a fresh process with an empty cache dir ...", flush=True)
        cold = run("compile", package, os.path.join(work, "cache-a"))
        print(f"  first call {cold['first_call_s']:.2f} s, process {cold['process_s']:.1f} s, "
              f"saved {os.path.getsize(package):,} bytes to {os.path.basename(package)}")
        print("loading in another fresh process with another empty cache dir ...", flush=True)
        warm = run("load", package, os.path.join(work, "cache-b"))
        print(f"  megacache.load {warm['load_s'] * 1e3:.1f} ms, first call {warm['first_call_s']:.2f} s, "
              f"process {warm['process_s']:.1f} s")
        print(f"  FX graph cache: {warm['fxgraph_hits']} hit(s), {warm['fxgraph_misses']} miss(es); "
              f"same result: {abs(warm['checksum'] - cold['checksum']) < 1e-5}")
        print(f"first call: {cold['first_call_s']:.2f} s cold -> {warm['first_call_s']:.2f} s warm "
              f"({cold['first_call_s'] / warm['first_call_s']:.1f}x)")
        print("note: on a CPU the FX graph is a cache hit, but torch still compiles every C++ kernel\n"
              "      again in a fresh process, so the first call is barely faster yet: see\n"
              "      docs/cpu-startup.md. On a GPU the artifacts carry the Triton kernels; torch\n"
              "      measured 7.9 s cold against 2.1 s from Mega-Cache for a 6-layer transformer.")


if __name__ == "__main__":
    if len(sys.argv) == 3:
        child(sys.argv[1], sys.argv[2])
    else:
        main()
