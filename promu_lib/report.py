"""Tables beside the papers' numbers, figure saving and provenance records.

Every table the project publishes is a :class:`Table`: measured rows (one value per seed,
shown as mean ± std with the number of seeds) next to the published number of the same row and
column (``paper_numbers.json``, shipped with the package). Its caption always names the
profile, the seeds and the data version, and says so when the numbers come from the toy world.
A missing measurement is an empty cell with its reason, never a made-up number. Each table is
written as ``<name>.csv`` (raw numbers), ``<name>.md`` (formatted) and ``<name>.config.json``
(the exact configuration of every row, so a baseline can be rerun as it was run here).
"""

from __future__ import annotations

import functools
import hashlib
import html
import importlib.metadata
import io
import json
import math
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promu_lib import paths
from promu_lib.config import Config, config_hash
from promu_lib.io import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file

TOY_NOTE = "toy-world numbers — not comparable to the paper's"
NOT_MEASURED = "not measured"
# Packages whose versions change results; recorded in every provenance block.
PROVENANCE_PACKAGES: tuple[str, ...] = (
    "promu", "torch", "torchvision", "transformers", "timm", "numpy", "scikit-learn",
    "pytorch-crf", "seqeval", "spacy", "ultralytics", "safetensors", "matplotlib", "papermill",
)  # fmt: skip
# Text files of a data directory that define its version (images are not hashed: too many).
DATA_SUFFIXES: tuple[str, ...] = (".txt", ".json", ".jsonl")


# ---------------------------------------------------------------------------------------------
# The papers' numbers
# ---------------------------------------------------------------------------------------------


@functools.cache
def _paper_numbers_text() -> str:
    from importlib.resources import files

    return (files("promu_lib") / "resources" / "paper_numbers.json").read_text(encoding="utf-8")


def paper_numbers() -> dict[str, Any]:
    """Every published number of both papers (a fresh copy: callers may modify it)."""
    return json.loads(_paper_numbers_text())


def paper_value(*keys: str) -> Any:
    """The published entry at ``keys`` (e.g. ``"promu", "table2_f1", "MMIB", "mnre"``), or
    ``None`` when the paper does not report it."""
    node: Any = paper_numbers()
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node


def paper_f1(*keys: str) -> float | None:
    """:func:`paper_value`, taking F1 out of a ``[P, R, F1]`` triple."""
    value = paper_value(*keys)
    if isinstance(value, list) and len(value) == 3:
        return float(value[2])
    return None if value is None else float(value)


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

Number = float | int


