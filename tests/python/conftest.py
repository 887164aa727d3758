import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
DATA = HERE.parent / "data"
WORKLOAD = HERE / "workload.py"


def run_workload(*args, cache_dir, timeout=600):
    """Runs tests/python/workload.py in a fresh interpreter with its own torch cache dir."""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache_dir))
    proc = subprocess.run(
        [sys.executable, str(WORKLOAD), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"workload {args[0]} failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def read_tree(root):
    """Every regular file under root: relative path -> bytes."""
    root = Path(root)
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """One cold compile in a fresh process, shared by the end-to-end tests (about 30 s)."""
    out = tmp_path_factory.mktemp("compiled")
    report = run_workload("compile-save", out, cache_dir=tmp_path_factory.mktemp("cold-cache"))
    return out, report
