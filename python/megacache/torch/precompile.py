"""Precompile packages and automatic mode: torch's precompile machinery on megacache's core.

torch records, with `torch._dynamo.config.caching_precompile` on, one Dynamo cache entry per
compiled function (keyed by a hash of its qualified name and first line) and one bundled
backend artifact per compiled graph. This module copies them, as pickles plus the facts the
core checks, into the C++ PrecompileContext, which stitches and writes packages. On load the
core validates a package before anything is unpickled; then torch's own CompilePackage
installs the entry, so the first call runs without a Dynamo trace or an Inductor compile.

torch asks `torch._dynamo.package.DynamoCache` for an entry whenever torch.compile wraps a
function; megacache puts its own DynamoCache there, which answers from an explicit package
(megacache.compile), from the store (automatic mode), or as torch's would.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import importlib
import inspect
import logging
import os
import pickle
import sys
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import torch
from torch._dynamo import package as dynamo_package
from torch._dynamo import precompile_context as torch_precompile_context
from torch._dynamo.package import CompilePackage, DiskDynamoCache, PrecompileCacheEntry
from torch._dynamo.utils import counters

from megacache import _core
from megacache.torch import devices, hooks, installed_keys, warm_up
from megacache.torch.mega_cache import environment

log = logging.getLogger("megacache")

# Everything this process loaded or compiled, as pickles: what a package is made of.
_context = _core.PrecompileContext()
# Backend ids already copied from torch's PrecompileContext (their pickles do not change).
_copied_backends: Set[str] = set()
# source key -> the live function, for identity and source checks.
_functions: Dict[str, Callable[..., Any]] = {}
# source key -> where megacache.compile() was told to load that function from.
_explicit: Dict[str, "_PackageSource"] = {}
# Compiled libraries megacache wrote after checking CPU, compiler and torch: torch's vector-ISA
# probe need not dlopen them again in a child process.
_verified_libraries: Set[str] = set()
_lock = threading.RLock()
# torch's own torch.compile, before enable() puts its wrapper in its place.
_torch_compile = torch.compile


# --- identity and environment ---------------------------------------------------------------


def _innermost(fn: Callable[..., Any]) -> Callable[..., Any]:
    from torch._dynamo.eval_frame import innermost_fn

    if isinstance(fn, torch.nn.Module):
        fn = fn.forward
    return innermost_fn(fn)


def source_key(fn: Callable[..., Any]) -> str:
    """torch's source_id of a function (CompilePackage.source_id_from_fn)."""
    return CompilePackage.source_id_from_fn(_innermost(fn))


def packageable_key(fn: Any) -> Optional[str]:
    """The source key of what torch.compile was given, or None for a callable torch cannot
    package (a functools.partial, an object with __call__): megacache leaves those to torch."""
    try:
        return source_key(fn)
    except (AttributeError, TypeError):
        return None


# function -> its identity. Each function's source is read once: a load names its store entry
# and checks its package with the same identity, which stays that of the code that runs even if
# its file changes on disk afterwards. Keyed by function, not code: functools.wraps gives each
# wrapper of a decorator its own name over one shared code object.
_identities: "weakref.WeakKeyDictionary[Callable[..., Any], Dict[str, Any]]" = (
    weakref.WeakKeyDictionary()
)


def identity(fn: Callable[..., Any]) -> Dict[str, Any]:
    inner = _innermost(fn)
    function = getattr(
        inner, "__func__", inner
    )  # a module's forward: one function for every instance
    known = _identities.get(function)
    if known is not None:
        return dict(known)
    code = inner.__code__
    try:
        signature = str(inspect.signature(inner))
    except (TypeError, ValueError):
        signature = ""
    try:
        source_sha256 = hashlib.sha256(inspect.getsource(inner).encode()).hexdigest()
    except (OSError, TypeError):
        source_sha256 = ""
    _identities[function] = {
        "qualname": inner.__qualname__,
        "module": getattr(inner, "__module__", "") or "",
        "first_line": code.co_firstlineno,
        "signature": signature,
        "source_sha256": source_sha256,
    }
    return dict(_identities[function])


def _module_source(module: str) -> Optional[str]:
    loaded = sys.modules.get(module)
    if loaded is None:
        return None
    try:
        return "".join(inspect.getsourcelines(loaded)[0])
    except (OSError, TypeError):
        return None


# --- from torch to the core -----------------------------------------------------------------


def _torch_context() -> Any:
    return torch_precompile_context.PrecompileContext