@dataclass
class Cell:
    """One measured column of one row: a value per seed, the paper's value, and why it is
    empty when it is."""

    values: tuple[float, ...] = ()
    paper: float | None = None
    paper_std: float | None = None
    reason: str | None = None  # set exactly when ``values`` is empty

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return sum(self.values) / self.n if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (``None`` for fewer than two seeds)."""
        if self.n < 2:
            return None
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))

    def as_dict(self) -> dict[str, Any]:
        return {
            "values": list(self.values), "mean": self.mean, "std": self.std, "n": self.n,
            "paper": self.paper, "paper_std": self.paper_std, "reason": self.reason,
        }  # fmt: skip


@dataclass
class Row:
    name: str
    cells: dict[str, Cell]
    rerun: str | None = None  # a short command that reruns this row
    config: dict[str, Any] | None = None  # the exact settings of this row


def _fmt(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return ""
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _measured_text(cell: Cell, digits: int, show_n: bool = True) -> str:
    if not cell.values:
        return ""
    text = _fmt(cell.mean, cell.std, digits)
    return f"{text} (n={cell.n})" if show_n else text


def _values(value: Number | Sequence[Number] | None) -> tuple[float, ...]:
    if value is None:
        return ()
    try:
        iter(value)  # a list/array of per-seed values, or one number (numpy/torch scalars too)
    except TypeError:
        value = (value,)
    out = tuple(float(v) for v in value)
    bad = [v for v in out if not math.isfinite(v)]
    if bad:
        raise ValueError(f"measured values must be finite numbers, got {bad}")
    return out


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


@dataclass
class Table:
    """Measured rows beside the paper's numbers, with a caption that says what they are.

    ``columns`` are the measured quantities (e.g. ``"twitter2015"``, or ``"mnre F1"``).
    ``data_version`` names the data: the toy world and its seed, or the real files' checksums
    (see :func:`data_version`). ``toy=True`` adds the toy-world warning to the caption.
    """

    name: str
    columns: Sequence[str]
    profile: str
    seeds: Sequence[int]
    data_version: str
    title: str = ""
    toy: bool = False
    paper_source: str = ""  # e.g. "PROMU Table 1"
    digits: int = 2
    with_paper: bool = True  # False: no paper columns (e.g. label counts the papers never give)
    show_n: bool = True  # False: no "(n=...)" suffix (e.g. counts, not per-seed results)
    rows: list[Row] = field(default_factory=list)

    @classmethod
    def for_config(
        cls, cfg: Config, name: str, columns: Sequence[str], title: str = "", **kwargs: Any
    ) -> Table:
        """A table for ``cfg``'s profile, seeds and data (toy warning when the data is toy)."""
        kwargs.setdefault("data_version", data_version(cfg))
        return cls(
            name=name, columns=list(columns), profile=cfg.profile, seeds=list(cfg.run.seeds),
            title=title, toy=cfg.data.toy is not None, **kwargs,
        )  # fmt: skip

    def add_row(
        self,
        name: str,
        measured: Mapping[str, Number | Sequence[Number] | None],
        paper: Mapping[str, Number | tuple[Number, Number] | None] | None = None,
        *,
        reasons: Mapping[str, str] | None = None,
        rerun: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> Row:
        """Add a row. ``measured[col]`` is one value or one per seed (``None``/absent: not
        measured, and ``reasons[col]`` says why); ``paper[col]`` is the published value or a
        ``(mean, std)`` pair."""
        unknown = sorted(set(measured) | set(paper or {}) | set(reasons or {}))
        unknown = [c for c in unknown if c not in self.columns]
        if unknown:
            raise KeyError(
                f"row {name!r}: unknown column(s) {unknown}; columns: {list(self.columns)}"
            )
        cells = {}
        for col in self.columns:
            values = _values(measured.get(col))
            p = (paper or {}).get(col)
            p_mean, p_std = p if isinstance(p, tuple) else (p, None)
            reason = None if values else (reasons or {}).get(col, NOT_MEASURED)
            cells[col] = Cell(
                values=values,
                paper=None if p_mean is None else float(p_mean),
                paper_std=None if p_std is None else float(p_std),
                reason=reason,
            )
        row = Row(
            name=name, cells=cells, rerun=rerun, config=None if config is None else dict(config)
        )
        self.rows.append(row)
        return row

    # -- text ---------------------------------------------------------------------------------
    @property
    def caption(self) -> str:
        seeds = ", ".join(str(s) for s in self.seeds)
        parts = [self.title.rstrip(".") + "." if self.title else ""]
        parts.append(f"Profile '{self.profile}', seeds [{seeds}], data: {self.data_version}.")
        if self.show_n:
            parts.append("Measured: mean ± sample std over n seeds.")
        if self.paper_source:
            parts.append(f"Paper: {self.paper_source}.")
        if self.toy:
            parts.append(f"Measured columns are {TOY_NOTE}.")
        return " ".join(p for p in parts if p)

    def _note(self, row: Row) -> str:
        return "; ".join(f"{c}: {cell.reason}" for c, cell in row.cells.items() if cell.reason)

    def _has_rerun(self) -> bool:
        return any(r.rerun for r in self.rows)

    def _has_note(self) -> bool:
        return any(self._note(r) for r in self.rows)

    def _n_numeric(self) -> int:
        return len(self.columns) * (2 if self.with_paper else 1)

    def header(self) -> list[str]:
        """Column names: row, then each measured column (and its paper column), note, rerun."""
        cols = [h for c in self.columns for h in ((c, f"{c} (paper)") if self.with_paper else (c,))]
        return (
            ["row", *cols]
            + (["note"] if self._has_note() else [])
            + (["how to rerun"] if self._has_rerun() else [])
        )

    def display_rows(self) -> list[list[str]]:
        """The formatted table body (what the markdown and HTML views show)."""
        out = []
        for row in self.rows:
            line = [row.name]
            for c in self.columns:
                cell = row.cells[c]
                line.append(_measured_text(cell, self.digits, self.show_n))
                if self.with_paper:
                    line.append(_fmt(cell.paper, cell.paper_std, self.digits))
            if self._has_note():
                line.append(self._note(row))
            if self._has_rerun():
                line.append(row.rerun or "")
            out.append(line)
        return out

    def to_markdown(self) -> str:
        head = self.header()
        numeric = self._n_numeric()  # measured and paper columns are right-aligned
        align = ["---"] + ["---:"] * numeric + ["---"] * (len(head) - 1 - numeric)
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
        for line in self.display_rows():
            lines.append("| " + " | ".join(_md_escape(x) for x in line) + " |")
        return "\n".join(lines) + f"\n\n{self.caption}\n"

    def to_csv(self) -> str:
        """Raw numbers: per column mean, std, n, each seed's values and the paper's value."""
        import csv

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        head = ["row"]
        for c in self.columns:
            head += [c, f"{c}_std", f"{c}_n", f"{c}_values", f"{c}_paper", f"{c}_paper_std"]
        w.writerow([*head, "note", "rerun"])
        for row in self.rows:
            line: list[Any] = [row.name]
            for c in self.columns:
                cell = row.cells[c]
                line += [
                    _num(cell.mean), _num(cell.std), cell.n,
                    " ".join(repr(v) for v in cell.values), _num(cell.paper), _num(cell.paper_std),
                ]  # fmt: skip
            w.writerow([*line, self._note(row), row.rerun or ""])
        return buf.getvalue()

    def to_records(self) -> list[dict[str, Any]]:
        """Plain dicts, one per row (for tests, JSON or a DataFrame)."""
        return [
            {"row": r.name, **{c: cell.as_dict() for c, cell in r.cells.items()}, "rerun": r.rerun}
            for r in self.rows
        ]

    # -- notebook display ---------------------------------------------------------------------
    def _repr_html_(self) -> str:
        header = self.header()
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        paper = [h.endswith(" (paper)") for h in header]  # greyed: facts, not results
        body = []
        for line in self.display_rows():
            cells = []
            for x, grey in zip(line, paper):
                style = ' style="color:#666"' if grey else ""
                cells.append(f"<td{style}>{html.escape(x)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        return (
            f"<table><caption style='caption-side:bottom;text-align:left'>{html.escape(self.caption)}"
            f"</caption><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        )

    def __str__(self) -> str:
        return self.to_markdown()

    # -- files --------------------------------------------------------------------------------
    def save(
        self, figures_dir: str | Path, provenance: Mapping[str, Any] | None = None
    ) -> list[Path]:
        """Write ``<name>.csv``, ``<name>.md`` and ``<name>.config.json`` atomically."""
        d = Path(figures_dir)
        configs = {
            "table": self.name,
            "caption": self.caption,
            "rows": {r.name: {"rerun": r.rerun, "config": r.config} for r in self.rows},
            "provenance": dict(provenance) if provenance is not None else None,
        }
        return [
            atomic_write_text(d / f"{self.name}.csv", self.to_csv()),
            atomic_write_text(d / f"{self.name}.md", self.to_markdown()),
            atomic_write_json(d / f"{self.name}.config.json", configs),
        ]


def _num(x: float | None) -> str:
    return "" if x is None else repr(round(float(x), 6))


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def save_figure(fig: Any, name: str, figures_dir: str | Path, dpi: int = 150) -> list[Path]:
    """Write ``<name>.png`` (``dpi``) and ``<name>.pdf`` atomically; returns both paths.

    The layout is tightened so labels are not cut off; the PDF carries no creation date, so
    the same figure gives the same bytes.
    """
    d = Path(figures_dir)
    out = []
    for fmt, meta in (
        ("png", {"Software": None}),
        ("pdf", {"CreationDate": None, "Producer": None}),
    ):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight", metadata=meta)
        out.append(atomic_write_bytes(d / f"{name}.{fmt}", buf.getvalue()))
    return out


# ---------------------------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------------------------


def package_versions(names: Sequence[str] = PROVENANCE_PACKAGES) -> dict[str, str | None]:
    """Installed versions (``None`` for a package that is not installed)."""
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = None
    return out


def git_commit(root: str | Path | None = None) -> str | None:
    """``HEAD`` of the checkout (``+dirty`` when the tree has changes), or ``None`` outside git."""
    root = Path(root) if root is not None else paths.project_root()
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def data_checksums(data_dir: str | Path) -> dict[str, str]:
    """sha256 of every text file (``.txt``, ``.json``, ``.jsonl``) under ``data_dir``, keyed by
    its path relative to ``data_dir`` (empty when the directory does not exist)."""
    root = Path(data_dir)
    if not root.is_dir():
        return {}
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files}


def data_version(cfg: Config, checksums: Mapping[str, str] | None = None) -> str:
    """A one-line name of the data: the toy world and its seed, or the real files' checksums."""
    if cfg.data.toy is not None:
        from promu_lib.data.toyworld import world_hash

        return f"toy world seed {cfg.data.toy.seed} (world {world_hash(cfg)})"
    if checksums is None:
        checksums = data_checksums(paths.resolve(cfg.data_root()))
    if not checksums:
        return f"real data at {cfg.data_root()} (no text files found)"
    combined = hashlib.sha256(json.dumps(dict(sorted(checksums.items()))).encode()).hexdigest()
    return f"real data at {cfg.data_root()}: {len(checksums)} text files, sha256 {combined[:12]}"


def provenance(cfg: Config, data_dir: str | Path | None = None) -> dict[str, Any]:
    """What produced an output: config (and its hash), package versions, git commit, data
    checksums, python and platform. ``data_dir`` defaults to ``cfg``'s data root."""
    data_dir = paths.resolve(cfg.data_root()) if data_dir is None else Path(data_dir)
    checksums = data_checksums(data_dir)
    return {
        "profile": cfg.profile,
        "seeds": list(cfg.run.seeds),
        "config_hash": config_hash(cfg),
        "config": cfg.to_dict(),
        "data_version": data_version(cfg, checksums),
        "data_dir": str(data_dir),
        "data_checksums": checksums,
        "packages": package_versions(),
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------------------------------------
# Data overview tables (stage 00)
# ---------------------------------------------------------------------------------------------
