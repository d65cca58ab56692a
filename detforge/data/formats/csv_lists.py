"""CSV split lists: ``train.csv`` / ``val.csv`` / ``test.csv`` in the dataset root.

Each row names one image, found in ``images/`` (or relative to the root, or absolute); its
YOLO label is the matching file under ``labels/``. The first row is a header when its image
cell reads image / image_path / path / file / filename; that column is then used, otherwise
the first. Splitting by lists instead of moving files keeps one image folder for all splits.
"""

from __future__ import annotations

import csv
from pathlib import Path

from detforge.data.formats.common import SPLIT_ALIASES, DatasetError, ProblemLog, find_names
from detforge.data.formats.yolo import read_image_splits
from detforge.records import DetectionData

HEADER_NAMES = ("image", "image_path", "path", "file", "filename", "file_name")


def csv_split_files(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for stem, split in SPLIT_ALIASES.items():
        f = root / f"{stem}.csv"
        if f.is_file() and split not in found:
            found[split] = f
    return found


def read_csv_lists(root: Path) -> DetectionData:
    files = csv_split_files(root)
    if not files:
        raise DatasetError(f"{root}: no train.csv / val.csv / test.csv")
    log = ProblemLog()
    images = {}
    for split, f in files.items():
        images[split] = [_resolve(root, name) for name in _image_column(f)]
        if not images[split]:
            log.add(f, "empty_split", f"split '{split}' lists no images", split=split)
    names, _ = find_names(root, (root / "labels",))
    names, splits = read_image_splits(images, names, root, log, {root / "labels"})
    return DetectionData(names, splits, root, "csv", log.items)


def _image_column(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    column = next((header.index(h) for h in HEADER_NAMES if h in header), None)
    if column is None:
        return [row[0].strip() for row in rows]
    return [row[column].strip() for row in rows[1:] if len(row) > column and row[column].strip()]


def _resolve(root: Path, name: str) -> Path:
    p = Path(name).expanduser()
    if p.is_absolute():
        return p
    for candidate in (root / "images" / name, root / name):
        if candidate.exists():
            return candidate
    return root / "images" / name  # reported as missing by the reader
