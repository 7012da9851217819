"""Is a claimed ordering of two rows supported? The gap, a 95% interval, and a verdict.

A claim of a paper ("PROMU beats w/o COE") compares two rows on one dataset. Each row has one
fine-tuning run per seed, scored on the same test posts. The gap is the mean over seeds of a
statistic of the two runs of a seed (by default: F1 of the better row minus F1 of the worse
one, in points). Its uncertainty has two parts, added as variances:

- **seeds**: the sample variance of the k per-seed gaps over k (how much the mean gap moves
  with the training seed, pre-training seed included where each seed has its own);
- **test posts**: the variance of the mean gap over 2000 paired bootstrap resamples of the
  test posts (the same posts for both rows), the statistic recomputed from per-post counts.

The 95% interval is the mean gap ± t · SE, SE the root of the summed variances and t the
Student quantile at the Welch-Satterthwaite degrees of freedom: k - 1 when the seeds dominate,
growing to the normal quantile when the test posts do. With three seeds the old interval (a
percentile bootstrap that also resampled the seeds) could not hold its 95%: a resample of three
seeds takes at most ten values, and issue 24 found it covering the 12-seed gap in 54 of 60
3-seed subsets on MNRE. ``benchmarks/interval_coverage.py`` measures the coverage of both. The
verdict is:

- *holds*: the interval lies above 0;
- *reversed*: it lies below 0;
- *inconclusive*: it covers 0 (a gap smaller than its uncertainty is no evidence either way).

The interval's half-width is the smallest gap the run could have decided; from the seed and
post variances, :func:`seeds_needed` estimates how many seeds would decide the observed gap.
With one seed the interval accounts for the test sample only, and says so. F1 is recomputed
exactly from counts: per post and class, true positives, predictions and gold items (entity
spans as seqeval's default mode extracts them for MNER; relations other than ``None`` for
MRE), so the full-sample statistic equals the F1 of ``promu_lib.metrics``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from promu_lib.io import atomic_write_text

N_BOOT = 2000
LEVEL = 0.95
MAX_SEEDS = 1000  # seeds_needed: beyond this, a gap counts as out of reach
VERDICTS: tuple[str, ...] = ("holds", "reversed", "inconclusive")
FIELDS: tuple[str, ...] = (
    "study", "claim", "dataset", "better", "worse", "gap", "ci_low", "ci_high", "verdict",
    "n_seeds", "n_posts", "half_width", "seeds_needed", "paper_gap", "statistic",
    "accounts_for",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Per-post counts
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """``array[post, class] = (true positives, predicted, gold)`` of one run on its test posts
    (in the order of ``ids``), over ``classes`` (entity types or relations)."""

    ids: tuple[str, ...]
    classes: tuple[str, ...]
    array: np.ndarray  # (n_posts, n_classes, 3), int

    def on(self, classes: Sequence[str]) -> Counts:
        """The same counts over ``classes`` (a class this run never saw counts zero)."""
        index = {c: i for i, c in enumerate(self.classes)}
        out = np.zeros((len(self.ids), len(classes), 3), dtype=self.array.dtype)
        for j, c in enumerate(classes):
            if c in index:
                out[:, j] = self.array[:, index[c]]
        return Counts(self.ids, tuple(classes), out)


def ner_counts(rows: Sequence[Mapping[str, Any]]) -> Counts:
    """From MNER prediction rows (``id``, ``gold`` and ``pred`` BIO tags per word)."""
    from seqeval.metrics.sequence_labeling import get_entities

    per_post = []
    for r in rows:
        gold = {(t, s, e) for t, s, e in get_entities(list(r["gold"]))}
        pred = {(t, s, e) for t, s, e in get_entities(list(r["pred"]))}
        per_post.append((gold, pred))
    classes = sorted({t for g, p in per_post for t, _, _ in g | p})
    index = {c: i for i, c in enumerate(classes)}
    array = np.zeros((len(rows), len(classes), 3), dtype=np.int64)
    for i, (gold, pred) in enumerate(per_post):
        for t, _, _ in gold & pred:
            array[i, index[t], 0] += 1
        for t, _, _ in pred:
            array[i, index[t], 1] += 1
        for t, _, _ in gold:
            array[i, index[t], 2] += 1
    return Counts(tuple(r["id"] for r in rows), tuple(classes), array)


def re_counts(rows: Sequence[Mapping[str, Any]], negative: str = "None") -> Counts:
    """From MRE prediction rows (``id``, ``gold`` and ``pred`` relation names)."""
    classes = sorted({r[k] for r in rows for k in ("gold", "pred")} - {negative})
    index = {c: i for i, c in enumerate(classes)}
    array = np.zeros((len(rows), len(classes), 3), dtype=np.int64)
    for i, r in enumerate(rows):
        gold, pred = r["gold"], r["pred"]
        if pred != negative:
            array[i, index[pred], 1] += 1
        if gold != negative:
            array[i, index[gold], 2] += 1
            if pred == gold:
                array[i, index[gold], 0] += 1
    return Counts(tuple(r["id"] for r in rows), tuple(classes), array)


def read_counts(run_dir: str | Path) -> Counts:
    """The counts of a finished fine-tuning run (its ``predictions.jsonl``, its task from
    ``metrics.json``)."""
    run_dir = Path(run_dir)
    task = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))["task"]
    with open(run_dir / "predictions.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return ner_counts(rows) if task == "ner" else re_counts(rows)


# ---------------------------------------------------------------------------------------------
# Statistics of summed counts: (..., classes, 3) -> (...)
# ---------------------------------------------------------------------------------------------


def _f1(tp: np.ndarray, pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """100 * 2 tp / (pred + gold), 0 where there is nothing (= 2PR / (P + R))."""
    den = pred + gold
    return np.where(den > 0, 200.0 * tp / np.maximum(den, 1), 0.0)


def micro_f1(sums: np.ndarray) -> np.ndarray:
    s = sums.sum(-2)
    return _f1(s[..., 0], s[..., 1], s[..., 2])


def class_f1(sums: np.ndarray) -> np.ndarray:
    return _f1(sums[..., 0], sums[..., 1], sums[..., 2])


Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (better sums, worse sums) -> gap


def f1_gap(better: np.ndarray, worse: np.ndarray) -> np.ndarray:
    """Micro F1 of the better row minus that of the worse row (points)."""
    return micro_f1(better) - micro_f1(worse)


def subset_gain_gap(subset: Sequence[int], every: Sequence[int]) -> Statistic:
    """Mean per-class F1 gain (new minus base) over the classes ``subset`` minus the mean gain
    over the classes ``every`` (indices into the class axis): PROMU Fig 4's "gains are larger
    on the tail relations / on ORG and MISC than overall", in F1 points."""
    sub, allc = np.asarray(subset), np.asarray(every)

    def stat(new: np.ndarray, base: np.ndarray) -> np.ndarray:
        gain = class_f1(new) - class_f1(base)
        return gain[..., sub].mean(-1) - gain[..., allc].mean(-1)

    return stat


