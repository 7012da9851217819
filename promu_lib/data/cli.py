"""``promu data``: ``check`` a data directory, ``convert-crops`` from HVPNeT's crop dicts."""

from __future__ import annotations

import argparse
from pathlib import Path

from promu_lib.config import PROFILES, load_config
from promu_lib.data.layout import DATASETS, DataLayout
from promu_lib.paths import resolve


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="check a data directory; convert HVPNeT crops")
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
    check.add_argument(
        "--verify-images", action="store_true", help="decode every image and check boxes (slower)"
    )
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


def _check(args: argparse.Namespace) -> int:
    from promu_lib.data.check import check_data
    from promu_lib.io import atomic_write_json

    cfg = load_config(args.profile, args.config)
    root = Path(args.dir).resolve() if args.dir else resolve(cfg.data_root())
    layout = DataLayout(root=root, data=cfg.data)
    report = check_data(layout, tuple(args.dataset or DATASETS), verify_images=args.verify_images)
    print(report)
    if args.json:
        atomic_write_json(args.json, report.to_dict())
    return 0 if report.ok else 1


def _convert_crops(args: argparse.Namespace) -> int:
    from promu_lib.data.crops import convert_crops

    res = convert_crops(
        args.pth,
        args.crops_dir,
        args.out,
        task=args.task,
        split_file=args.split_file,
        check_files=not args.no_check_files,
    )
    print(f"wrote {res.out}: {res.n_images} images, {res.n_crops} crops")
    if res.unknown_keys:
        print(
            f"  {len(res.unknown_keys)} keys match no post (e.g. {', '.join(res.unknown_keys[:5])})"
        )
    if res.conflicts:
        print(f"  {res.conflicts} lines share an image but list other crops (first kept)")
    if res.n_missing_files:
        print(f"  {res.n_missing_files} crop files not found (e.g. {', '.join(res.missing_files)})")
        return 1
    return 0
