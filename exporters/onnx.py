"""``onnx_from_torch``: MattingBase / MattingRefine to an ONNX file with dynamic shapes.

Stages (each timed and reported through ``progress``): export (legacy or dynamo exporter,
under the export patches), finalise (I/O dimension names, metadata), simplify (onnxsim,
re-checked against the unsimplified graph by the caller's ``simplify_check``; on failure the
unsimplified graph is kept with a warning), check (``onnx.checker`` full check), then an atomic rename.

Precision fp16: weights, activations and the graph inputs/outputs are float16
(``io_dtype="float16"`` in the metadata). The patch selection and the RoiAlign boxes stay
in float32/int64 (see ``model/refiner.py``), so crop coordinates such as 1919.5 are exact.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from model.config import ModelConfig
from model.errors import ExportError, UsageError
from model.spec import INPUT_NAMES

from .atomic import new_temp_file
from .config import DEFAULT_TRACE_RESOLUTION, OnnxConfig, dynamic_axes, output_names, tensor_axes
from .metadata import BGM_DEPLOY_VERSION, METADATA_KEY, ExportMetadata
from .patcher import EXPORT_PATCHES, ModelPatcher, Patch
from .progress import stage
from .rewrites import fast_patches
from .tensorrt_safe import TENSORRT_PATCHES

Progress = Callable[[str], None]


@dataclass
class OnnxExportResult:
    """What :func:`onnx_from_torch` produced."""

    path: Path
    size_bytes: int
    seconds: dict[str, float] = field(default_factory=dict)
    simplified: bool = False
    warnings: list[str] = field(default_factory=list)
    outputs: tuple[str, ...] = ()
    metadata: ExportMetadata | None = None


class OutputSelector(nn.Module):
    """Returns the chosen outputs of ``model`` by index: unused branches become dead code
    that both exporters drop, which is how ``outputs`` prunes the graph."""

    def __init__(self, model: nn.Module, indices: tuple[int, ...]) -> None:
        super().__init__()
        self.model = model
        self.indices = indices

    def forward(self, src: Tensor, bgr: Tensor) -> tuple[Tensor, ...]:
        outputs = self.model(src, bgr)
        return tuple(outputs[i] for i in self.indices)


def export_patches(target: str, model: nn.Module) -> tuple[Patch, ...]:
    """The patch list for a target and model: ``EXPORT_PATCHES``, the speed rewrites of
    ``exporters.rewrites.fast_patches`` (same results, patch inputs sampled directly) and,
    for ``"tensorrt"``, the TensorRT-safe rewrites of ``exporters.tensorrt_safe.TENSORRT_PATCHES``."""

    fast = fast_patches(model)
    if target != "tensorrt":
        return (*EXPORT_PATCHES, *fast)
    return (*EXPORT_PATCHES, *fast, *TENSORRT_PATCHES)


def example_inputs(config: OnnxConfig, dtype: torch.dtype, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Seeded ``(src, bgr)`` of the trace batch and resolution."""
    width, height = config.trace_resolution
    generator = torch.Generator().manual_seed(seed)
    shape = (config.trace_batch, 3, height, width)
    return torch.rand(shape, generator=generator).to(dtype), torch.rand(shape, generator=generator).to(dtype)