# ---------------------------------------------------------------------------------------------
# The gap and its interval
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gap:
    """The mean gap over seeds, its 95% interval and what the interval accounts for.

    ``seed_var`` (variance of the mean over seeds) and ``post_var`` (over test-post
    resamples) are the two parts of the interval (module docstring)."""

    point: float
    low: float
    high: float
    n_seeds: int
    n_posts: int
    seed_var: float = 0.0
    post_var: float = 0.0

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "holds"
        if self.high < 0:
            return "reversed"
        return "inconclusive"

    @property
    def half_width(self) -> float:
        """The smallest gap this run could have decided (either sign)."""
        return (self.high - self.low) / 2

    @property
    def accounts_for(self) -> str:
        posts = f"test posts (bootstrap over {self.n_posts})"
        if self.n_seeds > 1:
            return f"training seeds (n={self.n_seeds}, t-based) and {posts}"
        return f"{posts} only: one seed, the seed-to-seed spread is not in it"


def _half_width(seed_var: Any, post_var: float, k: Any) -> np.ndarray:
    """t · sqrt(seed_var + post_var), t at the Welch-Satterthwaite degrees of freedom (the seed
    part has k - 1, the bootstrap part is taken as exact); element-wise over arrays."""
    from scipy import stats

    seed_var, k = np.asarray(seed_var, dtype=float), np.asarray(k, dtype=float)
    total = seed_var + post_var
    has_seeds = (k > 1) & (seed_var > 0)
    df = np.where(
        has_seeds, total**2 / np.where(has_seeds, seed_var**2 / np.maximum(k - 1, 1), 1), np.inf
    )
    return stats.t.ppf((1 + LEVEL) / 2, df) * np.sqrt(total)


