"""COCO detection json: one file per split plus the images.

Found as ``annotations/*.json`` (``instances_train2017.json``, ``train.json``, ...; when
``instances_*`` files exist only those are read, so captions/keypoints files are skipped) or
as Roboflow's ``{train,valid,test}/_annotations.coco.json`` beside the images. Category ids
of any base (0-based, 1-based, sparse) map to labels 0..K-1 in sorted id order; the writer
writes ids 1..K. ``iscrowd=1`` regions are not objects to detect: they become the sample's
``crowd_boxes`` / ``crowd_labels``, ignore regions for evaluation (as pycocotools treats them),
never training targets; the writer writes them back with ``iscrowd: 1``. Each sample keeps the
file's image id and the data its category ids, so results can be written in the file's ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from detforge.data.formats.common import (
    DatasetError,
    FileNamer,
    ProblemLog,
    auto_split,
    clean_boxes,
    place_image,
    prepare_output,
    probe,
    split_name,
)
from detforge.data.formats.outlines import clean_outline, coco_segmentation_rings
from detforge.data.polygons import polygon_flat
from detforge.eval.coco import object_areas
from detforge.records import DetectionData, Sample

ROBOFLOW_JSON = "_annotations.coco.json"


def find_coco_files(root: Path) -> list[Path]:
    files: list[Path] = []
    ann = root / "annotations"
    if ann.is_dir():
        jsons = sorted(ann.glob("*.json"))
        files += [j for j in jsons if j.name.startswith("instances_")] or jsons
    if (root / ROBOFLOW_JSON).is_file():
        files.append(root / ROBOFLOW_JSON)
    if root.is_dir():
        files += sorted(d / ROBOFLOW_JSON for d in root.iterdir() if d.is_dir() and (d / ROBOFLOW_JSON).is_file())
    return files


def json_split(path: Path) -> str | None:
    """train/val/test from a COCO file's name ("instances_val2017" -> val, "valid/_annotations" -> val)."""
    if path.name == ROBOFLOW_JSON:
        return split_name(path.parent.name)
    name = path.stem.lower().removeprefix("instances_")
    for token, split in (("train", "train"), ("val", "val"), ("test", "test")):
        if token in name:
            return split
    return None


def read_coco(root: Path) -> DetectionData:
    files = find_coco_files(root)
    log = ProblemLog()
    loaded = [(f, doc) for f in files if (doc := _load(f, log)) is not None]
    if not loaded:
        raise DatasetError(f"{root}: no readable COCO json with an 'images' list")
    names, cat_to_label = _categories(loaded)
    by_split: dict[str, tuple[Path, dict]] = {}
    unnamed = [(f, d) for f, d in loaded if json_split(f) is None]
    if unnamed and len(loaded) > 1:
        raise DatasetError(f"{root}: cannot tell the split of {', '.join(str(f) for f, _ in unnamed)}; "
                           "put train / val / test in the file name (e.g. instances_val.json)")
    splits: dict[str, list[Sample]] = {}
    for f, doc in loaded:
        split = json_split(f)
        if split in by_split:
            raise DatasetError(f"{root}: both {by_split[split][0].name} and {f.name} look like the '{split}' split")
        by_split[split or ""] = (f, doc)
        log.split = split
        samples = _read_split(root, f, doc, cat_to_label, log)
        if split is None:
            parts = auto_split(samples, key=lambda s: s.image_path.name)
            log.add(f, "auto_split", f"file name names no split: made a deterministic 80/20 split "
                                     f"({len(parts['train'])} train, {len(parts['val'])} val)")
            splits.update(parts)
        else:
            splits[split] = samples
    log.split = None
    return DetectionData(names, splits, root, "coco", log.items, category_ids=sorted(cat_to_label))


def _load(path: Path, log: ProblemLog) -> dict | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: not a readable json file ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        log.add(path, "ignored_file", "not a COCO detection file (no 'images' list); ignored")
        return None
    return doc


def _categories(loaded: list[tuple[Path, dict]]) -> tuple[list[str], dict[int, int]]:
    by_id: dict[int, str] = {}
    for f, doc in loaded:
        for cat in doc.get("categories") or []:
            cid, name = int(cat["id"]), str(cat.get("name", cat["id"]))
            if by_id.setdefault(cid, name) != name:
                raise DatasetError(f"{f}: category id {cid} is '{name}' here but '{by_id[cid]}' in another file")
    if not by_id:
        raise DatasetError(f"{loaded[0][0]}: 'categories' is missing or empty, so class names are unknown")
    ids = sorted(by_id)
    return [by_id[i] for i in ids], {cid: label for label, cid in enumerate(ids)}


