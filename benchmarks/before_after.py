"""The default run's verdicts and spreads, before and after a change of the training recipe.

    .venv/bin/python benchmarks/before_after.py [--before 6a4d18a]

Reads the committed figures of ``--before`` (``git show REV:figures/...``) and the figures of
this working tree, both written by ``./run_all.sh``, and sets them side by side:

- every claim of ``figures/claims.csv``: gap, interval and verdict before and after, with the
  detectable gap (the interval's half-width) and the seeds that would decide an inconclusive
  claim (after only: ``before`` may predate those columns);
- every row of Tables 1 and 2: mean and sample std of test F1 over the seeds, per dataset.

Nothing is trained: it only reads two runs' outputs. Toy-world numbers.
Results: ``benchmarks/results/before_after.{json,md}``.
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess

from common import ROOT, markdown_table, write_results

DATASETS = ("twitter2015", "twitter2017", "mnre")


def read_csv(name: str, rev: str | None) -> list[dict[str, str]]:
    """``figures/<name>`` at git revision ``rev``, or in the working tree when ``rev`` is None."""
    if rev is None:
        text = (ROOT / "figures" / name).read_text(encoding="utf-8")
    else:
        text = subprocess.run(
            ["git", "show", f"{rev}:figures/{name}"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    return list(csv.DictReader(io.StringIO(text)))


def _num(v: str) -> float | None:
    return float(v) if v not in ("", None) else None


def claims(before: str) -> list[dict]:
    old = {(r["study"], r["claim"], r["dataset"]): r for r in read_csv("claims.csv", before)}
    out = []
    for r in read_csv("claims.csv", None):
        key = (r["study"], r["claim"], r["dataset"])
        o = old.get(key, {})
        out.append({
            "study": r["study"], "claim": r["claim"], "dataset": r["dataset"],
            "gap_before": _num(o.get("gap", "")), "verdict_before": o.get("verdict", ""),
            "ci_before": [_num(o.get("ci_low", "")), _num(o.get("ci_high", ""))],
            "gap_after": _num(r["gap"]), "verdict_after": r["verdict"],
            "ci_after": [_num(r["ci_low"]), _num(r["ci_high"])],
            "half_width_after": _num(r.get("half_width", "")),
            "seeds_needed_after": r.get("seeds_needed", ""),
        })  # fmt: skip
    return out


def spreads(table: str, before: str) -> list[dict]:
    old = {r["row"]: r for r in read_csv(table, before)}
    out = []
    for r in read_csv(table, None):
        o = old.get(r["row"], {})
        for d in DATASETS:
            if f"{d} F1" not in r or r[f"{d} F1"] == "":
                continue
            out.append({
                "table": table.removesuffix(".csv"), "row": r["row"], "dataset": d,
                "mean_before": _num(o.get(f"{d} F1", "")), "std_before": _num(o.get(f"{d} F1_std", "")),
                "mean_after": _num(r[f"{d} F1"]), "std_after": _num(r.get(f"{d} F1_std", "")),
            })  # fmt: skip
    return out


def _f(v: float | None, sign: bool = False) -> str:
    return "–" if v is None else (f"{v:+.2f}" if sign else f"{v:.2f}")


def _ci(ci: list) -> str:
    return "–" if None in ci else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


CLAIM_HEADER = (
    "study", "claim", "dataset", "gap before", "interval before", "verdict before", "gap after",
    "interval after", "verdict after", "detectable gap", "seeds to decide",
)  # fmt: skip
SPREAD_HEADER = ("table", "row", "dataset", "before", "after", "change of mean", "spread ratio")


def claim_row(c: dict) -> list[str]:
    before = [_f(c["gap_before"], True), _ci(c["ci_before"]), c["verdict_before"] or "–"]
    after = [_f(c["gap_after"], True), _ci(c["ci_after"]), c["verdict_after"]]
    seen = ["±" + _f(c["half_width_after"]), c["seeds_needed_after"] or "–"]
    return [c["study"], c["claim"], c["dataset"], *before, *after, *seen]


def spread_row(s: dict) -> list[str]:
    moved = None if s["mean_before"] is None else s["mean_after"] - s["mean_before"]
    ratio = (
        f"{s['std_after'] / s['std_before']:.2f}"
        if s["std_before"] and s["std_after"] is not None
        else "–"
    )
    return [
        s["table"], s["row"], s["dataset"], f"{_f(s['mean_before'])} ± {_f(s['std_before'])}",
        f"{_f(s['mean_after'])} ± {_f(s['std_after'])}", _f(moved, True), ratio,
    ]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", default="6a4d18a", help="git revision of the earlier run's figures")
    a = p.parse_args()
    cl = claims(a.before)
    sp = spreads("table1.csv", a.before) + spreads("table2.csv", a.before)
    moved = [c for c in cl if c["verdict_before"] != c["verdict_after"]]
    count = {
        when: {v: sum(c[f"verdict_{when}"] == v for c in cl) for v in ("holds", "reversed", "inconclusive")}
        for when in ("before", "after")
    }  # fmt: skip
    md = [
        f"# The default run before ({a.before}) and after (this tree)",
        "",
        "Toy world, tiny profile, three seeds. Read from the two runs' `figures/`; nothing is "
        "trained here. A gap whose interval contains 0 is inconclusive.",
        "",
        "Verdicts: "
        + "; ".join(
            f"{when}: " + ", ".join(f"{n} {v}" for v, n in count[when].items())
            for when in ("before", "after")
        )
        + f". {len(moved)} of {len(cl)} claims changed verdict.",
        "",
        "## Claims",
        "",
        markdown_table(CLAIM_HEADER, [claim_row(c) for c in cl]),
        "",
        "## Test F1 per row: mean ± sample std over the seeds",
        "",
        markdown_table(SPREAD_HEADER, [spread_row(s) for s in sp]),
    ]
    print(
        write_results(
            "before_after", {"before": a.before, "claims": cl, "spreads": sp}, "\n".join(md)
        )
    )


if __name__ == "__main__":
    main()
