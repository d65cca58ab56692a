"""ONNX -> OpenVINO IR (.xml + .bin), FP32 or FP16 weights, with the same metadata in rt_info."""

from __future__ import annotations

import logging
from pathlib import Path

from detforge.export.metadata import ExportMetadata, write_openvino_metadata

LOG = logging.getLogger("detforge")
INSTALL_HINT = ("OpenVINO is not installed (an optional runtime): pip install openvino  "
                "(from a clone: .venv/bin/pip install -e '.[export]')")


def require_openvino():
    try:
        import openvino
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    return openvino


def export_openvino(onnx_path: Path, out: Path, meta: ExportMetadata, half: bool = False) -> Path:
    """Convert ``onnx_path`` and write ``out`` (.xml, with its .bin beside it)."""
    ov = require_openvino()
    model = ov.convert_model(str(onnx_path))
    write_openvino_metadata(model, meta)
    out = Path(out).with_suffix(".xml")
    out.parent.mkdir(parents=True, exist_ok=True)
    # compress_to_fp16 stores FP16 weights; the precision it computes in is set when detforge
    # compiles it (detforge.infer.backends.openvino_precision_config, from the metadata's half)
    ov.save_model(model, str(out), compress_to_fp16=half)
    if half:
        LOG.info("OpenVINO: %s (FP16 weights; detforge runs it at the device's fast precision, bf16 or f16 "
                 "where the CPU has them)", out)
    else:
        LOG.info("OpenVINO: %s (FP32 weights; detforge runs it in f32: INFERENCE_PRECISION_HINT=f32, so CPUs "
                 "with bf16 do not silently compute in bf16)", out)
    return out
