"""Wall time of each kind of training job of the default run, one job at a time (toy world).

    .venv/bin/python benchmarks/job_times.py                       # this tree, label "now"
    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/job_times.py --tree /tmp/before --label before

Where a default run's time goes, job by job: label mining, one pre-training (PROMU, Eq. 11)
and one fine-tuning per model family and task, run in order in one fresh process with one
torch thread (what a worker of the training pass is), its imports timed apart. Everything is
written to a temporary output directory; the toy world is read from ``data/tiny`` of this
repository (built by ``./run_all.sh``), so each tree trains on the same files. A run of
another ``--label`` replaces its own entry in ``benchmarks/results/job_times.{json,md}`` and
keeps the others, so "before" and "now" sit side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import RESULTS, ROOT, markdown_table, write_results

JOBS = (  # (name, what the child runs)
    ("mining", "mine"),
    ("pretrain promu (400 steps)", "pretrain"),
    ("finetune promu twitter2015", "promu twitter2015"),
    ("finetune promu mnre", "promu mnre"),
    ("finetune hvpnet twitter2015", "hvpnet twitter2015"),
    ("finetune hvpnet mnre", "hvpnet mnre"),
    ("finetune bert twitter2015", "bert twitter2015"),
    ("finetune bert mnre", "bert mnre"),
)

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
torch.set_num_threads(1)
from promu_lib.config import load_config
from promu_lib.jobs import Finetune, Pretrain
from promu_lib.mining import mine_labels
cfg = load_config("tiny", overrides={"data.root": sys.argv[1], "run.output_dir": sys.argv[2],
                                     "run.progress": False})
out = {"imports": time.perf_counter() - t0}
pre = Pretrain("promu")
for name, what in json.loads(sys.argv[3]):
    t = time.perf_counter()
    if what == "mine":
        mine_labels(pre.config(cfg), progress=False)
    elif what == "pretrain":
        pre.run(cfg)
    else:
        model, dataset = what.split()
        Finetune(dataset, model, init=pre if model == "promu" else None).run(cfg)
    out[name] = time.perf_counter() - t
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default=str(ROOT), help="source tree to time (default: this)")
    parser.add_argument("--label", default="now")
    args = parser.parse_args()
    tree = Path(args.tree).resolve()
    data = ROOT / "data" / "tiny"
    if not (data / "twitter2015").is_dir():
        sys.exit(f"no toy world in {data}: run ./run_all.sh --only data first")
    env = {**os.environ, "PYTHONPATH": str(tree), "PROMU_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    commit = subprocess.run(
        ["git", "-C", str(tree), "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(data), str(Path(tmp) / "runs"), json.dumps(JOBS)],
            cwd=tree, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    seconds = json.loads(proc.stdout.strip().splitlines()[-1])
    path = RESULTS / "job_times.json"
    results = json.loads(path.read_text()).get("runs", {}) if path.is_file() else {}
    results[args.label] = {"tree": str(tree), "commit": commit, "seconds": seconds}
    labels = list(results)
    rows = [
        [name, *(f"{results[lab]['seconds'].get(name, float('nan')):.1f}" for lab in labels)]
        for name in ["imports", *(n for n, _ in JOBS)]
    ]
    header = ["job", *(f"{lab} ({results[lab]['commit']}) s" for lab in labels)]
    md = (
        "# Job times: each kind of training job of the default run, alone, one torch thread\n\n"
        "Toy world, tiny profile, in one fresh process after its imports; "
        "`benchmarks/job_times.py`.\n\n" + markdown_table(header, rows) + "\n"
    )
    write_results("job_times", {"runs": results}, md)
    print(md)


if __name__ == "__main__":
    main()
