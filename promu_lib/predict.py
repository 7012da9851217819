"""Inference on new posts from a fine-tuned model: ``promu export`` and ``promu predict``.

A fine-tuning run directory (``promu_lib.train.finetune``) holds the weights and metrics of one
run; it needs the data directory (the toy vocabulary) and the pretrained assets (BERT, ViT,
CNN weights) it was built from. :func:`export_checkpoint` turns it into a self-contained
checkpoint directory that predicts the same on any machine::

    <ckpt>/checkpoint.json     format, task, dataset, model, the run's dev/test F1, and the
                               SHA-256 of every other file (the tokenizer's included)
    <ckpt>/config.yaml         the resolved config of the run
    <ckpt>/text_encoder.json   the text encoder's exact shape (a pretrained one's included)
    <ckpt>/labels.json         the label map: BIO tags (MNER) or relations (MRE), index order
    <ckpt>/tokenizer/          the word-piece tokenizer (RE markers included)
    <ckpt>/model.safetensors   the weights
    <ckpt>/versions.json       python, packages and git commit that wrote it

The hashes catch accidental corruption and mix-ups (a damaged copy, a file swapped in from
another checkpoint): :meth:`Predictor.load` refuses a checkpoint with a file missing, altered,
unlisted or not hashed. They are not a signature: whoever can edit the files can edit the
manifest too.

Why a separate export and not a copy at the end of every fine-tune: runs are a cache of many
models of which few are ever used for prediction; exporting on demand keeps them small, and
the export step can check what makes a checkpoint portable (it rebuilds the model with no
pretrained asset and no data directory, and loads the weights strictly).

Scores. MNER: each entity's score is the mean, over its words, of the CRF marginal probability
of the Viterbi tag at that word (forward-backward over the emission and transition scores).
MRE: the softmax over the relation logits; the top ``k`` relations with their probabilities.

Object crops need detector boxes: a record may carry ``boxes`` (``[[x1, y1, x2, y2, score,
class], ...]`` in pixels), or a detector finds them (``predict(detector=...)``, ``promu predict
--detect yolo``: :mod:`promu_lib.grounding`); without either the model sees the global image
and no crops.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchcrf import CRF

from promu_lib.config import Config, from_dict, load_config, save_config
from promu_lib.data.datasets import ImageSource, NerDataset, ReDataset, collate
from promu_lib.data.formats import BOX_EXPECTED, FileReader, box_problem, is_text, to_box
from promu_lib.data.records import MNRE_RELATIONS, NER_TAGS, Box, NerPost, RePost, Span
from promu_lib.errors import CheckpointError, DataError, PromuError, UsageError, shorten
from promu_lib.io import atomic_write_json, atomic_write_jsonl, sha256_file
from promu_lib.locks import dir_lock
from promu_lib.models.registry import model_spec
from promu_lib.paths import resolve

FORMAT = "promu-checkpoint/2"  # /1 did not hash the tokenizer
MANIFEST = "checkpoint.json"
FILES = (
    "config.yaml",
    "text_encoder.json",
    "labels.json",
    "model.safetensors",
    "versions.json",
)
TOKENIZER_DIR = "tokenizer"


class PredictInputError(PromuError):
    """A post to predict on is unusable (empty text, a span out of range, a missing image)."""


# =============================================================================================
# Export
# =============================================================================================


def _run_config(metrics: dict[str, Any]) -> Config:
    """The run's config: its profile's defaults under the sections the run recorded."""
    return from_dict({"profile": metrics["profile"], **metrics["config"]})


def _offline_config(cfg: Config, text_encoder: dict[str, Any]) -> Config:
    """``cfg`` with every pretrained asset replaced by a random init of the same shape (the
    checkpoint's weights overwrite all of it)."""
    keep = ("hidden_act", "layer_norm_eps", "type_vocab_size")
    defaults = {k: v for k, v in text_encoder.items() if k in keep}
    if defaults != {"hidden_act": "gelu", "layer_norm_eps": 1e-12, "type_vocab_size": 2}:
        raise CheckpointError(f"text encoder {defaults} differs from BERT's; cannot rebuild it")
    return cfg.replace(
        **{
            "text.pretrained": None,
            "text.vocab_size": text_encoder["vocab_size"],
            "text.hidden_size": text_encoder["hidden_size"],
            "text.num_layers": text_encoder["num_layers"],
            "text.num_heads": text_encoder["num_heads"],
            "text.intermediate_size": text_encoder["intermediate_size"],
            "text.max_position": text_encoder["max_position"],
            "vision.pretrained": None,
            "vision.weights_file": None,
            "hvpnet.backbone_weights": None,
        }
    )


def export_checkpoint(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a self-contained checkpoint of the finished fine-tuning run ``run_dir``.

    Needs what the run needed (its data directory for the toy vocabulary, its pretrained
    assets); the checkpoint needs neither. Written into a temporary directory, checked by
    loading it, then renamed to ``out_dir`` (which must not exist). One export per target at
    a time: a second export of the same run to the same target waits and returns the first's.
    """
    run, out = resolve(run_dir), resolve(out_dir)
    for name in ("DONE.json", "metrics.json", "model.safetensors"):
        if not (run / name).is_file():
            raise CheckpointError(
                f"{run}: no {name}; expected a finished fine-tuning run directory "
                "(promu finetune --out DIR)"
            )
    existed = out.exists()
    with dir_lock(out, "export"):
        if out.exists():
            if not existed and _source_run(out) == str(run):  # exported while we waited
                return out
            raise CheckpointError(f"{out} already exists; choose a new directory")
        return _export(run, out)


def _source_run(ckpt: Path) -> str | None:
    try:
        return json.loads((ckpt / MANIFEST).read_text(encoding="utf-8")).get("source_run")
    except (OSError, ValueError, AttributeError):
        return None


def _read_metrics(run: Path) -> dict[str, Any]:
    path = run / "metrics.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
        for key in ("profile", "config", "task", "model", "dataset", "seed", "test"):
            metrics[key]  # noqa: B018 (present, or KeyError)
        return metrics
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{path}: unreadable ({type(e).__name__}: {shorten(str(e), 60)}); expected the "
            "metrics.json a fine-tuning run writes"
        ) from e


def _hashed_names(ckpt: Path) -> list[str]:
    """Every file of a checkpoint that changes its behaviour: FILES and the tokenizer's."""
    tok = ckpt / TOKENIZER_DIR
    files = sorted(p.relative_to(ckpt).as_posix() for p in tok.rglob("*") if p.is_file())
    return [*FILES, *files]


def _export(run: Path, out: Path) -> Path:
    from promu_lib.data.tokenizer import build_tokenizer
    from promu_lib.report import git_commit, package_versions
    from promu_lib.train.finetune import build_model

    metrics = _read_metrics(run)
    cfg = _run_config(metrics)
    task, model = metrics["task"], metrics["model"]
    tokenizer = build_tokenizer(cfg)
    net = build_model(cfg, task, model, tokenizer)
    text_encoder = dataclasses.asdict(net.backbone.text.cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        save_config(cfg, tmp / "config.yaml")
        atomic_write_json(tmp / "text_encoder.json", text_encoder)
        labels = list(NER_TAGS if task == "ner" else MNRE_RELATIONS)
        atomic_write_json(tmp / "labels.json", {"task": task, "labels": labels})
        tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        shutil.copyfile(run / "model.safetensors", tmp / "model.safetensors")
        versions = {"packages": package_versions(), "git_commit": git_commit()}
        atomic_write_json(tmp / "versions.json", versions)
        manifest = {
            "format": FORMAT,
            "task": task,
            "dataset": metrics["dataset"],
            "model": model,
            "seed": metrics["seed"],
            "profile": metrics["profile"],
            "image_mode": metrics["image_mode"],
            "dev_f1": (metrics["dev"] or {}).get("f1"),
            "test_f1": metrics["test"]["f1"],
            "source_run": str(run),
            "sha256": {name: sha256_file(tmp / name) for name in _hashed_names(tmp)},
        }
        atomic_write_json(tmp / MANIFEST, manifest)
        Predictor.load(tmp)  # portable: rebuilds offline and loads strictly, or raises
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _read_manifest(path: Path) -> dict[str, Any]:
    """``checkpoint.json``: a JSON object of this format naming a task, a model and a non-empty
    ``sha256`` map; CheckpointError naming the file for anything else."""
    expected = f"the {MANIFEST} that `promu export` writes (format {FORMAT})"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(
            f"{path}: not valid JSON ({shorten(str(e), 60)}); expected {expected}"
        ) from e
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: a JSON {type(manifest).__name__}; expected {expected}")
    if manifest.get("format") != FORMAT:
        old = (
            " (written by an earlier version, which did not hash the tokenizer: export the run "
            "again)"
            if manifest.get("format") == "promu-checkpoint/1"
            else ""
        )
        raise CheckpointError(
            f"{path}: format {shorten(manifest.get('format'))}{old}; expected {FORMAT!r}"
        )
    missing = [k for k in ("task", "dataset", "model", "sha256") if k not in manifest]
    if missing:
        raise CheckpointError(f"{path}: no {', '.join(map(repr, missing))}; expected {expected}")
    try:
        model_spec(manifest["model"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: {e}") from e
    hashes = manifest["sha256"]
    if not isinstance(hashes, dict) or not hashes:
        raise CheckpointError(
            f"{path}: 'sha256' is {shorten(hashes)}; expected the SHA-256 of every file of the "
            "checkpoint (an empty map would check nothing)"
        )
    return manifest


def _check_hashes(ckpt: Path, hashes: dict[str, Any]) -> None:
    """Every file that changes behaviour is listed, present and unaltered (see the module
    docstring for what that guarantees)."""
    names = _hashed_names(ckpt)
    unlisted = [n for n in names if n not in hashes]
    if unlisted:
        raise CheckpointError(
            f"{ckpt / unlisted[0]}: not hashed in {MANIFEST} ({len(unlisted)} file(s) unlisted); "
            "expected the SHA-256 of every file of the checkpoint (export the run again)"
        )
    for name, digest in hashes.items():
        if name not in names or not (ckpt / name).is_file():
            raise CheckpointError(
                f"{ckpt}/{name[:60]}: listed in {MANIFEST} but missing; expected "
                "every file the manifest lists"
            )
        if sha256_file(ckpt / name) != digest:
            raise CheckpointError(
                f"{ckpt / name}: altered since export (its SHA-256 differs from {MANIFEST}); "
                "expected the file as exported"
            )


# =============================================================================================
# CRF marginals
# =============================================================================================


def crf_marginals(crf: CRF, emissions: Tensor) -> Tensor:
    """P(tag_t = j | words) of a linear-chain CRF by forward-backward: (W, T) -> (W, T)."""
    start, trans, end = crf.start_transitions, crf.transitions, crf.end_transitions
    n = emissions.shape[0]
    alpha = [start + emissions[0]]
    for t in range(1, n):
        alpha.append(torch.logsumexp(alpha[-1][:, None] + trans, dim=0) + emissions[t])
    beta = [end]
    for t in range(n - 1, 0, -1):
        beta.insert(0, torch.logsumexp(trans + (emissions[t] + beta[0])[None, :], dim=1))
    a, b = torch.stack(alpha), torch.stack(beta)
    return torch.softmax(a + b, dim=-1)  # log Z cancels in the per-word normalisation


def entities_of(
    tokens: Sequence[str], tags: Sequence[str], confidence: Sequence[float]
) -> list[dict[str, Any]]:
    """BIO tags -> entities ``{"text", "type", "start", "end", "score"}`` (``end`` exclusive;
    an ``I-`` without its ``B-`` opens an entity, as seqeval's default mode reads it)."""
    out: list[dict[str, Any]] = []
    start, etype = None, None
    for i, tag in enumerate([*tags, "O"]):
        inside = tag.startswith("I-") and etype == tag[2:]
        if start is not None and not inside:
            scores = confidence[start:i]
            out.append(
                {
                    "text": " ".join(tokens[start:i]),
                    "type": etype,
                    "start": start,
                    "end": i,
                    "score": round(float(sum(scores) / len(scores)), 4),
                }
            )
            start, etype = None, None
        if tag != "O" and not inside:
            start, etype = i, tag[2:]
    return out


# =============================================================================================
# Inputs
# =============================================================================================


def parse_span(value: Any, n: int, name: str, where: str) -> tuple[int, int]:
    """``[start, end)`` from ``[s, e]``, ``"s:e"`` or one token index ``"s"``; checked in range."""
    try:
        if isinstance(value, str):
            a, _, b = value.partition(":")
            span = (int(a), int(b) if b else int(a) + 1)
        else:
            span = (int(value[0]), int(value[1]))
    except (ValueError, TypeError, IndexError):
        raise PredictInputError(
            f"{where}: {name} {value!r} is not a span; expected 'start:end' token indices "
            "(end exclusive) or [start, end]"
        ) from None
    if not 0 <= span[0] < span[1] <= n:
        raise PredictInputError(
            f"{where}: {name} span {span[0]}:{span[1]} is out of range for {n} tokens "
            f"(expected 0 <= start < end <= {n})"
        )
    return span


def _tokens(record: dict[str, Any], where: str) -> list[str]:
    tokens = record.get("tokens")
    if tokens is None:
        text = record.get("text")
        if not isinstance(text, str):
            raise PredictInputError(f"{where}: no text; give 'text' (a string) or 'tokens'")
        tokens = text.split()
    if not isinstance(tokens, list) or not all(is_text(t) and t.strip() for t in tokens):
        raise PredictInputError(
            f"{where}: 'tokens' is {shorten(tokens, 60)}; expected a list of non-empty strings "
            "(valid Unicode)"
        )
    if not tokens:
        raise PredictInputError(f"{where}: the text is empty")
    return tokens


def _boxes(value: Any, where: str) -> list[Box]:
    """Boxes checked as the boxes reader checks them (``formats.box_problem``)."""
    if not isinstance(value, list):
        raise PredictInputError(
            f"{where}: 'boxes' is {shorten(value, 60)}; expected a list of {BOX_EXPECTED} in pixels"
        )
    for j, b in enumerate(value):
        problem = box_problem(b)
        if problem is not None:
            raise PredictInputError(f"{where}: box {j} {problem}; expected {BOX_EXPECTED}")
    return [to_box(b) for b in value]


@dataclasses.dataclass
class _Post:
    """One validated input: tokens, spans (MRE), the image's pixels as the model wants them."""

    id: str
    tokens: list[str]
    head: tuple[int, int] | None
    tail: tuple[int, int] | None
    visual: dict[str, Tensor] | None


# =============================================================================================
# The predictor
# =============================================================================================


class Predictor:
    """A fine-tuned MNER or MRE model loaded from a checkpoint directory (CPU by default).

    ``predict(records)`` takes dicts ``{"id"?, "text" | "tokens", "image"?, "boxes"?, "head"?,
    "tail"?}`` (image paths relative to ``base_dir``) and returns one result dict per record;
    every record is validated before any prediction, so a bad one raises and nothing is
    returned.
    """

    def __init__(
        self, net: nn.Module, tokenizer: Any, cfg: Config, manifest: dict[str, Any], path: Path
    ) -> None:
        self.net, self.tokenizer, self.cfg = net.eval(), tokenizer, cfg
        self.manifest, self.path = manifest, path
        self.task: str = manifest["task"]
        self.dataset: str = manifest["dataset"]
        self.model: str = manifest["model"]
        self.uses_image = model_spec(self.model).sees_image

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Predictor:
        """Load a checkpoint written by :func:`export_checkpoint` (no data dir, no weights
        download); ``CheckpointError`` when it is incomplete, altered or not a checkpoint."""
        from transformers import AutoTokenizer

        from promu_lib.models import build_task_model
        from promu_lib.train.common import load_weights

        p = resolve(path)
        if not (p / MANIFEST).is_file():
            hint = (
                " It looks like a fine-tuning run directory: export it first with "
                f"`promu export --run {p} --out CKPT`."
                if (p / "metrics.json").is_file()
                else ""
            )
            raise CheckpointError(f"{p}: not a promu checkpoint (no {MANIFEST}).{hint}")
        manifest = _read_manifest(p / MANIFEST)
        _check_hashes(p, manifest["sha256"])
        labels = json.loads((p / "labels.json").read_text(encoding="utf-8"))
        expected = list(NER_TAGS if manifest["task"] == "ner" else MNRE_RELATIONS)
        if labels != {"task": manifest["task"], "labels": expected}:
            raise CheckpointError(f"{p}/labels.json: label map differs from this version's")
        cfg = load_config(file=p / "config.yaml")
        text_encoder = json.loads((p / "text_encoder.json").read_text(encoding="utf-8"))
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(p / TOKENIZER_DIR), local_files_only=True)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{p}/tokenizer: not a readable tokenizer ({e})") from e
        offline = _offline_config(cfg, text_encoder)
        net = build_task_model(offline, manifest["task"], manifest["model"], tokenizer)
        load_weights(p / "model.safetensors", net)
        return cls(net.to(device), tokenizer, cfg, manifest, p)

    # -- validation ---------------------------------------------------------------------------
    def _validate(
        self, record: dict[str, Any], index: int, base_dir: Path, source: str | None = None
    ) -> _Post:
        if not isinstance(record, dict):
            raise PredictInputError(
                f"{source or f'post {index}'}: a JSON {type(record).__name__} "
                f'{shorten(record, 40)}; expected a JSON object {{"id", "text" or "tokens", '
                '"image", "boxes", "head", "tail"}'
            )
        where = f"post {shorten(record.get('id', index), 60)}"
        where = f"{source}: {where}" if source else where
        tokens = _tokens(record, where)
        has_spans = "head" in record or "tail" in record
        head = tail = None
        if self.task == "ner" and has_spans:
            raise PredictInputError(
                f"{where}: head/tail spans given, but {self.path} is an MNER checkpoint "
                f"({self.dataset}); spans are for MRE (mnre) checkpoints"
            )
        if self.task == "re":
            if not ("head" in record and "tail" in record):
                raise PredictInputError(
                    f"{where}: {self.path} is an MRE checkpoint; give the head and tail "
                    "entity spans ('start:end' token indices, end exclusive)"
                )
            head = parse_span(record["head"], len(tokens), "head", where)
            tail = parse_span(record["tail"], len(tokens), "tail", where)
        visual = None
        if self.uses_image:
            visual = self._visual(record, where, base_dir)
        return _Post(str(record.get("id", index)), tokens, head, tail, visual)

    def _visual(self, record: dict[str, Any], where: str, base_dir: Path) -> dict[str, Tensor]:
        image = record.get("image")
        if not isinstance(image, str) or not image:
            raise PredictInputError(
                f"{where}: the {self.model} model needs an image; give 'image' (a file path)"
            )
        path = Path(image) if Path(image).is_absolute() else base_dir / image
        d = self.cfg.data
        source = ImageSource(
            image_dir=path.parent,
            boxes={path.name: _boxes(record.get("boxes") or [], where)},
            size=d.image_size,
            max_objects=d.max_objects,
            transform=d.image_transform,
        )
        try:
            return source.visual(path.name).tensors()
        except DataError as e:
            raise PredictInputError(f"{where}: {e}") from e

    # -- prediction ---------------------------------------------------------------------------
    def predict(
        self,
        records: Iterable[dict[str, Any]],
        *,
        base_dir: str | Path = ".",
        top_k: int = 3,
        batch_size: int = 16,
        progress: bool = False,
        sources: Sequence[str] | None = None,
        detector: Any = None,
    ) -> list[dict[str, Any]]:
        """One result per record: MNER ``{"id", "tokens", "tags", "entities"}``; MRE ``{"id",
        "tokens", "head", "tail", "relations": [{"relation", "probability"}] (top_k)}``.
        ``sources``: where each record came from (``posts.jsonl:12``), named in its errors.
        ``detector`` (a :class:`promu_lib.detect.Detector`, e.g. ``grounding.build_detector(
        "yolo", weights)``): boxes for each record that has an image and no ``boxes``, its
        ``data.max_objects`` best; each result then also holds the ``boxes`` the model saw."""
        from promu_lib.progress import iterate

        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise PredictInputError(f"top_k is {shorten(top_k)}; expected an integer >= 1")
        base = resolve(base_dir)
        records = list(records)
        if detector is not None and self.uses_image:
            from promu_lib.grounding import with_boxes

            records = with_boxes(records, detector, self.cfg.data.max_objects, base)
        where = list(sources) if sources is not None else [None] * len(records)
        posts = [self._validate(r, i, base, where[i]) for i, r in enumerate(records)]
        chunks = [posts[i : i + batch_size] for i in range(0, len(posts), batch_size)]
        if progress:
            chunks = iterate(chunks, len(chunks), f"predict {len(posts)} posts")
        out: list[dict[str, Any]] = []
        for chunk in chunks:
            out += self._predict_batch(chunk, top_k)
        if detector is not None and self.uses_image:  # what the model saw, e.g. to draw it
            for row, record in zip(out, records):
                row["boxes"] = record.get("boxes") or []
        return out

    def _dataset(self, posts: list[_Post]) -> NerDataset | ReDataset:
        """The posts encoded exactly as in training (the datasets' own encoders)."""
        max_len = self.cfg.data.max_len
        if self.task == "ner":
            records = [NerPost(p.id, tuple(p.tokens), ("O",) * len(p.tokens)) for p in posts]
            return NerDataset(records, self.tokenizer, max_len, progress=False)
        records = [
            RePost(tuple(p.tokens), Span("head", *p.head), Span("tail", *p.tail), p.id, "None")
            for p in posts
        ]
        return ReDataset(records, self.tokenizer, max_len, progress=False)

    @torch.inference_mode()
    def _predict_batch(self, posts: list[_Post], top_k: int) -> list[dict[str, Any]]:
        ds = self._dataset(posts)
        items = [ds[i] | ({**p.visual} if p.visual else {}) for i, p in enumerate(posts)]
        batch = collate(items, ds.pad_id)
        device = next(self.net.parameters()).device
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        logits = self.net(batch)["logits"]
        rows = []
        if self.task == "ner":
            paths = self.net.decode(batch, logits)
            for k, (p, tag_ids) in enumerate(zip(posts, paths)):
                n = len(tag_ids)  # words cut off by data.max_len are O
                marg = crf_marginals(self.net.head.crf, logits[k, :n].float()) if n else None
                conf = [float(marg[i, t]) for i, t in enumerate(tag_ids)] if n else []
                tags = [NER_TAGS[t] for t in tag_ids] + ["O"] * (len(p.tokens) - n)
                conf += [math.nan] * (len(p.tokens) - n)
                entities = entities_of(p.tokens, tags, conf)
                rows.append({"id": p.id, "tokens": p.tokens, "tags": tags, "entities": entities})
            return rows
        probs = torch.softmax(logits.float(), dim=-1)
        for p, row in zip(posts, probs):
            top = torch.topk(row, min(top_k, row.numel()))
            relations = [
                {"relation": MNRE_RELATIONS[int(i)], "probability": round(float(v), 4)}
                for v, i in zip(top.values, top.indices)
            ]
            rows.append(
                {
                    "id": p.id,
                    "tokens": p.tokens,
                    "head": list(p.head),
                    "tail": list(p.tail),
                    "relations": relations,
                }
            )
        return rows


def records_from_posts(
    posts: Sequence[NerPost | RePost], image_dir: str | Path, suffix: str = "", boxes: Any = None
) -> list[dict[str, Any]]:
    """Input records for :meth:`Predictor.predict` from data-set posts (e.g. toy posts in the
    data notebook): tokens, the image path, the post's boxes and (MRE) its spans."""
    out = []
    for i, post in enumerate(posts):
        record: dict[str, Any] = {
            "id": f"{post.img_id}@{i}",
            "tokens": list(post.tokens),
            "image": str(Path(image_dir) / f"{post.img_id}{suffix}"),
        }
        if boxes is not None:
            record["boxes"] = [b.as_list() for b in boxes.get(post.img_id, ())]
        if isinstance(post, RePost):
            record["head"] = [post.head.start, post.head.end]
            record["tail"] = [post.tail.start, post.tail.end]
        out.append(record)
    return out


def format_result(result: dict[str, Any]) -> str:
    """A readable block for one result (what ``promu predict`` prints)."""
    tokens = result["tokens"]
    lines = [f"{result['id']}: {' '.join(tokens)}"]
    if "entities" in result:
        if not result["entities"]:
            lines.append("  (no entity)")
        for e in result["entities"]:
            lines.append(
                f"  {e['type']:<4} {e['text']!r} tokens {e['start']}:{e['end']}  "
                f"score {e['score']:.3f}"
            )
        return "\n".join(lines)
    h, t = result["head"], result["tail"]
    lines.append(
        f"  head {' '.join(tokens[h[0] : h[1]])!r} ({h[0]}:{h[1]}), "
        f"tail {' '.join(tokens[t[0] : t[1]])!r} ({t[0]}:{t[1]})"
    )
    for r in result["relations"]:
        lines.append(f"  {r['probability']:.3f}  {r['relation']}")
    return "\n".join(lines)


# =============================================================================================
# Command line
# =============================================================================================


def _read_jsonl(path: Path) -> tuple[list[Any], list[str]]:
    """The records of a JSON-lines input and where each came from (``path:line``); UTF-8 and
    JSON problems are DataErrors naming the line (the records are checked by ``predict``)."""
    r = FileReader(path, "error", None)
    records, sources = [], []
    for i, line in r.lines():  # a missing file or undecodable bytes: DataError
        if isinstance(line, DataError):
            raise line
        if line.strip():
            records.append(r.strict_json(line, i))
            sources.append(f"{path}:{i}")
    if not records:
        raise DataError(path, "no post in the input file", "one JSON object per line")
    return records, sources


def _predict_command(args: argparse.Namespace) -> int:
    """Paths on the command line are relative to the working directory."""
    if args.input and (args.text is not None or args.tokens is not None):
        raise UsageError("give either --input FILE or --text/--tokens, not both")
    if args.output and not args.input:
        raise UsageError("--output writes batch results; use it with --input")
    if args.output and Path(args.output).is_dir():
        raise PredictInputError(f"{args.output}: is a directory; expected --output FILE.jsonl")
    predictor = Predictor.load(Path(args.checkpoint).absolute(), device=args.device)
    if args.task and args.task != predictor.task:
        name = {"ner": "MNER", "re": "MRE"}
        raise PredictInputError(
            f"{args.checkpoint} is an {name[predictor.task]} checkpoint "
            f"({predictor.dataset}, {predictor.model}), not {name[args.task]}"
        )
    if args.input:
        path = Path(args.input).absolute()
        (records, sources), base = _read_jsonl(path), path.resolve().parent
    else:
        record: dict[str, Any] = {"id": "post"}
        if args.tokens is not None:
            record["tokens"] = args.tokens.split()
        else:
            record["text"] = args.text if args.text is not None else ""
        for key in ("image", "head", "tail"):
            if getattr(args, key) is not None:
                record[key] = getattr(args, key)
        if args.boxes:
            record["boxes"] = _boxes_argument(args.boxes)
        records, sources, base = [record], None, Path.cwd()
    if args.draw and (args.input or not args.image):
        raise UsageError("--draw pictures one post: give it with --image (and --text), not --input")
    detector = _detector(args, predictor)
    results = predictor.predict(
        records, base_dir=base, top_k=args.top_k, progress=bool(args.input), sources=sources,
        detector=detector,
    )  # fmt: skip
    if args.draw:
        from promu_lib.grounding import draw_result

        boxes = results[0].get("boxes", records[0].get("boxes"))
        draw_result(base / args.image, results[0], Path(args.draw).absolute(), boxes)
        print(f"[promu] drawn to {args.draw}")
    if detector is not None and not args.json and not args.output:
        print(f"[promu] --detect {args.detect}: " + ", ".join(
            f"{len(r.get('boxes', []))} box(es) for {r['id']}" for r in results))  # fmt: skip
    if args.output:
        atomic_write_jsonl(Path(args.output).absolute(), results)
        print(f"[promu] {len(results)} predictions written to {args.output}")
    elif args.json:
        for r in results:
            print(json.dumps(r, ensure_ascii=False))
    else:
        print("\n".join(format_result(r) for r in results))
    return 0


def _detector(args: argparse.Namespace, predictor: Predictor) -> Any:
    """The detector of ``--detect`` (None for ``none``, or for a model that sees no image)."""
    from promu_lib.grounding import build_detector

    if args.detect == "none":
        return None
    if not predictor.uses_image or predictor.cfg.data.max_objects == 0:
        print(
            f"[promu] --detect {args.detect} ignored: the {predictor.model} checkpoint sees no "
            "object crops (a text model, or data.max_objects=0)",
            file=sys.stderr,
        )
        return None
    device = None if args.device == "auto" else args.device
    return build_detector(args.detect, args.yolo_weights, predictor.cfg.data.max_objects, device)


def _boxes_argument(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise PredictInputError(
            f"--boxes {shorten(text, 60)}: not valid JSON ({shorten(str(e), 60)}); expected "
            f"'[[x1, y1, x2, y2, score, class], ...]'"
        ) from e


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _export_command(args: argparse.Namespace) -> int:
    out = export_checkpoint(Path(args.run).absolute(), Path(args.out).absolute())
    print(f"[promu] checkpoint written to {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """``promu predict`` and ``promu export``."""
    p = subparsers.add_parser(
        "predict",
        help="predict entities (MNER) or relations (MRE) on new posts from a checkpoint",
        description="Predict with an exported checkpoint (promu export). MNER prints each "
        "entity with its token span, type and score (mean CRF marginal of its tags); MRE "
        "prints the top relations between --head and --tail with their probabilities. "
        "A bad input (missing or unreadable image, empty text, a span out of range, a "
        "checkpoint of the other task) stops with one error and writes nothing.",
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="exported checkpoint")
    p.add_argument("--text", help="the post, split into tokens on whitespace")
    p.add_argument("--tokens", help="the post as tokens separated by spaces (same as --text)")
    p.add_argument("--image", metavar="PATH", help="the post's image (needed by image models)")
    p.add_argument(
        "--boxes",
        metavar="JSON",
        help="object boxes in pixels, '[[x1, y1, x2, y2, score, class], ...]' (default: none: "
        "the model sees the whole image and no object crops)",
    )
    p.add_argument("--head", metavar="START:END", help="MRE: head entity token span (end excl.)")
    p.add_argument("--tail", metavar="START:END", help="MRE: tail entity token span (end excl.)")
    p.add_argument(
        "--input",
        metavar="FILE.jsonl",
        help='batch input: one JSON object per line: {"id", "text" or "tokens", "image", '
        '"boxes", "head", "tail"}; image paths relative to the file',
    )
    p.add_argument("--output", metavar="FILE.jsonl", help="batch output (written atomically)")
    p.add_argument(
        "--top-k", type=_positive_int, default=3, help="MRE: relations to show (default 3)"
    )
    p.add_argument("--task", choices=("ner", "re"), help="fail unless the checkpoint is this task")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument(
        "--detect",
        choices=("none", "yolo"),
        default="none",
        help="find object boxes in each image that comes without --boxes / 'boxes' and crop "
        "the data.max_objects best (yolo: ultralytics YOLO, the label-mining detector)",
    )
    p.add_argument("--yolo-weights", metavar="PATH", help="local YOLO .pt file for --detect yolo")
    p.add_argument(
        "--draw", metavar="OUT.png", help="draw the image with its boxes and predictions (one post)"
    )
    p.set_defaults(func=_predict_command)

    e = subparsers.add_parser(
        "export",
        help="turn a fine-tuning run directory into a self-contained checkpoint",
        description="Write config, tokenizer, label map, weights and versions to a new "
        "directory that `promu predict` loads with no data directory and no pretrained "
        "weights. The run must be finished (DONE.json).",
    )
    e.add_argument("--run", required=True, metavar="DIR", help="fine-tuning run directory")
    e.add_argument("--out", required=True, metavar="CKPT", help="new checkpoint directory")
    e.set_defaults(func=_export_command)
