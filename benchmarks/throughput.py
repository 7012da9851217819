"""Throughput of each kind of training job, one torch thread: two source trees side by side.

    git worktree add /tmp/before 6a4d18a
    .venv/bin/python benchmarks/throughput.py --before /tmp/before [--rounds 2]

For pre-training (PROMU, Eq. 11) and the fine-tuning of ``bert``, ``hvpnet`` and ``promu`` on
Twitter-2015 and MNRE (tiny profile, toy world from ``data/tiny``), in fresh processes with one
torch thread, rounds alternating before / now (so a drift of the machine's speed hits both):

- **job**: the whole warm job (data, model, every epoch's training and dev evaluation, test,
  checkpoints; after a warm-up job in the same process): wall seconds, ms per optimiser step,
  posts per second (training posts x epochs run / wall);
- **step**: one training step alone (forward, backward, clipping, AdamW) over 30 batches;
- **ops**: aten ops per training step and the five largest by self time (``torch.profiler``);
- **FLOP**: the whole job counted by ``torch.utils.flop_counter.FlopCounterMode`` (in the new
  tree; the two trees do the same arithmetic), so job GFLOP/s and its share of the one-thread
  fp32 rate of a 512 x 512 matmul measured in each child;
- **levers tried** (new tree): the training step with a lever that was tried and not kept
  patched in (a cheaper dropout mask; attention as ``baddbmm`` + softmax + ``bmm`` instead of
  ``F.scaled_dot_product_attention``), to give each its gain.

Writes ``benchmarks/results/throughput.{json,md}``. Numbers are toy-world, tiny-profile.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, markdown_table, write_results

JOBS = (
    ("pretrain", "promu"),
    ("twitter2015", "bert"),
    ("mnre", "bert"),
    ("twitter2015", "hvpnet"),
    ("mnre", "hvpnet"),
    ("twitter2015", "promu"),
    ("mnre", "promu"),
)

CHILD = r"""
import json, sys, tempfile, time
import torch
torch.set_num_threads(1)
from promu_lib.config import load_config, recipe_for, head_lr_of
from promu_lib.jobs import Finetune, Pretrain
from promu_lib.mining import mine_labels
from promu_lib.train.common import build_optimizer, build_scheduler, to_device

data, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
jobs = json.loads(sys.argv[4])
cfg = load_config("tiny", overrides={"data.root": data, "run.output_dir": out, "run.progress": False})
pre = Pretrain("promu")
mine_labels(pre.config(cfg), progress=False)
result = {}

def matmul_gflops():
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    for _ in range(5):
        a @ b
    t = time.perf_counter()
    for _ in range(40):
        a @ b
    return 2 * 512**3 * 40 / (time.perf_counter() - t) / 1e9

def run_job(dataset, model, c):
    if dataset == "pretrain":
        t = time.perf_counter(); d = pre.run(c); wall = time.perf_counter() - t
        p = pre.config(c).pretrain
        return wall, p.steps, p.steps * p.batch_size * p.grad_accum
    job = Finetune(dataset, model, init=pre if model == "promu" else None)
    t = time.perf_counter(); m = job.run(c); wall = time.perf_counter() - t
    return wall, m["steps"], m["epochs_run"]

