"""torch.compiler.precompile's ahead-of-time pairs as megacache files.

torch 2.14's `torch.compiler.precompile(fn, *inputs)` returns `(python_code, cache)`; 2.15's
`torch.compiler.precompile.capture(fn, artifact_path=, cache_path=)` writes the same two
halves as files. torch's `load` executes the code with no integrity check. megacache keeps both
halves in one bundle (docs/aot-format.md): checksummed, signed, fingerprinted, storable like
any file, and checked whole in C++ before torch sees a byte of it.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from typing import Any, List, Optional, Tuple

import torch

from megacache import _core

log = logging.getLogger("megacache")

# Which torch API a pair came from (the manifest's "api"; docs/aot-format.md).
CALLABLE_API = "torch.compiler.precompile"  # 2.14: precompile(fn, ...) -> (python_code, cache)
CAPTURE_API = "torch.compiler.precompile.capture"  # 2.15: capture() writes two files


def _torch_api() -> Any:
    """torch's precompile API, or UnsupportedTorchError naming what this torch lacks."""
    from megacache import UnsupportedTorchError

    api = getattr(torch.compiler, "precompile", None)
    if api is None or not hasattr(api, "load"):
        raise UnsupportedTorchError(
            f"torch {torch.__version__} has no torch.compiler.precompile with a load(): "
            "ahead-of-time pairs need torch 2.14 or later"
        )
    return api


def _cache_fields(cache: bytes) -> List[Tuple[str, str]]:
    """The envelope's scalar fields (format, version, backend, code_hash, ...), as text. The
    envelope is torch.save'd plain data, read with weights_only=True: nothing in it runs."""
    from megacache import InvalidInputError

    try:
        envelope = torch.load(io.BytesIO(cache), weights_only=True)
    except Exception as error:  # torch.load raises many types for bytes that are not its format
        raise InvalidInputError(
            f"the cache is not a torch.compiler.precompile cache: {error}"
        ) from error
    if not isinstance(envelope, dict):
        raise InvalidInputError("the cache is not a torch.compiler.precompile cache: not a dict")
    return [
        (str(name), str(value))
        for name, value in envelope.items()
        if isinstance(value, (str, int)) and not isinstance(value, bool)
    ]


def save(
    path: str,
    python_code: Optional[str],
    cache: Optional[bytes],
    *,
    artifact_path: Optional[str],
    cache_path: Optional[str],
    sign_with: Optional[str],
) -> None:
    from pathlib import Path

    from megacache.torch import mega_cache

    if (
        python_code is not None
        and cache is not None
        and artifact_path is None
        and cache_path is None
    ):
        api, code = CALLABLE_API, python_code.encode()
    elif (
        artifact_path is not None
        and cache_path is not None
        and python_code is None
        and cache is None
    ):
        api, code, cache = (
            CAPTURE_API,
            Path(artifact_path).read_bytes(),
            Path(cache_path).read_bytes(),
        )
    else:
        raise ValueError(
            "give either python_code and cache (torch 2.14's precompile() result) "
            "or artifact_path and cache_path (the files torch 2.15's capture() wrote)"
        )
    signing_key = Path(sign_with).read_text().strip() if sign_with else ""
    data = _core.aot_pair_bytes(
        api, code, cache, _cache_fields(cache), mega_cache.current_fingerprint(), 3, signing_key
    )
    _core.write_file_atomic(path, data)


def load(data: bytes) -> Any:
    """torch's runnable for a pair's bytes, after the core checked all of them."""
    from megacache import trusted_keys
    from megacache.torch import mega_cache

    _, python_code, cache, _, fingerprint = _core.read_aot_pair(data, trusted_keys())
    differences = _core.compare_fingerprints(fingerprint, mega_cache.current_fingerprint())
    if differences:
        # torch decides: its cache is acceleration only, and it refuses what it cannot run.
        log.warning(
            "megacache: this precompile pair was built for another environment: %s",
            "; ".join(f"{name} {built} here {current}" for name, built, current in differences),
        )
    torch_api = _torch_api()
    if not hasattr(torch_api, "capture"):  # 2.14: load(python_code, cache)
        return torch_api.load(python_code.decode(), cache)
    # 2.15 loads from files: both halves go to a directory only this process can read, and are
    # read back by torch before load returns.
    with tempfile.TemporaryDirectory(prefix="megacache-aot-") as directory:
        artifact = os.path.join(directory, "artifact.py")
        cache_file = os.path.join(directory, "artifact.cache")
        _core.write_file_atomic(artifact, python_code)
        _core.write_file_atomic(cache_file, cache)
        return torch_api.load(artifact, cache_file)
