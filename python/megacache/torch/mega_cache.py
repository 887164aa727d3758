"""The Mega-Cache drop-ins: torch.compiler.save_cache_artifacts and load_cache_artifacts on the
core.

It reads what torch's CacheArtifactManager recorded and hands bytes to the C++ core, which
serializes, parses and populates. It supports torch 2.8 and newer (string-typed artifacts).
"""

from __future__ import annotations

import functools
import itertools
import logging
import platform
import subprocess
from typing import Any, List, Optional, Tuple

import torch
from torch.compiler._cache import CacheArtifactFactory, CacheArtifactManager, CacheInfo

from megacache import _core

log = logging.getLogger("megacache")

__all__ = ["load", "load_cache_artifacts", "save", "save_cache_artifacts"]


class _Recorder:
    """Mirrors torch's recorded artifacts into the C++ ArtifactManager.

    torch's CacheArtifactManager._seen_artifacts holds every artifact recorded since its last
    clear(), in record order, and torch's own serialize() leaves it alone. We read it from
    where we stopped, so each save costs only what is new. Reading changes nothing in torch;
    the drop-in save then moves torch's manager on as torch's own save would
    (_mark_serialized_in_torch), so torch.compiler.save_cache_artifacts keeps working beside us.
    """

    def __init__(self) -> None:
        self.manager = _core.ArtifactManager()
        self._seen: Any = None  # the torch OrderedSet we were reading
        self._count = 0  # how many of its artifacts we have recorded
        self._last: object = None  # the last one, to notice torch's clear()
        self._blob: Optional[bytes] = None

    def _drain(self) -> None:
        seen = CacheArtifactManager._seen_artifacts
        if self._last is not None and (
            seen is not self._seen or len(seen) < self._count or self._last not in seen
        ):
            # torch's manager was cleared or swapped (with_fresh_cache): start over, as torch does.
            self.manager.clear()
            self._count, self._last, self._blob = 0, None, None
        self._seen = seen
        if len(seen) == self._count:
            return
        for artifact in itertools.islice(seen, self._count, None):
            self.manager.record(artifact.type(), artifact.key, artifact.content)
            self._last = artifact
        self._count = len(seen)

    def save(self) -> Optional[Tuple[bytes, CacheInfo]]:
        self._drain()
        if self._blob is None or self.manager.need_serialize():
            self._blob = self.manager.serialize()
        if self._blob is None:
            return None
        return self._blob, _cache_info(self.manager.cache_info())


_recorder = _Recorder()


def _cache_info(entries: List[Tuple[str, List[str]]]) -> CacheInfo:
    # Registration adds CacheInfo's <type>_artifacts properties, as torch's own load does.
    CacheArtifactManager._ensure_cache_artifacts_registered()
    info = CacheInfo()
    for artifact_type, keys in entries:
        info.artifacts[artifact_type].extend(keys)
    return info


def _pgo_cache_key() -> str:
    # Called by the core only for "mast:" PGO keys, which torch rewrites to this job's key.
    from torch._dynamo.pgo import get_cache_key

    return get_cache_key() or ""


def _mark_serialized_in_torch() -> None:
    """Leaves torch's CacheArtifactManager as its own serialize() does: the new artifacts move
    into its serializer and CacheInfo, so need_serialize() is False and a later
    torch.compiler.save_cache_artifacts() still returns everything."""
    new = CacheArtifactManager._new_cache_artifacts
    for artifact in itertools.chain(*new.values()):
        CacheArtifactManager._cache_info.add(artifact)
    CacheArtifactManager._serializer.extend(new.items())
    new.clear()


def save_cache_artifacts() -> Optional[Tuple[bytes, CacheInfo]]:
    if torch._dynamo.config.caching_precompile:
        from torch._dynamo.precompile_context import PrecompileContext

        PrecompileContext.save_to_dynamo_cache()
    saved = _recorder.save()
    _mark_serialized_in_torch()
    return saved


def recorded() -> Optional[Tuple[bytes, List[Tuple[str, str]]]]:
    """The Mega-Cache blob of everything recorded so far (no precompile entries), and the
    (type, key) of each artifact in it; None before torch recorded anything."""
    saved = _recorder.save()
    if saved is None:
        return None
    blob, info = saved
    return blob, [
        (artifact_type, key) for artifact_type, keys in info.artifacts.items() for key in keys
    ]


def recorded_count() -> int:
    """How many artifacts torch has recorded since it last cleared: cheap, for a caller that
    acts only when it grew."""
    return len(CacheArtifactManager._seen_artifacts)


