"""What do ITM's hard negatives do to Table 1? A controlled run (toy world, tiny profile).

    .venv/bin/python benchmarks/itm_negatives.py [--seeds 0 1 2]

Issue 16 made ITM the paper's Eq. 3 (the given matched/mismatched pairs only) and ALBEF-style
in-batch hard negatives an option (``pretrain.itm_hard_negatives``), which an earlier version
ran by default (then without the identity mask, so a true match could be drawn as a negative).
This pre-trains PROMU and the alignment-only row both ways, everything else fixed, and compares
their fine-tuned test F1 per dataset with the paired bootstrap of ``promu_lib.evidence`` (seeds
and test posts). Shares the default run's cache (``runs/tiny``): the Eq. 3 arm is what the
default run trained. Results: ``benchmarks/results/itm_negatives.{json,md}``.
"""

from __future__ import annotations

import argparse
import time

from common import gap_row, markdown_table, mean_std_rows, write_results

from promu_lib.config import profile_config
from promu_lib.evidence import read_counts
from promu_lib.jobs import Finetune, Pretrain, run_jobs

DATASETS = ("twitter2015", "twitter2017", "mnre")
ROWS = {"PROMU": "promu", "alignment-only": "align-only"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    base = profile_config("tiny")
    arms = {
        "Eq. 3 (default)": base,
        "Eq. 3 + hard negatives": base.replace(**{"pretrain.itm_hard_negatives": True}),
    }
    t0 = time.perf_counter()
    f1: dict[str, dict[str, list[float]]] = {}
    counts: dict[str, dict[str, list]] = {}
    for arm, cfg in arms.items():
        for row, variant in ROWS.items():
            jobs = {
                (d, s): Finetune(d, "promu", init=Pretrain(variant), seed=s)
                for d in DATASETS
                for s in args.seeds
            }
            results = run_jobs(cfg, list(jobs.values()), progress=True)
            key = f"{row}, {arm}"
            f1[key] = {d: [results[jobs[d, s]]["test"]["f1"] for s in args.seeds] for d in DATASETS}
            counts[key] = {
                d: [read_counts(jobs[d, s].out_dir(cfg)) for s in args.seeds] for d in DATASETS
            }
    rows = mean_std_rows(f1)
    gaps: dict[str, dict] = {}
    on, off = list(arms)[1], list(arms)[0]
    gap_rows = [
        gap_row(f"{row}: with hard negatives minus without", counts[f"{row}, {on}"],
                counts[f"{row}, {off}"], gaps)
        for row in ROWS
    ]  # fmt: skip
    seconds = time.perf_counter() - t0
    md = (
        "# ITM's hard negatives (pretrain.itm_hard_negatives) in the toy world\n\n"
        f"Test F1, mean ± sample std over fine-tuning seeds {args.seeds} (toy-world numbers):\n\n"
        + markdown_table(["row, ITM", *DATASETS], rows)
        + "\n\nGaps (test F1 points) with the paired 95% bootstrap interval over seeds and test "
        "posts, and the verdict (*holds*: the hard negatives help):\n\n"
        + markdown_table(["comparison", *DATASETS], gap_rows)
        + f"\n\n{seconds:.0f} s (cached runs read).\n"
    )
    print(write_results("itm_negatives", {"f1": f1, "gaps": gaps, "seconds": seconds}, md))
    print(md)


if __name__ == "__main__":
    main()
