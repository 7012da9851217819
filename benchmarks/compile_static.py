"""Does ``torch.compile`` pay on the tiny pre-training step once its shapes are static?

    .venv/bin/python benchmarks/compile_static.py [--rounds 2] [--steps 100]

The throughput issue's untried lever: inductor's fused CPU kernels with every shape fixed, so
that nothing recompiles. The tiny profile's caption batches are 14-16 tokens long; padded to a
multiple of 8 they are all 16. Four arms, each in its own fresh process on one thread, in
alternating rounds:

- ``eager``: the library's step as it trains (packed text tokens, losses over the selected
  matched pairs and objects);
- ``eager, static shapes``: the same maths with nothing data-dependent (no packing; CIT,
  COE and CIR as masked sums), patched in here only;
- ``compiled, static shapes``: that, with the whole pre-training model under
  ``torch.compile(dynamic=False)`` and text padded to a multiple of 8 (one graph, no breaks);
- ``compiled, static shapes, C++ wrapper``: that, with inductor's ``cpp_wrapper``, which calls
  the generated kernels from C++ instead of Python (less overhead per kernel launch).

Each arm: 20 warm-up steps (compilation included, inductor's on-disk cache as it is), then
``--steps`` timed steps (forward, backward, clipping, AdamW), their median. Dropout draws differ
between packed and padded layouts, so the losses agree only in trend. Results:
``benchmarks/results/compile_static.{json,md}``; toy-world shapes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from common import ROOT, markdown_table, write_results

ARMS = {
    "eager": "eager",
    "static": "eager, static shapes",
    "compiled": "compiled, static shapes",
    "compiled_cpp": "compiled, static shapes, C++ wrapper",
}


def static_patches() -> None:
    """Data-independent shapes: no token packing, masked losses (the same maths)."""
    import torch
    import torch.nn.functional as F

    from promu_lib import losses
    from promu_lib.models import encoder

    encoder.Packing.of = classmethod(lambda cls, mask: None)

    def cit_loss(img_emb, txt_emb, matched, temperature):  # Eq. 5 over the matched pairs
        m = matched.bool()
        logits = F.normalize(img_emb, dim=-1) @ F.normalize(txt_emb, dim=-1).t() / temperature
        logits = logits.masked_fill(~(m[:, None] & m[None, :]), float("-inf"))
        diag = torch.diagonal(logits)
        n = m.sum().clamp(min=1)
        it = torch.where(m, torch.logsumexp(logits, 1) - diag, 0.0).sum() / n
        ti = torch.where(m, torch.logsumexp(logits, 0) - diag, 0.0).sum() / n
        return (it + ti) / 2

    def soft_ce(logits, target_probs, mask=None):
        per_item = -(target_probs * logits.log_softmax(dim=-1)).sum(dim=-1)
        if mask is None:
            return per_item.mean()
        mask = mask.bool()
        return torch.where(mask, per_item, 0.0).sum() / mask.sum().clamp(min=1)

    losses.cit_loss, losses.soft_ce = cit_loss, soft_ce


def child(arm: str, steps: int) -> dict:
    """One arm in this process: per-step seconds after the warm-up."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    from promu_lib import losses
    from promu_lib.config import profile_config
    from promu_lib.data.captions import CaptionDataset, collate_captions
    from promu_lib.data.pseudo_labels import load_pseudo_labels
    from promu_lib.data.tokenizer import build_tokenizer
    from promu_lib.mining import mine_labels
    from promu_lib.models.builders import build_fusion_encoder
    from promu_lib.models.pretraining import PromuPretrainer
    from promu_lib.train.common import build_optimizer, seed_everything
    from promu_lib.train.pretrain import loss_weights

    if arm != "eager":
        static_patches()
    cfg = profile_config("tiny")
    labels = load_pseudo_labels(mine_labels(cfg, progress=False))
    tokenizer = build_tokenizer(cfg)
    data = CaptionDataset(cfg, tokenizer, labels, soft=True, progress=False)
    seed_everything(0, cfg.run.deterministic)
    model = PromuPretrainer(
        build_fusion_encoder(cfg, tokenizer), len(labels.nouns), len(labels.relation_labels)
    )
    optimizer = build_optimizer([{"params": list(model.parameters())}], lr=1e-3)
    weights = loss_weights(cfg)
    active = tuple(k for k, w in weights.items() if w)
    if arm == "compiled_cpp":
        import torch._inductor.config

        torch._inductor.config.cpp_wrapper = True
    forward = torch.compile(model, dynamic=False) if arm.startswith("compiled") else model
    b = cfg.pretrain.batch_size

    def batch(i: int) -> dict:
        out = collate_captions([data[(i * b + j) % len(data)] for j in range(b)], data.pad_id)
        out = {k: v for k, v in out.items() if torch.is_tensor(v)}
        if arm.startswith("compiled"):  # one length: a multiple of 8
            pad = -out["input_ids"].shape[1] % 8
            out["input_ids"] = F.pad(out["input_ids"], (0, pad), value=data.pad_id)
            out["attention_mask"] = F.pad(out["attention_mask"], (0, pad))
        return out

    def step(i: int) -> float:
        torch.manual_seed(i)
        loss = losses.total_loss(forward(batch(i), active), weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    model.train()
    t0 = time.perf_counter()
    first = [step(i) for i in range(20)]
    warmup = time.perf_counter() - t0
    seconds, last = [], 0.0
    for i in range(20, 20 + steps):
        t = time.perf_counter()
        last = step(i)
        seconds.append(time.perf_counter() - t)
    return {"warmup_s": warmup, "step_s": seconds, "loss_first": first[0], "loss_last": last}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--child", choices=list(ARMS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for _ in range(args.rounds):
        for arm in ARMS:
            cmd = [sys.executable, __file__, "--child", arm, "--steps", str(args.steps)]
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
            runs[arm].append(json.loads(out.stdout.strip().splitlines()[-1]))
    median = {a: statistics.median(s for r in rs for s in r["step_s"]) for a, rs in runs.items()}
    rows = [
        [ARMS[a], f"{1000 * median[a]:.1f}", f"{median['eager'] / median[a]:.2f}x",
         f"{max(r['warmup_s'] for r in rs):.1f}",
         " / ".join(f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}" for r in rs)]
        for a, rs in runs.items()
    ]  # fmt: skip
    md = (
        "# torch.compile with static shapes: the tiny pre-training step, one thread\n\n"
        f"Toy world, tiny profile, batch 32. Median of {args.steps} timed steps x "
        f"{args.rounds} rounds, each arm in a fresh process, arms alternating; "
        "`benchmarks/compile_static.py`.\n\n"
        + markdown_table(
            [
                "arm",
                "step ms",
                "speed-up over eager",
                "20 warm-up steps s (max)",
                "loss first -> last, per round",
            ],
            rows,
        )  # fmt: skip
        + "\n"
    )
    write_results("compile_static", {"rounds": args.rounds, "steps": args.steps, "runs": runs}, md)
    print(md)


if __name__ == "__main__":
    main()
