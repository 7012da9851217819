"""The studies' tables and figures, on hand-made job results (nothing trains here)."""

import json
import math
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from promu_lib import plots  # noqa: E402
from promu_lib.config import load_config  # noqa: E402
from promu_lib.jobs import Finetune, Pretrain  # noqa: E402
from promu_lib.mining import ENTITY_TEMPLATES, RELATION_TEMPLATES, PseudoLabels  # noqa: E402
from promu_lib.report import paper_value  # noqa: E402
from promu_lib.studies import (
    common,  # noqa: E402
    fig3_tsne,  # noqa: E402
    fig4_tail,  # noqa: E402
    fig5_attention,  # noqa: E402
    hvpnet,  # noqa: E402
    table1,  # noqa: E402
    table2,  # noqa: E402
    table3,  # noqa: E402
)
from promu_lib.studies import finetune as finetune_study  # noqa: E402
from promu_lib.studies import mining as mining_study  # noqa: E402
from promu_lib.studies import pretrain as pretrain_study  # noqa: E402
from promu_lib.studies.common import DATASETS  # noqa: E402


@pytest.fixture
def cfg(tmp_path):
    return load_config("tiny", overrides={"data.root": str(tmp_path / "data"), "run.seeds": [0, 1]})


def _metrics(f1, p=None, r=None, per=None, dev=None, history=None, task="ner"):
    test = {"precision": p if p is not None else f1, "recall": r if r is not None else f1, "f1": f1}
    key = "per_type" if task == "ner" else "per_relation"
    test[key] = {k: {"p": v, "r": v, "f1": v, "support": s} for k, (v, s) in (per or {}).items()}
    history = history or [{"epoch": 0, "dev_f1": f1}]
    return {
        "test": test,
        "dev": {"f1": f1 if dev is None else dev},
        "history": history,
        "best_epoch": 0,
        "epochs_run": len(history),
        "stopped_by": "patience",
    }


# -- result tables ------------------------------------------------------------------------------


def test_results_table_mean_std_paper_and_missing(cfg):
    promu = next(r for r in table1.ROWS if r.pretrain == "promu")
    bert = table1.ROWS[0]
    results = {
        promu.job("twitter2015", 0): _metrics(60.0, p=50.0, r=75.0),
        promu.job("twitter2015", 1): _metrics(64.0, p=54.0, r=79.0),
        bert.job("twitter2015", 0): _metrics(40.0),
        Pretrain("promu"): "ignored: not a fine-tuning result",
    }
    t = common.results_table(
        cfg, "table1", [bert, promu], results, ["twitter2015", "mnre"],
        paper=("promu", "table1_prf"), paper_std=("promu", "table1_f1_std"),
    )  # fmt: skip
    assert t.columns[:3] == ["twitter2015 P", "twitter2015 R", "twitter2015 F1"]
    row = {r.name: r for r in t.rows}[promu.name]
    f1 = row.cells["twitter2015 F1"]
    assert f1.values == (60.0, 64.0) and f1.mean == 62.0
    assert f1.std == pytest.approx(statistics.stdev([60.0, 64.0]))
    assert row.cells["twitter2015 P"].mean == 52.0
    paper = paper_value("promu", "table1_prf", "PROMU (Ours)", "twitter2015")
    assert (row.cells["twitter2015 P"].paper, f1.paper) == (paper[0], paper[2])
    assert f1.paper_std == paper_value("promu", "table1_f1_std", "PROMU (Ours)", "twitter2015")
    assert row.cells["twitter2015 P"].paper_std is None  # the paper gives std for F1 only
    assert row.cells["mnre F1"].values == () and row.cells["mnre F1"].reason == common.NOT_RUN
    # BERT-CRF has no MNRE number in the paper (MTB is the MRE text-only row)
    bert_row = {r.name: r for r in t.rows}[bert.name]
    assert bert_row.cells["mnre F1"].paper == paper_value("promu", "table1_prf", "MTB", "mnre")[2]
    assert "pretrain.lambda" not in (bert_row.rerun or "")
    assert "--init" in row.rerun and "promu pretrain" in row.rerun
    md = t.to_markdown()
    assert "62.00 ± 2.83 (n=2)" in md and "not run" in md


