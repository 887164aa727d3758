"""The Python API without a compile: drop-in semantics, errors, files."""

import json
import logging
import subprocess
import sys

import pytest
from conftest import DATA, read_tree

import megacache
from megacache import _core


def blob_of(*artifacts):
    manager = _core.ArtifactManager()
    for artifact_type, key, content in artifacts:
        manager.record(artifact_type, key, content)
    return manager.serialize()


def test_import_does_not_import_torch():
    code = "import sys, megacache; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_verify_accepts_torch_fixtures():
    for name in ("mega_mlp_infer.bin", "mega_graphbreak.bin", "mega_dynamic.bin"):
        megacache.verify((DATA / name).read_bytes())


def test_verify_reports_corruption_with_offset():
    data = bytearray((DATA / "mega_mlp_infer.bin").read_bytes())
    data[1000] ^= 1
    with pytest.raises(megacache.CorruptionError, match="offset 0: crc32 mismatch"):
        megacache.verify(bytes(data))
    assert issubclass(megacache.CorruptionError, ValueError)


def test_every_error_of_megacaches_own_has_one_base_and_keeps_its_builtin_one():
    for error, builtin in (
        (megacache.CorruptionError, ValueError),
        (megacache.InvalidInputError, ValueError),
        (megacache.PackageMismatchError, RuntimeError),
        (megacache.UnsupportedTorchError, RuntimeError),
    ):
        assert issubclass(error, megacache.MegacacheError) and issubclass(error, builtin), error
    with pytest.raises(megacache.MegacacheError):
        megacache.verify(b"not a cache file")


def test_hostile_key_is_refused_and_nothing_is_written(tmp_path):
    blob = blob_of(("inductor", "fgood", b"x"), ("autotune", "../../escape.best_config", b"{}"))
    with pytest.raises(megacache.InvalidInputError, match=r"'\.\.' segment"):
        megacache.verify(blob)
    path = tmp_path / "hostile.bin"
    path.write_bytes(blob)
    with pytest.raises(megacache.InvalidInputError):
        megacache.load(path, cache_dir=str(tmp_path / "cache"))
    assert read_tree(tmp_path / "cache") == {}
    assert not (tmp_path.parent / "escape.best_config").exists()


def test_drop_in_load_returns_none_and_logs_on_bad_input(caplog, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="megacache"):
        assert megacache.load_cache_artifacts(b"too short") is None
        assert megacache.load_cache_artifacts(b"\0" * 4 + b"not a mega-cache blob") is None
    assert "only 9 bytes" in caplog.text
    assert "crc32 mismatch" in caplog.text
    assert read_tree(tmp_path) == {}


def test_drop_in_load_populates_torch_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    info = megacache.load_cache_artifacts((DATA / "mega_dynamic.bin").read_bytes())
    from torch.compiler._cache import CacheInfo

    assert isinstance(info, CacheInfo)
    assert len(info.inductor_artifacts) == 1 and len(info.aot_autograd_artifacts) == 1
    assert len(read_tree(tmp_path)) == 2


def test_load_of_aot_compiled_artifact_says_what_to_do(tmp_path):
    import zlib

    def field(raw):
        return len(raw).to_bytes(8, "big") + raw

    body = field(b"AOTCompiledArtifact") + field(b"k" * 32) + field(b"pickle")
    path = tmp_path / "aot.bin"
    path.write_bytes(zlib.crc32(body).to_bytes(4, "big") + body)
    with pytest.raises(megacache.InvalidInputError, match="AOTCompiledArtifact"):
        megacache.load(path, cache_dir=str(tmp_path / "cache"))


def test_incremental_save_matches_torch_batch_by_batch(fresh_torch_manager):
    import torch

    manager = fresh_torch_manager
    assert megacache.save_cache_artifacts() is None
    assert torch.compiler.save_cache_artifacts() is None

    manager.record_artifact("inductor", "fa", b"graph-a")
    manager.record_artifact("aot_autograd", "aa", b"aot-a")
    manager.record_artifact("inductor", "fa", b"graph-a")  # exact repeat: ignored by both
    first, first_info = megacache.save_cache_artifacts()
    assert first == torch.compiler.save_cache_artifacts()[0]
    assert first_info.artifacts == {"inductor": ["fa"], "aot_autograd": ["aa"]}

    manager.record_artifact("inductor", "fb", b"graph-b")
    manager.record_artifact("autotune", "ab/c.best_config", {"XBLOCK": 32})
    second, second_info = megacache.save_cache_artifacts()
    theirs = torch.compiler.save_cache_artifacts()[0]
    assert second_info.inductor_artifacts == ["fa", "fb"]

    # torch appends a second inductor group, and its own loader keeps only the last group of
    # each type: "fa" is lost. megacache's blob holds each type once, so torch's own loader
    # reads every artifact from it.
    def loaded_by_torch(blob):
        return {
            (kind, a.key)
            for kind, artifacts in manager.deserialize(blob).items()
            for a in artifacts
        }

    everything = {
        ("inductor", "fa"),
        ("inductor", "fb"),
        ("aot_autograd", "aa"),
        ("autotune", "ab/c.best_config"),
    }
    assert loaded_by_torch(second) == everything
    assert loaded_by_torch(theirs) == everything - {("inductor", "fa")}

    again, _ = megacache.save_cache_artifacts()
    assert again is second  # nothing new: no work, the same bytes object

    manager.clear()
    assert megacache.save_cache_artifacts() is None  # follows torch's clear()


