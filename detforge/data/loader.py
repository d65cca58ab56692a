"""DataLoader, collate, the epoch-aware sampler and multi-scale batches.

The sampler yields ``(epoch, sample index)`` pairs: the dataset derives each item's random
state from them, and persistent workers need no message when the epoch changes (which
also carries close_mosaic and ignore_background_epochs into every worker). In distributed
runs it partitions each epoch's permutation across ranks the way
``torch.utils.data.DistributedSampler`` does (same seed + epoch shuffle, padding to equal
shares), but recomputes the epoch's index list, whose length changes when background
images rejoin after ignore_background_epochs.
"""

from __future__ import annotations

import ctypes
import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler


class EpochSampler(Sampler):
    """Shuffled (train) or ordered indices of the dataset's active samples for one epoch."""

    def __init__(self, dataset, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch; ``start`` skips this rank's first samples (mid-epoch resume)."""
        self.epoch = int(epoch)
        self.start = int(start)

    def epoch_indices(self) -> list[int]:
        active = np.asarray(self.dataset.active_indices(self.epoch))
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            active = active[torch.randperm(len(active), generator=g).numpy()]
        order = active.tolist()
        if self.world_size > 1:
            if self.drop_last:
                order = order[: len(order) - len(order) % self.world_size]
            else:
                per_rank = math.ceil(len(order) / self.world_size)
                pad = per_rank * self.world_size - len(order)
                order = order + (order * math.ceil(pad / max(len(order), 1)))[:pad]
            order = order[self.rank :: self.world_size]
        return order[self.start :]

    def __iter__(self):
        epoch = self.epoch
        return iter([(epoch, i) for i in self.epoch_indices()])

    def __len__(self) -> int:
        return len(self.epoch_indices())


def collate(batch):
    """[(image [3,S,S], target, meta), ...] -> (images [B,3,S,S], targets list, metas list)."""
    images, targets, metas = zip(*batch)
    return torch.stack(images), list(targets), list(metas)


class DetectionLoader(DataLoader):
    """A DataLoader that reports images found unreadable inside workers to the main
    process's dataset (``dataset.bad_images``, ``dataset.bad_image_hits``), once per file."""

    def __iter__(self):
        ds = self.dataset
        for images, targets, metas in super().__iter__():
            if self.num_workers > 0 and hasattr(ds, "record_bad_image"):
                for meta in metas:
                    for path, reason in meta.get("bad_images", ()):
                        ds.record_bad_image(path, reason)
                        ds.bad_image_hits[path] += 1
            yield images, targets, metas


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of giving it back to the kernel.

    A training sample's image-sized buffers (1.2 MB at 640) lie above glibc's default mmap
    threshold, so each is a fresh mapping whose pages all fault on first touch: ~190 faults
    and ~0.3 ms of a ~1.6 ms sample at 640 (benchmarks/RESULTS.md). With the thresholds raised
    they come from the heap and are reused. Process-wide, so it is called in loader workers,
    which do nothing else; False where it does not apply (no glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 256 << 20))
    except (OSError, AttributeError):
        return False


def _worker_init(worker_id: int) -> None:
    # one torch thread per worker: the workers are the parallelism (OpenCV's pool is off
    # process-wide, see image_io)
    torch.set_num_threads(1)
    retain_freed_memory()


def build_dataloader(dataset, batch_size: int, train: bool, workers: int, seed: int,
                     distributed: bool = False, rank: int = 0, world_size: int = 1,
                     drop_last: bool = False) -> DetectionLoader:
    sampler = EpochSampler(
        dataset, shuffle=train, seed=seed,
        rank=rank if distributed else 0, world_size=world_size if distributed else 1,
        drop_last=drop_last,
    )
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return DetectionLoader(
        dataset,
        batch_size=int(batch_size),
        sampler=sampler,
        num_workers=int(workers),
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None,
        generator=generator,
    )


def loader_set_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Start ``epoch`` (0-based) on the sampler and the dataset; ``start_batch`` resumes
    mid-epoch at that batch of this rank."""
    loader.sampler.set_epoch(epoch, start_batch * loader.batch_size)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)


def multi_scale_size(base: int, factor: float, stride: int, rng) -> int:
    """A random size in [(1 - factor) * base, (1 + factor) * base], a multiple of ``stride``.

    ``rng`` is a numpy Generator or a ``random.Random``. When no multiple of the stride lies
    in the range, the multiple nearest to ``base`` (at least ``stride``) is returned.
    """
    lo = math.ceil((1 - factor) * base / stride)
    hi = math.floor((1 + factor) * base / stride)
    lo = max(lo, 1)
    if hi < lo:
        return max(stride, round(base / stride) * stride)
    if isinstance(rng, random.Random):
        k = rng.randint(lo, hi)
    else:
        k = int(rng.integers(lo, hi + 1))
    return k * stride


def resize_batch(images: torch.Tensor, targets: list[dict], new_size: int):
    """Resize a square batch [B, 3, S, S] (uint8 or float) to new_size; boxes (and masks,
    nearest-neighbour) follow."""
    size = images.shape[-1]
    if new_size == size:
        return images, targets
    was_uint8 = images.dtype == torch.uint8
    x = images.float() if was_uint8 else images
    x = F.interpolate(x, size=(new_size, new_size), mode="bilinear", align_corners=False)
    if was_uint8:
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    ratio = new_size / size
    out = []
    for t in targets:
        t = dict(t)
        t["boxes"] = t["boxes"] * ratio
        if "masks" in t and len(t["masks"]):
            t["masks"] = F.interpolate(t["masks"][None].float(), size=(new_size, new_size), mode="nearest")[0].to(
                t["masks"].dtype)
        elif "masks" in t:
            t["masks"] = t["masks"].new_zeros((0, new_size, new_size))
        out.append(t)
    return x, out