def test_f1_only_table_and_comparisons(cfg):
    results = {}
    for k, (row, f1) in enumerate(zip(table2.ROWS, (50.0, 55.0, 58.0))):
        for d in DATASETS:
            for s in (0, 1):
                results[row.job(d, s)] = _metrics(f1 + s + (k == 2 and d == "mnre") * -20)
    t = common.results_table(
        cfg, "table2", table2.ROWS, results, DATASETS, paper=("promu", "table2_f1"),
        metrics=("F1",),
    )  # fmt: skip
    assert t.columns == [f"{d} F1" for d in DATASETS]
    assert t.rows[0].cells["mnre F1"].paper == paper_value("promu", "table2_f1", "MMIB", "mnre")
    cmp = common.compare_rows(t, table2.ROWS[2].name, table2.ROWS[0].name)
    assert cmp.diffs["twitter2015 F1"] == pytest.approx(8.0)
    assert cmp.diffs["mnre F1"] == pytest.approx(-12.0)
    paper = paper_value("promu", "table2_f1")
    assert cmp.paper["mnre F1"] == pytest.approx(paper["MMIB+Ours"]["mnre"] - paper["MMIB"]["mnre"])
    assert cmp.holds == {"twitter2015 F1": True, "twitter2017 F1": True, "mnre F1": False}
    assert "higher in 2 of 3 measured columns" in cmp.sentence()
    with pytest.raises(KeyError, match="no row"):
        common.compare_rows(t, "nope", table2.ROWS[0].name)


