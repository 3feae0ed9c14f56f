"""The guard's limits per model of a ``serve --repository``: each model is held to what its own
``config.pbtxt`` declares, and a model that is not a bgm-deploy image model is served, not refused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason='needs pip install --no-deps -r requirements-serve.txt')

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "runtimes"))
import model_files

from bgm_deploy.model_spec import ModelSpec
from bgm_deploy.serve.guard import GuardServer, Limits, check_request
from bgm_deploy.serve.repository import TritonModelOptions, onnxruntime_config_text, write_python_repository
from bgm_deploy.serve.server import repository_limits

FOREIGN = """name: "tokens"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "ids" data_type: TYPE_INT64 dims: [ 16 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 16, 4 ] } ]
"""


def _request(name: str, shape: list[int], datatype: str = "UINT8") -> dict:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": 1}}]}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    onnx_model = model_files.model_file("onnx", tmp_path_factory.getbasetemp() / "bgm_models")
    root = tmp_path_factory.mktemp("repo")
    write_python_repository(root, TritonModelOptions(name="small", max_pixels=5000, max_batch_size=2),
                            ModelSpec(model=str(onnx_model), threads=1))
    (root / "exported" / "1").mkdir(parents=True)
    text = onnxruntime_config_text(TritonModelOptions(name="exported", outputs=("pha",)),
                                   {"src": "float32", "bgr": "float32"}, {"pha": "float32"})
    (root / "exported" / "config.pbtxt").write_text(text)
    (root / "tokens").mkdir()
    (root / "tokens" / "config.pbtxt").write_text(FOREIGN)
    (root / "broken").mkdir()
    (root / "broken" / "config.pbtxt").write_text("max_batch_size: four")
    return root


def test_each_model_is_held_to_its_own_config(repository: Path) -> None:
    limits = repository_limits(repository, max_pixels=1920 * 1080)
    assert sorted(limits) == ["exported", "small", "tokens"]  # an unparsable config is left to Triton
    small, exported, tokens = limits["small"], limits["exported"], limits["tokens"]
    # bgm-deploy's python flavour: NHWC uint8 images, its own max_pixels and batch.
    assert (small.layout, small.max_pixels, small.max_batch, small.rank) == ("NHWC", 5000, 2, 4)
    assert check_request(_request("src", [1, 50, 100, 3]), small) is None
    refused = check_request(_request("src", [1, 100, 100, 3]), small)
    assert refused is not None and "limit of 5000 (max_pixels in small/config.pbtxt)" in refused
    assert "max batch size 2" in (check_request(_request("src", [3, 10, 10, 3]), small) or "")
    # An exported ONNX file: NCHW, the server's --max-pixels on height x width (not 3 x height).
    assert (exported.layout, exported.rank, exported.max_pixels) == ("NCHW", 4, 1920 * 1080)
    assert check_request(_request("src", [1, 3, 1080, 1920], "FP32"), exported) is None
    over = check_request(_request("src", [1, 3, 1081, 1920], "FP32"), exported)
    assert over is not None and "(--max-pixels)" in over
    # Any other model: its rank and a byte bound from its fixed dims; no image checks.
    assert (tokens.layout, tokens.rank, tokens.max_pixels) == ("", 2, 0)
    assert check_request(_request("ids", [8, 16], "INT64"), tokens) is None
    assert "must have 2 dims" in (check_request(_request("ids", [1, 8, 16], "INT64"), tokens) or "")
    assert "over the request limit" in (check_request(_request("ids", [8, 10**7], "INT64"), tokens) or "")


def test_requests_are_checked_against_the_model_they_name(repository: Path) -> None:
    models = repository_limits(repository, max_pixels=0)
    default = Limits(max_batch=64, max_pixels=0, max_body=1 << 30, rank=0, layout="")
    guard = GuardServer("127.0.0.1", 0, 0, default, models)
    try:
        assert guard.limits_for("/v2/models/small/infer") is models["small"]
        assert guard.limits_for("/v2/models/tokens/versions/1/infer?x=1") is models["tokens"]
        assert guard.limits_for("/v2/models/sm%61ll/infer") is models["small"]  # Triton decodes the path too
        assert guard.limits_for("/v2/models/unknown/infer") is default
        assert guard.limits_for("/v2/health/ready") is default
    finally:
        guard.server_close()
