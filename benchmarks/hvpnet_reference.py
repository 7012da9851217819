"""Side by side: our HVPNeT against the reference code (zjunlp/HVPNeT), issue 8.

A script, never part of the test run. In one process it builds the reference HMNeT NER and RE
models and ours (``hvpnet.layout="reference"``) from the same random weights, checks that they
compute the same function (eval mode), then times a training step (forward + backward) and
measures peak memory of each model in its own subprocess.

Reference code, brought in at run time into ignored directories (``benchmarks/_reference/``):
- ``HVPNeT/``: ``models/`` of zjunlp/HVPNeT at the HEAD of a local git clone, via ``git
  archive``; its commit is recorded in the results. The clone goes in the ignored directory
  too: ``git clone https://github.com/zjunlp/HVPNeT benchmarks/_reference/zjunlp-HVPNeT``
  (or pass another clone or mirror with ``--mirror``);
- ``site/``: transformers 4.46.3 + tokenizers 0.20 + huggingface_hub 0.x, ``pip install --target
  --no-deps`` (torch and the rest come from this environment), put FIRST on ``sys.path`` of the
  benchmark process only. The reference passes tuples as ``past_key_values``, which transformers
  5 rejects; its own pin (4.11.3) needs tokenizers < 0.11, which has no wheel for this Python.
  Our model needs no transformers at all for a random encoder (the script checks that it did
  not import it before the reference was loaded).

Nothing of the reference is stubbed: ``models/bert_model.py`` and ``models/modeling_bert.py``
run unchanged (they import torch, torchvision's ``resnet50``, ``torchcrf`` = pytorch-crf, the
package our CRF uses too, and transformers utilities; nothing else). Four stand-ins replace what would need the network or an old library:
- ``BertModel.from_pretrained(name)`` -> the reference's own ``BertModel`` built from a random
  ``BertConfig`` (bert-base sizes, ``--layers`` layers);
- ``resnet50(pretrained=True)`` -> ``torchvision.models.resnet50(weights=None)``;
- the RE tokenizer -> an object with ``len()`` (BERT's 30522 + the 4 markers) and the marker ids;
- ``transformers.file_utils.add_code_sample_docstrings`` -> a no-op decorator: the reference
  calls it with ``tokenizer_class=``, which transformers >= 4.16 rejects; it only writes
  docstrings.

What is compared (heads differ on purpose, so the check stops where the function is shared):
- text token states after the last layer (both tasks);
- NER: emission scores at each word's first piece, for our 9 tags (the rows of the reference's
  13-label ``fc`` that carry them). The CRFs differ (ours over words with 9 tags, theirs over
  word pieces with PAD/X/[CLS]/[SEP] too), so NER losses are not compared;
- RE: logits and cross-entropy loss (same head; the reference defines a Dropout(0.5) it never
  applies, ours applies ``text.dropout``: equal in eval mode).

Timing: ``--rounds`` interleaved rounds; in each, every model in turn runs ``--warmup`` untimed
steps, then ``--repeats`` timed forward + backward steps in train mode with ``--threads`` torch
threads. The speed-up is the median over rounds of (reference time / model time) within a round,
so a slow spell of a shared machine does not land on one model only (one-shot timings here
moved by 30% between runs). Each model trains as its code trains it:
- reference NER: ResNet parameters ``requires_grad=False`` (its trainer does so), no
  ``no_grad``; ``crf.decode`` (Viterbi) runs inside every training forward;
- reference RE "as written": its trainer sets ``param.require_grad`` (a typo), so the ResNet
  gets gradients on 4 images per post; "typo fixed" is timed too;
- reference: every prefix built in Python loops, attention maps always computed (explicit
  softmax), marker positions found in a Python loop;
- ours: frozen ResNet under ``no_grad`` on channels-last images, only valid images through it
  (paper layout) or the padded object slots as ONE zero image whose maps fill every padded slot
  (reference layout: exact, a frozen backbone is in eval mode), BERT's token-wise layers on the
  valid tokens only (padding skipped), SDPA attention, no Viterbi in training, vectorised marker
  gather. Timed in both layouts (``paper``, our default, and
  ``reference``).

Memory: peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``, the kernel's high-water
mark, which sees every allocation torch makes, unlike tracemalloc) minus the resident set
after the model and the inputs were built, in a fresh subprocess per model, so one model's
allocations never hide the other's.

Usage (from the repository root):
    python benchmarks/hvpnet_reference.py                       # paper shapes, both tasks
    python benchmarks/hvpnet_reference.py --layers 2 --image-size 64 --batch 2 --seq 24 \\
        --repeats 2 --out /tmp/hvpnet_ref                       # a quick check
Writes ``<out>/hvpnet_reference.json`` and ``.md`` (default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from promu_lib.config import profile_config
from promu_lib.data.records import MNRE_RELATIONS, NER_TAGS
from promu_lib.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from promu_lib.models.encoder import hf_bert_to_encoder_state_dict
from promu_lib.models.task import build_task_model
from promu_lib.paths import project_root

REF_DIR = project_root() / "benchmarks" / "_reference"
DEFAULT_MIRROR = REF_DIR / "zjunlp-HVPNeT"  # git clone https://github.com/zjunlp/HVPNeT <here>
REF_PACKAGES = ("transformers==4.46.3", "tokenizers>=0.20,<0.21", "huggingface_hub>=0.23.2,<1.0")
BERT_VOCAB = 30522
MARKERS = ("<s>", "</s>", "<o>", "</o>")  # ids BERT_VOCAB + 0..3, as the reference adds them
# The reference's NER labels: PAD = 0, then these from 1 (processor/dataset.py)
REF_NER_LABELS = ("PAD", "O", "B-MISC", "I-MISC", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC")
REF_NER_LABELS += ("I-LOC", "X", "[CLS]", "[SEP]")
OUR_MODELS = {"ours": "paper", "ours-reflayout": "reference"}
REF_MODELS = ("reference", "reference-fixed")
RESULT_TAG = "RESULT "


# ---------------------------------------------------------------------------------------------
# The reference code
# ---------------------------------------------------------------------------------------------


def ensure_reference(mirror: Path) -> str:
    """Copy the reference's ``models/`` and install transformers 4 under ``REF_DIR``; returns
    the reference commit."""
    src, site = REF_DIR / "HVPNeT", REF_DIR / "site"
    commit_file = src / "COMMIT"
    if not commit_file.is_file():
        if not mirror.exists():
            raise SystemExit(
                f"reference code not found at {mirror}: `git clone "
                f"https://github.com/zjunlp/HVPNeT {DEFAULT_MIRROR}`, or pass another clone or "
                "mirror with --mirror"
            )
        git = ["git", "-C", str(mirror)]
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
        tar = subprocess.run([*git, "archive", "HEAD", "models"], capture_output=True, check=True)
        with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
            for member in archive.getmembers():
                if member.isfile():
                    data = archive.extractfile(member).read()  # type: ignore[union-attr]
                    atomic_write_bytes(src / member.name, data, fsync=False)
        atomic_write_text(commit_file, commit.stdout.strip() + "\n")
    if not (site / "transformers").is_dir():
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site)]
        subprocess.run([*pip, *REF_PACKAGES], check=True)
    return commit_file.read_text().strip()


def import_reference() -> Any:
    """The reference's ``models.bert_model`` module, transformers 4 first on ``sys.path``."""
    if "transformers" in sys.modules and not sys.modules["transformers"].__version__.startswith(
        "4."
    ):
        raise RuntimeError("transformers 5 was imported before the reference's transformers 4")
    sys.path[:0] = [str(REF_DIR / "site"), str(REF_DIR / "HVPNeT")]
    import torchvision
    import transformers
    import transformers.file_utils

    assert transformers.__version__.startswith("4."), transformers.__version__
    transformers.file_utils.add_code_sample_docstrings = lambda *a, **k: lambda f: f
    from models import bert_model as bm  # the reference package, named "models"

    bm.resnet50 = lambda pretrained=False: torchvision.models.resnet50(weights=None)
    return bm


