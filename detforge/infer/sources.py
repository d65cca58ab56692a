"""What `detforge predict source=...` accepts: an image, a folder, a glob, a video, or a
list file (.txt, one path per line). Images come out RGB as displayed (EXIF applied);
unreadable ones are reported, counted and skipped, never silently dropped."""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detforge.data.image_io import ImageReadError, is_image_file, read_image

LOG = logging.getLogger("detforge")
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


@dataclass
class Frame:
    path: Path  # the image, or the video the frame came from
    index: int  # frame number in a video, 0 for an image
    image: np.ndarray | None  # RGB uint8, None when unreadable
    error: str = ""
    fps: float = 0.0  # video frame rate (0 for images)

    @property
    def is_video(self) -> bool:
        return is_video_file(self.path)

    @property
    def stem(self) -> str:
        return f"{self.path.stem}_{self.index:06d}" if self.is_video else self.path.stem


def _wanted(p: Path, images_only: bool) -> bool:
    return is_image_file(p) or (not images_only and is_video_file(p))


def expand_paths(source: str | Path, images_only: bool = False) -> list[Path]:
    """Files named by ``source``, sorted; raises FileNotFoundError when it names none."""
    text = str(source)
    p = Path(text)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and _wanted(f, images_only))
        if not files:
            raise FileNotFoundError(f"{p}: folder has no {'image' if images_only else 'image or video'} files")
        return files
    if p.is_file():
        if p.suffix.lower() == ".txt":
            base = p.parent
            lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
            files = [(base / ln) if not Path(ln).is_absolute() else Path(ln) for ln in lines]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(f"{p}: {len(missing)} listed files do not exist, e.g. {missing[0]}")
            return files
        if not _wanted(p, images_only):
            kinds = "an image" if images_only else "an image or video"
            raise ValueError(f"{p}: not {kinds} file (suffix '{p.suffix}')")
        return [p]
    if any(ch in text for ch in "*?["):
        files = sorted(Path(f) for f in glob.glob(text, recursive=True) if _wanted(Path(f), images_only))
        if not files:
            raise FileNotFoundError(f"{text}: the pattern matches no image{'' if images_only else ' or video'} files")
        return files
    raise FileNotFoundError(f"{text}: no such file, folder or glob match")


def count_frames(paths: list[Path]) -> int:
    """Work units for a progress bar: 1 per image, the frame count of each video."""
    total = 0
    for p in paths:
        if is_video_file(p):
            cap = cv2.VideoCapture(str(p))
            total += max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
            cap.release()
        else:
            total += 1
    return total


def iter_frames(paths: list[Path]) -> Iterator[Frame]:
    for p in paths:
        if is_video_file(p):
            yield from _video_frames(p)
            continue
        try:
            yield Frame(p, 0, read_image(p))
        except ImageReadError as e:
            yield Frame(p, 0, None, e.reason)


def _video_frames(path: Path) -> Iterator[Frame]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        yield Frame(path, 0, None, "cannot open video (unsupported codec or damaged file)")
        return
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    index = 0
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            yield Frame(path, index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), fps=fps)
            index += 1
    finally:
        cap.release()
    if index == 0:
        yield Frame(path, 0, None, "video has no readable frames")
