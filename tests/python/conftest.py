import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
DATA = HERE.parent / "data"
WORKLOAD = HERE / "workload.py"


def _share_compiled_libraries() -> None:
    """Every process the tests start compiles with memo_cxx.py: a library g++ already built in
    this test run, from the same command and bytes, is not built again (see its docstring).
    Set before torch is imported: torch reads CXX once."""
    global _compile_memo
    if "MEGACACHE_TEST_COMPILE_MEMO" in os.environ or shutil.which("g++") is None:
        return  # set by the caller (empty: off, as make models-table does for honest seconds)
    _compile_memo = tempfile.mkdtemp(prefix="megacache-test-cxx-")
    os.environ["MEGACACHE_TEST_REAL_CXX"] = os.environ.get("CXX", "g++")
    os.environ["MEGACACHE_TEST_COMPILE_MEMO"] = _compile_memo
    os.environ["CXX"] = str(HERE / "memo_cxx.py")


_compile_memo = None
_share_compiled_libraries()


def pytest_sessionfinish(session, exitstatus):
    if _compile_memo is not None:
        shutil.rmtree(_compile_memo, ignore_errors=True)


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


@pytest.fixture
def redis_url():
    """A real redis-server on a free loopback port, for one test."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make test installs it)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.kill()
        server.wait()


@pytest.fixture
def fresh_torch_manager():
    """torch's CacheArtifactManager emptied for one test, and emptied again after it."""
    from torch.compiler._cache import CacheArtifactManager

    CacheArtifactManager._ensure_cache_artifacts_registered()
    CacheArtifactManager.clear()
    yield CacheArtifactManager
    CacheArtifactManager.clear()