def _copy_from_torch() -> None:
    """Copies torch's recorded entries and new backends into the C++ context."""
    torch_context = _torch_context()
    for key, entry in list(torch_context._dynamo_cache_entries.items()):
        fn = _functions.get(key)
        function = (
            identity(fn)
            if fn is not None
            else {
                "qualname": entry.fn_name or "",
                "module": "",
                "first_line": int(entry.fn_first_lineno or 0),
                "signature": "",
                "source_sha256": "",
            }
        )
        _context.record_dynamo_entry(
            function,
            entry.device_type,
            [(list(code.function_names), list(code.backend_ids)) for code in entry.codes],
            [
                (s.module, s.firstlineno, s.lastlineno, s.checksum)
                for s in entry.source_info.inlined_sources
            ],
            pickle.dumps(entry),
        )
    for backend_id, artifact in list(torch_context._backend_artifacts_by_key.items()):
        if backend_id not in _copied_backends:
            _context.record_backend(backend_id, pickle.dumps(artifact))
            _copied_backends.add(backend_id)


def _torch_cache_dir() -> str:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return cache_dir()


def _triton_cache_dirs() -> List[str]:
    """Where Triton looks for the modules it compiles with gcc (its CUDA driver helper, kernel
    launchers): its cache dir now, its default under TRITON_HOME, and the dir torch points
    TRITON_CACHE_DIR at once it loads a kernel, since a module is built wherever the variable
    points at that moment. Empty when Triton is not imported or predates its knobs (3.4)."""
    cache = getattr(getattr(sys.modules.get("triton"), "knobs", None), "cache", None)
    if cache is None or not hasattr(cache, "get_triton_dir"):
        return []
    from torch._inductor.runtime.cache_dir_utils import triton_cache_dir

    device = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return sorted({cache.dir, cache.get_triton_dir("cache"), triton_cache_dir(device)})


# When megacache came into this process (enable() imports this module), in the seconds CUDA's
# JIT cache entries are stamped with: the entries written since are this process's builds.
_started_unix = int(time.time())


def _cuda_jit_cache() -> Tuple[str, str]:
    """(CUDA's JIT cache dir, the NVIDIA driver's version), or ("", "") where the driver keeps
    no cache (CUDA_CACHE_DISABLE) or its version cannot be read, so that no entry could be
    checked against it. The dir is CUDA_CACHE_PATH, by default ~/.nv/ComputeCache."""
    driver = _core.cuda_driver_version()
    if not driver or os.environ.get("CUDA_CACHE_DISABLE", "0") not in ("", "0"):
        return "", ""
    directory = os.environ.get("CUDA_CACHE_PATH") or os.path.join(
        os.path.expanduser("~"), ".nv", "ComputeCache"
    )
    return directory, driver


def build_package(keys: Optional[List[str]] = None) -> "_core.Package":
    """What this process compiled or loaded (only `keys`, if given), stitched into a package,
    with the Triton modules this process loaded and the CUDA JIT cache entries the driver
    wrote since it started (cuDNN's runtime-compiled kernels), under the driver's version."""
    from megacache.torch import mega_cache as adapter

    jit_dir, driver = _cuda_jit_cache()
    fingerprint = installed_keys.fingerprint_with_recorded(list(environment()))
    if driver:
        fingerprint = sorted([*fingerprint, ("cuda_driver", driver)])
    with _lock:
        _copy_from_torch()
        recorded = adapter.recorded()
        package = _context.package(
            fingerprint,
            _torch_cache_dir(),
            recorded[0] if recorded else b"",
            keys or [],
            _triton_cache_dirs(),
            jit_dir,
            _started_unix,
        )
    return package


# --- from the core to torch -----------------------------------------------------------------


def _install_probe_shortcut() -> None:
    from torch._inductor import cpu_vec_isa

    original = getattr(cpu_vec_isa.VecISA, "_probe_load", None)  # torch 2.13 and later
    if original is None or getattr(original, "_megacache", False):
        return

    @functools.wraps(original)
    def probe_load(self: Any, output_path: str) -> bool:
        if os.path.realpath(output_path) in _verified_libraries:
            return True
        return original(self, output_path)

    probe_load._megacache = True  # type: ignore[attr-defined]
    cpu_vec_isa.VecISA._probe_load = probe_load


def _serve_installed_kernels(cache_dir: str, paths: List[str]) -> None:
    """torch names a C++ kernel's library after a hash of its code and compile command,
    `<cache dir>/<key[1:3]>/<key>.main.so`, and loads the file it finds there. Before it looks,
    though, it preprocesses the kernels' precompiled header (`g++ -E`, in every process) and
    builds that header where the machine's temporary dir has none (160 MB, 10 s on 2 cores on a
    fresh machine): work that only a compile uses. So each kernel library the package installed
    goes into torch's table of loaded libraries under its key, as torch's loader of that file.
    A lookup of that key (torch computed the same code and command) loads the same file torch
    would; any other key takes torch's own path, header and all."""
    from torch._inductor import codecache

    if not _install_removed_library_check(codecache.CppCodeCache):
        return  # a torch that looks its libraries up otherwise: its own path, as before
    tables = [
        table
        for table in (
            getattr(codecache, name, None)
            for name in ("CppCodeCache", "CppPythonBindingsCodeCache", "CppWrapperCodeCache")
        )
        if table is not None and isinstance(vars(table).get("cache"), dict)
    ]
    for path in paths:
        name = os.path.basename(path)
        if not name.endswith(".main.so"):
            continue  # a vector-ISA probe library: torch looks it up by path, not by key
        key = name[: -len(".main.so")]
        library = os.path.join(cache_dir, path)
        for table in tables:
            table.cache.setdefault(key, _InstalledLibrary(table, library, key))


