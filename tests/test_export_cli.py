"""`bgm-deploy export` / `inspect` from the command line: happy path and each bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bgm_deploy.cli import cli
from exporters.metadata import read_metadata

SMALL = ["--resolution", "160x128", "--refine-sample-pixels", "4000", "--exporter", "legacy"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("cli") / "m.onnx"
    result = CliRunner().invoke(cli, ["export", "--format", "onnx", "-o", str(path), "--outputs", "pha,fgr", *SMALL])
    return path, result


def test_export_onnx_prints_stages_and_writes_metadata(exported: tuple[Path, object]) -> None:
    path, result = exported
    assert result.exit_code == 0, result.output
    for stage in ("build:", "export:", "simplify:", "check:", "re-check:", "demo weights"):
        assert stage in result.output
    assert f"{path} (" in result.output
    metadata = read_metadata(path)
    assert metadata.model_config.refine_patch_crop_method == "roi_align"
    assert metadata.model_config.refine_patch_replace_method == "scatter_element"
    # --backbone-scale auto from --resolution 160x128 (<= HD) → 0.25
    assert metadata.model_config.backbone_scale == 0.25
    assert metadata.export["outputs"] == ["pha", "fgr"] and metadata.export["trace_resolution"] == [160, 128]


def test_quiet_silences_progress(tmp_path: Path) -> None:
    path = tmp_path / "q.onnx"
    result = CliRunner().invoke(
        cli, ["-q", "export", "--format", "onnx", "-o", str(path), "--model-type", "base", "--no-simplify", *SMALL]
    )
    assert result.exit_code == 0, result.output
    assert "export:" not in result.output and "build:" not in result.output
    assert path.is_file()


def test_inspect(exported: tuple[Path, object]) -> None:
    path, _ = exported
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "pha      float32  batchx1xheightxwidth" in result.output
    assert "RoiAlign" in result.output and "opset" in result.output
    data = json.loads(CliRunner().invoke(cli, ["inspect", "--json", str(path)]).output)
    assert data["schema_version"] == 1 and data["format"] == "onnx"
    assert [o["name"] for o in data["outputs"]] == ["pha", "fgr"]
    assert data["ops"]["Conv"] > 0 and data["size_bytes"] == path.stat().st_size


def test_export_torchscript_defaults(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    result = CliRunner().invoke(
        cli, ["export", "--format", "torchscript", "-o", str(path), "--model-type", "base", "--backbone-scale", "0.5"]
    )
    assert result.exit_code == 0, result.output
    metadata = read_metadata(path)
    assert metadata.model_config.refine_patch_crop_method == "unfold"
    info = CliRunner().invoke(cli, ["inspect", str(path)])
    assert info.exit_code == 0 and "torchscript" in info.output


def _bad(tmp_path: Path, args: list[str]) -> object:
    result = CliRunner().invoke(cli, ["export", "--format", "onnx", *args])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result


def test_unwritable_output(tmp_path: Path) -> None:
    result = _bad(tmp_path, ["-o", str(tmp_path / "missing" / "m.onnx"), *SMALL])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = _bad(tmp_path, ["-o", str(tmp_path), *SMALL])
    assert "is a directory" in result.output
    assert list(tmp_path.iterdir()) == []


def test_unknown_option_value(tmp_path: Path) -> None:
    result = _bad(tmp_path, ["-o", str(tmp_path / "m.onnx"), "--precision", "fp8"])
    assert result.exit_code == 2 and "fp8" in result.output
    result = _bad(tmp_path, ["-o", str(tmp_path / "m.onnx"), "--outputs", "pha,alpha", *SMALL])
    assert "alpha" in result.output and "valid: pha, fgr" in result.output
    result = _bad(tmp_path, ["-o", str(tmp_path / "m.onnx"), "--backbone-scale", "big"])
    assert "--backbone-scale" in result.output
    assert list(tmp_path.iterdir()) == []


def test_opset_too_old(tmp_path: Path) -> None:
    result = _bad(tmp_path, ["-o", str(tmp_path / "m.onnx"), "--opset", "15", *SMALL])
    assert result.exit_code == 2 and "too old for RoiAlign" in result.output
    result = _bad(tmp_path, ["-o", str(tmp_path / "m.onnx"), "--exporter", "dynamo", "--opset", "17"])
    assert "not valid for exporter=dynamo" in result.output
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_backbone_mismatch(tmp_path: Path) -> None:
    from model.checkpoint import build_model
    from model.config import ModelConfig

    checkpoint = tmp_path / "pytorch_mobilenetv2.pth"
    torch.save(build_model(ModelConfig(model_type="base")).state_dict(), checkpoint)
    result = _bad(tmp_path, ["-o", str(tmp_path / "m.onnx"), "--backbone", "resnet50", "--checkpoint", str(checkpoint), *SMALL])
    assert result.exit_code == 2 and "use --backbone mobilenetv2" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pytorch_mobilenetv2.pth"]


def test_python_default_export_equals_the_cli_default(tmp_path: Path) -> None:
    """The CLI is a skin: `bgm_deploy.export(ModelConfig(), path)` writes the same file as
    `bgm-deploy export --format onnx --seed 0` (same graph, same weights, same embedded config;
    without --seed the CLI picks the bundled demo weights, the API's ModelConfig() is seed 0).
    Before the rules moved into the API, the Python call took the model's unfold crop and
    failed in the legacy exporter."""
    import onnx

    import bgm_deploy
    from bgm_deploy import ModelConfig

    cli_path, api_path = tmp_path / "cli.onnx", tmp_path / "api.onnx"
    result = CliRunner().invoke(cli, ["--quiet", "export", "--format", "onnx", "--seed", "0", "-o", str(cli_path)])
    assert result.exit_code == 0, result.output
    report = bgm_deploy.export(ModelConfig(), api_path, "onnx")
    assert report.ok and report.format == "onnx"
    cli_model, api_model = onnx.load(str(cli_path)), onnx.load(str(api_path))
    assert [(n.op_type, list(n.input), list(n.output)) for n in cli_model.graph.node] == [
        (n.op_type, list(n.input), list(n.output)) for n in api_model.graph.node
    ]
    assert [t.SerializeToString() for t in cli_model.graph.initializer] == [
        t.SerializeToString() for t in api_model.graph.initializer
    ]
    cli_meta, api_meta = read_metadata(cli_path), read_metadata(api_path)
    assert cli_meta.model_config == api_meta.model_config
    assert cli_meta.model_config.refine_patch_crop_method == "roi_align"
    assert (cli_meta.model_config.backbone_scale, cli_meta.model_config.refine_sample_pixels) == (0.25, 80_000)
    assert cli_meta.export == api_meta.export
