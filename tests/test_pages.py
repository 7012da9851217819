"""The HTML pages of a run: stage reports lead with results (code on a second page, wide tables
in a scroll box), and the index leads with the run, the claims, Table 1 and a thumbnail of
every figure, and names every stage's report."""

from __future__ import annotations

import csv
import json
import shutil

import nbformat
import pytest
from PIL import Image

from promu_lib import pages, pipeline
from promu_lib.config import profile_config
from promu_lib.paths import project_root

CODE_MARK = "secret_source_line = 41 + 1"


def _cfg(tmp_path):
    return profile_config("tiny").replace(
        **{"run.figures_dir": str(tmp_path / "figures"), "run.reports_dir": str(tmp_path / "r")}
    )


def _status(stage, **extra):
    return {"stage": stage.name, "title": stage.title, "status": "ok", "seconds": 1.5,
            "report": f"{stage.notebook.stem}.html", "profile": "tiny", **extra}  # fmt: skip


def _figures(d, stages):
    d.mkdir(parents=True, exist_ok=True)
    names = [f for s in stages for f in s.module.FIGURES]
    for i, name in enumerate(names):
        Image.new("RGB", (600 + i, 300), (i * 9 % 255, 90, 160)).save(d / f"{name}.png")
    return names


def test_index_names_every_stage_report_and_embeds_its_figures(tmp_path):
    stages = pipeline.stages()
    cfg = _cfg(tmp_path)
    names = _figures(tmp_path / "figures", stages)
    statuses = [_status(s) for s in stages]
    statuses.insert(1, {"stage": "jobs", "title": "Training jobs", "status": "ok", "seconds": 9.0,
                        "report": ""})  # fmt: skip
    page = pages.write_index(tmp_path / "r", cfg, statuses, stages).read_text()
    for s in stages:
        assert f"href='{s.notebook.stem}.html'" in page, s.name
        assert f"href='{s.notebook.stem}.code.html'" in page, s.name
    assert page.count("<img src='data:image/jpeg;base64,") == len(names) > 10
    for name in names:
        assert f"alt='{name}'" in page
    assert page.index(">data<") < page.index(">jobs<") < page.index(">mining<")
    head = page[: page.index("<h2>")]
    assert "Profile <b>tiny</b>" in head and "seeds <b>0, 1, 2</b>" in head and "commit" in head
    assert "claims" not in page.lower().split("<h2>stages")[0]  # no claims file: no section


def test_index_leads_with_claims_and_table1_f1_with_precision_recall_a_click_away(tmp_path):
    stages = pipeline.stages()
    figures = tmp_path / "figures"
    figures.mkdir()
    for name in ("table1.csv", "table1.config.json"):
        shutil.copy(project_root() / "figures" / name, figures / name)
    with open(figures / "claims.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["study", "claim", "dataset", "gap", "ci_low", "ci_high", "verdict"])
        w.writeheader()
        w.writerow({"study": "table1", "claim": "multimodal beats text-only", "dataset": "mnre",
                    "gap": "25.18", "ci_low": "20.1", "ci_high": "30.2", "verdict": "holds"})  # fmt: skip
        w.writerow({"study": "table1", "claim": "multimodal beats text-only",
                    "dataset": "twitter2015", "gap": "", "ci_low": "", "ci_high": "",
                    "verdict": "not measured"})  # fmt: skip
    statuses = [_status(s) for s in stages if s.name == "table1"]
    page = pages.write_index(tmp_path / "r", _cfg(tmp_path), statuses, stages).read_text()
    claims, table, thumbs = (
        page.index(x) for x in ("claims on this run", "Table 1: test F1", "<h2>Stages")
    )
    assert claims < table < thumbs
    assert "holds" in page and "+25.18 [+20.10, +30.20]" in page and "not measured" in page
    rows = list(csv.DictReader(open(figures / "table1.csv")))
    f1 = f"{float(rows[0]['mnre F1']):.2f}"
    compact, details = page.split("<details>", 1)
    assert f1 in compact and "mnre P" not in compact  # F1 first ...
    assert "mnre P" in details and "mnre R" in details  # ... P and R a click away
    assert "href='04_table1.html'" in compact


def test_an_earlier_run_of_another_profile_is_not_shown(tmp_path):
    stages = pipeline.stages()
    reports = tmp_path / "r"
    (reports / "status").mkdir(parents=True)
    (data, mining) = stages[:2]
    (reports / "status" / "data.json").write_text(json.dumps(_status(data, profile="paper")))
    (reports / "status" / "mining.json").write_text(json.dumps(_status(mining)))
    rows = {n: s for n, _, s in pages.stage_rows(reports, _cfg(tmp_path), [], stages)}
    assert rows["data"] is None and rows["mining"]["earlier"] is True
    page = pages.write_index(reports, _cfg(tmp_path), [], stages).read_text()
    assert "ok (earlier run)" in page and "not run" in page


@pytest.fixture
def executed(tmp_path):
    """A small executed notebook: a title, a parameters cell, a cell with a wide table."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_markdown_cell("# 99 · A study\n\nWhat it shows."),
                nbformat.v4.new_code_cell("profile = 'tiny'"),
                nbformat.v4.new_code_cell(CODE_MARK)]  # fmt: skip
    wide = "<table><tr>" + "".join(f"<th>column {i}</th>" for i in range(40)) + "</tr></table>"
    nb.cells[2].outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="[promu] profile tiny\n"),
        nbformat.v4.new_output("display_data", data={"text/html": wide, "text/plain": "t"}),
    ]
    path = tmp_path / "99_study.ipynb"
    nbformat.write(nb, str(path))
    return path


def test_a_stage_report_shows_results_without_code_and_links_its_full_version(executed, tmp_path):
    results, full = pages.render_report(executed, tmp_path / "99_study.html", "A study")
    assert full.name == "99_study.code.html"
    page, code = results.read_text(), full.read_text()
    assert "column 39" in page and "What it shows." in page and "[promu] profile tiny" in page
    assert CODE_MARK.split(" =")[0] not in page and "In&nbsp;[" not in page
    assert CODE_MARK.split(" =")[0] in code and "column 39" in code
    assert "href='99_study.code.html'" in page and "href='99_study.html'" in code
    assert "href='index.html'" in page and "<title>A study</title>" in page
    assert "overflow-x: auto" in page  # wide tables scroll in their own box


def test_the_runner_renders_both_pages(executed, tmp_path):
    report = pipeline.render_html(executed, tmp_path / "99_study.html", "A study")
    assert report.is_file() and pages.code_page(report).is_file()