class _InstalledLibrary:
    """torch's loader of one library megacache installed: loaded on the first call, then the
    same object."""

    def __init__(self, table: Any, path: str, key: str) -> None:
        self.table, self.path, self.key = table, path, key
        self.library: Any = None

    def __call__(self) -> Any:
        if self.library is None:
            self.library = self.table._load_library(self.path, self.key)
        return self.library


def _install_removed_library_check(base: Any) -> bool:
    """torch builds a library again when its file is gone (a cleaner of the cache or temporary
    dir removed it); so when a lookup finds an installed library not yet loaded whose file is
    gone, the key leaves the table and the lookup runs again as torch's own. False where torch
    looks libraries up otherwise (2.13 and 2.15 are tested)."""
    lookup = vars(base).get("load_async")
    if not isinstance(lookup, classmethod):
        return False
    original = lookup.__func__
    if getattr(original, "_megacache", False):
        return True

    @functools.wraps(original)
    def load_async(cls: Any, *args: Any, **kwargs: Any) -> Any:
        found = original(cls, *args, **kwargs)
        if (
            isinstance(found, _InstalledLibrary)
            and found.library is None
            and not os.path.exists(found.path)
        ):
            if cls.cache.get(found.key) is found:
                del cls.cache[found.key]
            found = original(cls, *args, **kwargs)
        return found

    load_async._megacache = True  # type: ignore[attr-defined]
    base.load_async = classmethod(load_async)
    return True


def install_files(package: "_core.Package") -> None:
    """Writes the package's kernels and Mega-Cache artifacts into torch's cache dir, its
    Triton modules where Triton looks for them and its CUDA JIT cache entries where the driver
    does (for the same driver), and takes the keys it recorded of the installed software
    (installed_keys)."""
    cache_dir = _torch_cache_dir()
    triton_dirs: List[str] = []
    if package.triton_module_paths:
        importlib.import_module("triton")  # its knobs name the dirs; the package's kernels need it
        triton_dirs = _triton_cache_dirs()
    jit_dir, driver = _cuda_jit_cache() if package.cuda_jit_paths else ("", "")
    package.populate(cache_dir, triton_dirs, jit_dir, driver)
    installed_keys.seed(dict(package.fingerprint))
    if package.kernel_paths:
        for path in package.kernel_paths:
            _verified_libraries.add(os.path.realpath(os.path.join(cache_dir, path)))
        _install_probe_shortcut()
        _serve_installed_kernels(cache_dir, package.kernel_paths)


def entry_for(
    package: "_core.Package", key: str, *, ignore_source_changes: bool = False
) -> Tuple[PrecompileCacheEntry, Optional[devices.Move]]:
    """torch's PrecompileCacheEntry for one function of a checked package, moved to this
    process's CUDA device (megacache.torch.devices), and the move its guards need. Raises
    devices.CannotMove for code megacache cannot move here."""
    function = package.function(key)
    dynamo = pickle.loads(function["dynamo"])
    for code_index, _backend_id, reason in function["bypassed"]:
        dynamo.codes[code_index].bypassed = True
        log.warning("megacache: %s: %s", function["qualname"], reason)
    if ignore_source_changes:
        dynamo.source_info.inlined_sources = set()
    pickles = function["backends"]
    backends = {backend_id: pickle.loads(pickled) for backend_id, pickled in pickles.items()}
    move = devices.move_for(backends)
    if move is not None:
        backends = {
            backend_id: devices.moved_backend(pickled, move)
            for backend_id, pickled in pickles.items()
        }
    for backend_id, pickled in pickles.items():
        # Saving again must not need torch to have recorded what came from a package.
        _context.record_backend(backend_id, pickled)
        _copied_backends.add(backend_id)
    return PrecompileCacheEntry(dynamo=dynamo, backends=backends), move


def check(
    package: "_core.Package", fn: Optional[Callable[..., Any]], ignore_source_changes: bool
) -> None:
    package.check(
        list(environment()),
        identity(fn) if fn is not None else None,
        ignore_source_changes,
        _module_source,
    )


