"""Subprocess side of the conformance suite: one scenario, in a fresh interpreter, under plain
torch or with megacache switched on, printing what a user could observe as one JSON line.

usage: steps.py plain|megacache SCENARIO [ARG]

With `megacache`, the process calls megacache.enable() with its defaults before anything
else, as a user adds the one line; MEGACACHE_DIR (set by the test) is the store. The test runs
the same scenario both ways and compares the outcomes; only compile counts may differ.
"""

import json
import os
import sys

MODE, SCENARIO = sys.argv[1:3]
ARG = sys.argv[3] if len(sys.argv) > 3 else ""

if MODE == "megacache":
    import megacache

    megacache.enable()

import torch  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

SCENARIOS = {}


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


def f(x):
    return torch.sin(x) + torch.cos(x) * 2


def g(x):
    y = torch.relu(x) - 1
    print("", end="")  # a graph break: Dynamo resumes in a second frame
    return y * torch.tanh(y)


def h(x):
    return x * 2 + 1  # no globals: every guard serializes without caching_precompile's filter


def values(tensor):
    return [round(v, 5) for v in tensor.detach().flatten().tolist()]


def graph_counting_backend():
    """A custom backend as tools and tests write them: returns the graph unchanged."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(len(gm.graph.nodes))
        return gm.forward

    return backend, graphs


def backend_named(name):
    if name == "custom":
        return graph_counting_backend()
    return name, None


@scenario
def second_wrap():
    """The same function wrapped twice in one process and called after each wrap, with a
    backend and options from ARG: "<backend>[,fullgraph][,dynamic=None|True|False]"."""
    name, *options = ARG.split(",")
    kwargs = {}
    for option in options:
        if option == "fullgraph":
            kwargs["fullgraph"] = True
        elif option.startswith("dynamic="):
            kwargs["dynamic"] = {"None": None, "True": True, "False": False}[option.split("=")[1]]
    backend, graphs = backend_named(name)
    fn = g if "graphbreak" in options else f
    outcome = {"first": values(torch.compile(fn, backend=backend, **kwargs)(torch.arange(6.0)))}
    compiled = torch.compile(fn, backend=backend, **kwargs)  # after one call of the first wrap
    outcome["second"] = [values(compiled(torch.arange(6.0))), values(compiled(torch.arange(9.0)))]
    outcome["eager"] = [values(fn(torch.arange(6.0))), values(fn(torch.arange(9.0)))]
    outcome["informational"] = {"graphs_compiled": graphs}
    return outcome


def delta(before, group):
    return {
        name: count - before.get(name, 0)
        for name, count in counters[group].items()
        if count != before.get(name, 0)
    }


@scenario
def torch_saved_entry():
    """torch's own DynamoCache, as its users drive it with caching_precompile on. ARG "save":
    compile, then PrecompileContext.save_to_dynamo_cache(); "load" (another process, same
    torch cache dir): torch.compile under fail_on_recompile; "load_and_install":
    DynamoCache.load_and_install_package, then a compile with that package."""
    from torch._dynamo.package import DynamoCache
    from torch._dynamo.precompile_context import PrecompileContext

    torch._dynamo.config.caching_precompile = True
    x = torch.arange(6.0)
    if ARG == "save":
        result = torch.compile(f)(x)
        PrecompileContext.save_to_dynamo_cache()
        return {"result": values(result)}
    with torch.compiler.set_stance("fail_on_recompile"):
        if ARG == "load":
            compiled = torch.compile(f)
        else:
            package = DynamoCache.load_and_install_package(f)
            compiled = torch._dynamo.optimize(backend="inductor", package=package)(f)
        try:
            return {"result": values(compiled(x))}
        except RuntimeError as error:
            return {"error": str(error).splitlines()[0]}


@scenario
def fresh_cache():
    """torch._inductor.utils.fresh_cache() after a warm compile: inside it, a compile is cold."""
    from torch._inductor.utils import fresh_cache as torch_fresh_cache

    x = torch.arange(6.0)
    first = values(torch.compile(f)(x))
    torch._dynamo.reset()
    with torch_fresh_cache():
        inductor, dynamo = dict(counters["inductor"]), dict(counters["dynamo_cache"])
        second = values(torch.compile(f)(x))
        inside = {
            "inductor": delta(inductor, "inductor"),
            "dynamo_cache": delta(dynamo, "dynamo_cache"),
        }
    return {"results": [first, second], "inside_fresh_cache": inside}


@scenario
def wrapped_before_fresh_cache():
    """A function wrapped outside fresh_cache() and called inside it, with a Mega-Cache save
    and hot load in between (as Inductor's hot-load tests do): torch's manager and counters."""
    from torch._inductor.utils import fresh_cache as torch_fresh_cache
    from torch.compiler._cache import CacheArtifactManager

    compiled = torch.compile(f, dynamic=False)
    x = torch.arange(6.0)
    with torch_fresh_cache():
        compiled(x)
    blob, _ = torch.compiler.save_cache_artifacts()
    outcome = {"after_save": CacheArtifactManager.need_serialize()}
    torch._dynamo.reset()
    counters.clear()
    with torch_fresh_cache():
        torch.compiler.load_cache_artifacts(blob)
        outcome["result"] = values(compiled(x))
        outcome["counters"] = {
            group: dict(counters[group]) for group in ("inductor", "aot_autograd")
        }
    outcome["after_hot_load"] = CacheArtifactManager.need_serialize()
    return outcome


@scenario
def torch_state():
    """What megacache leaves of torch's own state: the caching_precompile flag, the FX graph
    and AOTAutograd cache counters of a compile repeated inside fresh_cache (as Inductor's own
    tests count them), and standalone_compile's unpacked layout."""
    from torch._inductor.utils import fresh_cache as torch_fresh_cache

    x = torch.arange(6.0)
    outcome = {"flag_before": torch._dynamo.config.caching_precompile}
    compiled = torch.compile(f)
    outcome["flag_after_wrap"] = torch._dynamo.config.caching_precompile
    compiled(x)
    outcome["flag_after_call"] = torch._dynamo.config.caching_precompile
    with torch_fresh_cache():
        counters.clear()
        for _ in range(2):
            torch._dynamo.reset()
            torch.compile(g)(x)
        outcome["counters"] = {
            group: dict(counters[group]) for group in ("inductor", "aot_autograd")
        }
    gm = torch.fx.symbolic_trace(f)
    artifact = torch._inductor.standalone_compile(gm, [x])
    target = os.path.join(os.environ["TORCHINDUCTOR_CACHE_DIR"], "standalone")
    artifact.save(path=target, format="unpacked")
    outcome["unpacked_layout"] = sorted(
        os.path.relpath(root, target).split(os.sep)[0] + f"/{len(files)} files"
        for root, _, files in os.walk(target)
        if files
    )
    return outcome


@scenario
def own_compile_package():
    """torch's CompilePackage driven directly (as torch's package tests do), then exit."""
    from torch._dynamo.package import CompilePackage

    torch._functorch.config.bundled_autograd_cache = True
    package = CompilePackage(h)
    compiled = torch._dynamo.optimize(backend="inductor", package=package)(h)
    return {"result": values(compiled(torch.arange(6.0)))}


@scenario
def training_variants():
    """One training step compiled with dynamic=True for two dtypes in turn: the second wrap
    of the same function finds the first one's package in the store."""

    def step(weight, x):
        return (weight * x).sin().sum()

    grads = []
    for dtype in (torch.float32, torch.float64):
        weight = torch.ones(5, dtype=dtype, requires_grad=True)
        torch.compile(step, dynamic=True)(weight, torch.arange(5, dtype=dtype)).backward()
        grads.append(values(weight.grad))
    return {"grads": grads}


@scenario
def claims():
    """Whether another process could claim the compile of a function right after this process
    stopped compiling it: after a first call that recorded nothing (a custom backend), after a
    first call that raised, and after a wrapped function was dropped uncalled."""
    import gc

    from megacache.torch import precompile

    def claimable(fn):
        name = precompile.store_name(precompile.source_key(fn))
        value, claim = megacache.open_store().get_or_claim(name, 0.0)
        if claim is not None:
            claim.release()
        return claim is not None

    backend, _ = graph_counting_backend()
    torch.compile(f, backend=backend)(torch.arange(6.0))
    outcome = {"recorded_nothing": claimable(f)}

    def fails(x):
        return torch.sin(x).reshape(7)  # the first call raises

    try:
        torch.compile(fails)(torch.arange(6.0))
    except Exception:  # noqa: BLE001 - the caller's own error, expected here
        pass
    outcome["raised"] = claimable(fails)
    compiled = torch.compile(g)
    del compiled
    gc.collect()
    outcome["never_called"] = claimable(g)
    return outcome


@scenario
def variants():
    """One function wrapped with dynamic=False, then dynamic=True, then dynamic=False again:
    each wrap may only install a package compiled for its own arguments."""
    import megacache

    outcome = {}
    for step, dynamic in (("static", False), ("dynamic", True), ("static_again", False)):
        torch._dynamo.reset()
        compiled = torch.compile(f, dynamic=dynamic)
        outcome[step] = values(compiled(torch.arange(6.0)))
        outcome[f"{step}_stats"] = {
            name: megacache.automatic_stats()[name] for name in ("hits", "guard_misses", "refused")
        }
    return outcome


@scenario
def deadline():
    """A wait for another process's compile of a function that was published before (in
    another environment, say): it lasts a few times the compile measured then. Here this
    process holds the claim through a second store handle, as another process would."""
    import time

    from megacache.torch import precompile

    x = torch.arange(6.0)
    torch.compile(f)(x)  # compiled and published, with its compile time
    key = precompile.source_key(f)
    store = megacache.open_store()
    measured = float(store.get(precompile.compile_seconds_name(key)).decode())
    store.remove(precompile.store_name(key))  # as if the environment had changed
    _, held = store.get_or_claim(precompile.store_name(key), 0.0)
    torch._dynamo.reset()
    started = time.monotonic()
    compiled = torch.compile(f)  # waits for the claim, then compiles itself
    waited = time.monotonic() - started
    held.release()
    return {"measured_s": measured, "waited_s": waited, "result": values(compiled(x))}


if __name__ == "__main__":
    result = SCENARIOS[SCENARIO]()
    result["informational"] = dict(
        result.get("informational", {}), dynamo_cache=dict(counters["dynamo_cache"])
    )
    print(json.dumps(result, sort_keys=True))
