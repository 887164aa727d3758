"""Renders the model suite's results (build/models/torch-<version>.json) as the markdown table
kept in docs/models.md. usage: table.py RESULTS.json"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict


def level(reports: Dict[str, Any], consumer: str, producer: str) -> str:
    if consumer not in reports:
        return "not run"
    if reports.get(producer, {}).get("level") == "crash":
        return "crash (first run)"
    return reports[consumer]["level"]


def seconds(reports: Dict[str, Any], role: str) -> str:
    report = reports.get(role, {})
    return f"{report['seconds']:.1f}" if "seconds" in report and report["level"] != "crash" else ""


def render(results: Dict[str, Dict[str, Any]], title: str) -> str:
    rows = [
        title,
        "",
        (
            "| case | megacache warm start | cold run (s) | warm run (s) "
            "| torch: caching_precompile + Mega-Cache | torch warm run (s) |"
        ),
        "|---|---|---:|---:|---|---:|",
    ]
    for case, reports in results.items():
        rows.append(
            f"| {case} | {level(reports, 'consume', 'produce')} | {seconds(reports, 'produce')} "
            f"| {seconds(reports, 'consume')} | {level(reports, 'torch', 'torch-produce')} "
            f"| {seconds(reports, 'torch')} |"
        )
    at_package = sum(r["consume"]["level"] == "package" for r in results.values())
    rows += [
        "",
        f"{at_package} of {len(results)} cases start at package level. Seconds are the "
        "case's calls alone (the first result of each compiled function), without imports.",
    ]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(render(json.load(f), sys.argv[1]))
