"""Shared helpers of the benchmark scripts: medians of repeats, peak memory, result files.

Every benchmark writes ``benchmarks/results/<name>.json`` (the measurements, the machine, the
versions and the command) and ``<name>.md`` (a table for people), atomically.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Call ``fn`` ``warmup`` + ``repeats`` times; the median and spread of the timed calls."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "repeats": repeats,
    }


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "git": _git_commit(),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, data: dict[str, Any], markdown: str) -> Path:
    """``results/<name>.json`` and ``.md``, each written atomically."""
    from promu_lib.io import atomic_write_json, atomic_write_text

    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), "command": " ".join(sys.argv), **data}
    atomic_write_json(RESULTS / f"{name}.json", payload)
    head = (
        f"<!-- written by `{payload['command']}` on {payload['machine']['date']}, "
        f"commit {payload['machine']['git']}; do not edit -->\n\n"
    )
    atomic_write_text(RESULTS / f"{name}.md", head + markdown + "\n")
    return RESULTS / f"{name}.md"


def mean_std_rows(f1: dict[str, dict[str, list[float]]]) -> list[list[str]]:
    """One table row per arm: ``mean ± sample std`` of its per-seed F1 on each dataset."""
    return [
        [name, *(f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" for v in per.values())]
        for name, per in f1.items()
    ]


def gap_row(
    label: str, better: dict[str, list], worse: dict[str, list], gaps: dict[str, dict]
) -> list[str]:
    """One table row: per dataset, the paired gap of ``better`` over ``worse`` (per-seed
    ``promu_lib.evidence`` counts) with its 95% interval and verdict, also stored in ``gaps``
    under ``"<label> @ <dataset>"``."""
    from promu_lib.evidence import paired_gap

    cells = []
    for d in better:
        g = paired_gap(better[d], worse[d])
        gaps[f"{label} @ {d}"] = {"gap": g.point, "low": g.low, "high": g.high,
                                  "verdict": g.verdict}  # fmt: skip
        cells.append(f"{g.point:+.2f} [{g.low:+.2f}, {g.high:+.2f}] {g.verdict}")
    return [label, *cells]


def run_child(args: Sequence[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python <args>`` in a fresh process (clean peak RSS); it prints one JSON line last."""
    out = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
