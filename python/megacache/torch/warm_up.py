"""cuBLAS's first use, done while torch installs a package.

A precompiled start's first call runs its graphs right after torch installs the package's
entry (guards, output code, kernels). The graphs' first matrix product then pays cuBLAS's
one-time setup: on an H200 with CUDA 13, 87-124 ms of a 0.3 s first call, against 0.3 ms for
a product of another shape after it. And each product of a new shape loads its kernel when it
first runs, 8 ms apiece there (docs/benchmarks.md). No file a package could carry holds either,
but neither needs anything from the package. So for a package whose graphs call cuBLAS, `start`
runs their products ahead on a helper thread, on the device their code names, while torch
installs the entry; `wait`, called when the install ends, waits for it. The products are read
from the graphs' wrappers by the core (`_core.matrix_products`, docs/matrix-products.md): each
distinct one whose layouts the wrapper spells out (a dynamic dim at the size the graph was
compiled for), run once on uninitialized operands of those layouts; cuBLAS picks its kernel
from the layouts, not the values. Where none can be read, one small product still sets cuBLAS
up.

Nothing is left behind by the first package on a device. torch keeps cuBLAS handles in a pool:
the helper's handle goes back to the pool when the helper thread ends, and the graph's thread,
running after `wait`, takes that same handle. The helper works on the stream the graphs will run
on, so the workspace torch keeps per handle and stream is the one they use, and the memory of its
operands returns to torch's allocator on that stream, where the graphs' own buffers reuse it: the
process holds the handles and workspaces it would hold without the helper.

A later package on the device (a second model, a loss or a step compiled apart) finds cuBLAS set
up, but its graphs' products of other shapes would still load their kernels in their first run.
So its helper runs only the products no helper has run on the device yet, and none at all when
there are none. Kernels are loaded once per process, whatever handle loads them; but the graph's
thread now holds the first handle, so this helper takes a handle of its own, which goes back to
the pool when it ends, beside the workspace torch keeps for it (32 MiB on the H200): the next
thread that uses cuBLAS there takes both (autograd's, in training). That is the one thing a
helper leaves, in exchange for the kernels' loads: on the H200, a second model's first graph run
went from 82-101 ms to under 1 ms (docs/benchmarks.md).

A helper that fails costs only its time: the graph's own product meets the same failure and
reports it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, Iterable, List, Optional

import torch

from megacache import _core
from megacache.torch import devices

log = logging.getLogger("megacache")

# Products whose operands and result take more than this together are not run ahead: their
# memory would stay in torch's allocator, and their own run dwarfs their kernel's load.
_PRODUCT_BYTES_LIMIT = 64 << 20
# The install waits for the helper at its end, so it runs at most this many products.
_PRODUCTS_LIMIT = 32

# The helper of a start, if one runs. One at a time.
_helper: Optional[threading.Thread] = None
_lock = threading.Lock()
# device index -> the cuBLAS handle the first helper there used (torch.cuda.current_blas_handle).
warmed_handles: Dict[int, int] = {}
# device index -> the products helpers have run there, read and extended by one helper at a time.
warmed_products: Dict[int, List[Any]] = {}


def matrix_products(sources: Iterable[str], already_run: Iterable[Any] = ()) -> List[Any]:
    """The distinct products (_core.MatrixProduct) of these wrappers that a helper runs: the
    first _PRODUCTS_LIMIT within _PRODUCT_BYTES_LIMIT not in `already_run`, in the order the
    graphs call them."""
    chosen: List[Any] = []
    skipped = list(already_run)
    for source in sources:
        for product in _core.matrix_products(source):
            dtype = getattr(torch, product.dtype, None)
            if (
                len(chosen) < _PRODUCTS_LIMIT
                and isinstance(dtype, torch.dtype)
                and product not in chosen
                and product not in skipped
                and _bytes(product, dtype) <= _PRODUCT_BYTES_LIMIT
            ):
                chosen.append(product)
    return chosen


def _bytes(product: Any, dtype: "torch.dtype") -> int:
    """The memory the operands and result of `product` take, laid out as the wrapper lays them."""
    total = 0
    for layout in (*product.operands, product.out):
        if all(size > 0 for size in layout.sizes):
            total += (
                1 + sum((size - 1) * stride for size, stride in zip(layout.sizes, layout.strides))
            ) * dtype.itemsize
    return total


def start(backends: Iterable[Any]) -> None:
    """Sets cuBLAS up on the device these backends' graphs run on, if this process has not yet,
    and loads the kernels of their matrix products no helper has run there, on a helper thread,
    if they call cuBLAS. The helper works on the stream this thread is on, where the graphs will
    run. Does nothing before CUDA is in use (no GPU holds the graphs' inputs then), for graphs
    on several devices, while another helper runs, or while this thread captures a CUDA graph
    (other work on the device would break the capture)."""
    global _helper
    if devices.current_index() is None or torch.cuda.is_current_stream_capturing():
        return
    sources = devices.wrapper_sources(backends)
    index = devices.named_device(sources)  # after a move, the device moved to
    if index is None or not any(_core.calls_cublas(source) for source in sources):
        return
    with _lock:
        if _helper is not None:
            return
        first = index not in warmed_handles
        warmed_handles.setdefault(index, 0)  # taken: the next start here finds cuBLAS set up
        stream = torch.cuda.current_stream(index)
        _helper = threading.Thread(
            target=_set_up,
            args=(index, stream, sources, first),
            name="megacache-cublas-warm-up",
            daemon=True,
        )
        _helper.start()


def _set_up(index: int, stream: "torch.cuda.Stream", sources: List[str], first: bool) -> None:
    """The graphs' products not yet run on the device, each launched and not waited for:
    cuBLAS sets itself up and loads a kernel when a product is launched, and the graphs' own work
    on the stream orders after them. The first helper on a device runs one small product where
    it has none, to set cuBLAS up; a later one with none takes no handle at all."""
    started = time.perf_counter()
    already_run = warmed_products.setdefault(index, [])
    products = matrix_products(sources, already_run)
    if not products and not first:
        return
    try:
        with torch.cuda.device(index), torch.cuda.stream(stream):
            for product in products:
                dtype = getattr(torch, product.dtype)
                operands = [
                    torch.empty_strided(layout.sizes, layout.strides, dtype=dtype, device="cuda")
                    for layout in product.operands
                ]
                out = torch.empty_strided(
                    product.out.sizes, product.out.strides, dtype=dtype, device="cuda"
                )
                getattr(torch, product.op)(*operands, out=out)
                already_run.append(product)
            if not products:
                a = torch.ones(8, 8, device="cuda")
                torch.mm(a, a)
            if first:
                warmed_handles[index] = torch.cuda.current_blas_handle()
    except RuntimeError as error:  # torch's CUDA errors; the graph's own product reports them
        log.debug(
            "megacache: running cuBLAS's products on cuda:%d beside the install failed: %s",
            index,
            error,
        )
        return
    log.debug(
        "megacache: %d cuBLAS products run on cuda:%d beside the install in %.1f ms%s",
        len(products),
        index,
        1000 * (time.perf_counter() - started),
        " (cuBLAS set up)" if first else "",
    )


def wait() -> None:
    """Waits for the helper, if one runs: the graphs run next, on the handle it gives back."""
    global _helper
    with _lock:
        helper, _helper = _helper, None
    if helper is not None:
        helper.join()
