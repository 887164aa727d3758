"""Fresh-process start-up: torch's cache paths and megacache's automatic mode, side by side.

Each row is a new Python process on a fresh machine: an empty torch cache dir, an empty HOME
(Triton and CUDA keep caches there) and an empty temporary dir (Inductor's precompiled headers),
TRITON_CACHE_DIR and XDG_CACHE_HOME unset (`machine_env`).
Measured from the parent: process start -> first result ("to result") and the whole process
("process"); measured inside, after importing Dynamo and Inductor: a Mega-Cache load where the
row has one, torch.compile and the first call ("compile+call"), which is where every cache
lookup happens. Rows:

  import torch        python -c "import torch" (the floor of any row)
  + Dynamo, Inductor  import torch, torch._dynamo, torch._inductor.compile_fx: the imports every
                      row below makes (torch's load path needs them: the output code imports
                      Inductor's lowering), the floor of a precompiled start
  cold                empty cache dir
  torch warm dir      the cold run's cache dir, HOME and temporary dir again (the same machine
                      restarted)
  torch mega-cache    empty dir + torch.compiler.load_cache_artifacts(blob of the cold run)
  torch precompile    caching_precompile: empty dir + the blob with its precompile artifact
  megacache           megacache.enable(store) on an empty cache dir, store warmed by one run

usage: python bench/bench_startup.py [--model mlp|xfmr|llama] [--train] [--repeat N] [--fleet N]
--fleet N also starts N processes together on empty dirs with one shared store (Redis when
--redis-url is given) and reports compiles and the time until all have a result, against N
cold processes started together.

bench/first_call_phases.py shows where the megacache row's compile+call goes.
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

sys.path.insert(0, BENCH_DIR)  # bench/models.py
from models import make_model

model, x = make_model(model_name, device)
# Every row pays these imports; importing them first leaves "compile+call" to the cache path
# itself (a load, torch.compile, the first call), as the fixtures' figures count it.
import START_IMPORTS
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


# What every row imports before its timed part, and all that the "+ Dynamo, Inductor" row does.
START_IMPORTS = "torch._dynamo, torch._inductor.compile_fx"
CHILD = CHILD.replace("BENCH_DIR", repr(os.path.dirname(os.path.abspath(__file__))))
CHILD = CHILD.replace("START_IMPORTS", START_IMPORTS)


def machine_env(home, **variables):
    """The environment of a process on a machine whose HOME is `home`: Triton and CUDA keep
    their caches there, so TRITON_CACHE_DIR and XDG_CACHE_HOME, which would point past it, are
    unset; and its temporary dir is the machine's own too (`home`/tmp), because Inductor keeps
    the C++ kernels' precompiled headers under the system's temporary dir, not the cache dir."""
    tmp = os.path.join(home, "tmp")
    os.makedirs(tmp, exist_ok=True)
    environment = dict(os.environ, HOME=home, TMPDIR=tmp, **variables)
    for variable in ("TRITON_CACHE_DIR", "XDG_CACHE_HOME"):
        environment.pop(variable, None)
    return environment


def child(mode, args, cache_dir, home, blob="", store="", code=CHILD):
    """One row's process. `home` is its HOME: a fresh empty one for a new machine (Triton and
    CUDA keep their own caches there), the cold run's for the same machine restarted. A row of
    torch's that crashes is reported as crashed (torch 2.11's precompile path crashes on the
    decoder); megacache's rows must not."""
    environment = machine_env(home, TORCHINDUCTOR_CACHE_DIR=cache_dir)
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", code, mode, args.model, "1" if args.train else "0", blob, store],
        env=environment,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    ended = time.time()
    if proc.returncode != 0:
        if mode in ("precompile", "mega-cache", "cold"):
            lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
            return {"crashed": lines[-1][-200:]}
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["to_result"] = report["result_at"] - started
    report["process"] = ended - started
    return report


def imports_alone(statement, home):
    """A process that only imports: "to result" is when the imports are done, "process" its
    exit, as for the other rows (torch's interpreter shutdown takes a second or more)."""
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", statement + "\nimport time; print(time.time())"],
        check=True,
        env=machine_env(home),
        capture_output=True,
        text=True,
    )
    ended = time.time()
    return {
        "to_result": float(proc.stdout.split()[-1]) - started,
        "process": ended - started,
        "compile_call": 0.0,
    }


