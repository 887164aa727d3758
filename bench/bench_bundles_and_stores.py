"""Benchmark: bundles and stores against torch's equivalents, side by side in one run.

  size        bundle (zstd level 3, dedup) against torch's Mega-Cache blob, per fixture
  convert     Mega-Cache -> bundle and back, MB/s of Mega-Cache bytes, one core
  redis       push + pull of the same artifacts through a local redis-server: megacache's
              chunked bundle against torch's RedisRemoteCache values (JSON of base64), one
              key per artifact as torch's FX/AOTAutograd remote caches store them
  local hit   megacache's file store get against torch's LocalCacheBackend._get (a plain
              file read, what torch's local caches do), same bytes

Usage: python bench/bench_bundles_and_stores.py [BLOB ...] [--json OUT]  (needs redis-server
and the redis Python package for the redis rows; `make bench` installs both).
"""

import argparse
import base64
import functools
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from megacache import _core

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from bench_mega_cache import default_blobs, median_seconds  # noqa: E402

FINGERPRINT = _core.host_fingerprint()


def artifacts_of(blob):
    from torch.compiler._cache import CacheArtifactManager

    CacheArtifactManager._ensure_cache_artifacts_registered()
    loaded = CacheArtifactManager.deserialize(blob)
    return [(t, a.key, a.content) for t, items in loaded.items() for a in items]


def start_redis():
    if shutil.which("redis-server") is None:
        return None, None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return server, port
        except OSError:
            time.sleep(0.02)
    server.kill()
    return None, None


def bench_redis(blob, bundle, port, repeat):
    os.environ["TORCHINDUCTOR_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    from torch._inductor.remote_cache import RedisRemoteCache

    torch_cache = RedisRemoteCache("fx-graph-v1")
    items = artifacts_of(blob)

    def torch_roundtrip():
        for _, key, content in items:
            torch_cache.put(
                key, {"data": base64.b64encode(content).decode("ascii"), "time_taken_ms": 0}
            )
        for _, key, content in items:
            value = torch_cache.get(key)
            assert base64.b64decode(value["data"]) == content

    store = _core.Store(f"redis://127.0.0.1:{port}/0")

    def ours_roundtrip():
        store.put("bench", bundle)
        assert _core.mega_cache_of(store.get("bench")) == blob

    torch_roundtrip()
    ours_roundtrip()
    t = median_seconds(torch_roundtrip, repeat)
    o = median_seconds(ours_roundtrip, repeat)
    torch_bytes = sum(
        len(json.dumps({"data": base64.b64encode(c).decode(), "time_taken_ms": 0}))
        for _, _, c in items
    )
    return {
        "torch_ms": t * 1e3,
        "megacache_ms": o * 1e3,
        "ratio": t / o,
        "torch_bytes_stored": torch_bytes,
        "megacache_bytes_stored": len(bundle),
    }


def torch_local_read(path):
    """torch's local cache read: LocalCacheBackend._get where torch has it (2.13), else the
    plain open().read() its caches do (2.11)."""
    try:
        from torch._inductor.remote_cache import LocalCacheBackend
    except ImportError:
        return lambda: Path(path).read_bytes()
    backend = LocalCacheBackend()
    return lambda: backend._get(str(path))


def bench_local_hit(bundle, blob, repeat):
    work = Path(tempfile.mkdtemp(prefix="megacache-bench-"))
    try:
        store = _core.Store(f"file://{work / 'store'}")
        store.put("model", bundle)
        path = work / "torch" / "blob"
        path.parent.mkdir(parents=True)
        path.write_bytes(blob)
        t = median_seconds(torch_local_read(path), repeat)
        o = median_seconds(lambda: store.get("model"), repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"torch_read_ms": t * 1e3, "megacache_get_ms": o * 1e3}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("blobs", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    blobs = args.blobs or default_blobs()
    print(f"# {json.dumps({'python': platform.python_version(), 'cores': os.cpu_count()})}")
    server, port = start_redis()
    rows = []
    try:
        print(
            "\nblob                       torch bytes  bundle bytes  ratio"
            " | convert MB/s: to bundle  back"
            " | redis push+pull ms: torch  megacache  ratio"
            " | local hit ms: torch read  megacache get"
        )
        for path in blobs:
            blob = path.read_bytes()
            bundle = _core.bundle_of(blob, FINGERPRINT)
            to_bundle = median_seconds(
                functools.partial(_core.bundle_of, blob, FINGERPRINT), args.repeat
            )
            back = median_seconds(functools.partial(_core.mega_cache_of, bundle), args.repeat)
            row = {
                "blob": path.name,
                "torch_bytes": len(blob),
                "bundle_bytes": len(bundle),
                "size_ratio": len(blob) / len(bundle),
                "to_bundle_mb_s": len(blob) / to_bundle / 1e6,
                "back_mb_s": len(blob) / back / 1e6,
            }
            row["redis"] = bench_redis(blob, bundle, port, args.repeat) if port else None
            row["local_hit"] = bench_local_hit(bundle, blob, args.repeat)
            rows.append(row)
            redis = row["redis"]
            redis_text = (
                f"{redis['torch_ms']:>8.2f} {redis['megacache_ms']:>10.2f} {redis['ratio']:>5.1f}x"
                if redis
                else "   (no redis-server)        "
            )
            print(
                f"{path.name:<26}{len(blob):>12}{len(bundle):>14}{row['size_ratio']:>6.1f}x |"
                f"{row['to_bundle_mb_s']:>21.0f}{row['back_mb_s']:>6.0f} | {redis_text} |"
                f"{row['local_hit']['torch_read_ms']:>18.3f}{row['local_hit']['megacache_get_ms']:>15.3f}"
            )
    finally:
        if server:
            server.kill()
            server.wait()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
