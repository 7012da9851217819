"""``promu data detect``: YOLO over every image of a dataset writes its boxes file.

The work is :func:`promu_lib.data.detection.detect_dataset`; this module builds the detector
from the config (:class:`promu_lib.detect.YoloDetector`, a model, hence a layer above the data
modules) and adds the subcommand to ``promu data`` (:func:`promu_lib.data.cli.subcommands`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from promu_lib.config import add_config_arguments, config_from_args
from promu_lib.data.cli import subcommands
from promu_lib.data.detection import detect_dataset
from promu_lib.data.layout import DATASETS, SPLITS, DataLayout
from promu_lib.detect import YoloDetector
from promu_lib.errors import MissingAssetError, UsageError
from promu_lib.paths import resolve


def register(subparsers: argparse._SubParsersAction) -> None:
    det = subcommands(subparsers).add_parser(
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


def _detect(args: argparse.Namespace) -> int:
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
