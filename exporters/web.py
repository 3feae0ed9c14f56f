"""Exact ONNX graph rewrites for the browser backends of onnxruntime-web (``web_from_onnx``).

The web-ready model is the default ONNX export plus these passes, each of which leaves the
computed values unchanged (checked against onnxruntime by ``bgm_deploy.web`` at export and
by the tests):

* :func:`pad_conv_channels`: onnxruntime-web's native WebGPU execution provider
  (``onnxruntime-web/webgpu``, 1.31.1) computes a 3x3 ``Conv`` wrongly for 6 and 42 input
  channels (onnxruntime issue #29651; the JavaScript kernels of the default bundle and the
  WASM backend are right). BGMv2 has such convolutions on ``cat(src, bgr)`` (6 channels:
  the backbone's first conv and the refiner's split convs) and 54 channels in the
  decoder's last conv. Zero-padding the input channels of every non-grouped ``Conv`` to a
  multiple of 4 (a ``Pad`` on the input, zero weights appended) adds only zero products,
  so the result is the same up to float32 summation order, and the kernel is one that
  computes correctly.
* :func:`expose_refine_budget`: the sampling budget ``k = sample_pixels // 16`` is baked
  into the exported graph as ``TopK``'s ``K`` and as the width of the padding row that
  keeps ``TopK`` valid on small grids (``model.refiner.select_refinement_regions``). Both
  are replaced by an int64 graph input ``refine_k`` of shape ``[1]``: fed with the export's
  own ``k`` the graph is the same graph; fed another ``k`` it computes what an export with
  ``sample_pixels = 16 * k`` computes. This lets a page adjust the refine budget per frame
  with one model file.

The passes work on an ``onnx.ModelProto`` in place and import only ``onnx`` and ``numpy``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import ExportError

from .atomic import atomic_open
from .metadata import METADATA_KEY, ExportMetadata, read_metadata

# onnxruntime-web's WebGPU kernels are right for channel counts that are multiples of 4
# (vec4 loads); see the module docstring.
CHANNEL_MULTIPLE = 4
REFINE_K_INPUT = "refine_k"
# Suffix of every name these passes add, so a rewritten graph says what was added.
_SUFFIX = "__bgm_web"
# Pad takes its pads as an input from opset 11 on.
MIN_OPSET_PAD_INPUT = 11


@dataclass(frozen=True)
class PaddedConv:
    """One ``Conv`` whose input channels were padded."""

    node: str
    channels: int
    padded_to: int


@dataclass
class WebRewriteReport:
    """What :func:`web_from_onnx` changed (``to_dict`` goes into the model's metadata)."""

    padded_convs: list[PaddedConv] = field(default_factory=list)
    refine_k: int | None = None  # the export's k, now the default of the refine_k input
    channel_multiple: int = CHANNEL_MULTIPLE

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel_multiple": self.channel_multiple,
            "padded_convs": [asdict(conv) for conv in self.padded_convs],
            "refine_k_input": REFINE_K_INPUT if self.refine_k is not None else None,
            "refine_k_default": self.refine_k,
        }


def _opset(proto: Any) -> int:
    return next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), 0)