def step_harness(dataset, model):
    # (one training step as a function, its batches, training posts per epoch)
    if dataset == "pretrain":
        from promu_lib.data.captions import CaptionDataset, collate_captions
        from promu_lib.data.pseudo_labels import load_pseudo_labels
        from promu_lib.data.tokenizer import build_tokenizer
        from promu_lib.models.builders import build_fusion_encoder
        from promu_lib.models.pretraining import PromuPretrainer
        from promu_lib.train.pretrain import loss_weights
        from promu_lib import losses
        c = pre.config(cfg)
        labels = load_pseudo_labels(mine_labels(c, progress=False))
        tok = build_tokenizer(c)
        ds = CaptionDataset(c, tok, labels, progress=False)
        net = PromuPretrainer(build_fusion_encoder(c, tok), len(labels.nouns), len(labels.relation_labels))
        opt = build_optimizer(net.parameters(), c.pretrain.lr)
        w = loss_weights(c)
        bs = c.pretrain.batch_size
        g = torch.Generator().manual_seed(0)
        order = torch.randperm(len(ds), generator=g).tolist()
        batches = [collate_captions([ds[i] for i in order[k * bs:(k + 1) * bs]], ds.pad_id) for k in range(30)]
        loss_of = lambda b: losses.total_loss(net(b), w)
        clip = c.pretrain.grad_clip
        n_train = None
    else:
        import promu_lib.train.finetune as ft
        c = recipe_for(cfg, model, ft.task_of(dataset))
        run = ft._check_run(c, dataset, model, None, 0, None, "true")
        tok, data_, loaders = ft._load_data(c, run)
        net = ft._build_net(c, run, tok, torch.device("cpu"))
        loaders = ft._with_frozen_features(net, data_, loaders, torch.device("cpu"), c.finetune)
        f = c.finetune
        opt = build_optimizer(net.param_groups(f.lr, head_lr_of(f, run.task), f.weight_decay), f.lr)
        batches = [to_device(b, torch.device("cpu")) for b in loaders["train"]]
        batches = (batches * 3)[:30]
        loss_of = lambda b: net(b)["loss"]
        clip = f.grad_clip
        n_train = len(data_["train"])
    sch = build_scheduler(opt, 10_000, 0.1)
    def step(b):
        loss_of(b).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step(); sch.step(); opt.zero_grad(set_to_none=True)
    net.train()
    return step, batches, n_train

def time_steps(step, batches):
    for b in batches[:5]:
        step(b)
    t = time.perf_counter()
    for b in batches:
        step(b)
    return (time.perf_counter() - t) / len(batches) * 1e3

if mode == "job":
    result["matmul_gflops"] = matmul_gflops()
    run_job("twitter2015", "bert", cfg.replace(**{"finetune.epochs": 1}))  # warm-up
    run_job("pretrain", "promu", cfg.replace(**{"pretrain.steps": 5}))
    for dataset, model in jobs:
        wall, steps, amount = run_job(dataset, model, cfg)  # pre-training: posts; else epochs
        result[f"{dataset}/{model}"] = {"wall_s": wall, "steps": steps, "amount": amount}
    result["matmul_gflops_after"] = matmul_gflops()
elif mode == "step":
    from torch.profiler import ProfilerActivity, profile
    for dataset, model in jobs:
        step, batches, n_train = step_harness(dataset, model)
        ms = time_steps(step, batches)
        with profile(activities=[ProfilerActivity.CPU]) as p:
            for b in batches[:10]:
                step(b)
        ev = sorted(p.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in ev)
        top = [[e.key, e.count / 10, e.self_cpu_time_total / total] for e in ev[:5]]
        result[f"{dataset}/{model}"] = {"step_ms": ms, "ops_per_step": sum(e.count for e in ev) / 10,
                                        "top_ops": top, "n_train": n_train}
