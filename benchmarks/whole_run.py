"""Wall time per stage and peak memory of a whole ``./run_all.sh`` run.

    .venv/bin/python benchmarks/whole_run.py                 # ./run_all.sh --force (default profile)
    .venv/bin/python benchmarks/whole_run.py -- --only table1 --force
    .venv/bin/python benchmarks/whole_run.py --cold 6a4d18a HEAD   # back to back, from nothing
    .venv/bin/python benchmarks/whole_run.py --cold HEAD -- --only data   # a pipeline argument

``--cold REV ...`` runs the default profile of each commit in turn, on this machine, each in a
fresh git worktree (so with an empty run cache: every mining, pre-training and fine-tuning is
trained) under this environment's interpreter (``python -m promu_lib.pipeline --force``,
``PYTHONPATH`` the worktree; installation is not measured), and gives each one's wall time,
peak memory, ratio to the first, and whether its tables came out as committed at that commit.
Results: ``benchmarks/results/whole_run.{json,md}``; the worktrees are removed afterwards.

Runs ``./run_all.sh`` with the given arguments (``--force`` when none are given, so every
stage really runs), samples the resident memory of the whole process tree (the runner, each
notebook's kernel and the worker processes it starts) every 0.2 s, and reads each stage's time
from ``reports/status/<stage>.json``. The peaks reported are the largest SUMS over the tree at
one moment, of RSS (shared library pages counted in every process) and of PSS (shared pages
split between the processes that map them: what the machine must hold).
Results: ``benchmarks/results/whole_run_single.{json,md}``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

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


def measure(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict:
    """Run ``cmd`` in ``cwd``; its exit code, wall time, the peak RSS and PSS of its process
    tree (sampled every 0.2 s) and the stage times it wrote to ``cwd/reports/status``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env)
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
    status = cwd / "reports" / "status"
    others = sorted(f.stem for f in status.glob("*.json") if f.stem not in names)
    for name in names + others:  # another commit's stages may have other names
        f = status / f"{name}.json"
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
    return {
        "exit_code": rc,
        "wall_s": wall,
        "peak_rss_mib": peak["bytes"] / 2**20,
        "peak_at_s": peak["at_s"],
        "peak_processes_rss_pss_mib": peak.get("processes", []),
        "peak_pss_mib": peak_pss["bytes"] / 2**20,
        "peak_pss_at_s": peak_pss["at_s"],
        "stages": stages,
    }


def tables_changed(tree: Path) -> list[str]:
    """The tables under ``figures/`` (CSV and Markdown) that a run in ``tree`` left different
    from the ones committed there: empty when the run reproduced them byte for byte. The
    ``*.config.json`` beside them are left out (they record the commit and the time)."""
    out = subprocess.check_output(
        ["git", "status", "--porcelain", "--", "figures/*.csv", "figures/*.md"], cwd=tree, text=True
    )
    return sorted(line[3:] for line in out.splitlines())


