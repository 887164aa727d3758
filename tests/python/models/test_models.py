"""Model conformance suite: tiny Hugging Face models under automatic mode, each case in fresh
processes with empty torch cache dirs and HOMEs (fresh machines) and one store.

For every case:
- `produce` compiles under megacache.enable() and publishes; it must succeed wherever plain
  torch.compile does;
- `consume` starts warm from the store; it must not crash, must give the same outputs and
  gradients, and must start at `package` level (no Dynamo trace, no Inductor compile) or
  at `fx` level (traced, every graph from the FX graph cache);
- torch's own precompile path (caching_precompile plus a Mega-Cache load) runs the same case
  beside it, and is recorded: crash, package, fx or compiled.

The results table is written to build/models/<torch version>.md (docs/models.md keeps the
record)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from table import render  # noqa: E402  (beside this file)

HERE = Path(__file__).parent
REPORT_DIR = HERE.parent.parent.parent / "build" / "models"

CASES = [
    # every architecture, inference
    "llama-infer",
    "qwen2-infer",
    "phi-infer",
    "gpt2-infer",
    "bert-infer",
    "distilbert-infer",
    "t5-infer",
    "vit-infer",
    # training: forward, loss, backward
    "llama-train",
    "gpt2-train",
    "bert-train",
    # mark_dynamic on the sequence dim
    "llama-dynamic",
    "gpt2-dynamic",
    # two sequence lengths: an automatic dynamic recompile
    "llama-two_lengths",
    "bert-two_lengths",
    "llama-fullgraph",
    "bert-fullgraph",
    "qwen2-module_compile",
    "llama-two_models",
    "gpt2-graph_break",
]
# torch's own column costs a compile more per case: it runs when MEGACACHE_MODELS_TORCH=1
# (make models-table), which records docs/models.md; make test runs megacache's roles.
WITH_TORCH = os.environ.get("MEGACACHE_MODELS_TORCH") == "1"
ROLES = ["produce", "consume"] + (["torch-produce", "torch"] if WITH_TORCH else [])


def run(case: str, role: str, out: Path) -> Dict[str, Any]:
    # The caller's PYTHONPATH stays (a megacache built in place, as on the GPU host).
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    # Each role is a fresh machine: its own empty torch cache dir and HOME (Triton and CUDA
    # keep their caches there), so a consumer finds only what the package carries.
    home = out / f"home-{role}"
    home.mkdir()
    env = dict(
        os.environ,
        TORCHINDUCTOR_CACHE_DIR=str(out / f"cache-{role}"),
        HOME=str(home),
        HF_HUB_OFFLINE="1",
        PYTHONPATH=path,
    )
    store = f"file://{out / 'store'}"
    proc = subprocess.run(
        [sys.executable, str(HERE / "run_case.py"), case, role, store, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        report = {"level": "crash", "error": proc.stderr[-4000:], "returncode": proc.returncode}
    else:
        report = json.loads(lines[-1])
        report["returncode"] = 0
    (out / f"{role}.json").write_text(json.dumps(report))
    return report


@pytest.fixture(scope="session")
def results(tmp_path_factory):
    """Every case, each role in its own fresh process, MEGACACHE_MODELS_JOBS cases at a time."""
    root = tmp_path_factory.mktemp("models")

    def run_case(case: str):
        out = root / case
        out.mkdir()
        reports = {}
        for role in ROLES:  # each consumer after its producer
            reports[role] = run(case, role, out)
        return case, out, reports

    jobs = int(os.environ.get("MEGACACHE_MODELS_JOBS", "2"))  # CPU machines have two cores
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        done = {case: (out, reports) for case, out, reports in pool.map(run_case, CASES)}
    write_table(done)
    return done


def write_table(done) -> None:
    import transformers

    results = {case: done[case][1] for case in CASES}
    name = f"torch-{torch.__version__}"
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / f"{name}.json").write_text(json.dumps(results, indent=1))
    (REPORT_DIR / f"{name}.md").write_text(
        render(results, f"torch {torch.__version__}, transformers {transformers.__version__}")
    )


@pytest.mark.parametrize("case", CASES)
def test_second_start_is_warm_and_equal(results, case):
    out, reports = results[case]
    produce, consume = reports["produce"], reports["consume"]
    assert produce["returncode"] == 0, f"the first run failed under megacache:\n{produce['error']}"
    assert consume["returncode"] == 0, f"the second start crashed:\n{consume['error']}"
    assert consume["level"] in ("package", "fx"), consume
    assert "fxgraph_cache_miss" not in consume["inductor"], consume
    expected = torch.load(out / "produce.pt")
    actual = torch.load(out / "consume.pt")
    assert len(actual) == len(expected)
    for want, got in zip(expected, actual):
        torch.testing.assert_close(got, want)
