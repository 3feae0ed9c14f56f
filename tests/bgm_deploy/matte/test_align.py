"""Homographic background alignment on the real pair shot with a shifted camera."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("cv2", reason='alignment needs OpenCV: pip install "bgm-deploy[align]"')

from bgm_deploy.matte.align import AlignConfig, align_background  # noqa: E402
from bgm_deploy.images import load_image  # noqa: E402

SHIFTED, ALIGNED = "astronaut_rocket_1920x1080_shifted", "astronaut_coffee_640x480"


def _background_residual(src: np.ndarray, bgr: np.ndarray, alpha: np.ndarray) -> float:
    """Mean |src - bgr| where the ground truth says there is only background (alpha < 0.01)."""
    mask = alpha < 0.01
    return float(np.abs(src.astype(np.float32) - bgr.astype(np.float32))[mask].mean())


def _alpha(pair_dir: Path) -> np.ndarray:
    return load_image(pair_dir / "alpha.png")[..., 0].astype(np.float32) / 255


def test_alignment_reduces_the_background_residual(pairs_dir: Path) -> None:
    pair = pairs_dir / SHIFTED
    src, bgr, alpha = load_image(pair / "src.jpg"), load_image(pair / "bgr.jpg"), _alpha(pair)
    aligned, result = align_background(src, bgr)
    before, after = _background_residual(src, bgr, alpha), _background_residual(src, aligned, alpha)
    assert result.applied and result.status == "applied" and result.inliers >= 100
    assert aligned.shape == src.shape
    # Measured: 8.8 -> 1.3 (8-bit levels); JPEG noise keeps it above zero.
    assert after < 0.3 * before, (before, after)


def test_aligned_pair_is_left_alone_and_nonsense_is_rejected(pairs_dir: Path) -> None:
    pair = pairs_dir / ALIGNED
    src, bgr = load_image(pair / "src.jpg"), load_image(pair / "bgr.jpg")
    same, result = align_background(src, bgr)
    assert result.status == "not_needed" and same is bgr
    noise = np.random.default_rng(0).integers(0, 256, src.shape, dtype=np.uint8)
    kept, result = align_background(src, noise)
    assert result.status == "rejected" and not result.applied and kept is noise
    shifted = pairs_dir / SHIFTED
    src, bgr = load_image(shifted / "src.jpg"), load_image(shifted / "bgr.jpg")
    kept, result = align_background(src, bgr, AlignConfig(min_inlier_ratio=0.99))  # measured ratio: 0.90
    assert result.status == "rejected" and "inlier ratio" in result.reason and kept is bgr


def test_matte_align_reports_per_pair(tmp_path: Path, pairs_dir: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "runtimes"))
    import model_files

    from bgm_deploy.cli import cli

    model = model_files.model_file("onnx", tmp_path.parent.parent / "bgm_models")
    pair = pairs_dir / SHIFTED
    report = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["matte", "--src", str(pair / "src.jpg"), "--bgr", str(pair / "bgr.jpg"), "-o",
                                      str(tmp_path / "out"), "--model", str(model), "--align", "--resize", "960x540",
                                      "--outputs", "pha", "--report", str(report)])
    assert result.exit_code == 0, result.output
    align = json.loads(report.read_text())["items"][0]["align"]
    assert align["status"] == "applied" and align["inliers"] >= 100 and len(align["homography"]) == 3
    assert "align applied" in result.output