def _fake_run(cfg, job, rows):
    """A finished fine-tuning run of ``job`` on disk: its metrics and test predictions."""
    if job.init is not None:  # the run directory hashes the file it starts from
        init = job.init_file(cfg)
        init.parent.mkdir(parents=True, exist_ok=True)
        init.write_bytes(b"weights of " + repr(job.init).encode())
    d = job.out_dir(cfg)
    d.mkdir(parents=True, exist_ok=True)
    task = "re" if job.dataset == "mnre" else "ner"
    (d / "metrics.json").write_text(json.dumps({"task": task}))
    (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


RELATIONS = ["None", "/per/per/couple", "/per/per/parent"]


def _re_predictions(right: int, n: int = 90):
    """``n`` MNRE test posts, the first ``right`` of them predicted right."""
    gold = [RELATIONS[i % 3] for i in range(n)]
    return [
        {"id": f"m{i}", "gold": g, "pred": g if i < right else RELATIONS[(i + 1) % 3]}
        for i, g in enumerate(gold)
    ]


def test_table1_claims_gap_interval_and_verdict(cfg, tmp_path):
    """HVPNeT right on every post, text-only on a third: "multimodal beats text-only" holds;
    rows with the same predictions tie (inconclusive); a row not run is not measured."""
    cfg = cfg.replace(**{"run.seeds": [0, 1], "run.output_dir": str(tmp_path / "runs")})
    for job in table1.jobs(cfg, ["mnre"]):
        if job.model == "bert":
            _fake_run(cfg, job, _re_predictions(30))
        elif job.init is None or job.init.variant != "hard":  # w/o soft labels: not run
            _fake_run(cfg, job, _re_predictions(90 if job.model == "hvpnet" else 60))
    results = {job: _metrics(50.0) for job in table1.jobs(cfg, ["mnre"])}
    t = common.results_table(cfg, "table1", table1.ROWS, results, ["mnre"])
    claims = {c.claim: c for c in table1.claims(cfg, t, ["mnre"])}
    assert len(claims) == len(table1.CLAIMS)
    mm = claims["multimodal beats text-only"]
    assert mm.gap.verdict == "holds" and mm.gap.n_seeds == 2 and mm.gap.n_posts == 90
    assert mm.gap.point == pytest.approx(100.0 - 100 * 2 * 20 / (60 + 60), abs=1e-9)
    assert mm.paper_gap == pytest.approx(
        paper_value("promu", "table1_prf", "HVPNeT", "mnre")[2]
        - paper_value("promu", "table1_prf", "MTB", "mnre")[2]
    )
    tie = claims["entity-object alignment helps"]
    assert tie.gap.point == 0.0 and tie.gap.verdict == "inconclusive"
    missing = claims["soft pseudo-labels beat hard ones"]
    assert missing.gap is None and missing.record()["verdict"] == "not measured"


# -- Table 3 ------------------------------------------------------------------------------------


def test_template_order_matches_the_paper():
    paper = paper_value("promu", "table3")
    for name, e, r in table3.template_pairs():
        en, rn = name.split("+")
        assert ENTITY_TEMPLATES[e] == paper["entity_templates"][en]
        assert RELATION_TEMPLATES[r] == paper["relation_templates"][rn]
    assert [n for n, *_ in table3.template_pairs()] == list(paper["f1"])


def test_template_table(cfg):
    jobs = table3.template_jobs(["mnre"], [0])
    assert len(jobs) == 6 and jobs[0].init == Pretrain("promu")  # 1+A is Table 1's PROMU
    results = {j: _metrics(10.0 + i, task="re") for i, j in enumerate(jobs)}
    t = table3.template_table(cfg, results, ["mnre", "twitter2015"])
    last = t.rows[-1]
    assert last.name == "2+C" and last.cells["mnre"].values == (15.0,)
    assert last.cells["mnre"].paper == paper_value("promu", "table3", "f1", "2+C", "mnre")
    assert last.cells["twitter2015"].reason == common.NOT_RUN
    assert "mining.relation_template=2" in last.rerun


# -- Fig 4 --------------------------------------------------------------------------------------


def test_fig4_gains_tail_types_and_relative(cfg):
    counts = {f"r{i}": 10 * (i + 1) for i in range(10)} | {"None": 1000, "absent": 1}
    base_rel = {f"r{i}": (10.0, 3) for i in range(10)}
    new_rel = {f"r{i}": (20.0 if i < 8 else 10.0, 3) for i in range(10)}
    results = {}
    for s in (0, 1):
        results[common.scratch_job("mnre", s)] = _metrics(1.0, per=base_rel, task="re")
        results[common.promu_job("mnre", s)] = _metrics(1.0, per=new_rel, task="re")
        for d, org in (("twitter2015", 40.0), ("twitter2017", 20.0)):
            base = {"PER": (50.0, 5), "ORG": (org, 5), "MISC": (0.0, 5), "LOC": (50.0, 0)}
            new = {"PER": (50.0, 5), "ORG": (org + 10.0, 5), "MISC": (10.0, 5), "LOC": (0.0, 0)}
            results[common.scratch_job(d, s)] = _metrics(1.0, per=base)
            results[common.promu_job(d, s)] = _metrics(1.0, per=new)
    gains = fig4_tail.fig4_gains(results, [0, 1], counts)
    # "absent" is rare but has no test line; "None" is the negative class
    assert gains.tail == [f"r{i}" for i in range(8)]
    tail = gains.summary["MRE: the 8 tail relations"]
    assert tail["gain (F1 points)"] == [10.0, 10.0] and tail["gain (%)"] == [100.0, 100.0]
    assert gains.summary["MRE: all relations"]["gain (F1 points)"] == [8.0, 8.0]
    org = gains.summary["MNER: ORG"]  # one value per seed, the mean over the two Twitter sets
    assert org["gain (F1 points)"] == [10.0, 10.0]
    assert org["gain (%)"] == [pytest.approx((25.0 + 50.0) / 2)] * 2
    misc = gains.summary["MNER: MISC"]  # base F1 0: no relative gain
    assert misc["gain (F1 points)"] == [10.0, 10.0] and misc["gain (%)"] == []
    assert set(gains.per_class["twitter2015"]) == {"PER", "ORG", "MISC"}  # LOC has no support
    t = fig4_tail.fig4_table(cfg, gains)
    rows = {r.name: r for r in t.rows}
    assert rows["MNER: MISC"].cells["gain (%)"].reason
    assert rows["MRE: the 8 tail relations"].cells["gain (%)"].paper == 25.5
    assert rows["MNER twitter2017: all types"].cells["gain (%)"].paper == 6.0
    fig = plots.fig4_figure(gains)
    assert len(fig.axes) == 3
    plt.close(fig)


# -- HVPNeT -------------------------------------------------------------------------------------


def test_cross_task_jobs_and_table(cfg):
    jobs = hvpnet.cross_task_jobs([0])
    assert Finetune("mnre", "hvpnet", init=Finetune("twitter2017", "hvpnet")) in jobs
    assert Finetune("mnre", "hvpnet") in jobs and len(jobs) == 4
    results = {j: _metrics(30.0 if j.init else 20.0) for j in jobs}
    t = hvpnet.cross_task_table(cfg, results)
    direct, after = t.rows
    col = "twitter2017 → mnre"
    assert direct.cells[col].values == (20.0,) and after.cells[col].values == (30.0,)
    assert (direct.cells[col].paper, after.cells[col].paper) == (81.85, 82.5)


def test_low_resource_table_and_curves(cfg):
    fractions = [0.5, 1.0]
    jobs = hvpnet.low_resource_jobs(["mnre"], [0, 1], fractions)
    assert len(jobs) == 3 * 2 * 2 and {j.train_fraction for j in jobs} == set(fractions)
    assert Finetune("mnre", "bert", seed=1) in jobs  # 100% is Table 1's job (cached)
    results = {j: _metrics(100 * j.train_fraction + j.seed) for j in jobs if j.model != "bert"}
    t, curves = hvpnet.low_resource_table(
        cfg, results, hvpnet.LOW_RESOURCE_MODELS, ["mnre"], fractions
    )
    assert curves["mnre"]["hvpnet"] == [[50.0, 51.0], [100.0, 101.0]]
    assert curves["mnre"]["text only (bert)"] == [[], []]
    assert t.rows[0].cells["50%"].reason == common.NOT_RUN
    fig = plots.low_resource_figure(curves, fractions)
    plt.close(fig)


# -- stages 01-03 ------------------------------------------------------------------------------


def _labels():
    """Two caption images, 2 object slots, 3 nouns, 2 relations; image 64 x 32 pixels."""
    q_ent = torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], [[0.2, 0.2, 0.6], [0.0, 0.0, 0.0]]])
    return PseudoLabels(
        keys=["a.jpg", "b.jpg"],
        boxes=torch.tensor([[[0.0, 0.0, 0.25, 0.5], [0.5, 0.5, 1.0, 1.0]], [[0, 0, 0.5, 1], [0, 0, 0, 0]]]),
        object_mask=torch.tensor([[True, True], [True, False]]),
        q_ent=q_ent,
        ent_mask=torch.tensor([[True, True], [True, False]]),
        q_rel=torch.tensor([[0.9, 0.1], [0.3, 0.7]]),
        rel_mask=torch.tensor([True, True]),
        image_size=torch.tensor([[64, 32], [64, 32]]),
        nouns=["dog", "car", "tree"],
        relation_labels=["/per/per/parent", "/per/per/couple"],
        relation_phrases=["parent", "couple"],
        entity_prompts=["This is an image of dog."],
        relation_prompts=["This image shows the relation of parent."],
        meta={"summary": {"images": 2, "objects": 3}, "noun_counts": {"dog": 5, "car": 3}},
    )  # fmt: skip


