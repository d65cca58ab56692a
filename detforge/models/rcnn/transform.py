"""torchvision's R-CNN input transform without its resize.

torchvision's ``GeneralizedRCNNTransform`` does three things: ImageNet mean/std
normalisation, a resize of every image so its short side is ``min_size`` (800) and its long
side at most ``max_size`` (1333), and zero padding of the batch to a multiple of 32. detforge
has already letterboxed (or stretched) each image to ``imgsz`` before the model sees it, and
its boxes, masks, metrics and exported graphs all live in those input pixels, so a second
resize would only cost time, blur the image, rescale the targets and put a Resize node into
the exported graph.

Two ways to switch it off were possible: ``min_size = max_size = imgsz`` with ``fixed_size``,
or an identity ``resize``. The first still interpolates every image (a no-op only when the
size happens to match), is tied to one ``imgsz`` at build time, and fights ``multi_scale``
training, where the batch size changes every step. So ``resize`` is the identity here, for
training and inference alike; normalisation (ImageNet mean/std on 0..1 RGB, what
torchvision's COCO and ImageNet weights expect) and the padding to 32 are torchvision's own.
"""

from __future__ import annotations

import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIZE_DIVISIBLE = 32


class NoResizeTransform(GeneralizedRCNNTransform):
    """Normalise and pad like torchvision; never resize (the input is already at ``imgsz``)."""

    def __init__(self, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, size_divisible: int = SIZE_DIVISIBLE) -> None:
        # min_size / max_size are never read: resize() below does not use them
        super().__init__(min_size=0, max_size=0, image_mean=list(image_mean), image_std=list(image_std),
                         size_divisible=size_divisible)

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None):
        return image, target

    def normalize_batch(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in one op (the export graph's form of ``normalize``)."""
        mean = torch.as_tensor(self.image_mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.as_tensor(self.image_std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(no resize: input already at imgsz; normalise mean={self.image_mean} "
                f"std={self.image_std}; pad to a multiple of {self.size_divisible})")