def _attribute(node: Any, name: str, default: Any) -> Any:
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _consumers(proto: Any) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for node in proto.graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def pad_conv_channels(proto: Any, multiple: int = CHANNEL_MULTIPLE) -> list[PaddedConv]:
    """Zero-pads the input channels of every non-grouped 2-D ``Conv`` to a multiple of ``multiple``.

    For a ``Conv`` with weight ``W`` of shape ``(O, C, kh, kw)`` (an initializer), ``group``
    1 and ``C % multiple != 0``: its input goes through ``Pad`` (zeros appended on the
    channel axis, one ``Pad`` per input and amount, shared by the convolutions that read
    it) and ``W`` is replaced by ``W`` with zero input channels appended. A weight no other
    node reads any more is removed. Convolutions whose weight is computed in the graph are
    left as they are.

    Args:
        proto: an ``onnx.ModelProto``, changed in place.
        multiple: the channel multiple (4: see the module docstring).

    Returns:
        The padded convolutions, in graph order.

    Raises:
        ExportError: ``multiple`` < 1, or a model below opset 11 that has a conv to pad.
    """
    import onnx
    from onnx import numpy_helper

    if multiple < 1:
        raise ExportError(f"multiple={multiple} is not valid; use a positive channel multiple such as 4")
    graph = proto.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    padded: list[PaddedConv] = []
    new_weights: dict[str, str] = {}  # old weight name -> padded weight name
    pads_inputs: dict[int, str] = {}  # channels added -> pads initializer name
    pad_outputs: dict[tuple[str, int], str] = {}  # (conv input, channels added) -> Pad output
    nodes: list[Any] = []
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if weight is None or len(weight.dims) != 4 or _attribute(node, "group", 1) != 1:
            nodes.append(node)
            continue
        channels = int(weight.dims[1])
        extra = -channels % multiple
        if extra == 0:
            nodes.append(node)
            continue
        if _opset(proto) < MIN_OPSET_PAD_INPUT:
            raise ExportError(f"padding Conv channels needs opset >= {MIN_OPSET_PAD_INPUT} (Pad with a pads input); "
                              f"the model is opset {_opset(proto)}; export with --opset 17")
        if weight.name not in new_weights:
            values = numpy_helper.to_array(weight)
            zeros = np.zeros((values.shape[0], extra, *values.shape[2:]), dtype=values.dtype)
            name = f"{weight.name}{_SUFFIX}_pad{multiple}"
            graph.initializer.append(numpy_helper.from_array(np.concatenate([values, zeros], axis=1), name))
            new_weights[weight.name] = name
        if extra not in pads_inputs:
            name = f"channel_pads_{extra}{_SUFFIX}"
            graph.initializer.append(numpy_helper.from_array(np.array([0, 0, 0, 0, 0, extra, 0, 0], np.int64), name))
            pads_inputs[extra] = name
        source = node.input[0]
        if (source, extra) not in pad_outputs:
            output = f"{source}{_SUFFIX}_pad{extra}"
            nodes.append(onnx.helper.make_node("Pad", [source, pads_inputs[extra]], [output],
                                               name=f"{node.name or source}{_SUFFIX}_pad", mode="constant"))
            pad_outputs[(source, extra)] = output
        node.input[0] = pad_outputs[(source, extra)]
        node.input[1] = new_weights[weight.name]
        nodes.append(node)
        padded.append(PaddedConv(node.name, channels, channels + extra))
    del graph.node[:]
    graph.node.extend(nodes)
    still_read = {name for node in graph.node for name in node.input} | {value.name for value in graph.output}
    for old in new_weights:
        if old not in still_read:
            graph.initializer.remove(initializers[old])
    return padded


