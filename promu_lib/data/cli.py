"""``promu data``: ``check`` a data directory, ``convert-crops`` from HVPNeT's crop dicts,
``detect`` objects in a dataset's images (its boxes file)."""

from __future__ import annotations

import argparse
from pathlib import Path

from promu_lib.config import PROFILES, add_config_arguments, config_from_args, load_config
from promu_lib.data.layout import DATASETS, SPLITS, DataLayout
from promu_lib.errors import MissingAssetError, PromuError, UsageError
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

    det = sub.add_parser(
        "detect",
        help="run YOLO over a dataset's images and write boxes/<dataset>.json",
        description="Detect objects in every image the split files of a dataset refer to "
        "(all datasets by default) with ultralytics YOLO from a local .pt (mining.yolo_weights "
        "or --yolo-weights; nothing is downloaded), batched, on the GPU when there is one "
        "(run.device). Writes boxes/<dataset>.json ({img_id: [[x1, y1, x2, y2, score, class], "
        "...]} in pixels, best first), resumably: a killed run continues from its last "
        "finished shard. Prints how many images got 0, 1, 2 or 3+ boxes and draws a sample "
        "grid. Settings: the detect section of the config (promu_lib/config.py).",
    )
    add_config_arguments(det)
    det.add_argument(
        "--dataset", action="append", choices=DATASETS, help="only this dataset (repeatable)"
    )
    det.add_argument("--yolo-weights", help="a local YOLO .pt (default: mining.yolo_weights)")
    det.add_argument("--conf", type=float, help="confidence threshold (default: detect.conf)")
    det.add_argument(
        "--out-dir", help="where the boxes files go (default: <data.root>/<data.boxes_dir>)"
    )
    det.add_argument(
        "--grid",
        help="sample grid PNG (default: <out-dir>/<dataset>_boxes.png; 'none' for no grid)",
    )
    det.add_argument("--force", action="store_true", help="overwrite existing boxes files")
    det.set_defaults(func=_detect)


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


def _detect(args: argparse.Namespace) -> int:
    from promu_lib.data.detection import detect_dataset
    from promu_lib.detect import YoloDetector

    cfg = config_from_args(args)
    if args.conf is not None:
        cfg = cfg.replace(**{"detect.conf": args.conf})
    weights = args.yolo_weights or cfg.mining.yolo_weights
    if not weights:
        raise MissingAssetError(
            "YOLO weights",
            "mining.yolo_weights (unset)",
            "Give --yolo-weights PATH.pt or set mining.yolo_weights to a local YOLO .pt file.",
        )
    layout = DataLayout.of(cfg)
    out_dir = Path(args.out_dir).absolute() if args.out_dir else layout.root / cfg.data.boxes_dir
    datasets = tuple(args.dataset or DATASETS)
    outs = {d: out_dir / f"{d}.json" for d in datasets}
    if not args.force and (taken := [str(p) for p in outs.values() if p.exists()]):
        raise UsageError(f"{', '.join(taken)} exists; add --force to detect again")
    if not args.dataset:  # all datasets: those without any split file are left out, said so
        present = [d for d in datasets if any(layout.split_file(d, s).is_file() for s in SPLITS)]
        for d in datasets:
            if d not in present:
                print(f"{d}: no split files under {layout.root}, left out")
        datasets = tuple(present)
        if not datasets:
            raise MissingAssetError(
                "any dataset's split files", [str(layout.root)], "See `promu data check`."
            )
    d = cfg.detect
    device = None if cfg.run.device == "auto" else cfg.run.device  # None: ultralytics picks
    detector = YoloDetector(weights, conf=d.conf, max_det=d.max_det, imgsz=d.imgsz, device=device)
    settings = {"detector": "yolo", "weights": _file_id(weights), "conf": d.conf,
                "max_det": d.max_det, "imgsz": d.imgsz}  # fmt: skip
    for dataset in datasets:
        grid = None if (args.grid or "").lower() == "none" else args.grid
        if grid is None and args.grid is None:
            grid = out_dir / f"{dataset}_boxes.png"
        elif grid is not None and len(datasets) > 1:
            grid = Path(grid).with_name(f"{Path(grid).stem}_{dataset}{Path(grid).suffix}")
        summary = detect_dataset(
            layout,
            dataset,
            detector,
            outs[dataset],
            settings=settings,
            batch_size=d.batch_size,
            shard_size=d.shard_size,
            max_det=d.max_det,
            on_missing=cfg.data.on_missing_image,
            on_bad=cfg.data.on_bad_record,
            grid=grid,
            grid_images=d.grid_images,
            progress=cfg.run.progress,
        )
        print("\n".join(summary.lines()))
    return 0


def _file_id(weights: str) -> list:
    """The weights file's path, size and modification time (a new file: new partial files)."""
    path = resolve(weights)
    if not path.is_file():
        return [str(weights)]
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


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
