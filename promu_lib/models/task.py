"""Task models for MNER (CRF over words) and MRE (entity markers) on any backbone.

Backbones come from :mod:`promu_lib.models.registry` (text-only BERT, HVPNeT and its variants,
PROMU's ``FusionEncoder``, whose fused text states fine-tuning reads); they share one method,
``token_states(batch, output_attentions=False) -> (states (B, L, H), extras)``.

A task model also says how its decoded outputs become prediction rows and scores
(``prediction_row``, ``score``: :class:`NerOutputs`, :class:`ReOutputs`), so evaluation needs
no task switch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from promu_lib.config import Config
from promu_lib.data.records import MNRE_RELATIONS, NER_TAGS
from promu_lib.errors import CheckpointError, MissingAssetError
from promu_lib.metrics import ner_scores, re_scores
from promu_lib.models.fusion import FusionEncoder
from promu_lib.models.heads import CrfTagger, MarkerClassifier
from promu_lib.models.registry import model_spec
from promu_lib.paths import resolve

TASKS = ("ner", "re")


# -- what evaluation reads from each task ------------------------------------------------------


class NerOutputs:
    """MNER predictions: one BIO tag per word, scored by entity spans (``ner_scores``)."""

    task = "ner"

    def prediction_row(self, post: Any, gold: Any, decoded: Any, post_id: str) -> dict[str, Any]:
        """One post's row: the decoded tag ids as tags, padded with ``O`` for the words that
        ``max_len`` cut off (the post is scored on its full gold sequence)."""
        tags = [NER_TAGS[t] for t in decoded]
        if len(tags) > len(gold):
            raise ValueError(f"{post_id}: {len(tags)} tags for {len(gold)} words")
        pred = tags + ["O"] * (len(gold) - len(tags))
        return {"id": post_id, "tokens": list(post.tokens), "gold": gold, "pred": pred}

    def score(self, golds: Sequence[Any], preds: Sequence[Any]) -> dict[str, Any]:
        return ner_scores(golds, preds)


class ReOutputs:
    """MRE predictions: one relation per post, scored without the ``None`` relation."""

    task = "re"

    def prediction_row(self, post: Any, gold: Any, decoded: Any, post_id: str) -> dict[str, Any]:
        """One post's row: the decoded relation id as its name, with the entity spans."""
        return {
            "id": post_id,
            "tokens": list(post.tokens),
            "head": [post.head.start, post.head.end],
            "tail": [post.tail.start, post.tail.end],
            "gold": gold,
            "pred": MNRE_RELATIONS[int(decoded)],
        }

    def score(self, golds: Sequence[Any], preds: Sequence[Any]) -> dict[str, Any]:
        return re_scores(golds, preds, "None")


# -- the task models ---------------------------------------------------------------------------


class TaskModel(nn.Module):
    """A backbone and a head; subclasses define ``forward`` and ``decode``."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def param_groups(self, lr: float, head_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: backbone at ``lr``, head at ``head_lr``; no decay on 1-d parameters
        (biases, LayerNorm, CRF start/end scores). Frozen parameters are left out."""
        groups = []
        for name, part, part_lr in (("backbone", self.backbone, lr), ("head", self.head, head_lr)):
            params = [p for p in part.parameters() if p.requires_grad]
            decay = [p for p in params if p.ndim > 1]
            flat = [p for p in params if p.ndim <= 1]
            groups.append(
                {"name": name, "params": decay, "lr": part_lr, "weight_decay": weight_decay}
            )
            groups.append(
                {"name": f"{name}_no_decay", "params": flat, "lr": part_lr, "weight_decay": 0.0}
            )
        return [g for g in groups if g["params"]]


class NerModel(NerOutputs, TaskModel):
    """MNER: backbone states -> CRF over words (HVPNeT Eq. 10, PROMU Eq. 12-13)."""

    head: CrfTagger

    def forward(self, batch: dict, output_attentions: bool = False) -> dict[str, Any]:
        states, extras = self.backbone.token_states(batch, output_attentions)
        logits = self.head.emissions(states, batch["word_starts"])  # (B, W, T)
        out: dict[str, Any] = {"logits": logits, **extras}
        if "tags" in batch:
            out["loss"] = self.head.loss(logits, batch["tags"], batch["word_mask"])
        return out

    def decode(self, batch: dict, logits: Tensor | None = None) -> list[list[int]]:
        """Viterbi tag ids per post (only words under ``word_mask``); pass ``logits`` from a
        ``forward`` on the same batch to skip a second backbone pass."""
        if logits is None:
            logits = self(batch)["logits"]
        return self.head.decode(logits, batch["word_mask"])


