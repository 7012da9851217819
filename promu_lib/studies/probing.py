"""Loading what the studies look inside: a fine-tuned task model, the posts it saw, the toy
world's truth and the images.

Everything runs on CPU in eval mode. The toy world's truth files
(``truth/<dataset>_<split>.jsonl``) say which drawn object belongs to which mention and which
post carries an irrelevant image; real data has none (``read_truth_rows`` returns None).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from promu_lib.config import Config
from promu_lib.data.layout import DataLayout
from promu_lib.jobs import Finetune
from promu_lib.paths import resolve

if TYPE_CHECKING:
    import torch

MODEL_FILE = "model.safetensors"


def load_task_model(
    cfg: Config,
    dataset: str,
    model: str,
    weights: str | Path | None = None,
    tokenizer: Any = None,
) -> tuple[torch.nn.Module, Any]:
    """The task model of ``model`` on ``dataset`` (``weights``: a fine-tuned safetensors file;
    ``None`` keeps the random initialisation), in eval mode on CPU, and its tokenizer."""
    from promu_lib.data.tokenizer import build_tokenizer
    from promu_lib.models import build_task_model
    from promu_lib.train.common import load_weights
    from promu_lib.train.finetune import task_of

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(cfg, DataLayout.of(cfg))
    net = build_task_model(cfg, task_of(dataset), model, tokenizer)
    if weights is not None:
        load_weights(resolve(weights), net)
    return net.eval(), tokenizer


def load_finetuned(
    cfg: Config, job: Finetune, tokenizer: Any = None
) -> tuple[torch.nn.Module, Any]:
    """The best-dev weights of a finished fine-tuning job (``run_jobs`` ran it)."""
    return load_task_model(
        job.config(cfg), job.dataset, job.model, job.out_dir(cfg) / MODEL_FILE, tokenizer
    )


def load_posts(
    cfg: Config, dataset: str, tokenizer: Any, split: str = "test", with_images: bool = True
) -> Any:
    """One split as the fine-tuning saw it (a ``PostDataset``), images included."""
    from promu_lib.data.datasets import load_split

    return load_split(
        cfg, dataset, split, tokenizer, layout=DataLayout.of(cfg), with_images=with_images,
        progress=False,
    )  # fmt: skip


def batches(posts: Any, indices: Sequence[int], batch_size: int = 16):
    """Collated batches of ``posts[i]`` for ``i`` in ``indices`` (in that order)."""
    from promu_lib.data.datasets import collate

    indices = list(indices)
    for start in range(0, len(indices), batch_size):
        items = [posts[i] for i in indices[start : start + batch_size]]
        yield collate(items, pad_id=posts.pad_id)


def read_truth_rows(cfg: Config, dataset: str, split: str) -> list[dict] | None:
    """The toy world's truth of one split (one row per post, file order), or None."""
    from promu_lib.data.toyworld import read_truth

    path = DataLayout.of(cfg).truth(dataset, split)
    return read_truth(path) if path.is_file() else None


def image_array(cfg: Config, dataset: str, split: str, img_id: str) -> np.ndarray:
    """The post's image as (H, W, 3) uint8."""
    from promu_lib.data.images import load_image, safe_join

    layout = DataLayout.of(cfg)
    path = safe_join(layout.image_dir(dataset, split), layout.image_name(dataset, img_id))
    return np.asarray(load_image(path))


def fusion_encoder(model: torch.nn.Module):
    from promu_lib.models.fusion import FusionEncoder

    if not isinstance(model.backbone, FusionEncoder):
        raise TypeError(
            f"this analysis reads the fusion encoder (model 'promu'); got a "
            f"{type(model.backbone).__name__} backbone"
        )
    return model.backbone


def patch_grid(n_patches: int) -> tuple[int, int]:
    g = math.isqrt(n_patches)
    if g * g != n_patches:
        raise ValueError(f"{n_patches} image patches are not a square grid")
    return g, g


def image_size(cfg: Config, dataset: str, split: str, img_id: str) -> tuple[int, int]:
    from PIL import Image

    from promu_lib.data.images import safe_join

    layout = DataLayout.of(cfg)
    path = safe_join(layout.image_dir(dataset, split), layout.image_name(dataset, img_id))
    with Image.open(path) as im:
        return im.size


def inference(fn: Any) -> Any:
    """``torch.inference_mode`` around ``fn``, importing torch only when it is called: study
    modules are imported by the pipeline's runner, which stays free of torch."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.inference_mode():
            return fn(*args, **kwargs)

    return wrapper