class _PackageSource:
    """Where megacache.compile() loads one function from: a path or a store URL."""

    def __init__(self, location: str, ignore_source_changes: bool) -> None:
        self.location = location
        self.ignore_source_changes = ignore_source_changes

    def is_store(self) -> bool:
        return "://" in self.location

    def read(self, key: str) -> Optional["_core.Package"]:
        from megacache import trusted_keys

        if self.is_store():
            data = _core.Store(self.location).get(store_name(key))
            return None if data is None else _core.Package.from_bytes(data, trusted_keys())
        if not os.path.exists(self.location):
            return None
        return _core.Package.read(self.location, trusted_keys())


# --- the load path: every failure is a logged, counted fallback to a normal compile ----------

# Counts of what the load path did, shared by megacache.compile and automatic mode.
_stats: Dict[str, int] = {
    "hits": 0,
    "partial_hits": 0,
    "misses": 0,
    "published": 0,
    "refused": 0,
    "guard_misses": 0,
    "moved": 0,
}


class _Pending:
    """An entry handed to torch, until its first call shows whether it served."""

    def __init__(self, installation: hooks.Installation, qualname: str, partial: bool) -> None:
        self.installation = installation
        self.qualname = qualname
        self.partial = partial  # some frames were left out of the package: they trace again


# source key -> the entry handed to torch, until its first call.
_pending: Dict[str, _Pending] = {}
# Source keys Dynamo traced in this process (torch recorded a compile for them).
_traced: Set[str] = set()


def _refuse(key: str, qualname: str, stage: str, error: BaseException) -> None:
    log.warning(
        "megacache: not using the package of %s (%s failed: %s: %s); compiling it instead",
        qualname,
        stage,
        type(error).__name__,
        error,
    )
    _stats["refused"] += 1
    _stats[f"refused_{stage}"] = _stats.get(f"refused_{stage}", 0) + 1
    counters["dynamo_cache"]["dynamo_cache_error"] += 1


def _load_entry(
    fn: Callable[..., Any],
    key: str,
    read: Callable[[], Optional["_core.Package"]],
    ignore_source_changes: bool,
) -> Optional[PrecompileCacheEntry]:
    """The one load path: reads and checks the package (C++), writes its files, unpickles the
    entry and hands it to torch under the safety net (`_guarded`). Whatever fails, the function
    compiles as if there had been no package."""
    from megacache import CACHE_ERRORS

    qualname = getattr(_innermost(fn), "__qualname__", key)
    try:
        package = read()
        if package is None:
            _stats["misses"] += 1
            return None
        check(package, fn, ignore_source_changes)
        install_files(package)
    except CACHE_ERRORS as error:
        _refuse(key, qualname, "read", error)
        return None
    try:
        entry, move = entry_for(package, key, ignore_source_changes=ignore_source_changes)
    except devices.CannotMove as error:
        _refuse(key, qualname, "device", error)
        return None
    except (
        Exception
    ) as error:  # unpickling runs the pickles' own code: any failure is the package's
        _refuse(key, qualname, "unpickle", error)
        return None
    if move is not None:
        _stats["moved"] += 1
        log.info("megacache: %s: moved its package from cuda:%d to cuda:%d", qualname, *move)
    counters["dynamo_cache"]["dynamo_cache_hit"] += 1
    warm_up.start(entry.backends.values())  # while torch installs the entry
    return _guarded(entry, key, qualname, move)


def _guarded(
    entry: PrecompileCacheEntry, key: str, qualname: str, move: Optional[devices.Move] = None
) -> PrecompileCacheEntry:
    """`entry` as torch installs it, with its install undone if it fails (megacache.torch.hooks),
    its guards moved with its backends, and its first call watched (`_watch_calls`)."""
    installation = hooks.Installation(
        lambda failed: _refuse(key, qualname, failed.stage, failed.cause), move
    )
    hooks.mark(entry.dynamo, installation)
    partial = any(code.bypassed for code in entry.dynamo.codes)
    _pending[key] = _Pending(installation, qualname, partial)
    return PrecompileCacheEntry(
        dynamo=entry.dynamo, backends=hooks.Backends(entry.backends, installation)
    )


def _first_call_done(key: str, pending: _Pending) -> None:
    """After the first call through an installed entry: a hit only if Dynamo did not trace."""
    if pending.installation.compile_package is None:  # refused on the way: counted there
        return
    if key not in _traced:
        _stats["hits"] += 1
    elif pending.partial:
        _stats["partial_hits"] += 1
        log.warning(
            "megacache: %s started from its package; the frames the package left out "
            "were traced again",
            pending.qualname,
        )
    else:
        _stats["guard_misses"] += 1
        log.warning(
            "megacache: the package of %s was installed but its guards did not match the "
            "first call, so Dynamo traced it again",
            pending.qualname,
        )


# source key -> the torch.compile arguments it was last wrapped with (compile_variant).
_variants: Dict[str, str] = {}


