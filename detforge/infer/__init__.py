"""Inference: Predictor over torch / onnxruntime / OpenVINO / TensorRT, and `detforge predict`."""
