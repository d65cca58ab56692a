"""YOLO / Ultralytics txt labels: one ``cls cx cy w h`` line per box, normalised to [0, 1].

Folder layouts read here: ``images/{train,val,test}/`` + ``labels/{same}/`` (nested),
``{train,valid,test}/images`` + ``{...}/labels`` (flat, Roboflow style), or plain
``images/`` + ``labels/`` (then a deterministic 80/20 train/val split is made). A label file
belongs to an image by the Ultralytics rule: the last ``images`` folder in the image path
becomes ``labels`` and the suffix becomes ``.txt``. Lines with 1 + 2k numbers (k >= 3) are
polygons (Ultralytics segmentation labels, ``cls x1 y1 x2 y2 ...`` normalised): the object's
outline, and its bounding box is the box. A file may mix both kinds of line; the writer writes
every object of an image with outlines as a polygon (its box's corners when it has none),
because Ultralytics reads a file with any polygon as all polygons.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from detforge.data.formats.common import (
    NAMES_FILES,
    DatasetError,
    FileNamer,
    ProblemLog,
    auto_split,
    clean_boxes,
    find_names,
    list_images,
    place_image,
    prepare_output,
    probe,
    split_name,
)
from detforge.data.formats.outlines import clean_outline
from detforge.data.image_io import is_image_file
from detforge.data.polygons import box_ring, join_outline
from detforge.records import DetectionData, Sample


@dataclass
class RawLabels:
    """Parsed but not yet validated label lines of one image (class ids may be anything)."""

    image: Path
    label_file: Path
    size: tuple[int, int]
    boxes: np.ndarray  # float64 [N, 4] absolute xyxy, may be non-finite or degenerate
    labels: np.ndarray  # int64 [N]
    where: list[str]
    rings: list[list[np.ndarray]] | None = None  # per line: [] or [ring abs px]; None: no polygon line


def label_path_for(image: Path) -> Path:
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")  # labels beside the images


def parse_label_file(path: Path, size: tuple[int, int], log: ProblemLog
                     ) -> tuple[np.ndarray, np.ndarray, list[str], list[list[np.ndarray]] | None]:
    """Boxes (absolute xyxy, unvalidated), class ids, line tags and outlines (per line ``[]``
    or ``[ring]`` in absolute pixels; None when no line is a polygon); malformed lines logged."""
    w, h = size
    boxes, labels, where, rings = [], [], [], []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        log.add(path, "unreadable_label", f"label file cannot be read ({type(e).__name__}); its boxes are lost")
        return np.zeros((0, 4)), np.zeros(0, np.int64), [], None
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.replace(",", " ").split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = None
        polygon = values is not None and len(values) >= 7 and len(values) % 2 == 1
        integral_class = values is not None and np.isfinite(values[0]) and values[0] == int(values[0])
        if not integral_class or not (len(values) == 5 or polygon):
            log.add(path, "malformed_line",
                    f"line {n}: '{line.strip()[:60]}' is not 'class cx cy w h' (or a polygon); dropped",
                    drops_box=True)
            continue
        if polygon:
            xs, ys = np.asarray(values[1::2]), np.asarray(values[2::2])
            box = [xs.min() * w, ys.min() * h, xs.max() * w, ys.max() * h]
            rings.append([np.stack([xs * w, ys * h], 1)])
        else:
            cx, cy, bw, bh = values[1:]
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
            rings.append([])
        boxes.append(box)
        labels.append(int(values[0]))
        where.append(f"line {n}")
    outlines = rings if any(rings) else None
    return np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(labels, np.int64), where, outlines


def read_image_splits(images: dict[str, list[Path]], names: list[str] | None, root: Path, log: ProblemLog,
                      label_dirs: set[Path] | None = None) -> tuple[list[str], dict[str, list[Sample]]]:
    """Read the YOLO labels of images grouped by split; invents names when none are given."""
    raw: dict[str, list[RawLabels]] = {}
    claimed: set[Path] = set()
    for split, paths in images.items():
        log.split = split
        raw[split] = []
        for image in paths:
            size = probe(image, log)
            label = label_path_for(image)
            claimed.add(label)
            if size is None:
                continue
            if not label.is_file():
                log.add(image, "missing_label", f"no label file {label.name}; used as a background image")
                raw[split].append(RawLabels(image, label, size, np.zeros((0, 4)), np.zeros(0, np.int64), []))
                continue
            raw[split].append(RawLabels(image, label, size, *parse_label_file(label, size, log)))
    log.split = None
    # orphans are looked for in the given label folders and in labels/ folders the images point to
    dirs = (label_dirs or set()) | {lab.parent for lab in claimed if "labels" in lab.parent.parts}
    _report_orphans(dirs, claimed, log)
    if names is None:  # with no usable image at all, that is the error to report (by the caller)
        names = _invent_names(raw, root, log) if any(raw.values()) else []
    splits: dict[str, list[Sample]] = {}
    for split, items in raw.items():
        log.split = split
        splits[split] = []
        for r in items:
            if r.rings is None:
                boxes, labels = clean_boxes(r.boxes, r.labels, *r.size, len(names), r.label_file, log, r.where)
                splits[split].append(Sample(r.image, boxes, labels, *r.size))
                continue
            outlines = [clean_outline(rings, *r.size, r.label_file, log, at) for rings, at in zip(r.rings, r.where)]
            boxes, labels, outlines = clean_boxes(r.boxes, r.labels, *r.size, len(names), r.label_file, log,
                                                  r.where, polygons=outlines)
            splits[split].append(Sample(r.image, boxes, labels, *r.size, polygons=outlines))
    log.split = None
    return names, splits


def _invent_names(raw: dict[str, list[RawLabels]], root: Path, log: ProblemLog) -> list[str]:
    ids = [int(r.labels.max()) for items in raw.values() for r in items if len(r.labels)]
    if not ids:
        raise DatasetError(
            f"{root}: class names are missing (no {' / '.join(NAMES_FILES)}) and no label has a class id to "
            "count them from"
        )
    count = max(ids) + 1
    names = [f"class{i}" for i in range(count)]
    log.add(root, "invented_names",
            f"no {' / '.join(NAMES_FILES)} found: {count} class names invented from the largest class id "
            f"({', '.join(names[:5])}{', ...' if count > 5 else ''})")
    return names


def _report_orphans(label_dirs: set[Path], claimed: set[Path], log: ProblemLog) -> None:
    seen: set[Path] = set()
    for folder in sorted(label_dirs):
        if not folder.is_dir() or any(parent in seen for parent in folder.parents):
            continue
        seen.add(folder)
        for txt in sorted(folder.rglob("*.txt")):
            if txt not in claimed and txt.name not in NAMES_FILES:
                log.add(txt, "orphan_label", "label file has no image with the same name; its boxes are not used")


def find_yolo_splits(root: Path, log: ProblemLog) -> dict[str, list[Path]] | None:
    """Split name -> image folders for the nested or flat layout ("" when there are no split
    folders); None when neither layout is there. "val" and "valid" folders both count as val."""
    images = root / "images"
    found: dict[str, list[Path]] = {}
    if images.is_dir() and (root / "labels").is_dir():
        for d in sorted(images.iterdir()):
            if d.is_dir() and split_name(d.name):
                found.setdefault(split_name(d.name), []).append(d)
        if not found:
            return {"": [images]}
        for loose in sorted(p for p in images.iterdir() if p.is_file() and is_image_file(p)):
            log.add(loose, "unlisted_image", f"image lies in {images} outside the split folders; not used")
        return found
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if d.is_dir() and split_name(d.name) and (d / "images").is_dir():
            found.setdefault(split_name(d.name), []).append(d / "images")
    return found or None


def read_yolo(root: Path) -> DetectionData:
    log = ProblemLog()
    folders = find_yolo_splits(root, log)
    if folders is None:
        raise DatasetError(f"{root}: no images/ + labels/ folders (YOLO layout)")
    if "" in folders:  # no split folders: one pool split deterministically
        pool = list_images(folders[""][0])
        images = auto_split(pool, key=lambda p: p.relative_to(root))
        log.add(folders[""][0], "auto_split",
                f"no train/val folders: made a deterministic 80/20 split ({len(images['train'])} train, "
                f"{len(images['val'])} val)")
    else:
        images = {}
        for split, dirs in folders.items():
            images[split] = [p for d in dirs for p in list_images(d)]
            if not images[split]:
                log.add(dirs[0], "empty_split", f"split '{split}' has no images", split=split)
    label_dirs = {label_path_for(d / "x.jpg").parent for dirs in folders.values() for d in dirs}
    names, _ = find_names(root, (root / "labels",))
    names, splits = read_image_splits(images, names, root, log, label_dirs)
    return DetectionData(names, splits, root, "yolo", log.items)


def yolo_seg_line(label: int, rings: list[np.ndarray], width: int, height: int) -> str:
    """``cls x1 y1 x2 y2 ...`` normalised; several rings are joined into one by zero-width cuts."""
    ring = join_outline(rings) / np.array([width, height], np.float64)
    return f"{int(label)} " + " ".join(f"{v:.8g}" for v in ring.reshape(-1))


def yolo_line(label: int, box: np.ndarray, width: int, height: int) -> str:
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
    bw, bh = (x2 - x1) / width, (y2 - y1) / height
    # 8 significant digits keep round trips within 1e-3 px even on 10k-pixel images
    return f"{int(label)} {cx:.8g} {cy:.8g} {bw:.8g} {bh:.8g}"


def sample_lines(s: Sample) -> list[str]:
    """A sample's label lines: boxes, or polygons for every object when it has any outline."""
    if s.polygons is None or not any(s.polygons):
        return [yolo_line(c, b, s.width, s.height) for b, c in zip(s.boxes, s.labels)]
    return [yolo_seg_line(c, rings or [box_ring(b)], s.width, s.height)
            for b, c, rings in zip(s.boxes, s.labels, s.polygons)]


def write_yolo(data: DetectionData, out: Path, link: bool = False) -> Path:
    out = prepare_output(out)
    for split, samples in data.splits.items():
        namer = FileNamer()
        for s in samples:
            name = namer.name(s.image_path)
            place_image(s.image_path, out / "images" / split / name, link)
            label = out / "labels" / split / (Path(name).stem + ".txt")
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("".join(line + "\n" for line in sample_lines(s)), encoding="utf-8")
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
    spec = {"path": ".", **{split: f"images/{split}" for split in data.splits}, "names": list(data.names)}
    (out / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out