def test_save_writes_a_bundle_that_load_reads(fresh_torch_manager, tmp_path):
    import torch

    fresh_torch_manager.record_artifact("inductor", "fsaved", b"pickled graph" * 100)
    info = megacache.save(tmp_path / "cache.mcb")
    assert info.inductor_artifacts == ["fsaved"]
    data = (tmp_path / "cache.mcb").read_bytes()
    assert data.startswith(b"\x89MCBNDL\n")
    assert len(data) < 1300 // 2  # compressed
    loaded = megacache.load(tmp_path / "cache.mcb", cache_dir=str(tmp_path / "cache"))
    assert loaded.inductor_artifacts == ["fsaved"]
    assert list(read_tree(tmp_path / "cache").values()) == [b"pickled graph" * 100]

    inspect = subprocess.run(
        ["megacache", "inspect", "--json", str(tmp_path / "cache.mcb")],
        capture_output=True,
        text=True,
        check=True,
    )
    fingerprint = json.loads(inspect.stdout)["bundle"]["fingerprint"]
    assert fingerprint["torch"] == torch.__version__
    assert fingerprint["python"] == sys.version.split()[0]
    assert len(fingerprint["torch_key"]) == 64


def test_signed_bundles_and_trusted_keys(fresh_torch_manager, tmp_path, monkeypatch):
    for name in ("signer", "stranger"):
        subprocess.run(
            ["megacache", "keygen", str(tmp_path / name)], check=True, capture_output=True
        )
    fresh_torch_manager.record_artifact("inductor", "fsigned", b"graph")
    megacache.save(tmp_path / "signed.mcb", sign_with=tmp_path / "signer")
    megacache.save(tmp_path / "plain.mcb")

    monkeypatch.setenv("MEGACACHE_TRUSTED_KEYS", str(tmp_path / "signer.pub"))
    megacache.load(tmp_path / "signed.mcb", cache_dir=str(tmp_path / "a"))
    with pytest.raises(megacache.InvalidInputError, match="unsigned"):
        megacache.load(tmp_path / "plain.mcb", cache_dir=str(tmp_path / "b"))
    monkeypatch.setenv("MEGACACHE_TRUSTED_KEYS", str(tmp_path / "stranger.pub"))
    with pytest.raises(megacache.InvalidInputError, match="not among the trusted keys"):
        megacache.load(tmp_path / "signed.mcb", cache_dir=str(tmp_path / "c"))
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_loading_a_bundle_from_another_environment_warns(tmp_path, caplog):
    bundle = _core.bundle_of(
        (DATA / "mega_dynamic.bin").read_bytes(), [("torch", "1.0.0+elsewhere")]
    )
    (tmp_path / "old.mcb").write_bytes(bundle)
    with caplog.at_level(logging.WARNING, logger="megacache"):
        info = megacache.load(tmp_path / "old.mcb", cache_dir=str(tmp_path / "cache"))
    assert len(info.inductor_artifacts) == 1
    assert "torch 1.0.0+elsewhere here" in caplog.text


def test_io_errors_are_oserrors(fresh_torch_manager, tmp_path):
    fresh_torch_manager.record_artifact("inductor", "fsaved", b"pickled graph")
    with pytest.raises(OSError, match="missing"):
        megacache.save(tmp_path / "missing" / "cache.bin")
    blocked = tmp_path / "not-a-dir"
    blocked.write_bytes(b"")
    with pytest.raises(OSError, match="cannot create directory"):
        megacache.load(DATA / "mega_dynamic.bin", cache_dir=str(blocked))


def test_drop_in_load_turns_a_disk_error_into_a_logged_miss(caplog, tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-dir"
    blocked.write_bytes(b"")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(blocked / "cache"))
    with caplog.at_level(logging.WARNING, logger="megacache"):
        assert megacache.load_cache_artifacts((DATA / "mega_dynamic.bin").read_bytes()) is None
    assert "Not a directory" in caplog.text


def test_cli_exit_codes(tmp_path):
    assert subprocess.run(["megacache", "--version"], capture_output=True).returncode == 0
    assert subprocess.run(["megacache", "inspect"], capture_output=True).returncode == 2
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\0" * 40)
    result = subprocess.run(["megacache", "verify", str(bad)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "megacache:" in result.stderr


def test_push_and_pull_through_stores(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGACACHE_STORE", f"file://{tmp_path / 'store'}")
    assert megacache.push(DATA / "bundle_v1_mlp.mcb", "mlp") == "mlp"
    assert megacache.pull("mlp", tmp_path / "back.mcb")
    assert (tmp_path / "back.mcb").read_bytes() == (DATA / "bundle_v1_mlp.mcb").read_bytes()
    assert not megacache.pull("missing", tmp_path / "never.mcb")
    assert not (tmp_path / "never.mcb").exists()
    store = megacache.open_store()
    assert [entry[0] for entry in store.list()] == ["mlp"]
    assert dict(store.stats())["hits"] == 1
    with pytest.raises(megacache.CorruptionError):
        megacache.push(DATA.parent / "python" / "conftest.py", "junk")
    with pytest.raises(megacache.InvalidInputError, match="unsupported store URL"):
        megacache.open_store("ftp://nowhere")


def test_tiered_store_over_redis_backfills_the_local_store(tmp_path, redis_url):
    megacache.push(DATA / "bundle_v1_mlp.mcb", "mlp", store=redis_url)
    tiered = f"file://{tmp_path / 'local'},{redis_url}"
    assert megacache.pull("mlp", tmp_path / "a.mcb", store=tiered)
    local = megacache.open_store(f"file://{tmp_path / 'local'}")
    assert local.get("mlp") == (DATA / "bundle_v1_mlp.mcb").read_bytes()
    assert _core.mega_cache_of(local.get("mlp")) == (DATA / "mega_mlp_infer.bin").read_bytes()
