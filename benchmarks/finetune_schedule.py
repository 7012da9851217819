"""The fine-tuning stop rule applied: where each run stops, and the cap per task (toy world).

    .venv/bin/python benchmarks/finetune_schedule.py [--seeds 0 1] [--cap 60]

The rule (README, "Training schedules") was written before this ran: constant learning rate
after a one-epoch warm-up, early stop after 5 epochs without a new best dev F1 (epochs at 0
while the best is 0 not counted), and per task the smallest multiple of 4 epochs at which at
least 95% of these runs on each dataset of the task would have stopped by patience. Each run
trains once under a long cap (``--cap``): on a constant learning rate its curve up to epoch e
does not depend on the cap, so a run that stops at epoch s stops there under any cap >= s.

Runs: ``bert``, ``hvpnet``, the fusion model from scratch and from PROMU pre-training (seed s
from the pre-training of seed s), on every dataset, seeds ``--seeds``. Only dev F1 is read:
the test split selects nothing. Jobs share the run cache (``runs/tiny``). Results:
``benchmarks/results/finetune_schedule.{json,md}``; toy-world numbers.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

from common import markdown_table, write_results

from promu_lib.config import profile_config
from promu_lib.jobs import Finetune, Pretrain, run_jobs

DATASETS = {"twitter2015": "ner", "twitter2017": "ner", "mnre": "re"}
ROWS = {  # name -> (model, pre-trained?)
    "bert": ("bert", False),
    "hvpnet": ("hvpnet", False),
    "fusion, no pre-training": ("promu", False),
    "PROMU": ("promu", True),
}
RULE = {"schedule": "constant", "warmup_epochs": 1.0, "patience": 5}
SHARE = 0.95  # of runs stopped by patience, on each dataset of a task
STEP = 4  # caps are multiples of this


def job(dataset: str, row: str, seed: int) -> Finetune:
    model, pretrained = ROWS[row]
    init = Pretrain("promu", seed=seed) if pretrained else None
    return Finetune(dataset, model, init=init, seed=seed)


def cap_for(stops: list[int], long_cap: int, share: float = SHARE, step: int = STEP) -> int | None:
    """The smallest multiple of ``step`` at which ``share`` of the runs (each stopped by
    patience at epoch count ``stops[i]``, or ``long_cap`` + 1 when the long cap ended it
    first) would have stopped by patience; None when that lies beyond the long cap."""
    need = math.ceil(share * len(stops))
    reached = sorted(stops)[need - 1]
    if reached > long_cap:
        return None
    return step * math.ceil(reached / step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--cap", type=int, default=60, help="the long cap of the measurement")
    args = parser.parse_args()
    cfg = profile_config("tiny").replace(
        **{f"finetune.{k}": v for k, v in RULE.items()}, **{"finetune.epochs": args.cap}
    )
    jobs = {(d, r, s): job(d, r, s) for d in DATASETS for r in ROWS for s in args.seeds}
    t0 = time.perf_counter()
    results = run_jobs(cfg, list(jobs.values()), progress=True)
    seconds = time.perf_counter() - t0

    runs, rows = {}, []
    for (d, r, s), j in jobs.items():
        m = results[j]
        by_patience = m["stopped_by"] == "patience"
        runs[f"{d}/{r}/{s}"] = {
            "dataset": d, "row": r, "seed": s, "epochs_run": m["epochs_run"],
            "best_epoch": m["best_epoch"], "stopped_by": m["stopped_by"],
            "best_dev_f1": m["dev"]["f1"], "dev_f1": [h["dev_f1"] for h in m["history"]],
            "stop": m["epochs_run"] if by_patience else args.cap + 1,
        }  # fmt: skip
    for d in DATASETS:
        for r in ROWS:
            mine = [v for v in runs.values() if v["dataset"] == d and v["row"] == r]
            rows.append([
                d, r, statistics.median(v["best_epoch"] + 1 for v in mine),
                statistics.median(v["epochs_run"] for v in mine),
                max(v["epochs_run"] for v in mine),
                f"{sum(v['stopped_by'] == 'patience' for v in mine)}/{len(mine)}",
                " / ".join(f"{v['best_dev_f1']:.1f}" for v in mine),
            ])  # fmt: skip
    caps: dict[str, dict] = {}
    for task in sorted(set(DATASETS.values())):
        per = {}
        for d, t in DATASETS.items():
            if t == task:
                per[d] = cap_for([v["stop"] for v in runs.values() if v["dataset"] == d], args.cap)
        known = [c for c in per.values() if c is not None]
        caps[task] = {
            "per_dataset": per,
            "cap": max(known) if len(known) == len(per) else None,
        }
    cap_lines = [
        f"- **{task}**: cap {c['cap'] if c['cap'] is not None else 'beyond ' + str(args.cap)} "
        f"epochs (per dataset: "
        + ", ".join(f"{d} {v if v is not None else '>' + str(args.cap)}"
                    for d, v in c["per_dataset"].items())
        + ")"
        for task, c in caps.items()
    ]  # fmt: skip
    md = (
        "# Fine-tuning stop rule: where each run stops (toy world, tiny profile, dev F1 only)\n\n"
        f"Constant lr after a {RULE['warmup_epochs']:g}-epoch warm-up, patience "
        f"{RULE['patience']}, long cap {args.cap}, seeds {args.seeds} (the PROMU row's seed s "
        "from pre-training seed s); `benchmarks/finetune_schedule.py`. Best epoch counts from "
        "1. Best dev F1: one value per seed.\n\n"
        + markdown_table(
            [
                "dataset",
                "row",
                "median best epoch",
                "median epochs run",
                "most epochs run",
                "stopped by patience",
                "best dev F1 per seed",
            ],
            rows,
        )  # fmt: skip
        + "\n\n## The cap per task, by the rule\n\nThe smallest multiple of "
        f"{STEP} epochs at which at least {SHARE:.0%} of the runs on each dataset of the task "
        "would have stopped by patience:\n\n"
        + "\n".join(cap_lines)
        + f"\n\n{len(jobs)} fine-tunings (cached ones read); {seconds:.0f} s.\n"
    )
    write_results(
        "finetune_schedule",
        {"rule": RULE, "share": SHARE, "long_cap": args.cap, "seeds": args.seeds,
         "runs": runs, "caps": caps, "seconds": seconds},
        md,
    )  # fmt: skip
    print(md)


if __name__ == "__main__":
    main()
