"""Pre-training: the fusion encoder with ITM, CIT, COE and CIR (PROMU Eq. 11), per variant.

Each variant of ``promu_lib.jobs.PRETRAIN_VARIANTS`` switches losses off or hardens the
labels; the fine-tuning studies start from these checkpoints (Table 1's ablations, Table 2),
fine-tuning seed s from the pre-training of seed s. This stage shows seed 0's runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from promu_lib.config import Config
from promu_lib.jobs import PRETRAIN_VARIANTS, Pretrain
from promu_lib.report import Table
from promu_lib.studies.common import Outputs, Results

NOTEBOOK = "02_pretrain.ipynb"
TITLE = "Pre-training: ITM, CIT, COE, CIR per variant"
READER = False
TABLES = ("pretrain_summary",)
FIGURES = ("pretrain_losses",)
VARIANTS: tuple[str, ...] = ("promu", "no-coe", "no-cir", "hard", "align-only")  # Table 1's


def jobs(cfg: Config, variants: Sequence[str] | None = None) -> list[Pretrain]:
    """One pre-training per variant (default: those of Table 1's rows), seed 0; the other
    seeds' pre-trainings are the fine-tuning stages' dependencies."""
    return [Pretrain(v) for v in (VARIANTS if variants is None else variants)]


def pretrain_history(encoder_file: str | Path) -> list[dict[str, float]]:
    """The logged steps (``metrics.jsonl``) of the pre-training run that wrote ``encoder_file``."""
    import json

    path = Path(encoder_file).parent / "metrics.jsonl"
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def pretrain_summary(cfg: Config, histories: Mapping[str, Sequence[Mapping[str, float]]]) -> Table:
    """The last logged value of each loss per pre-training variant (a switched-off loss is
    not computed: empty)."""
    from promu_lib.models.pretraining import LOSS_NAMES

    cols = [*LOSS_NAMES, "total"]
    table = Table.for_config(
        cfg, "pretrain_summary", cols, with_paper=False, digits=3, show_n=False,
        title="Pre-training (Eq. 11): each loss at the last logged step, per variant",
    )  # fmt: skip
    for variant, hist in histories.items():
        last = hist[-1] if hist else {}
        measured = {c: last[c] for c in cols if c in last}
        reasons = {c: "switched off" if hist else "no logged step" for c in cols if c not in last}
        table.add_row(variant, measured, reasons=reasons, config=PRETRAIN_VARIANTS.get(variant))
    return table


def histories(results: Results, variants: Sequence[str]) -> dict[str, list[dict[str, float]]]:
    return {v: pretrain_history(results[Pretrain(v)]) for v in variants}


def run(
    cfg: Config, results: Results, out_dir: str | Path, variants: Sequence[str] | None = None
) -> Outputs:
    """The last value of each loss per variant, and the loss curves."""
    from promu_lib import plots

    variants = list(VARIANTS if variants is None else variants)
    out = Outputs.start(cfg, out_dir)
    out.lines = [
        f"`{v}`: {PRETRAIN_VARIANTS[v] or 'all four losses, soft labels'}" for v in variants
    ]
    hist = histories(results, variants)
    out.table(pretrain_summary(cfg, hist))
    main = "promu" if "promu" in variants else variants[0]
    out.figure(plots.pretrain_losses_figure(hist, main=main), "pretrain_losses")
    return out
