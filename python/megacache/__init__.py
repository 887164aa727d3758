"""megacache: compile-time caching for torch.compile, with a C++ core.

Importing megacache does not import torch; the functions that need torch import the
adapter in megacache.torch when they are called.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional, Tuple

from megacache._core import CorruptionError, InvalidInputError, __version__
from megacache import _core

if TYPE_CHECKING:
    from torch.compiler._cache import CacheInfo

__all__ = [
    "CorruptionError",
    "InvalidInputError",
    "__version__",
    "load",
    "load_cache_artifacts",
    "save",
    "save_cache_artifacts",
    "verify",
]


def save_cache_artifacts() -> Optional[Tuple[bytes, "CacheInfo"]]:
    """Drop-in for torch.compiler.save_cache_artifacts(): (bytes, CacheInfo), or None when
    nothing was ever recorded. Serializing runs in C++ and costs only what is new."""
    from megacache import torch as adapter

    return adapter.save_cache_artifacts()


def load_cache_artifacts(serialized_artifacts: bytes) -> Optional["CacheInfo"]:
    """Drop-in for torch.compiler.load_cache_artifacts(): writes the artifacts into torch's
    cache dir and returns CacheInfo. Like torch, a blob that cannot be loaded (corrupt,
    refused, or a disk error) logs a warning and returns None; load() raises instead."""
    from megacache import torch as adapter

    return adapter.load_cache_artifacts(serialized_artifacts)


def save(path: str | os.PathLike[str]) -> Optional["CacheInfo"]:
    """Saves everything this process compiled (save_cache_artifacts) to `path`, atomically.
    Returns the CacheInfo, or None (and writes nothing) when nothing was recorded."""
    from megacache import torch as adapter

    return adapter.save(os.fspath(path))


def load(path: str | os.PathLike[str], *, cache_dir: Optional[str] = None) -> "CacheInfo":
    """Populates torch's cache dir (or `cache_dir`) from a Mega-Cache file or a
    standalone_compile binary file. Raises CorruptionError, InvalidInputError or OSError."""
    from megacache import torch as adapter

    return adapter.load(os.fspath(path), cache_dir=cache_dir)


def verify(data: bytes) -> None:
    """Checks a Mega-Cache blob as populate would, without torch and without writing.
    Raises CorruptionError or InvalidInputError."""
    _core.verify(data)


