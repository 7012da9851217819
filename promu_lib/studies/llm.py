"""PROMU Fig 6: a chat model with vision, prompted with two worked cases.

The paper prompts Visual ChatGPT and reports test F1 of 41.45 (Twitter-2015), 47.24
(Twitter-2017) and 36.82 (MNRE). This study runs the same protocol against any
OpenAI-compatible endpoint given in the config (``llm.url``, ``llm.model``, the API key from the
environment variable named by ``llm.api_key_env``), with the prompts, client and answer parsers
of ``promu_lib.chat``, and scores the answers with the metrics of every other table. By default
no endpoint is configured: no request is made and the measured column stays empty, with the
reason.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from promu_lib.chat import (
    N_DEMONSTRATIONS,
    OUTCOMES,
    ChatClient,
    build_messages,
    parse_ner,
    parse_re,
    pick_demonstrations,
    skip_reason,
)
from promu_lib.config import Config
from promu_lib.data.layout import DataLayout
from promu_lib.data.records import NerPost, RePost
from promu_lib.studies.common import Outputs

NOTEBOOK = "12_llm.ipynb"
TITLE = "LLM comparison (Fig 6): a chat model with vision"
READER = True
TABLES = ("llm",)
FIGURES = ("llm",)
DATASETS: tuple[str, ...] = ("twitter2015", "twitter2017", "mnre")


def _posts(cfg: Config, dataset: str, split: str) -> list[NerPost | RePost]:
    from promu_lib.data.formats import read_mnre, read_twitter

    path = DataLayout.of(cfg).split_file(dataset, split)
    read = read_mnre if dataset == "mnre" else read_twitter
    return list(read(path, on_bad=cfg.data.on_bad_record))


def _image(cfg: Config, dataset: str, split: str, post: NerPost | RePost) -> Path:
    layout = DataLayout.of(cfg)
    return layout.image_dir(dataset, split) / layout.image_name(dataset, post.img_id)


def evaluate_dataset(
    cfg: Config, dataset: str, client: ChatClient, max_posts: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Prompt ``client`` for each test post of ``dataset`` and score the parsed answers.

    Returns ``{"dataset", "n_posts", "metrics", "outcomes": {parsed, partial, unparseable},
    "requests", "cache_hits", "demonstrations", "predictions"}``.
    """
    from promu_lib.metrics import ner_scores, re_scores
    from promu_lib.progress import iterate

    train, test = _posts(cfg, dataset, "train"), _posts(cfg, dataset, "test")
    limit = max_posts if max_posts is not None else cfg.llm.max_posts
    test = test[:limit] if limit else test
    demos = [
        (train[i], _image(cfg, dataset, "train", train[i])) for i in pick_demonstrations(train)
    ]
    outcomes: Counter[str] = Counter({o: 0 for o in OUTCOMES})
    golds, preds, rows = [], [], []
    requests, hits = client.requests, client.cache_hits
    posts = iterate(test, len(test), f"llm {dataset}") if progress else test
    for post in posts:
        answer = client.complete(build_messages(post, _image(cfg, dataset, "test", post), demos))
        if isinstance(post, NerPost):
            parsed = parse_ner(answer, post.tokens)
            golds.append(list(post.labels))
        else:
            parsed = parse_re(answer)
            golds.append(post.relation)
        preds.append(parsed.value)
        outcomes[parsed.outcome] += 1
        rows.append({"img_id": post.img_id, "answer": answer[:2000], "pred": parsed.value,
                     "outcome": parsed.outcome, "problems": parsed.problems})  # fmt: skip
    metrics = ner_scores(golds, preds) if dataset != "mnre" else re_scores(golds, preds, "None")
    return {
        "dataset": dataset,
        "n_posts": len(test),
        "metrics": metrics,
        "outcomes": dict(outcomes),
        "requests": client.requests - requests,
        "cache_hits": client.cache_hits - hits,
        "demonstrations": [d.img_id for d, _ in demos],
        "predictions": rows,
    }


