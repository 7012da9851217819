"""HVPNeT (HMNeT): hierarchical visual prefix for a BERT-style text encoder.

HVPNeT paper, Sec. 3. The global image and the top-m object crops go through a CNN pyramid
(Sec. 3.2, Eq. 1-2), each block's map average-pooled to p x p and mapped by a 1x1 conv to the
text hidden size: p*p prompt tokens per block (``hvpnet.prompt_len`` = p*p). Per text layer l
a dynamic gate (Eq. 3-4: mean over blocks of the globally pooled features -> Linear ->
LeakyReLU -> softmax over the c=4 blocks) mixes the blocks (Eq. 5); the mixed tokens of the
global image and the objects are concatenated (Eq. 6) and projected to that layer's prefix keys
and values (Eq. 8), which every self-attention layer attends to (Eq. 9).

Two set-ups, read against the paper:
- Pooling (Eq. 1-2). The paper leaves the last block unpooled (Eq. 1, V_c = Conv1x1(F_c)) and
  pools blocks 1..c-1 to its size (Eq. 2): a prefix of h*w*(m+1) tokens (Eq. 8), 7x7 = 49 per
  image for ResNet-50 at 224 px. The reference code pools every block to 2x2 (prompt_len 4), and
  so does the ``paper`` profile (the released numbers were made that way; 16 prefix tokens per
  layer instead of 196). ``prompt_len`` = the last block's h*w is the paper's Eq. 1-2 exactly
  (adaptive pooling of that block to its own size is the identity): 49 for ResNet-50 at 224
  px; in ``tiny`` (tiny-cnn at 32 px, a 2x2 last block) the default 4 already is.
- Key/value map (Eq. 8). The paper has one linear map W_l^phi per layer. By default a shared
  Linear(H, mid)-Tanh runs first, then the per-layer Linear(mid, 2H): the reference code's
  Linear-Tanh-Linear, with the per-layer split of Eq. 8. ``hvpnet.mid_dim = 0`` is Eq. 8 as
  written: the per-layer Linear(H, 2H) alone.

Differences from the reference code (zjunlp/HVPNeT ``models/bert_model.py``), on purpose:
- the gate mixes the pyramid *blocks*, as the paper defines it; the reference concatenates the
  4 pooled maps, projects them, and gates 4 chunks of the projection output instead;
- prefix keys/values are split into heads like the text keys (``(B, P, H) -> (B, nh, P, hd)``
  by splitting H), where the reference reshapes (B, P, H) as a view (B, nh, P, hd), which
  scrambles tokens and heads;
- padded object slots are masked out of attention instead of attending to zero-image features.
``cfg.hvpnet.layout = "reference"`` (``ReferenceVisualPrefix``) computes the reference code's
function instead, to load and reproduce checkpoints trained with it; the benchmark
``benchmarks/hvpnet_reference.py`` checks it equal to the reference code on the same weights.

Variants (``cfg.hvpnet.variant``, HVPNeT paper Sec. 4.2 "variants of our model"):
- ``full``: the model above.
- ``single``: "without the pyramid structure, which maps the visual features derived from
  4-th block of ResNet to the last layer corresponding to BERT" -> block 4 only, prefix only
  at the last text layer.
- ``flat``: "we assign the output of the 4-th block of ResNet as the visual features and then
  map the visual features to each layer corresponding to BERT" -> block 4, every layer, no gate.
- ``1v3``: "directly map visual features in one block to the three layers in BERT" -> block
  i feeds layers [3i, 3i+3) for 12 layers; in general layer l gets block floor(l * c / L).
- ``onlyobj``: "only adopting the object-level features" -> the full model without the
  global image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promu_lib.config import HVPNetConfig
from promu_lib.models.encoder import BertEncoder, Prefix
from promu_lib.models.pyramid import build_pyramid

VARIANTS = ("full", "single", "flat", "1v3", "onlyobj")
LAYOUTS = ("paper", "reference")
N_BLOCKS = 4  # pyramid levels (ResNet's 4 blocks)


@dataclass
class VisualPrefix:
    prefix: list[Prefix | None]  # per text layer, (B, nh, P, hd) keys and values
    mask: Tensor  # (B, P) bool, False for padded object slots (all True in the reference layout)
    # (B, n_images, num_layers, 4) for the gated variants (image 0 = the global image, except
    # for onlyobj), else None
    gates: Tensor | None


class _PyramidPrefix(nn.Module):
    """What both layouts share: the CNN pyramid (frozen or trained) and the stack of images."""

    def __init__(
        self, cfg: HVPNetConfig, hidden_size: int, num_layers: int, num_heads: int
    ) -> None:
        super().__init__()
        if cfg.variant not in VARIANTS:
            raise ValueError(f"unknown HVPNeT variant {cfg.variant!r}; expected one of {VARIANTS}")
        side = math.isqrt(cfg.prompt_len)
        if side * side != cfg.prompt_len:
            raise ValueError(
                f"hvpnet.prompt_len must be a square (p x p pooled map), got {cfg.prompt_len}"
            )
        self.cfg, self.variant, self.side = cfg, cfg.variant, side
        self.num_layers, self.num_heads, self.hidden = num_layers, num_heads, hidden_size
        self.backbone = build_pyramid(cfg.backbone, cfg.backbone_weights, cfg.image_size)
        self.frozen = cfg.freeze_backbone
        if self.frozen:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> _PyramidPrefix:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # frozen BatchNorm statistics
        return self

    @property
    def uses_global_image(self) -> bool:
        return self.variant != "onlyobj"

    def image_stack(
        self, image: Tensor, objects: Tensor, object_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(B, n, 3, S, S) images (global first unless ``onlyobj``) and their (B, n) validity.

        Only the first ``cfg.n_objects`` object slots are used (the data puts the top-scoring
        boxes first)."""
        objects, object_mask = (
            objects[:, : self.cfg.n_objects],
            object_mask[:, : self.cfg.n_objects],
        )
        if not self.uses_global_image:
            return objects, object_mask.bool()
        valid = torch.cat([object_mask.new_ones(object_mask.shape[0], 1), object_mask], 1).bool()
        return torch.cat([image[:, None], objects], 1), valid

    def features(
        self, image: Tensor, objects: Tensor, object_mask: Tensor, given: list[Tensor] | None
    ) -> tuple[list[Tensor], Tensor]:
        """The pooled pyramid of the image stack (``given`` when precomputed) and its validity."""
        images, valid = self.image_stack(image, objects, object_mask)
        return (self.pyramid_features(images, valid) if given is None else given), valid

    def pyramid_features(self, images: Tensor, valid: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def _backbone(self, images: Tensor) -> list[Tensor]:
        """(N, 3, S, S) -> the 4 pyramid maps; no autograd graph when the backbone is frozen.

        Images go in channels-last: oneDNN's convolutions then skip their layout reorders
        (ResNet-50 at 224 px, 20 images, 2 CPU threads: 1.74 -> 1.24 s per forward)."""
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.backbone(images)


class HierarchicalVisualPrefix(_PyramidPrefix):
    """Images -> per-layer prefix keys/values for a text encoder of ``num_layers`` x ``hidden``."""

    def __init__(
        self, cfg: HVPNetConfig, hidden_size: int, num_layers: int, num_heads: int
    ) -> None:
        super().__init__(cfg, hidden_size, num_layers, num_heads)
        # Eq. 1-2: 1x1 conv per block to the text hidden size
        self.block_proj = nn.ModuleList(
            nn.Conv2d(c, hidden_size, 1) for c in self.backbone.channels
        )
        if self.variant in ("full", "onlyobj"):
            # Eq. 3, all layers' W_l at once: (B*n, H) -> (B*n, L * c)
            self.gate = nn.Linear(hidden_size, num_layers * N_BLOCKS)
        else:
            self.register_buffer("routing", self._fixed_routing(), persistent=False)
        # Eq. 8: the per-layer W_l^phi to keys and values, after a shared Linear-Tanh (the
        # reference's) unless mid_dim is 0 (Eq. 8 as written: one linear map per layer)
        if cfg.mid_dim > 0:
            self.mid: nn.Module = nn.Sequential(nn.Linear(hidden_size, cfg.mid_dim), nn.Tanh())
        else:
            self.mid = nn.Identity()
        d_in = cfg.mid_dim or hidden_size
        n_out = 1 if self.variant == "single" else num_layers
        self.kv_weight = nn.Parameter(torch.randn(n_out, d_in, 2 * hidden_size) * 0.02)
        self.kv_bias = nn.Parameter(torch.zeros(n_out, 2 * hidden_size))

    def _fixed_routing(self) -> Tensor:
        """(L', c) block weights of the gate-free variants (L' = 1 for ``single``)."""
        L = self.num_layers
        if self.variant == "single":
            return F.one_hot(torch.tensor([N_BLOCKS - 1]), N_BLOCKS).float()
        if self.variant == "flat":
            return F.one_hot(torch.full((L,), N_BLOCKS - 1), N_BLOCKS).float()
        return F.one_hot(torch.arange(L) * N_BLOCKS // L, N_BLOCKS).float()  # 1v3

    def pyramid_features(self, images: Tensor, valid: Tensor) -> list[Tensor]:
        """Backbone pyramid pooled to p x p: images (B, n, 3, S, S) -> 4 x (B, n, C_i, p, p).

        Only valid images run through the CNN (padded slots stay zero). With a frozen backbone
        this is the expensive, cacheable part: a caller may precompute it and pass the result
        to ``forward(features=...)``.
        """
        B, n = valid.shape
        pooled = [F.adaptive_avg_pool2d(f, self.side) for f in self._backbone(images[valid])]
        out = []
        for f in pooled:
            full = f.new_zeros(B, n, *f.shape[1:])
            full[valid] = f
            out.append(full)
        return out

    def forward(
        self,
        image: Tensor,
        objects: Tensor,
        object_mask: Tensor,
        features: list[Tensor] | None = None,
    ) -> VisualPrefix:
        """image (B, 3, S, S), objects (B, m, 3, S, S), object_mask (B, m) -> per-layer prefix."""
        features, valid = self.features(image, objects, object_mask, features)
        B, n = valid.shape
        T, H = self.side * self.side, self.hidden
        # Eq. 1-2: V_i = Conv1x1(Pool(F_i)) -> (B*n, c, T, H)
        V = torch.stack(
            [
                proj(f.flatten(0, 1)).flatten(2).transpose(1, 2)
                for proj, f in zip(self.block_proj, features)
            ],
            dim=1,
        )
        if self.variant in ("full", "onlyobj"):
            pooled = V.mean(dim=(1, 2))  # (B*n, H): mean over blocks of the pooled maps
            logits = F.leaky_relu(self.gate(pooled)).view(B * n, self.num_layers, N_BLOCKS)  # Eq. 3
            g = logits.softmax(-1)  # Eq. 4
            mixed = torch.einsum("zlc,zcth->zlth", g, V)  # Eq. 5, (B*n, L, T, H)
            gates = g.view(B, n, self.num_layers, N_BLOCKS)
        else:
            mixed = torch.einsum("lc,zcth->zlth", self.routing, V)
            gates = None
        Lp = mixed.shape[1]
        # Eq. 6: concat global + objects per layer -> (B, L', n*T, H)
        mixed = mixed.view(B, n, Lp, T, H).permute(0, 2, 1, 3, 4).reshape(B, Lp, n * T, H)
        kv = torch.einsum("blpm,lmo->blpo", self.mid(mixed), self.kv_weight) + self.kv_bias[:, None]
        P = n * T
        # per-head split of each prefix token's key and value: (B, L', 2, nh, P, hd)
        kv = kv.view(B, Lp, P, 2, self.num_heads, H // self.num_heads).permute(0, 1, 3, 4, 2, 5)
        layers = [(kv[:, i, 0], kv[:, i, 1]) for i in range(Lp)]
        prefix = [None] * (self.num_layers - 1) + layers if self.variant == "single" else layers
        mask = valid[:, :, None].expand(B, n, T).reshape(B, P)
        return VisualPrefix(prefix, mask, gates)


class ReferenceVisualPrefix(_PyramidPrefix):
    """The reference code's visual prefix (zjunlp/HVPNeT ``models/bert_model.py``,
    ``ImageModel`` + ``get_visual_prompt``), computed exactly, for its checkpoints:

    1. each block's map is average-pooled with kernel = stride = size // p (on ResNet-50's 7x7
       block-4 map at 224 px: the top-left 6x6 only), every image slot through the CNN: padded
       object slots are zero images, and they stay in the prefix (attended, not masked);
    2. the p x p maps are concatenated over channels (sum C = 3840) and that (C, p, p) memory
       is read as T = p*p tokens of C features (token t = channels [tC/T, (t+1)C/T) at all
       positions, not one position per token);
    3. ``proj`` = Linear(C, mid) - Tanh - Linear(mid, 4 * 2H) per token, split in 4 chunks;
    4. per layer l a gate softmax(LeakyReLU(W_l [mean of the 4 chunks, flattened over the T
       tokens])) mixes the 4 chunks (``gate`` stacks the reference's 12 ``gates`` Linears);
    5. global image and objects concatenated (P = n*T tokens of 2H); keys = first H, values =
       last H, each (B, P, H) reshaped in memory order to (B, nh, P, hd), not split per head.

    Remaining difference: the reference trains with the (optimiser-frozen) ResNet in train mode,
    BatchNorm on batch statistics; here a frozen backbone stays in eval mode. Only the full
    model exists in the reference code.
    """

    def __init__(
        self, cfg: HVPNetConfig, hidden_size: int, num_layers: int, num_heads: int
    ) -> None:
        super().__init__(cfg, hidden_size, num_layers, num_heads)
        if cfg.variant != "full":
            raise ValueError(
                f"hvpnet.layout 'reference' has only the full model, got variant {cfg.variant!r}"
            )
        if cfg.mid_dim < 1:
            raise ValueError(
                "hvpnet.layout 'reference' needs hvpnet.mid_dim >= 1 (its Linear-Tanh)"
            )
        self.proj = nn.Sequential(
            nn.Linear(sum(self.backbone.channels), cfg.mid_dim),
            nn.Tanh(),
            nn.Linear(cfg.mid_dim, N_BLOCKS * 2 * hidden_size),
        )
        self.gate = nn.Linear(cfg.prompt_len * 2 * hidden_size, num_layers * N_BLOCKS)

    def pyramid_features(self, images: Tensor, valid: Tensor) -> list[Tensor]:
        """images (B, n, 3, S, S) -> 4 x (B, n, C_i, p, p), every slot (padded ones too).

        A frozen backbone is in eval mode, so every all-zero image (the padded object slots)
        has the same maps: the CNN sees one of them, and its pooled maps fill every such slot.
        """
        B, n = valid.shape
        flat = images.flatten(0, 1)
        source = torch.arange(B * n, device=images.device)  # slot -> row of the CNN batch
        if self.frozen:
            blank = flat.flatten(1).eq(0).all(1)
            if int(blank.sum()) > 1:
                keep = torch.cat([(~blank).nonzero().squeeze(1), blank.nonzero()[:1, 0]])
                source = torch.empty_like(source)
                source[keep] = torch.arange(len(keep), device=images.device)
                source[blank] = len(keep) - 1
                flat = flat[keep]
        out = []
        for f in self._backbone(flat):
            size = f.shape[-1]
            if size < self.side or size // (size // self.side) != self.side:
                raise ValueError(
                    f"a {size}x{size} block map does not pool to {self.side}x{self.side} with "
                    "the reference's kernel (size // p); use an image size such as 64, 128 or 224"
                )
            pooled = F.avg_pool2d(f, size // self.side)[source]  # stride = kernel
            out.append(pooled.view(B, n, *pooled.shape[1:]))
        return out

    def forward(
        self,
        image: Tensor,
        objects: Tensor,
        object_mask: Tensor,
        features: list[Tensor] | None = None,
    ) -> VisualPrefix:
        features, valid = self.features(image, objects, object_mask, features)
        B, n = valid.shape
        T, H, L, c = self.cfg.prompt_len, self.hidden, self.num_layers, N_BLOCKS
        x = torch.cat([f.flatten(0, 1) for f in features], dim=1).reshape(B * n, T, -1)
        chunks = self.proj(x).view(B * n, T, c, 2 * H)
        logits = F.leaky_relu(self.gate(chunks.mean(2).flatten(1))).view(B * n, L, c)
        g = logits.softmax(-1)
        mixed = torch.einsum("zlc,ztch->zlth", g, chunks)
        P = n * T
        kv = mixed.view(B, n, L, T, 2 * H).transpose(1, 2).reshape(B, L, P, 2 * H)
        keys = reference_heads(kv[..., :H], self.num_heads)
        values = reference_heads(kv[..., H:], self.num_heads)
        prefix: list[Prefix | None] = [(keys[:, i], values[:, i]) for i in range(L)]
        return VisualPrefix(prefix, valid.new_ones(B, P), g.view(B, n, L, c))


def reference_heads(x: Tensor, num_heads: int) -> Tensor:
    """(..., P, H) -> (..., nh, P, hd) in memory order, the reference's ``reshape(bsz, 12, -1,
    64)``: head h reads the flat P*H values [h*P*hd, (h+1)*P*hd), i.e. whole tokens' vectors
    cut into hd-sized pieces, not the h-th slice of every token (the per-head split)."""
    *lead, P, H = x.shape
    return x.reshape(*lead, num_heads, P, H // num_heads)


class HVPNet(nn.Module):
    """Text encoder + hierarchical visual prefix; ``token_states(batch)`` -> (B, L, H) states."""

    def __init__(self, text: BertEncoder, cfg: HVPNetConfig) -> None:
        super().__init__()
        self.text = text
        tc = text.cfg
        if cfg.layout not in LAYOUTS:
            raise ValueError(f"unknown hvpnet.layout {cfg.layout!r}; expected one of {LAYOUTS}")
        prefix_cls = (
            ReferenceVisualPrefix if cfg.layout == "reference" else HierarchicalVisualPrefix
        )
        self.visual = prefix_cls(cfg, tc.hidden_size, tc.num_layers, tc.num_heads)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        image: Tensor,
        objects: Tensor,
        object_mask: Tensor,
        features: list[Tensor] | None = None,
        output_attentions: bool = False,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        vp = self.visual(image, objects, object_mask, features)
        out = self.text(
            input_ids,
            attention_mask,
            prefix=vp.prefix,
            prefix_mask=vp.mask,
            output_attentions=output_attentions,
        )
        extras: dict = {}
        if vp.gates is not None:
            extras["gates"] = vp.gates
        if output_attentions:
            extras["attentions"] = out.attentions
        return out.last_hidden_state, extras

    def token_states(self, batch: dict, output_attentions: bool = False) -> tuple[Tensor, dict]:
        return self(
            batch["input_ids"],
            batch["attention_mask"],
            batch["image"],
            batch["objects"],
            batch["object_mask"],
            batch.get("pyramid_features"),
            output_attentions,
        )
