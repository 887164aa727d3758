"""Hostile bundles, as a shared store or directory may hold them: every size a bundle claims is
checked before it is allocated (docs/bundle-format.md, Limits).

Each hostile file in tests/data (made by the C++ test HostileBundle.GoldenHostileFilesAreWhatThe-
BuilderMakes) claims gigabytes from a few hundred bytes. The CLI and the Python binding must
refuse it as corruption at the payload that cannot back its claim, in a subprocess whose peak
RSS stays within 64 MB of the same command on a harmless bundle. Before the budgets, these
files took the process to 1 GiB and 3 GiB, or aborted it with bad_alloc.
"""

import os
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "data"
HARMLESS_BUNDLE = DATA / "bundle_v1_mlp.mcb"
HARMLESS_PACKAGE = DATA / "package_v1.mcpkg"
BUDGET_KIB = 64 * 1024
TIMEOUT_SECONDS = 120

# file -> what the refusal says about entry 0, the first payload that cannot back its claim
HOSTILE = {
    "hostile_claim_1gib.mcb": (
        "claims 1073741824 bytes, but its zstd blocks can decode to at most 100"
    ),
    "hostile_claims_3x1gib.mcb": (
        "claims 1073741824 bytes, but its zstd blocks can decode to at most 100"
    ),
    "hostile_claims_16x4gib.mcb": (
        "claims 4294967296 bytes, but its zstd blocks can decode to at most 100"
    ),
    # Its blocks can back the claim; the first one is garbage, so nothing really decompresses.
    "hostile_backed_claim_1gib.mcb": "zstd payload does not decompress",
    "hostile_package_16x4gib.mcpkg": (
        "claims 4294967296 bytes, but its zstd blocks can decode to at most 100"
    ),
}


def first_payload_offset(data: bytes) -> int:
    """Where entry 0's payload starts in the file: the offset a refusal of its claim names.
    Walks the header and index of docs/bundle-format.md (big-endian)."""
    pos = 8 + 4 + 4  # magic, version, flags
    (fields,) = struct.unpack_from(">I", data, pos)
    pos += 4
    for _ in range(fields):
        (name_length,) = struct.unpack_from(">H", data, pos)
        pos += 2 + name_length
        (value_length,) = struct.unpack_from(">I", data, pos)
        pos += 4 + value_length
    (count,) = struct.unpack_from(">I", data, pos)
    pos += 4
    offsets = []
    for _ in range(count):
        (type_length,) = struct.unpack_from(">H", data, pos)
        pos += 2 + type_length
        (key_length,) = struct.unpack_from(">I", data, pos)
        pos += 4 + key_length + 4 + 1  # key, group, compression
        offsets.append(struct.unpack_from(">Q", data, pos)[0])
        pos += 8 + 8 + 8 + 16  # offset, stored size, raw size, checksum
    return pos + 8 + offsets[0]  # past the payload area's length


def run_measured(command):
    """Runs `command`; returns (exit code, stdout + stderr, peak RSS in KiB of that process
    alone, from wait4). The peak includes what the forking test process held before exec,
    the same floor for a baseline and a hostile run, so tests compare the two."""
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        killer = threading.Timer(TIMEOUT_SECONDS, process.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            killer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        return process.returncode, output.read().decode(errors="replace"), usage.ru_maxrss


def cli(*args):
    return ["megacache", *map(str, args)]


# The binding's side: one call on the file's bytes, the way a store's consumer makes it.
# Exit 0: accepted; exit 3: CorruptionError, printed.
BINDING_SCRIPT = r"""
import sys, tempfile
import megacache
from megacache import _core

mode, path = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
try:
    if mode == "verify":
        megacache.verify(data)
    elif mode == "package":
        _core.Package.from_bytes(data, "")
    elif mode == "store":
        # The file store hands back whatever was put there; loading it must refuse it whole.
        with tempfile.TemporaryDirectory() as root:
            store = _core.Store("file://" + root + "/store")
            store.put("shared.mcb", data)
            _core.load_into(store.get("shared.mcb"), root + "/torch-cache")
except megacache.CorruptionError as error:
    print("CorruptionError:", error)
    sys.exit(3)
print("accepted")
"""


def binding(mode, path):
    return [sys.executable, "-c", BINDING_SCRIPT, mode, str(path)]


def harmless_for(name):
    return HARMLESS_PACKAGE if name.endswith(".mcpkg") else HARMLESS_BUNDLE


def expect_refused_in_budget(baseline, refused, name):
    code, output, peak_kib = refused
    base_code, base_output, base_peak_kib = baseline
    assert base_code == 0, f"the harmless baseline failed:\n{base_output}"
    offset = first_payload_offset((DATA / name).read_bytes())
    assert f"corruption at offset {offset}: " in output, output
    assert HOSTILE[name] in output, output
    assert peak_kib - base_peak_kib < BUDGET_KIB, (
        f"{name}: peak RSS {peak_kib} KiB against {base_peak_kib} KiB for a harmless input"
    )
    return code


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_cli_verify_refuses_the_claim_in_bounded_memory(name):
    baseline = run_measured(cli("verify", harmless_for(name)))
    refused = run_measured(cli("verify", DATA / name))
    assert expect_refused_in_budget(baseline, refused, name) == 1  # the CLI's "invalid input"


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_binding_verify_raises_corruption_in_bounded_memory(name):
    baseline = run_measured(binding("verify", harmless_for(name)))
    refused = run_measured(binding("verify", DATA / name))
    assert expect_refused_in_budget(baseline, refused, name) == 3


def test_package_from_bytes_raises_corruption_in_bounded_memory():
    name = "hostile_package_16x4gib.mcpkg"
    baseline = run_measured(binding("package", HARMLESS_PACKAGE))
    refused = run_measured(binding("package", DATA / name))
    assert expect_refused_in_budget(baseline, refused, name) == 3


@pytest.mark.parametrize("name", ["hostile_claims_16x4gib.mcb", "hostile_backed_claim_1gib.mcb"])
def test_bundle_from_a_file_store_is_refused_in_bounded_memory(name):
    baseline = run_measured(binding("store", HARMLESS_BUNDLE))
    refused = run_measured(binding("store", DATA / name))
    assert expect_refused_in_budget(baseline, refused, name) == 3
