"""``export --format triton``: repository layout and Triton's ``ModelConfig`` schema.

The onnxruntime flavour cannot be loaded here (PyTriton's tritonserver has the Python
backend only), so it is checked by parsing into Triton's own protobuf; the python flavour
is loaded by the real server in ``test_serve.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason='needs pip install --no-deps -r requirements-serve.txt')
text_format = pytest.importorskip("google.protobuf.text_format")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "runtimes"))
import model_files

from bgm_deploy.cli import cli
from bgm_deploy.errors import UsageError
from bgm_deploy.model_spec import ModelSpec
from bgm_deploy.serve.repository import (
    ServeError,
    TritonModelOptions,
    onnxruntime_config_text,
    python_config_text,
    triton_export_outputs,
    validate_config_text,
    write_python_repository,
)


def test_export_triton_onnxruntime_with_tensorrt_accelerator(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(cli, [
        "export", "--format", "triton", "-o", str(repo), "--triton-device", "gpu", "--trt-accelerator",
        "--max-batch-size", "8", "--instances", "2", "--queue-delay-us", "500", "--json", str(report_path),
    ])
    assert result.exit_code == 0, result.output
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()) == ["bgm/1/model.onnx", "bgm/config.pbtxt"]
    message = model_config_pb2.ModelConfig()
    text_format.Parse((repo / "bgm" / "config.pbtxt").read_text(), message)
    assert (message.name, message.backend, message.max_batch_size) == ("bgm", "onnxruntime", 8)
    assert [(t.name, list(t.dims)) for t in message.input] == [("src", [3, -1, -1]), ("bgr", [3, -1, -1])]
    assert [(t.name, list(t.dims)) for t in message.output] == [("pha", [1, -1, -1]), ("fgr", [3, -1, -1])]
    assert message.dynamic_batching.max_queue_delay_microseconds == 500
    assert (message.instance_group[0].count, message.instance_group[0].kind) == (2, model_config_pb2.ModelInstanceGroup.KIND_GPU)
    accelerator = message.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16" and accelerator.parameters["trt_engine_cache_enable"] == "1"
    report = json.loads(report_path.read_text())
    assert report["flavour"] == "onnxruntime" and "UNVERIFIED" in report["verified"]
    assert report["export"]["target"] == "tensorrt"  # the TensorRT-safe graph under the accelerator
    again = CliRunner().invoke(cli, ["export", "--format", "triton", "-o", str(repo)])
    assert again.exit_code == 2 and "already exists; pass --overwrite" in again.output
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_python_config_parses_and_carries_parameters() -> None:
    options = TritonModelOptions(name="m", outputs=("pha", "rgba"), io_dtype="float32", max_pixels=0, instances=3)
    message = validate_config_text(python_config_text(options, "refine", ModelSpec(model="model.onnx"), "cpu"))
    assert message.backend == "python" and message.instance_group[0].count == 3
    assert [(t.name, t.data_type) for t in message.output] == [
        ("pha", model_config_pb2.TYPE_FP32), ("rgba", model_config_pb2.TYPE_UINT8)
    ]
    assert message.parameters["io_dtype"].string_value == "float32"
    assert ModelSpec.from_json(message.parameters["model_spec"].string_value).model == "model.onnx"


def test_bad_configs_and_options_are_refused() -> None:
    with pytest.raises(ServeError, match="does not parse"):
        validate_config_text('name: "x" max_batch_size: four')
    with pytest.raises(ServeError, match="max_batch_size must be >= 1"):
        validate_config_text('name: "x" input [ { name: "a" data_type: TYPE_FP32 dims: [ 3, 4 ] } ] '
                             'output [ { name: "b" data_type: TYPE_FP32 dims: [ 3, 4 ] } ]')
    with pytest.raises(UsageError, match="needs GPU instances"):
        TritonModelOptions(tensorrt=True)
    with pytest.raises(UsageError, match="max_batch_size=0"):
        TritonModelOptions(max_batch_size=0)
    with pytest.raises(UsageError, match="serves pha, fgr, rgba only"):
        triton_export_outputs("python", ("err",))
    with pytest.raises(UsageError, match="not in the ONNX file"):
        onnxruntime_config_text(TritonModelOptions(outputs=("err",)), {"src": "float32", "bgr": "float32"}, {"pha": "float32"})


def test_triton_output_must_be_a_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(cli, ["export", "--format", "triton", "-o", str(tmp_path / "file")])
    assert result.exit_code == 2 and "is a file; a Triton model repository is a folder" in result.output


def test_instance_kind_follows_the_target_unless_named(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    onnx_model = model_files.model_file("onnx", tmp_path_factory.getbasetemp() / "bgm_models")
    spec = ModelSpec(model=str(onnx_model), target="cuda")  # written here, loaded by a GPU server
    model_dir = write_python_repository(tmp_path / "gpu", TritonModelOptions(), spec)
    message = validate_config_text((model_dir / "config.pbtxt").read_text())
    assert message.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    # Named explicitly, a kind that contradicts the target is refused, not overridden.
    with pytest.raises(UsageError, match="--triton-device cpu does not match target onnxruntime-cuda"):
        write_python_repository(tmp_path / "cpu", TritonModelOptions(kind="cpu"), spec)
    assert not (tmp_path / "cpu").exists()
    cpu_dir = write_python_repository(tmp_path / "cpu", TritonModelOptions(), ModelSpec(model=str(onnx_model), threads=1))
    message = validate_config_text((cpu_dir / "config.pbtxt").read_text())
    assert message.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
