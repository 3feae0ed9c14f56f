"""Exporters: ``onnx_from_torch``, ``torchscript_from_torch``, ``engine_from_onnx``.

Each is a plain function driven by one frozen config (:mod:`exporters.config`); export-only
rewrites of the reference model are :class:`exporters.patcher.Patch` data applied by
:class:`exporters.patcher.ModelPatcher`. Import the submodules directly (``from
exporters.onnx import onnx_from_torch``): torch/onnx are heavy, and this package is also
imported by tools that only read metadata.
"""
