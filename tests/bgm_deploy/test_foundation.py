"""Foundation: config, auto scale, checkpoint loading, synthetic weights, CLI skeleton."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bgm_deploy import __version__
from bgm_deploy.cli import cli
from model import MattingBase, MattingRefine
from model.checkpoint import build_model, config_for_checkpoint, read_checkpoint
from model.config import ModelConfig, auto_backbone_scale
from model.errors import CheckpointError, UsageError
from model.synthetic import init_synthetic_weights


@pytest.mark.parametrize(
    "size,expected",
    [((640, 480), (0.25, 80_000)), ((1920, 1080), (0.25, 80_000)), ((3840, 2160), (0.125, 320_000)), ((2560, 1440), (0.125, 320_000))],
)
def test_auto_backbone_scale(size: tuple[int, int], expected: tuple[float, int]) -> None:
    assert auto_backbone_scale(*size) == expected


def test_config_validation_and_roundtrip() -> None:
    config = ModelConfig(backbone="resnet50", refine_mode="thresholding", seed=7)
    assert ModelConfig.from_json(config.to_json()) == config
    with pytest.raises(UsageError, match="backbone='vgg'"):
        ModelConfig(backbone="vgg")
    with pytest.raises(UsageError, match="--backbone-scale 0.6"):
        ModelConfig(backbone_scale=0.6)
    with pytest.raises(UsageError, match="schema_version 99"):
        ModelConfig.from_dict({"schema_version": 99})


@pytest.fixture(scope="module")
def refine_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_model(ModelConfig(seed=3))
    path = tmp_path_factory.mktemp("ckpt") / "pytorch_mobilenetv2.pth"
    torch.save(model.state_dict(), path)
    return path


def test_checkpoint_roundtrip_equal_outputs(refine_checkpoint: Path) -> None:
    config = config_for_checkpoint(ModelConfig(refine_sample_pixels=4000), refine_checkpoint)
    assert config.seed is None and config.checkpoint_sha256 and len(config.checkpoint_sha256) == 64
    loaded = build_model(config, refine_checkpoint)
    original = build_model(ModelConfig(seed=3, refine_sample_pixels=4000))
    src, bgr = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(loaded(src, bgr), original(src, bgr)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_wrapped_and_dataparallel_checkpoints_load(refine_checkpoint: Path, tmp_path: Path) -> None:
    state = torch.load(refine_checkpoint, weights_only=True)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    _, info = read_checkpoint(wrapped)
    assert (info.backbone, info.model_type, info.refine_kernel_size) == ("mobilenetv2", "refine", 3)
    build_model(ModelConfig(), wrapped)


def test_wrong_backbone_names_both_architectures(refine_checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match=r"expected a resnet50 MattingRefine checkpoint, found mobilenetv2 MattingRefine"):
        build_model(ModelConfig(backbone="resnet50"), refine_checkpoint)


def test_sha_mismatch_is_an_error(refine_checkpoint: Path) -> None:
    config = ModelConfig(seed=None, checkpoint_sha256="0" * 64)
    with pytest.raises(CheckpointError, match="differs from the one recorded"):
        build_model(config, refine_checkpoint)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_truncated_or_foreign_files(refine_checkpoint: Path, tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bad.pth"
    if content is None:  # truncated real checkpoint
        path.write_bytes(refine_checkpoint.read_bytes()[:5000])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=str(path)):
        build_model(ModelConfig(), path)


def test_non_matting_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match="not a BackgroundMattingV2 checkpoint"):
        build_model(ModelConfig(), path)


def test_missing_checkpoint_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        build_model(ModelConfig(), tmp_path / "nope.pth")


def test_base_checkpoint_into_refine_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = build_model(ModelConfig(model_type="base", seed=1))
    path = tmp_path / "base.pth"
    torch.save(base.state_dict(), path)
    with caplog.at_level(logging.WARNING):
        model = build_model(ModelConfig(), path)
    assert isinstance(model, MattingRefine)
    assert "refiner keeps its initial weights" in caplog.text
    torch.testing.assert_close(model.decoder.conv4.weight, base.decoder.conv4.weight)


def test_refine_checkpoint_into_base(refine_checkpoint: Path) -> None:
    model = build_model(ModelConfig(model_type="base"), refine_checkpoint)
    assert isinstance(model, MattingBase) and not isinstance(model, MattingRefine)


def test_synthetic_weights_are_deterministic_and_exercise_the_refiner(pairs_dir: Path) -> None:
    import numpy as np
    from PIL import Image

    a = init_synthetic_weights(MattingRefine("mobilenetv2"), seed=5).state_dict()
    b = init_synthetic_weights(MattingRefine("mobilenetv2"), seed=5).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = init_synthetic_weights(MattingRefine("mobilenetv2"), seed=6).state_dict()
    assert not torch.equal(a["decoder.conv4.weight"], c["decoder.conv4.weight"])

    def load(name: str, which: str) -> torch.Tensor:
        image = np.asarray(Image.open(pairs_dir / name / f"{which}.jpg").convert("RGB"))[:480, :640]
        return torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255

    src, bgr = load("astronaut_coffee_640x480", "src"), load("astronaut_coffee_640x480", "bgr")
    noise = (torch.rand(1, 3, 256, 320, generator=torch.Generator().manual_seed(0)),) * 2
    for mode in ("sampling", "thresholding"):
        model = build_model(ModelConfig(refine_mode=mode))
        with torch.no_grad():
            fractions = [model(src, bgr)[5].mean().item(), model(torch.rand(1, 3, 256, 320), noise[0])[5].mean().item()]
        for fraction in fractions:
            assert 0.0 < fraction < 1.0, f"{mode}: refined fraction {fraction}"


def test_cli_version_help_info() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("export", "verify", "bench", "matte", "info", "inspect", "check"):
        assert command in result.output
    result = runner.invoke(cli, ["info", "--json"])
    data = json.loads(result.output)
    assert {"torch", "onnx", "onnxruntime", "onnxruntime_providers_compiled_in", "tensorrt", "device"} <= set(data)
    result = runner.invoke(cli, ["info"])
    assert "onnxruntime" in result.output and "device" in result.output


def test_cli_user_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["inspect", str(tmp_path / "missing.onnx")])
    assert result.exit_code == 2 and result.output.startswith("Error: ") and "Traceback" not in result.output
    result = runner.invoke(cli, ["export", "--format", "onnx", "-o", str(tmp_path / "m.onnx"), "--backbone-scale", "0.9"])
    assert result.exit_code == 2 and "--backbone-scale 0.9" in result.output
    assert not list(tmp_path.iterdir())
    result = runner.invoke(cli, ["export", "--format", "xml", "-o", "m"])
    assert result.exit_code == 2  # click usage error
    # --debug shows the real exception instead of the one line
    result = runner.invoke(cli, ["--debug", "inspect", str(tmp_path / "missing.onnx")])
    assert result.exit_code != 0 and result.exception is not None


def test_shape_mismatch_is_a_checkpoint_error(refine_checkpoint: Path, tmp_path: Path) -> None:
    state = torch.load(refine_checkpoint, weights_only=True)
    state["decoder.conv4.weight"] = torch.zeros(37, 54, 1, 1)
    path = tmp_path / "reshaped.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"decoder.conv4.weight \(37, 54, 1, 1\) \(checkpoint\)"):
        build_model(ModelConfig(), path)