elif mode == "levers":
    # levers tried and not kept in the library, patched in here so that their gain stays
    # measurable: a cheaper dropout mask, and attention as baddbmm + softmax + bmm on CPU
    import math
    import torch.nn.functional as F
    sdpa, dropout_forward = F.scaled_dot_product_attention, torch.nn.Dropout.forward

    class MaskedScale(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, scaled_mask):
            ctx.save_for_backward(scaled_mask)
            return x * scaled_mask

        @staticmethod
        def backward(ctx, grad):
            return grad * ctx.saved_tensors[0], None

    def cheap_dropout(x, p, training):
        # one int16 draw per element: keep where it is >= the p-quantile of int16
        if not training or p == 0.0 or p >= 1.0 or x.device.type != "cpu":
            return F.dropout(x, p, training)
        bits = torch.empty(x.numel() // 4 + 1, dtype=torch.int64).random_()
        keep = bits.view(torch.int16)[: x.numel()].view(x.shape) >= -32768 + round(p * 65536)
        return MaskedScale.apply(x, keep.to(x.dtype).mul_(1.0 / (1.0 - p)))

    def manual_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                         **kw):
        if q.device.type != "cpu" or is_causal or kw or q.dim() != 4:
            return sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                        scale=scale, **kw)
        B, nh, L, hd = q.shape
        S = k.shape[2]
        bias = torch.zeros((B, nh, L, S), dtype=q.dtype)
        if attn_mask is not None:
            bias = (bias.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool
                    else bias + attn_mask)
        scores = torch.baddbmm(bias.reshape(B * nh, L, S), q.reshape(B * nh, L, hd),
                               k.reshape(B * nh, S, hd).transpose(1, 2),
                               alpha=scale or 1.0 / math.sqrt(hd))
        drop = cheap_dropout if DROPOUT_ON else F.dropout
        probs = drop(scores.softmax(-1), dropout_p, dropout_p > 0)
        return torch.bmm(probs, v.reshape(B * nh, S, hd)).view(B, nh, L, hd)

    def levers(on):
        global DROPOUT_ON
        DROPOUT_ON = "dropout" in on
        torch.nn.Dropout.forward = ((lambda self, x: cheap_dropout(x, self.p, self.training))
                                    if DROPOUT_ON else dropout_forward)
        F.scaled_dot_product_attention = manual_attention if "attention" in on else sdpa

    settings = {"as is": (), "+ cheap dropout mask": ("dropout",),
                "+ manual attention": ("attention",), "+ both": ("attention", "dropout")}
    for dataset, model in jobs:
        step, batches, _ = step_harness(dataset, model)
        row = {}
        for _ in range(3):  # rounds; the fastest of them
            for name, on in settings.items():
                levers(on)
                ms = time_steps(step, batches)
                row[name] = min(row.get(name, ms), ms)
        levers(())
        result[f"{dataset}/{model}"] = row
elif mode == "flops":
    from torch.utils.flop_counter import FlopCounterMode
    for dataset, model in jobs:
        fc = FlopCounterMode(display=False)
        with fc:
            run_job(dataset, model, cfg)
        result[f"{dataset}/{model}"] = fc.get_total_flops()