def build_reference(bm: Any, task: str, layers: int) -> nn.Module:
    """The reference HMNeT model (random BERT-base of ``layers`` layers, random ResNet-50)."""
    from transformers import BertConfig

    config = BertConfig(vocab_size=BERT_VOCAB, num_hidden_layers=layers)
    base = bm.BertModel

    class RandomBert(base):  # from_pretrained -> a random init of the same class
        @classmethod
        def from_pretrained(cls, name: str) -> nn.Module:
            return base(config)

    args = SimpleNamespace(
        bert_name="random", prompt_len=4, prompt_dim=800, use_prompt=True, device="cpu"
    )
    bm.BertModel = RandomBert
    try:
        if task == "ner":
            return bm.HMNeTNERModel(list(REF_NER_LABELS), args)
        return bm.HMNeTREModel(len(MNRE_RELATIONS), _MarkerVocab(), args)
    finally:
        bm.BertModel = base


class _MarkerVocab:
    """The RE tokenizer's two uses in the reference model: ``len()`` and the marker ids."""

    def __len__(self) -> int:
        return BERT_VOCAB + len(MARKERS)

    def convert_tokens_to_ids(self, token: str) -> int:
        return BERT_VOCAB + MARKERS.index(token)


def reference_to_ours(ref_sd: dict[str, Tensor], task: str, layers: int) -> dict[str, Tensor]:
    """The reference's tensors under our names (``hvpnet.layout="reference"``).

    ===============================================  ==============================================
    reference                                        ours
    ===============================================  ==============================================
    ``bert.*`` (q, k, v separate; pooler)            ``backbone.text.*`` (fused ``qkv``; no pooler)
    ``image_model.resnet.*`` (minus ``fc``)          ``backbone.visual.backbone.net.*``
    ``encoder_conv.{0,2}``                           ``backbone.visual.proj.{0,2}``
    ``gates.{l}`` l < layers, Linear(6144, 4)        ``backbone.visual.gate`` rows [4l, 4l + 4)
    ``fc`` rows of our 9 tags (NER)                  ``head.emit``
    ``classifier`` (RE)                              ``head.classify``
    ===============================================  ==============================================
    Not mapped: the pooler, the ResNet's ``fc``, gates of layers >= ``layers``, the NER ``crf``
    (another tag set over word pieces) and the ``fc`` rows of PAD/X/[CLS]/[SEP].
    """
    bert = {k: v for k, v in ref_sd.items() if k.startswith("bert.")}
    out = {f"backbone.text.{k}": v for k, v in hf_bert_to_encoder_state_dict(bert, layers).items()}
    for k, v in ref_sd.items():
        if k.startswith("image_model.resnet.") and not k.startswith("image_model.resnet.fc."):
            out["backbone.visual.backbone.net." + k.removeprefix("image_model.resnet.")] = v
        elif k.startswith("encoder_conv."):
            out["backbone.visual.proj." + k.removeprefix("encoder_conv.")] = v
    for p in ("weight", "bias"):
        out[f"backbone.visual.gate.{p}"] = torch.cat(
            [ref_sd[f"gates.{i}.{p}"] for i in range(layers)]
        )
        if task == "ner":
            rows = torch.tensor([REF_NER_LABELS.index(t) for t in NER_TAGS])
            out[f"head.emit.{p}"] = ref_sd[f"fc.{p}"][rows]
        else:
            out[f"head.classify.{p}"] = ref_sd[f"classifier.{p}"]
    return out


