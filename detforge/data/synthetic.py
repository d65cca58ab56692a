"""The built-in default dataset: textured shapes on cluttered backgrounds, made on first use.

Four classes (circle, square, triangle, star) of varied size (8-40% of the image side),
aspect, rotation, colour and texture (solid, stripes, noise, gradient) over backgrounds of
gradients, soft blobs, lines and noise; some objects overlap and about 10% of the images hold
no object (``objects=(lo, hi)`` sets the range of objects in the others: 1-6 by default, (1, 2)
for a sparse set). Everything comes from numpy Generators seeded per image, so the files are the
same bytes on every run (and the dataset needs no network). Written in the YOLO layout with
a data.yaml; a manifest written last marks the folder complete, so an interrupted generation
is detected and redone.

Each shape is a polygon with whole-pixel vertices (a circle/ellipse is a 48-gon), painted by
detforge's own rasteriser (a pixel belongs to the shape when its centre lies inside), so the
label files carry every object's exact outline as a YOLO-seg line (``cls x1 y1 x2 y2 ...``
normalised) and its box is the outline's bounds: instance masks are exact, and box-only
readers get the box. (Version 1 drew with OpenCV and wrote boxes only.)
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from detforge.data.formats.yolo import yolo_seg_line
from detforge.data.polygons import clip_ring, drop_repeated_vertices, outline_bounds, rasterize

NAMES = ("circle", "square", "triangle", "star")
VERSION = 2
MANIFEST = "synthetic.json"
BACKGROUND_FRACTION = 0.1
MAX_OBJECTS = 6
SIDE_RANGE = (0.08, 0.40)  # object side as a fraction of the image side
MIN_CONTRAST = 60.0  # least distance between an object's colour and the local background mean
ELLIPSE_VERTICES = 48  # a circle/ellipse is this regular polygon (under 0.2 px from the curve here)
_OUR_ENTRIES = ("images", "labels", "data.yaml", MANIFEST)
_DEFAULTS = {"n_train": 240, "n_val": 60, "size": 320, "seed": 0}
DEFAULT_OBJECTS = (1, MAX_OBJECTS)


@dataclass
class SyntheticImage:
    image: np.ndarray  # RGB uint8 [H, W, 3]
    background: np.ndarray  # the same image before any object was drawn
    boxes: np.ndarray  # float32 [N, 4] xyxy, the bounds of each shape's outline
    labels: np.ndarray  # int64 [N]
    polygons: list  # per object [ring float [K, 2]]: the exact outline it was painted from


def default_root(n_train: int, n_val: int, size: int, seed: int, objects: tuple[int, int] = DEFAULT_OBJECTS) -> Path:
    cache = Path(os.environ.get("DETFORGE_CACHE", "~/.cache/detforge")).expanduser()
    spec = {"n_train": n_train, "n_val": n_val, "size": size, "seed": seed}
    suffix = "" if spec == _DEFAULTS else f"-{n_train}-{n_val}-{size}-{seed}"
    if tuple(objects) != DEFAULT_OBJECTS:
        suffix += f"-obj{objects[0]}-{objects[1]}"
    return cache / f"synthetic-v{VERSION}{suffix}"


def _check_objects(objects) -> tuple[int, int]:
    lo, hi = (int(v) for v in objects)
    if not 1 <= lo <= hi:
        raise ValueError(f"synthetic dataset: objects=({lo}, {hi}) must satisfy 1 <= lo <= hi")
    return lo, hi


def ensure_synthetic(root: Path | None = None, n_train: int = 240, n_val: int = 60, size: int = 320,
                     seed: int = 0, objects: tuple[int, int] = DEFAULT_OBJECTS) -> Path:
    """Folder of the synthetic dataset (with data.yaml), generating it unless already complete.
    ``objects``: (fewest, most) objects in an image that has any."""
    objects = _check_objects(objects)
    root = Path(root).expanduser() if root is not None else default_root(n_train, n_val, size, seed, objects)
    spec = {"version": VERSION, "n_train": n_train, "n_val": n_val, "size": size, "seed": seed}
    if objects != DEFAULT_OBJECTS:  # the default manifest stays as it was, so existing copies stay valid
        spec["objects"] = list(objects)
    if is_complete(root, spec):
        return root
    # build beside the target, then move in: a crash mid-way never leaves a folder that looks complete
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    _generate(tmp, spec)
    if not root.exists():
        try:
            tmp.rename(root)
            return root
        except OSError:  # another process finished first
            if is_complete(root, spec):
                shutil.rmtree(tmp, ignore_errors=True)
                return root
            raise
    for entry in _OUR_ENTRIES:  # an incomplete or outdated copy: replace only what we wrote
        old = root / entry
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink(missing_ok=True)
    for entry in _OUR_ENTRIES:  # the manifest last: only a finished move looks complete
        (tmp / entry).rename(root / entry)
    tmp.rmdir()
    return root


def is_complete(root: Path, spec: dict) -> bool:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if {k: manifest.get(k) for k in spec} != spec:
        return False
    for rel, nbytes in manifest.get("files", {}).items():
        f = root / rel
        if not f.is_file() or f.stat().st_size != nbytes:
            return False
    return True


def _generate(out: Path, spec: dict) -> None:
    files: dict[str, int] = {}
    for split_index, (split, count) in enumerate((("train", spec["n_train"]), ("val", spec["n_val"]))):
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
        for i in range(count):
            rng = np.random.default_rng([spec["seed"], split_index, i])
            sample = render_sample(rng, spec["size"], tuple(spec.get("objects", DEFAULT_OBJECTS)))
            stem = f"{split}_{i:05d}"
            ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, 92])
            if not ok:
                raise RuntimeError(f"OpenCV could not encode {stem}.jpg")
            image_rel = f"images/{split}/{stem}.jpg"
            label_rel = f"labels/{split}/{stem}.txt"
            (out / image_rel).write_bytes(jpg.tobytes())
            lines = [yolo_seg_line(c, rings, spec["size"], spec["size"])
                     for rings, c in zip(sample.polygons, sample.labels)]
            (out / label_rel).write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")
            files[image_rel] = (out / image_rel).stat().st_size
            files[label_rel] = (out / label_rel).stat().st_size
    data_yaml = {"path": ".", "train": "images/train", "val": "images/val", "names": list(NAMES)}
    (out / "data.yaml").write_text(yaml.safe_dump(data_yaml, sort_keys=False), encoding="utf-8")
    files["data.yaml"] = (out / "data.yaml").stat().st_size
    (out / MANIFEST).write_text(json.dumps({**spec, "names": list(NAMES), "files": files}, indent=1))


def render_sample(rng: np.random.Generator, size: int, objects: tuple[int, int] = DEFAULT_OBJECTS) -> SyntheticImage:
    """One image with its objects (``objects``: fewest, most, when it has any); ``background``
    lets tests check what each box holds."""
    lo, hi = _check_objects(objects)
    background = _background(rng, size)
    image = background.copy()
    n = 0 if rng.random() < BACKGROUND_FRACTION else int(rng.integers(lo, hi + 1))
    boxes: list[list[float]] = []
    labels: list[int] = []
    polygons: list[list[np.ndarray]] = []
    for _ in range(n):
        for _attempt in range(20):
            label = int(rng.integers(len(NAMES)))
            ring = _shape_outline(rng, label, size)
            box = outline_bounds([ring]).tolist()
            if box[2] - box[0] >= 2 and box[3] - box[1] >= 2 and not _hides_too_much(box, boxes):
                break
        else:
            continue
        mask = rasterize([ring], size, size).astype(np.uint8)
        _paint(rng, image, mask, cv2.boundingRect(mask))
        boxes.append(box)
        labels.append(label)
        polygons.append([ring.astype(np.float32)])
    return SyntheticImage(image, background, np.asarray(boxes, np.float32).reshape(-1, 4),
                          np.asarray(labels, np.int64), polygons)


def _hides_too_much(box: list[float], boxes: list[list[float]], limit: float = 0.5) -> bool:
    """True when the new box overlaps more than ``limit`` of itself or of an earlier box."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    for b in boxes:
        iw = min(box[2], b[2]) - max(box[0], b[0])
        ih = min(box[3], b[3]) - max(box[1], b[1])
        if iw > 0 and ih > 0:
            inter = iw * ih
            if inter > limit * min(area, (b[2] - b[0]) * (b[3] - b[1])):
                return True
    return False


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    c1, c2 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    t = np.float32(math.cos(angle)) * ramp[None, :] + np.float32(math.sin(angle)) * ramp[:, None]
    t = ((t - t.min()) / max(float(t.max() - t.min()), 1e-6))[..., None]
    img = c1 + (c2 - c1) * t
    # soft blobs, unlike the hard-edged objects: drawn and blurred at 1/4 scale, then upsampled
    small = max(8, size // 4)
    blobs = np.zeros((small, small, 3), np.float32)
    blob_mask = np.zeros((small, small), np.float32)
    for _ in range(int(rng.integers(3, 9))):
        centre = (int(rng.integers(small)), int(rng.integers(small)))
        radius = max(1, int(rng.uniform(0.05, 0.25) * small))
        cv2.circle(blobs, centre, radius, rng.uniform(0, 255, 3).tolist(), -1)
        cv2.circle(blob_mask, centre, radius, 1.0, -1)
    k = max(3, (small // 10) | 1)
    blobs = cv2.resize(cv2.GaussianBlur(blobs, (k, k), 0), (size, size), interpolation=cv2.INTER_LINEAR)
    blob_mask = cv2.resize(cv2.GaussianBlur(blob_mask, (k, k), 0), (size, size),
                           interpolation=cv2.INTER_LINEAR)[..., None]
    img += np.float32(0.6) * (blobs - blob_mask * img)
    for _ in range(int(rng.integers(3, 12))):  # thin clutter lines
        p1 = (int(rng.integers(size)), int(rng.integers(size)))
        p2 = (int(rng.integers(size)), int(rng.integers(size)))
        cv2.line(img, p1, p2, rng.uniform(0, 255, 3).tolist(), int(rng.integers(1, 3)))
    img += _noise(rng, img.shape, rng.uniform(2, 10))
    return np.clip(img, 0, 255).astype(np.uint8)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """Zero-mean uniform noise of a given std; random bytes are ~8x faster than normals here."""
    u = np.frombuffer(rng.bytes(int(np.prod(shape))), np.uint8).reshape(shape).astype(np.float32)
    return (u - np.float32(127.5)) * np.float32(std / 73.9)  # std of uniform 0..255 is 73.9


def _shape_outline(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """The shape's polygon (float64 [K, 2], absolute pixels, inside the image)."""
    side = rng.uniform(*SIDE_RANGE) * size
    aspect = math.exp(rng.uniform(math.log(0.6), math.log(1.6)))
    w, h = side * math.sqrt(aspect), side / math.sqrt(aspect)
    cx = rng.uniform(w / 2, size - w / 2)
    cy = rng.uniform(h / 2, size - h / 2)
    name = NAMES[label]
    if name == "circle":
        t = np.linspace(0, 2 * math.pi, ELLIPSE_VERTICES, endpoint=False)
        unit, angle = list(zip(np.cos(t), np.sin(t))), rng.uniform(0, 180)
    elif name == "square":
        unit, angle = [(-1, -1), (1, -1), (1, 1), (-1, 1)], rng.uniform(-20, 20)
    elif name == "triangle":
        unit = [(math.cos(a), math.sin(a)) for a in np.radians([-90, 30, 150])]
        angle = rng.uniform(0, 360)
    else:  # star: ten points alternating between the outer and the inner radius
        unit = [((1.0 if k % 2 == 0 else 0.45) * math.cos(a), (1.0 if k % 2 == 0 else 0.45) * math.sin(a))
                for k, a in enumerate(np.radians(np.arange(10) * 36 - 90))]
        angle = rng.uniform(0, 360)
    pts = np.asarray(unit, np.float64) * [w / 2, h / 2]
    a = math.radians(angle)
    rot = np.asarray([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    # a rotated shape may reach past the image edge: the outline is the part inside it; whole-
    # pixel vertices keep the boxes (the outline's bounds) whole numbers, exact in every format
    return drop_repeated_vertices(np.round(clip_ring(pts @ rot.T + [cx, cy], (0, 0, size, size))))


def _paint(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, rect: tuple[int, int, int, int]) -> None:
    """Fill the shape with a texture whose colour stands out from the background under it."""
    x, y, w, h = rect
    roi, m = image[y:y + h, x:x + w], mask[y:y + h, x:x + w] > 0
    local = roi[m].reshape(-1, 3).mean(0)
    colour = rng.uniform(0, 255, 3)
    for _ in range(10):
        if np.linalg.norm(colour - local) >= MIN_CONTRAST:
            break
        colour = rng.uniform(0, 255, 3)
    second = np.clip(colour + rng.uniform(-90, 90, 3), 0, 255)
    style = int(rng.integers(4))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if style == 0:  # solid
        tex = np.broadcast_to(colour, (h, w, 3)).astype(np.float32)
    elif style == 1:  # stripes along a random direction
        a, period = rng.uniform(0, math.pi), rng.uniform(4, 12)
        phase = ((xx * math.cos(a) + yy * math.sin(a)) / period) % 1.0 < 0.5
        tex = np.where(phase[..., None], colour, second).astype(np.float32)
    elif style == 2:  # strong per-pixel noise
        tex = colour + _noise(rng, (h, w, 3), 35.0)
    else:  # gradient across the shape
        t = (xx / max(w - 1, 1))[..., None] if rng.random() < 0.5 else (yy / max(h - 1, 1))[..., None]
        tex = colour * (1 - t) + second * t
    roi[m] = np.clip(tex, 0, 255).astype(np.uint8)[m]
