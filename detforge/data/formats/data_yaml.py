"""Ultralytics ``data.yaml``: keys path / train / val / test / names, labels in YOLO txt.

``path`` is relative to the yaml's folder (default, and the fallback when ``path`` does not
exist on this machine: that folder). Each of train/val/test is
a folder of images, a .txt list of image paths, a single image, or a list of these; all
relative to ``path``. Like Ultralytics, a value ``../x`` that does not exist is retried as
``x`` (Roboflow exports write ``train: ../train/images`` next to the train folder).
"""

from __future__ import annotations

from pathlib import Path

from detforge.data.formats.common import (
    SPLITS,
    DatasetError,
    ProblemLog,
    list_images,
    load_yaml,
    names_from_yaml,
)
from detforge.data.formats.yolo import label_path_for, read_image_splits
from detforge.data.image_io import is_image_file
from detforge.records import DetectionData


def read_data_yaml(path: Path) -> DetectionData:
    spec = load_yaml(path)
    names = names_from_yaml(path, spec.get("names"))
    if spec.get("nc") is not None and int(spec["nc"]) != len(names):
        raise DatasetError(f"{path}: nc={spec['nc']} but {len(names)} names are given")
    log = ProblemLog()
    root = _dataset_root(path, spec.get("path"), log)
    images: dict[str, list[Path]] = {}
    label_dirs: set[Path] = set()
    for split in SPLITS:
        value = spec.get(split)
        if value in (None, "", []):
            continue
        log.split = split
        images[split] = []
        entries = value if isinstance(value, list) else [value]
        for entry in entries:
            target = _resolve(root, str(entry))
            if target is None:
                raise DatasetError(f"{path}: {split}: '{entry}' does not exist (looked for {root / str(entry)})")
            if target.is_dir():
                images[split] += list_images(target)
                label_dirs.add(label_path_for(target / "x.jpg").parent)
            elif target.suffix.lower() == ".txt":
                images[split] += _read_list(target, root)
            elif is_image_file(target):
                images[split].append(target)
            else:
                raise DatasetError(f"{path}: {split}: '{entry}' is neither an image folder, a .txt list nor an image")
        if not images[split]:
            where = _resolve(root, str(entries[0])) if len(entries) == 1 else path
            log.add(where, "empty_split", f"split '{split}' ({value}) has no images")
    log.split = None
    if not images:
        raise DatasetError(f"{path}: none of train / val / test is set")
    names, splits = read_image_splits(images, names, root, log, label_dirs)
    return DetectionData(names, splits, root, "data.yaml", log.items)


def is_data_yaml(path: Path) -> bool:
    try:
        spec = load_yaml(path)
    except DatasetError:
        return False
    return any(spec.get(split) for split in SPLITS)


def _dataset_root(yaml_path: Path, value, log: ProblemLog) -> Path:
    base = yaml_path.parent
    if value in (None, ""):
        return base
    root = Path(str(value)).expanduser()
    root = root if root.is_absolute() else base / root
    if not root.is_dir():
        # shared data.yaml files often carry the author's own absolute path
        log.add(yaml_path, "path_not_found", f"path '{value}' is not a folder here; using the yaml's folder {base}")
        return base
    return root


def _resolve(root: Path, entry: str) -> Path | None:
    p = Path(entry).expanduser()
    if p.is_absolute():
        return p if p.exists() else None
    for candidate in (root / p, root / entry[3:] if entry.startswith("../") else None):
        if candidate is not None and candidate.exists():
            return candidate
    return None


def _read_list(listing: Path, root: Path) -> list[Path]:
    """Image paths from a .txt list: absolute, or relative to the dataset root or the list's folder."""
    out = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line).expanduser()
        if not p.is_absolute():
            p = next((c for c in (root / line, listing.parent / line) if c.exists()), root / line)
        out.append(p)
    return out