def cold(revs: list[str], pipeline_args: list[str]) -> int:
    """Each commit's default run from an empty cache, back to back; results and ratios."""
    runs = {}
    with tempfile.TemporaryDirectory(prefix="promu-whole-run-") as tmp:
        for rev in revs:
            sha = subprocess.check_output(["git", "rev-parse", "--short", rev], cwd=ROOT, text=True)
            tree = Path(tmp) / sha.strip()
            subprocess.check_call(
                ["git", "worktree", "add", "--detach", "-q", str(tree), rev], cwd=ROOT
            )
            try:
                env = {**os.environ, "PYTHONPATH": str(tree)}
                print(f"[whole_run] {rev} ({sha.strip()}) in {tree}", flush=True)
                runs[rev] = {"commit": sha.strip(), **measure(
                    [sys.executable, "-m", "promu_lib.pipeline", "--force", *pipeline_args], tree, env
                )}  # fmt: skip
                runs[rev]["tables_changed"] = tables_changed(tree)
                print(f"[whole_run] {rev}: {json.dumps(runs[rev])}", flush=True)  # kept if cut off
            finally:
                subprocess.call(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)
                shutil.rmtree(tree, ignore_errors=True)
    first = runs[revs[0]]
    rows = [
        [rev, r["commit"], r["exit_code"], f"{r['wall_s'] / 60:.1f}",
         f"{r['wall_s'] / first['wall_s']:.2f}x",
         f"{r['peak_pss_mib'] / 1024:.2f}", f"{r['peak_rss_mib'] / 1024:.2f}",
         "identical" if not r["tables_changed"] else f"{len(r['tables_changed'])} differ"]
        for rev, r in runs.items()
    ]  # fmt: skip
    stage_names_ = [s["stage"] for s in first["stages"]]
    stage_rows = [
        [name, *(next((f"{s['seconds']:.0f}" for s in r["stages"] if s["stage"] == name
                       and s["seconds"] is not None), "-") for r in runs.values())]
        for name in stage_names_
    ]  # fmt: skip
    md = (
        "# Whole default run from an empty cache, back to back on one machine\n\n"
        "Each commit in a fresh git worktree, one after the other, under one interpreter "
        "(`python -m promu_lib.pipeline --force`; installation not measured); peak memory is "
        'the largest sum over the process tree at one moment; "tables vs committed" compares '
        "the run's `figures/*.csv` and `*.md` with the ones committed at that commit. "
        f"`benchmarks/whole_run.py --cold {' '.join([*revs, '--', *pipeline_args])}`. "
        "Toy world, tiny profile.\n\n"
        + markdown_table(
            [
                "commit",
                "sha",
                "exit code",
                "wall (min)",
                f"ratio to {revs[0]}",
                "peak PSS (GiB)",
                "peak RSS (GiB)",
                "tables vs committed",
            ],
            rows,
        )  # fmt: skip
        + "\n\nSeconds per stage:\n\n"
        + markdown_table(["stage", *runs], stage_rows)
    )
    data = {"revs": revs, "args": pipeline_args, "runs": runs}
    print(write_results("whole_run", data, md))
    return max(r["exit_code"] for r in runs.values())


def main() -> None:
    args = sys.argv[1:]
    if args[:1] in (["-h"], ["--help"]):  # not passed on: it would overwrite the results
        print(__doc__)
        return
    if args and args[0] == "--cold":
        revs, _, rest = " ".join(args[1:]).partition(" -- ")
        sys.exit(cold(revs.split() or ["HEAD"], rest.split()))
    if args and args[0] == "--":
        args = args[1:]
    args = args or ["--force"]
    data = {"run_all_args": args, **measure([str(ROOT / "run_all.sh"), *args], ROOT)}
    rc, wall = data["exit_code"], data["wall_s"]
    rows = [[s["stage"], s["status"], s["seconds"]] for s in data["stages"]]
    md = (
        f"# Whole run: `./run_all.sh {' '.join(args)}`\n\n"
        f"Exit code {rc}; wall time {wall / 60:.1f} min ({wall:.0f} s, installation checks "
        "included); peak resident memory of the process tree "
        f"{data['peak_rss_mib'] / 1024:.2f} GiB summed as RSS (at {data['peak_at_s']:.0f} s; "
        "shared library pages counted once per process), "
        f"{data['peak_pss_mib'] / 1024:.2f} GiB summed as PSS (at {data['peak_pss_at_s']:.0f} s; "
        "shared pages split: what the machine holds).\n\n"
        + markdown_table(["stage", "status", "seconds"], rows)
        + "\n\nAt the RSS peak (RSS MiB, PSS MiB, process):\n\n"
        + "\n".join(f"- {r} / {p} `{cmd}`" for r, p, cmd in data["peak_processes_rss_pss_mib"])
    )
    print(write_results("whole_run_single", data, md))
    sys.exit(rc)


if __name__ == "__main__":
    main()
