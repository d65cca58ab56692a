"""Pascal VOC: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/{train,val,test}.txt``.

VOC coordinates are 1-based pixel indices and xmax/ymax name the last pixel *inside* the
box, so a box covering pixels 1..10 spans 10 pixels. In detforge's continuous pixel frame
(the first pixel covers [0, 1)) that box is [xmin - 1, xmax]: subtract 1 from xmin and ymin
only. A box whose corners coincide in the file (xmax <= xmin or ymax <= ymin) is a click
without a drag in the annotation tool, not a one-pixel object: it is reported as degenerate.
``difficult`` objects are kept as ordinary boxes. Class names come from a classes.txt /
data.yaml in the root when present, else from the sorted unique object names.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detforge.data.formats.common import (
    SPLITS,
    FileNamer,
    ProblemLog,
    auto_split,
    clean_boxes,
    find_names,
    list_images,
    place_image,
    prepare_output,
    probe,
)
from detforge.records import DetectionData, Sample


@dataclass
class VocEntry:
    """One annotation file as parsed: boxes still in VOC's 1-based inclusive coordinates."""

    xml: Path
    filename: str | None = None
    size: tuple[int, int] | None = None
    objects: list[tuple[str, list[float] | None, str]] = field(default_factory=list)  # name, box, tag


def read_voc(root: Path) -> DetectionData:
    log = ProblemLog()
    xmls = {p.stem: p for p in sorted((root / "Annotations").glob("*.xml"))}
    images = {p.stem: p for p in list_images(root / "JPEGImages")} if (root / "JPEGImages").is_dir() else {}
    split_ids = _split_ids(root, sorted(set(xmls) | set(images)), log)
    entries = {stem: _parse(xml, log) for stem, xml in xmls.items()}
    names, _ = find_names(root)
    if names is None:
        names = sorted({name for e in entries.values() if e for name, _, _ in e.objects})
    index = {n: i for i, n in enumerate(names)}
    listed = {i for ids in split_ids.values() for i in ids}
    for stem, xml in xmls.items():
        if _image_for(root, stem, entries.get(stem), images) is None:
            log.add(xml, "orphan_label", "annotation has no image in JPEGImages; its boxes are not used")
    for stem, image in images.items():
        if stem not in listed and split_ids:
            log.add(image, "unlisted_image", "image is in no ImageSets/Main split file; not used")
    splits: dict[str, list[Sample]] = {}
    for split, ids in split_ids.items():
        log.split = split
        splits[split] = [s for stem in ids if (s := _sample(root, stem, xmls, entries, images, index, log))]
    log.split = None
    return DetectionData(names, splits, root, "voc", log.items)


def _split_ids(root: Path, all_ids: list[str], log: ProblemLog) -> dict[str, list[str]]:
    sets = root / "ImageSets" / "Main"
    ids = {s: _read_ids(sets / f"{s}.txt") for s in SPLITS if (sets / f"{s}.txt").is_file()}
    if "train" in ids or "val" in ids:
        return ids
    if (sets / "trainval.txt").is_file():
        pool, source = _read_ids(sets / "trainval.txt"), sets / "trainval.txt"
    else:
        pool = [i for i in all_ids if i not in set(ids.get("test", []))]
        source = sets if sets.is_dir() else root
    parts = auto_split(pool, key=str)
    log.add(source, "auto_split", f"no ImageSets/Main/train.txt or val.txt: made a deterministic 80/20 split "
                                  f"({len(parts['train'])} train, {len(parts['val'])} val)")
    return {**parts, **({"test": ids["test"]} if "test" in ids else {})}


