"""Evaluation sharding without padding.

``torch.utils.data.DistributedSampler`` (and the training sampler in ``detforge.data.loader``)
pads the index list with repeated samples so every rank gets the same count: right for
training, where every rank must take the same number of steps, but wrong for evaluation,
where a repeated image would be predicted twice. Evaluation has no collective per batch, so
ranks may run different numbers of batches: rank ``r`` of ``w`` takes images
``r, r + w, r + 2w, ...`` and nothing else. The shards are disjoint and together hold every
image exactly once.
"""

from __future__ import annotations

import torch

from detforge.data.loader import DetectionLoader, EpochSampler, _worker_init, collate


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Positions ``rank, rank + world_size, ...`` below ``n`` (no padding, no dropping)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    return list(range(rank, n, world_size))


class ShardSampler(EpochSampler):
    """In-order, unpadded share of the dataset's active samples for one rank; yields the same
    ``(epoch, sample index)`` pairs as ``EpochSampler`` so the dataset treats it alike."""

    def __init__(self, dataset, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(dataset, shuffle=False, seed=0, rank=rank, world_size=world_size)

    def epoch_indices(self) -> list[int]:
        active = [int(i) for i in self.dataset.active_indices(self.epoch)]
        mine = [active[j] for j in shard_indices(len(active), self.rank, self.world_size)]
        return mine[self.start:]


def build_eval_loader(dataset, batch_size: int, workers: int, rank: int = 0, world_size: int = 1) -> DetectionLoader:
    """A validation loader over this rank's unpadded shard (the whole set when world_size=1)."""
    return DetectionLoader(
        dataset,
        batch_size=int(batch_size),
        sampler=ShardSampler(dataset, rank=rank, world_size=world_size),
        num_workers=int(workers),
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None,
    )
