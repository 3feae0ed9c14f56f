"""``export --format X`` then ``verify`` for the torch.export-based targets (ExecuTorch,
AOTInductor, LiteRT), Core ML's conversion and spec, and the refusals those files need."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "runtimes"))  # the shared test-file helpers
import target_files  # noqa: E402

from bgm_deploy.cli import cli  # noqa: E402
from bgm_deploy.export import export  # noqa: E402
from bgm_deploy.verify import VerifyConfig, verify  # noqa: E402
from exporters.config import OnnxConfig  # noqa: E402
from exporters.metadata import read_metadata  # noqa: E402
from exporters.recipes import RecipeConfig, recipes  # noqa: E402  (bgm_deploy.export registered them)
from model.errors import RunnerError, RuntimeUnavailableError, UsageError  # noqa: E402
from runtimes import create_runner  # noqa: E402

# Formats whose files run here, checked against PyTorch by verify below; Core ML converts and
# its spec is checked here, its predictions need macOS.
RUNNABLE = ("executorch", "aoti", "litert")
SPEC_ONLY = ("coreml",)


@pytest.fixture(scope="session")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "bgm_models"  # shared with tests/runtimes (same cache)


def test_every_registered_recipe_is_checked_here() -> None:
    assert {r.format for r in recipes()} == set(RUNNABLE) | set(SPEC_ONLY)


@pytest.mark.parametrize("fmt", RUNNABLE)
def test_export_then_verify_passes(fmt: str, root: Path) -> None:
    path = target_files.target_file(fmt, root)
    metadata = read_metadata(path)
    assert metadata.format == fmt
    assert metadata.export["input_shape"] == [target_files.BATCH, 3, 96, 128]
    assert metadata.export["refiner"] == "static-k"
    report = verify(path, VerifyConfig())
    assert report.passed, [c.notes for c in report.cases]
    assert report.target == f"{fmt}-cpu"
    names = [case.name for case in report.cases]
    assert any(name.startswith("pair:") for name in names), names  # the bundled real pairs, resized
    assert max(o.max_abs for c in report.cases for o in c.outputs if o.name == "pha") <= 1e-4


@pytest.mark.parametrize("fmt", RUNNABLE)
def test_another_size_is_refused_naming_the_fix(fmt: str, root: Path) -> None:
    feeds = {name: np.zeros((1, 3, 160, 224), np.float32) for name in ("src", "bgr")}
    with create_runner(f"{fmt}", path=target_files.target_file(fmt, root)) as runner:
        with pytest.raises(RunnerError, match=r"re-export with --resolution 224x160") as error:
            runner.infer(feeds)
    assert "[2, 3, 96, 128]" in str(error.value) and "\n" not in str(error.value)


def test_coreml_converts_and_its_spec_is_checked(root: Path) -> None:
    from exporters.coreml import check_mlpackage_spec

    path = target_files.target_file("coreml", root)
    assert path.is_dir() and path.suffix == ".mlpackage"
    metadata = read_metadata(path)  # from the package's user_defined_metadata
    assert metadata.format == "coreml" and metadata.export["predictions_verified"] is False
    assert check_mlpackage_spec(path, metadata) == []
    if sys.platform != "darwin":
        with pytest.raises(RuntimeUnavailableError, match="macOS"):
            verify(path, VerifyConfig())


def test_fixed_size_formats_need_a_resolution_and_refuse_thresholding(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["export", "--format", "executorch", "-o", str(tmp_path / "m.pte")])
    assert result.exit_code == 2 and "pass --resolution WxH" in result.output
    with pytest.raises(UsageError, match="refine-mode sampling"):
        export(target_files.TARGET_CONFIG.replace(refine_mode="thresholding"), tmp_path / "m.pt2", "aoti",
               resolution=(128, 96))
    with pytest.raises(UsageError, match=r"writes \.pte files"):
        export(target_files.TARGET_CONFIG, tmp_path / "m.onnx", "executorch", resolution=(128, 96))
    # The Python API refuses what it would otherwise drop: ONNX settings, a second size.
    with pytest.raises(UsageError, match="onnx= applies to format='onnx'"):
        export(target_files.TARGET_CONFIG, tmp_path / "m.pte", "executorch", resolution=(128, 96), onnx=OnnxConfig())
    with pytest.raises(UsageError, match="differ; pass the same size"):
        export(target_files.TARGET_CONFIG, tmp_path / "m.pte", "executorch", resolution=(128, 96),
               recipe_config=RecipeConfig(resolution=(160, 128)))
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_aoti_dynamic_export_runs_any_size_and_batch(tmp_path: Path) -> None:
    # The default AOTInductor export: dynamic batch/height/width (compiles for minutes).
    path = tmp_path / "dynamic.pt2"
    export(target_files.TARGET_CONFIG, path, "aoti", overwrite=True)
    assert read_metadata(path).export["input_shape"] == ["batch", 3, "height", "width"]
    report = verify(path, VerifyConfig())  # 3 sizes, batch 2 and the real pairs at their own sizes
    assert report.passed