def llm_table(
    cfg: Config, results: dict[str, dict[str, Any] | None], datasets: Sequence[str],
    reason: str | None = None,
) -> Any:  # fmt: skip
    """Test F1 of the configured model per dataset beside Visual ChatGPT's (PROMU Fig 6); a
    dataset without a result is an empty cell carrying ``reason``."""
    from promu_lib.report import Table, paper_value

    table = Table.for_config(
        cfg, "llm", list(datasets), paper_source="PROMU Fig 6 (Visual ChatGPT)",
        title=f"A chat model with vision, {N_DEMONSTRATIONS} in-context demonstrations: test F1",
    )  # fmt: skip
    paper = paper_value("promu", "text_claims", "fig6_visual_chatgpt_f1") or {}
    measured = {d: r["metrics"]["f1"] for d, r in results.items() if r is not None}
    reasons = {d: reason or "not run" for d in datasets if d not in measured}
    model = cfg.llm.model or "no model configured"
    table.add_row(
        f"LLM ({model})", measured, {d: paper.get(d) for d in datasets}, reasons=reasons,
        config={"url": cfg.llm.url, "model": cfg.llm.model, "temperature": cfg.llm.temperature,
                "max_posts": cfg.llm.max_posts, "demonstrations": N_DEMONSTRATIONS},
    )  # fmt: skip
    return table


def example_prompt(cfg: Config, dataset: str, index: int = 0) -> list[dict[str, Any]]:
    """The messages that test post ``index`` of ``dataset`` would be sent with."""
    train, test = _posts(cfg, dataset, "train"), _posts(cfg, dataset, "test")
    demos = [
        (train[i], _image(cfg, dataset, "train", train[i])) for i in pick_demonstrations(train)
    ]
    return build_messages(test[index], _image(cfg, dataset, "test", test[index]), demos)


def show_messages(messages: list[dict[str, Any]], width: int = 60) -> str:
    """The messages as indented JSON with each image URL cut to ``width`` characters."""

    def cut(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: cut(v) for k, v in node.items()}
        if isinstance(node, list):
            return [cut(v) for v in node]
        if isinstance(node, str) and node.startswith("data:") and len(node) > width:
            return f"{node[:width]}... ({len(node)} characters)"
        return node

    return json.dumps(cut(messages), indent=1, ensure_ascii=False)


def figure_data(table: Any) -> dict[str, dict[str, float]]:
    """Measured F1 beside Visual ChatGPT's per dataset (NaN: no bar)."""
    import math

    (row,) = table.rows
    return {
        col: {
            "Visual ChatGPT (PROMU Fig 6)": math.nan if cell.paper is None else cell.paper,
            "measured": math.nan if cell.mean is None else cell.mean,
        }
        for col, cell in row.cells.items()
    }


def summary(results: dict[str, dict[str, Any] | None], table: Any, reason: str | None) -> str:
    """One paragraph computed from the results: what was measured, against the paper, and how
    the answers parsed; or why nothing was measured."""
    (row,) = table.rows
    paper = ", ".join(f"{c} {cell.paper:.2f}" for c, cell in row.cells.items() if cell.paper)
    if not results:
        return (
            f"Nothing was measured: {reason}. The paper's Visual ChatGPT scores ({paper}) are "
            "shown beside an empty measured column; set llm.url, llm.model and the key's "
            "environment variable (llm.api_key_env) to run the comparison."
        )
    measured = ", ".join(f"{d} {r['metrics']['f1']:.2f}" for d, r in results.items())
    counts: Counter[str] = Counter()
    for r in results.values():
        counts.update(r["outcomes"])
    n = sum(counts.values())
    return (
        f"Measured test F1: {measured} (paper: {paper}). Of {n} answers, "
        + ", ".join(f"{counts[o]} {o}" for o in OUTCOMES)
        + "; unparseable answers count as no entity / None, as a wrong answer would."
    )


def run(
    cfg: Config,
    results: Any,
    out_dir: str | Path,
    datasets: Sequence[str] = DATASETS,
    max_posts: int | None = None,
) -> Outputs:
    """Ask, parse and score each dataset's test posts when an endpoint is configured (at most
    ``max_posts`` per dataset; ``None``: ``llm.max_posts``, where 0 is every test post);
    otherwise an empty measured column with the reason. ``results`` is unused (no job)."""
    from promu_lib import plots

    client = ChatClient.from_config(cfg)
    reason = skip_reason(cfg)
    answers = {d: evaluate_dataset(cfg, d, client, max_posts) for d in datasets} if client else {}
    out = Outputs.start(cfg, out_dir)
    table = out.table(llm_table(cfg, answers, datasets, reason))
    out.figure(plots.llm_figure(figure_data(table)), "llm")
    out.lines = [summary(answers, table, reason)]
    return out