def keep_loaded(data: bytes) -> None:
    """Records the artifacts of a loaded bundle or blob as if torch had recorded them, so that
    what this process saves next carries them too."""
    from megacache import trusted_keys

    _recorder.manager.record_blob(_core.mega_cache_of(data, trusted_keys()))


def _torch_cache_dir() -> str:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return cache_dir()


def current_fingerprint() -> List[Tuple[str, str]]:
    """What a bundle records of the environment that made its artifacts."""
    import importlib.metadata
    import platform

    fields = dict(_core.host_fingerprint())
    fields["python"] = platform.python_version()
    fields["torch"] = torch.__version__
    fields["cuda"] = torch.version.cuda or ""
    try:
        fields["triton"] = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        fields["triton"] = ""
    from torch._inductor.codecache import torch_key

    fields["torch_key"] = torch_key().hex()
    if torch.cuda.is_initialized():
        device = torch.cuda.current_device()
        fields["gpu"] = torch.cuda.get_device_name(device)
        fields["gpu_capability"] = "%d.%d" % torch.cuda.get_device_capability(device)
    return sorted(fields.items())


@functools.lru_cache(maxsize=None)
def _compiler() -> str:
    """The C++ compiler torch builds CPU kernels with, and its version line."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    compiler = get_cpp_compiler()
    try:
        version = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=30
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        version = []
    return f"{compiler}: {version[0] if version else 'unknown version'}"


@functools.lru_cache(maxsize=None)
def environment() -> Tuple[Tuple[str, str], ...]:
    """What a package records and checks of the environment, and what names automatic mode's
    entries in a store: cheap to compute, since automatic mode needs it before the first call."""
    fields = dict(_core.host_fingerprint())  # cpu_arch, cpu_flags, os, megacache
    fields["python"] = platform.python_version()
    fields["torch"] = torch.__version__
    fields["torch_git"] = torch.version.git_version
    fields["cuda"] = torch.version.cuda or ""
    fields["cxx"] = _compiler()
    try:
        import triton

        fields["triton"] = triton.__version__
    except ImportError:
        fields["triton"] = ""
    available = torch.cuda.is_available()
    fields["gpu"] = torch.cuda.get_device_name() if available else ""
    fields["gpu_capability"] = "%d.%d" % torch.cuda.get_device_capability() if available else ""
    return tuple(sorted(fields.items()))


def load_bytes(data: bytes, cache_dir: Optional[str] = None) -> CacheInfo:
    from megacache import trusted_keys

    # Types registered through CacheArtifactFactory.register load through their own
    # populate_cache(), as in torch; the core checks the rest and writes them.
    CacheArtifactManager._ensure_cache_artifacts_registered()
    entries, fingerprint, caller_populated = _core.load_into(
        data,
        cache_dir or _torch_cache_dir(),
        _pgo_cache_key,
        trusted_keys(),
        list(CacheArtifactFactory._artifact_types),
    )
    for artifact_type, key, content in caller_populated:
        CacheArtifactFactory.create(artifact_type, key, content).populate_cache()
    if fingerprint:
        differences = _core.compare_fingerprints(fingerprint, current_fingerprint())
        if differences:
            # torch's own cache keys cover these, so the artifacts are harmless but unused.
            log.warning(
                "megacache: artifacts built for another environment will not be hit: %s",
                "; ".join(f"{name} {built} here {current}" for name, built, current in differences),
            )
    return _cache_info(entries)


def load_cache_artifacts(serialized_artifacts: bytes) -> Optional[CacheInfo]:
    # torch's contract: a blob that cannot be loaded is a logged no-op. A full or read-only
    # disk is one too, so that the job compiles instead of failing.
    from megacache import CACHE_ERRORS

    try:
        return load_bytes(serialized_artifacts, None)
    except CACHE_ERRORS as error:
        log.warning("megacache: not loading cache artifacts: %s", error)
        return None


def save(path: str, *, signing_key: str = "", level: int = 3) -> Optional[CacheInfo]:
    saved = save_cache_artifacts()
    if saved is None:
        return None
    blob, info = saved
    bundle = _core.bundle_of(blob, current_fingerprint(), level, signing_key)
    _core.write_file_atomic(path, bundle)
    return info


def load(path: str, *, cache_dir: Optional[str] = None) -> CacheInfo:
    with open(path, "rb") as f:
        data = f.read()
    return load_bytes(data, cache_dir)
