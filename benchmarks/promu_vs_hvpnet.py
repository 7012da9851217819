"""Why does HVPNeT beat the PROMU fusion model in the toy world? A controlled run.

    .venv/bin/python benchmarks/promu_vs_hvpnet.py [--seeds 0 1 2]

Hypothesis, stated before the run: HVPNeT's advantage comes from its object crops. With the
tiny profile, HVPNeT sees the 32 px image *and* up to ``data.max_objects`` object crops, each
resized to the full 32 px, through its CNN pyramid; the fusion model sees only the global image
as 16 patches of 8 px, in which a drawn object covers a few patches. If that is the reason,
HVPNeT without object crops (``data.max_objects=0``: the global image only, the same view the
fusion model has) falls to the fusion model's level, while nothing else changes (same world,
same sizes, same schedule). Compared per dataset with the paired bootstrap of
``promu_lib.evidence`` (seeds and test posts). Shares the default run's cache (``runs/tiny``).
Results: ``benchmarks/results/promu_vs_hvpnet.{json,md}`` (toy-world numbers).
"""

from __future__ import annotations

import argparse
import time

from common import gap_row, markdown_table, mean_std_rows, write_results

from promu_lib.config import profile_config
from promu_lib.evidence import read_counts
from promu_lib.jobs import Finetune, Pretrain, run_jobs

DATASETS = ("twitter2015", "twitter2017", "mnre")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    base = profile_config("tiny")
    no_objects = base.replace(**{"data.max_objects": 0})
    arms = {  # name -> (config, seed -> dataset -> job)
        "HVPNeT": (base, lambda s, d: Finetune(d, "hvpnet", seed=s)),
        "HVPNeT, no object crops": (no_objects, lambda s, d: Finetune(d, "hvpnet", seed=s)),
        "PROMU (fusion + pre-training)": (
            base, lambda s, d: Finetune(d, "promu", init=Pretrain("promu"), seed=s)
        ),
        "fusion model, no pre-training": (base, lambda s, d: Finetune(d, "promu", seed=s)),
    }  # fmt: skip
    t0 = time.perf_counter()
    runs: dict[str, dict[str, list]] = {}
    f1: dict[str, dict[str, list[float]]] = {}
    for name, (cfg, job) in arms.items():
        jobs = {(d, s): job(s, d) for d in DATASETS for s in args.seeds}
        results = run_jobs(cfg, list(jobs.values()), progress=True)
        f1[name] = {d: [results[jobs[d, s]]["test"]["f1"] for s in args.seeds] for d in DATASETS}
        runs[name] = {
            d: [read_counts(jobs[d, s].out_dir(cfg)) for s in args.seeds] for d in DATASETS
        }
    rows = mean_std_rows(f1)
    comparisons = [
        ("HVPNeT", "PROMU (fusion + pre-training)"),
        ("HVPNeT", "HVPNeT, no object crops"),
        ("HVPNeT, no object crops", "PROMU (fusion + pre-training)"),
        ("HVPNeT, no object crops", "fusion model, no pre-training"),
    ]
    gaps: dict[str, dict] = {}
    gap_rows = [gap_row(f"{a} minus {b}", runs[a], runs[b], gaps) for a, b in comparisons]
    seconds = time.perf_counter() - t0
    md = (
        "# PROMU vs HVPNeT in the toy world: does HVPNeT win through its object crops?\n\n"
        f"Test F1, mean ± sample std over seeds {args.seeds} (toy-world numbers):\n\n"
        + markdown_table(["model", *DATASETS], rows)
        + "\n\nGaps (test F1 points) with the paired 95% bootstrap interval over seeds and test "
        "posts, and the verdict:\n\n"
        + markdown_table(["comparison", *DATASETS], gap_rows)
        + f"\n\n{seconds:.0f} s (cached runs read).\n"
    )
    print(write_results("promu_vs_hvpnet", {"f1": f1, "gaps": gaps, "seconds": seconds}, md))
    print(md)


if __name__ == "__main__":
    main()
