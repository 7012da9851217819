"""Image-text teachers: the similarity S(., .) of PROMU Eq. 6 and Eq. 9.

A :class:`Teacher` scores images (whole images or object crops) against text prompts with a
cosine similarity; the mining stage turns the scores into soft pseudo-labels
softmax(S / tau). Two implementations:

- :class:`ClipTeacher`: a CLIP checkpoint from a local path (the paper profile), never
  downloaded.
- :class:`DualTeacher`: PROMU's own Sec. 4.1 encoders (text BERT, ViT, proj_t / proj_v) trained
  with CIT on the matched caption pairs, then frozen: the teacher the paper describes (Sec.
  4.2, "the encoders defined in section 4.1"), the paper profile's default.
- :class:`ToyTeacher`: a small dual encoder (CNN image encoder, bag-of-words text encoder over
  the caption vocabulary) trained here with the CLIP loss on the MATCHED caption pairs and on
  (object crop, caption of its image) pairs, because crops are what it must score for Eq. 6.
  Words outside the caption vocabulary carry no information and are left out of the text
  embedding, so a prompt "This is an image of dog." is scored through its known words.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from promu_lib.errors import MissingAssetError

log = logging.getLogger(__name__)


class Teacher(Protocol):
    def score(self, images: list[Image.Image], prompts: list[str]) -> Tensor:
        """Cosine similarity S (N images, P prompts), on the CPU, float32."""
        ...


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# -- CLIP ------------------------------------------------------------------------------------


class ClipTeacher:
    """A transformers CLIP model and processor from ``path`` (a local directory or a hub id
    already in the local cache; ``local_files_only=True``, nothing is downloaded)."""

    def __init__(self, path: str | Path, device: str = "auto", batch_size: int = 64) -> None:
        from transformers import CLIPModel, CLIPProcessor

        try:
            self.model = CLIPModel.from_pretrained(str(path), local_files_only=True)
            self.processor = CLIPProcessor.from_pretrained(str(path), local_files_only=True)
        except OSError as e:
            raise MissingAssetError(
                "CLIP weights",
                str(path),
                "Save a CLIP model and processor there (CLIPModel/CLIPProcessor "
                ".save_pretrained, e.g. openai/clip-vit-base-patch32) and set "
                f"mining.clip_weights to that directory ({type(e).__name__}: {str(e)[:200]})",
            ) from e
        self.device = _device(device)
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self._prompt_cache: tuple[tuple[str, ...], Tensor] | None = None

    @staticmethod
    def _pooled(out: object) -> Tensor:
        # transformers 5 returns a ModelOutput whose pooler_output is projected; 4.x a tensor
        return out.pooler_output if hasattr(out, "pooler_output") else out  # type: ignore[return-value]

    @torch.inference_mode()
    def encode_prompts(self, prompts: list[str]) -> Tensor:
        key = tuple(prompts)
        if self._prompt_cache is None or self._prompt_cache[0] != key:
            feats = []
            for i in range(0, len(prompts), self.batch_size):
                tok = self.processor.tokenizer(
                    prompts[i : i + self.batch_size],
                    padding=True,
                    truncation=True,
                    return_tensors="pt",
                ).to(self.device)
                feats.append(self._pooled(self.model.get_text_features(**tok)).float())
            self._prompt_cache = (key, F.normalize(torch.cat(feats), dim=-1))
        return self._prompt_cache[1]

    @torch.inference_mode()
    def score(self, images: list[Image.Image], prompts: list[str]) -> Tensor:
        text = self.encode_prompts(prompts)
        out = []
        for i in range(0, len(images), self.batch_size):
            pix = self.processor.image_processor(
                images=images[i : i + self.batch_size], return_tensors="pt"
            )["pixel_values"].to(self.device)
            img = F.normalize(
                self._pooled(self.model.get_image_features(pixel_values=pix)).float(), dim=-1
            )
            out.append((img @ text.t()).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(prompts))


# -- the toy dual encoder ---------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words: the toy teacher's tokenizer."""
    return _WORD.findall(text.lower())


def build_vocab(texts: Sequence[str]) -> list[str]:
    """Every word of ``texts``, most frequent first (ties alphabetical); id 0 is reserved."""
    counts = Counter(w for t in texts for w in words(t))
    return ["<unk>"] + sorted(counts, key=lambda w: (-counts[w], w))


def images_to_tensor(images: Sequence[Image.Image], size: int) -> Tensor:
    """(N, 3, size, size) uint8, each image resized (bilinear) to a square."""
    arr = (
        np.stack(
            [np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)) for im in images]
        )
        if images
        else np.zeros((0, size, size, 3), np.uint8)
    )
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


