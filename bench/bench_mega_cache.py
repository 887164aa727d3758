"""Benchmark: megacache's C++ path against torch's own, side by side, on the same bytes.

  populate   parse + write a Mega-Cache blob into a cache dir (torch.compiler.load_cache_artifacts
             against megacache.load_cache_artifacts), steady state (modules imported, the dir
             already populated, as on a second load) and into a fresh empty dir;
  save       N batches of new artifacts, a save after each (torch.compiler.save_cache_artifacts
             against megacache.save_cache_artifacts), then a save with nothing new.

Usage: python bench/bench_mega_cache.py [BLOB ...] [--repeat N] [--json OUT]
Without BLOBs it uses the fixtures in tests/data and ../shared/fixtures when present.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.compiler._cache import CacheArtifactManager

import megacache

ROOT = Path(__file__).resolve().parent.parent


def default_blobs():
    names = ["mega_mlp_infer.bin", "mega_graphbreak.bin", "mega_dynamic.bin"]
    blobs = [ROOT / "tests" / "data" / n for n in names]
    for folder in (ROOT.parent / "shared" / "fixtures" / "torch-2.11-cuda", ROOT / ".bench-data"):
        if (folder / "mega_xfmr_infer.bin").exists():
            blobs.append(folder / "mega_xfmr_infer.bin")
            break
    return blobs


def median_seconds(fn, repeat, setup=None):
    times = []
    for _ in range(repeat):
        if setup:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_populate(blob_path, repeat):
    blob = blob_path.read_bytes()
    work = Path(tempfile.mkdtemp(prefix="megacache-bench-"))
    try:
        torch_dir, ours_dir = work / "torch", work / "ours"

        def torch_load(target):
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(target)
            assert torch.compiler.load_cache_artifacts(blob) is not None

        def ours_load(target):
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(target)
            assert megacache.load_cache_artifacts(blob) is not None

        torch_load(torch_dir)  # warm: imports, registrations, files present
        ours_load(ours_dir)
        steady_torch = median_seconds(lambda: torch_load(torch_dir), repeat)
        steady_ours = median_seconds(lambda: ours_load(ours_dir), repeat)

        fresh = work / "fresh"

        def empty_fresh():
            shutil.rmtree(fresh, ignore_errors=True)

        fresh_torch = median_seconds(lambda: torch_load(fresh), repeat, empty_fresh)
        fresh_ours = median_seconds(lambda: ours_load(fresh), repeat, empty_fresh)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "blob": blob_path.name,
        "bytes": len(blob),
        "steady_torch_ms": steady_torch * 1e3,
        "steady_megacache_ms": steady_ours * 1e3,
        "steady_ratio": steady_torch / steady_ours,
        "fresh_torch_ms": fresh_torch * 1e3,
        "fresh_megacache_ms": fresh_ours * 1e3,
        "fresh_ratio": fresh_torch / fresh_ours,
    }


def bench_save(blob_path, batches):
    """Records the blob's artifacts under new keys in `batches` rounds, saving after each."""
    CacheArtifactManager._ensure_cache_artifacts_registered()
    CacheArtifactManager.clear()
    blob = blob_path.read_bytes()
    contents = _artifacts_of(blob)
    rows = []
    try:
        for batch in range(batches):
            for i, (artifact_type, key, content) in enumerate(contents):
                # A new key and content per batch, as new graphs would bring. Autotune
                # artifacts are recorded as the dict torch encodes to JSON.
                new_key = f"{key}-{batch}-{i}"
                if artifact_type == "autotune":
                    payload = dict(json.loads(content), batch=batch)
                else:
                    payload = content + bytes([batch])
                CacheArtifactManager.record_artifact(artifact_type, new_key, payload)
            t0 = time.perf_counter()
            ours = megacache.save_cache_artifacts()
            t1 = time.perf_counter()
            theirs = torch.compiler.save_cache_artifacts()
            t2 = time.perf_counter()
            assert ours[0] == theirs[0], "megacache and torch bytes differ"
            rows.append(
                {
                    "batch": batch,
                    "blob_bytes": len(ours[0]),
                    "torch_ms": (t2 - t1) * 1e3,
                    "megacache_ms": (t1 - t0) * 1e3,
                }
            )
        nothing_new = []
        for _ in range(20):
            t0 = time.perf_counter()
            megacache.save_cache_artifacts()
            t1 = time.perf_counter()
            torch.compiler.save_cache_artifacts()
            t2 = time.perf_counter()
            nothing_new.append(((t2 - t1), (t1 - t0)))
    finally:
        CacheArtifactManager.clear()
    torch_idle = statistics.median(t for t, _ in nothing_new)
    ours_idle = statistics.median(o for _, o in nothing_new)
    return {
        "blob": blob_path.name,
        "batches": rows,
        "nothing_new_torch_ms": torch_idle * 1e3,
        "nothing_new_megacache_ms": ours_idle * 1e3,
        "nothing_new_ratio": torch_idle / ours_idle,
    }


def _artifacts_of(blob):
    """(type, key, content) of what torch would load from `blob`, via torch's own reader."""
    artifacts = CacheArtifactManager.deserialize(blob)
    return [(t, a.key, a.content) for t, items in artifacts.items() for a in items]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("blobs", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    blobs = args.blobs or default_blobs()

    # torch 2.13 unpickles every FX graph during populate to emit its Triton bundle; a CUDA
    # graph cannot be unpickled without triton, so on a CPU host that step is switched off
    # (torch 2.11, the GPU host's, has no such step).
    if not torch.cuda.is_available():
        torch._inductor.config.bundle_triton_into_fx_graph_cache = False

    machine = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "bundle_triton_into_fx_graph_cache": (
            torch._inductor.config.bundle_triton_into_fx_graph_cache
        ),
    }
    print(f"# {json.dumps(machine)}")
    populate = [bench_populate(b, args.repeat) for b in blobs]
    print(
        "\npopulate (median ms)       bytes   torch  megacache  ratio"
        " | fresh dir: torch  megacache  ratio"
    )
    for r in populate:
        print(
            f"{r['blob']:<24}{r['bytes']:>9} {r['steady_torch_ms']:>7.2f} "
            f"{r['steady_megacache_ms']:>10.3f} "
            f"{r['steady_ratio']:>6.1f}x |          {r['fresh_torch_ms']:>7.2f} "
            f"{r['fresh_megacache_ms']:>10.3f} "
            f"{r['fresh_ratio']:>6.1f}x"
        )
    save_blob = max(blobs, key=lambda b: b.stat().st_size)
    save = bench_save(save_blob, args.batches)
    print(f"\nsave after each batch of new artifacts ({save['blob']}, ms)")
    for row in save["batches"]:
        print(
            f"  batch {row['batch']}: blob {row['blob_bytes']:>9} bytes"
            f"  torch {row['torch_ms']:>7.2f}"
            f"  megacache {row['megacache_ms']:>7.2f}"
            f"  ratio {row['torch_ms'] / row['megacache_ms']:.1f}x"
        )
    print(
        f"  nothing new: torch {save['nothing_new_torch_ms']:.3f}  megacache "
        f"{save['nothing_new_megacache_ms']:.4f}  ratio {save['nothing_new_ratio']:.0f}x"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine, "populate": populate, "save": save}, indent=2)
        )


if __name__ == "__main__":
    sys.exit(main())
