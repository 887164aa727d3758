"""cuBLAS's first use, done while torch installs a package.

A precompiled start's first call runs its graphs right after torch installs the package's
entry (guards, output code, kernels). The graphs' first matrix product then pays cuBLAS's
one-time setup: on an H200 with CUDA 13, 87-124 ms of a 0.3 s first call, against 0.3 ms for
a product of another shape after it (docs/benchmarks.md). No file a package could carry holds
that setup, but it needs nothing from the package either. So for a package whose graphs call
cuBLAS, `start` runs one small matrix product on a helper thread, on the device their code
names, while torch installs the entry; `wait`, called when the install ends, waits for it.

Nothing is left behind. torch keeps cuBLAS handles in a pool: the helper's handle goes back to
the pool when the helper thread ends, and the graph's thread, running after `wait`, takes that
same handle. The helper works on the stream the graphs will run on, so the workspace torch
keeps per handle and stream is the one they use: the process holds the handles and workspaces
it would hold without the helper. A helper that fails costs only its time: the graph's own
product meets the same failure and reports it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, Dict, Iterable, Optional

import torch

from megacache.torch import devices

log = logging.getLogger("megacache")

# Inductor's calls into cuBLAS in the Python wrapper it generates.
_CUBLAS_CALL = re.compile(r"\bextern_kernels\.(?:mm|addmm|bmm|baddbmm|_int_mm)\(")

# The helper of a start, if one runs. One at a time: a process sets cuBLAS up once.
_helper: Optional[threading.Thread] = None
_lock = threading.Lock()
# device index -> the cuBLAS handle the helper used there (torch.cuda.current_blas_handle).
warmed_handles: Dict[int, int] = {}


def calls_cublas(backends: Iterable[Any]) -> bool:
    """Whether any graph of these (unpickled) backends calls cuBLAS from its wrapper."""
    return any(_CUBLAS_CALL.search(source) for source in devices.wrapper_sources(backends))


def start(backends: Iterable[Any]) -> None:
    """Sets cuBLAS up on the device these backends' graphs run on, on a helper thread, if they
    call it and this process has not set it up there yet. The helper works on the stream this
    thread is on, where the graphs will run. Does nothing before CUDA is in use (no GPU holds
    the graphs' inputs then), for graphs on several devices, or while this thread captures a
    CUDA graph (other work on the device would break the capture)."""
    global _helper
    if devices.current_index() is None or torch.cuda.is_current_stream_capturing():
        return
    backends = list(backends)
    index = devices.named_device(backends)  # after a move, the device moved to
    if index is None or not calls_cublas(backends):
        return
    with _lock:
        if index in warmed_handles or _helper is not None:
            return
        warmed_handles[index] = 0  # taken: a second start for this device does nothing
        stream = torch.cuda.current_stream(index)
        _helper = threading.Thread(target=_set_up, args=(index, stream), name="megacache-cublas-warm-up",
                                   daemon=True)
        _helper.start()


def _set_up(index: int, stream: "torch.cuda.Stream") -> None:
    """One small product, launched and not waited for: cuBLAS sets itself up when the product
    is launched, and the graphs' own work on the stream orders after it."""
    started = time.perf_counter()
    try:
        with torch.cuda.device(index), torch.cuda.stream(stream):
            a = torch.ones(8, 8, device="cuda")
            torch.mm(a, a)
            warmed_handles[index] = torch.cuda.current_blas_handle()
    except RuntimeError as error:  # torch's CUDA errors; the graph's own product reports them
        log.debug("megacache: setting cuBLAS up on cuda:%d beside the install failed: %s", index, error)
        return
    log.debug("megacache: cuBLAS set up on cuda:%d beside the install in %.1f ms",
              index, 1000 * (time.perf_counter() - started))


def wait() -> None:
    """Waits for the helper, if one runs: the graphs run next, on the handle it gives back."""
    global _helper
    with _lock:
        helper, _helper = _helper, None
    if helper is not None:
        helper.join()
