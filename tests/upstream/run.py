#!/usr/bin/env python3
"""Runs PyTorch's own tests for the cache features in three modes (see megacache_modes.py) and
prints the tests whose outcome differs between the modes.

  python3 tests/upstream/run.py --pytorch-tests /path/to/pytorch-tests [--mode all]

--pytorch-tests is a directory holding PyTorch's test/ tree (at least the files in SELECTION),
fetched separately: this repository never contains PyTorch's tests. Each (file, mode) pair runs
in a fresh pytest process with its own TORCHINDUCTOR_CACHE_DIR and MEGACACHE_DIR, so no mode
sees another's caches; outcomes come from pytest's --junitxml.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Tuple

HERE = Path(__file__).resolve().parent
MODES = ("plain", "dropins", "enable")

# (test file, pytest selection args, ungate @requires_triton()). test_codecache.py is huge and
# slow; only its tests that call save/load_cache_artifacts or standalone_compile matter here.
# Ungating lets test_cache_hot_load's "cpu" cases run on a CPU-only torch (megacache_modes.py).
SELECTION: List[Tuple[str, List[str], bool]] = [
    (
        "test/inductor/test_codecache.py",
        [
            "-k",
            (
                "cache_hot_load or TestStandaloneCompile"
                " or remote_only_autotune_records_cache_artifacts"
            ),
        ],
        True,
    ),
    ("test/inductor/test_standalone_compile.py", [], False),
    ("test/dynamo/test_package.py", [], False),
    ("test/dynamo/test_precompile_context.py", [], False),
]


def run_one(
    tests_dir: Path,
    rel: str,
    select: List[str],
    ungate: bool,
    mode: str,
    out_dir: Path,
    timeout_s: int,
    no_fresh_cache: bool,
) -> Path:
    """Runs one file in one mode in a fresh process; returns the junit xml path."""
    stem = f"{rel.replace('/', '_').removesuffix('.py')}.{mode}"
    xml_path, log_path = out_dir / f"{stem}.xml", out_dir / f"{stem}.log"
    scratch = Path(tempfile.mkdtemp(prefix=f"mc-upstream-{mode}-"))
    env = dict(os.environ)
    env.update(
        MEGACACHE_UPSTREAM_MODE=mode,
        MEGACACHE_UPSTREAM_UNGATE_TRITON="1" if ungate else "0",
        MEGACACHE_DIR=str(scratch / "megacache"),  # fresh local store per run
        TORCHINDUCTOR_CACHE_DIR=str(scratch / "inductor"),  # same cold start in every mode
        PYTHONPATH=os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p),
    )
    if no_fresh_cache:
        # torch's inductor TestCase wraps every test in fresh_cache(), a per-test
        # TORCHINDUCTOR_CACHE_DIR; megacache's automatic mode stands aside there by design, so
        # `enable` would test nothing. torch's own switch turns that wrapper off (in all modes,
        # to keep the comparison fair); tests that enter fresh_cache() themselves still do.
        env["INDUCTOR_TEST_DISABLE_FRESH_CACHE"] = "1"
    cmd = [
        "timeout",
        "-k",
        "15",
        str(timeout_s),
        sys.executable,
        "-m",
        "pytest",
        rel,
        *select,
        "-p",
        "megacache_modes",
        "-p",
        "no:cacheprovider",
        "-rA",
        "-q",
        f"--junitxml={xml_path}",
    ]
    start = time.time()
    with open(log_path, "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, cwd=tests_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    print(f"  {rel} [{mode}] rc={rc} {time.time() - start:.0f}s -> {log_path}", flush=True)
    if rc in (124, 137):
        # A killed run leaves no junit xml; record that, so the table shows it.
        xml_path.write_text(
            f'<testsuites><testsuite><testcase classname="{rel}" '
            f'name="(process timed out after {timeout_s}s)"><error message="timeout"/>'
            f"</testcase></testsuite></testsuites>"
        )
    return xml_path


def outcome_of(case: ET.Element) -> Tuple[str, str]:
    """(outcome, failure text) of one junit testcase."""
    for tag in ("failure", "error"):
        el = case.find(tag)
        if el is not None:
            return (
                "failed" if tag == "failure" else "error",
                (el.get("message") or "") + "\n" + (el.text or ""),
            )
    el = case.find("skipped")
    if el is not None:
        return ("xfailed" if el.get("type") == "pytest.xfail" else "skipped"), el.get(
            "message"
        ) or ""
    return "passed", ""


def read_xml(path: Path, rel: str) -> Dict[str, Tuple[str, str]]:
    if not path.exists():
        return {f"{rel}::(no junit xml: collection or process failure)": ("error", "")}
    results = {}
    for case in ET.parse(path).iter("testcase"):
        cls = (case.get("classname") or "").rsplit(".", 1)[-1]
        results[f"{rel}::{cls}::{case.get('name')}"] = outcome_of(case)
    return results


def key_lines(text: str) -> str:
    """The exception line and the innermost megacache frame of a failure, for the report."""
    lines = text.splitlines()
    exc = next(
        (
            line
            for line in reversed(lines)
            if re.match(r"^E\s+\w+(\.\w+)*(Error|Exception|Warning)\b", line)
        ),
        "",
    )
    exc = exc or (lines[0] if lines else "")
    frames = [line for line in lines if "megacache" in line and re.search(r"\.py:\d+", line)]
    out = f"      {exc.strip()[:300]}"
    if frames:
        out += f"\n      top megacache frame: {frames[-1].strip()[:300]}"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--pytorch-tests",
        required=True,
        type=Path,
        help="directory holding PyTorch's test/ tree (fetched separately)",
    )
    ap.add_argument(
        "--mode",
        action="append",
        choices=(*MODES, "all"),
        help="mode(s) to run; repeatable; default all",
    )
    ap.add_argument(
        "--files", default="", help="run only SELECTION files containing this substring"
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "megacache-upstream",
        help="where junit xml and logs go (default: %(default)s)",
    )
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per pytest process")
    ap.add_argument(
        "--no-fresh-cache",
        action="store_true",
        help="set INDUCTOR_TEST_DISABLE_FRESH_CACHE=1 so that `enable` is active in "
        "tests that do not enter fresh_cache() themselves (see run_one)",
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="do not run; rebuild the table from the xml already in --out",
    )
    args = ap.parse_args()

    modes = list(MODES) if not args.mode or "all" in args.mode else list(dict.fromkeys(args.mode))
    files = [s for s in SELECTION if args.files in s[0]]
    args.out.mkdir(parents=True, exist_ok=True)
    tests_dir = args.pytorch_tests.resolve()

    results: Dict[str, Dict[str, Tuple[str, str]]] = {}  # mode -> test id -> (outcome, text)
    for mode in modes:
        results[mode] = {}
        for rel, select, ungate in files:
            stem = f"{rel.replace('/', '_').removesuffix('.py')}.{mode}"
            xml_path = (
                args.out / f"{stem}.xml"
                if args.report_only
                else run_one(
                    tests_dir,
                    rel,
                    select,
                    ungate,
                    mode,
                    args.out,
                    args.timeout,
                    args.no_fresh_cache,
                )
            )
            results[mode].update(read_xml(xml_path, rel))

    ids = sorted(set().union(*(r.keys() for r in results.values())))
    differing = [t for t in ids if len({results[m].get(t, ("-", ""))[0] for m in modes}) > 1]

    width = max([len(t) for t in differing] + [20])
    print("\n" + "test id".ljust(width) + "".join(f"  {m:>8}" for m in modes))
    for t in differing:
        print(t.ljust(width) + "".join(f"  {results[m].get(t, ('-', ''))[0]:>8}" for m in modes))
    if not differing:
        print("(no test differs between the modes)")

    print("\ntotals:")
    for m in modes:
        counts: Dict[str, int] = {}
        for outcome, _ in results[m].values():
            counts[outcome] = counts.get(outcome, 0) + 1
        print(f"  {m:>8}: " + ", ".join(f"{n} {o}" for o, n in sorted(counts.items())))
    print(f"  {len(differing)} of {len(ids)} tests differ")

    if differing:
        print("\nfailures in differing rows:")
        for t in differing:
            for m in modes:
                outcome, text = results[m].get(t, ("-", ""))
                if outcome in ("failed", "error"):
                    print(f"  {t} [{m}] {outcome}\n{key_lines(text)}")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
