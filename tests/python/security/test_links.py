"""Links planted beneath a cache dir, a store root or an unpacked package by someone who can
write there: megacache refuses them (or treats them as a miss) and changes nothing outside."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hostile import DATA, Outside, cli, make_blob

from megacache import _core

INDUCTOR_KEY = "fabcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrst"
AOT_KEY = "aabcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrst"
PRECOMPILE_KEY = "pabcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrst"
AUTOTUNE_KEY = "5g/3a561713b017c6d74d222c72c4efe9805b70d25797230d0732496b970f1e2641.best_config"

# Every directory populate creates for one artifact of each type (torch's layout,
# docs/torch-format.md), each a place a link could be planted.
LINK_POSITIONS = {
    "fxgraph": "fxgraph",
    "fxgraph shard": f"fxgraph/{INDUCTOR_KEY[1:3]}",
    "fxgraph key": f"fxgraph/{INDUCTOR_KEY[1:3]}/{INDUCTOR_KEY}",
    "aotautograd": "aotautograd",
    "aotautograd key": f"aotautograd/{AOT_KEY}",
    "dynamo": "dynamo",
    "dynamo key": f"dynamo/{PRECOMPILE_KEY}",
    "autotune subdir": "5g",
}


@pytest.fixture
def outside(tmp_path):
    return Outside(tmp_path / "outside")


def every_type_blob() -> bytes:
    return make_blob(
        [
            ("inductor", [(INDUCTOR_KEY, b"an inductor entry")]),
            ("aot_autograd", [(AOT_KEY, b"an aot entry")]),
            ("precompile", [(PRECOMPILE_KEY, b"a dynamo entry")]),
            ("autotune", [(AUTOTUNE_KEY, b'{"best": 1}')]),
        ]
    )


def plant(root: Path, position: str, target: Path) -> None:
    link = root / position
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)


def test_the_blob_populates_without_links(tmp_path):
    # The control: the same blob with no link writes one file per artifact.
    cache = tmp_path / "cache"
    _core.load_into(every_type_blob(), str(cache))
    written = sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())
    assert len(written) == 4
    for position in LINK_POSITIONS.values():
        assert (cache / position).is_dir(), position


@pytest.mark.parametrize("position", LINK_POSITIONS, ids=list(LINK_POSITIONS))
def test_populate_refuses_a_linked_directory(tmp_path, outside, position):
    cache = tmp_path / "cache"
    plant(cache, LINK_POSITIONS[position], outside.path)
    blob = tmp_path / "blob.bin"
    blob.write_bytes(every_type_blob())

    with pytest.raises(
        _core.InvalidInputError, match="symbolic link .*" + LINK_POSITIONS[position]
    ):
        _core.load_into(blob.read_bytes(), str(cache))
    result = cli("populate", str(blob), "--cache-dir", str(cache))
    assert result.returncode == 1, result.stderr
    assert "symbolic link" in result.stderr and LINK_POSITIONS[position] in result.stderr
    assert outside.unchanged()


def test_populate_replaces_a_linked_file_instead_of_writing_through_it(tmp_path, outside):
    cache = tmp_path / "cache"
    entry = cache / "dynamo" / PRECOMPILE_KEY / "entry"
    entry.parent.mkdir(parents=True)
    entry.symlink_to(outside.path / "victim")
    _core.load_into(every_type_blob(), str(cache))
    assert not entry.is_symlink() and entry.read_bytes() == b"a dynamo entry"
    assert outside.unchanged()


def test_package_populate_refuses_a_linked_kernel_dir(tmp_path, outside):
    package = _core.Package.from_bytes((DATA / "package_v1.mcpkg").read_bytes())
    [kernel] = package.kernel_paths
    cache = tmp_path / "cache"
    plant(cache, kernel.split("/")[0], outside.path)
    with pytest.raises(_core.InvalidInputError, match="symbolic link"):
        package.populate(str(cache))
    assert outside.unchanged()


# --- the file store ------------------------------------------------------------------------


def store_with_entry(tmp_path) -> tuple[Path, str]:
    root = tmp_path / "store"
    url = f"file://{root}"
    _core.Store(url).put("entry", b"value")
    return root, url


@pytest.mark.parametrize("position", ["v1/refs", "v1/locks", "v1/objects"])
def test_the_file_store_never_writes_through_a_linked_directory(tmp_path, outside, position):
    root, url = store_with_entry(tmp_path)
    target = root / position
    if target.exists():
        os.rename(target, tmp_path / "moved-aside")
    plant(root, position, outside.path)
    store = _core.Store(url)
    if position == "v1/locks":
        # Values and refs are untouched; only single flight is off (a claim is refused).
        store.put("other", b"new value")
        assert store.get("entry") == b"value"
        assert store.get_or_claim("third", 0.1) == (None, None)
    else:
        with pytest.raises(_core.InvalidInputError, match="symbolic link"):
            store.put("other", b"new value")
        assert store.get("entry") is None
        value, claim = store.get_or_claim("third", 0.1)
        assert value is None and claim is not None
        claim.release()
    store.gc(0)
    assert outside.unchanged()


def test_the_file_store_refuses_a_linked_shard(tmp_path, outside):
    root, url = store_with_entry(tmp_path)
    store = _core.Store(url)
    [shard] = [p for p in (root / "v1" / "objects").iterdir()]
    os.rename(shard, tmp_path / "moved-aside")
    plant(root, f"v1/objects/{shard.name}", outside.path)
    assert store.get("entry") is None
    with pytest.raises(_core.InvalidInputError, match="symbolic link"):
        store.put("entry", b"value")
    assert outside.unchanged()


def test_linked_stats_and_locks_are_refused(tmp_path, outside):
    root, url = store_with_entry(tmp_path)
    store = _core.Store(url)
    before = dict(store.stats())
    (root / "v1" / "stats").unlink()
    (root / "v1" / "stats").symlink_to(outside.path / "victim")
    (root / "v1" / "locks").mkdir(exist_ok=True)
    (root / "v1" / "locks" / "planted").symlink_to(outside.path / "created-by-lock")
    store.put("again", b"value")  # counted nowhere, and nothing outside rewritten
    assert store.get("again") == b"value"
    assert store.get_or_claim("planted", 0.1) == (None, None)
    assert not (outside.path / "created-by-lock").exists()
    assert outside.unchanged()
    assert before["puts"] == 1


def test_gc_never_deletes_through_a_linked_shard(tmp_path, outside):
    root, url = store_with_entry(tmp_path)
    plant(root, "v1/objects/zz", outside.path)
    # The link itself is old too: only its target's files are what an attacker wants gone.
    result = cli("gc", "--max-size", "0", "--store", url)
    assert result.returncode == 0, result.stderr
    assert outside.unchanged()
    assert (root / "v1" / "objects" / "zz").is_symlink()


# --- unpacked packages ---------------------------------------------------------------------


def unpacked(tmp_path) -> tuple[Path, str]:
    package = _core.Package.from_bytes((DATA / "package_v1.mcpkg").read_bytes())
    directory = tmp_path / "pkg"
    package.write_unpacked(str(directory))
    [kernel] = package.kernel_paths
    return directory, kernel


def test_an_unpacked_kernel_linked_outside_is_refused(tmp_path, outside):
    directory, kernel = unpacked(tmp_path)
    path = directory / "kernels" / kernel
    path.unlink()
    path.symlink_to(outside.path / "victim")
    with pytest.raises(_core.InvalidInputError, match="symbolic link"):
        _core.Package.read(str(directory))
    assert outside.unchanged()


def test_an_unpacked_kernel_dir_linked_outside_is_refused(tmp_path, outside):
    directory, kernel = unpacked(tmp_path)
    shard = directory / "kernels" / kernel.split("/")[0]
    (outside.path / kernel.split("/")[1]).write_bytes((shard / kernel.split("/")[1]).read_bytes())
    outside.before = outside.snapshot()
    for child in shard.iterdir():
        child.unlink()
    shard.rmdir()
    shard.symlink_to(outside.path, target_is_directory=True)
    with pytest.raises(_core.InvalidInputError, match="symbolic link"):
        _core.Package.read(str(directory))
    assert outside.unchanged()


def test_an_unpacked_manifest_linked_outside_is_refused(tmp_path, outside):
    directory, _ = unpacked(tmp_path)
    (outside.path / "manifest.json").write_bytes((directory / "manifest.json").read_bytes())
    outside.before = outside.snapshot()
    (directory / "manifest.json").unlink()
    (directory / "manifest.json").symlink_to(outside.path / "manifest.json")
    with pytest.raises(_core.InvalidInputError, match="symbolic link"):
        _core.Package.read(str(directory))
