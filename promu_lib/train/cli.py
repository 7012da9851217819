"""``promu finetune``: fine-tune one model on one dataset, for one or every configured seed."""

from __future__ import annotations

import argparse

from promu_lib.config import PROFILES, load_config
from promu_lib.train.finetune import IMAGE_MODES, MODELS, TASK_OF


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a model for MNER (twitter2015/2017) or MRE (mnre)",
        description="Train on the train split, select the epoch on dev F1, report dev and test "
        "at that epoch. Results are cached by config hash under run.output_dir; an "
        "interrupted run resumes from its last epoch.",
    )
    p.add_argument("--dataset", required=True, choices=tuple(TASK_OF))
    p.add_argument("--model", required=True, choices=tuple(MODELS))
    p.add_argument("--init", help="pre-training checkpoint (safetensors) for the backbone")
    p.add_argument("--profile", default="tiny", choices=PROFILES)
    p.add_argument("--config", help="YAML/JSON config file applied on top of the profile")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set finetune.lr=3e-5 (repeatable)",
    )
    p.add_argument("--seed", type=int, action="append", help="seed (repeatable; default run.seeds)")
    p.add_argument("--image-mode", default="true", choices=IMAGE_MODES)
    p.add_argument("--out", help="output directory (default: the cache directory); one seed only")
    p.set_defaults(func=_finetune)


def _finetune(args: argparse.Namespace) -> int:
    from promu_lib.errors import UsageError
    from promu_lib.train.finetune import finetune, summarize

    cfg = load_config(args.profile, args.config, args.overrides)
    seeds = args.seed or list(cfg.run.seeds)
    if args.out and len(seeds) > 1:
        raise UsageError("--out takes a single --seed")
    for seed in seeds:
        metrics = finetune(
            cfg,
            args.dataset,
            args.model,
            init=args.init,
            seed=seed,
            out_dir=args.out,
            image_mode=args.image_mode,
        )
        print(summarize(metrics))
    return 0