def compile_variant(torch_compile_kwargs: Dict[str, Any]) -> str:
    """What of torch.compile's arguments changes the compiled code. A function's packages are
    kept per variant, so a wrap with another backend, mode, options, `dynamic` or `fullgraph`
    never installs code compiled for another one."""
    backend = torch_compile_kwargs.get("backend", "inductor")
    if not isinstance(backend, str):
        backend = getattr(backend, "__qualname__", type(backend).__qualname__)
    options = sorted((torch_compile_kwargs.get("options") or {}).items())
    return (
        f"backend={backend};mode={torch_compile_kwargs.get('mode')};options={options!r};"
        f"dynamic={torch_compile_kwargs.get('dynamic')};"
        f"fullgraph={torch_compile_kwargs.get('fullgraph', False)}"
    )


def store_name(key: str) -> str:
    """The store name of one function's package in this environment, for the torch.compile
    arguments it was wrapped with (see the core's precompile::store_name)."""
    fn = _functions.get(key)
    if fn is None:
        raise KeyError(
            f"no function with source key {key} was wrapped by torch.compile in this process"
        )
    return _core.store_name(
        identity(fn), [*environment(), ("torch.compile", _variants.get(key, ""))]
    )


def compile_seconds_name(key: str) -> str:
    """The store name of how long the function's last published compile took, in any
    environment: waiters size their deadline by it when a new torch or GPU makes everyone
    compile again."""
    variant = [("torch.compile", _variants.get(key, ""))]
    package_name = _core.store_name(identity(_functions[key]), variant)
    return "compile-seconds-" + package_name.removeprefix("precompile-")


