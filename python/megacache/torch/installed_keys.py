"""What torch and Triton compute from the installed software on every start, carried in packages.

Triton's `triton_key()` hashes Triton's compiler, backends, language and libtriton (about 0.36 s
on the H200 host, in every fresh process, before its first kernel loads). A package records the
key beside the identity of Triton's files (`_core.installed_identity`: each file's path, mode,
size and mtime). A process whose Triton has the same identity uses the recorded key instead of
hashing again; a Triton installed elsewhere, changed or touched has another identity and
computes its own. The fields travel in the package's fingerprint, so they are signed and checked
with the rest of it (docs/installed-keys.md).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

from megacache import _core

log = logging.getLogger("megacache")

TRITON_KEY = "triton_key"
TRITON_IDENTITY = "triton_identity"
# Fingerprint values are capped at 64 KiB (docs/bundle-format.md); Triton's key is about 10 KiB.
_MAX_VALUE = 60_000
# Where Triton defines triton_key: runtime.cache since 3.3, compiler.compiler before.
_DEFINED_IN = ("triton.runtime.cache", "triton.compiler.compiler")

# The key this process took from a package, so that a package it makes records it again.
_seeded: Optional[Tuple[str, str]] = None


@functools.lru_cache(maxsize=None)
def _triton_identity() -> Optional[str]:
    spec = importlib.util.find_spec("triton")  # finds it without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        return _core.installed_identity(list(spec.submodule_search_locations)[0])
    except OSError as error:
        log.debug("megacache: no identity for Triton's files: %s", error)
        return None


def _triton_key_function() -> Optional[Callable[[], str]]:
    """Triton's own cached triton_key, when Triton is imported."""
    for name in _DEFINED_IN:
        found = getattr(sys.modules.get(name), "triton_key", None)
        if found is not None and hasattr(found, "cache_info"):
            return found
    return None


def recorded() -> List[Tuple[str, str]]:
    """The fields a package made now records: Triton's key and identity, when this process
    computed the key (a CUDA compile does) or took it from a package."""
    if _seeded is not None:
        return [(TRITON_IDENTITY, _seeded[0]), (TRITON_KEY, _seeded[1])]
    triton_key = _triton_key_function()
    if triton_key is None or triton_key.cache_info().currsize == 0:
        return []
    identity, value = _triton_identity(), triton_key()
    if identity is None or len(value) > _MAX_VALUE:
        return []
    return [(TRITON_IDENTITY, identity), (TRITON_KEY, value)]


def seed(fingerprint: Dict[str, str]) -> bool:
    """Uses a package's recorded Triton key when this Triton has the identity it was recorded
    under and has not computed its key yet. Returns whether it did."""
    global _seeded
    value, identity = fingerprint.get(TRITON_KEY), fingerprint.get(TRITON_IDENTITY)
    if not value or not identity or _seeded is not None:
        return False
    triton_key = _triton_key_function()
    if triton_key is None or triton_key.cache_info().currsize != 0 or identity != _triton_identity():
        return False

    def recorded_triton_key() -> str:
        return value

    recorded_triton_key.cache_clear = triton_key.cache_clear  # type: ignore[attr-defined]
    # Every module that bound Triton's function by name (Triton's compiler, torch's
    # triton_compat) gets the recorded key; modules that import it later find it too.
    for name, module in list(sys.modules.items()):
        if name.startswith(("triton", "torch")) and getattr(module, "triton_key", None) is triton_key:
            setattr(module, "triton_key", recorded_triton_key)
    _seeded = (identity, value)
    return True


def fingerprint_with_recorded(fingerprint: List[Tuple[str, Any]]) -> List[Tuple[str, Any]]:
    """`fingerprint` (sorted by name) with what `recorded` adds, still sorted."""
    return sorted([*fingerprint, *recorded()])
