"""The HTML pages of a run (``reports/``): each stage's report and the index.

- ``<notebook>.html``: the executed notebook as a reader wants it: its text, tables and figures,
  no code (nbconvert's ``exclude_input``), wide tables in a scroll box, and a bar linking to
  the index and to ``<notebook>.code.html``, the same notebook with its code;
- ``index.html``: the run (profile, seeds, commit, time), the claims' verdicts
  (``<figures>/claims.csv``, when the studies wrote claims), Table 1 compact (F1; precision and
  recall a click away), a thumbnail of every figure linking to its report, and every stage
  with its status and run time (this run's, or the last run's of the same profile).

No torch here: the runner (``promu_lib.pipeline``) writes these pages.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from promu_lib import paths
from promu_lib.config import Config
from promu_lib.io import atomic_write_text
from promu_lib.studies import Study

CODE_SUFFIX = ".code.html"  # the full version of a report, with its code
HEADLINE_TABLE = "table1"  # the table the index shows (F1 first, P/R a click away)
THUMB_WIDTH = 360  # pixels

# Added to every stage report: no sideways scrolling at 1280 px (wide tables and long lines
# scroll in their own box or wrap), images no wider than the page, the navigation bar.
REPORT_CSS = """
.jp-OutputArea-output table, .jp-RenderedHTMLCommon table {
  display: block; max-width: 100%; overflow-x: auto; }
.jp-OutputArea-output table caption { display: block; position: sticky; left: 0;
  max-width: calc(100vw - 8em); text-align: left; padding: .3em 0; }
.jp-OutputArea-output td { white-space: nowrap; }
.jp-OutputArea-output td:first-child, .jp-OutputArea-output th:first-child {
  min-width: 12em; white-space: normal; }