class _QuietDroppedGuards(logging.Filter):
    """torch warns for each guard caching_precompile leaves out of a recorded frame (ID_MATCH
    and its kind, which cannot hold in another process). Where megacache turned the flag on,
    the user did not ask for it: the notes go to torch's debug log instead of their console."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hooks.recording or "is dropped with caching_precompile=True" not in str(record.msg):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


class _AutomaticMode:
    """megacache.enable(): look up on wrap, single flight on a miss, publish after compiles."""

    # A wait for another process's compile lasts this many times that function's last
    # measured compile, and at least MIN_WAIT_SECONDS (a busy machine compiles slower).
    WAIT_FACTOR = 4.0
    MIN_WAIT_SECONDS = 10.0

    def __init__(self, store_url: str, wait_seconds: float) -> None:
        self.store = _core.Store(store_url)
        self.wait_seconds = wait_seconds
        self.compile_seconds: Dict[str, float] = {}  # key -> time its calls spent compiling
        _torch_cache_dir()  # torch sets TORCHINDUCTOR_CACHE_DIR to the dir it resolves
        self.torch_cache_dir = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        self.looked_up: Set[str] = set()  # source keys this mode looked up: the ones it publishes
        self.claims: Dict[str, Any] = {}  # source key -> claim held while this process compiles
        self.dirty: Set[str] = set()  # keys with compiles not yet published
        self.held_back: Set[str] = set()  # keys waiting for a backend torch records later
        # Keys published before all their graphs ran (a backward runs after the forward call
        # that published it): the CUDA JIT builds of its first run (cuDNN's attention
        # backward) come after the publish.
        self.jit_unsettled: Set[str] = set()
        self.published_jit: Dict[str, Set[str]] = {}  # key -> the JIT entries its package carries

    def active(self) -> bool:
        """False where torch isolates or turns off its own caches: inside fresh_cache() (another
        cache dir) and with force_disable_caches. The store is then neither read nor written,
        and torch records nothing for megacache."""
        from torch._inductor import config as inductor_config

        return (
            not inductor_config.force_disable_caches
            and os.environ.get("TORCHINDUCTOR_CACHE_DIR") == self.torch_cache_dir
        )

    def load(self, fn: Callable[..., Any], key: str) -> Optional[PrecompileCacheEntry]:
        """The function's package from the store, or None; on a miss this process claims the
        compile, unless it holds the claim already (a second wrap): it never waits on itself."""
        self.looked_up.add(key)
        # The lookup runs inside the load path's boundary: a store that fails is a miss. A
        # package that cannot be used compiles the function, and its package replaces it.
        return _load_entry(fn, key, lambda: self._lookup(key), ignore_source_changes=False)

    def _lookup(self, key: str) -> Optional["_core.Package"]:
        from megacache import trusted_keys

        name = store_name(key)
        value = self.store.get(name)
        if value is None and key not in self.claims:
            value, claim = self.store.get_or_claim(name, self._deadline(key))
            if claim is not None:
                self.claims[key] = claim
        return None if value is None else _core.Package.from_bytes(value, trusted_keys())

    def _deadline(self, key: str) -> float:
        """How long to wait for another process's compile of the function: WAIT_FACTOR times
        its last published compile, or wait_seconds when none was ever measured."""
        recorded = self.store.get(compile_seconds_name(key))
        try:
            measured = float(recorded.decode()) if recorded is not None else None
        except ValueError:
            measured = None
        if measured is None:
            return self.wait_seconds
        return min(self.wait_seconds, max(self.MIN_WAIT_SECONDS, self.WAIT_FACTOR * measured))

    def release_claim(self, key: str) -> None:
        """Lets the processes waiting for this compile go on: called when the first call that
        compiles ends (after publishing, or with nothing to publish, or raising), when the
        compiled function is collected uncalled, and at disable() and exit."""
        claim = self.claims.pop(key, None)
        if claim is not None:
            claim.release()

    def publish(
        self, key: str, *, only_if_complete: bool = False, only_if_jit_grew: bool = False
    ) -> None:
        """Puts the function's package into the store. A package with a backend not recorded
        yet (training compiles the backward on the first backward call) is held back once: it
        goes out when torch records that backend, or after the next call, or at exit. A backward
        may not have run when its package goes out, so on a machine with CUDA's JIT cache the
        package goes out once more after the next call (or at exit) if the cache gained
        entries meanwhile (only_if_jit_grew).
        Never raises into the job: a failed publish costs other processes a compile, nothing
        more."""
        from megacache import CACHE_ERRORS

        self.dirty.discard(key)
        try:
            package = build_package([key])
            if key not in package.keys():
                self.held_back.discard(key)
                return
            incomplete = package.bypassed()
            if incomplete and (only_if_complete or key not in self.held_back):
                self.held_back.add(key)
                return
            function = package.function(key)
            if len(function["bypassed"]) == function["codes"]:
                # Nothing torch could load (a custom backend records no artifacts): every
                # process compiles it anyway, so nothing is published.
                log.debug("megacache: nothing of %s can be packaged", function["qualname"])
                self.held_back.discard(key)
                return
            jit = set(package.cuda_jit_paths)
            if only_if_jit_grew and jit <= self.published_jit.get(key, set()):
                return
            for qualname, code, reason in incomplete:
                log.warning(
                    "megacache: %s, code %d will compile again on load: %s", qualname, code, reason
                )
            self.store.put(store_name(key), package.to_bytes())
            _stats["published"] += 1
            self.published_jit[key] = jit
            if not only_if_jit_grew and _cuda_jit_cache()[0]:
                self.jit_unsettled.add(key)
            seconds = self.compile_seconds.pop(key, None)
            if seconds is not None:
                self.store.put(compile_seconds_name(key), f"{seconds:.3f}".encode())
        except (*CACHE_ERRORS, pickle.PicklingError, TypeError, AttributeError) as error:
            # TypeError and AttributeError are what pickle raises for an object it cannot
            # pickle; the job goes on without a published package.
            log.warning(
                "megacache: could not publish the package of %s: %s", key, error, exc_info=True
            )
        self.held_back.discard(key)

    def backend_recorded(self) -> None:
        for key in list(self.held_back):
            self.publish(key, only_if_complete=True)

    def settle_jit(self, key: str) -> None:
        """After the call that follows a publish: publishes again if the graphs' first runs
        since (a backward) added entries to the driver's JIT cache. The cache's listing is
        compared first, so that a call on which nothing was built costs no package build."""
        self.jit_unsettled.discard(key)
        jit_dir, _ = _cuda_jit_cache()
        if set(_core.list_cuda_jit_entries(jit_dir, _started_unix)) <= self.published_jit.get(
            key, set()
        ):
            return
        self.publish(key, only_if_jit_grew=True)

    def close(self) -> None:
        """Publishes what is left and drops every claim: at disable() and at exit."""
        for key in list(self.held_back | self.dirty):
            self.publish(key)
        for key in list(self.jit_unsettled):
            self.settle_jit(key)
        for key in list(self.claims):
            self.release_claim(key)


_automatic: Optional[_AutomaticMode] = None


class _MegacacheDynamoCache(DiskDynamoCache):
    """torch's DynamoCache, answering from megacache first and then as torch's would: entries
    torch saved itself (DynamoCache.save, PrecompileContext.save_to_dynamo_cache) are found."""

    def load(self, fn: Callable[..., Any]) -> Optional[PrecompileCacheEntry]:
        key = packageable_key(fn)
        if key is None:
            return super().load(fn)
        _functions[key] = fn
        entry = None
        source = _explicit.get(key)
        if source is not None:
            entry = _load_entry(fn, key, lambda: source.read(key), source.ignore_source_changes)
        elif _automatic is not None and _automatic.active():
            entry = _automatic.load(fn, key)
        if entry is not None:
            return entry
        entry = super().load(fn)
        if entry is None:
            return None
        if _automatic is not None:
            _automatic.release_claim(key)  # torch's own entry serves: nothing to compile
        return _guarded(entry, key, getattr(_innermost(fn), "__qualname__", key))

    def record_package(self, package: CompilePackage) -> None:
        super().record_package(package)
        key = package.source_id
        _traced.add(key)
        _functions.setdefault(key, package._innermost_fn)
        mode = _automatic
        if mode is not None and key in mode.looked_up and mode.active():
            mode.dirty.add(key)  # a miss, a recompile, or a bypassed frame compiled again


_installed = False


def install_hooks() -> None:
    """Puts megacache's DynamoCache in torch's place and patches torch's precompile classes
    (megacache.torch.hooks). torch's caching_precompile stays as it is outside
    `hooks.Recording`."""
    global _installed
    with _lock:
        if _installed:
            return
        hooks.patch()
        torch_context = _torch_context()
        record_artifact = torch_context.record_artifact

        def record_artifact_then_publish(artifact: Any) -> None:
            record_artifact(artifact)
            if _automatic is not None and _automatic.held_back:
                _automatic.backend_recorded()

        torch_context.record_artifact = staticmethod(record_artifact_then_publish)
        take_artifact = getattr(torch_context, "take_artifact", None)  # torch 2.15 and later
        if take_artifact is not None:
            # torch's PrecompileSession pops the backends it packages itself; megacache copies
            # each one first, or its own package would lack it and that frame would compile again.
            def copy_then_take_artifact(key: str) -> Any:
                artifact = take_artifact(key)
                if artifact is not None:
                    with _lock:
                        if key not in _copied_backends:
                            _context.record_backend(key, pickle.dumps(artifact))
                            _copied_backends.add(key)
                return artifact

            torch_context.take_artifact = staticmethod(copy_then_take_artifact)
        cache = _MegacacheDynamoCache(dynamo_package.DynamoCache.path_prefix())
        dynamo_package.DynamoCache = cache
        if hasattr(torch_precompile_context, "DynamoCache"):
            torch_precompile_context.DynamoCache = cache
        logging.getLogger("torch._dynamo.guards").addFilter(_QuietDroppedGuards())
        hooks.should_record = _records
        atexit.register(_close_at_exit)
        installed_keys.take_identities_in_background()
        _installed = True


def _records() -> bool:
    """Whether frames of the functions megacache wrapped are recorded now: always for
    megacache.compile, and in automatic mode while the mode is active."""
    mode = _automatic
    return mode is None or mode.active()


def _close_at_exit() -> None:
    if _automatic is not None:
        _automatic.close()


# --- calls of a compiled function: record, watch the first call, publish -----------------------

_call_depth = threading.local()


def _watch_calls(compiled: Callable[..., Any], key: str) -> Callable[..., Any]:
    """Wraps a compiled callable. The first outermost call through an entry installed from a
    package is watched: if it raises, the entry is taken back and the call runs again without
    it (an error then is the caller's own), and if Dynamo traced anyway, it was a guard miss.
    In automatic mode, an outermost call that compiled publishes the function's package, and
    any outermost call ends this process's claim on compiling it."""

    @functools.wraps(compiled)
    def call(*args: Any, **kwargs: Any) -> Any:
        depth = getattr(_call_depth, "value", 0)
        if depth > 0:
            return compiled(*args, **kwargs)
        mode = _automatic
        pending = _pending.pop(key, None)
        _call_depth.value = 1
        started = time.monotonic()
        try:
            try:
                result = compiled(*args, **kwargs)
            except Exception as error:
                if pending is None or pending.installation.compile_package is None:
                    raise
                # The entry is taken back and the call runs without it: if it raises again,
                # the error is the caller's own and reaches them; else the package was at fault.
                pending.installation.undo()
                result = compiled(*args, **kwargs)
                pending.installation.on_failure(hooks.InstallFailed("first_call", error))
            if pending is not None:
                _first_call_done(key, pending)
            if mode is not None and (key in mode.dirty or key in mode.held_back):
                if key in mode.dirty:  # this call compiled
                    mode.compile_seconds[key] = (
                        mode.compile_seconds.get(key, 0.0) + time.monotonic() - started
                    )
                mode.publish(key)
            elif mode is not None and key in mode.jit_unsettled:
                mode.settle_jit(key)
        finally:
            _call_depth.value = 0
            if mode is not None:
                mode.release_claim(key)
        return result

    return call


def watch_calls(compiled: Any, key: str) -> Any:
    if isinstance(compiled, torch.nn.Module):
        compiled.forward = _watch_calls(compiled.forward, key)
        watched = compiled.forward
    else:
        compiled = watched = _watch_calls(compiled, key)
    mode = _automatic
    if mode is not None:  # a function wrapped and never called holds no claim
        weakref.finalize(watched, mode.release_claim, key)
    return compiled


def enable(store: Optional[str], wait_seconds: float) -> None:
    global _automatic
    install_hooks()
    with _lock:
        if _automatic is not None:
            _automatic.close()
        _automatic = _AutomaticMode(store or _core.default_store_url(), wait_seconds)
        if not getattr(torch.compile, "_megacache", False):
            original_compile = torch.compile

            @functools.wraps(original_compile)
            def compile(model: Any = None, **kwargs: Any) -> Any:
                if model is None:
                    return lambda m: compile(m, **kwargs)
                mode = _automatic
                key = packageable_key(model)
                if mode is None or key is None or not mode.active():
                    return original_compile(model, **kwargs)
                _variants[key] = compile_variant(kwargs)
                with hooks.Recording():
                    compiled = original_compile(model, **kwargs)
                return watch_calls(compiled, key)

            compile._megacache = True  # type: ignore[attr-defined]
            torch.compile = compile


def disable() -> None:
    """Ends automatic mode: what it compiled is published, its claims are dropped, and
    functions wrapped from now on are plain torch.compile."""
    global _automatic
    with _lock:
        if _automatic is not None:
            _automatic.close()
        _automatic = None


def automatic_stats() -> Dict[str, int]:
    """The package level's counters (described in automatic.stats())."""
    return dict(_stats) if _automatic else {}


# --- megacache.compile ---------------------------------------------------------------------


def compile_function(
    fn: Callable[..., Any],
    package: Optional[str],
    ignore_source_changes: bool,
    torch_compile_kwargs: Dict[str, Any],
) -> Any:
    install_hooks()
    key = source_key(fn)
    if package is not None:
        _explicit[key] = _PackageSource(os.fspath(package), ignore_source_changes)
    _variants[key] = compile_variant(torch_compile_kwargs)
    with hooks.Recording():
        compiled = _torch_compile(fn, **torch_compile_kwargs)
    compiled = watch_calls(compiled, key)

    def save_package(
        path: Optional[str] = None, format: str = "binary", *, sign_with: Optional[str] = None
    ) -> str:
        target = os.fspath(path) if path is not None else package
        if target is None:
            raise ValueError("save_package needs a path: none was given to megacache.compile")
        save(target, format=format, keys=[key], sign_with=sign_with)
        return target

    def load_package(
        path: Optional[str] = None, *, ignore_source_changes: bool = ignore_source_changes
    ) -> Any:
        """A new compiled callable of the same function, loaded from `path`. Unlike
        megacache.compile, which logs and compiles, this raises: PackageMismatchError naming the
        field and both values, or FileNotFoundError when `path` holds no package for it."""
        location = os.fspath(path) if path is not None else package
        if location is None:
            raise ValueError("load_package needs a path: none was given to megacache.compile")
        source = _PackageSource(location, ignore_source_changes)
        found = source.read(key)
        if found is None:
            raise FileNotFoundError(f"no package for {identity(fn)['qualname']} at {location}")
        check(found, fn, ignore_source_changes)
        return compile_function(fn, location, ignore_source_changes, torch_compile_kwargs)

    compiled.save_package = save_package
    compiled.load_package = load_package
    return compiled


def save(target: str, *, format: str, keys: Optional[List[str]], sign_with: Optional[str]) -> None:
    """Writes the package of `keys` (default: every function) to a file, a directory
    (format="unpacked") or a store URL."""
    from pathlib import Path

    package = build_package(keys)
    missing = [k for k in (keys or []) if k not in package.keys()]
    if missing or not package.keys():
        raise RuntimeError(
            "nothing to save yet: a torch.compile'd function compiles on its first call, "
            "so call it once first"
        )
    for qualname, code, reason in package.bypassed():
        log.warning("megacache: %s, code %d will compile again on load: %s", qualname, code, reason)
    signing_key = Path(sign_with).read_text().strip() if sign_with else ""
    if "://" in target:
        if format != "binary":
            raise ValueError("a store holds binary packages; format must be 'binary'")
        for key in package.keys():
            _core.Store(target).put(store_name(key), package.to_bytes(signing_key))
        return
    if format == "binary":
        _core.write_file_atomic(target, package.to_bytes(signing_key))
    elif format == "unpacked":
        package.write_unpacked(target, signing_key)
    else:
        raise ValueError(f"format must be 'binary' or 'unpacked', not {format!r}")


def load_package(path: str, ignore_source_changes: bool) -> List[str]:
    """Reads and checks a package (every function in it), writes its files, and makes each of
    its functions load from it when torch.compile next wraps it. Returns the qualified names."""
    install_hooks()
    from megacache import trusted_keys

    source = _PackageSource(path, ignore_source_changes)
    package = _core.Package.read(path, trusted_keys())
    check(package, None, ignore_source_changes)
    install_files(package)
    names = []
    for key in package.keys():
        _explicit[key] = source
        names.append(package.function(key)["qualname"])
    return names
