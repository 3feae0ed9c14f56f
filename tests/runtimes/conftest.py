"""Fixtures for runner tests: small exported models (built once per session) and a factory
per registered runner."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the model_files helper lives next to this file
import model_files  # noqa: E402
import target_files  # noqa: E402

from runtimes import BaseRunner, create_runner  # noqa: E402


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "bgm_models"


def _tensorrt_runner(root: Path) -> BaseRunner:
    if importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available():
        pytest.skip("tensorrt runner: TensorRT and a CUDA GPU are not available here")
    from exporters.tensorrt import EngineConfig, engine_from_onnx

    engine = root / "test.engine"
    if not engine.exists():  # profile covers the contract's (2, 96, 128) and the provider tests' sizes
        profile = EngineConfig(min_shape=(1, 64, 64), opt_shape=(2, 96, 128), max_shape=(2, 128, 160))
        engine_from_onnx(model_files.model_file("onnx", root), profile, engine)
    return create_runner("tensorrt", path=str(engine))


def _openvino_runner(root: Path) -> BaseRunner:
    pytest.importorskip("openvino", reason='openvino is not installed (pip install "bgm-deploy[openvino]")')
    return create_runner("openvino", path=model_files.model_file("onnx", root))


def _coreml_runner(root: Path) -> BaseRunner:
    from runtimes.coreml import macos_missing

    reason = macos_missing()
    if reason is not None:
        pytest.skip(f"coreml runner: {reason}")
    return create_runner("coreml", path=target_files.target_file("coreml", root))


# name -> builds an inactive runner of the shared test model (refine, synthetic seed 0).
RUNNER_FACTORIES: dict[str, Callable[[Path], BaseRunner]] = {
    "onnxruntime": lambda root: create_runner("onnxruntime", path=model_files.model_file("onnx", root)),
    "torchscript": lambda root: create_runner("torchscript", path=model_files.model_file("torchscript", root)),
    "pytorch": lambda root: create_runner("pytorch", model_config=model_files.TEST_CONFIG),
    "tensorrt": _tensorrt_runner,
    "openvino": _openvino_runner,
    # torch.export-based targets: files of batch 2 at 128x96 (the contract's feeds)
    "executorch": lambda root: create_runner("executorch", path=target_files.target_file("executorch", root)),
    "aoti": lambda root: create_runner("aoti", path=target_files.target_file("aoti", root)),
    "litert": lambda root: create_runner("litert", path=target_files.target_file("litert", root)),
    "coreml": _coreml_runner,
}


@pytest.fixture()
def make_runner(models_root: Path) -> Callable[[str], BaseRunner]:
    def make(name: str) -> BaseRunner:
        if name not in RUNNER_FACTORIES:
            pytest.fail(f"runner {name!r} is registered but has no factory in tests/runtimes/conftest.py; add one")
        return RUNNER_FACTORIES[name](models_root)

    return make
