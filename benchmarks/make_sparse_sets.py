"""Build the two sparse-object proxy sets (one or two objects per image) that the D-FINE
sparse-data benchmarks train on, outside the repository:

  bccd_wbc       BCCD with only its WBC class (about one large WBC per image), BCCD's own
                 train / val split, YOLO layout with symlinked images; images without a WBC
                 are left out (their count is printed)
  bccd_platelets BCCD with only its Platelets class (1.8 small platelets per image, ~25 px at
                 416), BCCD's own split, images without a platelet left out: real, small,
                 sparse objects
  synthetic_sparse  detforge's built-in synthetic generator with 1-2 objects per image
                 (160 train / 40 val, 320 px, 4 classes, ~10% background images)
  synthetic_sparse_1class  the same images and boxes with the four shapes as one class
                 ("shape"): finding objects without naming them, as on single-class sets
  synthetic_sparse_val400  400 more validation images from the same generator (another
                 seed, no training split): scores a checkpoint with less sampling noise
                 than the 40-image val split (`detforge val model=... data=...`)
  synthetic_sparse_1class_val400  the same 400 images as one class, for the one-class runs

    python benchmarks/make_sparse_sets.py --bccd ../shared/datasets/bccd --out /work/data
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np

from detforge.data.formats import load_dataset, write_dataset
from detforge.data.synthetic import ensure_synthetic
from detforge.records import DetectionData, Sample

SPARSE_SPLIT = {"n_train": 160, "n_val": 40, "size": 320, "seed": 0, "objects": (1, 2)}
# a larger validation-only sample of the same distribution (benchmarks/RESULTS.md, "what 40
# validation images can tell at epoch 8")
SPARSE_VAL400 = {"n_train": 0, "n_val": 400, "size": 320, "seed": 7, "objects": (1, 2)}


def one_class(data: DetectionData, name: str) -> tuple[DetectionData, dict[str, int]]:
    """``data`` with only class ``name`` (label 0), images without it dropped; also the count
    of dropped images per split."""
    if name not in data.names:
        raise SystemExit(f"{data.root}: no class {name!r}; classes are {data.names}")
    keep = data.names.index(name)
    splits, dropped = {}, {}
    for split, samples in data.splits.items():
        out = []
        for s in samples:
            mask = s.labels == keep
            if not mask.any():
                continue
            out.append(Sample(s.image_path, s.boxes[mask], np.zeros(int(mask.sum()), np.int64), s.width, s.height,
                              image_id=s.image_id))
        splits[split] = out
        dropped[split] = len(samples) - len(out)
    return DetectionData([name], splits, data.root, data.layout), dropped


def merged(data: DetectionData, name: str) -> DetectionData:
    """``data`` with every class merged into one class ``name`` (label 0). Everything else stays,
    outlines included: mosaic and affine crops clip an object's outline, not its box, so without
    them cut objects would train on looser boxes than in ``data``."""
    splits = {split: [dataclasses.replace(s, labels=np.zeros(len(s.labels), np.int64),
                                          crowd_labels=np.zeros(len(s.crowd_labels), np.int64)) for s in samples]
              for split, samples in data.splits.items()}
    return DetectionData([name], splits, data.root, data.layout)


def describe(data: DetectionData) -> str:
    parts = []
    for split, samples in data.splits.items():
        per_image = Counter(len(s.labels) for s in samples)
        boxes = sum(len(s.labels) for s in samples)
        parts.append(f"{split}: {len(samples)} images, {boxes} boxes, objects per image {dict(sorted(per_image.items()))}")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bccd", type=Path, default=Path("../shared/datasets/bccd"))
    parser.add_argument("--out", type=Path, default=Path("/work/data"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    for cls, dir_name in (("WBC", "bccd_wbc"), ("Platelets", "bccd_platelets")):
        out_dir = args.out / dir_name
        if (out_dir / "data.yaml").is_file():
            print(f"{out_dir}: exists, kept")
        else:
            subset, dropped = one_class(load_dataset(args.bccd), cls)
            write_dataset(subset, out_dir, "yolo", link=True)
            print(f"{out_dir}: images without a {cls} left out: {dropped}")
        print(f"{dir_name}: {describe(load_dataset(out_dir))}")

    for name, spec in (("synthetic_sparse", SPARSE_SPLIT), ("synthetic_sparse_val400", SPARSE_VAL400)):
        root = ensure_synthetic(args.out / name, **spec)
        print(f"{name}: {describe(load_dataset(root))}")
        # the same images and boxes as one class
        one_dir = args.out / name.replace("synthetic_sparse", "synthetic_sparse_1class")
        if (one_dir / "data.yaml").is_file():
            print(f"{one_dir}: exists, kept")
        else:
            write_dataset(merged(load_dataset(root), "shape"), one_dir, "yolo", link=True)
        print(f"{one_dir.name}: {describe(load_dataset(one_dir))}")


if __name__ == "__main__":
    main()