class ToyDualEncoder(nn.Module):
    """CNN image tower and bag-of-words text tower into a shared ``dim``-space (CLIP-style)."""

    def __init__(self, vocab_size: int, dim: int = 64) -> None:
        super().__init__()
        self.image_tower = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, dim, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(dim, dim),
        )
        self.word_emb = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.text_proj = nn.Linear(dim, dim, bias=False)  # no words -> zero vector -> S = 0
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, images: Tensor) -> Tensor:
        """images (N, 3, S, S) uint8 -> (N, dim) L2-normalised."""
        x = images.float() / 127.5 - 1.0
        return F.normalize(self.image_tower(x), dim=-1)

    def encode_text(self, ids: Tensor) -> Tensor:
        """ids (N, L), 0 = padding or unknown word (left out of the mean) -> (N, dim)."""
        mask = (ids > 0).unsqueeze(-1).float()
        mean = (self.word_emb(ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return F.normalize(self.text_proj(mean), dim=-1)

    def clip_loss(self, images: Tensor, ids: Tensor) -> Tensor:
        logits = self.logit_scale.clamp(max=math.log(100)).exp() * (
            self.encode_image(images) @ self.encode_text(ids).t()
        )
        target = torch.arange(len(ids), device=ids.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


class ToyTeacher:
    """A trained :class:`ToyDualEncoder` with its vocabulary and input size."""

    def __init__(
        self, model: ToyDualEncoder, vocab: list[str], image_size: int, device: str = "cpu"
    ) -> None:
        self.model = model.eval()
        self.vocab = vocab
        self.word2id = {w: i for i, w in enumerate(vocab)}
        self.image_size = image_size
        self.device = _device(device)
        self.model.to(self.device)

    def encode_ids(self, texts: Sequence[str]) -> Tensor:
        rows = [[self.word2id.get(w, 0) for w in words(t)] for t in texts]
        ids = torch.zeros(len(rows), max([1, *map(len, rows)]), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return ids

    @torch.inference_mode()
    def score(self, images: list[Image.Image], prompts: list[str]) -> Tensor:
        text = self.model.encode_text(self.encode_ids(prompts).to(self.device))
        pix = images_to_tensor(images, self.image_size).to(self.device)
        return (self.model.encode_image(pix) @ text.t()).float().cpu()

    # -- persistence (safetensors weights + JSON vocabulary) ----------------------------------
    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save

        from promu_lib.io import atomic_write_bytes, atomic_write_json

        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        atomic_write_bytes(directory / "teacher.safetensors", save(state))
        dim = self.model.word_emb.embedding_dim
        atomic_write_json(
            directory / "teacher.json",
            {"vocab": self.vocab, "dim": dim, "image_size": self.image_size},
        )

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> ToyTeacher:
        import json

        from safetensors.torch import load_file

        directory = Path(directory)
        meta = json.loads((directory / "teacher.json").read_text(encoding="utf-8"))
        model = ToyDualEncoder(len(meta["vocab"]), meta["dim"])
        model.load_state_dict(load_file(str(directory / "teacher.safetensors")))
        return cls(model, meta["vocab"], meta["image_size"], device)


def train_toy_teacher(
    captions: Sequence[str],
    images: Tensor,
    crops: Sequence[Tensor] = (),
    *,
    steps: int = 300,
    dim: int = 64,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    device: str = "cpu",
    log_every: int = 0,
) -> ToyTeacher:
    """Train the toy dual encoder with the CLIP loss on matched (image, caption) pairs.

    images (N, 3, S, S) uint8, one per caption; crops[i] (n_i, 3, S, S) uint8 the object crops
    of image i (may be empty). Each step draws ``batch_size`` pairs; when crops are given it
    adds a second CLIP loss between one random crop per drawn image and that image's caption.
    """
    if len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions but {len(images)} images")
    if len(captions) < 2:
        raise ValueError("the toy teacher needs at least 2 matched caption pairs")
    dev = _device(device)
    g = torch.Generator().manual_seed(seed)
    vocab = build_vocab(captions)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        model = ToyDualEncoder(len(vocab), dim).to(dev)
    teacher = ToyTeacher(model, vocab, images.shape[-1], str(dev))
    ids = teacher.encode_ids(captions)
    has_crop = torch.tensor([len(c) > 0 for c in crops], dtype=torch.bool) if crops else None
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    start = time.time()
    bs = min(batch_size, len(captions))
    for step in range(1, steps + 1):
        idx = torch.randperm(len(captions), generator=g)[:bs]
        loss = model.clip_loss(images[idx].to(dev), ids[idx].to(dev))
        if has_crop is not None:
            with_crop = idx[has_crop[idx]]
            if len(with_crop) >= 2:
                picks = [
                    crops[i][torch.randint(len(crops[i]), (1,), generator=g)].squeeze(0)
                    for i in with_crop.tolist()
                ]
                loss = loss + model.clip_loss(torch.stack(picks).to(dev), ids[with_crop].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log_every and (step % log_every == 0 or step == steps):
            log.info(
                "toy teacher step %d/%d loss %.3f (%.1fs)",
                step,
                steps,
                loss.item(),
                time.time() - start,
            )
    model.eval()
    return teacher


# -- PROMU Sec. 4.1's dual encoder as the teacher ---------------------------------------------


class DualTeacher:
    """The teacher Sec. 4.2 builds "with the encoders defined in section 4.1": PROMU's text
    BERT and ViT with their projections proj_t / proj_v (Eq. 4), trained with CIT (Eq. 5) on
    the matched caption pairs (:func:`train_dual_teacher`), then frozen. S = cosine of the
    projected [CLS] states. The fusion layers play no part (they come later, in Eq. 2)."""

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer: object,
        max_len: int,
        image_size: int,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        self.encoder = encoder.eval()
        self.tokenizer, self.max_len, self.image_size = tokenizer, max_len, image_size
        self.device = _device(device)
        self.batch_size = batch_size
        self.encoder.to(self.device)

    def text_embedding(self, texts: Sequence[str]) -> Tensor:
        """(N, D) proj_t(t_CLS) of each text (Eq. 4), not normalised."""
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_len,
            return_tensors="pt",
        )  # fmt: skip
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        return self.encoder.text_embedding(self.encoder.encode_text(ids, mask)[:, 0])

    def image_embedding(self, pixels: Tensor) -> Tensor:
        """(N, D) proj_v(v_CLS) of uint8 images (N, 3, S, S) (Eq. 4), not normalised."""
        from promu_lib.data.datasets import normalize

        return self.encoder.image_embedding(self.encoder.encode_image(normalize(pixels))[:, 0])

    @torch.inference_mode()
    def score(self, images: list[Image.Image], prompts: list[str]) -> Tensor:
        text = F.normalize(self.text_embedding(prompts), dim=-1)
        out = []
        for i in range(0, len(images), self.batch_size):
            pix = images_to_tensor(images[i : i + self.batch_size], self.image_size)
            out.append(F.normalize(self.image_embedding(pix.to(self.device)), dim=-1) @ text.t())
        return torch.cat(out).float().cpu() if out else torch.zeros(0, len(prompts))

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save

        from promu_lib.io import atomic_write_bytes

        state = {k: v.detach().cpu().contiguous() for k, v in self.encoder.state_dict().items()}
        atomic_write_bytes(Path(directory) / "teacher.safetensors", save(state))

    @classmethod
    def load(cls, directory: str | Path, cfg: object, device: str = "cpu") -> DualTeacher:
        """The teacher saved in ``directory`` by :meth:`save`, rebuilt from ``cfg``."""
        from safetensors.torch import load_file

        teacher = _new_dual_teacher(cfg, device)
        teacher.encoder.load_state_dict(load_file(str(Path(directory) / "teacher.safetensors")))
        return teacher


def _new_dual_teacher(cfg: object, device: str) -> DualTeacher:
    """PROMU's encoders as ``cfg`` builds them (pretrained BERT/ViT in the paper profile)."""
    from promu_lib.data.tokenizer import build_tokenizer
    from promu_lib.models.builders import build_fusion_encoder

    tokenizer = build_tokenizer(cfg)
    encoder = build_fusion_encoder(cfg, tokenizer)
    return DualTeacher(
        encoder, tokenizer, cfg.data.max_len, cfg.data.image_size, device, cfg.mining.batch_size
    )


def train_dual_teacher(
    cfg: object, captions: Sequence[str], images: Tensor, log_every: int = 0
) -> DualTeacher:
    """Train PROMU's dual encoder with CIT (Eq. 5) on matched pairs: ``images`` (N, 3, S, S)
    uint8 at ``data.image_size``, one per caption; ``mining.teacher_steps`` steps of
    ``mining.teacher_batch_size`` pairs at ``mining.teacher_lr``, seeded by ``mining.seed``."""
    from promu_lib.losses import cit_loss

    mc = cfg.mining
    if len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions but {len(images)} images")
    if len(captions) < 2:
        raise ValueError("the dual-encoder teacher needs at least 2 matched caption pairs")
    g = torch.Generator().manual_seed(mc.seed)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(mc.seed)
        teacher = _new_dual_teacher(cfg, cfg.run.device)
    enc = teacher.encoder
    opt = torch.optim.AdamW(enc.parameters(), lr=mc.teacher_lr, weight_decay=1e-4)
    enc.train()
    bs = min(mc.teacher_batch_size, len(captions))
    all_matched = torch.ones(bs, dtype=torch.bool, device=teacher.device)
    start = time.time()
    for step in range(1, mc.teacher_steps + 1):
        idx = torch.randperm(len(captions), generator=g)[:bs]
        z_t = teacher.text_embedding([captions[i] for i in idx.tolist()])
        z_v = teacher.image_embedding(images[idx].to(teacher.device))
        loss = cit_loss(z_v, z_t, all_matched, enc.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        enc.clamp_temperature_()
        if log_every and (step % log_every == 0 or step == mc.teacher_steps):
            log.info(
                "dual-encoder teacher step %d/%d CIT %.3f (%.1fs)",
                step, mc.teacher_steps, loss.item(), time.time() - start,
            )  # fmt: skip
    enc.eval()
    return teacher
