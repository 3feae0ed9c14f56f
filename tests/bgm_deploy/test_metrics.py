"""Matting metrics: zero for identical alphas, hand-computed cases, monotonic growth with
error, an independent flood-fill check of the connected components, and the input checks."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest

from bgm_deploy.metrics import (
    MattingScores,
    connectivity_error,
    gaussian_derivative_kernels,
    gradient_error,
    gradient_magnitude,
    largest_component,
    matting_scores,
    mse,
    sad,
)
from model.errors import UsageError


def _disk(size: int = 48, radius: float = 14.0, softness: float = 2.0) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    distance = np.hypot(yy - size / 2, xx - size / 2)
    return np.clip((radius - distance) / softness + 0.5, 0, 1)


def _flood_largest(region: np.ndarray) -> np.ndarray:
    """Reference: breadth-first flood fill, 4-connectivity, first largest in row-major order."""
    seen = np.zeros_like(region, dtype=bool)
    best: list[tuple[int, int]] = []
    for y, x in zip(*np.nonzero(region)):
        if seen[y, x]:
            continue
        component, queue = [], deque([(y, x)])
        seen[y, x] = True
        while queue:
            cy, cx = queue.popleft()
            component.append((cy, cx))
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < region.shape[0] and 0 <= nx < region.shape[1] and region[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(component) > len(best):
            best = component
    out = np.zeros_like(region, dtype=bool)
    for y, x in best:
        out[y, x] = True
    return out


def test_identical_alphas_score_zero() -> None:
    alpha = _disk()
    scores = matting_scores(alpha, alpha.copy())
    assert (scores.sad, scores.mse, scores.grad, scores.conn) == (0.0, 0.0, 0.0, 0.0)
    assert scores.pixels == alpha.size
    assert scores.to_dict()["schema_version"] == 1


def test_sad_and_mse_hand_computed() -> None:
    true = np.zeros((10, 10))
    pred = np.zeros((10, 10))
    pred[:2] = 0.5  # 20 pixels off by 0.5
    assert sad(pred, true) == pytest.approx(20 * 0.5 / 1000)
    assert mse(pred, true) == pytest.approx(20 * 0.25 / 100)
    mask = np.zeros((10, 10), bool)
    mask[0, :5] = True  # 5 wrong pixels
    mask[5, :5] = True  # 5 right pixels
    assert sad(pred, true, mask) == pytest.approx(5 * 0.5 / 1000)
    assert mse(pred, true, mask) == pytest.approx(5 * 0.25 / 10)
    assert matting_scores(pred, true).mse_e3 == pytest.approx(50.0)


def test_gradient_kernel_and_ramp_hand_computed() -> None:
    smooth, derivative = gaussian_derivative_kernels(1.4)
    assert len(smooth) == 9  # half-size ceil(1.4 * sqrt(-2 ln(sqrt(2 pi) 1.4 0.01))) = 4
    assert np.linalg.norm(np.outer(smooth, derivative)) == pytest.approx(1.0)
    # A ramp of slope s along x: away from the borders the response is
    # s * sum(G) * sum(-x dG(x)) with G and dG scaled to unit norm (derivative of x is 1).
    x = np.arange(-4, 5, dtype=float)
    gauss = np.exp(-(x**2) / (2 * 1.4**2))
    d_gauss = -x * gauss
    expected = 0.01 * gauss.sum() / np.linalg.norm(gauss) * (-(x * d_gauss)).sum() / np.linalg.norm(d_gauss)
    ramp = np.tile(np.arange(40) * 0.01, (30, 1))
    assert gradient_magnitude(ramp)[10:20, 10:30] == pytest.approx(expected, rel=1e-9)
    # Constant images have no gradient, whatever their level.
    assert gradient_error(np.full((20, 20), 0.2), np.full((20, 20), 0.9)) == pytest.approx(0.0, abs=1e-20)


def test_connectivity_hand_computed() -> None:
    # true = 1 1 1 0 0; pred = 1 1 .5 0 0. Up to t = 0.5 the source is pixels 0-2, from 0.6 on
    # pixels 0-1: levels = 1 1 .5 0 0. d_true at pixel 2 is 0.5 >= 0.15 -> phi_true = 0.5;
    # d_pred there is 0 -> phi_pred = 1; elsewhere both phi are 1. Conn = 0.5 / 1000.
    true = np.array([[1.0, 1.0, 1.0, 0.0, 0.0]])
    pred = np.array([[1.0, 1.0, 0.5, 0.0, 0.0]])
    assert connectivity_error(pred, true) == pytest.approx(0.5 / 1000)


def test_connectivity_level_map_is_shared() -> None:
    # As in the Deep Image Matting evaluation code, the levels come from the intersection
    # of both thresholded alphas, so both alphas share them. pred cuts a column out of a solid
    # block: the cut pixels (pred 0, true 1, level 0) have phi_pred = 1 and phi_true = 0; the
    # piece beyond the cut is detached for both alphas alike (level 0, phi 0 in both): no cost.
    true = np.zeros((12, 20))
    true[2:10, 2:18] = 1.0
    for cut in (14, 12):
        pred = true.copy()
        pred[:, cut] = 0.0
        assert connectivity_error(pred, true) == pytest.approx(8 / 1000)
    # A half-transparent detached piece: level 0, phi_pred = 1 - 0.5, phi_true = 1 - 1.
    pred = true.copy()
    pred[:, 14] = 0.0
    pred[2:10, 15:18] = 0.5
    assert connectivity_error(pred, true) == pytest.approx((8 + 24 * 0.5) / 1000)


@pytest.mark.parametrize("seed", range(6))
def test_largest_component_matches_flood_fill(seed: int) -> None:
    rng = np.random.default_rng(seed)
    region = rng.random((37, 53)) < (0.45 + 0.05 * seed)
    np.testing.assert_array_equal(largest_component(region), _flood_largest(region))


def test_largest_component_shapes() -> None:
    assert not largest_component(np.zeros((4, 5), bool)).any()
    spiral = np.zeros((9, 9), bool)  # one long snake: joins need many union rounds
    spiral[0, :] = spiral[:, 8] = spiral[8, :] = spiral[2:, 0] = spiral[2, :7] = spiral[2:7, 6] = spiral[6, 2:7] = True
    spiral[4, 3] = True  # a separate dot
    expected = spiral.copy()
    expected[4, 3] = False
    np.testing.assert_array_equal(largest_component(spiral), expected)


def test_metrics_grow_with_the_error() -> None:
    true = _disk()
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(true.shape)
    previous = None
    for amount in (0.02, 0.05, 0.1, 0.2):
        scores = matting_scores(np.clip(true + amount * noise, 0, 1), true)
        if previous is not None:
            assert scores.sad > previous.sad and scores.mse > previous.mse and scores.grad > previous.grad
        previous = scores
    conn = [connectivity_error(np.where(np.arange(48) >= cut, 0.0, true), true) for cut in (40, 34, 28, 25)]
    assert conn == sorted(conn) and conn[0] < conn[-1]


def test_mask_limits_every_metric() -> None:
    true = _disk()
    pred = true.copy()
    pred[:, :10] = 1.0 - pred[:, :10]  # errors only in the left columns
    mask = np.zeros(true.shape, bool)
    mask[:, 24:] = True
    scores = matting_scores(pred, true, mask)
    assert (scores.sad, scores.mse, scores.conn) == (0.0, 0.0, 0.0) and scores.pixels == mask.sum()
    assert matting_scores(pred, true).sad > 0


def test_accepts_float32_and_singleton_channel() -> None:
    true = _disk().astype(np.float32)
    pred = np.clip(true + 0.1, 0, 1).astype(np.float32)
    reference = matting_scores(pred.astype(np.float64), true.astype(np.float64))
    assert matting_scores(pred[None], true[..., None]).sad == pytest.approx(reference.sad)
    assert isinstance(reference, MattingScores)


@pytest.mark.parametrize(
    "pred,true,mask,message",
    [
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4)), None, r"pred must be a float array .*uint8.*divide an 8-bit alpha by 255"),
        (np.zeros((4, 4)), np.full((4, 4), 2.0), None, r"true must have values in 0\.\.1, got 2\.\.2"),
        (np.zeros((4, 4)), np.zeros((4, 5)), None, r"same shape, got \(4, 4\) and \(4, 5\)"),
        (np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), None, r"pred must be a 2-D alpha .*got shape \(2, 4, 4\)"),
        ([[0.0]], np.zeros((1, 1)), None, r"pred must be a numpy array, got list"),
        (np.full((2, 2), np.nan), np.zeros((2, 2)), None, r"pred contains NaN"),
        (np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 4), bool), r"mask selects no pixel"),
        (np.zeros((4, 4)), np.zeros((4, 4)), np.ones((3, 3), bool), r"mask must have the alphas' shape \(4, 4\), got \(3, 3\)"),
        (np.zeros((4, 4)), np.zeros((4, 4)), np.full((4, 4), 0.5), r"mask must be boolean"),
        (np.zeros((0, 4)), np.zeros((0, 4)), None, r"pred is empty"),
    ],
)
def test_bad_inputs_raise_usage_errors(pred: object, true: object, mask: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        matting_scores(pred, true, mask)  # type: ignore[arg-type]


def test_bad_parameters() -> None:
    alpha = _disk()
    with pytest.raises(UsageError, match="step must be in"):
        connectivity_error(alpha, alpha, step=0.0)
    with pytest.raises(UsageError, match="sigma must be positive"):
        gradient_error(alpha, alpha, sigma=-1.0)
    assert math.isfinite(connectivity_error(alpha, alpha, step=0.3))
