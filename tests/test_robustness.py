"""Irrelevant-image robustness: evaluation under true / blank / shuffled images, by relevance."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from worlds import toy_cfg, world

from promu_lib import plots
from promu_lib.data.toyworld import build_toy_world, read_truth
from promu_lib.guards import CollapseWarning
from promu_lib.studies import robustness as rb
from promu_lib.studies.common import Row
from promu_lib.studies.table1 import ROWS as TABLE1_ROWS

torch.set_num_threads(1)

MICRO = {
    **world(twitter2015=(8, 3, 12)),
    "data.toy.twitter2015_irrelevant_rate": 0.5,  # both subsets present in a small test split
}
HVPNET = next(r for r in TABLE1_ROWS if r.model == "hvpnet")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("robust")
    cfg = toy_cfg(tmp, MICRO, **{"finetune.epochs": 1})
    build_toy_world(cfg, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CollapseWarning)
        results = rb.robustness_results(cfg, [HVPNET], ["twitter2015"], workers=1)
    return cfg, results


def test_multimodal_rows_are_table1_without_text_only():
    rows = rb.multimodal_rows()
    assert len(rows) == len(TABLE1_ROWS) - 1 and all(r.model != "bert" for r in rows)


def test_subset_f1_splits_by_relevance():
    rows = [
        {"gold": "/per/per/couple", "pred": "/per/per/couple"},
        {"gold": "/per/per/couple", "pred": "None"},
        {"gold": "/per/per/parent", "pred": "/per/per/parent"},
    ]
    f1 = rb.subset_f1("re", rows, [True, False, None])
    assert f1 == {"all": pytest.approx(80.0), "relevant": 100.0, "irrelevant": 0.0}
    assert rb.subset_f1("re", rows, [True, True, True])["irrelevant"] is None


def test_true_image_reproduces_the_run_and_results_are_cached(evaluated, monkeypatch):
    cfg, results = evaluated
    (result,) = results.values()
    job = HVPNET.job("twitter2015", 0)
    metrics = json.loads((job.out_dir(cfg) / "metrics.json").read_text())
    assert result["f1"]["true"]["all"] == pytest.approx(metrics["test"]["f1"])
    assert set(result["f1"]) == set(rb.MODES)
    truth = read_truth(cfg.data_root() / "truth" / "twitter2015_test.jsonl")
    n_irrelevant = sum(not t["relevant"] for t in truth)
    assert result["n"] == {"posts": 12, "relevant": 12 - n_irrelevant, "irrelevant": n_irrelevant}
    assert 0 < n_irrelevant < 12

    import promu_lib.train.finetune as ft

    monkeypatch.setattr(ft, "evaluate", lambda *a, **k: pytest.fail("not cached"))
    assert rb.evaluate_modes(cfg, job) == result


def test_real_data_has_no_relevance(evaluated, tmp_path):
    cfg, _ = evaluated
    assert rb.relevance(cfg.replace(**{"data.root": str(tmp_path)}), "mnre", ["a", "b"]) == [
        None,
        None,
    ]


def _fake(true, blank, shuffled, irrelevant=None):
    subsets = {"relevant": true + 1, "irrelevant": irrelevant}
    return {
        "n": {"posts": 10, "relevant": 8, "irrelevant": 0 if irrelevant is None else 2},
        "f1": {
            m: {"all": v, **(subsets if m == "true" else {"relevant": v, "irrelevant": None})}
            for m, v in (("true", true), ("blank", blank), ("shuffled", shuffled))
        },
    }


def test_table_sentences_and_figure_from_numbers(evaluated):
    cfg, _ = evaluated
    rows = [HVPNET, Row("PROMU (ours)", "promu", "promu")]
    results = {
        ("HVPNeT", "twitter2015", 0): _fake(60.0, 50.0, 58.0, irrelevant=40.0),
        ("HVPNeT", "twitter2015", 1): _fake(62.0, 52.0, 60.0, irrelevant=44.0),
        ("PROMU (ours)", "twitter2015", 0): _fake(70.0, 55.0, 60.0, irrelevant=50.0),
    }
    table = rb.robustness_table(cfg, rows, results, ["twitter2015", "mnre"])
    recs = {r["row"]: r for r in table.to_records()}
    hv = recs["twitter2015 · HVPNeT"]
    assert hv["true"]["values"] == [60.0, 62.0] and hv["shuffled · irrelevant"]["values"] == []
    assert hv["shuffled · irrelevant"]["reason"] == rb.EMPTY_SUBSET
    assert recs["mnre · HVPNeT"]["true"]["reason"] == "not run"
    lines = rb.summary(results, rows, ["twitter2015"])
    assert "another post's image costs +6.00 F1" in lines[1]  # (2 + 10) / 2
    assert "score 46.00 F1 on average against 66.50" in lines[2]  # mean of (42, 50); (62, 71)
    assert "HVPNeT loses +2.00 F1" in lines[3] and "smaller loss" in lines[3]
    fig = plots.robustness_figure(rb.figure_panels(results, rows, ["twitter2015"]))
    assert len(fig.axes) == 2 and len(fig.axes[0].patches) == 2 * len(rb.MODES)


def test_collapsed_models_are_named():
    results = {("HVPNeT", "mnre", 0): _fake(0.0, 0.0, 0.0)}
    assert "HVPNeT on mnre" in rb.summary(results, [HVPNET], ["mnre"])[0]
