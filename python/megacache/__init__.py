"""megacache: compile-time caching for torch.compile, with a C++ core.

Importing megacache does not import torch; the functions that need torch import the
adapter in megacache.torch when they are called.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

from megacache import _core
from megacache._core import (
    CorruptionError,
    InvalidInputError,
    MegacacheError,
    PackageMismatchError,
    __version__,
)
from megacache.torch.surfaces import UnsupportedTorchError  # imports no torch

if TYPE_CHECKING:
    from torch.compiler._cache import CacheInfo

# What a cache operation can raise: a damaged or refused input, a package built for another
# environment, the file system or a store, and memory. The boundaries between the cache and the
# job (load_cache_artifacts, megacache.compile's and automatic mode's load and publish) turn
# each into a logged, counted miss; anything else is a bug and reaches the user.
CACHE_ERRORS = (CorruptionError, InvalidInputError, PackageMismatchError, OSError, MemoryError)

__all__ = [
    "CACHE_ERRORS",
    "CorruptionError",
    "InvalidInputError",
    "MegacacheError",
    "PackageMismatchError",
    "UnsupportedTorchError",
    "__version__",
    "automatic_stats",
    "compile",
    "disable",
    "enable",
    "load_package",
    "load_precompiled",
    "load_standalone",
    "save_package",
    "save_precompiled",
    "standalone_compile",
    "load",
    "load_cache_artifacts",
    "open_store",
    "pull",
    "push",
    "save",
    "save_cache_artifacts",
    "verify",
]


def save_cache_artifacts() -> Optional[Tuple[bytes, "CacheInfo"]]:
    """Drop-in for torch.compiler.save_cache_artifacts(): (bytes, CacheInfo), or None when
    nothing was ever recorded. Serializing runs in C++ and costs only what is new."""
    from megacache.torch import mega_cache as adapter

    return adapter.save_cache_artifacts()


def load_cache_artifacts(serialized_artifacts: bytes) -> Optional["CacheInfo"]:
    """Drop-in for torch.compiler.load_cache_artifacts(): writes the artifacts into torch's
    cache dir and returns CacheInfo. Like torch, a blob that cannot be loaded (corrupt,
    refused, or a disk error) logs a warning and returns None; load() raises instead."""
    from megacache.torch import mega_cache as adapter

    return adapter.load_cache_artifacts(serialized_artifacts)


def save(
    path: str | os.PathLike[str],
    *,
    sign_with: Optional[str | os.PathLike[str]] = None,
    level: int = 3,
) -> Optional["CacheInfo"]:
    """Saves everything this process compiled to `path` as a megacache bundle (zstd,
    deduplicated, checksummed, with this environment's fingerprint), atomically; signed with
    the key file `sign_with` (`megacache keygen`) if given. Returns the CacheInfo, or None
    (and writes nothing) when nothing was recorded."""
    from megacache.torch import mega_cache as adapter

    key = Path(sign_with).read_text().strip() if sign_with else ""
    return adapter.save(os.fspath(path), signing_key=key, level=level)


def load(path: str | os.PathLike[str], *, cache_dir: Optional[str] = None) -> "CacheInfo":
    """Populates torch's cache dir (or `cache_dir`) from a megacache bundle, a Mega-Cache
    file or a standalone_compile binary file. Bundles must satisfy MEGACACHE_TRUSTED_KEYS when
    it is set. Raises CorruptionError, InvalidInputError or OSError."""
    from megacache.torch import mega_cache as adapter

    return adapter.load(os.fspath(path), cache_dir=cache_dir)


def verify(data: bytes) -> None:
    """Checks a Mega-Cache blob, standalone file or bundle as populate would, without torch
    and without writing. Raises CorruptionError or InvalidInputError."""
    _core.verify(data, trusted_keys())


def open_store(url: Optional[str] = None) -> "_core.Store":
    """A store by URL (file:///path, redis://host:port/db, or a comma-separated list, local
    first); by default MEGACACHE_STORE, else the local store in MEGACACHE_DIR or
    ~/.cache/megacache. Raises InvalidInputError for a malformed URL."""
    return _core.Store(url or "")


def push(
    path: str | os.PathLike[str], name: Optional[str] = None, *, store: Optional[str] = None
) -> str:
    """Checks the file at `path` (bundle, Mega-Cache or standalone file) and puts it into the
    store under `name` (default: the file's name). Returns the name."""
    data = Path(path).read_bytes()
    verify(data)
    name = name or Path(path).name
    open_store(store).put(name, data)
    return name


def pull(name: str, path: str | os.PathLike[str], *, store: Optional[str] = None) -> bool:
    """Gets `name` from the store into `path`, atomically, after checking it as load() would.
    Returns False on a miss."""
    data = open_store(store).get(name)
    if data is None:
        return False
    verify(data)
    _core.write_file_atomic(os.fspath(path), data)
    return True


def trusted_keys() -> str:
    """The trusted signing keys in force: MEGACACHE_TRUSTED_KEYS (comma-separated hex keys or
    .pub files)."""
    return os.environ.get("MEGACACHE_TRUSTED_KEYS", "")


def _package_level() -> None:
    """Raises UnsupportedTorchError where this torch lacks what packages need."""
    from megacache.torch import surfaces

    surfaces.require_package_level()


def compile(
    fn: Callable[..., Any],
    *,
    package: Optional[str | os.PathLike[str]] = None,
    ignore_source_changes: bool = False,
    **torch_compile_kwargs: Any,
) -> Any:
    """torch.compile(fn, **torch_compile_kwargs) that loads from `package` (a file, an unpacked
    directory, or a store URL such as redis://host:6379/0) when it holds this function, so the
    first call neither traces nor compiles. The result has .save_package(path=package,
    format="binary"|"unpacked") and .load_package(path=package).

    A package that is missing, or built for another environment, function, signature or
    source, never fails the call: the reason is logged (naming the field and both values) and
    fn compiles fresh. The result's .load_package() raises PackageMismatchError instead;
    ignore_source_changes=True accepts changed source. Raises UnsupportedTorchError on a
    torch that lacks what packages need (megacache.enable() degrades there instead)."""
    _package_level()
    from megacache.torch import precompile

    return precompile.compile_function(
        fn,
        os.fspath(package) if package is not None else None,
        ignore_source_changes,
        torch_compile_kwargs,
    )


def enable(store: Optional[str] = None, *, wait_seconds: float = 600.0) -> None:
    """Automatic mode, for every function torch.compile wraps from now on: megacache looks its
    package up in `store` (default MEGACACHE_STORE or the local store; "local,redis://..." for
    a fleet), then in what torch's own DynamoCache saved; a hit runs at once, a miss compiles
    under a claim that makes other processes wait for this compile (until it ends, at most
    wait_seconds) and then publishes. Call it before torch.compile. A package that cannot be
    used is logged and compiled over. Nothing else changes: torch's caching_precompile is on
    only while megacache records (the wrap, and Dynamo's compiles of the function), and
    inside fresh_cache() the store is not used.

    On a torch that lacks a surface packages need (a release newer than docs/compatibility.md
    lists), it runs at Mega-Cache level instead (one bundle of torch's cache artifacts per
    environment: Dynamo traces, Inductor does not compile), or off where even that is missing;
    one warning names the surface, and automatic_stats() says the level."""
    from megacache.torch import automatic

    automatic.enable(store, wait_seconds)


def disable() -> None:
    """Ends automatic mode for functions wrapped from now on; what it compiled is published."""
    from megacache.torch import automatic

    automatic.disable()


def automatic_stats() -> Dict[str, Any]:
    """What automatic mode did in this process ({} when it is off): `level` ("package",
    "mega-cache" or "off"), `degraded_by` (the torch surfaces missing for the package level),
    and its counters: hits, misses, published, refused, and at package level partial_hits,
    guard_misses and refused_<stage>."""
    from megacache.torch import automatic

    return automatic.stats()


def save_package(
    path: str | os.PathLike[str],
    *,
    format: str = "binary",
    sign_with: Optional[str | os.PathLike[str]] = None,
) -> None:
    """Saves every function this process compiled (or loaded) with megacache.compile or
    automatic mode as one package: a file (binary), a directory a person can read and edit
    (unpacked), or a store URL; signed with the key file `sign_with` if given (a signed
    directory lists every file's sha256, so it must be saved again after an edit)."""
    _package_level()
    from megacache.torch import precompile

    precompile.save(
        os.fspath(path),
        format=format,
        keys=None,
        sign_with=os.fspath(sign_with) if sign_with else None,
    )


def load_package(path: str | os.PathLike[str], *, ignore_source_changes: bool = False) -> List[str]:
    """Checks a package file or directory against this environment, writes its kernels and
    cache artifacts, and makes each of its functions load from it when torch.compile wraps
    it next. Returns the functions' qualified names. Raises PackageMismatchError,
    CorruptionError, InvalidInputError or OSError."""
    _package_level()
    from megacache.torch import precompile

    return precompile.load_package(os.fspath(path), ignore_source_changes)


def save_precompiled(
    path: str | os.PathLike[str],
    python_code: Optional[str] = None,
    cache: Optional[bytes] = None,
    *,
    artifact_path: Optional[str | os.PathLike[str]] = None,
    cache_path: Optional[str | os.PathLike[str]] = None,
    sign_with: Optional[str | os.PathLike[str]] = None,
) -> None:
    """Saves a torch.compiler.precompile pair as one megacache file (docs/aot-format.md):
    torch 2.14's `python_code, cache = torch.compiler.precompile(fn, ...)`, or the two files
    torch 2.15's `torch.compiler.precompile.capture(fn, artifact_path=, cache_path=)` wrote.
    The halves must come from one call (the cache's code_hash names the code). Signed with
    the key file `sign_with` if given; `megacache.push` puts the file into a store. Raises
    InvalidInputError for halves that do not belong together, ValueError for the arguments."""
    from megacache.torch import aot

    aot.save(
        os.fspath(path),
        python_code,
        cache,
        artifact_path=os.fspath(artifact_path) if artifact_path is not None else None,
        cache_path=os.fspath(cache_path) if cache_path is not None else None,
        sign_with=os.fspath(sign_with) if sign_with else None,
    )


def load_precompiled(path_or_name: str | os.PathLike[str], *, store: Optional[str] = None) -> Any:
    """torch's runnable for a pair that save_precompiled wrote: the file at `path_or_name`, or
    the entry of that name in `store`. Before any of it runs, the whole pair is checked in
    C++: checksums, the trust policy (MEGACACHE_TRUSTED_KEYS), and that both halves are the
    ones the manifest names. Then torch's own torch.compiler.precompile.load runs it. Raises
    CorruptionError, InvalidInputError, FileNotFoundError (no such entry), or
    UnsupportedTorchError on a torch without that API."""
    from megacache.torch import aot

    if store is not None:
        data = open_store(store).get(os.fspath(path_or_name))
        if data is None:
            raise FileNotFoundError(f"no entry {os.fspath(path_or_name)!r} in {store}")
    else:
        data = Path(path_or_name).read_bytes()
    return aot.load(data)


def standalone_compile(
    gm: Any,
    example_inputs: Sequence[Any],
    *,
    dynamic_shapes: str = "from_graph",
    options: Optional[Dict[str, Any]] = None,
    **kwargs: Any,
) -> Any:
    """torch._inductor.standalone_compile, returning an artifact whose save(path,
    format="binary"|"unpacked") and CompiledArtifact.load(path, format=...) read and write
    torch's own files (binary files in C++)."""
    from megacache.torch import standalone

    return standalone.standalone_compile(
        gm, example_inputs, dynamic_shapes=dynamic_shapes, options=options, **kwargs
    )


def load_standalone(path: str | os.PathLike[str], *, format: str = "binary") -> Any:
    """Loads a standalone_compile artifact that torch or megacache saved; binary files are
    checked and populated in C++. Raises PackageMismatchError for another torch build."""
    from megacache.torch import standalone

    return standalone.CompiledArtifact.load(path, format=format)
