"""Dataset health report (``detforge data check``): counts, problems, tiny boxes, duplicates, leaks.

The readers have already dropped or repaired bad boxes and logged each as a Problem; this
report counts those and also re-tests the samples themselves, so a DetectionData built by
other code (or edited after reading) is checked just as well. Exact duplicates are found by
hashing file bytes (blake2b); the same picture in two splits is a leak, listed as pairs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detforge.data.formats.common import EDGE_TOLERANCE_PX
from detforge.data.polygons import drop_repeated_vertices, ring_self_crosses
from detforge.records import DetectionData, Sample

# Problem kinds that cost a box, for problems that do not say so themselves
_DROPPING_KINDS = {"degenerate_box", "nonfinite_box", "bad_class", "malformed_line", "dangling_annotation"}
_SHOWN_PER_KIND = 10


@dataclass
class SplitStats:
    images: int = 0
    background: int = 0
    boxes: int = 0  # usable boxes (after the reader dropped bad ones)
    boxes_per_class: dict[str, int] = field(default_factory=dict)
    images_per_class: dict[str, int] = field(default_factory=dict)
    tiny_boxes: int = 0
    outlines: int = 0  # objects with an instance outline (polygons)


@dataclass
class CheckReport:
    root: str
    layout: str
    names: list[str]
    tiny: float
    splits: dict[str, SplitStats]
    problems: dict[str, list[dict]]  # kind -> [{"file", "message", "split"}]
    boxes_in_files: int  # usable boxes + boxes the reader dropped
    degenerate_boxes: int
    out_of_range_boxes: int
    nonfinite_boxes: int
    bad_class_boxes: int
    images_left_out: int
    duplicates: dict[str, list[list[str]]]  # split -> groups of identical files inside it
    leaks: list[dict]  # {"split_a", "image_a", "split_b", "image_b"}: one picture in two splits

    @property
    def images(self) -> int:
        return sum(s.images for s in self.splits.values())

    @property
    def boxes(self) -> int:
        return sum(s.boxes for s in self.splits.values())

    def problem_counts(self) -> dict[str, int]:
        return {kind: len(items) for kind, items in self.problems.items()}

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(images=self.images, boxes=self.boxes, problem_counts=self.problem_counts())
        return out

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=1), encoding="utf-8")
        return path

    def format(self) -> str:
        lines = [f"Dataset {self.root} ({self.layout}), {len(self.names)} classes: {', '.join(self.names)}"]
        header = ["split", "images", "background", "boxes", *self.names, f"tiny<{self.tiny:g}px"]
        rows = [[split, s.images, s.background, s.boxes, *(s.boxes_per_class.get(n, 0) for n in self.names),
                 s.tiny_boxes] for split, s in self.splits.items()]
        rows.append(["total", *(sum(r[i] for r in rows) for i in range(1, len(header)))])
        widths = [max(len(str(v)) for v in col) for col in zip(header, *rows)]
        for row in [header, *rows]:
            lines.append("  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)
                                   for i, (v, w) in enumerate(zip(row, widths))))
        dropped = self.boxes_in_files - self.boxes
        lines.append(f"Boxes in the files: {self.boxes_in_files} ({self.boxes} usable, {dropped} dropped); "
                     f"degenerate {self.degenerate_boxes}, out of range {self.out_of_range_boxes}, "
                     f"NaN/inf {self.nonfinite_boxes}, class outside names {self.bad_class_boxes}; "
                     f"images left out {self.images_left_out}")
        outlines = sum(s.outlines for s in self.splits.values())
        if outlines:
            bad = {k: len(self.problems.get(k, [])) for k in ("bad_polygon", "self_crossing_polygon", "out_of_range_polygon")}
            lines.append(f"Instance outlines: {outlines} of {self.boxes} objects; bad polygons: fewer than 3 points / "
                         f"NaN / no area {bad['bad_polygon']}, self-crossing {bad['self_crossing_polygon']}, "
                         f"out of the image {bad['out_of_range_polygon']}")
        if self.problems:
            lines.append("Problems:")
            for kind, items in sorted(self.problems.items()):
                lines.append(f"  {kind}: {len(items)}")
                lines += [f"    {it['file']}: {it['message']}" for it in items[:_SHOWN_PER_KIND]]
                if len(items) > _SHOWN_PER_KIND:
                    lines.append(f"    ... and {len(items) - _SHOWN_PER_KIND} more")
        for split, groups in self.duplicates.items():
            lines.append(f"Identical images within {split}: {len(groups)} groups")
            lines += [f"    {' == '.join(g)}" for g in groups[:_SHOWN_PER_KIND]]
        if self.leaks:
            lines.append(f"Leaks (identical images in two splits): {len(self.leaks)} pairs")
            lines += [f"    {lk['split_a']}:{lk['image_a']} == {lk['split_b']}:{lk['image_b']}"
                      for lk in self.leaks[:_SHOWN_PER_KIND]]
        if not (self.problems or self.duplicates or self.leaks):
            lines.append("No problems found.")
        return "\n".join(lines)


def check_dataset(data: DetectionData, tiny: float = 4.0) -> CheckReport:
    """Health report of a dataset as read (with its reader's problems)."""
    problems: dict[str, list[dict]] = {}
    for p in data.problems:
        _add(problems, p.kind, p.path, p.message, getattr(p, "split", None))
    dropped = sum(1 for p in data.problems if getattr(p, "drops_box", p.kind in _DROPPING_KINDS))
    splits = {}
    for split, samples in data.splits.items():
        splits[split] = _split_stats(samples, data.names, tiny)
        for s in samples:
            for kind, message in _sample_faults(s, len(data.names)):
                _add(problems, kind, s.image_path, f"{message} (in the loaded sample)", split)
    duplicates, leaks = _duplicates(data)
    return CheckReport(
        root=str(data.root), layout=data.layout, names=list(data.names), tiny=tiny, splits=splits,
        problems=problems, boxes_in_files=sum(s.boxes for s in splits.values()) + dropped,
        degenerate_boxes=len(problems.get("degenerate_box", [])),
        out_of_range_boxes=len(problems.get("out_of_range_box", [])),
        nonfinite_boxes=len(problems.get("nonfinite_box", [])),
        bad_class_boxes=len(problems.get("bad_class", [])),
        images_left_out=sum(1 for p in data.problems if p.fatal_for_sample),
        duplicates=duplicates, leaks=leaks,
    )


def _add(problems: dict[str, list[dict]], kind: str, path: Path, message: str, split: str | None) -> None:
    problems.setdefault(kind, []).append({"file": str(path), "message": message, "split": split})


def _split_stats(samples: list[Sample], names: list[str], tiny: float) -> SplitStats:
    st = SplitStats(images=len(samples))
    for s in samples:
        st.background += s.is_background
        st.boxes += len(s.labels)
        for label in s.labels.tolist():
            name = names[label] if 0 <= label < len(names) else f"id {label}"
            st.boxes_per_class[name] = st.boxes_per_class.get(name, 0) + 1
        for label in set(s.labels.tolist()):
            name = names[label] if 0 <= label < len(names) else f"id {label}"
            st.images_per_class[name] = st.images_per_class.get(name, 0) + 1
        if len(s.boxes):
            sides = np.minimum(s.boxes[:, 2] - s.boxes[:, 0], s.boxes[:, 3] - s.boxes[:, 1])
            st.tiny_boxes += int((sides < tiny).sum())
        st.outlines += sum(1 for rings in s.polygons or [] if rings)
    return st


def _sample_faults(s: Sample, num_classes: int) -> list[tuple[str, str]]:
    """Faults still present in a sample's boxes (a reader drops them; other code may not)."""
    faults = []
    for i, (box, label) in enumerate(zip(s.boxes.astype(np.float64), s.labels.tolist())):
        if not np.isfinite(box).all():
            faults.append(("nonfinite_box", f"box {i} {box.tolist()} has NaN/inf coordinates"))
        elif box[2] <= box[0] or box[3] <= box[1]:
            faults.append(("degenerate_box", f"box {i} {box.tolist()} has zero or negative size"))
        elif (box[:2].min() < -EDGE_TOLERANCE_PX or box[2] > s.width + EDGE_TOLERANCE_PX
              or box[3] > s.height + EDGE_TOLERANCE_PX):
            faults.append(("out_of_range_box", f"box {i} {box.tolist()} leaves the {s.width}x{s.height} image"))
        if not 0 <= label < num_classes:
            faults.append(("bad_class", f"box {i} has class id {label} outside 0..{num_classes - 1}"))
    for i, rings in enumerate(s.polygons or []):
        faults += _outline_faults(i, rings, s.width, s.height)
    return faults


def _outline_faults(i: int, rings: list[np.ndarray], width: int, height: int) -> list[tuple[str, str]]:
    """Bad polygons of object ``i``: fewer than 3 points, NaN/inf, leaving the image, crossing
    itself (edges that cross properly; the zero-width cuts of joined rings do not count)."""
    faults = []
    for j, ring in enumerate(rings):
        ring = np.asarray(ring, np.float64).reshape(-1, 2)
        desc = f"object {i} polygon {j}"
        if len(ring) < 3:
            faults.append(("bad_polygon", f"{desc} has {len(ring)} points (a polygon needs 3)"))
        elif not np.isfinite(ring).all():
            faults.append(("bad_polygon", f"{desc} has NaN/inf coordinates"))
        elif (ring.min(0) < -EDGE_TOLERANCE_PX).any() or (ring.max(0) > np.array([width, height]) + EDGE_TOLERANCE_PX).any():
            faults.append(("out_of_range_polygon", f"{desc} leaves the {width}x{height} image"))
        elif ring_self_crosses(drop_repeated_vertices(ring)):
            faults.append(("self_crossing_polygon", f"{desc} crosses itself"))
    return faults


def _duplicates(data: DetectionData) -> tuple[dict[str, list[list[str]]], list[dict]]:
    digests: dict[Path, str] = {}
    where: dict[str, list[tuple[str, Path]]] = {}
    for split, samples in data.splits.items():
        for s in samples:
            if s.image_path not in digests:
                digests[s.image_path] = _digest(s.image_path)
            where.setdefault(digests[s.image_path], []).append((split, s.image_path))
    duplicates: dict[str, list[list[str]]] = {}
    leaks: list[dict] = []
    for places in where.values():
        if len(places) < 2:
            continue
        by_split: dict[str, list[Path]] = {}
        for split, path in places:
            by_split.setdefault(split, []).append(path)
        for split, paths in by_split.items():
            if len(paths) > 1:
                duplicates.setdefault(split, []).append([str(p) for p in paths])
        order = list(by_split)
        for i, a in enumerate(order):
            for b in order[i + 1:]:
                leaks += [{"split_a": a, "image_a": str(pa), "split_b": b, "image_b": str(pb)}
                          for pa in by_split[a] for pb in by_split[b]]
    return duplicates, leaks


def _digest(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
    except OSError:
        return f"unreadable:{path}"


def describe_problems(problems: list[Any], root: Any, data_arg: str | None, first: int = 5) -> str | None:
    """One warning naming the first files with problems and the count of the rest."""
    if not problems:
        return None
    counts: dict[str, int] = {}
    for p in problems:
        counts[p.kind] = counts.get(p.kind, 0) + 1
    shown = "; ".join(f"{p.path}: {p.message}" for p in problems[:first])
    more = f"; and {len(problems) - first} more" if len(problems) > first else ""
    return (f"data: {len(problems)} problems found while reading {root} "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}): {shown}{more}. "
            f"`detforge data check data={data_arg or '<built-in>'}` lists them all")
