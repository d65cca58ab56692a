"""Export a detector to ONNX, OpenVINO or TensorRT with post-processing inside the graph.

    export_model(model, names, "onnx", "runs/x/weights/best")  -> Path("runs/x/weights/best.onnx")
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from detforge.export.metadata import ExportMetadata

LOG = logging.getLogger("detforge")
FORMATS = {"onnx": ".onnx", "openvino": ".xml", "tensorrt": ".engine"}


def _output_path(out: str | Path, format: str, half: bool) -> Path:
    out = Path(out)
    suffix = FORMATS[format]
    if out.suffix.lower() == suffix:
        return out
    stem = out.name[: -len(out.suffix)] if out.suffix in (".pt", ".pth", ".onnx", ".xml", ".engine") else out.name
    if half:
        stem += "_fp16"
    return out.parent / f"{stem}{suffix}"


def _deploy_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """A fused, eval-mode copy on ``device``: the caller's model (maybe mid-training) is untouched."""
    clone = copy.deepcopy(model).to(device).eval()
    clone = clone.deploy() if hasattr(clone, "deploy") else clone
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone.eval()


def export_model(
    model: nn.Module,
    names: Sequence[str],
    format: str,
    out: str | Path,
    imgsz: int | tuple[int, int] = 640,
    resize_mode: str = "stretch",
    dynamic: bool = False,
    half: bool = False,
    batch: int = 1,
    opset: int = 17,
    conf: float | Sequence[float] = 0.25,
    simplify: bool = False,
    max_det: int = 300,
) -> Path:
    """Write ``model`` in ``format`` next to ``out`` (its suffix is replaced) and return the path."""
    from detforge.export.onnx import export_onnx

    format = str(format).lower()
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; allowed: {', '.join(FORMATS)}")
    if resize_mode not in ("stretch", "letterbox"):
        raise ValueError(f"unknown resize_mode {resize_mode!r}; allowed: 'stretch', 'letterbox'")
    stride = int(getattr(model, "stride", 32))
    hw = (int(imgsz), int(imgsz)) if isinstance(imgsz, (int, float)) else (int(imgsz[0]), int(imgsz[1]))
    if hw[0] % stride or hw[1] % stride:
        raise ValueError(f"imgsz {hw[0]}x{hw[1]} must be a multiple of the model stride {stride}")
    num_classes = int(getattr(model, "num_classes", len(names)))
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a model with {num_classes} classes")
    if not isinstance(conf, (int, float)):
        conf = [float(c) for c in conf]
        if len(conf) != num_classes:
            raise ValueError(f"conf lists {len(conf)} per-class thresholds for {num_classes} classes")
    if format == "openvino":
        from detforge.export.openvino import require_openvino

        require_openvino()  # an extra: fail with the install hint before the ONNX step
    if format == "tensorrt":
        from detforge.export.tensorrt import require_tensorrt

        require_tensorrt()  # fail before the ONNX step when it cannot finish
        if opset >= 20:
            raise ValueError(f"opset={opset}: GridSample at opset 20 miscompiles in TensorRT 10.x; use opset=17")
    cuda_needed = half and format == "onnx"
    device = torch.device("cuda" if cuda_needed or (format == "tensorrt" and torch.cuda.is_available()) else "cpu")
    if cuda_needed and not torch.cuda.is_available():
        raise ValueError("half=true for ONNX needs a CUDA device; use format=openvino half=true on CPU")
    meta = ExportMetadata(
        names=[str(n) for n in names], imgsz=hw, resize_mode=resize_mode,
        conf=conf if isinstance(conf, list) else float(conf), model=str(getattr(model, "model_name", type(model).__name__)),
        stride=stride, max_det=int(max_det), dynamic=bool(dynamic), half=bool(half),
    )
    target = _output_path(out, format, half)
    deployed = _deploy_copy(model, device)
    if format == "onnx":
        return export_onnx(deployed, target, meta, batch=batch, opset=opset, dynamic=dynamic, half=half, simplify=simplify)
    with tempfile.TemporaryDirectory(prefix="detforge-export-") as tmp:
        # the FP32 ONNX is the intermediate for both: OpenVINO and TensorRT choose precision themselves
        onnx_path = export_onnx(deployed, Path(tmp) / "model.onnx", meta, batch=batch, opset=opset,
                                dynamic=dynamic, half=False, simplify=simplify)
        if format == "openvino":
            from detforge.export.openvino import export_openvino

            return export_openvino(onnx_path, target, meta, half=half)
        from detforge.export.tensorrt import export_tensorrt

        return export_tensorrt(onnx_path, target, meta, batch=batch, half=half)


__all__ = ["export_model", "FORMATS", "ExportMetadata"]
