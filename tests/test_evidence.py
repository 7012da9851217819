"""Gaps, intervals and verdicts on constructed runs: a clear win, a clear loss, a tie; the counts
give back the metrics' F1 exactly; the interval widens with the seeds' spread."""

from __future__ import annotations

import random

import numpy as np
import pytest

from promu_lib import evidence
from promu_lib.metrics import ner_scores, re_scores

RELS = ["None", "/per/per/couple", "/per/per/parent", "/org/org/subsidiary"]


def _re_rows(n: int, accuracy: float, seed: int) -> list[dict]:
    """``n`` MRE posts (the gold fixed by post index), a share ``accuracy`` predicted right."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        gold = RELS[i % len(RELS)]
        pred = gold if rng.random() < accuracy else RELS[(i + 1) % len(RELS)]
        rows.append({"id": f"p{i}", "gold": gold, "pred": pred})
    return rows


def _runs(accuracy: float, seeds=(0, 1, 2), n=400) -> list[evidence.Counts]:
    return [evidence.re_counts(_re_rows(n, accuracy, 100 * s + int(accuracy * 100))) for s in seeds]


def test_counts_give_back_the_metrics_f1():
    rows = _re_rows(300, 0.6, 1)
    c = evidence.re_counts(rows)
    f1 = evidence.micro_f1(c.array.sum(0))
    assert f1 == pytest.approx(
        re_scores([r["gold"] for r in rows], [r["pred"] for r in rows])["f1"]
    )
    ner = [
        {"id": "a", "gold": ["B-PER", "I-PER", "O", "B-LOC"], "pred": ["B-PER", "I-PER", "O", "B-ORG"]},
        {"id": "b", "gold": ["O", "I-MISC", "O"], "pred": ["O", "I-MISC", "B-PER"]},  # I- starts one
        {"id": "c", "gold": ["B-ORG", "O"], "pred": ["B-ORG", "O"]},
    ]  # fmt: skip
    c = evidence.ner_counts(ner)
    expected = ner_scores([r["gold"] for r in ner], [r["pred"] for r in ner])
    assert evidence.micro_f1(c.array.sum(0)) == pytest.approx(expected["f1"])
    per = dict(zip(c.classes, evidence.class_f1(c.array.sum(0))))
    assert per == pytest.approx({t: v["f1"] for t, v in expected["per_type"].items()})


def test_a_clear_win_holds_a_clear_loss_is_reversed_a_tie_is_inconclusive():
    good, bad = _runs(0.9), _runs(0.5)
    win = evidence.paired_gap(good, bad)
    assert win.verdict == "holds" and win.low > 0 and win.low < win.point < win.high
    loss = evidence.paired_gap(bad, good)
    assert loss.verdict == "reversed" and loss.point == pytest.approx(-win.point)
    tie = evidence.paired_gap(_runs(0.7), _runs(0.7, seeds=(3, 4, 5)))
    assert tie.verdict == "inconclusive" and tie.low < 0 < tie.high
    assert win.n_seeds == 3 and win.n_posts == 400 and "training seeds (n=3" in win.accounts_for


def test_the_interval_accounts_for_the_seeds_spread():
    """Same test sample, same mean gap: seeds that disagree give a wider interval."""
    base = _runs(0.6, seeds=(0, 0, 0))
    steady = [evidence.re_counts(_re_rows(400, 0.75, 7))] * 3
    spread = [evidence.re_counts(_re_rows(400, a, 7)) for a in (0.6, 0.75, 0.9)]
    narrow, wide = evidence.paired_gap(steady, base), evidence.paired_gap(spread, base)
    assert (wide.high - wide.low) > 1.5 * (narrow.high - narrow.low)
    one = evidence.paired_gap(steady[:1], base[:1])
    assert one.n_seeds == 1 and "one seed" in one.accounts_for


def test_seed_dominated_gaps_get_a_t_interval_wider_than_the_percentile_bootstrap():
    """Three seeds whose gaps disagree, on many posts (the posts' part is small): the interval
    is about mean ± t(2) s / sqrt(3), where resampling the three seeds (the old interval) was
    ~2.5x narrower and could not hold its 95%."""
    base = [evidence.re_counts(_re_rows(4000, 0.6, 7))] * 3
    spread = [evidence.re_counts(_re_rows(4000, a, 7)) for a in (0.62, 0.72, 0.85)]
    g = evidence.paired_gap(spread, base)
    per_seed = [float(evidence.f1_gap(s.array.sum(0), base[0].array.sum(0))) for s in spread]
    sd = float(np.std(per_seed, ddof=1))
    t_half = 4.3027 * sd / np.sqrt(3)  # scipy.stats.t.ppf(0.975, 2)
    assert g.point == pytest.approx(np.mean(per_seed))
    assert 0.98 * t_half <= g.half_width < 1.05 * t_half  # Satterthwaite: df a bit above 2
    rng = np.random.default_rng(0)
    old = np.quantile(rng.choice(per_seed, (2000, 3)).mean(1), [0.025, 0.975])
    assert (old[1] - old[0]) / 2 < 0.5 * g.half_width
    assert g.seed_var == pytest.approx(sd**2 / 3) and g.post_var < 0.05 * g.seed_var


def test_the_t_interval_holds_its_level_at_three_seeds():
    """Gaps of 3 seeds drawn from a normal law: the interval covers the true mean ~95% of the
    time (the seed part alone), and ~95% with a known test-post part added."""
    rng = np.random.default_rng(1)
    draws = rng.normal(2.0, 3.0, (4000, 3))
    for post_var in (0.0, 4.0):
        hits = 0
        for gaps in draws:
            shift = rng.normal(0, post_var**0.5) if post_var else 0.0
            low, high = evidence.t_interval(gaps.mean() + shift, gaps.var(ddof=1) / 3, post_var, 3)
            hits += low <= 2.0 <= high
        assert 0.93 <= hits / len(draws) <= 0.975


def test_seeds_needed_from_the_measured_spread():
    """Seed sd 1, no post part, gap 1: t(n-1) / sqrt(n) < 1 first at n = 7."""
    g = evidence.Gap(1.0, -1.5, 3.5, 3, 400, seed_var=1 / 3, post_var=0.0)
    assert evidence.seeds_needed(g) == 7
    noisy_posts = evidence.Gap(1.0, -1.5, 3.5, 3, 400, seed_var=1 / 3, post_var=1.0)
    assert evidence.seeds_needed(noisy_posts) is None  # 1.96 * 1 > 1 at any n
    claim = evidence.Claim("t", "A beats B", "mnre", "A", "B", g)
    assert claim.record()["seeds_needed"] == 7 and claim.record()["half_width"] == 2.5
    held = evidence.Claim("t", "A beats B", "mnre", "A", "B", evidence.Gap(1, 0.5, 1.5, 3, 9))
    assert held.record()["seeds_needed"] is None


def test_runs_on_different_posts_are_refused():
    a = evidence.re_counts(_re_rows(10, 0.5, 0))
    b = evidence.re_counts([{**r, "id": r["id"] + "x"} for r in _re_rows(10, 0.5, 0)])
    with pytest.raises(ValueError, match="different test posts"):
        evidence.paired_gap([a], [b])
    with pytest.raises(ValueError, match="same number of runs"):
        evidence.paired_gap([a, a], [a])


def test_subset_gain_gap():
    """Gain 30 points on class 0, 0 on the others: subset {0} minus all classes = 30 - 10."""
    new = np.zeros((3, 3))
    base = np.zeros((3, 3))
    new[:, :] = [10, 10, 10]  # F1 100 on every class
    base[0] = [7, 10, 10]  # class 0: F1 70
    base[1:] = [10, 10, 10]
    stat = evidence.subset_gain_gap([0], [0, 1, 2])
    assert float(stat(new, base)) == pytest.approx(30.0 - 10.0)


def test_claims_tables_and_collection(tmp_path):
    win = evidence.paired_gap(_runs(0.9), _runs(0.5))
    claims = [
        evidence.Claim("table1", "A beats B", "mnre", "A", "B", win, paper_gap=1.5),
        evidence.Claim("table1", "A beats C", "mnre", "A", "C", None, reason="not run"),
    ]
    evidence.save_claims(claims, tmp_path, "table1_claims", "Profile 'tiny'")
    md = (tmp_path / "table1_claims.md").read_text()
    assert "| A beats B | mnre |" in md and "holds" in md and "not measured" in md
    assert "training seeds (n=3" in md and "Profile 'tiny'" in md
    assert f"±{win.half_width:.2f}" in md and "detectable gap" in md
    rows = evidence.read_claims_csv(tmp_path / "table1_claims.csv")
    assert rows[0]["verdict"] == "holds" and float(rows[0]["ci_low"]) > 0
    assert claims[0].sentence().endswith("→ **holds**") and "paper +1.50" in claims[0].sentence()
    paths = evidence.collect(tmp_path, ["table1", "table2"])
    assert [p.name for p in paths] == ["claims.csv", "claims.md"]
    assert "1 holds, 1 not measured" in (tmp_path / "claims.md").read_text()
    assert evidence.collect(tmp_path / "none", ["table1"]) == []