def test_pseudo_label_agreement_and_summary(cfg):
    labels = _labels()
    truth = [
        # box 0 matches the dog exactly, box 1 overlaps nothing drawn
        {"img_id": "a.jpg", "objects": [{"cls": "dog", "box": [0, 0, 16, 16]}], "relation": "/per/per/parent"},
        {"img_id": "b.jpg", "objects": [{"cls": "car", "box": [0, 0, 32, 32]}], "relation": "/per/per/parent"},
        {"img_id": "unknown.jpg", "objects": [], "relation": None},
    ]  # fmt: skip
    a = mining_study.pseudo_label_agreement(labels, truth)
    assert a["entity_boxes_matched"] == 2  # a.jpg box 0 (dog, right) and b.jpg box 0 (tree, wrong)
    assert a["entity_agreement"] == 50.0
    assert a["relation_images"] == 2 and a["relation_agreement"] == 50.0
    assert a["entity_chance"] == pytest.approx(100 / 3)
    t = mining_study.mining_summary(cfg, labels, a)
    rows = {r.name: r for r in t.rows}
    assert rows["entity agreement with truth (%)"].cells["value"].values == (50.0,)
    assert rows["confident objects"].cells["value"].reason == "not available"
    nouns = mining_study.nouns_table(cfg, labels, k=3)
    assert [r.name for r in nouns.rows] == ["dog", "car", "tree"]
    assert nouns.rows[2].cells["count"].reason == "no count"
    assert "This is an image of dog." in mining_study.prompts_markdown(labels)


