"""megacache.standalone_compile: torch's standalone_compile with files megacache writes and
reads in C++, byte for byte torch's own (torch loads ours, we load torch's)."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import torch

from megacache import _core


def _torch_key() -> bytes:
    from torch._inductor.codecache import torch_key

    return torch_key()


class CompiledArtifact:
    """A standalone-compiled graph: call it, save it, load it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __call__(self, *args: Any) -> Any:
        return self._inner(*args)

    def __getattr__(self, name: str) -> Any:
        # Everything but save and load is torch's own (is_saveable, and what later torches add).
        return getattr(self._inner, name)

    def save(self, path: str | os.PathLike[str], *, format: str = "binary") -> None:
        path = os.fspath(path)
        artifacts = getattr(self._inner, "_artifacts", None)
        if format != "binary" or artifacts is None:
            # The unpacked form writes each graph's generated code, which only torch can emit;
            # an AOTCompiledArtifact carries a pickle rather than cache artifacts.
            self._inner.save(path=path, format=format)
            return
        blob, info = artifacts
        keys = info.aot_autograd_artifacts
        if len(keys) != 1:
            raise RuntimeError(
                f"standalone_compile produced {len(keys)} aot_autograd artifacts, not 1, so it "
                "cannot be saved; this usually means part of the graph is not serializable "
                f"({info})"
            )
        if os.path.isdir(path):
            raise IsADirectoryError(f"{path} is a directory; format='binary' writes a file")
        _core.write_file_atomic(path, _core.standalone_file(_torch_key(), keys[0], blob))

    @staticmethod
    def load(path: str | os.PathLike[str], *, format: str = "binary") -> "CompiledArtifact":
        from torch._inductor.standalone_compile import CacheCompiledArtifact
        from torch._inductor.standalone_compile import CompiledArtifact as TorchArtifact

        path = os.fspath(path)
        if format != "binary":
            return CompiledArtifact(TorchArtifact.load(path=path, format=format))
        with open(path, "rb") as f:
            data = f.read()
        kind, torch_key, aot_key, _ = _core.standalone_parts(data)
        if kind != 0:  # AOTCompiledArtifact or torch 2.8's layout: torch's own loader
            return CompiledArtifact(TorchArtifact.load(path=path, format=format))
        if torch_key != _torch_key():
            raise _core.PackageMismatchError(
                f"{path} was saved by another torch build (torch_key {torch_key.hex()[:12]}, "
                f"this is {_torch_key().hex()[:12]}); compile it again with this torch"
            )
        from megacache.torch import mega_cache as adapter

        adapter.load_bytes(data)
        from contextlib import nullcontext

        return CompiledArtifact(CacheCompiledArtifact._load_impl(nullcontext(), aot_key))


# torch's own, bound when this module is imported: code that routes
# torch._inductor.standalone_compile through megacache's afterwards must not reach megacache's.
import torch._inductor  # noqa: E402

_torch_standalone_compile = torch._inductor.standalone_compile


def standalone_compile(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    *,
    dynamic_shapes: str = "from_graph",
    options: Optional[dict] = None,
    **kwargs: Any,
) -> CompiledArtifact:
    return CompiledArtifact(
        _torch_standalone_compile(
            gm, example_inputs, dynamic_shapes=dynamic_shapes, options=options, **kwargs
        )
    )