class ReModel(ReOutputs, TaskModel):
    """MRE: states at <s> and <o> -> Linear over the relations (PROMU Eq. 14-15)."""

    head: MarkerClassifier

    def forward(self, batch: dict, output_attentions: bool = False) -> dict[str, Any]:
        states, extras = self.backbone.token_states(batch, output_attentions)
        logits = self.head(states, batch["head_start"], batch["tail_start"])  # (B, R)
        out: dict[str, Any] = {"logits": logits, **extras}
        if "label" in batch:
            out["loss"] = self.head.loss(logits, batch["label"])
        return out

    def decode(self, batch: dict, logits: Tensor | None = None) -> Tensor:
        """Predicted relation ids (B,)."""
        if logits is None:
            logits = self(batch)["logits"]
        return logits.argmax(-1)


def build_backbone(cfg: Config, model: str, tokenizer: Any) -> nn.Module:
    """The encoder part of a task model (``model`` one of ``MODELS``)."""
    return model_spec(model).backbone(cfg, tokenizer)


def build_task_model(cfg: Config, task: str, model: str, tokenizer: Any) -> TaskModel:
    """A task model: ``task`` "ner" | "re"; ``model`` one of ``MODELS`` (the registry).

    ``tokenizer`` sizes the vocabulary (``len(tokenizer)``, RE markers included). The PROMU
    backbone starts from scratch (or from ``cfg.text.pretrained``) until
    ``load_pretrained_backbone`` loads a pre-training checkpoint.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    spec = model_spec(model)
    if task not in spec.tasks:
        raise ValueError(f"model {model!r} does not serve task {task!r} (only {spec.tasks})")
    backbone = spec.backbone(cfg, tokenizer)
    hidden, drop = backbone.text.hidden_size, cfg.text.dropout
    if task == "ner":
        return NerModel(backbone, CrfTagger(hidden, len(NER_TAGS), drop))
    return ReModel(backbone, MarkerClassifier(hidden, len(MNRE_RELATIONS), drop))


def _backbone_tensors(
    sd: dict[str, Tensor], model: TaskModel, p: Path
) -> tuple[dict, nn.Module, str]:
    """Pick the tensors of ``sd`` that initialise ``model``, the module they go into and the
    key prefix they carry in the file.

    - ``backbone.*`` (a fine-tuned task model, for cross-task transfer): the whole backbone;
    - ``encoder.*`` (a PROMU pre-training checkpoint) into a PROMU backbone: the whole
      ``FusionEncoder``;
    - ``encoder.text.*`` into any other backbone (HVPNeT, text-only BERT): its text encoder,
      the part of the fusion encoder they share (PROMU Table 2: pre-training added on top of
      another fusion model).
    """
    if any(k.startswith("backbone.") for k in sd):
        prefix, target = "backbone.", model.backbone
    elif not any(k.startswith("encoder.") for k in sd):
        raise CheckpointError(
            f"{p}: holds neither 'encoder.' (pre-training) nor 'backbone.' (fine-tuned model) tensors"
        )
    elif isinstance(model.backbone, FusionEncoder):
        prefix, target = "encoder.", model.backbone
    else:
        prefix, target = "encoder.text.", model.backbone.text
    picked = {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
    return picked, target, prefix


def load_pretrained_backbone(model: TaskModel, path: str | Path) -> int:
    """Initialise a task model's encoder from a safetensors file; returns the tensor count.

    Which tensors go where: see ``_backbone_tensors`` (PROMU pre-training into PROMU or into
    HVPNeT's / BERT's text encoder; a fine-tuned model's backbone for cross-task transfer).
    Strict: a missing, unexpected or mis-shaped key raises ``CheckpointError`` naming the first
    one. One exception: the word embeddings may have fewer rows in the checkpoint than in the
    model (the fine-tuning tokenizer added the RE markers); the rows it has are copied, the new
    rows keep their initialisation.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = resolve(path)
    if not p.is_file():
        raise MissingAssetError(
            "initialisation checkpoint",
            [str(p)],
            "Run the pre-training stage (notebook 02 / `promu pretrain`) or point at its .safetensors file.",
        )
    try:
        sd = load_file(str(p))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{p}: not a readable safetensors file ({e})") from e
    enc, target, prefix = _backbone_tensors(sd, model, p)
    own = target.state_dict()
    missing = [k for k in own if k not in enc]
    unexpected = [k for k in enc if k not in own]
    if missing or unexpected:
        key = prefix + (missing[0] if missing else unexpected[0])
        raise CheckpointError(
            f"{p}: {'missing' if missing else 'unexpected'} key {key} "
            f"({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    for k, v in own.items():
        if enc[k].shape == v.shape:
            continue
        if (
            k.endswith("embeddings.word.weight")
            and enc[k].shape[0] < v.shape[0]
            and enc[k].shape[1:] == v.shape[1:]
        ):
            grown = v.clone()
            grown[: enc[k].shape[0]] = enc[k]
            enc[k] = grown
            continue
        raise CheckpointError(
            f"{p}: {prefix}{k} has shape {tuple(enc[k].shape)}, the model expects {tuple(v.shape)} "
            "(was it trained with another model size?)"
        )
    with torch.no_grad():
        target.load_state_dict(enc, strict=True)
    return len(enc)
