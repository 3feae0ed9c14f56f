"""Provider/device selection: a requested GPU provider that did not load is never silent."""

from __future__ import annotations

import logging
from pathlib import Path

import model_files
import numpy as np
import pytest
import torch

from model.errors import ModelFileError, RuntimeUnavailableError, UsageError
from runtimes import create_runner
from runtimes.targets import resolve_target

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path; this machine has CUDA")


@pytest.fixture(scope="module")
def onnx_path(models_root: Path) -> Path:
    return model_files.model_file("onnx", models_root)


def _feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {name: rng.random((1, 3, 64, 96), dtype=np.float32) for name in ("src", "bgr")}


@NO_GPU
@pytest.mark.parametrize(("provider", "missing"), [("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")])
def test_unusable_gpu_provider_is_an_error_naming_it(onnx_path: Path, provider: str, missing: str) -> None:
    runner = create_runner("onnxruntime", path=onnx_path, provider=provider)
    with pytest.raises(RuntimeUnavailableError) as info:
        runner.activate()
    message = str(info.value)
    assert missing in message and "install" in message and "allow-fallback" in message
    assert not runner.is_active


@NO_GPU
def test_allow_fallback_warns_loudly_and_reports_cpu(onnx_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), create_runner("onnxruntime", path=onnx_path, provider="cuda", allow_fallback=True) as runner:
        assert runner.provider == "CPUExecutionProvider"
        assert runner.infer(_feeds())["pha"].shape == (1, 1, 64, 96)
    assert any("FALLING BACK" in record.getMessage() for record in caplog.records)


@NO_GPU
@pytest.mark.parametrize("name", ["torchscript", "pytorch"])
def test_torch_runners_refuse_cuda_without_a_gpu(name: str, tmp_path: Path) -> None:
    # The device is checked before the file is read.
    opts = {"path": tmp_path / "model.pt"} if name == "torchscript" else {"model_config": model_files.TEST_CONFIG}
    with pytest.raises(RuntimeUnavailableError, match="cuda"):
        create_runner(name, device="cuda", **opts).activate()


def test_bad_options_and_files(onnx_path: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="valid: cpu, cuda, tensorrt"):
        create_runner("onnxruntime", path=onnx_path, provider="directml")
    with pytest.raises(UsageError, match="not known; valid"):
        create_runner("onnx")
    with pytest.raises(ModelFileError, match="does not exist"):
        create_runner("onnxruntime", path=tmp_path / "missing.onnx").activate()
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x01garbage" * 10)
    with pytest.raises(ModelFileError, match="cannot load"):
        create_runner("onnxruntime", path=corrupt).activate()
    with pytest.raises(UsageError, match="not an onnxruntime.SessionOptions attribute"):
        create_runner("onnxruntime", path=onnx_path, session_options={"no_such_option": 1}).activate()
    with pytest.raises(UsageError, match="exactly one of model_config= or module="):
        create_runner("pytorch")


def test_threads_option_and_runner_choice(onnx_path: Path) -> None:
    with create_runner("onnxruntime", path=onnx_path, threads=1) as runner:
        assert runner.session.get_session_options().intra_op_num_threads == 1
        with pytest.raises(RuntimeError, match="allow_spinning"):  # not set: onnxruntime's default (spinning)
            runner.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
        expected = runner.infer(_feeds())
    with create_runner("onnxruntime", path=onnx_path, threads=1, allow_spinning=False) as runner:
        assert runner.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
        got = runner.infer(_feeds())
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)  # scheduling only, same numbers
    # Which runner runs what: the target registry (device words pick a format's default target).
    assert resolve_target("tensorrt", "onnx").name == "onnxruntime-tensorrt"
    assert resolve_target("tensorrt", "tensorrt").name == "tensorrt-cuda"
    assert resolve_target(None, "onnx").name == "onnxruntime-cpu"
    assert resolve_target("cuda", "torchscript").name == "torchscript-cuda"
    with pytest.raises(UsageError, match="cannot run a torchscript model"):
        resolve_target("tensorrt", "torchscript")
    with pytest.raises(UsageError, match="runs onnx models, not torchscript"):
        resolve_target("openvino-cpu", "torchscript")


@pytest.mark.gpu
@pytest.mark.parametrize("io_binding", [True, False])
def test_cuda_provider_matches_cpu(onnx_path: Path, io_binding: bool) -> None:
    # Unverified here (no GPU): written against the documented IO binding API.
    feeds = _feeds()
    with create_runner("onnxruntime", path=onnx_path) as cpu:
        expected = cpu.infer(feeds)
    with create_runner("onnxruntime", path=onnx_path, provider="cuda", io_binding=io_binding) as gpu:
        assert gpu.provider == "CUDAExecutionProvider"
        for _ in range(2):  # the second call reuses the bound device buffers
            outputs = gpu.infer(feeds)
    for name, value in expected.items():
        np.testing.assert_allclose(outputs[name], value, atol=1e-3, err_msg=name)
