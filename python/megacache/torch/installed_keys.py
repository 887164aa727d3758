"""What torch and Triton compute from the installed software on every start, carried in packages.

Triton's `triton_key()` hashes Triton's compiler, backends, language and libtriton (about 0.36 s
on the H200 host); torch's `torch_key()` hashes torch's Python sources (about 0.25 s, and every
kernel a package loads is keyed with it). A package records each key beside the identity of the
files it hashes (`_core.installed_identity`: each file's path, mode, size and mtime). A process
whose files have the same identity uses the recorded key instead of hashing again; a package
installed elsewhere, changed or touched has another identity and computes its own. The fields
travel in the package's fingerprint, so they are signed and checked with the rest of it
(docs/installed-keys.md).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from megacache import _core

log = logging.getLogger("megacache")

# Fingerprint values are capped at 64 KiB (docs/bundle-format.md); Triton's key is about 10 KiB.
_MAX_VALUE = 60_000


@functools.lru_cache(maxsize=None)
def _root(package: str) -> Optional[str]:
    spec = importlib.util.find_spec(package)  # finds it without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


@functools.lru_cache(maxsize=None)
def _identity_beneath(root: str) -> Optional[str]:
    try:
        return _core.installed_identity(root)
    except OSError as error:
        log.debug("megacache: no identity for the files beneath %s: %s", root, error)
        return None


# Taking the identities ahead of the load that needs them (take_identities_in_background).
_taking: Optional[threading.Thread] = None
_taking_lock = threading.Lock()


def take_identities_in_background() -> None:
    """Starts taking the identity of each package whose key a package may carry, on a thread of
    its own: the walk over torch's 14,000 files (25 ms on the H200 host, 75 ms on 2 cores; the C++
    walk releases the GIL) then overlaps the imports and the trace instead of delaying the first
    call. Idempotent; `_identity` waits for it."""
    global _taking
    with _taking_lock:
        if _taking is not None:
            return
        roots = [root for root in (_root(key.package) for key in _KEYS) if root is not None]
        # Not a daemon: Python ends a daemon thread that wakes up during shutdown by unwinding
        # it, and unwinding through the binding's GIL release aborts the process. The walk is
        # short, so an exit right after the hooks go in waits for it instead.
        _taking = threading.Thread(
            target=lambda: [_identity_beneath(root) for root in roots],
            name="megacache-installed-identity",
        )
        _taking.start()


def _identity(package: str) -> Optional[str]:
    if _taking is not None:
        _taking.join()
    root = _root(package)
    return None if root is None else _identity_beneath(root)


class _InstalledKey:
    """One key: the package whose files it hashes, the modules that may define it, and how its
    value reads as fingerprint text."""

    def __init__(
        self,
        package: str,
        defined_in: Tuple[str, ...],
        to_text: Callable[[Any], str],
        from_text: Callable[[str], Any],
    ) -> None:
        self.package = package
        self.key_field, self.identity_field = f"{package}_key", f"{package}_identity"
        self.defined_in = defined_in
        self.to_text, self.from_text = to_text, from_text
        # The (identity, text) this process took from a package, so that a package it makes
        # records it again.
        self.seeded: Optional[Tuple[str, str]] = None

    def function(self) -> Optional[Callable[[], Any]]:
        """The package's own cached key function, when its module is imported."""
        for name in self.defined_in:
            found = getattr(sys.modules.get(name), self.key_field, None)
            if found is not None and (hasattr(found, "cache_info") or hasattr(found, "set")):
                return found
        return None

    @staticmethod
    def computed(function: Callable[[], Any]) -> Optional[bool]:
        """Whether the function holds its value already; None for a cache of unknown form."""
        info = getattr(function, "cache_info", None)
        if info is not None:  # functools.cache
            return info().currsize != 0
        # torch's own caches with a set(): the value lives in the closure's `_cache`.
        cells = dict(zip(function.__code__.co_freevars, function.__closure__ or ()))
        if "_cache" not in cells:
            return None
        value = cells["_cache"].cell_contents
        if isinstance(value, list):  # codecache.torch_key_cache (torch 2.11): a list of one
            return bool(value)
        # torch.utils._functools.prefetchable_cache (later torch): a sentinel until computed.
        sentinel = getattr(sys.modules.get("torch.utils._functools"), "_cache_sentinel", None)
        return None if sentinel is None else value is not sentinel

    def recorded(self) -> List[Tuple[str, str]]:
        if self.seeded is not None:
            return [(self.identity_field, self.seeded[0]), (self.key_field, self.seeded[1])]
        function = self.function()
        if function is None or not self.computed(function):
            return []
        identity, text = _identity(self.package), self.to_text(function())
        if identity is None or len(text) > _MAX_VALUE:
            return []
        return [(self.identity_field, identity), (self.key_field, text)]

    def seed(self, fingerprint: Dict[str, str]) -> bool:
        text, identity = fingerprint.get(self.key_field), fingerprint.get(self.identity_field)
        if not text or not identity or self.seeded is not None:
            return False
        function = self.function()
        if (
            function is None
            or self.computed(function) is not False
            or identity != _identity(self.package)
        ):
            return False
        try:
            value = self.from_text(text)
        except ValueError:
            return False
        if hasattr(function, "set"):
            # torch's prefetchable_cache takes a value through its own door.
            try:
                function.set(value)
            except (RuntimeError, AssertionError):  # computed meanwhile
                return False
        else:
            self._bind(function, value)
        self.seeded = (identity, text)
        return True

    def _bind(self, function: Callable[[], Any], value: Any) -> None:
        """Gives the recorded value to every module that bound the lru-cached function by name
        (Triton's compiler, torch's triton_compat); modules that import it later find it too."""

        def recorded_key() -> Any:
            return value

        recorded_key.cache_clear = function.cache_clear  # type: ignore[attr-defined]
        for name, module in list(sys.modules.items()):
            if (
                name.startswith(("triton", "torch"))
                and getattr(module, self.key_field, None) is function
            ):
                setattr(module, self.key_field, recorded_key)


# Where each key is defined: Triton's in runtime.cache since 3.3, compiler.compiler before.
_KEYS = (
    _InstalledKey("triton", ("triton.runtime.cache", "triton.compiler.compiler"), str, str),
    _InstalledKey("torch", ("torch._inductor.codecache",), bytes.hex, bytes.fromhex),
)


def recorded() -> List[Tuple[str, str]]:
    """The fields a package made now records: each key with its identity, when this process
    computed the key (a compile does) or took it from a package."""
    return [field for key in _KEYS for field in key.recorded()]


def seed(fingerprint: Dict[str, str]) -> List[str]:
    """Uses a package's recorded keys where the files they hash have the identity they were
    recorded under and the key is not computed yet. Returns the names of the keys it seeded."""
    return [key.key_field for key in _KEYS if key.seed(fingerprint)]


def fingerprint_with_recorded(fingerprint: List[Tuple[str, Any]]) -> List[Tuple[str, Any]]:
    """`fingerprint` (sorted by name) with what `recorded` adds, still sorted."""
    return sorted([*fingerprint, *recorded()])
