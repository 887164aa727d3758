"""A torch newer than any megacache was tested on (docs/compatibility.md): automatic mode
checks the torch surfaces it relies on once, at enable(), and degrades instead of failing.
Each case removes or changes a surface in a fresh process, as such a torch would."""

from pathlib import Path

import pytest
import torch
from test_precompile import run

import megacache
from megacache.torch import surfaces

HERE = Path(__file__).parent / "precompile"


def test_this_torch_offers_every_surface():
    """The surface list matches every torch of the matrix: a wrong entry would degrade a
    torch that packages work on."""
    assert surfaces.level() == (surfaces.PACKAGE_LEVEL, ())


def test_a_surface_names_what_is_missing_or_different():
    assert surfaces.Surface("torch._dynamo.package", "CompilePackage.no_such_method").problem() == (
        "torch._dynamo.package.CompilePackage.no_such_method is missing"
    )
    assert (
        surfaces.Surface("torch._dynamo.no_such_module", "x")
        .problem()
        .startswith("torch._dynamo.no_such_module does not import (ModuleNotFoundError")
    )
    assert surfaces.Surface(
        "torch._dynamo.package", "CompilePackage.install", ("code",)
    ).problem() == ("torch._dynamo.package.CompilePackage.install takes (backends), not (code)")


def degraded(tmp_path, how, store, name):
    out = tmp_path / name
    out.mkdir()
    report = run(
        HERE / "degraded.py", how, store, out / "result.pt", cwd=HERE, cache_dir=out / "torch-cache"
    )
    report["result"] = torch.load(out / "result.pt")
    return report


@pytest.mark.parametrize(
    "how, surface",
    [
        ("missing", "torch._dynamo.guards._Missing is missing"),
        (
            "different",
            "torch._dynamo.package.CompilePackage.code_context takes (code_object), not (code)",
        ),
    ],
)
def test_a_missing_package_surface_runs_at_mega_cache_level(tmp_path, how, surface):
    """Before surfaces.py, enable() imported hooks.py, whose import of torch's _Missing raised
    ImportError into the job; a changed code_context broke every compile megacache recorded."""
    store = "file://" + str(tmp_path / "store")
    first = degraded(tmp_path, how, store, "first")
    assert first["matches_eager"]
    stats = first["automatic"]
    assert stats["level"] == "mega-cache" and stats["degraded_by"] == [surface]
    assert (stats["hits"], stats["misses"], stats["published"], stats["refused"]) == (0, 1, 1, 0)
    assert first["inductor"]["fxgraph_cache_miss"] >= 1
    # One warning, naming the surface, for two enable() calls.
    assert len(first["warnings"]) == 1 and surface in first["warnings"][0], first["warnings"]
    assert [
        name for name, *_ in megacache.open_store(store).list() if name.startswith("mega-cache-")
    ]

    second = degraded(tmp_path, how, store, "second")
    stats = second["automatic"]
    assert (stats["hits"], stats["misses"], stats["published"], stats["refused"]) == (1, 0, 0, 0)
    # The bundle served the compile: torch's FX graph cache hit, Inductor compiled nothing.
    assert second["inductor"].get("fxgraph_cache_hit", 0) >= 1
    assert second["inductor"].get("fxgraph_cache_miss", 0) == 0
    assert torch.equal(second["result"], first["result"])


def test_a_missing_mega_cache_surface_turns_automatic_mode_off(tmp_path):
    store_dir = tmp_path / "store"
    report = degraded(tmp_path, "mega_cache", "file://" + str(store_dir), "only")
    assert report["matches_eager"]
    surface = "torch.compiler._cache.CacheArtifactManager._serializer is missing"
    assert report["automatic"] == {"level": "off", "degraded_by": [surface]}
    assert len(report["warnings"]) == 1 and "automatic mode is off" in report["warnings"][0]
    assert surface in report["warnings"][0]
    assert not store_dir.exists()
