"""pytest plugin (load with `-p megacache_modes`) that runs PyTorch's own tests under one of
three modes, chosen by MEGACACHE_UPSTREAM_MODE:

  plain    torch as installed, nothing patched (the baseline);
  dropins  torch.compiler.save_cache_artifacts / load_cache_artifacts and
           torch._inductor.standalone_compile replaced by megacache's;
  enable   megacache.enable() with its defaults (MEGACACHE_DIR is set by run.py).

The mode is applied in pytest_configure, i.e. before any test module is imported, so that
module-level code and decorators already see it.
"""

from __future__ import annotations

import os

MODES = ("plain", "dropins", "enable")


def _install_dropins() -> None:
    import torch
    import torch._inductor

    import megacache

    # The tests reach these only as attributes at call time
    # (`torch.compiler.save_cache_artifacts()`), never via `from torch.compiler import ...`, so
    # replacing the attributes covers every call.
    torch.compiler.save_cache_artifacts = megacache.save_cache_artifacts
    torch.compiler.load_cache_artifacts = megacache.load_cache_artifacts

    # megacache.standalone_compile accepts every argument of torch's (aot, donate_graph_module
    # and fake_mode go through **kwargs); megacache.torch.standalone binds torch's own function
    # when it is imported, so it is imported before the attribute is replaced.
    import megacache.torch.standalone  # noqa: F401

    torch._inductor.standalone_compile = megacache.standalone_compile


def _ungate_triton() -> None:
    # Opt-in (MEGACACHE_UPSTREAM_UNGATE_TRITON=1): on a CPU build without triton,
    # `@requires_triton()` skips tests whose "cpu" parametrization needs no triton at all
    # (test_cache_hot_load*). Making the decorator a no-op before the test module imports it
    # lets those run; their GPU parametrizations still skip themselves (HAS_GPU is False).
    import torch.testing._internal.inductor_utils as inductor_utils

    inductor_utils.requires_triton = lambda: lambda fn: fn


def pytest_configure(config) -> None:
    mode = os.environ.get("MEGACACHE_UPSTREAM_MODE", "plain")
    if mode not in MODES:
        raise ValueError(f"MEGACACHE_UPSTREAM_MODE={mode!r}, expected one of {MODES}")
    if os.environ.get("MEGACACHE_UPSTREAM_UNGATE_TRITON") == "1":
        _ungate_triton()
    if mode == "dropins":
        _install_dropins()
    elif mode == "enable":
        import megacache

        megacache.enable()


def pytest_report_header(config) -> str:
    return (
        f"megacache upstream mode: {os.environ.get('MEGACACHE_UPSTREAM_MODE', 'plain')}, "
        f"MEGACACHE_DIR={os.environ.get('MEGACACHE_DIR', '')}"
    )
