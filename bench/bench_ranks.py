"""One compile per node: ranks on several GPUs of one machine, megacache against torch.

Needs a machine with at least 2 CUDA GPUs (CI has none; the record is in docs/benchmarks.md).
Every process is fresh, with its own empty torch cache dir; the processes of one row share one
fresh HOME (Triton's cache), as the ranks of one job on a node do. Rows:

  move         a package compiled on cuda:0 is loaded by a process on cuda:1: Dynamo traces
               and Inductor compiles (each counted) against torch compiling on cuda:1, and
               the outputs compared.
  ranks torch  N processes started together, torchrun style (LOCAL_RANK, set_device), plain
               torch.compile: N compiles.
  ranks mc     the same under megacache.enable() with one store: one rank compiles, the others
               wait for its package and start from it on their own GPU.

For each row: compiles (frames Dynamo traced, graphs Inductor compiled), the time until every
rank has its first result, and each rank's output against torch's on the same GPU.

usage: python bench/bench_ranks.py [--ranks N] [--model mlp|xfmr|llama] [--train]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench_startup import machine_env  # bench/ is on sys.path when this script runs

CHILD = r"""
import json, os, sys, time
mode, model_name, train, store, out_path = sys.argv[1:6]
train = train == "1"
import torch
rank = int(os.environ["LOCAL_RANK"])
torch.cuda.set_device(rank)
if mode == "megacache":
    import megacache
    megacache.enable(store=store)
device = torch.device("cuda", rank)

sys.path.insert(0, BENCH_DIR)  # bench/models.py
from models import make_model

model, x = make_model(model_name, device)
if not train:
    model.eval()

compiled = torch.compile(model)
start = time.time()
if train:
    out = compiled(x)
    out.float().pow(2).mean().backward()
    grad = next(p for p in model.parameters() if p.grad is not None).grad
    result = {"out": out.detach().cpu(), "grad": grad.cpu()}
else:
    with torch.no_grad():
        result = {"out": compiled(x).cpu()}
torch.cuda.synchronize()
done = time.time()
torch.save(result, out_path)
from torch._dynamo.utils import counters
report = {"rank": rank, "result_at": done, "first_call": done - start,
          "traced": counters["stats"].get("unique_graphs", 0),
          "inductor_compiles": counters["inductor"].get("fxgraph_cache_miss", 0)}
if mode == "megacache":
    report["megacache"] = megacache.automatic_stats()
print(json.dumps(report), flush=True)
"""


CHILD = CHILD.replace("BENCH_DIR", repr(os.path.dirname(os.path.abspath(__file__))))


def start_rank(mode, args, rank, work, home, store, name):
    cache_dir = tempfile.mkdtemp(prefix=f"{name}-rank{rank}-cache-", dir=work)
    env = machine_env(
        home,
        LOCAL_RANK=str(rank),
        RANK=str(rank),
        WORLD_SIZE=str(args.ranks),
        TORCHINDUCTOR_CACHE_DIR=cache_dir,
    )
    out_path = os.path.join(work, f"{name}-rank{rank}.pt")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            mode,
            args.model,
            "1" if args.train else "0",
            store,
            out_path,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, out_path


def run_row(mode, args, ranks, work, name, store=""):
    """Starts one process per rank in `ranks` together; their reports, and the seconds until
    all of them had a result."""
    home = tempfile.mkdtemp(prefix=f"{name}-home-", dir=work)
    started = time.time()
    procs = [start_rank(mode, args, rank, work, home, store, name) for rank in ranks]
    reports = []
    for (proc, out_path), rank in zip(procs, ranks):
        stdout, stderr = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} rank {rank} failed:\n{stderr[-4000:]}")
        report = json.loads(stdout.strip().splitlines()[-1])
        report["out_path"] = out_path
        reports.append(report)
    return reports, max(r["result_at"] for r in reports) - started


def max_difference(path_a, path_b):
    import torch

    a, b = torch.load(path_a), torch.load(path_b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--model", default="xfmr", choices=["mlp", "xfmr", "llama"])
    parser.add_argument("--train", action="store_true")
    args = parser.parse_args()
    import torch

    if torch.cuda.device_count() < max(2, args.ranks):
        sys.exit(
            f"bench_ranks needs {max(2, args.ranks)} GPUs; "
            f"this machine has {torch.cuda.device_count()}"
        )
    work = tempfile.mkdtemp(prefix="megacache-ranks-")
    kind = f"{args.model} {'training' if args.train else 'inference'}"
    print(
        f"# {kind}, {args.ranks} ranks, {torch.cuda.get_device_name()}, torch {torch.__version__}"
    )

    # Torch on every GPU first: the reference outputs.
    torch_reports, torch_seconds = run_row("torch", args, range(args.ranks), work, "torch")
    reference = {r["rank"]: r["out_path"] for r in torch_reports}

    # A package made on cuda:0, loaded alone on cuda:1.
    store = "file://" + os.path.join(work, "move-store")
    run_row("megacache", args, [0], work, "move-build", store)
    (moved,), _ = run_row("megacache", args, [1], work, "move-load", store)
    print(
        f"move cuda:0 -> cuda:1: traced {moved['traced']}, "
        f"inductor compiles {moved['inductor_compiles']}, "
        f"first call {moved['first_call']:.2f} s, megacache {moved['megacache']}, "
        f"max |out - torch on cuda:1| {max_difference(moved['out_path'], reference[1]):.3g}"
    )

    store = "file://" + os.path.join(work, "ranks-store")
    mc_reports, mc_seconds = run_row("megacache", args, range(args.ranks), work, "ranks-mc", store)
    print(
        "| row | processes that traced | Inductor compiles "
        "| all ranks have a result | max |out - torch| |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, reports, seconds in (
        ("torch", torch_reports, torch_seconds),
        ("megacache", mc_reports, mc_seconds),
    ):
        tracing = sum(1 for r in reports if r["traced"])
        compiles = sum(r["inductor_compiles"] for r in reports)
        difference = max(max_difference(r["out_path"], reference[r["rank"]]) for r in reports)
        print(
            f"| {name} | {tracing} of {len(reports)} | {compiles} "
            f"| {seconds:.2f} s | {difference:.3g} |"
        )
    print(f"ratio torch / megacache, all ranks have a result: {torch_seconds / mc_seconds:.2f}x")
    for r in mc_reports:
        print(
            f"megacache rank {r['rank']}: traced {r['traced']}, "
            f"first call {r['first_call']:.2f} s, {r['megacache']}"
        )


if __name__ == "__main__":
    main()
