"""DetectionDataset: decode (or fetch from the cache), augment, hand over uint8 tensors.

An item is a pure function of (seed, epoch, sample index): each item draws its random
choices from its own numpy Generator, so DataLoader workers, restarts and resumed runs
reproduce the same augmentations. The loader's sampler passes ``(epoch, index)`` pairs, so
persistent workers never need to be told the epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from ..errors import DetforgeError
from ..records import Problem, Sample
from .augment.pipeline import EvalTransform, TrainTransform
from .augment.fit import fit_geometry
from .augment.resize import limit_long_side
from .augment.targets import Targets
from .image_io import ImageReadError, read_image, read_image_for_size
from .polygons import rasterize_objects

log = logging.getLogger(__name__)

RAM_CACHE_LIMIT = 0.7  # refuse cache=ram above this share of the available memory
# without a cache, training keeps recently decoded (pre-resized) images up to this size per
# process, so mosaic partners drawn again are not decoded again (small sets fit entirely)
DECODED_LRU_BYTES = 256 * 2**20
DECODED_LRU_MEMORY_SHARE = 0.05  # and never more than this share of the available memory
OFF_HEAP_MIN_BYTES = 256 * 1024  # kept images this large get their own memory map (<= 1024 maps)


class CacheError(DetforgeError, RuntimeError):
    """The requested image cache cannot be used; the message says why and what to do."""


def select_fraction(samples: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """A deterministic subset of round(fraction * n) samples (at least 1), in path order."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ordered = sorted(samples, key=lambda s: str(s.image_path))
    if fraction == 1 or not ordered:
        return ordered
    k = max(1, round(fraction * len(ordered)))
    chosen = np.random.default_rng(_seed_words(seed)).choice(len(ordered), size=k, replace=False)
    return [ordered[i] for i in sorted(chosen)]


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (what can be used without swapping), else free pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _seed_words(*values: int) -> list[int]:
    # SeedSequence wants non-negative integers; negative seeds map to distinct words
    return [int(v) % (2**63) for v in values]


def _prescaled_shape(width: int, height: int, limit: int | None) -> tuple[int, int]:
    if limit is None or max(width, height) <= limit:
        return height, width
    r = limit / max(width, height)
    return max(1, round(height * r)), max(1, round(width * r))


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


