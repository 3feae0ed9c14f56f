"""``bgm-deploy evaluate`` and ``samples``: quality against ground truth, per image and mean."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtimes"))
import model_files  # noqa: E402

from bgm_deploy.cli import cli  # noqa: E402
from bgm_deploy.evaluate import EvaluateConfig, evaluate, write_samples  # noqa: E402
from bgm_deploy.images import load_image  # noqa: E402
from bgm_deploy.predictor import Prediction  # noqa: E402
from model.errors import UsageError  # noqa: E402


class Oracle:
    """A 'model' that knows the answer (or a shifted one): the metrics must see it."""

    def __init__(self, truths: dict[tuple[int, int], list[np.ndarray]], offset: float = 0.0) -> None:
        self.truths, self.offset = truths, offset

    def predict(self, src: np.ndarray, bgr: np.ndarray, outputs: Any) -> Prediction:
        truth = self.truths[src.shape[:2]].pop(0)
        return Prediction(pha=np.clip(truth + self.offset, 0, 1))

    def describe(self) -> dict[str, Any]:
        return {"source": "oracle", "target": "none", "weights": "none"}


def _truths(root: Path) -> dict[tuple[int, int], list[np.ndarray]]:
    truths: dict[tuple[int, int], list[np.ndarray]] = {}
    for path in sorted(root.glob("*/alpha.png")):
        alpha = load_image(path)[..., 0].astype(np.float32) / 255
        truths.setdefault(alpha.shape, []).append(alpha)
    return truths


def test_perfect_and_worse_predictions_score_as_they_should(pairs_dir: Path) -> None:
    perfect = evaluate(Oracle(_truths(pairs_dir)))
    assert len(perfect.items) == 3 and all(item.sad == item.mse == item.grad == item.conn == 0 for item in perfect.items)
    worse = evaluate(Oracle(_truths(pairs_dir), offset=0.2))
    assert all(item.mse > 0.001 and item.sad > 0 for item in worse.items)
    assert worse.mean["mse"] == pytest.approx(np.mean([item.mse for item in worse.items]))


def test_samples_then_evaluate_through_the_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["samples", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "s" / "alpha").iterdir()) == [
        "astronaut_coffee_640x480.png", "astronaut_rocket_1920x1080_shifted.png", "cat_rocket_1001x667.png"]
    again = runner.invoke(cli, ["samples", str(tmp_path / "s")])
    assert again.exit_code == 2 and "--overwrite" in again.output
    onnx = model_files.model_file("onnx", tmp_path.parent / "bgm_models")
    report = tmp_path / "scores.json"
    result = runner.invoke(cli, ["evaluate", "--model", str(onnx), "--src", str(tmp_path / "s" / "src"), "--bgr",
                                 str(tmp_path / "s" / "bgr"), "--alpha", str(tmp_path / "s" / "alpha"), "--json",
                                 str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["schema_version"] == 1 and len(data["items"]) == 3 and set(data["mean"]) == {"sad", "mse", "grad", "conn"}
    assert data["model"]["target"] == "onnxruntime-cpu" and "mean" in result.output
    missing = runner.invoke(cli, ["evaluate", "--model", str(onnx), "--src", str(tmp_path / "s" / "src")])
    assert missing.exit_code == 2 and "go together; missing --alpha, --bgr" in missing.output


def test_footage_with_per_frame_alpha(tmp_path: Path) -> None:
    pytest.importorskip("av")
    from benchmarks.make_video_clips import ClipSpec, make_clip

    clip, alphas, plate = make_clip(tmp_path / "clip.mp4", spec=ClipSpec(size=(160, 120), frames=4, crf=0))
    Image.fromarray(plate).save(tmp_path / "plate.png")
    (tmp_path / "alpha").mkdir()
    for index, alpha in enumerate(alphas):
        Image.fromarray((np.clip(alpha, 0, 1) * 255).round().astype(np.uint8)).save(tmp_path / "alpha" / f"{index:04d}.png")
    frames = [load_image(p)[..., 0].astype(np.float32) / 255 for p in sorted((tmp_path / "alpha").iterdir())]
    report = evaluate(Oracle({(120, 160): list(frames)}), EvaluateConfig(src=clip, bgr=tmp_path / "plate.png", alpha=tmp_path / "alpha"))
    assert [item.name for item in report.items] == [f"frame {i:06d}" for i in range(4)]
    assert all(item.mse == 0 for item in report.items)
    with pytest.raises(UsageError, match="fewer frames"):
        short = tmp_path / "short"
        short.mkdir()
        (tmp_path / "alpha" / "0000.png").rename(short / "0000.png")
        evaluate(Oracle({(120, 160): frames * 2}), EvaluateConfig(src=clip, bgr=tmp_path / "plate.png",
                                                                              alpha=short))


def test_write_samples_refuses_to_replace(tmp_path: Path) -> None:
    written = write_samples(tmp_path)
    assert len(written) == 9
    with pytest.raises(UsageError, match="already exists"):
        write_samples(tmp_path)
    assert len(write_samples(tmp_path, overwrite=True)) == 9


def test_evaluate_reproduces_the_committed_demo_weights_scores(tmp_path: Path) -> None:
    """`bgm-deploy evaluate` with no model scores the demo weights on the bundled pairs: the
    numbers committed in benchmarks/results/demo_weights_quality.json (and quoted in the README
    and model/weights/README.md), from the same metrics at the same settings."""
    committed = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "results"
                            / "demo_weights_quality.json").read_text())
    report = tmp_path / "scores.json"
    result = CliRunner().invoke(cli, ["evaluate", "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert "demo weights" in result.output
    data = json.loads(report.read_text())
    for metric, value in committed["mean_as_given"].items():
        assert data["mean"][metric] == pytest.approx(value, rel=1e-3, abs=1e-4), metric
    assert data["mean"]["mse"] <= 0.01  # the goal the demo weights were trained for
