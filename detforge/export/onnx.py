"""PyTorch -> ONNX through the TorchScript-based exporter (``dynamo=False``).

Why that exporter and opset 17: D-FINE's deformable attention uses grid_sample, which the
TorchScript exporter maps to GridSample-16 that onnxruntime, OpenVINO and TensorRT all run;
the dynamo exporter still has open D-FINE bugs, and GridSample at opset 20 miscompiles in
TensorRT 10.x. The batch axis is always dynamic; ``dynamic=True`` frees height and width too.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from detforge.export.metadata import ExportMetadata, write_onnx_metadata

LOG = logging.getLogger("detforge")
INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores", "labels")


class ExportGraph(nn.Module):
    """images 0..1 RGB [B, 3, H, W] -> (boxes [B, K, 4] xyxy input px, scores [B, K], labels [B, K])."""

    def __init__(self, model: nn.Module, max_det: int) -> None:
        super().__init__()
        self.model = model
        self.max_det = int(max_det)

    def forward(self, images: torch.Tensor):
        return self.model.export_forward(images, self.max_det)


def export_onnx(
    model: nn.Module,
    out: Path,
    meta: ExportMetadata,
    batch: int = 1,
    opset: int = 17,
    dynamic: bool = False,
    half: bool = False,
    simplify: bool = False,
) -> Path:
    """Write ``out`` (.onnx) and return it. ``model`` must already be in eval / deploy form."""
    import onnx

    if opset < 16:
        LOG.warning("opset %d: GridSample (D-FINE) needs opset >= 16; the export may fail", opset)
    device = next(model.parameters()).device
    dtype = torch.float16 if half else torch.float32
    if half and device.type != "cuda":
        raise ValueError("half=true for ONNX needs a CUDA device (device=0); on CPU export FP32, or use "
                         "format=openvino half=true / format=tensorrt half=true")
    graph = ExportGraph(model.to(dtype), meta.max_det).eval()
    height, width = meta.imgsz
    example = torch.rand(max(1, batch), 3, height, width, device=device, dtype=dtype)
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    # a model with more outputs (instance masks) names them itself
    output_names = tuple(getattr(model, "export_output_names", OUTPUT_NAMES))
    dynamic_axes = {INPUT_NAME: axes, **{name: {0: "batch"} for name in output_names}}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # tracer warnings about shape-dependent Python values are expected: shapes are taken
        # from tensors inside the graph (see the models' export_forward)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            graph, (example,), str(out), dynamo=False, opset_version=opset, do_constant_folding=True,
            input_names=[INPUT_NAME], output_names=list(output_names), dynamic_axes=dynamic_axes,
        )
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    if simplify:
        proto = _simplify(proto)
    write_onnx_metadata(proto, meta)
    onnx.save(proto, str(out))
    LOG.info("ONNX: %s (opset %d, %s, input %s)", out, opset, "dynamic H/W" if dynamic else f"{height}x{width}",
             "float16" if half else "float32")
    return out


def _simplify(proto):
    try:
        import onnxslim
    except ImportError:
        raise ValueError("simplify=true needs the onnxslim package: pip install onnxslim") from None
    return onnxslim.slim(proto)
