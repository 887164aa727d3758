"""The main job, end to end: one line of setup, one compile, then warm starts.

Both processes call megacache.enable(store) before torch.compile, with a local store (the
embedded default, here in a temporary dir) and each its own empty torch cache dir:
1. The first process misses, compiles, and publishes the function's precompile package.
2. The second finds the package, checks it, and runs its first call without a Dynamo trace or
   an Inductor compile (the package also carries the compiled C++ kernels).

It prints the time of the first call in each process, and the whole-process wall time.
"""

import json
import os
import subprocess
import sys
import tempfile
import time


def child(store):
    import torch

    import megacache

    megacache.enable(store=store)  # the one line

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64)
    ).eval()
    x = torch.randn(8, 64)
    start = time.perf_counter()
    compiled = torch.compile(model)
    with torch.no_grad():
        y = compiled(x)
    first_call = time.perf_counter() - start

    from torch._dynamo.utils import counters

    print(
        json.dumps(
            {
                "first_call_s": first_call,
                "automatic": megacache.automatic_stats(),
                "compiled_graphs": counters["inductor"]["fxgraph_cache_miss"],
                "checksum": float(y.sum()),
            }
        )
    )


def run(store, cache_dir):
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir)
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, store],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    report["process_s"] = time.perf_counter() - start
    return report


def main():
    with tempfile.TemporaryDirectory(prefix="megacache-demo-") as work:
        store = "file://" + os.path.join(work, "store")
        print(f"store: {store}")
        print("first process, empty cache dir: compiles and publishes ...", flush=True)
        cold = run(store, os.path.join(work, "cache-a"))
        print(
            f"  first call {cold['first_call_s']:.2f} s, process {cold['process_s']:.1f} s, "
            f"{cold['compiled_graphs']} graph(s) compiled, {cold['automatic']}"
        )
        print("second process, another empty cache dir: starts from the package ...", flush=True)
        warm = run(store, os.path.join(work, "cache-b"))
        print(
            f"  first call {warm['first_call_s']:.2f} s, process {warm['process_s']:.1f} s, "
            f"{warm['compiled_graphs']} graph(s) compiled, {warm['automatic']}"
        )
        print(
            f"same result: {abs(warm['checksum'] - cold['checksum']) < 1e-5}; first call "
            f"{cold['first_call_s']:.2f} s -> {warm['first_call_s']:.2f} s "
            f"({cold['first_call_s'] / warm['first_call_s']:.0f}x), process "
            f"{cold['process_s']:.1f} s -> {warm['process_s']:.1f} s"
        )


if __name__ == "__main__":
    if len(sys.argv) == 2:
        child(sys.argv[1])
    else:
        main()
