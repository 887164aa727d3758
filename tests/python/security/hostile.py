"""Helpers for the security suite: hostile inputs built from the documented formats, and a
snapshot of a directory that must not change."""

from __future__ import annotations

import base64
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

DATA = Path(__file__).resolve().parents[2] / "data"


def make_blob(groups: Sequence[Tuple[str, List[Tuple[str, bytes]]]]) -> bytes:
    """A torch 2.8+ Mega-Cache blob (docs/torch-format.md, section 1)."""

    def string(text: str) -> bytes:
        return field(base64.b64encode(text.encode()))

    def field(raw: bytes) -> bytes:
        return struct.pack(">Q", len(raw)) + raw

    body = struct.pack(">Q", 1)
    for artifact_type, artifacts in groups:
        body += string(artifact_type) + struct.pack(">Q", len(artifacts))
        for key, content in artifacts:
            body += string(key) + field(content)
    return struct.pack(">I", zlib.crc32(body)) + body


class Outside:
    """A directory outside every root megacache writes, holding files an attacker would like
    changed, read or deleted; `unchanged()` compares it with the snapshot taken at creation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        (path / "victim").write_bytes(b"bytes megacache must never touch")
        (path / "old").write_bytes(b"an old file gc must not collect")
        import os

        os.utime(path / "old", (1, 1))  # older than any grace period
        self.before = self.snapshot()

    def snapshot(self) -> Dict[str, Tuple[bytes, int]]:
        return {str(p.relative_to(self.path)): (p.read_bytes(), p.lstat().st_mtime_ns)
                for p in sorted(self.path.rglob("*")) if p.is_file()}

    def unchanged(self) -> bool:
        return self.snapshot() == self.before


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["megacache", *args], capture_output=True, text=True, timeout=120, **kwargs)
