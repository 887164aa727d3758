"""Every torch surface the adapter relies on, in one place, and the level it can run at.

torch moves its compile-cache internals in every release (docs/compatibility.md lists what
moved between 2.11 and 2.15). A torch newer than any megacache was tested on may lack a class
the adapter patches, or give a method other parameters. Importing `precompile` or `hooks`
would then fail, or a patch would break torch's own compiles. So automatic mode checks these
surfaces once, at enable(), before it imports anything else of torch's internals:

- every PACKAGE surface present: packages (no Dynamo trace, no Inductor compile on a hit);
- a PACKAGE surface missing or different: Mega-Cache level, one bundle of torch's cache
  artifacts per environment (the start still skips Inductor's compiles);
- a MEGA_CACHE surface missing too: off; torch.compile runs as plain torch.

Each missing or different surface is named in one warning and in automatic_stats().
A surface here is only what megacache's own code reaches for; when the adapter starts to use
another one, it is added here.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from typing import Any, List, Tuple

from megacache._core import MegacacheError

PACKAGE_LEVEL = "package"
MEGA_CACHE_LEVEL = "mega-cache"
OFF = "off"


@dataclasses.dataclass(frozen=True)
class Surface:
    module: str
    attribute: str  # dotted path inside the module
    parameters: Tuple[str, ...] = ()  # names a callable must accept, in this order

    @property
    def name(self) -> str:
        return f"{self.module}.{self.attribute}"

    def problem(self) -> str:
        """Why this torch does not offer the surface as megacache uses it; "" when it does."""
        try:
            target: Any = importlib.import_module(self.module)
        except Exception as error:  # a module of torch's that fails to import, for any reason
            return f"{self.module} does not import ({type(error).__name__}: {error})"
        for part in self.attribute.split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                return f"{self.name} is missing"
        if not self.parameters:
            return ""
        try:
            names = [p for p in inspect.signature(target).parameters if p != "self"]
        except (TypeError, ValueError):
            return f"{self.name} has no signature to check"
        if tuple(names[: len(self.parameters)]) != self.parameters:
            return f"{self.name} takes ({', '.join(names)}), not ({', '.join(self.parameters)})"
        return ""


# What megacache/torch/mega_cache.py reads and writes of torch's Mega-Cache.
MEGA_CACHE = (
    Surface("torch.compiler._cache", "CacheArtifactManager._seen_artifacts"),
    Surface("torch.compiler._cache", "CacheArtifactManager._new_cache_artifacts"),
    Surface("torch.compiler._cache", "CacheArtifactManager._cache_info"),
    Surface("torch.compiler._cache", "CacheArtifactManager._serializer"),
    Surface("torch.compiler._cache", "CacheArtifactManager._ensure_cache_artifacts_registered"),
    Surface("torch.compiler._cache", "CacheArtifactFactory._artifact_types"),
    Surface(
        "torch.compiler._cache",
        "CacheArtifactFactory.create",
        ("artifact_type_key", "key", "content"),
    ),
    Surface("torch.compiler._cache", "CacheInfo"),
    Surface("torch._inductor.runtime.cache_dir_utils", "cache_dir"),
    Surface("torch._inductor.codecache", "torch_key"),
    Surface("torch._dynamo.pgo", "get_cache_key"),
    Surface("torch._inductor.cpp_builder", "get_cpp_compiler"),
)

# What megacache/torch/precompile.py and hooks.py import, patch and call of torch's precompile
# machinery, beyond the Mega-Cache.
PACKAGE = (
    Surface("torch._dynamo.config", "caching_precompile"),
    Surface("torch._dynamo.package", "CompilePackage.__init__", ("fn",)),
    Surface(
        "torch._dynamo.package",
        "CompilePackage.initialize",
        ("fn", "dynamo", "ignore_inlined_sources"),
    ),
    Surface("torch._dynamo.package", "CompilePackage.install", ("backends",)),
    Surface("torch._dynamo.package", "CompilePackage.code_context", ("code",)),
    Surface("torch._dynamo.package", "CompilePackage.source_id_from_fn", ("fn",)),
    Surface("torch._dynamo.package", "DiskDynamoCache.load", ("fn",)),
    Surface("torch._dynamo.package", "DiskDynamoCache.record_package", ("package",)),
    Surface("torch._dynamo.package", "DynamoCache.path_prefix"),
    Surface("torch._dynamo.package", "PrecompileCacheEntry"),
    Surface("torch._dynamo.package", "SerializedCode.from_code_object"),
    Surface("torch._dynamo.package", "_DynamoCodeCacheEntry"),
    Surface("torch._dynamo.precompile_context", "PrecompileContext.record_artifact"),
    Surface("torch._dynamo.precompile_context", "PrecompileContext.save_to_dynamo_cache"),
    Surface("torch._dynamo.precompile_context", "PrecompileContext._dynamo_cache_entries"),
    Surface("torch._dynamo.precompile_context", "PrecompileContext._backend_artifacts_by_key"),
    Surface("torch._dynamo.convert_frame", "ConvertFrameAssert.__call__", ("frame",)),
    Surface("torch._dynamo.guards", "CheckFunctionManager.serialize_guards"),
    Surface("torch._dynamo.guards", "GuardsStatePickler.reducer_override", ("obj",)),
    Surface("torch._dynamo.guards", "_Missing"),
    # A package moved to another CUDA device (devices.py, hooks._unpickle_on_moved_device).
    Surface(
        "torch._dynamo.guards", "GuardsStatePickler._unpickle_tensor", ("meta_tensor", "device")
    ),
    Surface("torch._inductor.async_compile", "CompiledTritonKernels.key", ("kernel_src",)),
    Surface("torch._dynamo.codegen", "PyCodegen.create_load_python_module", ("mod",)),
    Surface("torch._dynamo.exc", "PackageError"),
    Surface("torch._dynamo.bytecode_transformation", "_unique_id_counter"),
    Surface("torch._dynamo.eval_frame", "innermost_fn"),
    Surface("torch._dynamo.utils", "counters"),
    Surface("torch._C._dynamo.eval_frame", "_reset_precompile_entries"),
    # cuBLAS set up on a helper thread beside a package's install (warm_up.py).
    Surface("torch.cuda", "current_blas_handle"),
    Surface("torch.cuda", "is_current_stream_capturing"),
    # Its call changed between 2.11 and 2.13; hooks._save_backward_as_recorded takes both.
    Surface("torch._functorch._aot_autograd.runtime_wrappers", "AOTDispatchAutograd.post_compile"),
)


def problems(surfaces: Tuple[Surface, ...]) -> List[str]:
    return [problem for problem in (surface.problem() for surface in surfaces) if problem]


@functools.lru_cache(maxsize=None)
def level() -> Tuple[str, Tuple[str, ...]]:
    """The level automatic mode can run at on this torch, and why it is not the package level
    (each missing or different surface). Checked once per process: torch does not change."""
    missing_mega_cache = problems(MEGA_CACHE)
    if missing_mega_cache:
        return OFF, tuple(missing_mega_cache)
    missing_package = problems(PACKAGE)
    if missing_package:
        return MEGA_CACHE_LEVEL, tuple(missing_package)
    return PACKAGE_LEVEL, ()


class UnsupportedTorchError(MegacacheError, RuntimeError):
    """This torch lacks a surface that an explicit package API (megacache.compile,
    save_package, load_package) needs."""


def require_package_level() -> None:
    """Raises UnsupportedTorchError naming what this torch lacks, for the APIs that only
    exist at package level; automatic mode degrades instead."""
    found, why = level()
    if found != PACKAGE_LEVEL:
        import torch

        raise UnsupportedTorchError(
            f"megacache packages need torch surfaces that torch {torch.__version__} lacks: "
            f"{'; '.join(why)}. Use megacache.enable() (it runs at the level this torch allows) "
            "or a torch listed in docs/compatibility.md."
        )
