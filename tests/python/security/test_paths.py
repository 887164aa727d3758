"""A NUL would cut a path short at the system call, so that megacache would write somewhere the
caller never named; NUL and other control characters in paths and URLs are refused instead."""

from __future__ import annotations

import pytest
from hostile import DATA

import megacache
from megacache import _core


def test_pull_refuses_a_path_with_nul(tmp_path):
    store = f"file://{tmp_path / 'store'}"
    megacache.push(DATA / "bundle_v1_mlp.mcb", "n", store=store)
    with pytest.raises(megacache.InvalidInputError, match="NUL"):
        megacache.pull("n", f"{tmp_path}/o\x00x", store=store)
    assert not (tmp_path / "o").exists()
    assert megacache.pull("n", tmp_path / "o", store=store)


def test_load_refuses_a_cache_dir_with_nul(tmp_path):
    with pytest.raises(megacache.InvalidInputError, match="NUL"):
        megacache.load(DATA / "mega_mlp_infer.bin", cache_dir=f"{tmp_path}/c\x00x")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("character", ["\x00", "\n", "\r", "\x1b", "\x7f"])
def test_store_urls_refuse_control_characters(tmp_path, character):
    with pytest.raises(megacache.InvalidInputError, match="control character"):
        _core.Store(f"file://{tmp_path}/s{character}x")
    assert list(tmp_path.iterdir()) == []


def test_package_paths_refuse_nul(tmp_path):
    package = _core.Package.from_bytes((DATA / "package_v1.mcpkg").read_bytes())
    with pytest.raises(megacache.InvalidInputError, match="NUL"):
        package.write_unpacked(f"{tmp_path}/p\x00x")
    with pytest.raises(megacache.InvalidInputError, match="NUL"):
        _core.Package.read(f"{tmp_path}/p\x00x")
    assert list(tmp_path.iterdir()) == []