def median_row(runs):
    crashed = [r["crashed"] for r in runs if "crashed" in r]
    if crashed:
        return {"crashed": f"{len(crashed)} of {len(runs)} runs crashed: {crashed[0]}"}
    return {
        k: statistics.median(r[k] for r in runs) for k in ("to_result", "compile_call", "process")
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="mlp", choices=["mlp", "xfmr", "llama"])
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--fleet", type=int, default=0)
    parser.add_argument("--redis-url", default="")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="megacache-bench-")

    def fresh(name):
        return tempfile.mkdtemp(prefix=name + "-", dir=work)

    warm_dir = os.path.join(work, "warm")
    blob = os.path.join(work, "blob.bin")
    precompile_blob = os.path.join(work, "precompile.bin")
    store = "file://" + os.path.join(work, "store")

    rows = {
        "import torch": [],
        "+ Dynamo, Inductor": [],
        "cold": [],
        "torch warm dir": [],
        "torch mega-cache": [],
        "torch precompile": [],
        "megacache": [],
    }
    # Produce once: the cold run's dir, HOME and blob, a precompile blob, a warm store.
    cold_home = fresh("cold-home")
    rows["cold"].append(child("cold-save", args, warm_dir, cold_home, blob))
    child("precompile-save", args, fresh("pc-save"), fresh("home"), precompile_blob)
    child("megacache", args, fresh("mc-save"), fresh("home"), store=store)
    for _ in range(args.repeat):
        rows["import torch"].append(imports_alone("import torch", fresh("home")))
        rows["+ Dynamo, Inductor"].append(
            imports_alone(f"import torch, {START_IMPORTS}", fresh("home"))
        )
        rows["torch warm dir"].append(child("cold", args, warm_dir, cold_home))  # the same machine
        rows["torch mega-cache"].append(
            child("mega-cache", args, fresh("mega"), fresh("home"), blob)
        )
        rows["torch precompile"].append(
            child("precompile", args, fresh("pc"), fresh("home"), precompile_blob)
        )
        rows["megacache"].append(child("megacache", args, fresh("mc"), fresh("home"), store=store))
        assert rows["megacache"][-1]["fx_miss"] == 0 and rows["megacache"][-1]["dynamo_cache"].get(
            "dynamo_cache_hit"
        )
    if args.repeat > 1:
        rows["cold"].append(child("cold", args, fresh("cold"), fresh("home")))

    table = {name: median_row(runs) for name, runs in rows.items()}
    torch_best = min(
        (
            n
            for n in ("torch warm dir", "torch mega-cache", "torch precompile")
            if "crashed" not in table[n]
        ),
        key=lambda n: table[n]["to_result"],
    )
    ours = table["megacache"]
    print(
        f"model={args.model} train={args.train} repeat={args.repeat} "
        f"python={sys.version.split()[0]}"
    )
    print(f"{'start':<18}{'to result s':>12}{'compile+call s':>16}{'process s':>11}")
    for name, row in table.items():
        if "crashed" in row:
            print(f"{name:<18} {row['crashed']}")
        else:
            print(
                f"{name:<18}{row['to_result']:>12.2f}{row['compile_call']:>16.3f}{row['process']:>11.2f}"
            )
    print(f"torch's best: {torch_best}")
    print(
        "megacache vs torch's best, to result: "
        f"{table[torch_best]['to_result'] / ours['to_result']:.2f}x;"
        f" compile+call: {table[torch_best]['compile_call'] / max(ours['compile_call'], 1e-6):.1f}x"
    )
    print(
        "megacache vs cold, compile+call: "
        f"{table['cold']['compile_call'] / max(ours['compile_call'], 1e-6):.1f}x"
    )
    for floor in ("import torch", "+ Dynamo, Inductor"):
        print(
            f"megacache over {floor}: "
            f"to result +{ours['to_result'] - table[floor]['to_result']:.2f} s,"
            f" process +{ours['process'] - table[floor]['process']:.2f} s"
        )

    if args.fleet:
        fleet_store = args.redis_url or "file://" + os.path.join(work, "fleet-store")
        for label, mode, store_url in (
            ("torch, one empty dir", "cold", ""),
            ("megacache", "megacache", fleet_store),
        ):
            shared = fresh("fleet-shared")
            started = time.time()
            procs = []
            for i in range(args.fleet):
                cache = shared if mode == "cold" else fresh(f"fleet{i}")
                env = machine_env(fresh(f"fleet{i}-home"), TORCHINDUCTOR_CACHE_DIR=cache)
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-c",
                            CHILD,
                            mode,
                            args.model,
                            "1" if args.train else "0",
                            "",
                            store_url,
                        ],
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                        text=True,
                    )
                )
            reports = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
            compiles = sum(1 for r in reports if r["fx_miss"])
            print(
                f"fleet of {args.fleet}, {label}: {compiles} compiles, all results after "
                f"{max(r['result_at'] for r in reports) - started:.1f} s"
            )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