print(json.dumps(result))
"""


def child(tree: Path, mode: str, jobs=JOBS) -> dict:
    data = ROOT / "data" / "tiny"
    env = {**os.environ, "PYTHONPATH": str(tree), "PROMU_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(data), str(Path(tmp) / "runs"), mode,
             json.dumps(jobs)],
            cwd=tree, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
    if proc.returncode:
        sys.exit(f"{mode} child in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def describe(tree: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(tree), "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="source tree of the old code")
    parser.add_argument("--rounds", type=int, default=2, help="before/now job rounds")
    args = parser.parse_args()
    if not (ROOT / "data" / "tiny" / "twitter2015").is_dir():
        sys.exit("no toy world in data/tiny: run ./run_all.sh --only data first")
    trees = {"before": Path(args.before).resolve(), "now": ROOT}
    keys = [f"{d}/{m}" for d, m in JOBS]

    jobs: dict[str, list[dict]] = {"before": [], "now": []}
    for r in range(args.rounds):
        for label, tree in trees.items():
            print(f"round {r + 1}: jobs, {label}", flush=True)
            jobs[label].append(child(tree, "job"))
    steps = {}
    for label, tree in trees.items():
        print(f"steps and ops, {label}", flush=True)
        steps[label] = child(tree, "step")
    print("levers, now", flush=True)
    levers = child(ROOT, "levers")
    print("FLOP counts, now", flush=True)
    flops = child(ROOT, "flops")

    rows, summary = [], {}
    for key in keys:
        n_train = steps["now"][key]["n_train"]
        per = {}
        for label in trees:
            runs = jobs[label]
            wall = statistics.median(run[key]["wall_s"] for run in runs)
            run0 = runs[0][key]
            # pre-training: steps x batch; fine-tuning: training posts x epochs run
            posts = run0["amount"] if n_train is None else n_train * run0["amount"]
            rate = statistics.median(run["matmul_gflops"] for run in runs)
            per[label] = {
                "wall_s": wall,
                "walls_s": [run[key]["wall_s"] for run in runs],
                "steps": run0["steps"],
                "ms_per_step_job": wall / run0["steps"] * 1e3,
                "posts_per_s": posts / wall,
                "step_ms": steps[label][key]["step_ms"],
                "ops_per_step": steps[label][key]["ops_per_step"],
                "top_ops": steps[label][key]["top_ops"],
                "job_gflop": flops[key] / 1e9,
                "gflops": flops[key] / wall / 1e9,
                "matmul_gflops": rate,
                "share_of_matmul": flops[key] / wall / 1e9 / rate,
            }
        per["speedup"] = per["now"]["posts_per_s"] / per["before"]["posts_per_s"]
        per["levers_step_ms"] = levers[key]
        summary[key] = per
        b, n = per["before"], per["now"]
        rows.append([
            key, f"{b['wall_s']:.2f}", f"{n['wall_s']:.2f}", f"{b['posts_per_s']:.0f}",
            f"{n['posts_per_s']:.0f}", f"{per['speedup']:.2f}x", f"{b['step_ms']:.1f}",
            f"{n['step_ms']:.1f}", f"{b['ops_per_step']:.0f}", f"{n['ops_per_step']:.0f}",
            f"{n['job_gflop']:.1f}", f"{n['gflops']:.1f}", f"{100 * n['share_of_matmul']:.0f}%",
        ])  # fmt: skip
    lever_names = list(next(iter(levers.values())))
    lever_rows = [[key, *(f"{levers[key][name]:.1f}" for name in lever_names)] for key in keys]
    top_rows = [
        [key, label, ", ".join(f"{k} {100 * s:.0f}% ({c:.0f}/step)" for k, c, s in
                               steps[label][key]["top_ops"])]
        for key in keys for label in trees
    ]  # fmt: skip
    commits = {label: describe(tree) for label, tree in trees.items()}
    md = (
        "# Throughput: each kind of training job, one torch thread, before and now\n\n"
        f"Toy world, tiny profile. before = `{commits['before']}`, now = `{commits['now']}`, "
        f"run in alternating fresh processes ({args.rounds} rounds each, median wall); "
        "`benchmarks/throughput.py`. A job is warm (after a warm-up job in its process) and "
        "whole: data, model, every epoch's training and dev evaluation, test, checkpoints. "
        "posts/s = training posts x epochs run / wall. step = one training step alone "
        "(forward, backward, clipping, AdamW). GFLOP/s = the job's FLOP count "
        "(`FlopCounterMode`, evaluation included) / its wall; share = of the one-thread fp32 "
        "512x512 matmul rate measured in the same processes "
        f"({statistics.median(r['matmul_gflops'] for r in jobs['now']):.0f} GFLOP/s).\n\n"
        + markdown_table(
            [
                "job",
                "before s",
                "now s",
                "before posts/s",
                "now posts/s",
                "speed-up",
                "before step ms",
                "now step ms",
                "before ops/step",
                "now ops/step",
                "job GFLOP",
                "now GFLOP/s",
                "share of matmul rate",
            ],
            rows,
        )  # fmt: skip
        + "\n\n## Levers tried: the training step (ms) with each patched in\n\n"
        "Neither is in the library: `cheap dropout mask` draws one int16 per element instead "
        "of `bernoulli_` (every `nn.Dropout`, timm's included); `manual attention` computes "
        "attention as `baddbmm` + softmax + `bmm` instead of `F.scaled_dot_product_attention`'s "
        "fused CPU kernel. Fastest of 3 rounds of 30 steps, new tree; patched in "
        "`benchmarks/throughput.py` only.\n\n"
        + markdown_table(["job", *lever_names], lever_rows)
        + "\n\n## Top ops of the training step (share of self CPU time, calls per step)\n\n"
        + markdown_table(["job", "tree", "top five ops"], top_rows)
        + "\n"
    )
    write_results(
        "throughput",
        {"commits": commits, "jobs": summary, "raw": {"jobs": jobs, "steps": steps,
                                                        "levers": levers, "flops": flops}},
        md,
    )  # fmt: skip
    print(md)


if __name__ == "__main__":
    main()