def t_interval(point: float, seed_var: float, post_var: float, k: int) -> tuple[float, float]:
    """``point`` ± t · sqrt(seed_var + post_var) (:func:`_half_width`)."""
    half = float(_half_width(seed_var, post_var, k))
    return point - half, point + half


def seeds_needed(gap: Gap) -> int | None:
    """How many seeds would decide ``gap.point``, were the per-seed spread and the test-post
    uncertainty what this run measured: the smallest n whose interval excludes 0. None when
    no number of seeds would (the test posts alone are too uncertain, or > ``MAX_SEEDS``);
    ``gap.n_seeds`` or fewer when the run already decides it. Needs two seeds or more."""
    if gap.n_seeds < 2:
        return None
    n = np.arange(2, MAX_SEEDS + 1)
    per_seed_var = gap.seed_var * gap.n_seeds  # the spread of one seed's gap
    decided = np.flatnonzero(_half_width(per_seed_var / n, gap.post_var, n) < abs(gap.point))
    return int(n[decided[0]]) if decided.size else None


def _check_aligned(runs: Sequence[Counts]) -> None:
    first = runs[0]
    for c in runs[1:]:
        if c.ids != first.ids:
            raise ValueError("runs were scored on different test posts (ids differ)")


def per_seed_gaps(
    better: Sequence[Counts],
    worse: Sequence[Counts],
    statistic: Statistic = f1_gap,
    n_boot: int = N_BOOT,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The gap ``statistic(better[s], worse[s])`` of each seed s (the two lists pair by seed),
    (k,), and the same on ``n_boot`` paired resamples of the test posts, (n_boot, k): each
    resample is one multiset of the posts, the same for both rows and every seed
    (``n_boot=0``: the per-seed gaps only). ``classes``: the class axis the statistic sees (default: every class either row predicts
    or has in gold)."""
    if not better or len(better) != len(worse):
        raise ValueError(
            f"need the same number of runs per row, got {len(better)} and {len(worse)}"
        )
    runs = [*better, *worse]
    _check_aligned(runs)
    if classes is None:
        classes = sorted({c for r in runs for c in r.classes})
    b = np.stack([r.on(classes).array for r in better]).astype(np.float64)  # (k, n, C, 3)
    w = np.stack([r.on(classes).array for r in worse]).astype(np.float64)
    n = b.shape[1]
    rng = np.random.default_rng(seed)
    weights = np.zeros((n_boot, n))
    np.add.at(weights, (np.repeat(np.arange(n_boot), n), rng.integers(0, n, n_boot * n)), 1.0)
    b_sums = np.einsum("rn,knct->rkct", weights, b)  # (n_boot, k, C, 3)
    w_sums = np.einsum("rn,knct->rkct", weights, w)
    return statistic(b.sum(1), w.sum(1)), statistic(b_sums, w_sums)


def paired_gap(
    better: Sequence[Counts],
    worse: Sequence[Counts],
    statistic: Statistic = f1_gap,
    n_boot: int = N_BOOT,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> Gap:
    """The gap averaged over seeds (:func:`per_seed_gaps`, same arguments), with its interval:
    a t-based seed part plus the paired test-post bootstrap (module docstring)."""
    full, resampled = per_seed_gaps(better, worse, statistic, n_boot, seed, classes)
    k, n = len(full), better[0].array.shape[0]
    point = float(np.mean(full))
    post_var = float(np.var(resampled.mean(1), ddof=1))
    seed_var = float(np.var(full, ddof=1)) / k if k > 1 else 0.0
    low, high = t_interval(point, seed_var, post_var, k)
    return Gap(point, low, high, k, n, seed_var, post_var)


# ---------------------------------------------------------------------------------------------
# Claims: rows of a claims table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """One claim on one dataset, measured."""

    study: str
    claim: str
    dataset: str
    better: str
    worse: str
    gap: Gap | None  # None: not measured (a row missing), ``reason`` says why
    paper_gap: float | None = None
    statistic: str = "test F1 gap (points)"
    reason: str = ""

    def record(self) -> dict[str, Any]:
        g = self.gap
        return {
            "study": self.study, "claim": self.claim, "dataset": self.dataset,
            "better": self.better, "worse": self.worse,
            "gap": None if g is None else round(g.point, 4),
            "ci_low": None if g is None else round(g.low, 4),
            "ci_high": None if g is None else round(g.high, 4),
            "verdict": "not measured" if g is None else g.verdict,
            "n_seeds": None if g is None else g.n_seeds,
            "n_posts": None if g is None else g.n_posts,
            "half_width": None if g is None else round(g.half_width, 4),
            "seeds_needed": self.seeds_to_decide(),
            "paper_gap": self.paper_gap, "statistic": self.statistic,
            "accounts_for": self.reason if g is None else g.accounts_for,
        }  # fmt: skip

    def seeds_to_decide(self) -> int | str | None:
        """For an inconclusive claim: the seeds that would decide its observed gap
        (:func:`seeds_needed`), or "out of reach"; None when decided or not estimable."""
        g = self.gap
        if g is None or g.verdict != "inconclusive" or g.n_seeds < 2:
            return None
        n = seeds_needed(g)
        return "out of reach" if n is None else n

    def sentence(self) -> str:
        """``*PROMU beats w/o COE?* twitter2015: +1.20 F1 [−0.30, +2.70] → inconclusive``."""
        if self.gap is None:
            return f"*{self.claim}?* {self.dataset}: not measured ({self.reason})"
        g = self.gap
        paper = f"; paper {self.paper_gap:+.2f}" if self.paper_gap is not None else ""
        return (
            f"*{self.claim}?* {self.dataset}: {g.point:+.2f} [{g.low:+.2f}, {g.high:+.2f}]"
            f"{paper} → **{g.verdict}**"
        )


def _detectable(half_width: Any) -> str:
    """The interval's half-width as the smallest gap the run could decide: ``±1.23``."""
    return "" if half_width in (None, "") else f"±{float(half_width):.2f}"


def _fmt(x: Any, signed: bool = True) -> str:
    if x is None:
        return ""
    return f"{x:+.2f}" if signed else str(x)


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Claim records (or rows read back from a claims csv) as csv text; None is empty."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    return buf.getvalue()


def claims_csv(claims: Sequence[Claim]) -> str:
    return _csv([c.record() for c in claims])


def claims_markdown(claims: Sequence[Claim], title: str = "") -> str:
    """The claims as a markdown table: claim, dataset, gap, 95% interval, verdict, paper."""
    head = (
        "| claim | dataset | gap | 95% interval | verdict | detectable gap | seeds to decide "
        "| paper gap | n seeds |"
    )
    lines = [head, "|---|---|---:|---|---|---:|---:|---:|---:|"]
    for c in claims:
        r = c.record()
        interval = "" if c.gap is None else f"[{c.gap.low:+.2f}, {c.gap.high:+.2f}]"
        lines.append(
            f"| {c.claim} | {c.dataset} | {_fmt(r['gap'])} | {interval} | {r['verdict']} | "
            f"{_detectable(r['half_width'])} | {_fmt(r['seeds_needed'], False)} | "
            f"{_fmt(r['paper_gap'])} | {_fmt(r['n_seeds'], False)} |"
        )
    measured = [c.gap for c in claims if c.gap is not None]
    stats = sorted({c.statistic for c in claims})
    if measured:
        seeds = sorted({g.n_seeds for g in measured})
        posts = sorted({g.n_posts for g in measured})
        n_posts = f"{posts[0]}" if len(posts) == 1 else f"{posts[0]}-{posts[-1]}"
        over = (
            f"the training seeds (n={'/'.join(map(str, seeds))}) and the test posts ({n_posts} "
            "per dataset)"
            if seeds != [1]
            else f"the test posts ({n_posts} per dataset) only: one seed, so the seed-to-seed "
            "spread is not in it"
        )
    else:
        over = "nothing measured"
    caption = (
        f"{title.rstrip('.') + '. ' if title else ''}Gap: {'; '.join(stats)}, mean over seeds. "
        f"95% interval: t-based over {over} (paired bootstrap of the posts, {N_BOOT} "
        "replicates). Verdict: holds (interval above 0), reversed (below 0), inconclusive "
        "(covers 0). Detectable gap: the interval's half-width, the smallest gap this run could "
        "decide. Seeds to decide: for an inconclusive claim, the seeds that would decide its "
        "observed gap at the spread measured here."
    )
    return "\n".join(lines) + f"\n\n{caption}\n"


def save_claims(
    claims: Sequence[Claim], out_dir: str | Path, name: str, title: str = ""
) -> list[Path]:
    """``<name>.csv`` and ``<name>.md`` under ``out_dir``, atomically."""
    d = Path(out_dir)
    return [
        atomic_write_text(d / f"{name}.csv", claims_csv(claims)),
        atomic_write_text(d / f"{name}.md", claims_markdown(claims, title)),
    ]


def read_claims_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def collect(figures_dir: str | Path, studies: Sequence[str]) -> list[Path]:
    """``claims.csv`` and ``claims.md``: every study's ``<study>_claims.csv`` of
    ``figures_dir`` in study order (those that exist); nothing when none does."""
    d = Path(figures_dir)
    rows = [r for s in studies if (d / f"{s}_claims.csv").is_file()
            for r in read_claims_csv(d / f"{s}_claims.csv")]  # fmt: skip
    if not rows:
        return []
    head = (
        "| study | claim | dataset | gap | 95% interval | verdict | detectable gap "
        "| seeds to decide | n seeds |"
    )
    lines = [head, "|---|---|---|---:|---|---|---:|---:|---:|"]
    for r in rows:
        interval = f"[{float(r['ci_low']):+.2f}, {float(r['ci_high']):+.2f}]" if r["gap"] else ""
        gap = f"{float(r['gap']):+.2f}" if r["gap"] else ""
        lines.append(
            f"| {r['study']} | {r['claim']} | {r['dataset']} | {gap} | {interval} | "
            f"{r['verdict']} | {_detectable(r.get('half_width'))} | "
            f"{r.get('seeds_needed') or ''} | {r['n_seeds']} |"
        )
    counts = {v: sum(r["verdict"] == v for r in rows) for v in (*VERDICTS, "not measured")}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    md = (
        "\n".join(lines)
        + f"\n\nEvery claim of the papers checked on this run: {summary}. Gap and 95% interval "
        "as in each study's `<study>_claims.md` (t-based over the seeds plus a paired bootstrap "
        "of the test posts; toy-world numbers when the data is the toy world). An inconclusive "
        "claim reads: no gap beyond its detectable gap (±) at this many seeds; seeds to decide "
        "estimates how many would decide the gap it observed.\n"
    )
    return [
        atomic_write_text(d / "claims.csv", _csv(rows)),
        atomic_write_text(d / "claims.md", md),
    ]
