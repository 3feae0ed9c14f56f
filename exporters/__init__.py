"""Exporters: ``onnx_from_torch``, ``torchscript_from_torch``, ``engine_from_onnx``."""
