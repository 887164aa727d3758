"""One package for every device index of a machine.

Inductor writes the CUDA device a graph was compiled on into what it produces: the generated
wrapper (device guard, set_device, the launch stream), each Triton kernel's DeviceProperties,
the Triton bundle (the directory its kernels go to, the device its launchers load them on),
torch.device values in the AOTAutograd entry, and Dynamo's guards on tensors. A package built
on cuda:i would crash or retrace in a process whose model is on cuda:j.

At load, megacache moves a package to the process's current device: the text is rewritten by
the core (`_core.remap_cuda_device`; the forms are in docs/device-index.md), torch's objects
here. The guards are built by torch as it installs the entry; `moving_guards` has their tensors
unpickled on the new device (megacache.torch.hooks wraps the install). Code that names several
devices is loaded as it is (its guards decide); a graph megacache does not know how to rewrite
for another device raises `CannotMove`, and the function compiles as if there were no package.
Device type, GPU model and compute capability are checked with the rest of the environment
before anything is moved.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import io
import pickle
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional

import torch

from megacache import _core


class Move(NamedTuple):
    """A package compiled on cuda:`source`, loaded by a process on cuda:`target`."""

    source: int
    target: int


class CannotMove(Exception):
    """A package that names its device in a way megacache cannot rewrite soundly."""


def current_index() -> Optional[int]:
    """The CUDA device this process computes on, or None before CUDA is in use (no CUDA
    tensor can exist then, so there is nothing to move to)."""
    if not torch.cuda.is_initialized():
        return None
    return torch.cuda.current_device()


def graphs(backend: Any) -> List[Any]:
    """The compiled graphs (CompiledFxGraph) of a bundled AOTAutograd entry: forward, backward.
    torch 2.11 pickles the entry itself; 2.13 and later wrap it in a
    BundledAOTAutogradCacheArtifact, whose `content` it is."""
    entry = (
        backend.content if hasattr(getattr(backend, "content", None), "compiled_fw") else backend
    )
    graphs = []
    for part in ("compiled_fw", "compiled_bw"):
        graph = getattr(getattr(entry, part, None), "result", None)
        if graph is not None:
            graphs.append(graph)
    return graphs


def wrapper_source(graph: Any) -> Optional[str]:
    """A graph's Python wrapper, or None for output megacache does not know how to rewrite
    (AOTInductor, cpp_wrapper, graphs of other OutputCode types). Recognized by what it is
    (Inductor's Python wrapper defines `call`), not by what it is not, so an unknown form of
    output is never moved."""
    source = getattr(graph, "source_code", None)
    if (
        not isinstance(source, str)
        or not hasattr(graph, "_triton_bundle")
        or "def call(" not in source
        or "load_pybinding" in source
        or "CppWrapperCodeCache" in source
    ):
        return None
    return source


def wrapper_sources(backends: Iterable[Any]) -> List[str]:
    """The Python wrappers of every graph of these (unpickled) backends that has one."""
    return [
        source
        for backend in backends
        for graph in graphs(backend)
        if (source := wrapper_source(graph)) is not None
    ]


def named_device(sources: Iterable[str]) -> Optional[int]:
    """The one CUDA device these graph wrappers (wrapper_sources) name, or None for code that
    names none or several."""
    named = {index for source in sources for index in _core.cuda_device_indices(source)}
    return named.pop() if len(named) == 1 else None


def move_for(backends: Dict[str, Any]) -> Optional[Move]:
    """The move a function's backends need in this process: from the one CUDA device their
    code names to the current device (torchrun's ranks each set_device their own), or None.
    Code that names no device or several is loaded as it is, as is code for a device this
    process holds memory on (a model placed with .to("cuda:1") and no set_device): its guards
    decide whether it serves."""
    target = current_index()
    if target is None:
        return None
    source = named_device(wrapper_sources(backends.values()))
    if source is None:
        return None
    if source == target or (
        source < torch.cuda.device_count() and torch.cuda.memory_allocated(source) > 0
    ):
        return None
    return Move(source, target)


class _MovingUnpickler(pickle.Unpickler):
    """Unpickles a backend with each torch.device cuda:source made cuda:target."""

    def __init__(self, data: bytes, move: Move) -> None:
        super().__init__(io.BytesIO(data))
        self.move = move

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        if found is torch.device:
            return self._device
        return found

    def _device(self, *args: Any) -> torch.device:
        device = torch.device(*args)
        if device.type == "cuda" and device.index == self.move.source:
            return torch.device("cuda", self.move.target)
        return device


def moved_backend(pickled: bytes, move: Move) -> Any:
    """A backend's pickle, unpickled for cuda:`move.target`."""
    backend = _MovingUnpickler(pickled, move).load()
    for graph in graphs(backend):
        _move_graph(graph, move)
    return backend


def _move_graph(graph: Any, move: Move) -> None:
    from torch._inductor.async_compile import CompiledTritonKernels

    source = wrapper_source(graph)
    if source is None:
        raise CannotMove(
            f"its {type(graph).__name__} is not a graph with a Python wrapper megacache "
            "can rewrite for another device"
        )
    moved_source = _core.remap_cuda_device(source, move.source, move.target)
    # torch finds a bundled, statically launchable kernel by the key of its source text.
    moved_keys = {
        CompiledTritonKernels.key(kernel): CompiledTritonKernels.key(
            _core.remap_cuda_device(kernel, move.source, move.target)
        )
        for kernel in _core.triton_kernel_sources(source)
    }
    graph.source_code = moved_source
    # The wrapper is written to torch's code cache under this key: never over cuda:source's.
    graph.cache_key = f"{graph.cache_key}_cuda{move.target}"
    graph.device_idxs = type(graph.device_idxs)(
        move.target if index == move.source else index for index in graph.device_idxs
    )
    for name, constant in list((graph.constants or {}).items()):
        if isinstance(constant, torch.Tensor) and constant.device == torch.device(
            "cuda", move.source
        ):
            graph.constants[name] = constant.to(torch.device("cuda", move.target))
    bundle = graph._triton_bundle
    if bundle is None:
        return
    graph._triton_bundle = dataclasses.replace(
        bundle,
        kernel_artifacts=[
            dataclasses.replace(artifacts, device=move.target)
            if artifacts.device == move.source
            else artifacts
            for artifacts in bundle.kernel_artifacts
        ],
        static_autotuners=[
            _move_autotuner(autotuner, move, moved_keys) for autotuner in bundle.static_autotuners
        ],
    )


def _move_autotuner(autotuner: Any, move: Move, moved_keys: Dict[str, str]) -> Any:
    """A statically launchable kernel of cuda:source, loading its binary on cuda:target."""
    if autotuner.cache_key not in moved_keys:
        raise CannotMove(
            f"the bundled kernel {autotuner.kernel_name} is not compiled by its graph's code"
        )
    kernel = autotuner.kernel
    if kernel.triton_meta.get("device") != move.source or kernel.device_props.index != move.source:
        raise CannotMove(
            f"the bundled kernel {autotuner.kernel_name} was compiled for "
            f"cuda:{kernel.triton_meta.get('device')}, its graph for cuda:{move.source}"
        )
    kernel.device_props = kernel.device_props._replace(index=move.target)
    kernel.triton_meta["device"] = move.target
    for result in kernel.compile_results:
        meta = getattr(result, "compile_meta", None)
        if meta is not None and meta.get("device") == move.source:
            meta["device"] = move.target
    return dataclasses.replace(autotuner, cache_key=moved_keys[autotuner.cache_key])


# The move of the entry torch is installing now, for its guards.
_installing: contextvars.ContextVar[Optional[Move]] = contextvars.ContextVar(
    "megacache_move", default=None
)


@contextlib.contextmanager
def moving_guards(move: Optional[Move]) -> Iterator[None]:
    """While torch installs an entry: the tensors in its guard state are unpickled on
    cuda:`move.target` (see `guard_tensor_device`)."""
    token = _installing.set(move)
    try:
        yield
    finally:
        _installing.reset(token)


def guard_tensor_device(device: torch.device) -> torch.device:
    """The device a tensor in guard state is unpickled on: moved while a moved entry installs."""
    move = _installing.get()
    if move is not None and device.type == "cuda" and device.index == move.source:
        return torch.device("cuda", move.target)
    return device
