"""torch.compiler.precompile pairs (torch 2.14's (python_code, cache), 2.15's capture files)
through megacache: saved as one checked, signed file, moved through a store, loaded in a
fresh process by torch's own loader, and refused whole when tampered with, before any of
the code runs. docs/aot-format.md."""

import hashlib
import io
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from test_precompile import run

import megacache

HERE = Path(__file__).parent / "precompile"

pytestmark = pytest.mark.skipif(
    not hasattr(getattr(torch.compiler, "precompile", None), "load"),
    reason=f"torch {torch.__version__} has no torch.compiler.precompile (2.14 and later)",
)


def cli(*args, env=None):
    return subprocess.run(
        ["megacache", *map(str, args)],
        capture_output=True,
        text=True,
        env=dict(os.environ, **(env or {})),
        timeout=120,
    )


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    """One capture, signed: compiling costs the most, so the tests share it."""
    root = tmp_path_factory.mktemp("aot")
    key = root / "key"
    made = cli("keygen", key)
    assert made.returncode == 0, made.stderr
    out = root / "capture"
    out.mkdir()
    run(HERE / "aot.py", "capture", out, key, cwd=HERE, cache_dir=root / "capture-cache")
    return out, key


def load_in_fresh_process(tmp_path, store, name, captured_dir, trusted=None):
    out = tmp_path / "load"
    out.mkdir(exist_ok=True)
    for name_ in ("inputs.pt",):
        (out / name_).write_bytes((captured_dir / name_).read_bytes())
    env = {"MEGACACHE_TRUSTED_KEYS": str(trusted)} if trusted else {"MEGACACHE_TRUSTED_KEYS": ""}
    report = run(
        HERE / "aot.py",
        "load",
        store,
        name,
        out,
        cwd=HERE,
        cache_dir=tmp_path / "load-cache",
        env=env,
    )
    return report, out


def test_a_pair_round_trips_through_a_store(captured, tmp_path):
    out, key = captured
    store = "file://" + str(tmp_path / "store")
    megacache.push(out / "pair.mcb", "pair", store=store)
    report, load_dir = load_in_fresh_process(tmp_path, store, "pair", out, trusted=f"{key}.pub")
    assert report == {"loaded": True}
    assert torch.equal(torch.load(load_dir / "result.pt"), torch.load(out / "expected.pt"))


def evil_pair(captured_dir, tmp_path, sentinel):
    """What someone who can write the store could put there: torch's code with one line of
    their own in front, and a cache whose code_hash matches it, so torch's own load takes it."""
    evil = f"open({str(sentinel)!r}, 'w').write('ran')\n" + (captured_dir / "torch.py").read_text()
    envelope = torch.load(
        io.BytesIO((captured_dir / "torch.py.cache").read_bytes()), weights_only=True
    )
    envelope["code_hash"] = hashlib.sha256(evil.encode()).hexdigest()
    buffer = io.BytesIO()
    torch.save(envelope, buffer)
    megacache.save_precompiled(tmp_path / "evil.mcb", evil, buffer.getvalue())
    return tmp_path / "evil.mcb"


def test_an_unsigned_pair_in_the_store_never_runs_under_trusted_keys(captured, tmp_path):
    out, key = captured
    sentinel = tmp_path / "sentinel"
    store = "file://" + str(tmp_path / "store")
    megacache.open_store(store).put("pair", evil_pair(out, tmp_path, sentinel).read_bytes())
    report, _ = load_in_fresh_process(tmp_path, store, "pair", out, trusted=f"{key}.pub")
    assert report["refused"].startswith("InvalidInputError") and "unsigned" in report["refused"], (
        report
    )
    assert not sentinel.exists()
    # Without trusted keys the same entry runs (docs/security.md): the sentinel is real.
    report, _ = load_in_fresh_process(tmp_path, store, "pair", out)
    assert report == {"loaded": True} and sentinel.read_text() == "ran"


def test_a_damaged_pair_never_runs(captured, tmp_path):
    out, _ = captured
    data = bytearray((out / "pair.mcb").read_bytes())
    data[len(data) // 2] ^= 0x01  # in the payloads: the signature, which covers them, fails first
    store = "file://" + str(tmp_path / "store")
    megacache.open_store(store).put("pair", bytes(data))
    report, load_dir = load_in_fresh_process(tmp_path, store, "pair", out)
    assert "signature does not verify" in report["refused"], report
    assert not (load_dir / "result.pt").exists()


def test_halves_of_different_calls_are_refused_at_save(captured, tmp_path):
    out, _ = captured
    (tmp_path / "other.py").write_text((out / "torch.py").read_text() + "\n# edited\n")
    with pytest.raises(megacache.InvalidInputError, match="different precompile calls"):
        megacache.save_precompiled(
            tmp_path / "p.mcb",
            artifact_path=tmp_path / "other.py",
            cache_path=out / "torch.py.cache",
        )
    assert not (tmp_path / "p.mcb").exists()


@pytest.mark.parametrize(
    "halves",
    [
        {},
        {"python_code": "x = 1"},
        {"artifact_path": "a.py"},
        {"python_code": "x = 1", "cache_path": "a.py.cache"},
        {"python_code": "x = 1", "cache": b"", "artifact_path": "a.py", "cache_path": "a.cache"},
    ],
)
def test_a_pair_needs_exactly_one_kind_of_halves(halves, tmp_path):
    with pytest.raises(ValueError, match="give either python_code and cache"):
        megacache.save_precompiled(tmp_path / "p.mcb", **halves)
    assert not (tmp_path / "p.mcb").exists()


def test_the_cli_inspects_verifies_and_writes_torchs_files(captured, tmp_path):
    out, key = captured
    inspected = cli("inspect", "--json", out / "pair.mcb")
    assert inspected.returncode == 0, inspected.stderr
    report = json.loads(inspected.stdout)
    assert report["format"] == "megacache-aot-pair"
    assert (
        report["aot_pair"]["python_code_sha256"] == report["aot_pair"]["cache_fields"]["code_hash"]
    )
    assert report["bundle"]["signature"]["status"] == "valid"
    verified = cli("verify", out / "pair.mcb", env={"MEGACACHE_TRUSTED_KEYS": f"{key}.pub"})
    assert verified.returncode == 0, verified.stderr
    refused = cli("populate", out / "pair.mcb", "--cache-dir", tmp_path / "cache")
    assert refused.returncode != 0 and "megacache.load_precompiled" in refused.stderr
    converted = cli("convert", out / "pair.mcb", tmp_path / "m.py")
    assert converted.returncode == 0, converted.stderr
    assert (tmp_path / "m.py").read_bytes() == (out / "torch.py").read_bytes()
    assert (tmp_path / "m.py.cache").read_bytes() == (out / "torch.py.cache").read_bytes()