.jp-OutputArea-output pre { white-space: pre-wrap; overflow-wrap: anywhere; }
.jp-OutputArea-output img { max-width: 100%; height: auto; }
nav.promu { font: 14px sans-serif; padding: .6em 1em; margin: 0 0 1em; background: #f3f5f7;
  border-bottom: 1px solid #d0d7de; }
nav.promu a { margin-right: 1.2em; }
"""

INDEX_CSS = """
body { font-family: sans-serif; max-width: 76em; margin: 1.5em auto; padding: 0 1em;
  color: #1f2328; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
table { border-collapse: collapse; }
td, th { padding: .3em .7em; border-bottom: 1px solid #ddd; text-align: left;
  vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.paper { color: #666; }
.scroll { max-width: 100%; overflow-x: auto; }
.ok, .holds { color: #17702b; } .failed, .reversed { color: #b00020; }
.inconclusive, .not-measured { color: #8a6d00; }
.meta { background: #f3f5f7; padding: .6em 1em; border-radius: 4px; }
.thumbs { display: flex; flex-wrap: wrap; gap: 1em; }
.thumbs figure { margin: 0; width: 360px; }
.thumbs img { width: 100%; height: 240px; object-fit: contain; background: #fff;
  border: 1px solid #d0d7de; }
.thumbs figcaption { font-size: 13px; color: #444; }
small { color: #555; }
details { margin-top: .6em; }
"""


# ---------------------------------------------------------------------------------------------
# Stage reports
# ---------------------------------------------------------------------------------------------


def code_page(report: Path) -> Path:
    """``04_table1.code.html`` beside ``04_table1.html``."""
    return report.with_name(report.stem + CODE_SUFFIX)


def _export(nb: Any, title: str, with_code: bool) -> str:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        template_name="lab",
        exclude_input=not with_code,
        exclude_input_prompt=not with_code,
        exclude_output_prompt=not with_code,
    )
    exporter.embed_images = True
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    return body


def _decorate(body: str, nav: str) -> str:
    """``body`` with :data:`REPORT_CSS` in its head and ``nav`` at the top of its body."""
    body = body.replace("</head>", f"<style>{REPORT_CSS}</style>\n</head>", 1)
    start = body.find("<body")
    end = body.find(">", start) + 1
    return body[:end] + f"\n<nav class='promu'>{nav}</nav>" + body[end:]


def render_report(notebook: Path, target: Path, title: str) -> list[Path]:
    """Write ``target`` (results: text, tables, figures, no code) and its
    :func:`code_page` (the same notebook with its code) from an executed notebook."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    full = code_page(target)
    index = "<a href='index.html'>&larr; all reports</a>"
    name = html.escape(title)
    results = _decorate(
        _export(nb, title, with_code=False),
        f"{index}<b>{name}</b> <a href='{html.escape(full.name)}'>the same with its code</a>",
    )
    code = _decorate(
        _export(nb, title, with_code=True),
        f"{index}<b>{name}</b> (with code) <a href='{html.escape(target.name)}'>results only</a>",
    )
    return [atomic_write_text(target, results), atomic_write_text(full, code)]


# ---------------------------------------------------------------------------------------------
# The index
# ---------------------------------------------------------------------------------------------


def thumbnail(png: Path, width: int = THUMB_WIDTH) -> str:
    """A ``data:`` URL of ``png`` scaled to ``width`` pixels (JPEG on white)."""
    from PIL import Image

    with Image.open(png) as im:
        im = im.convert("RGBA")
        flat = Image.new("RGB", im.size, "white")
        flat.paste(im, mask=im.getchannel("A"))
    if flat.width > width:
        flat = flat.resize((width, round(flat.height * width / flat.width)), Image.LANCZOS)
    buf = io.BytesIO()
    flat.save(buf, "JPEG", quality=85, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _num(value: str | None, std: str | None = None, n: str | None = None) -> str:
    """``69.63``, or ``69.63 ± 0.50`` over several seeds; empty when there is no value."""
    if not value:
        return ""
    text = f"{float(value):.2f}"
    if std and (n is None or (n and float(n) > 1)):
        text += f" ± {float(std):.2f}"
    return text


def earlier_status(reports: Path, stage: str, profile: str) -> dict | None:
    """The status a stage's last run left in ``reports/status`` (None when that run was of
    another profile, or there is none)."""
    f = reports / "status" / f"{stage}.json"
    if not f.is_file():
        return None
    status = json.loads(f.read_text(encoding="utf-8"))
    return status if status.get("profile", profile) == profile else None


def stage_rows(reports: Path, cfg: Config, statuses: list[dict], stages: Sequence[Study]) -> list:
    """Every stage in stage order, each with this run's status, else its last run's (marked
    ``earlier``), else none; the training pass (``jobs``) just before the stage that followed
    it in this run."""
    now = {s["stage"]: s for s in statuses}
    after_jobs = None
    names = [s.get("stage") for s in statuses]
    if "jobs" in names and names.index("jobs") + 1 < len(names):
        after_jobs = names[names.index("jobs") + 1]
    rows: list[tuple[str, str, dict | None]] = []
    for study in stages:
        if study.name == after_jobs:
            rows.append(("jobs", now["jobs"]["title"], now["jobs"]))
        status = now.get(study.name)
        if status is None and (status := earlier_status(reports, study.name, cfg.profile)):
            status = {**status, "earlier": True}
        rows.append((study.name, study.title, status))
    if "jobs" in now and after_jobs is None:
        rows.append(("jobs", now["jobs"]["title"], now["jobs"]))
    return rows


def _short(commit: str | None) -> str:
    """``baa298a70c3d+dirty`` from a full commit hash (``+dirty``: uncommitted changes)."""
    if not commit:
        return "unknown (not a git checkout)"
    head, _, dirty = commit.partition("+")
    return head[:12] + (f"+{dirty}" if dirty else "")


def _run_section(cfg: Config, statuses: list[dict]) -> str:
    from promu_lib.report import git_commit

    total = sum(0.0 if s.get("skipped") else s.get("seconds", 0.0) for s in statuses)
    ran = sum(not s.get("skipped") for s in statuses)
    toy = (
        " Numbers come from the embedded toy world, not from the papers' datasets."
        if cfg.data.toy is not None
        else ""
    )
    return (
        f"<p class='meta'>Profile <b>{html.escape(cfg.profile)}</b> · seeds "
        f"<b>{', '.join(map(str, cfg.run.seeds))}</b> · commit "
        f"<code>{html.escape(_short(git_commit()))}</code> · "
        f"generated {time.strftime('%Y-%m-%d %H:%M:%S')} · this run: {ran} of "
        f"{len(statuses)} step(s) executed in {total:.1f} s.{toy}</p>"
    )


def _verdict(row: dict[str, str]) -> str:
    verdict = row.get("verdict") or "not measured"
    css = verdict.replace(" ", "-")
    if not row.get("gap"):
        return f"<span class='{css}'>{html.escape(verdict)}</span>"
    interval = ""
    if row.get("ci_low") and row.get("ci_high"):
        interval = f" [{float(row['ci_low']):+.2f}, {float(row['ci_high']):+.2f}]"
    reach = ""
    if row.get("half_width"):
        reach = f"<br><small>detects ±{float(row['half_width']):.2f}"
        if row.get("seeds_needed"):
            reach += f"; seeds to decide: {html.escape(row['seeds_needed'])}"
        reach += "</small>"
    return (
        f"<span class='{css}'>{html.escape(verdict)}</span><br>"
        f"<small>{float(row['gap']):+.2f}{interval}</small>{reach}"
    )


def claims_section(figures: Path) -> str:
    """The claims' verdicts (``claims.csv``): one row per claim, one column per dataset;
    empty when the file does not exist."""
    path = figures / "claims.csv"
    if not path.is_file():
        return ""
    rows = _read_csv(path)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    claims: dict[tuple[str, str], dict[str, dict[str, str]]] = {}
    for r in rows:
        claims.setdefault((r.get("study", ""), r["claim"]), {})[r["dataset"]] = r
    head = "".join(f"<th>{html.escape(d)}</th>" for d in datasets)
    body = []
    for (study, claim), per in claims.items():
        cells = "".join(f"<td>{_verdict(per[d]) if d in per else ''}</td>" for d in datasets)
        body.append(
            f"<tr><td>{html.escape(claim)}<br><small>{html.escape(study)}</small></td>{cells}</tr>"
        )
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.get("verdict") or "not measured"] = (
            counts.get(r.get("verdict") or "not measured", 0) + 1
        )
    summary = ", ".join(f"{n} {html.escape(v)}" for v, n in counts.items())
    return (
        "<h2>The papers' claims on this run</h2>"
        f"<p>{len(rows)} checks: {summary}. Each cell: the verdict, then the measured gap and "
        "its 95% interval, then the smallest gap the run could detect (the interval's "
        "half-width: an inconclusive claim means no gap beyond it) and, when inconclusive, "
        "how many seeds would decide the observed gap (<code>claims.md</code> in the figures directory names each "
        "statistic and how its interval is computed).</p>"
        f"<div class='scroll'><table><tr><th>claim</th>{head}</tr>{''.join(body)}</table></div>"
    )


def _headline_datasets(header: Sequence[str], metric: str) -> list[str]:
    return [h[: -len(f" {metric}")] for h in header if h.endswith(f" {metric}")]


def table_section(figures: Path, report: str | None) -> str:
    """Table 1 compact: test F1 per row and dataset beside the paper's, then (a click away)
    precision and recall; empty without ``<figures>/table1.csv``."""
    path = figures / f"{HEADLINE_TABLE}.csv"
    if not path.is_file():
        return ""
    rows = _read_csv(path)
    if not rows:
        return ""
    datasets = _headline_datasets(list(rows[0]), "F1")
    head = "".join(
        f"<th class='num'>{html.escape(d)}</th><th class='num paper'>paper</th>" for d in datasets
    )
    body = []
    for r in rows:
        cells = "".join(
            f"<td class='num'>{_num(r[f'{d} F1'], r.get(f'{d} F1_std'), r.get(f'{d} F1_n'))}</td>"
            f"<td class='num paper'>{_num(r.get(f'{d} F1_paper'), r.get(f'{d} F1_paper_std'))}</td>"
            for d in datasets
        )
        body.append(f"<tr><td>{html.escape(r['row'])}</td>{cells}</tr>")
    detail_head = "".join(
        f"<th class='num'>{html.escape(d)} {m}</th>" for d in datasets for m in ("P", "R", "F1")
    )
    detail = []
    for r in rows:
        cells = "".join(
            f"<td class='num'>{_num(r.get(f'{d} {m}'), r.get(f'{d} {m}_std'), r.get(f'{d} {m}_n'))}</td>"
            for d in datasets
            for m in ("P", "R", "F1")
        )
        detail.append(f"<tr><td>{html.escape(r['row'])}</td>{cells}</tr>")
    caption = ""
    config = figures / f"{HEADLINE_TABLE}.config.json"
    if config.is_file():
        caption = json.loads(config.read_text(encoding="utf-8")).get("caption", "")
    link = (
        f" <a href='{html.escape(report)}'>The full table, its claims and figure.</a>"
        if report
        else ""
    )
    return (
        "<h2>Table 1: test F1</h2>"
        f"<div class='scroll'><table><tr><th>row</th>{head}</tr>{''.join(body)}</table></div>"
        f"<p><small>{html.escape(caption)}</small>{link}</p>"
        "<details><summary>Precision and recall</summary><div class='scroll'><table>"
        f"<tr><th>row</th>{detail_head}</tr>{''.join(detail)}</table></div></details>"
    )


def figures_section(figures: Path, stages: Sequence[Study], statuses: dict[str, Any]) -> str:
    """A thumbnail of every figure of the stages that have a status (``statuses``: stage name
    -> status), each linking to the stage's report."""
    cards = []
    for study in stages:
        status = statuses.get(study.name)
        if status is None:
            continue
        report = status.get("report") or ""
        for name in getattr(study.module, "FIGURES", ()):
            png = figures / f"{name}.png"
            if not png.is_file():
                continue
            img = f"<img src='{thumbnail(png)}' alt='{html.escape(name)}'>"
            if report:
                img = f"<a href='{html.escape(report)}'>{img}</a>"
            cards.append(
                f"<figure>{img}<figcaption>{html.escape(name)} · "
                f"{html.escape(study.title)}</figcaption></figure>"
            )
    if not cards:
        return ""
    return f"<h2>Figures</h2><div class='thumbs'>{''.join(cards)}</div>"


def _stage_row(name: str, title: str, status: dict | None) -> str:
    if status is None:
        return f"<tr><td>{html.escape(name)}</td><td>{html.escape(title)}</td><td>not run</td><td></td></tr>"
    link = html.escape(status.get("title") or title)
    if status.get("report"):
        report = html.escape(status["report"])
        code = html.escape(Path(status["report"]).stem + CODE_SUFFIX)
        link = f"<a href='{report}'>{link}</a> <small>(<a href='{code}'>with code</a>)</small>"
    err = f"<br><small>{html.escape(status['error'])}</small>" if status.get("error") else ""
    state = status["status"]
    if status.get("skipped"):
        state = "skipped (cached)"
    elif status.get("earlier"):
        state = f"{state} (earlier run)"
    return (
        f"<tr><td>{html.escape(name)}</td><td>{link}{err}</td>"
        f"<td class='{status['status']}'>{state}</td>"
        f"<td class='num'>{status.get('seconds', 0.0):.1f}</td></tr>"
    )


def write_index(reports: Path, cfg: Config, statuses: list[dict], stages: Sequence[Study]) -> Path:
    """``reports/index.html`` (the module docstring lists what it shows)."""
    figures = paths.resolve(cfg.run.figures_dir)
    rows = stage_rows(reports, cfg, statuses, stages)
    by_name = {name: status for name, _, status in rows}
    table_report = (by_name.get(HEADLINE_TABLE) or {}).get("report")
    thumbs = figures_section(figures, stages, by_name)
    stage_table = "".join(_stage_row(n, t, s) for n, t, s in rows)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>promu reports</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{INDEX_CSS}</style>
</head><body><h1>promu — reports</h1>
{_run_section(cfg, statuses)}
{claims_section(figures)}
{table_section(figures, table_report) if by_name.get(HEADLINE_TABLE) else ""}
{thumbs}
<h2>Stages</h2>
<p>Each report shows the stage's tables and figures; "with code" is the same notebook with its
code. Seconds: the stage's last execution.</p>
<div class='scroll'><table><tr><th>stage</th><th>report</th><th>status</th>
<th class='num'>seconds</th></tr>
{stage_table}</table></div></body></html>
"""
    return atomic_write_text(reports / "index.html", page)
