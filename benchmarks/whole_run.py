"""Wall time per stage and peak memory of a whole ``./run_all.sh`` run.

    .venv/bin/python benchmarks/whole_run.py                 # ./run_all.sh --force (default profile)
    .venv/bin/python benchmarks/whole_run.py -- --only table1 --force

Runs ``./run_all.sh`` with the given arguments (``--force`` when none are given, so every
stage really runs), samples the resident memory of the whole process tree (the runner, each
notebook's kernel and the worker processes it starts) every 0.2 s, and reads each stage's time
from ``reports/status/<stage>.json``. The peaks reported are the largest SUMS over the tree at
one moment, of RSS (shared library pages counted in every process) and of PSS (shared pages
split between the processes that map them: what the machine must hold).
Results: ``benchmarks/results/whole_run.{json,md}``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import psutil
from common import ROOT, markdown_table, write_results


def tree_rss(proc: psutil.Process) -> tuple[int, int, list[tuple[int, int, str]]]:
    """Resident bytes of ``proc`` and its descendants summed as RSS (a library page mapped by
    N processes counts N times: torch's libraries are ~0.5 GB in each process) and as PSS
    (each shared page split between its processes: what the machine holds), and
    (RSS MiB, PSS MiB, command) of each process."""
    rss_total, pss_total, parts = 0, 0, []
    for p in [proc, *proc.children(recursive=True)]:
        try:
            mem = p.memory_full_info()
            cmd = " ".join(p.cmdline()[1:4])[:90]
        except psutil.Error:
            continue  # ended between the listing and the read
        rss_total += mem.rss
        pss_total += mem.pss
        parts.append((mem.rss >> 20, mem.pss >> 20, cmd))
    return rss_total, pss_total, sorted(parts, reverse=True)


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] == "--":
        args = args[1:]
    args = args or ["--force"]
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(ROOT / "run_all.sh"), *args], cwd=ROOT)
    root = psutil.Process(proc.pid)
    peak = {"bytes": 0, "at_s": 0.0}
    peak_pss = {"bytes": 0, "at_s": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss, pss, parts = tree_rss(root)
            if rss > peak["bytes"]:
                peak.update(bytes=rss, at_s=time.perf_counter() - t0, processes=parts)
            if pss > peak_pss["bytes"]:
                peak_pss.update(bytes=pss, at_s=time.perf_counter() - t0)
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rc = proc.wait()
    done.set()
    sampler.join()
    wall = time.perf_counter() - t0
    from promu_lib.pipeline import stage_names

    stages = []
    names = stage_names()
    names.insert(names.index("pretrain"), "jobs")  # the one training pass, before pre-training
    for name in names:
        f = ROOT / "reports" / "status" / f"{name}.json"
        if not f.is_file():
            continue
        s = json.loads(f.read_text(encoding="utf-8"))
        stages.append(
            {
                "stage": name,
                "status": s.get("status"),
                "seconds": s.get("seconds"),
                "skipped": bool(s.get("skipped")),
            }
        )
    data = {
        "run_all_args": args,
        "exit_code": rc,
        "wall_s": wall,
        "peak_rss_mib": peak["bytes"] / 2**20,
        "peak_at_s": peak["at_s"],
        "peak_processes_rss_pss_mib": peak.get("processes", []),
        "peak_pss_mib": peak_pss["bytes"] / 2**20,
        "peak_pss_at_s": peak_pss["at_s"],
        "stages": stages,
    }
    rows = [[s["stage"], s["status"], s["seconds"]] for s in stages]
    md = (
        f"# Whole run: `./run_all.sh {' '.join(args)}`\n\n"
        f"Exit code {rc}; wall time {wall / 60:.1f} min ({wall:.0f} s, installation checks "
        f"included); peak resident memory of the process tree {peak['bytes'] / 2**30:.2f} GiB "
        f"summed as RSS (at {peak['at_s']:.0f} s; shared library pages counted once per "
        f"process), {peak_pss['bytes'] / 2**30:.2f} GiB summed as PSS (at "
        f"{peak_pss['at_s']:.0f} s; shared pages split: what the machine holds).\n\n"
        + markdown_table(["stage", "status", "seconds"], rows)
        + "\n\nAt the RSS peak (RSS MiB, PSS MiB, process):\n\n"
        + "\n".join(f"- {r} / {p} `{cmd}`" for r, p, cmd in peak.get("processes", []))
    )
    print(write_results("whole_run", data, md))
    sys.exit(rc)


if __name__ == "__main__":
    main()
