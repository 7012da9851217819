"""Do the claims' intervals hold their 95% at three seeds? Coverage over 3-seed subsets.

    .venv/bin/python benchmarks/interval_coverage.py [--seeds 0 1 2 3 4 5 6 7]
                                                     [--datasets twitter2015 mnre]

Trains PROMU, w/o entity-object alignment (``no-coe``) and the fusion model without
pre-training with every seed (seed s of a pre-trained row from the pre-training of seed s), on
the tiny profile's own schedules, and takes the gap of every claim between them over all seeds
as the truth. Then for every 3-seed subset it asks whether each interval covers that gap:

- ``t + posts``: the claims' interval (``promu_lib.evidence.paired_gap``: t-based seed part
  plus the paired test-post bootstrap, Welch-Satterthwaite degrees of freedom);
- ``percentile``: the interval of 6a4d18a (a percentile bootstrap that resampled the seeds
  and the test posts together), written out here for the comparison;
- ``t on seeds``: ``scipy.stats.ttest_1samp`` on the per-seed gaps alone (no test-post part).

The all-seed gap is itself an estimate (from ``len(seeds)`` seeds), so coverage is measured
against it, as the issue asks; with 8 seeds its own uncertainty is ~1/sqrt(8/3) of a 3-seed
subset's. Results: ``benchmarks/results/interval_coverage.{json,md}``; toy-world numbers.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
from common import markdown_table, write_results

from promu_lib import evidence
from promu_lib.config import profile_config
from promu_lib.jobs import Finetune, Pretrain, run_jobs

ROWS = {"PROMU": "promu", "w/o COE": "no-coe", "no pre-training": None}
CLAIMS = (("PROMU", "w/o COE"), ("PROMU", "no pre-training"), ("w/o COE", "no pre-training"))


def job(dataset: str, row: str, seed: int) -> Finetune:
    variant = ROWS[row]
    init = Pretrain(variant, seed=seed) if variant else None
    return Finetune(dataset, "promu", init=init, seed=seed)


def percentile_interval(
    better: list[evidence.Counts], worse: list[evidence.Counts], n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """6a4d18a's interval: each replicate resamples the test posts (as the claims' interval
    does) and the seeds; the 2.5th and 97.5th percentiles of the replicates' mean gap."""
    _, per_seed = evidence.per_seed_gaps(better, worse, n_boot=n_boot, seed=seed)
    k = per_seed.shape[1]
    picks = np.random.default_rng(seed + 1).integers(0, k, (n_boot, k))
    replicates = np.take_along_axis(per_seed, picks, 1).mean(1)
    low, high = np.quantile(replicates, [0.025, 0.975])
    return float(low), float(high)


def t_on_seeds(better: list[evidence.Counts], worse: list[evidence.Counts]) -> tuple[float, float]:
    from scipy import stats

    gaps, _ = evidence.per_seed_gaps(better, worse, n_boot=0)
    ci = stats.ttest_1samp(gaps, 0.0).confidence_interval(0.95)
    return float(ci.low), float(ci.high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--datasets", nargs="+", default=["twitter2015", "mnre"])
    parser.add_argument("--subset", type=int, default=3)
    args = parser.parse_args()
    cfg = profile_config("tiny")
    jobs = {(d, r, s): job(d, r, s) for d in args.datasets for r in ROWS for s in args.seeds}
    t0 = time.perf_counter()
    run_jobs(cfg, list(jobs.values()), progress=True)
    train_s = time.perf_counter() - t0
    counts = {k: evidence.read_counts(j.out_dir(cfg)) for k, j in jobs.items()}
    methods = ("t + posts", "percentile", "t on seeds")
    subsets = list(itertools.combinations(args.seeds, args.subset))
    cover = {(d, m): [] for d in args.datasets for m in methods}
    width = {(d, m): [] for d in args.datasets for m in methods}
    truth, spreads = {}, {}
    for d in args.datasets:
        for better, worse in CLAIMS:
            b_all = [counts[d, better, s] for s in args.seeds]
            w_all = [counts[d, worse, s] for s in args.seeds]
            per_seed, _ = evidence.per_seed_gaps(b_all, w_all, n_boot=0)
            true_gap = float(np.mean(per_seed))
            truth[f"{better} - {worse} @ {d}"] = true_gap
            spreads[f"{better} - {worse} @ {d}"] = float(np.std(per_seed, ddof=1))
            for sub in subsets:
                b = [counts[d, better, s] for s in sub]
                w = [counts[d, worse, s] for s in sub]
                g = evidence.paired_gap(b, w)
                for m, (low, high) in zip(
                    methods, ((g.low, g.high), percentile_interval(b, w), t_on_seeds(b, w))
                ):
                    cover[d, m].append(low <= true_gap <= high)
                    width[d, m].append((high - low) / 2)
    rows = [
        [d, m, f"{100 * np.mean(cover[d, m]):.0f}% ({sum(cover[d, m])}/{len(cover[d, m])})",
         f"{np.mean(width[d, m]):.2f}"]
        for d in args.datasets for m in methods
    ]  # fmt: skip
    truth_rows = [[k, f"{v:+.2f}", f"{spreads[k]:.2f}"] for k, v in truth.items()]
    md = (
        f"# Interval coverage at {args.subset} seeds (toy world, tiny profile)\n\n"
        f"Every {args.subset}-seed subset of seeds {args.seeds} ({len(subsets)} subsets) x "
        f"{len(CLAIMS)} claims per dataset; an interval covers when it holds the all-seed "
        "gap. `t + posts` is the interval every claims table uses. "
        "`benchmarks/interval_coverage.py`.\n\n"
        + markdown_table(["dataset", "interval", "coverage", "mean half-width (F1)"], rows)
        + "\n\n## The all-seed gaps (test F1 points) and the sd of a seed's gap\n\n"
        + markdown_table(
            ["claim", f"gap over {len(args.seeds)} seeds", "sd over seeds"], truth_rows
        )  # fmt: skip
        + f"\n\n{len(jobs)} fine-tunings (cached ones read), {train_s:.0f} s.\n"
    )
    write_results(
        "interval_coverage",
        {"seeds": args.seeds, "subset": args.subset, "truth": truth, "sd": spreads,
         "coverage": {f"{d}/{m}": float(np.mean(cover[d, m])) for d in args.datasets
                      for m in methods},
         "half_width": {f"{d}/{m}": float(np.mean(width[d, m])) for d in args.datasets
                        for m in methods}},
        md,
    )  # fmt: skip
    print(md)


if __name__ == "__main__":
    main()