def _constant_ints(proto: Any, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for tensor in proto.graph.initializer:
        if tensor.name == name:
            values = numpy_helper.to_array(tensor)
            return values if values.dtype == np.int64 else None
    return None


def expose_refine_budget(proto: Any) -> int | None:
    """Turns the sampling budget into an int64 graph input ``refine_k`` (shape ``[1]``).

    Looks for the graph :func:`model.refiner.select_refinement_regions` exports in sampling
    mode: one ``TopK`` whose ``K`` is an initializer ``[k]``, reading ``Concat(errors,
    Expand(row, [1, k]))``. Both constants must be read by those two nodes only; then
    ``TopK`` reads ``refine_k`` and the ``Expand`` reads ``Concat([1], refine_k)``.

    Args:
        proto: an ``onnx.ModelProto``, changed in place when the pattern is found.

    Returns:
        The export's ``k`` (the value to feed for the export's own budget), or None when
        the graph has no such selection (MattingBase, thresholding and full modes, the
        TensorRT-safe selection): the graph is left unchanged then.
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    graph = proto.graph
    if any(value.name == REFINE_K_INPUT for value in graph.input):
        raise ExportError(f"the model already has an input named {REFINE_K_INPUT!r}")
    topks = [node for node in graph.node if node.op_type == "TopK"]
    if len(topks) != 1 or len(topks[0].input) != 2:
        return None
    topk = topks[0]
    k_values = _constant_ints(proto, topk.input[1])
    producers = {output: node for node in graph.node for output in node.output}
    concat = producers.get(topk.input[0])
    if k_values is None or k_values.shape != (1,) or concat is None or concat.op_type != "Concat" or len(concat.input) != 2:
        return None
    expand = producers.get(concat.input[1])
    if expand is None or expand.op_type != "Expand":
        return None
    k = int(k_values[0])
    shape_values = _constant_ints(proto, expand.input[1])
    if shape_values is None or shape_values.tolist() != [1, k]:
        return None
    readers = _consumers(proto)
    if readers.get(topk.input[1]) != [topk] or readers.get(expand.input[1]) != [expand]:
        return None  # the constants are read elsewhere too: changing them would change more than the budget
    one = f"one{_SUFFIX}"
    shape = f"refine_padding_shape{_SUFFIX}"
    graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), one))
    concat_node = onnx.helper.make_node("Concat", [one, REFINE_K_INPUT], [shape], name=f"refine_padding_shape{_SUFFIX}", axis=0)
    old_k, old_shape = topk.input[1], expand.input[1]
    topk.input[1] = REFINE_K_INPUT
    expand.input[1] = shape
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([concat_node, *nodes])
    for tensor in list(graph.initializer):
        if tensor.name in (old_k, old_shape):
            graph.initializer.remove(tensor)
    graph.input.append(onnx.helper.make_tensor_value_info(REFINE_K_INPUT, TensorProto.INT64, [1]))
    return k


def web_from_onnx(proto: Any, multiple: int = CHANNEL_MULTIPLE, refine_budget: bool = True) -> WebRewriteReport:
    """Applies the web rewrites to a bgm-deploy ONNX model in place and checks the result.

    Args:
        proto: an ``onnx.ModelProto`` from ``onnx_from_torch`` (fp32 or fp16).
        multiple: channel multiple of :func:`pad_conv_channels`.
        refine_budget: also apply :func:`expose_refine_budget`.

    Returns:
        :class:`WebRewriteReport`.

    Raises:
        ExportError: the rewritten graph fails ``onnx.checker``.
    """
    import onnx

    report = WebRewriteReport(channel_multiple=multiple)
    report.padded_convs = pad_conv_channels(proto, multiple)
    if refine_budget:
        report.refine_k = expose_refine_budget(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the web rewrites produced an invalid graph: {str(exc).splitlines()[0]}") from None
    return report


def web_from_onnx_file(source: str | Path, output: str | Path, multiple: int = CHANNEL_MULTIPLE,
                       refine_budget: bool = True) -> tuple[WebRewriteReport, ExportMetadata]:
    """Reads a bgm-deploy ONNX file, applies :func:`web_from_onnx` and writes ``output`` atomically.

    The embedded metadata keeps the model config and gains ``export["web"]`` (the report)
    and, when the budget is exposed, ``refine_k`` in ``export["inputs"]``.

    Returns:
        ``(report, metadata of the written file)``.

    Raises:
        ModelFileError: ``source`` carries no bgm-deploy metadata.
        ExportError: fp16 models (the browser page feeds float32), or an invalid result.
    """
    import onnx

    metadata = read_metadata(source)
    if metadata.export.get("io_dtype", "float32") != "float32":
        raise ExportError(f"{source}: a web model takes float32 inputs; export it with --precision fp32")
    proto = onnx.load(str(source))
    report = web_from_onnx(proto, multiple, refine_budget)
    inputs = list(metadata.export.get("inputs", []))
    if report.refine_k is not None:
        inputs.append(REFINE_K_INPUT)
    metadata = ExportMetadata(metadata.model_config, metadata.format,
                              {**metadata.export, "inputs": inputs, "web": report.to_dict()})
    for prop in list(proto.metadata_props):
        if prop.key == METADATA_KEY:
            proto.metadata_props.remove(prop)
    proto.metadata_props.add(key=METADATA_KEY, value=metadata.to_json())
    with atomic_open(output) as handle:
        handle.write(proto.SerializeToString())
    return report, metadata
