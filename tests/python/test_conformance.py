"""Switching megacache on changes nothing but speed. Each scenario of conformance/steps.py
runs in fresh processes under plain torch and with megacache.enable() at its defaults, and
both must give the same outcome; only compile counts (the "informational" field) may differ.
The drop-ins are compared with torch's own functions in this process."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.compiler._cache import CacheArtifact, CacheArtifactFactory, CacheArtifactManager

import megacache

STEPS = Path(__file__).parent / "conformance" / "steps.py"
MODES = ("plain", "megacache")


def run_steps(mode, scenario, arg="", *, root, store=None, timeout=300):
    """One scenario in a fresh interpreter. A run that waits on a claim for megacache's
    default 600 s fails here by timing out."""
    env = dict(
        os.environ,
        TORCHINDUCTOR_CACHE_DIR=str(root / f"torch-{mode}"),
        MEGACACHE_DIR=str(store or root / f"store-{mode}"),
    )
    env.pop("MEGACACHE_STORE", None)
    proc = subprocess.run(
        [sys.executable, str(STEPS), mode, scenario, *([arg] if arg else [])],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{mode} {scenario} {arg} failed:\n{proc.stderr[-5000:]}"
    # Nothing may be printed at exit either (the final publish never fails the job).
    assert "Traceback" not in proc.stderr, proc.stderr[-5000:]
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    outcome.pop("informational")
    return outcome


def assert_same_outcome(scenario, arg, root):
    plain, with_megacache = (run_steps(mode, scenario, arg, root=root) for mode in MODES)
    assert with_megacache == plain


# Every kind of backend users pass, with the options that change what Dynamo records.
SECOND_WRAP = [
    "inductor",
    "aot_eager",
    "eager",
    "custom",
    "inductor,fullgraph",
    "inductor,dynamic=True",
    "inductor,dynamic=False",
    "inductor,dynamic=None",
    "aot_eager,dynamic=True",
    "eager,graphbreak",
    "custom,graphbreak",
]


@pytest.mark.parametrize("backend", SECOND_WRAP)
def test_a_second_wrap_of_the_same_function(backend, tmp_path):
    assert_same_outcome("second_wrap", backend, tmp_path)


def test_a_claim_ends_with_the_compile_on_every_path(tmp_path):
    outcome = run_steps("megacache", "claims", root=tmp_path)
    assert outcome == {"recorded_nothing": True, "raised": True, "never_called": True}


def test_a_wrap_installs_only_packages_compiled_for_its_arguments(tmp_path):
    outcome = run_steps("megacache", "variants", root=tmp_path)
    none = {"hits": 0, "guard_misses": 0, "refused": 0}
    assert outcome["static_stats"] == none
    assert outcome["dynamic_stats"] == none  # the static package is not for dynamic=True
    # The static package again: found and installed (after torch._dynamo.reset() in the same
    # process its guards may still send Dynamo to trace).
    again = outcome["static_again_stats"]
    assert again["hits"] + again["guard_misses"] == 1 and again["refused"] == 0
    assert outcome["static"] == outcome["dynamic"] == outcome["static_again"]


def test_a_wait_lasts_a_few_times_the_measured_compile(tmp_path):
    outcome = run_steps("megacache", "deadline", root=tmp_path)
    from megacache.torch.precompile import _AutomaticMode as mode

    deadline = max(mode.MIN_WAIT_SECONDS, mode.WAIT_FACTOR * outcome["measured_s"])
    assert deadline < 600  # enable()'s wait_seconds, the bound when nothing was measured
    assert deadline <= outcome["waited_s"] < deadline + 30


@pytest.mark.parametrize("load", ["load", "load_and_install"])
def test_entries_torch_saved_itself_are_found(load, tmp_path):
    for mode in MODES:
        # The loading process has an empty megacache store of its own: what it finds is torch's.
        run_steps(
            mode, "torch_saved_entry", "save", root=tmp_path, store=tmp_path / f"saver-{mode}"
        )
    assert_same_outcome("torch_saved_entry", load, tmp_path)
    assert "error" not in run_steps("megacache", "torch_saved_entry", load, root=tmp_path)


def test_fresh_cache_compiles_cold(tmp_path):
    assert_same_outcome("fresh_cache", "", tmp_path)


def test_a_function_wrapped_before_fresh_cache_compiles_as_torch_inside_it(tmp_path):
    assert_same_outcome("wrapped_before_fresh_cache", "", tmp_path)


def test_torch_state_outside_megacache_compiles_is_torch_own(tmp_path):
    assert_same_outcome("torch_state", "", tmp_path)


def test_torch_compile_package_driven_directly(tmp_path):
    assert_same_outcome("own_compile_package", "", tmp_path)


def test_training_variants_of_one_function(tmp_path):
    assert_same_outcome("training_variants", "", tmp_path)


# --- the drop-ins, against torch's own functions ------------------------------------------------


def torch_manager_state():
    manager = CacheArtifactManager
    return (
        manager.need_serialize(),
        dict(manager._cache_info.artifacts),
        manager._serializer.to_bytes(),
    )


def test_save_leaves_torch_manager_as_torch_save_does(fresh_torch_manager):
    states = {}
    for save in (torch.compiler.save_cache_artifacts, megacache.save_cache_artifacts):
        fresh_torch_manager.clear()
        fresh_torch_manager.record_artifact("inductor", "fa", b"graph-a")
        save()
        after_save = torch_manager_state()
        fresh_torch_manager.record_artifact("inductor", "fb", b"graph-b")
        states[save.__module__] = after_save, torch.compiler.save_cache_artifacts()
    assert states["megacache"] == states["torch.compiler"]
    assert states["megacache"][0][0] is False  # need_serialize()


class _Registered(CacheArtifact):
    """An artifact type registered through torch's public factory, as torch's own tests do."""

    populated = []

    def populate_cache(self):
        _Registered.populated.append((self.key, self.content))

    @staticmethod
    def type():
        return "megacache_conformance"


CacheArtifactFactory.register(_Registered)


def test_load_handles_registered_artifact_types_as_torch_does(
    fresh_torch_manager, tmp_path, monkeypatch
):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    fresh_torch_manager.record_artifact("megacache_conformance", "k1", b"custom bytes")
    fresh_torch_manager.record_artifact("aot_autograd", "aa", b"aot-a")
    blob, _ = torch.compiler.save_cache_artifacts()
    outcomes = {}
    for load in (torch.compiler.load_cache_artifacts, megacache.load_cache_artifacts):
        _Registered.populated.clear()
        info = load(blob)
        outcomes[load.__module__] = (
            dict(info.artifacts),
            info.megacache_conformance_artifacts,
            list(_Registered.populated),
        )
    assert outcomes["megacache"] == outcomes["torch.compiler"]
    assert outcomes["megacache"][2] == [("k1", b"custom bytes")]


def test_an_unregistered_type_is_refused_as_torch_refuses_it(caplog, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    from megacache import _core

    manager = _core.ArtifactManager()
    manager.record("inductor", "fa", b"graph-a")
    manager.record("never_registered", "k", b"x")
    blob = manager.serialize()
    with caplog.at_level(logging.WARNING):
        assert torch.compiler.load_cache_artifacts(blob) is None
        assert megacache.load_cache_artifacts(blob) is None
    assert "unknown artifact type 'never_registered'" in caplog.text
    assert "megacache_conformance" in caplog.text  # the registered types are named
    assert not any(tmp_path.iterdir())  # nothing written
