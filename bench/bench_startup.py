"""Fresh-process start-up: torch's cache paths and megacache's automatic mode, side by side.

Each row is a new Python process. Measured from the parent: process start -> first result
("to result") and the whole process ("process"); measured inside, after importing Dynamo and Inductor: a
Mega-Cache load where the row has one, torch.compile and the first call ("compile+call"),
which is where every cache lookup happens. Rows:

  import torch        python -c "import torch" (the floor of any row)
  cold                empty cache dir
  torch warm dir      the cold run's cache dir again
  torch mega-cache    empty dir + torch.compiler.load_cache_artifacts(blob of the cold run)
  torch precompile    caching_precompile: empty dir + the blob with its precompile artifact
  megacache           megacache.enable(store) on an empty cache dir, store warmed by one run

usage: python bench/bench_startup.py [--model mlp|xfmr] [--train] [--repeat N] [--fleet N]
--fleet N also starts N processes together on empty dirs with one shared store (Redis when
--redis-url is given) and reports compiles and the time until all have a result, against N
cold processes started together.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import os, sys, time, json
mode, model_name, train, blob_path, store = sys.argv[1:6]
train = train == "1"
import torch
if mode == "megacache":
    import megacache
    megacache.enable(store=store)
if mode == "precompile" or mode == "precompile-save":
    torch._dynamo.config.caching_precompile = True
device = "cuda" if torch.cuda.is_available() else "cpu"

def make_model():
    torch.manual_seed(0)
    if model_name == "mlp":
        m = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64))
        x = torch.randn(8, 64)
    else:
        layer = torch.nn.TransformerEncoderLayer(d_model=512, nhead=8, dim_feedforward=2048,
                                                 batch_first=True, norm_first=True)
        m = torch.nn.TransformerEncoder(layer, num_layers=6, enable_nested_tensor=False)
        x = torch.randn(4, 128, 512)
    return m.to(device), x.to(device)

model, x = make_model()
# Every row pays these imports; importing them first leaves "compile+call" to the cache path
# itself (a load, torch.compile, the first call), as the fixtures' figures count it.
import torch._dynamo, torch._inductor.compile_fx
start = time.time()
if mode in ("mega-cache", "precompile") and blob_path:
    with open(blob_path, "rb") as f:
        torch.compiler.load_cache_artifacts(f.read())
compiled = torch.compile(model)
if train:
    out = compiled(x).float().pow(2).mean()
    out.backward()
else:
    with torch.no_grad():
        out = compiled(x)
if device == "cuda":
    torch.cuda.synchronize()
done = time.time()
if mode in ("cold-save", "precompile-save"):
    blob, _ = torch.compiler.save_cache_artifacts()
    with open(blob_path, "wb") as f:
        f.write(blob)
from torch._dynamo.utils import counters
print(json.dumps({"result_at": done, "compile_call": done - start,
                  "dynamo_cache": dict(counters["dynamo_cache"]),
                  "fx_miss": counters["inductor"].get("fxgraph_cache_miss", 0)}), flush=True)
"""


def child(mode, args, cache_dir, blob="", store="", env=None):
    environment = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir)
    environment.update(env or {})
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, args.model, "1" if args.train else "0", blob, store],
        env=environment, capture_output=True, text=True, timeout=1800,
    )
    ended = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["to_result"] = report["result_at"] - started
    report["process"] = ended - started
    return report


def import_torch():
    started = time.time()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return {"to_result": time.time() - started, "process": time.time() - started, "compile_call": 0.0}


def median_row(runs):
    return {k: statistics.median(r[k] for r in runs) for k in ("to_result", "compile_call", "process")}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="mlp", choices=["mlp", "xfmr"])
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--fleet", type=int, default=0)
    parser.add_argument("--redis-url", default="")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="megacache-bench-")
    fresh = lambda name: tempfile.mkdtemp(prefix=name + "-", dir=work)  # noqa: E731
    warm_dir = os.path.join(work, "warm")
    blob = os.path.join(work, "blob.bin")
    precompile_blob = os.path.join(work, "precompile.bin")
    store = "file://" + os.path.join(work, "store")

    rows = {"import torch": [], "cold": [], "torch warm dir": [], "torch mega-cache": [],
            "torch precompile": [], "megacache": []}
    # Produce once: the cold run's dir and blob, a precompile blob, a warm store.
    rows["cold"].append(child("cold-save", args, warm_dir, blob))
    child("precompile-save", args, fresh("pc-save"), precompile_blob)
    child("megacache", args, fresh("mc-save"), store=store)
    for _ in range(args.repeat):
        rows["import torch"].append(import_torch())
        rows["torch warm dir"].append(child("cold", args, warm_dir))
        rows["torch mega-cache"].append(child("mega-cache", args, fresh("mega"), blob))
        rows["torch precompile"].append(child("precompile", args, fresh("pc"), precompile_blob))
        rows["megacache"].append(child("megacache", args, fresh("mc"), store=store))
        assert rows["megacache"][-1]["fx_miss"] == 0 and rows["megacache"][-1]["dynamo_cache"].get("dynamo_cache_hit")
    if args.repeat > 1:
        rows["cold"].append(child("cold", args, fresh("cold")))

    table = {name: median_row(runs) for name, runs in rows.items()}
    torch_best = min(("torch warm dir", "torch mega-cache", "torch precompile"),
                     key=lambda n: table[n]["to_result"])
    ours = table["megacache"]
    print(f"model={args.model} train={args.train} repeat={args.repeat} python={sys.version.split()[0]}")
    print(f"{'start':<18}{'to result s':>12}{'compile+call s':>16}{'process s':>11}")
    for name, row in table.items():
        print(f"{name:<18}{row['to_result']:>12.2f}{row['compile_call']:>16.3f}{row['process']:>11.2f}")
    print(f"torch's best: {torch_best}")
    print(f"megacache vs torch's best, to result: {table[torch_best]['to_result'] / ours['to_result']:.2f}x;"
          f" compile+call: {table[torch_best]['compile_call'] / max(ours['compile_call'], 1e-6):.1f}x")
    print(f"megacache vs cold, compile+call: {table['cold']['compile_call'] / max(ours['compile_call'], 1e-6):.1f}x;"
          f" to result over import torch alone: +{ours['to_result'] - table['import torch']['to_result']:.2f} s")

    if args.fleet:
        fleet_store = args.redis_url or "file://" + os.path.join(work, "fleet-store")
        for label, mode, store_url in (("torch, one empty dir", "cold", ""),
                                       ("megacache", "megacache", fleet_store)):
            shared = fresh("fleet-shared")
            started = time.time()
            procs = []
            for i in range(args.fleet):
                cache = shared if mode == "cold" else fresh(f"fleet{i}")
                env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
                procs.append(subprocess.Popen(
                    [sys.executable, "-c", CHILD, mode, args.model, "1" if args.train else "0", "", store_url],
                    env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
            reports = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
            compiles = sum(1 for r in reports if r["fx_miss"])
            print(f"fleet of {args.fleet}, {label}: {compiles} compiles, all results after "
                  f"{max(r['result_at'] for r in reports) - started:.1f} s")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