def _read_split(root: Path, json_path: Path, doc: dict, cat_to_label: dict[int, int],
                log: ProblemLog) -> list[Sample]:
    image_dirs = _image_dirs(root, json_path)
    records = {img.get("id"): img for img in doc["images"] if isinstance(img, dict)}
    anns: dict[object, list[dict]] = {}
    for a in doc.get("annotations") or []:
        if a.get("image_id") not in records:
            log.add(json_path, "dangling_annotation",
                    f"annotation id {a.get('id')} refers to image_id {a.get('image_id')}, which is not in "
                    "'images'; dropped", drops_box=True)
            continue
        anns.setdefault(a["image_id"], []).append(a)
    samples = []
    for img in records.values():
        path = _find_image(image_dirs, str(img.get("file_name", "")))
        size = probe(path, log)
        if size is None:
            continue
        _check_size(json_path, img, size, log)
        parsed: dict[bool, tuple[list, list, list]] = {False: ([], [], []), True: ([], [], [])}
        outlines: list[list[np.ndarray]] = []  # one per object (not crowd region) kept so far
        for a in anns.get(img.get("id"), []):
            crowd = bool(a.get("iscrowd"))
            at = f"{path.name} {'crowd region' if crowd else 'annotation'} id {a.get('id')}"
            boxes, labels, where = parsed[crowd]
            bbox = a.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
                log.add(json_path, "malformed_line", f"{at}: bbox {bbox!r} is not [x, y, w, h]; dropped",
                        drops_box=True)
                continue
            if a.get("category_id") not in cat_to_label:
                log.add(json_path, "bad_class", f"{at}: category_id {a.get('category_id')} is not among the "
                                                f"categories {sorted(cat_to_label)}; dropped", drops_box=True)
                continue
            x, y, w, h = (float(v) for v in bbox)
            boxes.append([x, y, x + w, y + h])
            labels.append(cat_to_label[a["category_id"]])
            where.append(at)
            if not crowd:
                rings = coco_segmentation_rings(a.get("segmentation"), *size, json_path, log, at)
                outlines.append(clean_outline(rings, *size, json_path, log, at))
        bx, lb, at = parsed[False]
        *objects, outlines = clean_boxes(np.asarray(bx, np.float64).reshape(-1, 4), np.asarray(lb, np.int64),
                                         *size, len(cat_to_label), json_path, log, at, polygons=outlines)
        bx, lb, at = parsed[True]
        crowds = clean_boxes(np.asarray(bx, np.float64).reshape(-1, 4), np.asarray(lb, np.int64),
                             *size, len(cat_to_label), json_path, log, at)
        samples.append(Sample(path, *objects, *size, crowd_boxes=crowds[0], crowd_labels=crowds[1],
                              image_id=img.get("id"), polygons=outlines if any(outlines) else None))
    return samples


def _image_dirs(root: Path, json_path: Path) -> list[Path]:
    stem = json_path.stem.removeprefix("instances_")
    split = json_split(json_path) or ""
    dirs = [json_path.parent, root / "images" / stem, root / "images" / split, root / "images", root / stem,
            root / split, root]
    return list(dict.fromkeys(d for d in dirs if d.is_dir()))


def _find_image(dirs: list[Path], file_name: str) -> Path:
    p = Path(file_name)
    if p.is_absolute():
        return p
    for d in dirs:
        if (d / p).is_file():
            return d / p
    return (dirs[0] if dirs else Path()) / p  # reported as missing by the reader


def _check_size(json_path: Path, img: dict, size: tuple[int, int], log: ProblemLog) -> None:
    declared = (img.get("width"), img.get("height"))
    if None in declared or tuple(declared) == size:
        return
    hint = " (the EXIF orientation swaps them: boxes are taken as drawn on the displayed image)" \
        if tuple(declared) == size[::-1] else ""
    log.add(json_path, "size_mismatch",
            f"{img.get('file_name')}: json says {declared[0]}x{declared[1]}, the image is {size[0]}x{size[1]}{hint}")


def coco_ids(data: DetectionData, samples: list[Sample]) -> tuple[list, list[int]]:
    """(image id of each sample, category id of each class) of a COCO ground truth for
    ``samples``: the annotation file's own ids where the data came from COCO, else 1..N in
    sample order and 1..K (what ``write_coco`` writes)."""
    image_ids = [s.image_id for s in samples]
    if any(i is None for i in image_ids) or len(set(image_ids)) != len(image_ids):
        image_ids = list(range(1, len(samples) + 1))
    category_ids = list(data.category_ids) if data.category_ids else list(range(1, len(data.names) + 1))
    return image_ids, category_ids


def coco_ground_truth(samples: list[Sample], names: list[str], image_ids: list, category_ids: list[int],
                      file_names: list[str] | None = None) -> dict:
    """A COCO dataset dict (images, annotations with crowd regions as ``iscrowd: 1``,
    categories) for ``samples``. Boxes are written as exact float64 xywh of the float32 boxes,
    so ``x + w`` gives the box back bit for bit; ``area`` is ``w * h``. An object with an
    outline gets it as a polygon ``segmentation`` (one list per ring) and its mask's area as
    ``area``, as COCO files have them (validation sizes such objects the same way)."""
    categories = [{"id": int(c), "name": n, "supercategory": "none"} for c, n in zip(category_ids, names)]
    images, annotations = [], []
    for i, (s, image_id) in enumerate(zip(samples, image_ids)):
        name = file_names[i] if file_names is not None else s.image_path.name
        images.append({"id": image_id, "file_name": name, "width": s.width, "height": s.height})
        outlines = s.polygons or [[]] * len(s.boxes)
        areas = object_areas(s.boxes, s.polygons, s.height, s.width)
        for boxes, labels, crowd in ((s.boxes, s.labels, 0), (s.crowd_boxes, s.crowd_labels, 1)):
            for k, ((x1, y1, x2, y2), label) in enumerate(zip(boxes.tolist(), labels.tolist())):
                w, h = x2 - x1, y2 - y1
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": int(category_ids[label]), "bbox": [x1, y1, w, h], "area": w * h,
                                    "iscrowd": crowd})
                if not crowd and outlines[k]:
                    annotations[-1]["segmentation"] = [polygon_flat(r, ndigits=4) for r in outlines[k]]
                    annotations[-1]["area"] = float(areas[k])
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco(data: DetectionData, out: Path, link: bool = False) -> Path:
    out = prepare_output(out)
    (out / "annotations").mkdir()
    category_ids = list(range(1, len(data.names) + 1))
    for split, samples in data.splits.items():
        namer = FileNamer()
        names = [namer.name(s.image_path) for s in samples]
        for s, name in zip(samples, names):
            place_image(s.image_path, out / "images" / split / name, link)
        doc = coco_ground_truth(samples, data.names, list(range(1, len(samples) + 1)), category_ids, names)
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc), encoding="utf-8")
    return out
