"""ONNX -> TensorRT engine (GPU machines with the ``tensorrt`` package).

The ONNX comes from the opset-17 exporter: GridSample at opset 20 is known to miscompile in
TensorRT 10.x. An engine has no metadata slot, so the metadata goes to a ``.json`` beside it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from detforge.export.metadata import ExportMetadata, write_sidecar

LOG = logging.getLogger("detforge")
INSTALL_HINT = (
    "TensorRT export needs an NVIDIA GPU and the `tensorrt` package: pip install tensorrt "
    "(matching your CUDA version); or export format=onnx and build with "
    "`trtexec --onnx=MODEL.onnx --saveEngine=MODEL.engine`"
)
MAX_BATCH = 16  # largest batch of the optimisation profile unless batch= asks for more


def require_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    return tensorrt


def export_tensorrt(onnx_path: Path, out: Path, meta: ExportMetadata, batch: int = 1, half: bool = False,
                    workspace_gib: float = 4.0) -> Path:
    trt = require_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"no CUDA device visible. {INSTALL_HINT}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit in TensorRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if half:
        if not builder.platform_has_fast_fp16:
            LOG.warning("this GPU has no fast FP16; building FP16 anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    height, width = meta.imgsz
    inp = network.get_input(0)
    max_batch = max(MAX_BATCH, batch)
    if meta.dynamic:  # sizes from one stride up to twice the export size, optimised for it
        lo, hi = (meta.stride, meta.stride), (2 * height, 2 * width)
    else:
        lo = hi = (height, width)
    profile.set_shape(inp.name, (1, 3, *lo), (max(1, batch), 3, height, width), (max_batch, 3, *hi))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ValueError(f"{onnx_path}: TensorRT failed to build an engine (see its log above)")
    out = Path(out).with_suffix(".engine")
    out.write_bytes(bytes(serialized))
    write_sidecar(out, meta)
    LOG.info("TensorRT: %s (%s, batch 1..%d)", out, "FP16" if half else "FP32", max_batch)
    return out
