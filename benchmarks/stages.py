"""Speed and peak memory of each stage, at the tiny profile's shapes and at the paper's.

    .venv/bin/python benchmarks/stages.py                   # everything, 2 threads
    .venv/bin/python benchmarks/stages.py --only pretrain_step finetune_step --repeats 10

Each measurement runs in its own process (a clean peak RSS) on the toy world (built on the
fly into a temporary directory, so nothing in ``runs/`` is touched) and reports the median of
``--repeats`` timed repeats after a warm-up:

- ``data``: reading a split and building its tensors (posts/s), then one pass of the training
  loader (samples/s);
- ``mining``: the label-mining stage from scratch (toy teacher training + scoring; objects/s)
  and its cached rerun;
- ``pretrain_step``: one optimiser step of Eq. 11 (all four losses), tiny and paper shapes;
- ``finetune_step``: one optimiser step of each fine-tuned model (bert, hvpnet, promu) on
  MNER and MRE, tiny and paper shapes; for HVPNeT also ``step_s_cached_cnn``, the step as the
  fine-tuning loop runs it, with the frozen CNN's maps precomputed once per split;
- ``inference``: decoding a test split (posts/s) under ``torch.inference_mode``.

"paper" shapes: BERT-base (12 x 768, 30522 word pieces) + ViT-B/16 at 224 + 6 fusion layers,
HVPNeT with a ResNet-50 pyramid at 224 (frozen, as in the paper profile), text length 80,
random weights (only the shapes matter for speed). Their batch is ``--paper-batch`` (8 by
default: the configured 128 for pre-training does not fit in a 24 GiB CPU machine), so compare
samples/s, not step times. Results: ``benchmarks/results/stages.{json,md}``; a run restricted
with ``--only``/``--shapes``/``--models`` replaces its own rows there and keeps the others.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import RESULTS, markdown_table, peak_rss_mib, run_child, timed, write_results

MEASUREMENTS = ("data", "mining", "pretrain_step", "finetune_step", "inference")

PAPER_SHAPES: dict[str, Any] = {
    "data.image_size": 224,
    "data.max_len": 80,
    "text.vocab_size": 30522,
    "text.hidden_size": 768,
    "text.num_layers": 12,
    "text.num_heads": 12,
    "text.intermediate_size": 3072,
    "text.max_position": 512,
    "text.attention_dropout": 0.1,
    "vision.image_size": 224,
    "vision.patch_size": 16,
    "vision.hidden_size": 768,
    "vision.num_layers": 12,
    "vision.num_heads": 12,
    "vision.intermediate_size": 3072,
    "vision.attention_dropout": 0.1,
    "fusion.num_layers": 6,
    "fusion.projection_dim": 256,
    "hvpnet.backbone": "resnet50",
    "hvpnet.image_size": 224,
    "hvpnet.mid_dim": 800,
    "hvpnet.freeze_backbone": True,
}


def _config(work: Path, shape: str, batch: int | None = None) -> Any:
    from promu_lib.config import load_config

    over: dict[str, Any] = {
        "data.root": str(work / "data"),
        "run.output_dir": str(work / "runs"),
        "run.progress": False,
    }
    if shape == "paper":
        over.update(PAPER_SHAPES)
    if batch:
        over.update({"pretrain.batch_size": batch, "finetune.batch_size": batch})
    return load_config("tiny", overrides=over)


def _world(cfg: Any) -> None:
    from promu_lib.data.toyworld import build_toy_world

    build_toy_world(cfg, progress=False)


# -- the measurements (each runs in a child process) -------------------------------------------


def measure_data(cfg: Any, repeats: int) -> dict[str, Any]:
    from promu_lib.data.datasets import load_split, make_loader
    from promu_lib.data.tokenizer import build_tokenizer

    tok = build_tokenizer(cfg)
    out: dict[str, Any] = {}
    for dataset in ("twitter2015", "mnre"):
        holder: dict[str, Any] = {}

        def load(dataset: str = dataset, holder: dict = holder) -> None:
            holder["ds"] = load_split(cfg, dataset, "train", tok, progress=False)

        t = timed(load, repeats, warmup=0)
        ds = holder["ds"]
        loader = make_loader(ds, cfg.finetune.batch_size, True, 0)
        e = timed(lambda loader=loader: sum(1 for _ in loader), repeats)
        out[dataset] = {
            "posts": len(ds),
            "build_posts_per_s": len(ds) / t["median_s"],
            "loader_samples_per_s": len(ds) / e["median_s"],
        }
    return out


def measure_mining(cfg: Any, repeats: int) -> dict[str, Any]:
    import time

    from promu_lib.mining import load_pseudo_labels, mine_labels

    t0 = time.perf_counter()
    labels = load_pseudo_labels(mine_labels(cfg, progress=False))
    cold = time.perf_counter() - t0
    objects = int(labels.object_mask.sum())
    rerun = timed(lambda: mine_labels(cfg, progress=False), repeats, warmup=0)
    return {
        "images": len(labels.keys),
        "objects": objects,
        "cold_s": cold,
        "objects_per_s_cold": objects / cold,
        "cached_rerun_s": rerun["median_s"],
    }


def measure_pretrain_step(cfg: Any, repeats: int) -> dict[str, Any]:
    import torch

    from promu_lib import losses
    from promu_lib.data.captions import CaptionDataset, collate_captions
    from promu_lib.data.tokenizer import build_tokenizer
    from promu_lib.mining import load_pseudo_labels, mine_labels
    from promu_lib.models.builders import build_fusion_encoder
    from promu_lib.models.pretraining import PromuPretrainer
    from promu_lib.train.pretrain import loss_weights

    labels = load_pseudo_labels(mine_labels(cfg, progress=False))
    tok = build_tokenizer(cfg)
    data = CaptionDataset(cfg, tok, labels, soft=True, progress=False)
    b = cfg.pretrain.batch_size
    batch = collate_captions([data[i] for i in range(b)], data.pad_id)
    torch.manual_seed(0)
    model = PromuPretrainer(
        build_fusion_encoder(cfg, tok), len(labels.nouns), len(labels.relation_labels)
    ).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    weights = loss_weights(cfg)

    def step() -> None:
        loss = losses.total_loss(model(batch), weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = timed(step, repeats)
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "batch": b,
        "params_m": n_params / 1e6,
        "step_s": t["median_s"],
        "samples_per_s": b / t["median_s"],
        "peak_rss_mib": peak_rss_mib(),
    }


def _task_batch(cfg: Any, dataset: str, model: str, split: str, batch: int) -> tuple:
    from promu_lib.data.datasets import collate, load_split
    from promu_lib.data.tokenizer import build_tokenizer

    tok = build_tokenizer(cfg)
    ds = load_split(cfg, dataset, split, tok, with_images=model != "bert", progress=False)
    return tok, ds, collate([ds[i] for i in range(batch)], pad_id=ds.pad_id)


def measure_finetune_step(cfg: Any, repeats: int, model: str, dataset: str) -> dict[str, Any]:
    import torch

    from promu_lib.train.finetune import build_model, task_of
    from promu_lib.train.frozen_features import frozen_pyramid

    b = cfg.finetune.batch_size
    tok, _, batch = _task_batch(cfg, dataset, model, "train", b)
    torch.manual_seed(0)
    net = build_model(cfg, task_of(dataset), model, tok).train()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        net(batch)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = timed(step, repeats)
    result = {
        "batch": b,
        "step_s": t["median_s"],
        "samples_per_s": b / t["median_s"],
        "peak_rss_mib": peak_rss_mib(),
    }
    visual = frozen_pyramid(net) if cfg.finetune.cache_frozen_features else None
    if visual is not None:  # what the fine-tuning loop does: the frozen CNN's maps precomputed
        with torch.no_grad():
            maps, _ = visual.features(batch["image"], batch["objects"], batch["object_mask"], None)
        batch = {**batch, "pyramid_features": maps}
        t = timed(step, repeats)
        result |= {
            "step_s_cached_cnn": t["median_s"],
            "samples_per_s_cached_cnn": b / t["median_s"],
        }
    return result


def measure_inference(cfg: Any, repeats: int, model: str, dataset: str) -> dict[str, Any]:
    import torch

    from promu_lib.data.datasets import make_loader
    from promu_lib.train.finetune import build_model, evaluate, task_of

    tok, ds, _ = _task_batch(cfg, dataset, model, "test", 1)
    torch.manual_seed(0)
    net = build_model(cfg, task_of(dataset), model, tok).eval()
    loader = make_loader(ds, cfg.finetune.eval_batch_size, False, 0)
    t = timed(lambda: evaluate(net, loader), repeats)
    return {
        "posts": len(ds),
        "posts_per_s": len(ds) / t["median_s"],
        "peak_rss_mib": peak_rss_mib(),
    }


# -- the driver --------------------------------------------------------------------------------

JOBS: dict[str, list[dict[str, Any]]] = {
    "data": [{"shape": "tiny"}],
    "mining": [{"shape": "tiny"}],
    "pretrain_step": [{"shape": "tiny"}, {"shape": "paper"}],
    "finetune_step": [
        {"shape": s, "model": m, "dataset": d}
        for s in ("tiny", "paper")
        for m in ("bert", "hvpnet", "promu")
        for d in ("twitter2015", "mnre")
    ],
    "inference": [
        {"shape": "tiny", "model": m, "dataset": d}
        for m in ("bert", "hvpnet", "promu")
        for d in ("twitter2015", "mnre")
    ],
}


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    job = json.loads(args.child)
    with tempfile.TemporaryDirectory(prefix="promu-bench-") as tmp:
        work = Path(tmp)
        paper = job["shape"] == "paper"
        cfg = _config(work, job["shape"], args.paper_batch if paper else None)
        _world(cfg)
        fn = globals()[f"measure_{args.measurement}"]
        extra = {k: job[k] for k in ("model", "dataset") if k in job}
        repeats = max(2, args.repeats // 2) if paper else args.repeats
        result = fn(cfg, repeats, **extra)
    print(json.dumps({**job, **result}))


def report(results: dict[str, list[dict[str, Any]]]) -> str:
    parts = ["# Stage benchmarks (toy world data; 'paper' = the paper's model shapes)\n"]
    for name, rows in results.items():
        if not rows:
            continue
        flat = []
        for r in rows:
            if name == "data":  # nested per dataset
                for d in ("twitter2015", "mnre"):
                    flat.append({"dataset": d, **r[d]})
            else:
                flat.append(r)
        keys = list(dict.fromkeys(k for r in flat for k in r if k not in ("twitter2015", "mnre")))
        parts += [
            f"## {name}\n",
            markdown_table(keys, [[r.get(k, "") for k in keys] for r in flat]),
        ]
        parts.append("")
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=MEASUREMENTS, default=list(MEASUREMENTS))
    ap.add_argument("--shapes", nargs="+", choices=("tiny", "paper"), default=["tiny", "paper"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--paper-batch", type=int, default=8)
    ap.add_argument("--models", nargs="+", help="only these models (finetune_step, inference)")
    ap.add_argument("--measurement", help=argparse.SUPPRESS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    results: dict[str, list[dict[str, Any]]] = {}
    for name in args.only:
        results[name] = []
        for job in JOBS[name]:
            if job["shape"] not in args.shapes:
                continue
            if args.models and job.get("model", args.models[0]) not in args.models:
                continue
            print(f"[bench] {name} {job}", file=sys.stderr, flush=True)
            results[name].append(
                run_child(
                    [
                        __file__,
                        "--measurement",
                        name,
                        "--child",
                        json.dumps(job),
                        "--repeats",
                        str(args.repeats),
                        "--threads",
                        str(args.threads),
                        "--paper-batch",
                        str(args.paper_batch),
                    ]  # fmt: skip
                )
            )
            print(f"          {results[name][-1]}", file=sys.stderr, flush=True)
    settings = {"repeats": args.repeats, "threads": args.threads, "paper_batch": args.paper_batch}
    results = merged_with_last(results)
    print(write_results("stages", {"settings": settings, "results": results}, report(results)))


def merged_with_last(results: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """This run's rows, plus the rows of the last results file that this run did not measure
    (a run with ``--only``/``--shapes``/``--models`` refreshes its rows and keeps the rest)."""
    last = RESULTS / "stages.json"
    if not last.is_file():
        return results
    old = json.loads(last.read_text(encoding="utf-8")).get("results", {})

    def key(row: dict[str, Any]) -> tuple:
        return tuple(row.get(k) for k in ("shape", "model", "dataset"))

    out = {}
    for name in MEASUREMENTS:
        new = results.get(name, [])
        fresh = {key(r) for r in new}
        out[name] = [r for r in old.get(name, []) if key(r) not in fresh] + new
        order = [key(j) for j in JOBS[name]]
        out[name].sort(key=lambda r: order.index(key(r)) if key(r) in order else len(order))
    return out


if __name__ == "__main__":
    main()
