"""Where a precompiled start's first call spends its time, by wall clock.

cProfile doubles the first call of a precompiled start (0.70 s against 0.41 s on the
transformer), so its shares are not the call's. This fills a store as bench_startup.py's
megacache row does, then runs that row again (on a fresh machine, `--runs` times) with
wall-clock timers around the steps of torch's load path and megacache's (`STEPS`) and around
every import, and prints each run's timeline (nested steps indented) with the totals per step,
torch's own `dynamo_timed` totals and its counters.

--profile-step STEP also profiles every call of one step (e.g. CheckFunctionManager.__init__)
in the last run: with cProfile, or with `--profiler operators` torch's profiler, which names
the operators a step runs (CompiledFxGraph.__call__: the graph's first execution).

usage: python bench/first_call_phases.py [--model mlp|xfmr|llama] [--train] [--runs N]
           [--min-ms MS] [--profile-step STEP [--profiler python|operators]]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_startup  # noqa: E402

# "module:attribute path". A step torch or megacache does not have in this version is skipped.
STEPS = [
    "megacache.torch.precompile:_MegacacheDynamoCache.load",
    "megacache.torch.precompile:_AutomaticMode._lookup",
    "megacache._core:Store.get",
    "megacache._core:Package.from_bytes",
    "megacache._core:Package.check",
    "megacache.torch.precompile:install_files",
    "megacache._core:Package.populate",
    "megacache.torch.precompile:entry_for",
    "megacache.torch.precompile:check",
    "megacache.torch.precompile:_triton_cache_dirs",
    "megacache.torch.installed_keys:seed",
    "megacache.torch.devices:move_for",
    "megacache.torch.precompile:_first_call_done",
    "megacache.torch.warm_up:start",
    "megacache.torch.warm_up:wait",
    "torch._dynamo.package:CompilePackage.__init__",
    "torch._dynamo.package:CompilePackage.install",
    "torch._dynamo.package:CompilePackage.initialize",
    "torch._dynamo.convert_frame:_compile",
    "torch._dynamo.guards:CheckFunctionManager.__init__",
    "torch._dynamo.guards:GuardBuilder.__init__",
    "torch._dynamo.guards:build_guard_function",
    "torch._functorch._aot_autograd.autograd_cache:deserialize_bundled_cache_entry",
    "torch._functorch._aot_autograd.autograd_cache:AOTAutogradCache._lookup",
    "torch._inductor.codecache:FxGraphCache._lookup_graph",
    "torch._inductor.codecache:PyCodeCache.load_by_key_path",
    "torch._inductor.triton_bundler:TritonBundler.read_and_emit",
    "torch._inductor.triton_bundler:TritonBundler.load_autotuners",
    "torch._inductor.async_compile:AsyncCompile.triton",
    "torch._inductor.async_compile:AsyncCompile.wait",
    "torch._inductor.async_compile:_load_triton_kernel_from_source",
    "torch._inductor.runtime.triton_heuristics:CachingAutotuner.precompile",
    "torch._inductor.runtime.triton_heuristics:CachingAutotuner.run",
    "torch._inductor.runtime.static_triton_launcher:StaticallyLaunchedCudaKernel.load_kernel",
    "torch._inductor.output_code:CompiledFxGraph.__call__",
    "torch._inductor.output_code:CompiledFxGraph.post_compile",
    "triton.compiler.compiler:compile",
    "triton.compiler.compiler:CompiledKernel._init_handles",
    "torch.cuda:synchronize",
]

PRELUDE = r"""
import atexit, functools, importlib, json, os, sys, time
import torch, torch._dynamo, torch._inductor.compile_fx
_events, _depth = [], [0]

_profiled = os.environ.get("MEGACACHE_PHASES_PROFILE_STEP")
_operators = os.environ.get("MEGACACHE_PHASES_PROFILER") == "operators"
_profiler = None

def _timed(name, fn):
    @functools.wraps(fn)
    def timed(*args, **kwargs):
        global _profiler
        _depth[0] += 1
        profiling = name == _profiled
        if profiling and _operators:
            import torch.profiler
            _profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            _profiler.__enter__()
        elif profiling:
            import cProfile
            _profiler = _profiler or cProfile.Profile()
            _profiler.enable()
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            if profiling and _operators:
                _profiler.__exit__(None, None, None)
                with open(os.environ["MEGACACHE_PHASES_OUT"] + f".ops{len(_events)}", "w") as f:
                    f.write(_profiler.key_averages().table(
                        sort_by="self_cpu_time_total", row_limit=20))
            elif profiling:
                _profiler.disable()
            _depth[0] -= 1
            _events.append((name, _depth[0], started, time.perf_counter()))
    return timed

