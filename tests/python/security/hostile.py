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
        return {
            str(p.relative_to(self.path)): (p.read_bytes(), p.lstat().st_mtime_ns)
            for p in sorted(self.path.rglob("*"))
            if p.is_file()
        }

    def unchanged(self) -> bool:
        return self.snapshot() == self.before


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["megacache", *args], capture_output=True, text=True, timeout=120, **kwargs
    )


def redis_command(url: str, *args: bytes | str) -> bytes:
    """Sends one command to a real redis-server (RESP) and returns the raw reply's first line
    and payload; enough to plant poisoned entries."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    request = b"*%d\r\n" % len(args)
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        request += b"$%d\r\n%s\r\n" % (len(raw), raw)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=5) as connection:
        connection.sendall(request)
        reply = b""
        while not reply.endswith(b"\r\n"):
            reply += connection.recv(65536)
        return reply


class HostileServer:
    """A real TCP server on 127.0.0.1 that answers every Redis request with `respond(send)`,
    where send(bytes) writes to the client; it runs in a thread until closed."""

    def __init__(self, respond) -> None:
        import socket
        import threading

        self.respond = respond
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(client,), daemon=True).start()

    def _answer(self, client) -> None:
        with client:
            try:
                while not self.closed.is_set():
                    if not client.recv(65536):
                        return
                    self.respond(client.sendall, self.closed)
            except OSError:
                return

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
