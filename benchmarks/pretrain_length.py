"""The pre-training length rule applied: each variant's fine-tuned dev F1 against its steps.

    .venv/bin/python benchmarks/pretrain_length.py [--seeds 0 1] [--ladder 400 800 1600 3200 6400]

The rule (README, "Training schedules") was written before this ran: every variant gets the
same number of steps, the smallest N of the ladder at which doubling it adds less than 1 dev F1
(mean over seeds; fine-tuning seed s from the pre-training of seed s) to the fine-tuned
fusion model of every variant, on MNRE and on Twitter-2015. Fine-tuning follows the stop rule
with the caps that ``benchmarks/finetune_schedule.py`` chose (read from its results file).
Steps are added to the ladder only while the rule is not met. Only dev F1 is read: the test
split selects nothing. Jobs share the run cache (``runs/tiny``). Results:
``benchmarks/results/pretrain_length.{json,md}``; toy-world numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from common import RESULTS, markdown_table, write_results

from promu_lib.config import profile_config
from promu_lib.jobs import PRETRAIN_VARIANTS, Finetune, Pretrain, run_jobs

DATASETS = ("mnre", "twitter2015")
GAIN = 1.0  # dev F1 points: doubling the steps must add less than this
FAMILIES = ("bert", "hvpnet", "promu")


def stop_rule_overrides() -> dict:
    """The stop rule with the caps per task that ``finetune_schedule.py`` chose."""
    path = RESULTS / "finetune_schedule.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run benchmarks/finetune_schedule.py first")
    data = json.loads(path.read_text())
    caps = {task: c["cap"] for task, c in data["caps"].items()}
    if None in caps.values():
        raise SystemExit(f"a task has no cap within the long cap: {caps}")
    recipes = {f"{f}/{t}": {"epochs": cap} for f in FAMILIES for t, cap in caps.items()}
    return {**{f"finetune.{k}": v for k, v in data["rule"].items()},
            "finetune.recipes": recipes}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--ladder", type=int, nargs="+", default=[400, 800, 1600, 3200, 6400])
    args = parser.parse_args()
    base = profile_config("tiny").replace(**stop_rule_overrides())
    variants = list(PRETRAIN_VARIANTS)
    dev: dict[int, dict[str, dict[str, float]]] = {}  # steps -> variant -> dataset -> mean
    per_seed: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    chosen = None
    for i, steps in enumerate(args.ladder):
        cfg = base.replace(**{"pretrain.steps": steps})
        jobs = {(v, d, s): Finetune(d, "promu", init=Pretrain(v, seed=s), seed=s)
                for v in variants for d in DATASETS for s in args.seeds}  # fmt: skip
        print(f"{steps} pre-training steps: {len(jobs)} fine-tunings", flush=True)
        results = run_jobs(cfg, list(jobs.values()), progress=True)
        dev[steps] = {}
        for v in variants:
            dev[steps][v] = {}
            for d in DATASETS:
                values = [results[jobs[v, d, s]]["dev"]["f1"] for s in args.seeds]
                per_seed[f"{steps}/{v}/{d}"] = values
                dev[steps][v][d] = statistics.mean(values)
        if i == 0:
            continue
        prev = args.ladder[i - 1]
        gains = [dev[steps][v][d] - dev[prev][v][d] for v in variants for d in DATASETS]
        if max(gains) < GAIN:
            chosen = prev
            break
    seconds = time.perf_counter() - t0

    ladder = sorted(dev)
    rows = []
    for v in variants:
        for d in DATASETS:
            cells = [f"{dev[n][v][d]:.2f}" for n in ladder]
            gains = [f"{dev[b][v][d] - dev[a][v][d]:+.2f}" for a, b in zip(ladder, ladder[1:])]
            rows.append([v, d, *cells, *gains])
    header = ["variant", "dataset", *(f"dev F1 @ {n}" for n in ladder),
              *(f"gain {a}->{b}" for a, b in zip(ladder, ladder[1:]))]  # fmt: skip
    verdict = (
        f"**Chosen: {chosen} steps** (doubling to {2 * chosen} adds < {GAIN:g} dev F1 to "
        "every variant on both datasets)."
        if chosen
        else f"**No length of the ladder {ladder} meets the rule**: the longest is the best "
        "this measurement can say."
    )
    md = (
        "# Pre-training length rule: fine-tuned dev F1 per variant against pre-training steps\n\n"
        f"Toy world, tiny profile, dev F1 only, mean of seeds {args.seeds} (fine-tuning seed s "
        "from pre-training seed s), the fusion model fine-tuned under the stop rule with the "
        "caps of `finetune_schedule.md`; `benchmarks/pretrain_length.py`.\n\n"
        + markdown_table(header, rows)
        + f"\n\n{verdict}\n\n{seconds:.0f} s (cached jobs read).\n"
    )
    write_results(
        "pretrain_length",
        {"seeds": args.seeds, "ladder": ladder, "gain": GAIN, "chosen": chosen,
         "dev_f1_mean": {str(n): dev[n] for n in ladder}, "dev_f1": per_seed,
         "seconds": seconds},
        md,
    )  # fmt: skip
    print(md)


if __name__ == "__main__":
    main()
