import csv
import io
import json
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from promu_lib.config import load_config  # noqa: E402
from promu_lib.report import (  # noqa: E402
    TOY_NOTE,
    Table,
    data_checksums,
    data_version,
    paper_f1,
    paper_numbers,
    paper_value,
    provenance,
    save_figure,
)


def _table(**kw):
    args = dict(
        name="t1",
        columns=["twitter2015", "mnre"],
        profile="tiny",
        seeds=[0, 1],
        data_version="toy world seed 7",
        title="Main results",
        toy=True,
    )
    args.update(kw)
    return Table(**args)


def test_packaged_paper_numbers_match_the_shared_facts():
    nums = paper_numbers()
    assert nums["promu"]["table1_prf"]["HVPNeT"]["mnre"] == [83.64, 80.78, 81.85]
    nums["promu"] = None  # a copy: the next call is unaffected
    assert paper_f1("promu", "table1_prf", "PROMU (Ours)", "twitter2015") == 80.5
    assert paper_f1("promu", "table2_f1", "MMIB+Ours", "mnre") == 87.46
    assert paper_f1("promu", "table1_prf", "MTB", "twitter2015") is None  # null in the paper
    assert paper_value("promu", "no such table") is None


def test_two_seeds_show_mean_and_sample_std_beside_the_paper():
    t = _table()
    t.add_row(
        "HVPNeT",
        {"twitter2015": [70.0, 73.0], "mnre": [60.0, 61.0]},
        {"twitter2015": 75.32, "mnre": (81.85, 0.5)},
    )
    rec = t.to_records()[0]["twitter2015"]
    assert rec["mean"] == pytest.approx(71.5)
    assert rec["std"] == pytest.approx(statistics.stdev([70.0, 73.0]))
    line = t.display_rows()[0]
    assert line[:5] == [
        "HVPNeT",
        "71.50 ± 2.12 (n=2)",
        "75.32",
        "60.50 ± 0.71 (n=2)",
        "81.85 ± 0.50",
    ]
    assert "| twitter2015 | twitter2015 (paper) |" in t.to_markdown()


def test_single_seed_has_no_std_and_says_n1():
    t = _table(seeds=[3])
    t.add_row("BERT", {"twitter2015": np.float32(55.5), "mnre": np.array([1.0])})
    assert t.display_rows()[0][1] == "55.50 (n=1)"
    assert t.to_records()[0]["twitter2015"]["std"] is None


def test_missing_value_is_an_empty_cell_with_its_reason():
    t = _table()
    t.add_row("PROMU", {"twitter2015": [80.0, 81.0]}, reasons={"mnre": "pre-training skipped"})
    t.add_row("UMT", {}, {"mnre": 63.46})
    body = t.display_rows()
    assert body[0][3] == "" and "mnre: pre-training skipped" in body[0][-1]
    assert body[1][1] == "" and body[1][3] == "" and body[1][4] == "63.46"
    assert "twitter2015: not measured" in body[1][-1]
    rows = list(csv.DictReader(io.StringIO(t.to_csv())))
    assert rows[0]["mnre"] == "" and rows[0]["mnre_n"] == "0"
    assert rows[1]["mnre_paper"] == "63.46"


def test_bad_input_is_refused():
    t = _table()
    with pytest.raises(KeyError, match="unknown column"):
        t.add_row("x", {"twitter2017": 1.0})
    with pytest.raises(ValueError, match="finite"):
        t.add_row("x", {"mnre": [1.0, float("nan")]})


def test_caption_names_profile_seeds_data_and_toy_warning():
    toy = _table(profile="toy-large", seeds=[0, 1, 2])
    assert "toy-large" in toy.caption and "[0, 1, 2]" in toy.caption
    assert "toy world seed 7" in toy.caption and TOY_NOTE in toy.caption
    real = _table(profile="paper", toy=False, data_version="sha256 abc")
    assert TOY_NOTE not in real.caption and "sha256 abc" in real.caption
    assert TOY_NOTE in toy.to_markdown() and "toy-large" in toy._repr_html_()


def test_for_config_takes_profile_seeds_and_data_version():
    cfg = load_config("toy-large")
    t = Table.for_config(cfg, "t", ["mnre"])
    assert t.profile == "toy-large" and list(t.seeds) == [0, 1, 2] and t.toy
    assert t.data_version == data_version(cfg) and f"seed {cfg.data.toy.seed}" in t.data_version


def test_save_writes_csv_md_and_row_configs(tmp_path):
    t = _table()
    t.add_row(
        "HVPNeT", {"mnre": [1.0, 2.0]}, rerun="promu finetune --model hvpnet", config={"lr": 1e-3}
    )
    written = t.save(tmp_path / "figs", provenance={"git_commit": None})
    assert [p.name for p in written] == ["t1.csv", "t1.md", "t1.config.json"]
    assert all(p.stat().st_size > 0 for p in written)
    assert "how to rerun" in (tmp_path / "figs" / "t1.md").read_text()
    conf = json.loads((tmp_path / "figs" / "t1.config.json").read_text())
    assert conf["rows"]["HVPNeT"] == {
        "rerun": "promu finetune --model hvpnet",
        "config": {"lr": 1e-3},
    }
    assert conf["caption"] == t.caption and conf["provenance"] == {"git_commit": None}
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(p.name for p in written)


def test_save_figure_writes_png_and_pdf(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    ax.set_xlabel("x label")
    out = save_figure(fig, "fig", tmp_path)
    plt.close(fig)
    assert [p.name for p in out] == ["fig.png", "fig.pdf"]
    assert out[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out[1].read_bytes()[:5] == b"%PDF-"


def test_data_checksums_and_real_data_version(tmp_path):
    (tmp_path / "mnre").mkdir()
    (tmp_path / "mnre" / "ours_train.txt").write_text("a\n")
    (tmp_path / "img.jpg").write_bytes(b"\xff\xd8")
    sums = data_checksums(tmp_path)
    assert list(sums) == ["mnre/ours_train.txt"] and len(sums["mnre/ours_train.txt"]) == 64
    cfg = load_config("paper", overrides={"data.root": str(tmp_path)})
    before = data_version(cfg)
    (tmp_path / "mnre" / "ours_train.txt").write_text("b\n")
    assert data_version(cfg) != before and "1 text files" in before
    assert data_checksums(tmp_path / "absent") == {}


def test_provenance_records_versions_config_and_data(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    cfg = load_config("tiny")
    prov = provenance(cfg, data_dir=tmp_path)
    assert prov["profile"] == "tiny" and len(prov["config_hash"]) == 12
    assert prov["packages"]["torch"] and prov["python"].count(".") == 2
    assert list(prov["data_checksums"]) == ["x.json"]
    assert prov["config"] == cfg.to_dict()
    json.dumps(prov)  # serialisable as is
