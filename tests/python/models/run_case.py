"""Subprocess side of the model conformance suite: one case, one role, one fresh process.

usage: run_case.py CASE ROLE STORE OUT
  CASE  <model>-<mode>, e.g. llama-infer, gpt2-train (see MODES)
  ROLE  produce: megacache.enable(STORE), run the case (compiles and publishes);
        consume: megacache.enable(STORE), run the case (a warm start);
        torch-produce: torch's own precompile without megacache: caching_precompile on,
                 run the case, save torch.compiler.save_cache_artifacts() to OUT/torch.bin;
        torch:   torch's own best warm start without megacache: caching_precompile on, then
                 torch.compiler.load_cache_artifacts(OUT/torch.bin), then run the case.
        The torch roles report a crash instead of raising it.
Writes the outputs (and gradients) to OUT/<ROLE>.pt and prints one JSON line: counters,
megacache's automatic stats and the hit level.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any, Callable, Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import zoo  # noqa: E402

CASE, ROLE, STORE, OUT = sys.argv[1:5]
MODEL, MODE = CASE.split("-", 1)


def first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    for name in ("loss", "logits", "last_hidden_state"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    return output[0]


def call(
    compiled: Callable[..., Any],
    name: str,
    length: int,
    *,
    dynamic: bool = False,
    labels: bool = False,
) -> Any:
    kwargs, seq_dim = zoo.inputs(name, length, labels=labels)
    if dynamic and seq_dim >= 0:
        for value in kwargs.values():
            torch._dynamo.mark_dynamic(value, seq_dim)
    return compiled(**kwargs)


class WithGraphBreak(torch.nn.Module):
    """A model whose forward breaks the graph: Dynamo compiles the part before the break and
    a resume function after it."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, **kwargs: Any) -> torch.Tensor:
        hidden = self.inner(**kwargs).logits
        print("graph break", file=sys.stderr)
        return torch.softmax(hidden * 2, dim=-1)


def run() -> List[torch.Tensor]:
    """The case itself: the tensors whose values two processes must agree on."""
    if MODE == "train":
        model = zoo.build(MODEL)
        compiled = torch.compile(model)
        output = call(compiled, MODEL, 8, labels=True)
        loss = (
            output.loss
            if getattr(output, "loss", None) is not None
            else first_tensor(output).pow(2).mean()
        )
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        return [loss.detach()] + grads
    if MODE == "two_models":
        first, second = zoo.build("llama"), zoo.build("bert")
        with torch.no_grad():
            return [
                first_tensor(call(torch.compile(first), "llama", 8)),
                first_tensor(call(torch.compile(second), "bert", 8)),
            ]
    model = zoo.build(MODEL)
    if MODE == "graph_break":
        model = WithGraphBreak(model)
    with torch.no_grad():
        if MODE in ("infer", "graph_break"):
            return [first_tensor(call(torch.compile(model), MODEL, 8))]
        if MODE == "fullgraph":
            return [first_tensor(call(torch.compile(model, fullgraph=True), MODEL, 8))]
        if MODE == "module_compile":
            model.compile()
            return [first_tensor(call(model, MODEL, 8))]
        if MODE == "dynamic":
            compiled = torch.compile(model)
            return [first_tensor(call(compiled, MODEL, length, dynamic=True)) for length in (8, 11)]
        if MODE == "two_lengths":
            compiled = torch.compile(model)
            return [first_tensor(call(compiled, MODEL, length)) for length in (8, 11)]
    raise SystemExit(f"unknown case {CASE}")


def hit_level(counters: Dict[str, Dict[str, int]]) -> str:
    """package: no Dynamo trace and no Inductor compile; fx: traced, but every graph came from
    the FX graph cache; compiled: Inductor compiled something."""
    inductor = counters["inductor"]
    if inductor.get("fxgraph_cache_miss", 0):
        return "compiled"
    if counters["stats"].get("unique_graphs", 0) or inductor.get("fxgraph_cache_hit", 0):
        return "fx"
    return "package"


def main() -> None:
    from torch._dynamo.utils import counters

    error = ""
    stats: Dict[str, Any] = {}
    if ROLE in ("produce", "consume"):
        import megacache

        megacache.enable(store=STORE)
    else:
        torch._dynamo.config.caching_precompile = True
    if ROLE == "torch":
        with open(os.path.join(OUT, "torch.bin"), "rb") as f:
            blob = f.read()
        if blob:
            torch.compiler.load_cache_artifacts(blob)
    start = time.monotonic()
    try:
        outputs = run()
    except Exception:  # the torch role reports torch's own crash instead of raising it
        if not ROLE.startswith("torch"):
            raise
        error = traceback.format_exc(limit=-3)
        outputs = []
    seconds = time.monotonic() - start
    if ROLE == "torch-produce":
        saved = torch.compiler.save_cache_artifacts() if not error else None
        with open(os.path.join(OUT, "torch.bin"), "wb") as f:
            f.write(saved[0] if saved else b"")
    if ROLE in ("produce", "consume"):
        stats = megacache.automatic_stats()
    torch.save([t.detach() for t in outputs], os.path.join(OUT, f"{ROLE}.pt"))
    report = {k: dict(counters[k]) for k in ("dynamo_cache", "inductor", "stats", "frames")}
    report.update(
        automatic=stats,
        error=error,
        seconds=round(seconds, 3),
        level="crash" if error else hit_level(report),
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
