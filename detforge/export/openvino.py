"""ONNX -> OpenVINO IR (.xml + .bin), FP32 or FP16 weights, with the same metadata in rt_info."""

from __future__ import annotations

import logging
from pathlib import Path

from detforge.export.metadata import ExportMetadata, write_openvino_metadata

LOG = logging.getLogger("detforge")


def require_openvino():
    try:
        import openvino
    except ImportError:
        raise ValueError("OpenVINO is not installed: pip install openvino  (or pip install 'detforge[export]')") from None
    return openvino


def export_openvino(onnx_path: Path, out: Path, meta: ExportMetadata, half: bool = False) -> Path:
    """Convert ``onnx_path`` and write ``out`` (.xml, with its .bin beside it)."""
    ov = require_openvino()
    model = ov.convert_model(str(onnx_path))
    write_openvino_metadata(model, meta)
    out = Path(out).with_suffix(".xml")
    out.parent.mkdir(parents=True, exist_ok=True)
    # compress_to_fp16 stores FP16 weights; the CPU plugin still computes in its own precision
    ov.save_model(model, str(out), compress_to_fp16=half)
    LOG.info("OpenVINO: %s (%s weights)", out, "FP16" if half else "FP32")
    return out