def _export_graph(module: nn.Module, inputs: tuple[Tensor, Tensor], names: tuple[str, ...], config: OnnxConfig, path: Path) -> None:
    opset = config.opset
    with warnings.catch_warnings():
        # Both exporters warn about things that do not apply here (legacy deprecation,
        # constant-folding notes); the user sees our own stages instead.
        warnings.simplefilter("ignore")
        if config.exporter == "legacy":
            torch.onnx.export(
                module,
                inputs,
                str(path),
                input_names=list(INPUT_NAMES),
                output_names=list(names),
                dynamic_axes=dynamic_axes(INPUT_NAMES + names),
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
            return
        from torch.export import Dim

        # H and W are multiples of 4 (the refiner's quarter-resolution grid); saying so
        # lets torch.export prove the shape relations of the patch code.
        batch = Dim("batch", min=1, max=1024)
        height_4 = Dim("height_4", min=16, max=4096)
        width_4 = Dim("width_4", min=16, max=4096)
        spec = {0: batch, 2: 4 * height_4, 3: 4 * width_4}
        program = torch.onnx.export(
            module,
            inputs,
            input_names=list(INPUT_NAMES),
            output_names=list(names),
            dynamic_shapes={"src": spec, "bgr": spec},
            opset_version=opset,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
        if program is None:
            raise ExportError("the dynamo exporter returned no program")
        program.save(str(path))


def _rename_dims(proto: Any, names: tuple[str, ...]) -> None:
    """Gives every graph input/output the documented symbolic dimension names.

    The exporters invent names for derived sizes (``Clippha_dim_1``, ``s0*4`` ...); the
    documented ones (``height_sm`` for coarse tensors, ``height_q`` for ``ref_sm``) tell a
    runtime which outputs share a size.
    """
    for value in [*proto.graph.input, *proto.graph.output]:
        if value.name not in INPUT_NAMES + names:
            continue
        dims = value.type.tensor_type.shape.dim
        while len(dims) < 4:
            dims.add()
        for dim, axis in zip(dims, tensor_axes(value.name)):
            if isinstance(axis, int):
                dim.Clear()
                dim.dim_value = axis
            else:
                dim.Clear()
                dim.dim_param = axis


# The model's doc_string: what a user who opens the file in another tool should know first.
ONNX_DOC_STRING = (
    "BackgroundMattingV2 exported by bgm-deploy (config: metadata_props 'bgm_deploy', and the sidecar "
    "<file>.bgm.json). Run it at float32 inference precision: reduced precision ruins the refined patches "
    "(patch selection and coordinates). OpenVINO: compile_model(..., {'INFERENCE_PRECISION_HINT': 'f32'}) - "
    "its CPU default is bf16 on CPUs with AVX512-BF16/AMX, and then alpha is off by up to 1.0. "
    "Check any runtime with: bgm-deploy verify FILE (--runtime openvino)."
)


# onnx-graphsurgeon's constant folding (``polygraphy surgeon sanitize --fold-constants``)
# "elides" Cast(int -> float) -> op -> Cast(float -> int) chains by running the op on the
# integers and casting its constants to int: the dynamo exporter's size arithmetic
# ``int(float(H) * 0.25)`` then multiplies by int(0.25) = 0 and Resize fails ("Scale value
# should be greater than 0"). The ops its elision considers:
_CAST_ELISION_OPS = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Equal", "Greater", "Less", "Concat"}
_INT_TYPES = (6, 7)  # TensorProto.INT32, INT64
_FLOAT = 1  # TensorProto.FLOAT


def guard_cast_elision(proto: Any) -> int:
    """Makes float arithmetic on integers survive graph tools that elide its Casts.

    Every ``Cast(to=int)`` fed by one of :data:`_CAST_ELISION_OPS` whose inputs include a
    ``Cast(to=float)`` gets a ``Cast(to=float)`` (a no-op) in between, so the chain no longer
    has the shape the elision looks for. Values are unchanged; onnxruntime, OpenVINO and
    TensorRT drop the no-op when they optimise. Returns the number of guards inserted.
    """
    import onnx

    nodes = list(proto.graph.node)
    producer = {out: node for node in nodes for out in node.output}

    def cast_to(node: Any) -> int | None:
        if node is None or node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    guards: dict[str, Any] = {}  # op output -> its guard node
    for node in nodes:
        if cast_to(node) not in _INT_TYPES or not node.input:
            continue
        source = node.input[0]
        op = producer.get(source)
        if op is None or op.op_type not in _CAST_ELISION_OPS:
            continue
        if not any(cast_to(producer.get(name)) == _FLOAT for name in op.input):
            continue
        if source not in guards:
            guards[source] = onnx.helper.make_node(
                "Cast", [source], [f"{source}__bgm_keep_float"], name=f"{op.name or source}__bgm_keep_float", to=_FLOAT
            )
        node.input[0] = guards[source].output[0]
    if guards:
        ordered = []
        for node in nodes:
            ordered.append(node)
            ordered.extend(guards[out] for out in node.output if out in guards)
        del proto.graph.node[:]
        proto.graph.node.extend(ordered)
    return len(guards)


def _set_metadata(proto: Any, metadata: ExportMetadata) -> None:
    proto.doc_string = ONNX_DOC_STRING
    for prop in list(proto.metadata_props):
        if prop.key == METADATA_KEY:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = metadata.to_json()


# Checks a simplified graph against the exported one: (exported, simplified) protos ->
# a reason to keep the exported one, or None. The API passes one that runs both through the
# runners and verify's comparison (the single parity rule); the exporter has no runtime.
SimplifyCheck = Callable[[Any, Any], "str | None"]


def _simplify(proto: Any, names: tuple[str, ...], check: SimplifyCheck | None) -> tuple[Any, str | None]:
    """onnxsim with dynamic shapes kept; returns ``(model, warning or None)``."""
    try:
        import onnxsim  # a heavy optional dependency: only when simplifying
    except ImportError:
        return proto, "onnxsim is not installed; the model was not simplified (pip install onnxsim)"
    try:
        simplified, ok = onnxsim.simplify(proto, check_n=0, skip_shape_inference=False)
    except Exception as exc:  # noqa: BLE001 - onnxsim raises bare RuntimeError/ValueError/… from C++
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return proto, f"onnxsim failed ({type(exc).__name__}: {first[:200]}); kept the unsimplified model"
    if not ok:
        return proto, "onnxsim reported an inconsistent result; kept the unsimplified model"
    _rename_dims(simplified, names)
    if check is not None:
        problem = check(proto, simplified)
        if problem:
            return proto, f"{problem}; kept the unsimplified model"
    return simplified, None


def _check(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the exported ONNX model fails onnx.checker: {str(exc).splitlines()[0]}") from None


def temp_path_for(output: Path, suffix: str) -> Path:
    """A fresh temp file next to ``output`` (same filesystem, so the final rename is atomic).

    Named ``.<output name>.bgm-deploy-tmp-<pid><suffix>`` so a leftover of a killed export
    can be found; stale ones of the same output are removed here (see exporters.atomic).
    """
    return new_temp_file(output, suffix)


def check_writable(output: Path) -> None:
    """Raises :class:`UsageError` if ``output`` cannot be written."""
    if output.is_dir():
        raise UsageError(f"output {output} is a directory; pass a file path such as {output / 'model.onnx'}")
    parent = output.parent
    if not parent.is_dir():
        raise UsageError(f"output directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"output directory {parent} is not writable")


def export_metadata(
    model_config: ModelConfig, fmt: str, config: Any, outputs: tuple[str, ...], extra: dict[str, Any]
) -> ExportMetadata:
    """The metadata every exported file carries (see :mod:`exporters.metadata`)."""
    try:
        import onnx

        onnx_version: str | None = onnx.__version__
    except ImportError:
        onnx_version = None
    export = {
        "precision": config.precision,
        "io_dtype": config.io_dtype,
        "inputs": list(INPUT_NAMES),
        "outputs": list(outputs),
        "dynamic_axes": {name: [str(a) for a in tensor_axes(name)] for name in INPUT_NAMES + outputs},
        "torch_version": torch.__version__,
        "onnx_version": onnx_version,
        "bgm_deploy_version": BGM_DEPLOY_VERSION,
        **extra,
    }
    return ExportMetadata(model_config, fmt, export)


def onnx_from_torch(
    model: nn.Module,
    model_config: ModelConfig,
    config: OnnxConfig,
    output: str | Path,
    progress: Progress | None = None,
    simplify_check: SimplifyCheck | None = None,
    patches: tuple[Patch, ...] | None = None,
) -> OnnxExportResult:
    """Exports ``model`` (built from ``model_config``) to an ONNX file.

    Args:
        model: the eval-mode PyTorch reference (not modified: fp16 works on a copy, and the
            export patches are undone afterwards).
        model_config: the config ``model`` was built from; embedded as metadata.
        config: export settings.
        output: destination ``.onnx`` path; written atomically.
        progress: called with one line per stage.
        simplify_check: compares the simplified graph with the exported one (see
            ``SimplifyCheck``); None skips the numeric re-check (``bgm_deploy.export`` always
            passes one).
        patches: the export patches to apply instead of ``export_patches(config.target, model)``
            (benchmarks/cpu_speed.py exports the graphs before and after each rewrite with it).

    Returns:
        :class:`OnnxExportResult`.

    Raises:
        UsageError: the config cannot export this model (opset, outputs, output path).
        ExportError: the exporter or the checker failed.
    """
    import onnx

    say = progress or (lambda _message: None)
    output = Path(output)
    check_writable(output)
    model_config = model_config.resolved_from(model)  # unset settings: what the model runs
    if config.trace_resolution is None:
        config = dataclasses.replace(config, trace_resolution=DEFAULT_TRACE_RESOLUTION)
    config.check_for(model_config.model_type, model_config.refine_patch_crop_method)
    names = config.output_names(model_config.model_type)
    every = output_names(model_config.model_type)
    dtype = torch.float16 if config.precision == "fp16" else torch.float32

    module: nn.Module = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    module.eval()
    # An eval-mode wrapper: the legacy exporter restores the *wrapper's* training flag
    # recursively afterwards, which would switch a default (training) wrapper's model to train.
    wrapper = OutputSelector(module, tuple(every.index(name) for name in names)).eval()
    inputs = example_inputs(config, dtype)

    result = OnnxExportResult(path=output, size_bytes=0, outputs=names)
    temp = temp_path_for(output, ".onnx")
    try:
        description = (f"{config.exporter} exporter, opset {config.opset}, {config.precision}, outputs {','.join(names)} "
                       f"(tracing at {config.trace_resolution[0]}x{config.trace_resolution[1]}; 10-60 s)")
        with stage(say, "export", description) as timing:
            try:
                with ModelPatcher(module, export_patches(config.target, module) if patches is None else patches), torch.no_grad():
                    _export_graph(wrapper, inputs, names, config, temp)
            except (ExportError, UsageError):
                raise
            except Exception as exc:  # noqa: BLE001 - exporters raise many unrelated types; re-raised as one
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise ExportError(f"the {config.exporter} ONNX exporter failed: {type(exc).__name__}: {first[:300]}") from exc
        result.seconds["export"] = timing["seconds"]
        say(f"export: graph written ({timing['seconds']:.1f} s)")

        proto = onnx.load(str(temp))
        _rename_dims(proto, names)
        if config.simplify:
            checked = "then a re-check against the exported graph" if simplify_check else "(no numeric re-check)"
            with stage(say, "simplify", f"onnxsim, {checked}") as timing:
                proto, warning = _simplify(proto, names, simplify_check)
            result.simplified = warning is None
            if warning:
                result.warnings.append(warning)
                say(f"warning: {warning}")
            result.seconds["simplify"] = timing["seconds"]
            say(f"simplify: {'done' if result.simplified else 'skipped'} ({result.seconds['simplify']:.1f} s)")

        guarded = guard_cast_elision(proto)
        if guarded:
            say(f"guard: {guarded} int->float->int size computation(s) kept intact for graph tools' constant folding")

        width, height = config.trace_resolution
        metadata = export_metadata(
            model_config,
            "onnx",
            config,
            names,
            {
                "exporter": config.exporter,
                "opset": config.opset,
                "simplified": result.simplified,
                "target": config.target,
                "trace_resolution": [width, height],
                "trace_batch": config.trace_batch,
            },
        )
        _set_metadata(proto, metadata)
        onnx.save(proto, str(temp))

        start = time.perf_counter()
        _check(temp)
        result.seconds["check"] = time.perf_counter() - start
        say(f"check: onnx.checker full check passed ({result.seconds['check']:.1f} s)")
        os.replace(temp, output)
    finally:
        if temp.exists():
            temp.unlink()
    result.size_bytes = output.stat().st_size
    result.metadata = metadata
    say(f"wrote {output} ({result.size_bytes / 1e6:.1f} MB)")
    return result
