"""Precompile packages on real torch (CI: 2.13 and 2.15 on the CPU; also run on torch 2.11 on the
H200): each case compiles in a fresh process with an empty cache dir and saves a package;
another fresh process with another empty cache dir loads it under fail_on_recompile and must
give the same outputs without compiling."""

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torch._dynamo.precompile_context import PrecompileContext

HERE = Path(__file__).parent / "precompile"
CASES = ["plain", "graph_break", "dynamic", "training", "recompile"]


def run(script, *args, cwd, cache_dir, env=None, timeout=900):
    environment = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache_dir), PYTHONPATH=str(cwd))
    environment.update(env or {})
    # -P: the copy of cases.py in `cwd` (which tests edit) must win over the one beside the script.
    proc = subprocess.run(
        [sys.executable, "-P", str(HERE / script), *map(str, args)],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{script} {args} failed:\n{proc.stderr[-5000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def copy_cases(root):
    """A copy of cases.py in root/code, which a test may edit; subprocesses import it."""
    code = root / "code"
    code.mkdir()
    shutil.copy(HERE / "cases.py", code / "cases.py")
    return code


@pytest.fixture(scope="session")
def cold(tmp_path_factory):
    """Every case compiled cold, two processes at a time (the machine has two cores)."""
    root = tmp_path_factory.mktemp("precompile")
    code = copy_cases(root)

    def compile_case(case):
        out = root / case
        out.mkdir()
        report = run(
            "workload.py",
            case,
            "cold",
            out / "package.mcpkg",
            out,
            cwd=code,
            cache_dir=root / f"cache-{case}",
        )
        return case, out, report

    with ThreadPoolExecutor(max_workers=2) as pool:
        done = {case: (out, report) for case, out, report in pool.map(compile_case, CASES)}
    return code, done


@pytest.mark.parametrize("case", CASES)
def test_fresh_process_loads_the_package_without_compiling(cold, case, tmp_path):
    code, done = cold
    out, cold_report = done[case]
    assert cold_report["dynamo_cache"].get("dynamo_cache_miss", 0) >= 1
    assert cold_report["inductor"].get("fxgraph_cache_miss", 0) >= 1

    machine_tmp = tmp_path / "tmp"  # the temporary dir of a fresh machine: empty
    machine_tmp.mkdir()
    report = run(
        "workload.py",
        case,
        "load",
        out / "package.mcpkg",
        tmp_path,
        cwd=code,
        cache_dir=tmp_path / "cache",
        env={"TMPDIR": str(machine_tmp)},
    )
    assert report["dynamo_cache"].get("dynamo_cache_hit", 0) >= 1
    assert "dynamo_cache_miss" not in report["dynamo_cache"]
    # Nothing was traced or compiled: no FX graph lookup at all, hit or miss.
    assert "fxgraph_cache_miss" not in report["inductor"]
    assert "fxgraph_cache_hit" not in report["inductor"]
    # Nor was the precompiled header made that only a compile of C++ kernels uses (torch keeps
    # it under the temporary dir; 10 s on 2 cores): the kernels came from the package.
    assert not list(machine_tmp.rglob("precompiled_headers")), list(machine_tmp.rglob("*"))
    expected = torch.load(out / "cold.pt")
    actual = torch.load(tmp_path / "load.pt")
    assert len(actual) >= len(expected)
    for want, got in zip(expected, actual):
        assert torch.equal(want, got)


def test_an_installed_kernel_library_is_served_and_a_removed_one_built_again(tmp_path, monkeypatch):
    """torch's lookup of an installed kernel library's key returns megacache's loader of that
    file (no precompiled header); if something removed the file before torch loaded it, torch
    builds it again, as it would without megacache."""
    from torch._inductor import codecache

    from megacache.torch import precompile

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    for table in (
        codecache.CppCodeCache,
        codecache.CppPythonBindingsCodeCache,
        codecache.CppWrapperCodeCache,
    ):
        monkeypatch.setattr(table, "cache", {})  # this test's entries leave with it
    source = 'extern "C" int megacache_answer() { return 42; }'
    assert codecache.CppCodeCache.load(source).megacache_answer() == 42
    (library,) = tmp_path.glob("*/*.main.so")
    installed = [str(library.relative_to(tmp_path))]

    codecache.CppCodeCache.cache.clear()
    precompile._serve_installed_kernels(str(tmp_path), installed)
    served = codecache.CppCodeCache.load_async(source)
    assert isinstance(served, precompile._InstalledLibrary)
    assert served().megacache_answer() == 42

    codecache.CppCodeCache.cache.clear()
    precompile._serve_installed_kernels(str(tmp_path), installed)
    library.unlink()
    rebuilt = codecache.CppCodeCache.load_async(source)
    assert not isinstance(rebuilt, precompile._InstalledLibrary)
    assert rebuilt().megacache_answer() == 42 and library.exists()


def test_unpacked_package_is_readable_and_loads(cold, tmp_path):
    code, done = cold
    out, _ = done["plain"]
    unpacked = out / "package.mcpkg.unpacked"
    manifest = json.loads((unpacked / "manifest.json").read_text())
    names = sorted(f["function"]["qualname"] for f in manifest["functions"])
    assert names == ["MLP.forward", "scale"]
    assert manifest["kernels"], "a CPU package carries its compiled kernels"
    assert all((unpacked / "kernels" / k).is_file() for k in manifest["kernels"])
    fingerprint = json.loads((unpacked / "fingerprint.json").read_text())
    assert fingerprint["torch"] == torch.__version__ and fingerprint["cpu_flags"]

    report = run(
        "workload.py", "plain", "load", unpacked, tmp_path, cwd=code, cache_dir=tmp_path / "cache"
    )
    assert report["dynamo_cache"].get("dynamo_cache_hit") == 2
    assert "fxgraph_cache_miss" not in report["inductor"]


def test_package_from_a_store_url_loads(cold, tmp_path):
    code, done = cold
    out, _ = done["plain"]
    report = run(
        "workload.py",
        "plain",
        "load",
        f"file://{out / 'store'}",
        tmp_path,
        cwd=code,
        cache_dir=tmp_path / "cache",
    )
    assert report["dynamo_cache"].get("dynamo_cache_hit") == 2
    assert "fxgraph_cache_miss" not in report["inductor"]
    assert torch.equal(torch.load(out / "cold.pt")[0], torch.load(tmp_path / "load.pt")[0])


def test_mismatched_environment_function_source_and_signature_raise(cold, tmp_path):
    code, done = cold
    out, _ = done["plain"]
    edited = tmp_path / "edited"
    shutil.copytree(out / "package.mcpkg.unpacked", edited)
    fingerprint = json.loads((edited / "fingerprint.json").read_text())
    other_torch = "2.0.0+another-build"  # no torch this suite runs under
    fingerprint["torch"] = other_torch
    (edited / "fingerprint.json").write_text(json.dumps(fingerprint))

    # The same functions at the same lines, with scale's body and MLP.forward's signature edited.
    changed = tmp_path / "code"
    changed.mkdir()
    source = (code / "cases.py").read_text()
    source = source.replace("return x * 3 + 1", "return x * 4 + 1")
    source = source.replace("def forward(self, x):", "def forward(self, x, bias=0):")
    (changed / "cases.py").write_text(source)

    results = run(
        "mismatch.py", out / "package.mcpkg", edited, cwd=changed, cache_dir=tmp_path / "cache"
    )
    assert results["environment"] == (
        f"package built with torch {other_torch}, this is {torch.__version__}"
    )
    assert results["function"] == (
        "package holds no entry for cases.unrelated (line 36); "
        "it holds cases.scale (line 18), cases.MLP.forward (line 14)"
    )
    assert results["source"].startswith("source of cases.scale (line 18) changed since the package")
    assert "ignore_source_changes=True" in results["source"]
    assert results["source_ignored"] == "ok"
    # megacache.compile() never raised: each of the five wraps logged why and compiled fresh.
    assert results["refused_at_wrap"] == 5
    assert results["signature"] == (
        "package built for MLP.forward(x), this function is MLP.forward(x, bias=0)"
    )


def test_automatic_mode_fleet_compiles_once(redis_url, tmp_path):
    """Four processes with empty cache dirs and one Redis: one compiles and publishes, the
    others wait for it and start from its package."""
    code = copy_cases(tmp_path)

    def member(i):
        return run(
            "automatic.py",
            redis_url,
            tmp_path / f"out{i}.pt",
            cwd=code,
            cache_dir=tmp_path / f"cache{i}",
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        reports = list(pool.map(member, range(4)))
    compiled = [r for r in reports if r["automatic"]["misses"]]
    warm = [r for r in reports if r["automatic"]["hits"]]
    assert len(compiled) == 1, reports
    assert compiled[0]["automatic"]["published"] == 1
    assert compiled[0]["inductor"].get("fxgraph_cache_miss") == 1
    assert len(warm) == 3, reports
    for r in warm:
        assert r["dynamo_cache"] == {"dynamo_cache_hit": 1}
        assert (
            "fxgraph_cache_miss" not in r["inductor"] and "fxgraph_cache_hit" not in r["inductor"]
        )
    outputs = [torch.load(tmp_path / f"out{i}.pt") for i in range(4)]
    assert all(torch.equal(outputs[0], o) for o in outputs[1:])


def test_automatic_mode_training_package_includes_the_backward(tmp_path):
    """The backward compiles after the first forward call returns; the package is published
    once torch records it, so the next process compiles neither direction."""
    code = copy_cases(tmp_path)
    store = f"file://{tmp_path / 'store'}"
    first = run(
        "automatic.py", store, tmp_path / "a.pt", "train", cwd=code, cache_dir=tmp_path / "c1"
    )
    assert first["automatic"]["published"] == 1 and first["inductor"]["fxgraph_cache_miss"] == 2
    second = run(
        "automatic.py", store, tmp_path / "b.pt", "train", cwd=code, cache_dir=tmp_path / "c2"
    )
    assert second["automatic"]["hits"] == 1 and second["automatic"]["published"] == 0
    assert (
        "fxgraph_cache_miss" not in second["inductor"]
        and "fxgraph_cache_hit" not in second["inductor"]
    )
    assert torch.equal(torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt"))


def test_cuda_jit_entries_made_after_a_publish_go_out_and_install_for_the_same_driver(tmp_path):
    """The driver's JIT cache (simulated on the CPU: precompile/cuda_jit.py) gains the forward's
    entries during the first call and the backward's after it, once the package is out. The
    package goes out again at exit with both; a fresh machine with the same driver finds them
    in its own cache after the first call's load, and one with another driver finds none but
    loads the rest of the package."""
    from megacache import _core

    code = copy_cases(tmp_path)
    store = f"file://{tmp_path / 'store'}"
    first = run(
        "cuda_jit.py",
        store,
        tmp_path / "jit1",
        "570.1",
        "record",
        tmp_path / "a.pt",
        cwd=code,
        cache_dir=tmp_path / "c1",
    )
    assert first["automatic"]["published"] == 1  # as the backward compiled; once more at exit
    packages = [
        _core.Package.from_bytes(_core.Store(store).get(name))
        for name, _, _ in _core.Store(store).list()
        if name.startswith("precompile-")
    ]
    assert [package.cuda_jit_paths for package in packages] == [["1/a/0f1", "2/b/0b2"]]
    assert dict(packages[0].fingerprint)["cuda_driver"] == "570.1"

    same = run(
        "cuda_jit.py",
        store,
        tmp_path / "jit2",
        "570.1",
        "load",
        tmp_path / "b.pt",
        cwd=code,
        cache_dir=tmp_path / "c2",
    )
    assert same["automatic"]["hits"] == 1 and same["automatic"]["published"] == 0
    assert same["after_first_call"] == ["1/a/0f1", "2/b/0b2"]
    assert (tmp_path / "jit2/2/b/0b2").read_text() == "the driver's build 2/b/0b2"
    other = run(
        "cuda_jit.py",
        store,
        tmp_path / "jit3",
        "580.2",
        "load",
        tmp_path / "c.pt",
        cwd=code,
        cache_dir=tmp_path / "c3",
    )
    assert other["automatic"]["hits"] == 1 and other["after_first_call"] == []
    assert torch.equal(torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt"))
    assert torch.equal(torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "c.pt"))


def test_a_function_that_compiled_twice_starts_warm_for_both(tmp_path):
    """Two batch sizes: the function compiles twice and publishes after each compile. The
    package must carry both compiles' artifacts (before the fix, its Mega-Cache payload held
    two groups of each type and the loader kept only the last), so the next process compiles
    neither graph."""
    code = copy_cases(tmp_path)
    store = f"file://{tmp_path / 'store'}"
    first = run(
        "automatic.py", store, tmp_path / "a.pt", "lengths", cwd=code, cache_dir=tmp_path / "c1"
    )
    assert first["automatic"]["published"] == 2 and first["inductor"]["fxgraph_cache_miss"] == 2
    second = run(
        "automatic.py", store, tmp_path / "b.pt", "lengths", cwd=code, cache_dir=tmp_path / "c2"
    )
    assert "fxgraph_cache_miss" not in second["inductor"], second
    assert second["automatic"]["hits"] == 1 and second["automatic"]["published"] == 0, second
    assert torch.equal(torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt"))

    # Both graphs' FX cache entries came with the package: a process whose guards miss (a
    # new torch, another input) still compiles neither graph.
    def fx_graphs(cache_dir):
        return sorted(p.name for p in (cache_dir / "fxgraph").glob("*/*"))

    assert len(fx_graphs(tmp_path / "c1")) == 2
    assert fx_graphs(tmp_path / "c2") == fx_graphs(tmp_path / "c1")


def test_automatic_mode_refuses_a_corrupt_stored_package_and_compiles(tmp_path):
    """A damaged store entry is a logged miss: the process compiles and replaces it."""
    import megacache

    code = copy_cases(tmp_path)
    store = f"file://{tmp_path / 'store'}"
    first = run("automatic.py", store, tmp_path / "a.pt", cwd=code, cache_dir=tmp_path / "c1")
    assert first["automatic"]["published"] == 1
    opened = megacache.open_store(store)
    [(name, _, _)] = [e for e in opened.list() if e[0].startswith("precompile-MLP.forward-")]
    data = bytearray(opened.get(name))
    data[len(data) // 2] ^= 0xFF
    opened.put(name, bytes(data))

    second = run("automatic.py", store, tmp_path / "b.pt", cwd=code, cache_dir=tmp_path / "c2")
    assert second["automatic"]["refused"] == 1 and second["automatic"]["published"] == 1
    assert second["dynamo_cache"].get("dynamo_cache_error") == 1
    third = run("automatic.py", store, tmp_path / "c.pt", cwd=code, cache_dir=tmp_path / "c3")
    assert third["automatic"]["hits"] == 1
    assert torch.equal(torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "c.pt"))


def test_standalone_compile_files_are_torchs_own(tmp_path):
    """Our binary file equals torch's byte for byte; torch loads ours and we load torch's, in
    a fresh process with an empty cache dir, without compiling."""
    run("standalone.py", "save", tmp_path, cwd=tmp_path, cache_dir=tmp_path / "c1")
    assert (tmp_path / "ours.bin").read_bytes() == (tmp_path / "torch.bin").read_bytes()
    report = run("standalone.py", "load", tmp_path, cwd=tmp_path, cache_dir=tmp_path / "c2")
    assert report == {
        "torch_loads_ours": True,
        "we_load_torchs": True,
        "unpacked": True,
        "fx_miss": 0,
    }


def test_standalone_file_from_another_torch_build_is_refused(tmp_path):
    import megacache
    from megacache import _core

    data = bytearray(
        (Path(__file__).parent.parent / "data" / "standalone_cpu_torch2.13.bin").read_bytes()
    )
    kind, torch_key, aot_key, blob = _core.standalone_parts(bytes(data))
    other = _core.standalone_file(bytes(32), aot_key, blob)
    (tmp_path / "other.bin").write_bytes(other)
    with pytest.raises(megacache.PackageMismatchError, match="saved by another torch build"):
        megacache.load_standalone(tmp_path / "other.bin")


@pytest.fixture(scope="module")
def published_mlp(tmp_path_factory):
    """A store holding the MLP's package, and the cold result to compare with."""
    root = tmp_path_factory.mktemp("published")
    code = copy_cases(root)
    store = f"file://{root / 'store'}"
    cold = run("faults.py", "none", store, root / "cold.pt", cwd=code, cache_dir=root / "cache")
    assert cold["automatic"]["published"] == 1
    return code, root


@pytest.mark.parametrize("stage", ["unpickle", "initialize", "install", "first_call"])
def test_a_failing_load_step_compiles_as_if_there_were_no_package(published_mlp, stage, tmp_path):
    """Each step of the load path, made to fail: the process ends up as without a package
    (nothing of the package's left in the module, no Inductor compile thanks to the
    package's Mega-Cache artifacts, the same result), counts the stage and replaces the
    package."""
    code, root = published_mlp
    store = root / f"store-{stage}"
    shutil.copytree(root / "store", store)
    report = run(
        "faults.py",
        stage,
        f"file://{store}",
        tmp_path / "out.pt",
        cwd=code,
        cache_dir=tmp_path / "cache",
    )
    stats = report["automatic"]
    assert stats["refused"] == 1 and stats[f"refused_{stage}"] == 1, stats
    assert stats["hits"] == 0 and stats["published"] == 1, stats
    assert "fxgraph_cache_miss" not in report["inductor"], report["inductor"]
    assert torch.equal(torch.load(tmp_path / "out.pt"), torch.load(root / "cold.pt"))
    assert report["packaged_names"] and report["packaged_names_left"] == [], report

    again = run(
        "faults.py",
        "none",
        f"file://{store}",
        tmp_path / "again.pt",
        cwd=code,
        cache_dir=tmp_path / "cache-again",
    )
    assert again["automatic"]["hits"] == 1 and again["automatic"]["refused"] == 0, again


def test_a_load_builds_the_packages_guards_once(published_mlp, tmp_path):
    """torch builds a frame's guards twice while caching_precompile is on, once only to drop
    the kinds a package cannot keep. A package's guards went through that filter when they
    were recorded, so its install builds them once."""
    code, root = published_mlp
    report = run(
        "faults.py",
        "none",
        f"file://{root / 'store'}",
        tmp_path / "out.pt",
        cwd=code,
        cache_dir=tmp_path / "cache",
    )
    assert report["automatic"]["hits"] == 1, report["automatic"]
    assert report["guard_builds"] == 1, report
    assert torch.equal(torch.load(tmp_path / "out.pt"), torch.load(root / "cold.pt"))


def test_a_frame_torch_cannot_record_compiles_as_plain_torch_would(published_mlp, tmp_path):
    """Recording for the package fails in the producing process: the function still compiles
    and runs; its package carries the frame as bypassed, so the next process traces it again
    and takes its graph from torch's caches instead of compiling: AOTAutograd's cache (where
    torch 2.11 hits) or the FX graph cache behind it (torch 2.13 and later)."""
    code, root = published_mlp
    store = f"file://{tmp_path / 'store'}"
    first = run(
        "faults.py",
        "record",
        store,
        tmp_path / "first.pt",
        cwd=code,
        cache_dir=tmp_path / "cache-first",
    )
    assert first["automatic"]["published"] == 1, first
    assert torch.equal(torch.load(tmp_path / "first.pt"), torch.load(root / "cold.pt"))
    second = run(
        "faults.py",
        "none",
        store,
        tmp_path / "second.pt",
        cwd=code,
        cache_dir=tmp_path / "cache-second",
    )
    cache_hits = second["inductor"].get("fxgraph_cache_hit", 0) + second["aot_autograd"].get(
        "autograd_cache_hit", 0
    )
    assert cache_hits == 1, second
    assert "fxgraph_cache_miss" not in second["inductor"], second
    assert torch.equal(torch.load(tmp_path / "second.pt"), torch.load(root / "cold.pt"))


def test_the_callers_own_error_on_the_first_call_reaches_the_caller(published_mlp, tmp_path):
    code, root = published_mlp
    report = run(
        "faults.py",
        "user_error",
        f"file://{root / 'store'}",
        tmp_path / "out.pt",
        cwd=code,
        cache_dir=tmp_path / "cache",
    )
    assert report["user_error_reached"] is True
    assert report["automatic"]["refused"] == 0, report["automatic"]
    assert torch.equal(torch.load(tmp_path / "out.pt"), torch.load(root / "cold.pt"))


def test_the_graphs_inside_a_stored_packages_backends_are_found(published_mlp):
    """megacache reads the compiled graphs inside torch's backends: to move them to another GPU
    (megacache.torch.devices) and to see whether they call cuBLAS (megacache.torch.warm_up).
    torch 2.13 and later wrap them one level deeper than torch 2.11."""
    import pickle

    from megacache import _core
    from megacache.torch import devices, warm_up

    _, root = published_mlp
    store = _core.Store(f"file://{root / 'store'}")
    [name] = [name for name, _, _ in store.list() if name.startswith("precompile-")]
    package = _core.Package.from_bytes(store.get(name), "")
    backends = [
        pickle.loads(pickled)
        for key in package.keys()
        for pickled in package.function(key)["backends"].values()
    ]
    graphs = [graph for backend in backends for graph in devices.graphs(backend)]
    assert graphs and all(devices.wrapper_source(graph) for graph in graphs), backends
    sources = devices.wrapper_sources(backends)
    # the MLP's Linear layers: extern mm
    assert all(_core.calls_cublas(source) for source in sources)
    # ...whose products the warm-up runs ahead: x (4, 16) by fc1's weight (32, 16) transposed,
    # then (4, 32) by fc2's (8, 32), each as torch's wrapper lays them out, once.
    products = warm_up.matrix_products(sources)
    shapes = [
        (p.op, p.dtype, p.operands[-2].sizes, p.operands[-1].sizes, p.out.sizes) for p in products
    ]
    assert [shape[2:] for shape in shapes] == [
        ([4, 16], [16, 32], [4, 32]),
        ([4, 32], [32, 8], [4, 8]),
    ], shapes
    assert all(op in ("mm", "addmm") and dtype == "float32" for op, dtype, *_ in shapes), shapes
    assert products[0].operands[-1].strides == [1, 16]  # the weight, read transposed
    # A later package's helper runs only the products no helper has run yet.
    assert warm_up.matrix_products(sources, products[:1]) == products[1:]
    assert warm_up.matrix_products(sources, products) == []


TAKE_BACKENDS = r"""
import json, sys
import torch
import megacache
from megacache import _core
from torch._dynamo.precompile_context import PrecompileContext

def f(x):
    return torch.sin(x) * 3 + 1

compiled = megacache.compile(f)
compiled(torch.arange(8.0))
# What torch's own PrecompileSession does with the backends it packages itself.
taken = [key for key in list(PrecompileContext._backend_artifacts_by_key)
         if PrecompileContext.take_artifact(key) is not None]
compiled.save_package(sys.argv[1])
package = _core.Package.read(sys.argv[1], "")
print(json.dumps({"taken": taken, "bypassed": [list(b) for b in package.bypassed()]}))
"""


@pytest.mark.skipif(
    not hasattr(PrecompileContext, "take_artifact"),
    reason="PrecompileContext.take_artifact is torch 2.15's",
)
def test_a_backend_torch_takes_for_itself_stays_in_the_package(tmp_path):
    """torch 2.15's PrecompileSession pops backends from PrecompileContext; before megacache
    copied them as they were taken, the package marked that frame bypassed."""
    environment = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, "-c", TAKE_BACKENDS, str(tmp_path / "f.mcpkg")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["taken"], "torch recorded no backend to take"
    assert report["bypassed"] == []
