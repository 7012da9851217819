"""Loud failures for collapsed fine-tuning runs (what HVPNeT #6/#14/#18/#19 users kept hitting).

A non-finite loss already stops training (``promu_lib.train.common.check_finite``). After each
dev evaluation :func:`check_dev` looks for the other ways a run silently ends as a table of
zeros, and names the epoch, the step, the posts and the likely cause:

- **all-zero images**: with real images expected (``image_mode`` true or shuffled) a multimodal
  model got dev batches whose every image (and object crop) is exactly zero: images that were never loaded (missing files
  replaced by blanks, a wrong image directory). The whole dev set blank stops the run
  (:class:`CollapsedRunError`); a blank batch is flagged.
- **image without effect**: the model's outputs on a dev batch are identical with the true
  images and with zeros, i.e. its image features are zero or never reach the text (a frozen
  dead backbone, a gate stuck at 0). Flagged.
- **one class for the whole dev set**: every dev prediction is "O" (MNER), every predicted
  entity has one type while the gold has several, or every relation is the same (MRE).
  Flagged each epoch; normal in the first epoch of a short run, a collapse when it persists
  (lower the learning rate, check the labels, train longer).

Flags are warned (:class:`CollapseWarning`) and returned, so the caller records them with the
epoch (``metrics.json`` history).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from promu_lib.errors import PromuError

SHOWN_IDS = 6  # post ids named in a message


class CollapseWarning(UserWarning):
    """A fine-tuning run shows a sign of collapse (see :mod:`promu_lib.guards`)."""


class CollapsedRunError(PromuError):
    """A fine-tuning run cannot produce a meaningful result (e.g. every image is blank)."""


def _ids(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:SHOWN_IDS])
    return shown + (f" (+{len(ids) - SHOWN_IDS} more)" if len(ids) > SHOWN_IDS else "")


def _where(epoch: int, step: int) -> str:
    return f"epoch {epoch} (step {step})"


# -- predictions --------------------------------------------------------------------------------


def one_class(predictions: Sequence[dict[str, Any]], task: str) -> str | None:
    """Why the dev predictions are one class (``None`` when they are not)."""
    if not predictions:
        return None
    if task == "ner":
        types = Counter(t[2:] for r in predictions for t in r["pred"] if t.startswith("B-"))
        gold = {t[2:] for r in predictions for t in r["gold"] if t.startswith("B-")}
        if not types and gold:
            return "every word is tagged O (no entity predicted)"
        if len(types) == 1 and len(gold) > 1:
            return f"every predicted entity is {next(iter(types))} (gold has {len(gold)} types)"
        return None
    preds = Counter(r["pred"] for r in predictions)
    gold = {r["gold"] for r in predictions}
    if len(preds) == 1 and len(gold) > 1:
        return f"every relation predicted is {next(iter(preds))!r} (gold has {len(gold)} labels)"
    return None


# -- images -------------------------------------------------------------------------------------


def blank_batches(loader: DataLoader) -> list[list[str]]:
    """Post ids of each batch of ``loader`` whose images and object crops are all exactly zero."""
    out = []
    for batch in loader:
        if "image" not in batch:
            return []
        objects = batch.get("objects")
        if not bool(batch["image"].any()) and (objects is None or not bool(objects.any())):
            out.append(list(batch["ids"]))
    return out


@torch.inference_mode()
def image_has_effect(net: nn.Module, batch: dict[str, Any]) -> bool:
    """Whether zeroing the images and crops of ``batch`` changes the model's logits."""
    was_training = net.training
    net.eval()
    blank = dict(batch, image=torch.zeros_like(batch["image"]))
    blank.pop("pyramid_features", None)  # maps precomputed from the real images
    if "objects" in batch:
        blank["objects"] = torch.zeros_like(batch["objects"])
    same = torch.equal(net(batch)["logits"], net(blank)["logits"])
    net.train(was_training)
    return not same


# -- the check ----------------------------------------------------------------------------------


def check_dev(
    net: nn.Module,
    loader: DataLoader,
    predictions: Sequence[dict[str, Any]],
    task: str,
    *,
    epoch: int,
    step: int,
    image_mode: str = "true",
    device: torch.device | None = None,
) -> list[str]:
    """Check one dev evaluation for collapse; warn and return the flags (empty when healthy).

    Raises :class:`CollapsedRunError` when real images are expected (``image_mode`` true or
    shuffled) and every dev image is blank (checked at epoch 0: the data never changes).
    """
    flags = []
    reason = one_class(predictions, task)
    if reason:
        ids = [r["id"] for r in predictions]
        flags.append(
            f"{_where(epoch, step)}: the model predicts one class on the whole dev set: {reason} "
            f"(posts {_ids(ids)}). Early in a short run this is normal; if it persists, lower "
            "the learning rate, check the labels and the class balance, or train longer."
        )
    images = image_mode != "blank"  # true or another post's: real pixels expected
    blank = blank_batches(loader) if images and epoch == 0 else []  # the data never changes
    if blank and len(blank) == len(loader):
        raise CollapsedRunError(
            f"{_where(epoch, step)}: every dev image and object crop is all zeros with "
            f"image_mode={image_mode!r} (posts {_ids([i for b in blank for i in b])}): the "
            "images were not loaded. Check data.*_images, the image files and "
            "data.on_missing_image."
        )
    for ids in blank:
        flags.append(
            f"{_where(epoch, step)}: a dev batch has all-zero images and crops (posts "
            f"{_ids(ids)}): missing images replaced by blanks? See `promu data check`."
        )
    batch = next(iter(loader))
    if images and "image" in batch and bool(batch["image"].any()):
        device = device or next(net.parameters()).device
        moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        if not image_has_effect(net, moved):
            flags.append(
                f"{_where(epoch, step)}: the images change nothing in the model's output (dev "
                f"posts {_ids(list(batch['ids']))}): its image features are zero or never reach "
                "the text (dead or frozen visual backbone, a gate stuck at 0)."
            )
    for flag in flags:
        warnings.warn(flag, CollapseWarning, stacklevel=2)
    return flags
