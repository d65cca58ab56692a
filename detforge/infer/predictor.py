"""``Predictor``: images in, ``Detections`` in original-image pixels out, on any backend.

    p = Predictor("runs/x/weights/best.onnx", conf=0.4)
    dets = p.predict(["a.jpg", "b.jpg"])          # one Detections per image
    dets = p.predict(rgb_array)                    # a list with one Detections
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
from torch import nn

from detforge.data.image_io import read_image
from detforge.data.polygons import masks_to_original
from detforge.export.metadata import ExportMetadata
from detforge.infer.backends import Backend, TorchBackend, load_backend, resolve_device
from detforge.infer.preprocess import Placement, boxes_to_original, check_image, fit_image, to_input
from detforge.records import Detections

LOG = logging.getLogger("detforge")
ImageLike = Union[str, Path, np.ndarray]
DEFAULT_CONF = 0.25


class Predictor:
    def __init__(
        self,
        model: str | Path | Backend,
        conf: float | Sequence[float] | None = None,
        imgsz: int | None = None,
        device: str = "auto",
        backend: str | None = None,
        cut_padding: bool = False,
        batch: int = 8,
        threads: int | None = None,
        decoder_layers: int | None = None,
        max_det: int | None = None,
    ) -> None:
        """``conf=None`` uses the thresholds stored with the model (per class when a training
        run chose them), else 0.25. ``imgsz`` defaults to the model's own size; a different one
        needs a backend with free height/width (torch, or an export with dynamic=true).
        ``decoder_layers``: for a .pt of a DETR, predict from its first N decoder layers.
        ``max_det``: most detections per image (default: the model's own; an export returns at
        most the count it was exported with)."""
        self.backend = model if isinstance(model, Backend) else load_backend(model, backend, device, threads,
                                                                             decoder_layers)
        self.source = str(getattr(model, "name", model))
        meta = self.backend.meta
        self.max_det = int(max_det) if max_det else int(meta.max_det)
        if max_det and isinstance(self.backend, TorchBackend):
            meta.max_det = self.max_det  # the torch model selects that many itself
        elif max_det and max_det > meta.max_det:
            LOG.warning("%s was exported with max_det=%d: it returns at most %d detections per image, not %d",
                        self.source, meta.max_det, meta.max_det, max_det)
        self.names: list[str] = list(meta.names)
        self.resize_mode = meta.resize_mode
        self.stride = int(meta.stride)
        self.cut_padding = bool(cut_padding)
        self.batch = max(1, int(batch))
        self.imgsz = int(imgsz) if imgsz else int(max(meta.imgsz))
        self._check_shape_support(meta)
        self.conf = self._thresholds(meta.conf if conf is None else conf)
        if conf is None:  # say which stored thresholds apply: a bad one shows as too many or no boxes
            kind = "per-class thresholds" if np.ndim(meta.conf) else "confidence threshold"
            LOG.info("%s: using the %s stored with the model (conf= overrides): %s", self.source, kind,
                     ", ".join(f"{n} {c:.3g}" for n, c in zip(self.names, self.conf)))

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        names: Sequence[str],
        imgsz: int = 640,
        resize_mode: str = "stretch",
        conf: float | Sequence[float] = DEFAULT_CONF,
        device: str = "auto",
        cut_padding: bool = False,
        max_det: int = 300,
        batch: int = 8,
    ) -> "Predictor":
        """An in-memory model (e.g. the API's Detector) on the torch backend."""
        meta = ExportMetadata(names=[str(n) for n in names], imgsz=(int(imgsz), int(imgsz)), resize_mode=resize_mode,
                              conf=conf if isinstance(conf, (int, float)) else list(conf),
                              model=str(getattr(model, "model_name", type(model).__name__)),
                              stride=int(getattr(model, "stride", 32)), max_det=max_det, dynamic=True)
        backend = TorchBackend(model, meta, resolve_device(device))
        return cls(backend, conf=conf, imgsz=imgsz, cut_padding=cut_padding, batch=batch)

    # ---------------------------------------------------------------- setup checks
    def _check_shape_support(self, meta: ExportMetadata) -> None:
        if self.imgsz % self.stride:
            raise ValueError(f"imgsz={self.imgsz} must be a multiple of the model stride {self.stride}")
        if self.cut_padding and self.resize_mode != "letterbox":
            raise ValueError(f"{self.source}: cut_padding=true needs a letterbox model; this one was trained with "
                             f"resize_mode={self.resize_mode}")
        if not self.backend.dynamic_hw:
            fixed = tuple(meta.imgsz)
            if self.cut_padding:
                raise ValueError(f"{self.source}: cut_padding=true needs free input height/width; re-export with "
                                 "dynamic=true (or run the .pt)")
            if (self.imgsz, self.imgsz) != fixed:
                raise ValueError(f"{self.source}: exported for {fixed[0]}x{fixed[1]} input; imgsz={self.imgsz} needs "
                                 "an export with dynamic=true")

    def _thresholds(self, conf: float | Sequence[float]) -> np.ndarray:
        """One threshold per class (a single value applies to all)."""
        values = np.asarray(conf, dtype=np.float32).reshape(-1)
        if values.size == 1:
            values = np.full(len(self.names), values[0], np.float32)
        if values.size != len(self.names) or not np.all((values >= 0) & (values <= 1)):
            raise ValueError(f"conf must be one value in [0, 1] or {len(self.names)} per-class values, got {conf}")
        return values

    # ---------------------------------------------------------------- inference
    def __call__(self, source, conf=None) -> list[Detections]:
        return self.predict(source, conf)

    def predict(self, source: ImageLike | Sequence[ImageLike], conf: float | Sequence[float] | None = None) -> list[Detections]:
        """One ``Detections`` per image (boxes xyxy in that image's pixels, scores descending).
        ``source``: an image path, an RGB uint8 array, a folder or glob, or a list of these."""
        items = _expand(source)
        thresholds = self.conf if conf is None else self._thresholds(conf)
        images = [(read_image(x) if isinstance(x, (str, Path)) else check_image(x, f"image {i}")) for i, x in enumerate(items)]
        return self.predict_arrays(images, thresholds)

    def predict_arrays(self, images: list[np.ndarray], thresholds: np.ndarray | None = None) -> list[Detections]:
        thresholds = self.conf if thresholds is None else thresholds
        fitted = [fit_image(img, self.imgsz, self.resize_mode, self.cut_padding, self.stride) for img in images]
        results: list[Detections | None] = [None] * len(images)
        # images of one input shape share a batch (cut padding gives several shapes)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, (arr, _) in enumerate(fitted):
            by_shape.setdefault(arr.shape[:2], []).append(i)
        step = self.backend.fixed_batch or self.batch
        for indices in by_shape.values():
            for start in range(0, len(indices), step):
                chunk = indices[start:start + step]
                arrays = [fitted[i][0] for i in chunk]
                if self.backend.fixed_batch:  # a fixed-batch engine: fill the last batch with copies
                    arrays += [arrays[-1]] * (self.backend.fixed_batch - len(arrays))
                boxes, scores, labels, *masks = self.backend(to_input(arrays, self.backend.input_dtype))
                for row, i in enumerate(chunk):
                    results[i] = self._decode(boxes[row], scores[row], labels[row], fitted[i][1], thresholds,
                                              masks[0][row] if masks else None, arrays[row].shape[:2])
        return results  # type: ignore[return-value]

    def _decode(self, boxes, scores, labels, placement: Placement, thresholds: np.ndarray,
                roi_masks: np.ndarray | None = None, input_hw: tuple[int, int] | None = None) -> Detections:
        """One image's rows -> Detections in its pixels; a mask model's RoI masks [K, M, M] are
        pasted into the input (as its postprocess does) and brought back to the image."""
        labels = labels.astype(np.int64)
        valid = (scores > 0) & (labels >= 0) & (labels < len(thresholds))
        keep = valid & (scores >= thresholds[np.clip(labels, 0, len(thresholds) - 1)])
        order = np.argsort(-scores[keep], kind="stable")[: self.max_det]
        masks = None
        if roi_masks is not None:
            from detforge.models.masks import paste_masks

            picked = np.flatnonzero(keep)[order]
            pasted = paste_masks(roi_masks[picked], boxes[picked], input_hw).numpy()
            w0, h0 = placement.orig_size
            masks = masks_to_original(pasted, placement.scale, placement.pad, (h0, w0))
        return Detections(boxes_to_original(boxes[keep][order], placement), scores[keep][order], labels[keep][order],
                          masks)


def _expand(source) -> list:
    """A path, array, folder, glob or list of them -> flat list of paths / arrays."""
    from detforge.infer.sources import expand_paths

    if isinstance(source, np.ndarray):
        return [source]
    if isinstance(source, (str, Path)):
        return expand_paths(source, images_only=True)
    out: list = []
    for item in source:
        out.extend(_expand(item))
    return out
