"""The fine-tuning stop rule applied: where each run stops, and the cap per task (toy world).

    .venv/bin/python benchmarks/finetune_schedule.py                  # every default-run job
    .venv/bin/python benchmarks/finetune_schedule.py --population rows [--seeds 0 1] [--cap 60]

``--population default-run`` (the rule since 2026-12-05, README "Training schedules" point 4):
the runs are every fine-tuning of the default run, read from its cache (``runs/tiny``, so run
``./run_all.sh`` first). A run that early stopping ended under the default run's cap stops at
the same epoch under any larger cap and is kept; each run the cap ended is trained again under
the long cap, and its first epochs must repeat the cached run's dev F1 exactly. The second
mode, ``rows``, is the rule's first measurement, kept to reproduce it:

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

from promu_lib.config import profile_config, recipe_for
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


def default_run_stops(long_cap: int) -> tuple[dict, dict]:
    """Every fine-tuning of the default run: where early stopping ends it under ``long_cap``
    (cached runs that stopped by patience as they are; the capped ones trained again under
    ``long_cap`` and checked to repeat their cached epochs). Returns (runs, settings)."""
    from promu_lib.pipeline import stage_jobs

    cfg = profile_config("tiny")
    if cfg.finetune.schedule != "constant":
        raise SystemExit("the default run's schedule is not constant: a cap changes its curves")
    stage_of: dict[Finetune, str] = {}
    for stage, stage_jobs_ in stage_jobs(cfg).items():
        for j in stage_jobs_:
            if isinstance(j, Finetune):
                stage_of.setdefault(j, stage)
    cached = run_jobs(cfg, list(stage_of), progress=True)  # all read from the cache
    capped = [j for j in stage_of if cached[j]["stopped_by"] != "patience"]
    longer = run_jobs(
        cfg.replace(**{"finetune.epochs": long_cap}), capped, progress=True
    )  # fmt: skip
    runs = {}
    for j, stage in stage_of.items():
        m = longer[j] if j in capped else cached[j]
        if j in longer:  # a long run (capped, or the start of one) repeats the cached epochs
            short = [h["dev_f1"] for h in cached[j]["history"]]
            if [h["dev_f1"] for h in m["history"]][: len(short)] != short:
                raise SystemExit(f"{j}: under cap {long_cap} its first epochs differ")
        runs[str(j)] = {
            "dataset": j.dataset, "stage": stage, "model": j.model, "seed": j.seed,
            "retrained": j in capped, "epochs_run": m["epochs_run"],
            "best_epoch": m["best_epoch"], "stopped_by": m["stopped_by"],
            "stop": stop_of(m, long_cap),
        }  # fmt: skip
    caps = {d: recipe_for(cfg, "promu", t).finetune.epochs for d, t in DATASETS.items()}
    return runs, {"default_caps": caps}


def caps_by_task(runs: dict, long_cap: int) -> dict[str, dict]:
    """Per task: the cap of each of its datasets by the rule, and the task's (their max)."""
    caps: dict[str, dict] = {}
    for task in sorted(set(DATASETS.values())):
        per = {
            d: cap_for([v["stop"] for v in runs.values() if v["dataset"] == d], long_cap)
            for d, t in DATASETS.items()
            if t == task
        }
        known = [c for c in per.values() if c is not None]
        caps[task] = {"per_dataset": per, "cap": max(known) if len(known) == len(per) else None}
    return caps


def cap_section(caps: dict[str, dict], long_cap: int) -> str:
    """The Markdown section that states the cap per task the rule picks."""

    def shown(c: int | None) -> str:
        return str(c) if c is not None else f"beyond {long_cap}"

    return (
        "\n\n## The cap per task, by the rule\n\nThe smallest multiple of "
        f"{STEP} epochs at which at least {SHARE:.0%} of the runs on each dataset of the task "
        "would have stopped by patience:\n\n"
        + "\n".join(
            f"- **{task}**: cap {shown(c['cap'])} epochs (per dataset: "
            + ", ".join(f"{d} {shown(v)}" for d, v in c["per_dataset"].items())
            + ")"
            for task, c in caps.items()
        )
    )


def stop_of(metrics: dict, long_cap: int) -> int:
    """The epoch count at which early stopping ended a run; ``long_cap`` + 1 when the cap
    ended it first (it would stop later, by an unknown margin)."""
    return metrics["epochs_run"] if metrics["stopped_by"] == "patience" else long_cap + 1


