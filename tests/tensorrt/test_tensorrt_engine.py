"""Engine configs, sidecar compatibility checks, the check command, and clear errors without a GPU.

The GPU tests at the bottom build and run real engines; they are marked and skipped on
machines without TensorRT and CUDA.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bgm_deploy.cli import cli
from exporters.metadata import ExportMetadata, read_metadata
from exporters.tensorrt import (
    DEFAULT_PROFILES,
    EngineConfig,
    EngineEnvironment,
    check_engine_compatible,
    engine_from_onnx,
    sidecar_path,
)
from model.config import ModelConfig
from model.errors import ModelFileError, RuntimeUnavailableError, UsageError
from runtimes import create_runner

BUILT = EngineEnvironment("10.3.0", "NVIDIA GeForce RTX 3090", "8.6")


def fake_engine(tmp_path: Path, environment: EngineEnvironment = BUILT) -> Path:
    """An engine file plus the sidecar engine_from_onnx writes (the engine bytes are never read)."""
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not a real engine")
    export = {
        "tensorrt_version": environment.tensorrt_version,
        "gpu_name": environment.gpu_name,
        "compute_capability": environment.compute_capability,
        "precision": "fp16",
        "profile": {"min": [1, 256, 256], "opt": [1, 1080, 1920], "max": [4, 1080, 1920]},
        "source_onnx_sha256": "0" * 64,
    }
    metadata = ExportMetadata(ModelConfig(seed=3), "tensorrt", export)
    sidecar_path(engine).write_text(metadata.to_json())
    return engine


def test_same_environment_is_accepted(tmp_path: Path) -> None:
    metadata = check_engine_compatible(fake_engine(tmp_path), current=BUILT)
    assert metadata.model_config.seed == 3 and metadata.export["precision"] == "fp16"
    assert read_metadata(tmp_path / "model.engine").format == "tensorrt"


def test_other_tensorrt_version_is_refused(tmp_path: Path) -> None:
    here = EngineEnvironment("10.5.0", BUILT.gpu_name, BUILT.compute_capability)
    with pytest.raises(ModelFileError, match=r"built with TensorRT 10\.3\.0 but this machine has TensorRT 10\.5\.0"):
        check_engine_compatible(fake_engine(tmp_path), current=here)


def test_other_gpu_architecture_is_refused(tmp_path: Path) -> None:
    here = EngineEnvironment(BUILT.tensorrt_version, "NVIDIA A100-SXM4-80GB", "8.0")
    with pytest.raises(ModelFileError, match=r"compute capability 8\.6.*A100.*compute capability 8\.0.*rebuild"):
        check_engine_compatible(fake_engine(tmp_path), current=here)


def test_same_architecture_other_gpu_only_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    here = EngineEnvironment(BUILT.tensorrt_version, "NVIDIA RTX A6000", "8.6")
    with caplog.at_level(logging.WARNING):
        check_engine_compatible(fake_engine(tmp_path), current=here)
    assert "RTX A6000" in caplog.text


def test_missing_or_incomplete_sidecar(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path)
    sidecar = sidecar_path(engine)
    data = json.loads(sidecar.read_text())
    del data["export"]["compute_capability"]
    sidecar.write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="compute_capability"):
        check_engine_compatible(engine, current=BUILT)
    sidecar.unlink()
    with pytest.raises(ModelFileError, match="sidecar"):
        check_engine_compatible(engine, current=BUILT)


def test_profiles_default_to_presets_and_validate() -> None:
    assert EngineConfig().profile(ModelConfig(seed=0)) == DEFAULT_PROFILES["hd"]
    assert EngineConfig().profile(ModelConfig(seed=0, backbone_scale=0.125)) == DEFAULT_PROFILES["4k"]
    low, opt, high = EngineConfig(preset="hd", max_shape=(8, 1080, 1920)).profile()
    assert high == (8, 1080, 1920) and low == DEFAULT_PROFILES["hd"][0]
    with pytest.raises(UsageError, match="min <= opt <= max"):
        EngineConfig(opt_shape=(1, 2160, 3840), preset="hd").profile()
    with pytest.raises(UsageError, match="divisible by 4"):
        EngineConfig(min_shape=(1, 250, 256))
    with pytest.raises(UsageError, match="precision"):
        EngineConfig(precision="int8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without a GPU")
def test_without_gpu_engine_build_and_runner_fail_clearly(tmp_path: Path, tensorrt_onnx: Path) -> None:
    onnx_copy = tensorrt_onnx
    with pytest.raises(RuntimeUnavailableError) as info:
        engine_from_onnx(onnx_copy, EngineConfig(), tmp_path / "model.engine")
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    assert not (tmp_path / "model.engine").exists()
    with pytest.raises(RuntimeUnavailableError):
        create_runner("tensorrt", path=fake_engine(tmp_path)).activate()


def test_blocking_preflight_stops_engine_build(tmp_path: Path, generic_onnx: Path) -> None:
    onnx_copy = generic_onnx
    with pytest.raises(Exception, match="TopK with K=5,000"):
        engine_from_onnx(onnx_copy, EngineConfig(), tmp_path / "model.engine")


def test_check_command_exit_codes(tmp_path: Path, generic_onnx: Path, tensorrt_onnx: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["check", str(generic_onnx), "--target", "tensorrt", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 1, result.output
    assert "[blocking] TopK" in result.output and "BLOCKED" in result.output
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is False
    result = runner.invoke(cli, ["check", str(tensorrt_onnx)])
    assert result.exit_code == 0 and "OK:" in result.output
    result = runner.invoke(cli, ["check", str(tmp_path / "missing.onnx")])
    assert result.exit_code == 2 and result.output.count("\n") == 1


# -- on a GPU with TensorRT -----------------------------------------------------------------


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-3), ("fp16", 2e-2)])
def test_engine_matches_onnxruntime_on_gpu(tmp_path: Path, tensorrt_onnx: Path, precision: str, tolerance: float) -> None:
    onnx_copy = tensorrt_onnx
    config = EngineConfig(precision=precision, min_shape=(1, 128, 128), opt_shape=(1, 256, 320), max_shape=(2, 320, 320),
                          workspace_mib=1024, timing_cache=str(tmp_path / "timing.cache"))  # fmt: skip
    info = engine_from_onnx(onnx_copy, config, tmp_path / "model.engine")
    assert info.sidecar["source_onnx_sha256"] and (tmp_path / "timing.cache").is_file()
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_copy), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {name: rng.random((2, 3, 256, 320), dtype=np.float32) for name in ("src", "bgr")}
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    with create_runner("tensorrt", path=info.engine_path) as runner:
        for _ in range(2):  # the second call reuses the device buffers
            outputs = runner.infer(feeds)
    # fp16 may select other cells near the k-th error value, so it is held to a mean, not a max.
    error = np.abs(outputs["pha"] - expected["pha"])
    assert (error.max() if precision == "fp32" else error.mean()) <= tolerance
    agreement = float((outputs["ref_sm"] == expected["ref_sm"]).mean())
    assert agreement == 1.0 if precision == "fp32" else agreement > 0.95


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-machine behaviour")
def test_gpu_validate_skips_cleanly_without_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.gpu_validate import main

    assert main(["--out", str(tmp_path / "report")]) == 0
    assert "skipped everything" in capsys.readouterr().out
    assert not (tmp_path / "report").exists()
    assert main(["--presets", "8k"]) == 2
