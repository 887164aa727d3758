"""megacache.enable(): automatic mode, at the level this torch allows.

surfaces.level() says which: with every surface packages need, the package level
(`precompile._AutomaticMode`); where torch lacks one (a torch newer than megacache knows), the
Mega-Cache level below; where it lacks even what the Mega-Cache needs, off. One warning names
what is missing, and stats() says the level and why, so a slow start is never a mystery.
"""

from __future__ import annotations

import atexit
import functools
import logging
import threading
from typing import Any, Callable, Dict, Optional, Set, Tuple

import torch

from megacache import _core
from megacache.torch import surfaces

log = logging.getLogger("megacache")

_lock = threading.RLock()
_level: Optional[str] = None  # the level of the mode enabled now; None when disabled
_warned = False
# torch's own torch.compile, before the Mega-Cache level puts its wrapper in its place.
_torch_compile = torch.compile


class _MegaCacheMode:
    """Automatic mode at Mega-Cache level: one bundle of torch's cache artifacts per
    environment, under `mega-cache-<hex>` (docs/store-format.md). enable() loads it into
    torch's cache dir, so compiles hit torch's FX graph and autotune caches: Dynamo still
    traces, Inductor does not compile. A call that made torch record artifacts this process
    had not published publishes the bundle again, as does disable() and exit. There is no
    claim: every process that misses compiles, none waits."""

    def __init__(self, store_url: str) -> None:
        from megacache import CACHE_ERRORS
        from megacache.torch import mega_cache

        self.store = _core.Store(store_url)
        self.name = _core.mega_cache_store_name(list(mega_cache.environment()))
        self.counts: Dict[str, int] = {"hits": 0, "misses": 0, "published": 0, "refused": 0}
        self.published: Set[Tuple[str, str]] = set()  # (type, key) the store holds for us
        self.seen = 0  # torch's recorded artifacts at the last look: a call that adds none is free
        try:
            value = self.store.get(self.name)
            if value is None:
                self.counts["misses"] += 1
            else:
                mega_cache.load_bytes(value)
                mega_cache.keep_loaded(value)  # a publish from this process carries them too
                recorded = mega_cache.recorded()
                self.published = set(recorded[1]) if recorded else set()
                self.counts["hits"] += 1
            self.seen = mega_cache.recorded_count()
        except CACHE_ERRORS as error:
            self.counts["refused"] += 1
            log.warning("megacache: not loading the Mega-Cache bundle %s: %s", self.name, error)

    def publish_new(self) -> None:
        """Publishes what torch recorded, if it holds an artifact the store lacks. Never
        raises into the job: a failed publish costs other processes a compile, and is tried
        again only once torch records more."""
        from megacache import CACHE_ERRORS
        from megacache.torch import mega_cache

        count = mega_cache.recorded_count()
        if count == self.seen:  # after every call of a compiled function: keep it cheap
            return
        self.seen = count
        try:
            recorded = mega_cache.recorded()
            if recorded is None or not set(recorded[1]) - self.published:
                return
            blob, artifacts = recorded
            self.store.put(self.name, _core.bundle_of(blob, mega_cache.current_fingerprint()))
            self.published |= set(artifacts)
            self.counts["published"] += 1
        except CACHE_ERRORS as error:
            log.warning(
                "megacache: could not publish the Mega-Cache bundle %s: %s", self.name, error
            )


_mega_cache_mode: Optional[_MegaCacheMode] = None


def _publish_after(compiled: Callable[..., Any]) -> Callable[..., Any]:
    depth = threading.local()

    @functools.wraps(compiled)
    def call(*args: Any, **kwargs: Any) -> Any:
        if getattr(depth, "value", 0):
            return compiled(*args, **kwargs)
        depth.value = 1
        try:
            return compiled(*args, **kwargs)
        finally:
            depth.value = 0
            mode = _mega_cache_mode
            if mode is not None:
                mode.publish_new()

    return call


@functools.wraps(_torch_compile)
def _compile_and_publish(model: Any = None, **kwargs: Any) -> Any:
    """torch.compile at Mega-Cache level: torch's own, with each outermost call of the result
    followed by a publish of what it recorded."""
    if model is None:
        return lambda m: _compile_and_publish(m, **kwargs)
    compiled = _torch_compile(model, **kwargs)
    if _mega_cache_mode is None:
        return compiled
    if isinstance(compiled, torch.nn.Module):
        compiled.forward = _publish_after(compiled.forward)
        return compiled
    return _publish_after(compiled)


def _close_at_exit() -> None:
    mode = _mega_cache_mode
    if mode is not None:
        mode.publish_new()


def enable(store: Optional[str], wait_seconds: float) -> None:
    global _level, _warned, _mega_cache_mode
    level, why = surfaces.level()
    with _lock:
        if why and not _warned:
            needs, runs = (
                ("packages", "runs at Mega-Cache level")
                if level == surfaces.MEGA_CACHE_LEVEL
                else ("Mega-Cache drop-ins", "is off")
            )
            log.warning(
                "megacache: torch %s lacks what megacache's %s need: %s; automatic mode %s "
                "(docs/compatibility.md).",
                torch.__version__,
                needs,
                "; ".join(why),
                runs,
            )
            _warned = True
        disable()
        _level = level
        if level == surfaces.PACKAGE_LEVEL:
            from megacache.torch import precompile

            precompile.enable(store, wait_seconds)
        elif level == surfaces.MEGA_CACHE_LEVEL:
            _mega_cache_mode = _MegaCacheMode(store or _core.default_store_url())
            if torch.compile is not _compile_and_publish:
                torch.compile = _compile_and_publish
                atexit.register(_close_at_exit)


def disable() -> None:
    global _level, _mega_cache_mode
    with _lock:
        if _level == surfaces.PACKAGE_LEVEL:
            from megacache.torch import precompile

            precompile.disable()
        elif _mega_cache_mode is not None:
            _mega_cache_mode.publish_new()
        _mega_cache_mode = None
        _level = None


def stats() -> Dict[str, Any]:
    """What automatic mode did in this process; {} when it is off. `level` is "package",
    "mega-cache" or "off", and `degraded_by` lists the torch surfaces that kept it from the
    package level. At package level: hits (first calls served by an installed entry),
    partial_hits (served, but frames the package left out were traced again), misses,
    published, refused (with refused_<stage> per failing step: read, unpickle, initialize,
    install, first_call) and guard_misses (installed, but Dynamo traced the first call again).
    At Mega-Cache level: hits (the environment's bundle was loaded at enable()), misses,
    published, refused."""
    with _lock:
        if _level is None:
            return {}
        _, why = surfaces.level()
        counts: Dict[str, Any] = {}
        if _level == surfaces.PACKAGE_LEVEL:
            from megacache.torch import precompile

            counts = precompile.automatic_stats()
        elif _mega_cache_mode is not None:
            counts = dict(_mega_cache_mode.counts)
        return {"level": _level, "degraded_by": list(why), **counts}
