"""Dataset formats: detect the layout of ``data=``, read it into DetectionData, write it back.

``load_dataset(None)`` gives the built-in synthetic set. Per-file trouble becomes a Problem
in ``DetectionData.problems`` (the sample is kept, repaired or left out, never silently);
structural errors that make a run meaningless raise ``DatasetError`` with one clear line.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from detforge.data.formats.coco import find_coco_files, read_coco, write_coco
from detforge.data.formats.common import SPLITS, DatasetError, ProblemLog, ReadProblem
from detforge.data.formats.csv_lists import csv_split_files, read_csv_lists
from detforge.data.formats.data_yaml import is_data_yaml, read_data_yaml
from detforge.data.formats.voc import read_voc, write_voc
from detforge.data.formats.yolo import find_yolo_splits, read_yolo, write_yolo
from detforge.records import DetectionData

__all__ = ["LAYOUTS", "DatasetError", "ReadProblem", "convert_dataset", "detect_layout", "load_dataset",
           "write_dataset"]

# what each layout looks for, in the order detection tries them
LAYOUTS: dict[str, str] = {
    "data.yaml": "a data.yaml (or a folder holding one) with path / train / val / test / names (Ultralytics)",
    "voc": "Annotations/*.xml + JPEGImages/ (+ ImageSets/Main/{train,val,test}.txt) (Pascal VOC)",
    "coco": "annotations/*.json (instances_train*.json, train.json, ...) or {train,valid,test}/"
            "_annotations.coco.json (Roboflow), with the images",
    "csv": "train.csv / val.csv / test.csv naming images in images/, YOLO labels in labels/",
    "yolo": "images/{train,val,test}/ + labels/{train,val,test}/*.txt, or train/images + train/labels, "
            "or plain images/ + labels/",
}
WRITABLE = ("yolo", "coco", "voc")
_READERS = {"data.yaml": read_data_yaml, "voc": read_voc, "coco": read_coco, "csv": read_csv_lists,
            "yolo": read_yolo}


def detect_layout(path: Path) -> tuple[str, Path]:
    """(layout name, the path its reader takes) for a folder or data.yaml; DatasetError if unknown."""
    if path.is_file():
        if path.suffix.lower() in (".yaml", ".yml"):
            return "data.yaml", path
        raise DatasetError(_unknown(path, "a file that is not a data.yaml"))
    for name in ("data.yaml", "data.yml", "dataset.yaml"):
        if (path / name).is_file() and is_data_yaml(path / name):
            return "data.yaml", path / name
    if (path / "Annotations").is_dir():
        return "voc", path
    if find_coco_files(path):
        return "coco", path
    if csv_split_files(path):
        return "csv", path
    if find_yolo_splits(path, ProblemLog()) is not None:
        return "yolo", path
    raise DatasetError(_unknown(path, "none of the layouts matches"))


def _unknown(path: Path, why: str) -> str:
    known = "\n".join(f"  {name}: {what}" for name, what in LAYOUTS.items())
    return f"{path}: cannot tell the dataset layout ({why}). Known layouts:\n{known}"


def load_dataset(data: str | Path | None) -> DetectionData:
    """Read ``data`` (a folder in any known layout, a data.yaml, or None for the built-in set)."""
    if data is None:
        from detforge.data.synthetic import ensure_synthetic

        root = ensure_synthetic()
        dataset = read_data_yaml(root / "data.yaml")
        dataset.layout = "synthetic"
        _finish(dataset, root)
        return dataset
    path = Path(data).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: dataset path does not exist")
    layout, target = detect_layout(path)
    dataset = _READERS[layout](target)
    _finish(dataset, target)
    return dataset


def _finish(dataset: DetectionData, target: Path) -> None:
    """Splits in train/val/test order; empty splits reported; no usable image at all refused."""
    order = {name: i for i, name in enumerate(SPLITS)}
    dataset.splits = dict(sorted(dataset.splits.items(), key=lambda kv: order.get(kv[0], len(order))))
    reported = {getattr(p, "split", None) for p in dataset.problems if p.kind == "empty_split"}
    for split, samples in dataset.splits.items():
        if not samples and split not in reported:
            left_out = sum(1 for p in dataset.problems if p.fatal_for_sample and getattr(p, "split", None) == split)
            dataset.problems.append(ReadProblem(target, "empty_split", f"split '{split}' has no usable images "
                                                f"({left_out} left out as unreadable)", False, split))
    if not any(dataset.splits.values()):
        fatal = [p for p in dataset.problems if p.fatal_for_sample]
        detail = f"; {len(fatal)} left out, e.g. {fatal[0]}" if fatal else ""
        raise DatasetError(f"{target}: no usable images found ({dataset.layout} layout){detail}")


def write_dataset(data: DetectionData, out: str | Path, layout: Literal["yolo", "coco", "voc"],
                  link: bool = False) -> Path:
    """Write ``data`` in ``layout`` into the new or empty folder ``out``; images copied (or symlinked).
    YOLO (as YOLO-seg lines) and COCO (as polygon segmentations) keep instance outlines; VOC
    keeps boxes only and says how many outlines it leaves out."""
    writers = {"yolo": write_yolo, "coco": write_coco, "voc": write_voc}
    if layout not in writers:
        raise DatasetError(f"cannot write layout '{layout}'; choose one of {', '.join(WRITABLE)}")
    if layout == "voc":
        outlines = sum(1 for v in data.splits.values() for s in v for rings in s.polygons or [] if rings)
        if outlines:
            logging.getLogger("detforge").warning(
                "%s: Pascal VOC annotations hold boxes only: %d instance outlines are not written", out, outlines)
    return writers[layout](data, Path(out), link=link)


def convert_dataset(src: str | Path | None, to: Literal["yolo", "coco", "voc"], out: str | Path,
                    link: bool = False) -> Path:
    """``detforge data convert``: read ``src`` in any layout, write it as ``to`` into ``out``."""
    return write_dataset(load_dataset(src), out, to, link=link)
