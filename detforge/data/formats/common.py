"""What every format reader and writer shares: errors, problems, box cleaning, image probing.

Readers turn per-file trouble into ``ReadProblem`` records (never exceptions) and raise
``DatasetError`` only for structural errors that make a run meaningless.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from detforge.data.image_io import ImageReadError, is_image_file, probe_image
from detforge.records import Problem

# a box edge at most this far outside the image is rounding or 0/1-based indexing: clipped
# without a report
EDGE_TOLERANCE_PX = 1.0
NAMES_FILES = ("data.yaml", "data.yml", "classes.txt", "names.txt")
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


class DatasetError(ValueError):
    """A dataset that cannot be used at all; the message says which path and why."""


@dataclass
class ReadProblem(Problem):
    """A Problem that also records the split it was found in and whether it cost a box."""

    split: str | None = None
    drops_box: bool = False  # True when one annotated box was left out because of it


class ProblemLog:
    """Collects the problems of one read, tagged with the split being read."""

    def __init__(self) -> None:
        self.items: list[ReadProblem] = []
        self.split: str | None = None

    def add(self, path: Path, kind: str, message: str, *, fatal: bool = False,
            drops_box: bool = False, split: str | None = None) -> None:
        self.items.append(ReadProblem(Path(path), kind, message, fatal, split or self.split, drops_box))


def probe(path: Path, log: ProblemLog) -> tuple[int, int] | None:
    """Displayed (w, h) of an image, or None after logging why the image cannot be used."""
    try:
        return probe_image(path)
    except ImageReadError as e:
        kind = "missing_image" if e.reason == "file not found" else "unreadable_image"
        log.add(path, kind, f"{e.reason}; image left out", fatal=True)
        return None


def clean_boxes(raw: np.ndarray, labels: np.ndarray, width: int, height: int, num_classes: int,
                source: Path, log: ProblemLog, where: list[str], polygons: list | None = None):
    """Drop or clip bad boxes (absolute xyxy) and log one problem per affected box.

    ``where`` names each box in messages (e.g. "line 3"). Each box gets the first that applies
    of: non-finite, class out of range, degenerate (x2<=x1 or y2<=y1), outside the image.
    Vectorised; only the rare bad boxes go through the Python loop that writes messages.
    Returns (boxes, labels), or (boxes, labels, polygons) when ``polygons`` (one outline per
    box) is given: the outlines of dropped boxes go with them.
    """
    boxes = np.asarray(raw, np.float64).reshape(-1, 4)
    labels = np.asarray(labels, np.int64).reshape(-1)
    limits = np.array([width, height, width, height], np.float64)
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(boxes).all(1)
        known = (labels >= 0) & (labels < num_classes)
        positive = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        clipped = np.clip(boxes, 0, limits)
        reach = np.abs(clipped - boxes).max(1)
        left = np.minimum(clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1])
    far = finite & known & positive & (reach > EDGE_TOLERANCE_PX)
    keep = finite & known & positive & ~(far & (left < 1e-6))
    for i in np.flatnonzero(~keep | far):
        desc = f"{where[i]}: box {_fmt_box(boxes[i])}"
        if not finite[i]:
            log.add(source, "nonfinite_box", f"{desc} has NaN/inf coordinates; dropped", drops_box=True)
        elif not known[i]:
            log.add(source, "bad_class", f"{where[i]}: class id {labels[i]} outside 0..{num_classes - 1}; dropped",
                    drops_box=True)
        elif not positive[i]:
            log.add(source, "degenerate_box", f"{desc} has zero or negative size; dropped", drops_box=True)
        elif not keep[i]:
            log.add(source, "out_of_range_box", f"{desc} lies outside the {width}x{height} image; dropped",
                    drops_box=True)
        else:
            log.add(source, "out_of_range_box",
                    f"{desc} reaches {reach[i]:.1f} px outside the {width}x{height} image; clipped")
    if polygons is not None:
        return clipped[keep].astype(np.float32), labels[keep], [polygons[i] for i in np.flatnonzero(keep)]
    return clipped[keep].astype(np.float32), labels[keep]


def _fmt_box(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in box) + "]"


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted for a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def split_name(text: str) -> str | None:
    """The split a folder or file name stands for ("valid" -> "val"), or None."""
    return SPLIT_ALIASES.get(text.lower())


def auto_split(items: list, key, fraction_val: float = 0.2) -> dict[str, list]:
    """Deterministic train/val split: items ranked by a hash of ``key(item)``, the last 20% is val.

    Ranking by hash rather than by position avoids putting, say, the images recorded last
    wholly into val; the input order is kept inside each split.
    """
    def rank(i: int) -> bytes:
        return hashlib.blake2b(str(key(items[i])).encode(), digest_size=8).digest()

    order = sorted(range(len(items)), key=rank)
    n_val = int(round(len(items) * fraction_val)) if len(items) > 1 else 0
    val = set(order[len(items) - n_val:])
    return {"train": [it for i, it in enumerate(items) if i not in val],
            "val": [it for i, it in enumerate(items) if i in val]}


def read_names_file(path: Path) -> list[str] | None:
    """Class names from a data.yaml (names: list or {id: name}) or a one-name-per-line txt."""
    if path.suffix in (".yaml", ".yml"):
        return names_from_yaml(path, load_yaml(path).get("names"), required=False)
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    names = [ln for ln in lines if ln]
    return names or None


def find_names(root: Path, extra_dirs: tuple[Path, ...] = ()) -> tuple[list[str] | None, Path | None]:
    for folder in (root, *extra_dirs):
        for fname in NAMES_FILES:
            f = folder / fname
            if f.is_file():
                names = read_names_file(f)
                if names:
                    return names, f
    return None, None


def load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise DatasetError(f"{path}: not a readable YAML file ({e.__class__.__name__}: {e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a mapping of keys (path/train/val/test/names)")
    return data


def names_from_yaml(path: Path, names, required: bool = True) -> list[str] | None:
    if names is None:
        if required:
            raise DatasetError(f"{path}: 'names' is missing (a list of class names or {{id: name}})")
        return None
    if isinstance(names, dict):
        try:
            by_id = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: 'names' keys must be integer class ids") from None
        missing = sorted(set(range(len(by_id))) - set(by_id))
        if missing:
            raise DatasetError(f"{path}: 'names' ids must be 0..{len(by_id) - 1}; missing {missing}")
        return [by_id[i] for i in range(len(by_id))]
    if isinstance(names, (list, tuple)) and names:
        return [str(n) for n in names]
    raise DatasetError(f"{path}: 'names' must be a non-empty list or {{id: name}} mapping")


class FileNamer:
    """Unique output file names: keeps the original name, adds _1, _2... on a clash."""

    def __init__(self) -> None:
        self._used: set[str] = set()
        self._given: dict[Path, str] = {}

    def name(self, src: Path) -> str:
        if src in self._given:
            return self._given[src]
        stem, suffix, n = src.stem, src.suffix, 0
        candidate = src.name
        while candidate.lower() in self._used:
            n += 1
            candidate = f"{stem}_{n}{suffix}"
        self._used.add(candidate.lower())
        self._given[src] = candidate
        return candidate


def place_image(src: Path, dst: Path, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if link:
        os.symlink(src.resolve(), dst)
    else:
        shutil.copy2(src, dst)


def prepare_output(out: Path) -> Path:
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out}: output folder exists and is not empty; choose a new one")
    out.mkdir(parents=True, exist_ok=True)
    return out