def test_pretrain_history_and_summary(cfg, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [
        {"step": 1, "itm": 0.7, "cit": 2.0, "total": 2.7},
        {"step": 2, "itm": 0.6, "cit": 1.5, "total": 2.1},
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    hist = pretrain_study.pretrain_history(run / "encoder.safetensors")
    assert hist == rows
    t = pretrain_study.pretrain_summary(cfg, {"align-only": hist, "promu": []})
    first, second = t.rows
    assert first.cells["itm"].values == (0.6,) and first.cells["coe"].reason == "switched off"
    assert first.config == {"pretrain.lambda_coe": 0.0, "pretrain.lambda_cir": 0.0}
    assert second.cells["total"].reason == "no logged step"
    fig = plots.pretrain_losses_figure({"align-only": hist}, main="align-only")
    assert [line.get_label() for line in fig.axes[0].lines] == ["L_ITM", "L_CIT"]
    plt.close(fig)


def test_finetune_summary_and_curves(cfg):
    row = table1.ROWS[0]
    hist = [{"epoch": 0, "dev_f1": 10.0}, {"epoch": 1, "dev_f1": 30.0}]
    results = {row.job("mnre", s): _metrics(5.0, dev=30.0 + s, history=hist) for s in (0, 1)}
    t = finetune_study.finetune_summary(cfg, table1.ROWS[:2], results, ["mnre"])
    assert t.rows[0].cells["mnre"].values == (30.0, 31.0)
    assert t.rows[1].cells["mnre"].reason == common.NOT_RUN
    fig = plots.dev_curves_figure(results, table1.ROWS[:2], ["mnre"], seed=0)
    (line,) = fig.axes[0].lines
    assert list(line.get_ydata()) == [10.0, 30.0]
    plt.close(fig)
    bars = plots.table_bars(t, ["mnre"])
    plt.close(bars)


def test_finetune_convergence_counts_where_runs_stopped(cfg):
    row = table1.ROWS[0]
    stops = [(4, 10, "patience"), (7, 13, "patience"), (11, 12, "cap")]  # best epoch, run, why
    results = {
        row.job("mnre", s): {**_metrics(5.0), "best_epoch": b, "epochs_run": n, "stopped_by": why}
        for s, (b, n, why) in enumerate(stops)
    }
    t = finetune_study.finetune_convergence(cfg.replace(**{"run.seeds": [0, 1, 2]}),
                                            table1.ROWS[:2], results, ["mnre"])  # fmt: skip
    cells = t.rows[0].cells
    assert cells["mnre best epoch"].values == (8.0,)  # epochs 5, 8, 12 counted from 1
    assert cells["mnre epochs run"].values == (12.0,)
    assert cells["mnre % by patience"].values == (pytest.approx(200 / 3),)
    assert t.rows[1].cells["mnre epochs run"].reason == common.NOT_RUN


# -- Fig 3 / Fig 5 numbers ------------------------------------------------------------------------


class _Emb:
    def __init__(self, features, labels, kinds):
        import numpy as np

        self.features, self.labels, self.kinds = np.asarray(features, float), labels, kinds


def test_nearest_label_agreement_and_consistency_table(cfg):
    emb = _Emb(
        [[1, 0], [0, 1], [1, 0.1], [0.1, 1], [-1, 0]],
        ["PER", "LOC", "PER", "PER", "LOC"],
        ["entity", "entity", "object", "object", "object"],
    )
    # entity PER -> nearest object PER (right); entity LOC -> nearest object PER (wrong)
    assert fig3_tsne.nearest_label_agreement(emb, "entity", "object") == 50.0
    assert math.isnan(fig3_tsne.nearest_label_agreement(emb, "entity", "image"))
    t = fig3_tsne.consistency_table(
        cfg, {"m": {"entity-object": emb}}, {"entity-object": ("entity", "object"), "x": ("a", "b")}
    )
    cells = t.rows[0].cells
    assert cells["entity-object"].values == (50.0,) and cells["x"].reason


def test_attention_table(cfg):
    class Case:
        def __init__(self, share, pred, gold):
            self.object_share, self.pred, self.gold = share, pred, gold

    t = fig5_attention.attention_table(
        cfg, {"a": [Case(0.5, "B-PER", "PER"), Case(None, "O", "LOC")], "b": []}
    )
    a, b = t.rows
    assert a.cells["attention on the object (%)"].values == (50.0,)
    assert a.cells["type right (%)"].values == (50.0,)
    assert b.cells["type right (%)"].reason == "no post"


# -- a study's run: what it promises, it writes ------------------------------------------------


@pytest.mark.parametrize(
    "study", [table1, table2, table3, finetune_study], ids=lambda m: m.__name__.rsplit(".")[-1]
)
def test_run_writes_exactly_its_products_and_shows_them(study, cfg, tmp_path, monkeypatch):
    """On hand-made results for every job of the study, ``run`` saves each promised table and
    figure (and nothing else) and ``show`` displays them in order."""
    from promu_lib import studies

    cfg = cfg.replace(**{"run.seeds": [0]})
    results = {
        job: {
            **_metrics(50.0 + i, history=[{"epoch": 0, "dev_f1": 40.0 + i}]),
            "dataset": job.dataset,
            "model": job.model,
            "seed": job.seed,
            "image_mode": job.image_mode,
            "epochs_run": 1,
            "seconds": 1.0,
        }  # fmt: skip
        for i, job in enumerate(study.jobs(cfg, ["twitter2015", "mnre"]))
    }
    open_before = set(plt.get_fignums())
    out = study.run(cfg, results, tmp_path, ["twitter2015", "mnre"])
    assert set(plt.get_fignums()) == open_before  # saved figures are closed: show() reads files
    assert sorted(tmp_path.iterdir()) == sorted(studies.products(study, tmp_path))
    assert list(out.tables) == list(study.TABLES) and list(out.figures) == list(study.FIGURES)
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda x: shown.append(type(x).__name__))
    out.show()
    kinds = {"table": "Table", "figure": "Image", "claims": "Markdown"}
    assert shown == ["Markdown"] * bool(out.lines) + [kinds[kind] for kind, _ in out.order]


def test_table1_run_writes_a_claim_per_claim_and_dataset(cfg, tmp_path):
    cfg = cfg.replace(**{"run.seeds": [0], "run.output_dir": str(tmp_path / "runs")})
    results = {job: _metrics(60.0) for job in table1.jobs(cfg, ["mnre"])}
    out = table1.run(cfg, results, tmp_path / "fig", ["mnre"])
    assert len(out.lines) == len(out.claims) == len(table1.CLAIMS)
    assert all("not measured" in line for line in out.lines)  # no predictions on disk
    md = (tmp_path / "fig" / "table1_claims.md").read_text()
    assert "toy-world numbers" in md and "seeds [0]" in md


def test_table1_measurements_show_what_ran_them(monkeypatch, tmp_path):
    from promu_lib import paths

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "seed_spread.md").write_text(
        "<!-- written by `benchmarks/seed_spread.py` on 2026-12-01T10:00:00, commit abc; do not "
        "edit -->\n\n# Spread\n\n| a |\n"
    )
    monkeypatch.setattr(paths, "project_root", lambda: tmp_path)
    text = table1.measurements()
    assert "*Measured by `benchmarks/seed_spread.py` on 2026-12-01T10:00:00 (commit abc).*" in text
    assert "### Spread" in text
    assert "benchmarks/promu_vs_hvpnet.py has not been run" in text


def test_the_pretraining_tables_name_teacher_relation_set_fusion_init_and_itm():
    """Issue 16: a caption says which teacher, relation set, fusion initialisation and ITM
    negatives produced the PROMU rows; tiny and paper differ on each of the first three."""
    from promu_lib.config import profile_config

    tiny_note = common.pretraining_note(profile_config("tiny"))
    paper_note = common.pretraining_note(profile_config("paper"))
    assert "small dual encoder" in tiny_note and "Sec. 4.1 encoders" in paper_note
    assert "MNRE's 22 relations (the downstream label set)" in tiny_note
    assert "Wikidata" in paper_note and "ALBEF split" in paper_note
    assert "initialised at random" in tiny_note and "ITM Eq. 3 on the given pairs." in tiny_note
    hard = profile_config("tiny").replace(**{"pretrain.itm_hard_negatives": True})
    assert "hard negatives" in common.pretraining_note(hard)
    cfg = profile_config("tiny")
    assert tiny_note in table1.table(cfg, {}, ["mnre"]).title