def main_default_run(long_cap: int) -> None:
    t0 = time.perf_counter()
    runs, settings = default_run_stops(long_cap)
    seconds = time.perf_counter() - t0
    caps = caps_by_task(runs, long_cap)
    cap0 = settings["default_caps"]
    rows = []
    for d in DATASETS:
        mine = [v for v in runs.values() if v["dataset"] == d]
        stops = sorted(v["stop"] for v in mine)
        rows.append([
            d, len(mine), cap0[d],
            f"{sum(v['stop'] <= cap0[d] for v in mine)}/{len(mine)}",
            f"{sum(v['stop'] <= long_cap for v in mine)}/{len(mine)}",
            statistics.median(stops), stops[-1] if stops[-1] <= long_cap else f">{long_cap}",
        ])  # fmt: skip
    again = [
        [v["dataset"], v["stage"], k, v["epochs_run"], v["best_epoch"] + 1, v["stopped_by"]]
        for k, v in runs.items()
        if v["retrained"]
    ]
    md = (
        "# Fine-tuning stop rule over every fine-tuning of the default run (toy world, tiny "
        "profile, dev F1 only)\n\n"
        f"Constant lr after a {RULE['warmup_epochs']:g}-epoch warm-up, patience "
        f"{RULE['patience']}. Runs that stopped by patience under the default run's cap are "
        "read from its cache; the ones that cap ended were trained again under a long cap of "
        f"{long_cap}, and each repeated its cached dev F1 epoch for epoch. "
        '`benchmarks/finetune_schedule.py` (README, "Training schedules", point 4).\n\n'
        + markdown_table(
            [
                "dataset",
                "runs",
                "default run's cap",
                "stopped by patience under it",
                f"by epoch {long_cap}",
                "median stop",
                "latest stop",
            ],
            rows,
        )  # fmt: skip
        + cap_section(caps, long_cap)
        + "\n\n## The runs trained again under the long cap\n\n"
        + markdown_table(
            ["dataset", "stage", "job", "epochs run", "best epoch", "stopped by"], again
        )  # fmt: skip
        + f"\n\n{len(runs)} fine-tunings, {len(again)} trained again; {seconds:.0f} s.\n"
    )
    write_results(
        "finetune_schedule",
        {"population": "default-run", "rule": RULE, "share": SHARE, "long_cap": long_cap,
         **settings, "runs": runs, "caps": caps, "seconds": seconds},
        md,
    )  # fmt: skip
    print(md)


def main_rows(seeds: list[int], long_cap: int) -> None:
    cfg = profile_config("tiny").replace(
        **{f"finetune.{k}": v for k, v in RULE.items()}, **{"finetune.epochs": long_cap}
    )
    jobs = {(d, r, s): job(d, r, s) for d in DATASETS for r in ROWS for s in seeds}
    t0 = time.perf_counter()
    results = run_jobs(cfg, list(jobs.values()), progress=True)
    seconds = time.perf_counter() - t0

    runs, rows = {}, []
    for (d, r, s), j in jobs.items():
        m = results[j]
        runs[f"{d}/{r}/{s}"] = {
            "dataset": d, "row": r, "seed": s, "epochs_run": m["epochs_run"],
            "best_epoch": m["best_epoch"], "stopped_by": m["stopped_by"],
            "best_dev_f1": m["dev"]["f1"], "dev_f1": [h["dev_f1"] for h in m["history"]],
            "stop": stop_of(m, long_cap),
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
    caps = caps_by_task(runs, long_cap)
    md = (
        "# Fine-tuning stop rule: where each run stops (toy world, tiny profile, dev F1 only)\n\n"
        f"Constant lr after a {RULE['warmup_epochs']:g}-epoch warm-up, patience "
        f"{RULE['patience']}, long cap {long_cap}, seeds {seeds} (the PROMU row's seed s "
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
        + cap_section(caps, long_cap)
        + f"\n\n{len(jobs)} fine-tunings (cached ones read); {seconds:.0f} s.\n"
    )
    write_results(
        "finetune_schedule_rows",
        {"rule": RULE, "share": SHARE, "long_cap": long_cap, "seeds": seeds,
         "runs": runs, "caps": caps, "seconds": seconds},
        md,
    )  # fmt: skip
    print(md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--population", choices=("default-run", "rows"), default="default-run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="rows only")
    parser.add_argument("--cap", type=int, default=60, help="the long cap of the measurement")
    args = parser.parse_args()
    if args.population == "default-run":
        main_default_run(args.cap)
    else:
        main_rows(args.seeds, args.cap)


if __name__ == "__main__":
    main()