class DetectionDataset(Dataset):
    """Samples -> (image uint8 [3, S, S], target dict, meta dict).

    ``target``: boxes float32 [N, 4] abs xyxy in the output image, labels int64 [N],
    weights float32 [N] (MixUp blend weights; 1.0 otherwise), and with ``masks=True`` also
    masks uint8 [N, S, S] (each object's outline rasterised in the output image; an object
    without an outline gets its box). Outlines move with the pixels through every augmentation;
    with ``masks=False`` (box-only models) they are not even loaded.
    ``meta``: index (sample index actually used), image_path, orig_size (h, w),
    scale (sx, sy) and pad (px, py) with x_orig = (x - px) / sx (exact for evaluation items;
    for augmented training items they describe the plain resize only), epoch, mosaic, mixup,
    replaced (path of an unreadable image this item stands in for, else None) and
    bad_images (list of (path, reason) met while building the item).
    """

    def __init__(
        self,
        samples: list[Sample],
        cfg,
        train: bool,
        imgsz: int | None = None,
        cache: str = "false",
        cache_dir: Path | None = None,
        masks: bool = False,
    ) -> None:
        self.cfg = cfg
        self.train = train
        self.masks = bool(masks)
        self.imgsz = int(imgsz or cfg.imgsz)
        if train and cfg.fraction < 1:
            samples = select_fraction(samples, cfg.fraction, cfg.seed)
        self.samples = list(samples)
        if not self.samples:
            raise ValueError("the dataset has no images")
        self.is_background = np.array([s.is_background for s in self.samples], bool)
        # training keeps images with the long side at imgsz (what the cache stores); evaluation
        # resizes once from the decoded original
        self.prescale = self.imgsz if train else None
        self.train_transform = TrainTransform(cfg, self.imgsz) if train else None
        self.eval_transform = EvalTransform(self.imgsz, cfg.resize_mode)
        self.bad_images: dict[str, Problem] = {}
        self.bad_image_hits: Counter[str] = Counter()
        self.epoch = 0
        self._active = self.active_indices(0)
        self._orig_sizes: list[tuple[int, int] | None] = [None] * len(self.samples)
        self._ram: list[np.ndarray | None] | None = None
        self._disk_dir: Path | None = None
        self._recent: _DecodedLRU | None = None
        self.cache = str(cache).lower()
        if self.cache == "ram":
            self._fill_ram_cache()
        elif self.cache == "disk":
            self._fill_disk_cache(cache_dir)
        elif self.cache not in ("false", "none", ""):
            raise ValueError(f"unknown cache {cache!r}; allowed: 'false', 'ram', 'disk'")
        elif train:
            self._recent = _DecodedLRU(
                min(DECODED_LRU_BYTES, int(DECODED_LRU_MEMORY_SHARE * available_memory_bytes()))
            )

    # ---- epochs ---------------------------------------------------------------------------
    def active_indices(self, epoch: int) -> np.ndarray:
        """Sample indices used in ``epoch``: background images wait ignore_background_epochs."""
        all_idx = np.arange(len(self.samples))
        if self.train and epoch < self.cfg.ignore_background_epochs:
            objects = all_idx[~self.is_background]
            if len(objects):
                return objects
        return all_idx

    def mosaic_enabled(self, epoch: int) -> bool:
        """Mosaic and MixUp are off for the first ``open_mosaic`` epochs and the last
        ``close_mosaic`` epochs of ``epochs``."""
        if not self.train or epoch < self.cfg.open_mosaic:
            return False
        return not (self.cfg.close_mosaic > 0 and epoch >= self.cfg.epochs - self.cfg.close_mosaic)

    def set_epoch(self, epoch: int) -> None:
        """0-based epoch for plain integer indexing (the loader's sampler passes it itself)."""
        self.epoch = int(epoch)
        self._active = self.active_indices(self.epoch)

    def __len__(self) -> int:
        return len(self._active)

    # ---- items ----------------------------------------------------------------------------
    def __getitem__(self, key):
        if isinstance(key, tuple):
            epoch, index = int(key[0]), int(key[1])
        else:
            epoch, index = self.epoch, int(self._active[key])
        rng = np.random.default_rng(_seed_words(self.cfg.seed, epoch, index))
        met: list[tuple[str, str]] = []
        used, img, targets = self._load_with_fallback(index, met)
        sample = self.samples[used]
        h0, w0 = self._orig_sizes[used]
        info = {"mosaic": False, "mixup": None}
        if self.train:
            def load(j: int) -> tuple[np.ndarray, Targets]:
                return self._load_with_fallback(j, met)[1:]

            out, targets, info = self.train_transform(
                used, _FirstLoad(used, img, targets, load), len(self.samples), rng,
                strong=self.mosaic_enabled(epoch),
            )
            scale, pad = self._plain_mapping(w0, h0)
        else:
            out, targets, scale, pad = self.eval_transform(img, targets)
            if out is img:  # never hand out the cached array itself
                out = out.copy()
        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(targets.boxes, np.float32)),
            "labels": torch.from_numpy(np.ascontiguousarray(targets.labels, np.int64)),
            "weights": torch.from_numpy(np.ascontiguousarray(targets.weights, np.float32)),
        }
        if self.masks:
            target["masks"] = torch.from_numpy(rasterize_objects(targets.polygons, *out.shape[:2]))
        meta = {
            "index": used,
            "image_path": str(sample.image_path),
            "orig_size": (h0, w0),
            "scale": (float(scale[0]), float(scale[1])),
            "pad": (float(pad[0]), float(pad[1])),
            "epoch": epoch,
            "mosaic": info["mosaic"],
            "mixup": info["mixup"],
            "replaced": None if used == index else str(self.samples[index].image_path),
            "bad_images": met,
        }
        # HWC -> CHW as a view; collate's stack makes the one contiguous copy
        return torch.from_numpy(out).permute(2, 0, 1), target, meta

    def _plain_mapping(self, w0: int, h0: int):
        """Scale and pad of the un-augmented resize of a (w0, h0) image (as EvalTransform)."""
        fit = fit_geometry(w0, h0, self.imgsz, self.cfg.resize_mode)
        return fit.scale, fit.pad

    def _load_with_fallback(self, index: int, met: list) -> tuple[int, np.ndarray, Targets]:
        """(index used, image, targets in its pixels); an unreadable file is replaced by the
        next readable sample in index order, so the choice is the same in every process."""
        n = len(self.samples)
        for step in range(n):
            j = (index + step) % n
            path = str(self.samples[j].image_path)
            known = self.bad_images.get(path)
            if known is not None:
                met.append((path, known.message))
                self.bad_image_hits[path] += 1
                continue
            try:
                img, (h0, w0) = self._decoded(j)
            except ImageReadError as e:
                self.record_bad_image(path, e.reason)
                met.append((path, e.reason))
                self.bad_image_hits[path] += 1
                continue
            s = self.samples[j]
            polygons = None
            if self.masks:  # an object (or a sample) without an outline lends its box
                polygons = s.polygons if s.polygons is not None else [[] for _ in range(len(s.labels))]
            targets = Targets.from_boxes(s.boxes, s.labels, polygons)
            if img.shape[:2] != (h0, w0):
                sx, sy = img.shape[1] / w0, img.shape[0] / h0
                targets = targets.mapped(np.diag([sx, sy, 1.0]), targets.boxes * np.array([sx, sy, sx, sy], np.float32))
            return j, img, targets
        raise RuntimeError(f"none of the {n} images of the dataset could be read; first problem: "
                           f"{next(iter(self.bad_images.values()), 'unknown')}")

    def record_bad_image(self, path: str, reason: str) -> bool:
        """Remember an unreadable image; warn once (from the main process). True if new."""
        if path in self.bad_images:
            return False
        self.bad_images[path] = Problem(Path(path), "unreadable_image", reason, fatal_for_sample=True)
        if get_worker_info() is None:
            log.warning("%s: %s; using another image in its place", path, reason)
        return True

    # ---- decoding and caches ----------------------------------------------------------------
    def _decode(self, j: int) -> tuple[np.ndarray, tuple[int, int]]:
        if self.prescale is None:
            img = read_image(self.samples[j].image_path)
            return img, img.shape[:2]
        img, size = read_image_for_size(self.samples[j].image_path, self.prescale)
        return limit_long_side(img, self.prescale), size

    def _decoded(self, j: int) -> tuple[np.ndarray, tuple[int, int]]:
        if self._ram is not None and self._ram[j] is not None:
            return self._ram[j], self._orig_sizes[j]
        if self._disk_dir is not None:
            try:
                img = np.load(self._disk_file(j), allow_pickle=False)
                if self._orig_sizes[j] is not None:
                    return img, self._orig_sizes[j]
            except (OSError, ValueError):
                pass  # missing or damaged cache file: decode the source instead
        if self._recent is not None:
            hit = self._recent.get(j)
            if hit is not None:
                return hit
        img, size = self._decode(j)
        self._orig_sizes[j] = size
        if self._recent is not None:
            self._recent.put(j, img, size)
        return img, size

    def estimated_cache_bytes(self) -> int:
        total = 0
        for s in self.samples:
            h, w = _prescaled_shape(int(s.width), int(s.height), self.prescale)
            total += h * w * 3
        return total

    def _fill_ram_cache(self) -> None:
        need = self.estimated_cache_bytes()
        avail = available_memory_bytes()
        if need > RAM_CACHE_LIMIT * avail:
            raise CacheError(
                f"cache=ram needs {_gb(need)} for {len(self.samples)} images but only "
                f"{_gb(RAM_CACHE_LIMIT * avail)} may be used ({RAM_CACHE_LIMIT:.0%} of "
                f"{_gb(avail)} available); use cache=disk or cache=false"
            )
        self._ram = [None] * len(self.samples)

        def fill(j: int):
            try:
                return j, self._decode(j), None
            except ImageReadError as e:
                return j, None, e

        for j, decoded, err in self._run_parallel(fill):
            if err is not None:
                self.record_bad_image(str(self.samples[j].image_path), err.reason)
            else:
                self._ram[j], self._orig_sizes[j] = decoded[0], decoded[1]

    def _disk_file(self, j: int) -> Path:
        src = str(Path(self.samples[j].image_path).resolve())
        key = hashlib.sha1(f"{src}|{self.prescale or 0}".encode()).hexdigest()[:24]
        return self._disk_dir / f"{key}.npy"

    def _fill_disk_cache(self, cache_dir: Path | None) -> None:
        first = Path(self.samples[0].image_path).resolve()
        self._disk_dir = Path(cache_dir) if cache_dir else first.parent.parent / ".detforge_cache"
        try:
            self._disk_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(
                f"cache=disk cannot create {self._disk_dir} ({e.strerror}); pass a writable cache_dir"
            ) from None

        def fill(j: int):
            npy = self._disk_file(j)
            side = npy.with_suffix(".json")
            try:
                st = Path(self.samples[j].image_path).stat()
            except OSError:
                return j, None, ImageReadError(self.samples[j].image_path, "file not found")
            stamp = {"source": str(Path(self.samples[j].image_path).resolve()),
                     "mtime_ns": st.st_mtime_ns, "size": st.st_size, "prescale": self.prescale}
            try:
                meta = json.loads(side.read_text())
                if npy.is_file() and {k: meta.get(k) for k in stamp} == stamp:
                    return j, tuple(meta["orig_size"]), None
            except (OSError, ValueError, KeyError, TypeError):
                pass  # no valid entry yet: (re)build it
            try:
                img, size = self._decode(j)
            except ImageReadError as e:
                return j, None, e
            _atomic_write(npy, lambda f: np.save(f, img, allow_pickle=False))
            _atomic_write(side, lambda f: f.write(json.dumps({**stamp, "orig_size": list(size)}).encode()))
            return j, size, None

        for j, size, err in self._run_parallel(fill):
            if err is not None:
                self.record_bad_image(str(self.samples[j].image_path), err.reason)
            else:
                self._orig_sizes[j] = size

    def _run_parallel(self, fn):
        # OpenCV decoding releases the GIL, so threads fill a cache in parallel
        workers = max(1, min(8, os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:
            yield from pool.map(fn, range(len(self.samples)))


class _DecodedLRU:
    """Least-recently-used decoded images, bounded in bytes. Items never change what a
    sample looks like (a hit returns exactly what decoding would), only how fast it comes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self.nbytes = 0
        self._items: OrderedDict[int, tuple[np.ndarray, tuple[int, int]]] = OrderedDict()

    def get(self, j: int) -> tuple[np.ndarray, tuple[int, int]] | None:
        item = self._items.get(j)
        if item is not None:
            self._items.move_to_end(j)
        return item

    def put(self, j: int, img: np.ndarray, size: tuple[int, int]) -> None:
        if img.nbytes > self.max_bytes or j in self._items:
            return
        self._items[j] = (_off_heap_copy(img), size)
        self.nbytes += img.nbytes
        while self.nbytes > self.max_bytes:
            _, (old, _) = self._items.popitem(last=False)
            self.nbytes -= old.nbytes


def _off_heap_copy(img: np.ndarray) -> np.ndarray:
    """``img`` copied into its own anonymous memory map. Long-lived images kept inside the
    malloc heap make it hand the per-sample working arrays back to the system and fault them
    in again on every sample (measured: ~600 page faults, ~1 ms per 640 sample)."""
    if img.nbytes < OFF_HEAP_MIN_BYTES:  # small images: the heap copes, and maps are a finite resource
        return img
    out = np.frombuffer(mmap.mmap(-1, img.nbytes), img.dtype, img.size).reshape(img.shape)
    out[...] = img
    return out


class _FirstLoad:
    """The load function for one item, with the primary image already decoded."""

    def __init__(self, index: int, img: np.ndarray, targets: Targets, load) -> None:
        self.index, self.img, self.targets, self.load = index, img, targets, load
        self.used = False

    def __call__(self, j: int) -> tuple[np.ndarray, Targets]:
        if j == self.index and not self.used:
            self.used = True
            return self.img, self.targets
        return self.load(j)


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)