# ---------------------------------------------------------------------------------------------
# Our model and the shared inputs
# ---------------------------------------------------------------------------------------------


def build_ours(task: str, layout: str, a: argparse.Namespace) -> nn.Module:
    """Our task model at the paper profile's shapes (random BERT-base, random ResNet-50)."""
    cfg = profile_config("paper")
    vocab = BERT_VOCAB + (len(MARKERS) if task == "re" else 0)
    cfg.text = dataclasses.replace(
        cfg.text, pretrained=None, vocab_size=vocab, num_layers=a.layers, max_position=512
    )
    cfg.hvpnet = dataclasses.replace(
        cfg.hvpnet, backbone_weights=None, image_size=a.image_size, layout=layout
    )
    return build_task_model(cfg, task, "hvpnet", None)


def make_inputs(task: str, a: argparse.Namespace) -> tuple[dict, dict]:
    """(our batch, the reference's keyword arguments) for the same random posts."""
    g = torch.Generator().manual_seed(1234)
    B, L, S, m = a.batch or (8 if task == "ner" else 16), a.seq, a.image_size, 3
    lengths = torch.randint(L // 2, L + 1, (B,), generator=g)
    lengths[0] = L
    mask = (torch.arange(L)[None] < lengths[:, None]).long()
    ids = torch.randint(1000, 29000, (B, L), generator=g) * mask
    ids[:, 0] = 101  # [CLS]
    ids[torch.arange(B), lengths - 1] = 102  # [SEP]
    n_obj = torch.randint(0, m + 1, (B,), generator=g)
    n_obj[0], n_obj[-1] = m, 0
    object_mask = torch.arange(m)[None] < n_obj[:, None]
    objects = torch.randn(B, m, 3, S, S, generator=g) * object_mask[..., None, None, None]
    image = torch.randn(B, 3, S, S, generator=g)
    ours = {"input_ids": ids, "attention_mask": mask, "image": image, "objects": objects}
    ours["object_mask"] = object_mask
    ref = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    ref |= {"images": image, "aux_imgs": objects}
    if task == "ner":
        starts, tags = [], []
        piece_labels = torch.zeros(B, L, dtype=torch.long)  # PAD
        for b in range(B):
            n = int(lengths[b])
            first = torch.rand(n - 2, generator=g) < 0.7
            first[0] = True
            pos = (torch.nonzero(first).flatten() + 1).tolist()
            t = torch.randint(0, len(NER_TAGS), (len(pos),), generator=g).tolist()
            piece_labels[b, :n] = REF_NER_LABELS.index("X")
            piece_labels[b, 0], piece_labels[b, n - 1] = 11, 12  # [CLS], [SEP]
            for p, tag in zip(pos, t):
                piece_labels[b, p] = REF_NER_LABELS.index(NER_TAGS[tag])
            starts.append(pos)
            tags.append(t)
        W = max(map(len, starts))
        ours["word_starts"] = torch.tensor([s + [0] * (W - len(s)) for s in starts])
        ours["word_mask"] = torch.tensor([[1] * len(s) + [0] * (W - len(s)) for s in starts])
        ours["tags"] = torch.tensor([t + [0] * (W - len(t)) for t in tags])
        ref["labels"] = piece_labels
    else:
        head = torch.stack([torch.randint(1, int(n) - 1, (1,), generator=g)[0] for n in lengths])
        tail = (head + 1 + (lengths - 3) // 2) % (lengths - 2) + 1  # another inner position
        ids[torch.arange(B), head] = BERT_VOCAB + MARKERS.index("<s>")
        ids[torch.arange(B), tail] = BERT_VOCAB + MARKERS.index("<o>")
        label = torch.randint(0, len(MNRE_RELATIONS), (B,), generator=g)
        ours |= {"head_start": head, "tail_start": tail, "label": label}
        ref["labels"] = label
    return ours, ref


# ---------------------------------------------------------------------------------------------
# Equality
# ---------------------------------------------------------------------------------------------


def _diff(ours: Tensor, ref: Tensor) -> dict[str, float]:
    d = (ours.double() - ref.double()).abs().max().item()
    return {"max_abs": d, "max_rel": d / max(ref.abs().max().item(), 1e-30)}


def check_equal(bm: Any, task: str, a: argparse.Namespace) -> dict[str, Any]:
    """Reference vs ours (reference layout) on the same weights and inputs, eval mode."""
    torch.manual_seed(0)
    ref = build_reference(bm, task, a.layers).eval()
    ours = build_ours(task, "reference", a).eval()
    mapped = reference_to_ours(ref.state_dict(), task, a.layers)
    own = ours.state_dict()
    missing = sorted(set(own) - set(mapped))
    assert all(k.startswith("head.crf.") for k in missing), missing[:5]
    assert not set(mapped) - set(own), sorted(set(mapped) - set(own))[:5]
    ours.load_state_dict(own | mapped, strict=True)
    batch, kwargs = make_inputs(task, a)
    seen: dict[str, Tensor] = {}
    hooks = [
        ref.bert.register_forward_hook(lambda m, i, o: seen.__setitem__("ref_states", o[0])),
        ours.backbone.text.register_forward_hook(
            lambda m, i, o: seen.__setitem__("states", o.last_hidden_state)
        ),
    ]
    if task == "ner":
        hooks.append(ref.fc.register_forward_hook(lambda m, i, o: seen.__setitem__("emis", o)))
    with torch.no_grad():
        ref_out = ref(**kwargs)
        out = ours(batch)
        for h in hooks:
            h.remove()
        text_only = ours.backbone.text(batch["input_ids"], batch["attention_mask"])
    # states at real tokens: ours skips padded positions (zeros there), the reference fills them
    real = batch["attention_mask"].bool()
    result = {"task": task, "states": _diff(seen["states"][real], seen["ref_states"][real])}
    # how far the states move without the visual prefix: what the check can tell apart
    result["prefix_effect_rel"] = _diff(
        text_only.last_hidden_state[real], seen["ref_states"][real]
    )["max_rel"]
    if task == "ner":
        rows = [REF_NER_LABELS.index(t) for t in NER_TAGS]
        idx = batch["word_starts"][..., None].expand(-1, -1, seen["emis"].shape[-1])
        ref_emis = seen["emis"].gather(1, idx)[..., rows]
        keep = batch["word_mask"].bool()
        result["emissions"] = _diff(out["logits"][keep], ref_emis[keep])
    else:
        ref_loss, ref_logits = ref_out
        result["logits"] = _diff(out["logits"], ref_logits)
        result["loss"] = _diff(out["loss"][None], ref_loss[None])
    worst = max(v["max_rel"] for v in result.values() if isinstance(v, dict))
    result |= {"worst_rel": worst, "tolerance": a.tol, "equal": worst <= a.tol}
    return result


# ---------------------------------------------------------------------------------------------
# Speed and memory (one subprocess per model)
# ---------------------------------------------------------------------------------------------


def measure(model_name: str, task: str, a: argparse.Namespace) -> dict[str, Any]:
    """Median forward + backward time and peak RSS of one model, in this (fresh) process."""
    import psutil

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    batch, kwargs = make_inputs(task, a)
    if model_name in REF_MODELS:
        net = build_reference(import_reference(), task, a.layers)
        if task == "ner" or model_name == "reference-fixed":
            net.image_model.requires_grad_(False)  # the NER trainer's freeze

        def step() -> None:
            out = net(**kwargs)
            (out.loss if task == "ner" else out[0]).backward()

    else:
        net = build_ours(task, OUR_MODELS[model_name], a)
        assert "transformers" not in sys.modules, "our model imported transformers"

        def step() -> None:
            net(batch)["loss"].backward()

    net.train()
    gc.collect()
    base_rss = psutil.Process().memory_info().rss
    times = []
    for i in range(a.warmup + a.repeats):
        t0 = time.perf_counter()
        step()
        dt = time.perf_counter() - t0
        net.zero_grad(set_to_none=True)
        if i >= a.warmup:
            times.append(dt)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    result = {
        "model": model_name,
        "task": task,
        "batch": int(batch["input_ids"].shape[0]),
        "median_s": statistics.median(times),
        "times_s": times,
        "rss_after_build_mb": base_rss / 2**20,
        "peak_rss_mb": peak / 2**20,
        "peak_delta_mb": (peak - base_rss) / 2**20,
        "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
        "trainable_params_m": sum(p.numel() for p in net.parameters() if p.requires_grad) / 1e6,
    }
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        result["profile"] = prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40
        )
    return result


def run_measure(
    model_name: str, task: str, a: argparse.Namespace, profile: bool = False
) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", model_name, "--task", task]
    cmd += _shape_args(a) + ([] if profile else ["--no-profile"])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode or not lines:
        raise RuntimeError(f"{model_name}/{task} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix(RESULT_TAG))


def interleaved(names: list[str], task: str, a: argparse.Namespace) -> dict[str, Any]:
    """``--rounds`` rounds, each measuring every model once in turn, so that a slower spell of a
    shared machine hits all models of a round alike: the speed-up is the median over rounds of
    the reference's time over the model's time in the same round."""
    rounds: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for i in range(a.rounds):
        for name in names:
            r = run_measure(name, task, a, profile=a.profile and i == 0)
            rounds[name].append(r)
            print(f"{task} round {i + 1}/{a.rounds} {name}: {r['median_s']:.3f} s/batch")
    out = {}
    for name, rs in rounds.items():
        ratios = [ref["median_s"] / r["median_s"] for ref, r in zip(rounds["reference"], rs)]
        fixed = rounds.get("reference-fixed")  # RE: the reference with its trainer's typo fixed
        fixed_ratios = [f["median_s"] / r["median_s"] for f, r in zip(fixed or [], rs)]
        r = rs[0] | {
            "median_s": statistics.median(x["median_s"] for x in rs),
            "round_medians_s": [x["median_s"] for x in rs],
            "times_s": [t for x in rs for t in x["times_s"]],
            "peak_delta_mb": max(x["peak_delta_mb"] for x in rs),
            "speedup_vs_reference": statistics.median(ratios),  # > 1: faster than reference
            "speedup_per_round": ratios,
        }
        if fixed_ratios:
            r["speedup_vs_reference_fixed"] = statistics.median(fixed_ratios)
            r["speedup_vs_reference_fixed_per_round"] = fixed_ratios
        out[name] = r
        print(
            f"{task} {name}: {r['median_s']:.3f} s/batch, +{r['peak_delta_mb']:.0f} MB, "
            f"{r['speedup_vs_reference']:.2f}x the reference's speed "
            f"(rounds {', '.join(f'{x:.2f}' for x in ratios)})"
        )
    return out


def _shape_args(a: argparse.Namespace) -> list[str]:
    out = ["--layers", str(a.layers), "--image-size", str(a.image_size), "--seq", str(a.seq)]
    out += ["--threads", str(a.threads), "--warmup", str(a.warmup), "--repeats", str(a.repeats)]
    if a.batch:
        out += ["--batch", str(a.batch)]
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def markdown(res: dict[str, Any]) -> str:
    s = res["setup"]
    lines = [
        "# HVPNeT: ours vs the reference code (zjunlp/HVPNeT)",
        "",
        f"Reference commit `{s['reference_commit']}`, transformers {s['reference_transformers']} "
        f"for it; torch {s['torch']}, {s['threads']} threads, {s['cpu']}.",
        f"Shapes: {s['layers']} BERT layers x 768, ResNet-50 at {s['image_size']} px, 1 image + "
        f"3 objects, prompt_len 4, mid 800, {s['seq']} tokens; random weights.",
        f"Timing: {s.get('rounds', 1)} interleaved rounds (each model once per round, in its own "
        f"subprocess), each the median of {s['repeats']} forward + backward steps after "
        f"{s['warmup']} warm-up, train mode; a model's time is the median of its rounds, its "
        "speed-up the median over rounds of the reference's time / its time in that round. "
        "Memory: peak RSS minus RSS after build (the largest of the rounds).",
        "",
        "## Equality (eval mode, ours with `hvpnet.layout=reference`, reference weights copied)",
        "",
        "| task | compared | max abs diff | max rel diff | equal (rel <= tol) |",
        "|---|---|---|---|---|",
    ]
    for eq in res["equality"]:
        for k, v in eq.items():
            if isinstance(v, dict):
                ok = "yes" if v["max_rel"] <= eq["tolerance"] else "NO"
                lines.append(
                    f"| {eq['task']} | {k} | {v['max_abs']:.2e} | {v['max_rel']:.2e} | {ok} |"
                )
        lines.append(
            f"| {eq['task']} | states without the visual prefix (must differ) | | "
            f"{eq['prefix_effect_rel']:.2e} | |"
        )
    for task, rows in res.get("timing", {}).items():
        lines += [
            "",
            f"## {task.upper()}: training step (batch {rows['reference']['batch']})",
            "",
            "| model | median s / batch | per round | peak RSS delta MB | trainable M "
            "| speed-up vs reference (per round) |",
            "|---|---|---|---|---|---|",
        ]
        fixed = "reference-fixed" in rows
        if fixed:
            lines[-2] += " speed-up vs reference-fixed (per round) |"
            lines[-1] += "---|"
        for name, r in rows.items():
            per_round = ", ".join(f"{x:.2f}" for x in r.get("round_medians_s", []))
            ratios = ", ".join(f"{x:.2f}" for x in r.get("speedup_per_round", []))
            line = (
                f"| {name} | {r['median_s']:.3f} | {per_round} | {r['peak_delta_mb']:.0f} | "
                f"{r['trainable_params_m']:.1f} | {r['speedup_vs_reference']:.2f}x ({ratios}) |"
            )
            if fixed:
                ratios = ", ".join(f"{x:.2f}" for x in r["speedup_vs_reference_fixed_per_round"])
                line += f" {r['speedup_vs_reference_fixed']:.2f}x ({ratios}) |"
            lines.append(line)
        slow = [n for n, r in rows.items() if n.startswith("ours")]
        for name in slow + (["reference"] if slow else []):
            if "profile" in rows[name]:
                lines += ["", f"Where the time goes, {name} ({task}):", "", "```"]
                lines += [rows[name]["profile"].rstrip(), "```"]
    lines += ["", "Notes:", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


NOTES = [
    "reference = as its trainer runs it (NER: ResNet frozen by requires_grad=False, Viterbi "
    "decode in every training forward; RE: the `require_grad` typo leaves the ResNet "
    "trainable, so backward runs through it); reference-fixed = RE with that typo fixed.",
    "ours = default `hvpnet.layout=paper`; ours-reflayout = `hvpnet.layout=reference` (the "
    "reference's function). Both: frozen ResNet under no_grad in eval mode on channels-last "
    "images, BERT's projections and feed-forward on the valid tokens only (padding skipped; "
    "the inputs' lengths are uniform in [seq/2, seq], one post at seq), SDPA attention, no "
    "Viterbi in training; the paper layout skips padded object slots in the CNN, the "
    "reference layout runs one zero image for all of them (exact in eval mode).",
    "NER losses are not compared: our CRF runs over words with 9 tags, the reference's over "
    "word pieces with 13 (PAD, X, [CLS], [SEP] too). Emissions are compared at word starts.",
    "On a shared machine a round can be slow for one model: compare within a round (the "
    "per-round columns), not across rounds. RE's fair comparison is against reference-fixed "
    "(the same trainable parameters); 'reference' is what its trainer actually runs.",
    "The reference trains with its ResNet's BatchNorm in train mode (batch statistics); ours "
    "keeps a frozen backbone in eval mode. Equality is checked in eval mode.",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("ner", "re", "both"), default="both")
    ap.add_argument("--layers", type=int, default=12, help="BERT layers (768 hidden, 12 heads)")
    ap.add_argument("--image-size", type=int, default=224, help="64, 128 or 224")
    ap.add_argument("--batch", type=int, default=0, help="0 = 8 for NER (T15), 16 for RE (MNRE)")
    ap.add_argument("--seq", type=int, default=80, help="tokens per post (max_seq)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per model and round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the models")
    ap.add_argument("--tol", type=float, default=1e-4, help="max relative difference")
    ap.add_argument("--mirror", type=Path, default=DEFAULT_MIRROR, help="a zjunlp/HVPNeT clone")
    ap.add_argument("--check-only", action="store_true", help="equality only, no timing")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--out", type=Path, default=project_root() / "benchmarks" / "results")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one model per subprocess
    a = ap.parse_args(argv)
    tasks = ("ner", "re") if a.task == "both" else (a.task,)
    if a.measure:
        print(RESULT_TAG + json.dumps(measure(a.measure, tasks[0], a)), flush=True)
        return 0

    torch.set_num_threads(a.threads)
    commit = ensure_reference(a.mirror)
    bm = import_reference()
    import transformers

    equality = [check_equal(bm, task, a) for task in tasks]
    for eq in equality:
        print(f"equality {eq['task']}: worst rel diff {eq['worst_rel']:.2e} -> {eq['equal']}")
    setup = {k: getattr(a, k) for k in ("layers", "image_size", "seq", "threads", "warmup")}
    setup |= {"repeats": a.repeats, "rounds": a.rounds, "batch": a.batch or "8 (NER) / 16 (RE)"}
    setup |= {
        "reference_commit": commit,
        "reference_transformers": transformers.__version__,
        "torch": torch.__version__,
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores",
        "python": platform.python_version(),
    }
    res: dict[str, Any] = {"setup": setup, "equality": equality, "notes": NOTES}
    if not a.check_only:
        res["timing"] = {}
        for task in tasks:
            names = ["reference"] + (["reference-fixed"] if task == "re" else []) + list(OUR_MODELS)
            res["timing"][task] = interleaved(names, task, a)
    atomic_write_json(a.out / "hvpnet_reference.json", res)
    atomic_write_text(a.out / "hvpnet_reference.md", markdown(res))
    print(f"wrote {a.out / 'hvpnet_reference.md'}")
    return 0 if all(eq["equal"] for eq in equality) else 1


if __name__ == "__main__":
    sys.exit(main())
