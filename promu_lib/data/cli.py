"""``promu data``: ``check`` a data directory, ``convert-crops`` from HVPNeT's crop dicts.
(``promu data detect`` runs a model: it registers itself from ``promu_lib.detect_command``,
through :func:`subcommands`.)"""

from __future__ import annotations

import argparse
from pathlib import Path

from promu_lib.config import PROFILES, load_config
from promu_lib.data.layout import DATASETS, DataLayout
from promu_lib.errors import PromuError, UsageError
from promu_lib.paths import resolve


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser(
        "data", help="check a data directory; convert HVPNeT crops; detect objects"
    )
    data.set_defaults(func=lambda args: data.print_help())
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    check = sub.add_parser(
        "check",
        help="validate every file of a data directory and say what is missing",
        description="Read every dataset file with the validating readers; print counts, "
        "missing images and SHA-256 checksums. Exit code 1 when something required is "
        "missing or invalid.",
    )
    check.add_argument("dir", nargs="?", help="data directory (default: the profile's data.root)")
    check.add_argument("--profile", default="tiny", choices=PROFILES)
    check.add_argument("--config", help="YAML/JSON config file (its data section names the layout)")
    check.add_argument(
        "--dataset", action="append", choices=DATASETS, help="check only this dataset (repeatable)"
    )
    check.add_argument("--verify-images", action="store_true", help="decode every image (slower)")
    check.add_argument("--json", help="also write the report as JSON to this file")
    check.set_defaults(func=_check)

    conv = sub.add_parser(
        "convert-crops",
        help="turn an HVPNeT object-crop dict (.pth) into a crops JSON {img_id: [crop paths]}",
        description="Loads the .pth with torch.load(weights_only=True) only; copies no "
        "image. See promu_lib/data/crops.py for what it does and does not do.",
    )
    conv.add_argument("--pth", required=True, help="e.g. twitter2015_train_dict.pth")
    conv.add_argument("--crops-dir", required=True, help="e.g. twitter2015_aux_images/train/crops")
    conv.add_argument("--out", required=True, help="output JSON; must be above --crops-dir")
    conv.add_argument("--task", choices=("ner", "re"), default="ner")
    conv.add_argument("--split-file", help="the split's text file (required for --task re)")
    conv.add_argument("--no-check-files", action="store_true", help="do not stat crop files")
    conv.set_defaults(func=_convert_crops)


def subcommands(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The subcommand group of ``promu data`` (after :func:`register`), for subcommands that
    live in higher layers."""
    data = subparsers.choices["data"]
    return next(a for a in data._actions if isinstance(a, argparse._SubParsersAction))


def _check(args: argparse.Namespace) -> int:
    from promu_lib.data.check import check_data
    from promu_lib.data.dataset_dir import detect, layout_help
    from promu_lib.io import atomic_write_json

    cfg = load_config(args.profile, args.config)
    root = Path(args.dir).resolve() if args.dir else resolve(cfg.data_root())
    one = detect(root, cfg.data, tuple(args.dataset or ())) if args.dir else None  # one dataset
    layout = one.layout if one else DataLayout(root=root, data=cfg.data)
    datasets = (one.dataset,) if one else tuple(args.dataset or DATASETS)
    report = check_data(layout, datasets, verify_images=args.verify_images, captions=not one)
    if one:
        print(one.describe() + "\n")
    print(report)
    if not one and not any(s.found for s in report.splits):
        print("\n" + layout_help(root, cfg.data))
    if args.json:
        atomic_write_json(args.json, report.to_dict())
    if not report.ok:  # the report lists every problem; the error line names the first
        more = len(report.problems) - 1
        raise PromuError(report.problems[0] + (f" (+{more} more, listed above)" if more else ""))
    return 0


def _convert_crops(args: argparse.Namespace) -> int:
    from promu_lib.data.crops import convert_crops

    if args.task == "re" and not args.split_file:
        raise UsageError("--task re needs --split-file: MRE crop dicts are keyed by line index")
    res = convert_crops(
        args.pth,
        args.crops_dir,
        args.out,
        task=args.task,
        split_file=args.split_file,
        check_files=not args.no_check_files,
        strict=True,  # a missing crop file: an error, and nothing written
    )
    print(f"wrote {res.out}: {res.n_images} images, {res.n_crops} crops")
    if res.unknown_keys:
        print(
            f"  {len(res.unknown_keys)} keys match no post (e.g. {', '.join(res.unknown_keys[:5])})"
        )
    if res.conflicts:
        print(f"  {res.conflicts} lines share an image but list other crops (first kept)")
    return 0
