"""One trust policy for every form a package or bundle takes: with trusted keys configured,
only what a trusted key signed loads, and a signature that does not verify never does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hostile import DATA, cli

from megacache import _core


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two signing keys: `trusted` (its public key is what MEGACACHE_TRUSTED_KEYS names) and
    `other`."""
    directory = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("trusted", "other"):
        assert cli("keygen", str(directory / name)).returncode == 0
        out[name] = (directory / name).read_text().strip()
        out[name + "_pub"] = (directory / f"{name}.pub").read_text().strip()
        assert oct((directory / name).stat().st_mode & 0o777) == "0o600"
    return out


def golden() -> "_core.Package":
    return _core.Package.from_bytes((DATA / "package_v1.mcpkg").read_bytes())


def test_an_unsigned_directory_is_refused_when_keys_are_configured(tmp_path, keys):
    directory = tmp_path / "pkg"
    golden().write_unpacked(str(directory))
    assert _core.Package.read(str(directory)).keys()  # no keys configured: it loads
    with pytest.raises(_core.InvalidInputError, match="unsigned package directory"):
        _core.Package.read(str(directory), keys["trusted_pub"])


def test_load_package_does_not_install_an_unsigned_directorys_kernel(tmp_path, keys):
    # The attack of the report: an unsigned directory whose kernel is the attacker's, with
    # fingerprint.json copied from the host so that every environment check passes.
    directory = tmp_path / "pkg"
    golden().write_unpacked(str(directory))
    [kernel] = golden().kernel_paths
    (directory / "kernels" / kernel).write_bytes(b"\x7fELF evil")
    cache = tmp_path / "cache"
    script = (
        "import megacache, sys\n"
        "try:\n"
        "    megacache.load_package(sys.argv[1])\n"
        "except megacache.InvalidInputError as error:\n"
        "    print('refused:', error)\n"
    )
    env = dict(
        os.environ, MEGACACHE_TRUSTED_KEYS=keys["trusted_pub"], TORCHINDUCTOR_CACHE_DIR=str(cache)
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(directory)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "refused:" in result.stdout and "unsigned package directory" in result.stdout
    assert not any(p.name.endswith(".so") for p in cache.rglob("*")), "a kernel was installed"


def test_a_signed_directory_loads_and_every_file_is_checked(tmp_path, keys):
    directory = tmp_path / "pkg"
    golden().write_unpacked(str(directory), keys["trusted"])
    signature = json.loads((directory / "signature.json").read_text())
    listed = set(signature["files"])
    written = {
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if p.is_file() and p.name != "signature.json"
    }
    assert listed == written
    read = _core.Package.read(str(directory), keys["trusted_pub"])
    assert read.to_bytes() == golden().to_bytes()

    [kernel] = golden().kernel_paths
    path = directory / "kernels" / kernel
    original = path.read_bytes()
    path.write_bytes(b"\x7fELF evil")
    with pytest.raises(_core.InvalidInputError, match="changed after the package was signed"):
        _core.Package.read(str(directory), keys["trusted_pub"])
    with pytest.raises(_core.InvalidInputError, match="changed after"):
        _core.Package.read(str(directory))  # signed: the list holds even without keys
    path.write_bytes(original)

    # A kernel the manifest did not name before signing cannot be added by editing it.
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["kernels"].append("cd/cevil.so")
    (directory / "manifest.json").write_text(json.dumps(manifest))
    (directory / "kernels" / "cd").mkdir()
    (directory / "kernels" / "cd" / "cevil.so").write_bytes(b"\x7fELF evil")
    with pytest.raises(_core.InvalidInputError, match="manifest.json was changed"):
        _core.Package.read(str(directory), keys["trusted_pub"])


def test_a_directory_signed_by_another_key_is_refused(tmp_path, keys):
    directory = tmp_path / "pkg"
    golden().write_unpacked(str(directory), keys["other"])
    assert _core.Package.read(str(directory), keys["other_pub"]).keys()
    with pytest.raises(_core.InvalidInputError, match="not among the trusted keys"):
        _core.Package.read(str(directory), keys["trusted_pub"])


def test_a_forged_file_list_does_not_verify(tmp_path, keys):
    directory = tmp_path / "pkg"
    golden().write_unpacked(str(directory), keys["trusted"])
    [kernel] = golden().kernel_paths
    (directory / "kernels" / kernel).write_bytes(b"\x7fELF evil")
    signature = json.loads((directory / "signature.json").read_text())
    import hashlib

    signature["files"]["kernels/" + kernel] = hashlib.sha256(b"\x7fELF evil").hexdigest()
    (directory / "signature.json").write_text(json.dumps(signature))
    for configured in ("", keys["trusted_pub"]):
        with pytest.raises(_core.InvalidInputError, match="signature does not verify"):
            _core.Package.read(str(directory), configured)


def test_the_binary_form_follows_the_same_policy(tmp_path, keys):
    unsigned = golden().to_bytes()
    signed = golden().to_bytes(keys["trusted"])
    with pytest.raises(_core.InvalidInputError, match="unsigned"):
        _core.Package.from_bytes(unsigned, keys["trusted_pub"])
    with pytest.raises(_core.InvalidInputError, match="not among the trusted keys"):
        _core.Package.from_bytes(golden().to_bytes(keys["other"]), keys["trusted_pub"])
    assert _core.Package.from_bytes(signed, keys["trusted_pub"]).keys()
    path = tmp_path / "pkg.mcpkg"
    path.write_bytes(unsigned)
    with pytest.raises(_core.InvalidInputError, match="unsigned"):
        _core.Package.read(str(path), keys["trusted_pub"])
    with pytest.raises(_core.InvalidInputError, match="unsigned"):
        _core.verify(unsigned, keys["trusted_pub"])