def _wrap(spec):
    module_name, path = spec.split(":")
    try:
        owner = importlib.import_module(module_name)
        *parents, attribute = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        original = owner.__dict__[attribute]
    except (ImportError, AttributeError, KeyError):
        return
    if isinstance(original, (classmethod, staticmethod)):
        timed = type(original)(_timed(path, original.__func__))
    else:
        timed = _timed(path, original)
    setattr(owner, attribute, timed)
    if not parents:  # a function: also where other modules imported it by name
        for module in list(sys.modules.values()):
            namespace = getattr(module, "__dict__", None)
            if isinstance(namespace, dict):
                for key, value in list(namespace.items()):
                    if value is original:
                        namespace[key] = timed

def _install():
    for spec in STEPS_TO_TIME:
        _wrap(spec)
    # Every import the call makes, by module (the import statement calls this by name).
    bootstrap = sys.modules["_frozen_importlib"]
    find_and_load = bootstrap._find_and_load

    def timed_find_and_load(name, *args, **kwargs):
        return _timed("import " + name, find_and_load)(name, *args, **kwargs)

    bootstrap._find_and_load = timed_find_and_load

_install()

@atexit.register
def _dump():
    from torch._dynamo.utils import compilation_time_metrics, counters
    if _profiler is not None and not _operators:
        _profiler.dump_stats(os.environ["MEGACACHE_PHASES_OUT"] + ".prof")
    with open(os.environ["MEGACACHE_PHASES_OUT"], "w") as f:
        json.dump({"clock": [time.time(), time.perf_counter()], "events": _events,
                   "dynamo_timed": {k: sum(v) for k, v in compilation_time_metrics.items()},
                   "counters": {k: dict(v) for k, v in counters.items()}}, f)
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="mlp", choices=["mlp", "xfmr", "llama"])
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--min-ms", type=float, default=2.0, help="the timeline's shortest step")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--profile-step",
        default="",
        help="a step of STEPS (its attribute path) to profile too, in the last run",
    )
    parser.add_argument(
        "--profiler",
        choices=["python", "operators"],
        default="python",
        help="cProfile, or torch's profiler of the operators each call of the step runs",
    )
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="megacache-phases-")

    def fresh(name):
        return tempfile.mkdtemp(prefix=name + "-", dir=work)

    store = "file://" + os.path.join(work, "store")
    bench_startup.child("megacache", args, fresh("save"), fresh("home"), store=store)
    stored = [os.path.join(d, f) for d, _, files in os.walk(store[len("file://") :]) for f in files]
    print("store:", sum(os.path.getsize(f) for f in stored), "bytes in", len(stored), "files")
    timed_child = PRELUDE.replace("STEPS_TO_TIME", repr(STEPS)) + bench_startup.CHILD
    for run in range(args.runs):
        out = os.path.join(work, f"phases{run}.json")
        os.environ["MEGACACHE_PHASES_OUT"] = out
        if args.profile_step and run == args.runs - 1:
            os.environ["MEGACACHE_PHASES_PROFILE_STEP"] = args.profile_step
            os.environ["MEGACACHE_PHASES_PROFILER"] = args.profiler
        report = bench_startup.child(
            "megacache", args, fresh("mc"), fresh("home"), store=store, code=timed_child
        )
        with open(out) as f:
            phases = json.load(f)
        print(
            f"run {run}: compile+call {report['compile_call']:.3f} s,"
            f" to result {report['to_result']:.2f} s"
        )
        events = sorted(phases["events"], key=lambda e: e[2])
        wall, perf = phases["clock"]
        first = report["result_at"] - report["compile_call"] - wall + perf  # the call's start
        totals = {}
        for name, depth, started, ended in events:
            totals.setdefault(name, [0, 0.0])
            totals[name][0] += 1
            totals[name][1] += ended - started
            if (ended - started) * 1000 >= args.min_ms:
                print(
                    f"  {started - first:8.3f} {'  ' * depth}{name} "
                    f"{1000 * (ended - started):.1f} ms"
                )
        print("  totals (count, ms; nested steps counted in their parents too):")
        for name, (count, seconds) in sorted(totals.items(), key=lambda item: -item[1][1]):
            if seconds * 1000 >= args.min_ms / 4:
                print(f"    {name:<60}{count:>5}{1000 * seconds:>10.1f}")
        timed_by_torch = {k: round(v, 4) for k, v in phases["dynamo_timed"].items()}
        print("  torch's dynamo_timed (s):", json.dumps(timed_by_torch))
        print("  counters:", json.dumps(phases["counters"]))
        for table in sorted(glob.glob(out + ".ops*")):
            print(f"  {args.profile_step}, one call, torch's profiler (operators by own CPU time):")
            with open(table) as f:
                print(f.read())
        if os.path.exists(out + ".prof"):
            import pstats

            print(
                f"  {args.profile_step}, profiled (cProfile slows it), "
                "by own time and by cumulative:"
            )
            pstats.Stats(out + ".prof").sort_stats("tottime").print_stats(25)
            pstats.Stats(out + ".prof").sort_stats("cumulative").print_stats(40)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