def _read_ids(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _parse(xml: Path, log: ProblemLog) -> VocEntry | None:
    try:
        tree = ET.parse(xml).getroot()
    except (ET.ParseError, OSError) as e:
        log.add(xml, "unreadable_label", f"annotation XML cannot be parsed ({e}); image left out", fatal=True)
        return None
    entry = VocEntry(xml, filename=(tree.findtext("filename") or "").strip() or None)
    try:
        entry.size = (int(float(tree.findtext("size/width"))), int(float(tree.findtext("size/height"))))
    except (TypeError, ValueError):
        entry.size = None
    for n, obj in enumerate(tree.iter("object"), 1):
        name = (obj.findtext("name") or "").strip()
        try:
            box = [float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            box = None
        entry.objects.append((name, box, f"object {n} ({name or 'no name'})"))
    return entry


def _image_for(root: Path, stem: str, entry: VocEntry | None, images: dict[str, Path]) -> Path | None:
    if entry and entry.filename and (root / "JPEGImages" / entry.filename).is_file():
        return root / "JPEGImages" / entry.filename
    return images.get(stem)


def _sample(root: Path, stem: str, xmls: dict[str, Path], entries: dict[str, VocEntry | None],
            images: dict[str, Path], index: dict[str, int], log: ProblemLog) -> Sample | None:
    entry = entries.get(stem)
    image = _image_for(root, stem, entry, images)
    if image is None:
        if stem not in xmls:
            log.add(root / "JPEGImages" / f"{stem}.jpg", "missing_image",
                    "listed in ImageSets/Main but has neither image nor annotation; left out", fatal=True)
        return None  # an annotation without image is reported once as orphan_label
    size = probe(image, log)
    if size is None:
        return None
    if stem not in xmls:
        log.add(image, "missing_label", f"no Annotations/{stem}.xml; used as a background image")
        return Sample(image, np.zeros((0, 4)), np.zeros(0), *size)
    if entry is None:
        return None  # unparseable xml, already reported
    if entry.size and entry.size != size:
        hint = " (EXIF orientation swaps them: boxes are taken as drawn on the displayed image)" \
            if entry.size == size[::-1] else ""
        log.add(entry.xml, "size_mismatch",
                f"xml says {entry.size[0]}x{entry.size[1]}, the image is {size[0]}x{size[1]}{hint}")
    boxes, labels, where = [], [], []
    for name, box, tag in entry.objects:
        if box is None:
            log.add(entry.xml, "malformed_line", f"{tag}: bndbox missing or not numeric; dropped", drops_box=True)
        elif name not in index:
            log.add(entry.xml, "bad_class", f"{tag}: class '{name}' is not among the names {list(index)}; dropped",
                    drops_box=True)
        elif box[2] <= box[0] or box[3] <= box[1]:
            log.add(entry.xml, "degenerate_box",
                    f"{tag}: box {[int(v) if v.is_integer() else v for v in box]} has zero or negative size; "
                    "dropped", drops_box=True)
        else:
            boxes.append([box[0] - 1, box[1] - 1, box[2], box[3]])
            labels.append(index[name])
            where.append(tag)
    kept = clean_boxes(np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(labels, np.int64), *size,
                       len(index), entry.xml, log, where)
    return Sample(image, *kept, *size)


def write_voc(data: DetectionData, out: Path, link: bool = False) -> Path:
    out = prepare_output(out)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out / sub).mkdir(parents=True)
    namer = FileNamer()  # one flat folder for all splits: names unique across splits
    for split, samples in data.splits.items():
        ids = []
        for s in samples:
            name = namer.name(s.image_path)
            place_image(s.image_path, out / "JPEGImages" / name, link)
            _write_xml(out / "Annotations" / f"{Path(name).stem}.xml", name, s, data.names)
            ids.append(Path(name).stem)
        (out / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in ids), encoding="utf-8")
    # VOC has no class order of its own: classes.txt keeps label indices (and unused classes)
    (out / "classes.txt").write_text("".join(n + "\n" for n in data.names), encoding="utf-8")
    return out


def _write_xml(path: Path, filename: str, s: Sample, names: list[str]) -> None:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for key, value in (("width", s.width), ("height", s.height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    for (x1, y1, x2, y2), label in zip(s.boxes.tolist(), s.labels.tolist()):
        # back to 1-based inclusive pixel indices, at least one pixel wide and inside the image
        xmin = min(max(1, round(x1) + 1), s.width)
        ymin = min(max(1, round(y1) + 1), s.height)
        xmax, ymax = min(s.width, max(round(x2), xmin)), min(s.height, max(round(y2), ymin))
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = names[label]
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        for key, value in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
            ET.SubElement(bb, key).text = str(value)
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=False)
