"""Matting quality metrics as reported in the matting literature and the BGMv2 paper.

All four compare a predicted alpha with the ground truth, both 2-D float arrays with values in
0..1 (divide 8-bit alphas by 255 first), optionally only on a ``mask`` of the evaluated region
(the "unknown" region of a trimap in Deep Image Matting's evaluation; the whole image if
``mask`` is None). Units follow the papers' tables:

- **SAD**: sum of absolute differences, divided by 1000.
- **MSE**: mean squared difference over the evaluated pixels, as is (tables often show it x1e3:
  :attr:`MattingScores.mse_e3`).
- **Grad**: sum over the evaluated pixels of the squared difference of the alphas' gradient
  magnitudes, divided by 1000. Gradients are Gaussian first derivatives with sigma 1.4: a
  separable kernel G(y) * dG(x) truncated where the Gaussian falls below 1% of its peak
  density (half-size ``ceil(sigma * sqrt(-2 ln(sqrt(2 pi) sigma 0.01)))`` = 4 for 1.4), scaled
  to unit L2 norm, applied with replicated borders (as the Deep Image Matting evaluation code).
- **Conn**: connectivity error of Rhemann et al. (CVPR 2009), divided by 1000. For thresholds
  t = step, 2 step, ..., 1 the source region is the largest 4-connected component of
  ``(pred >= t) & (true >= t)``; each pixel's level l is the last threshold before the first one
  at which it falls outside the source region (0 if already at t = step, 1 if never);
  ``phi = 1 - d * [d >= 0.15]`` with ``d = alpha - l``, and Conn = sum |phi_pred - phi_true|.
  As in the Deep Image Matting evaluation code, the source regions come from the intersection
  of both thresholded alphas, so one level map serves both.

Pure numpy (no torch, no scipy): the connected components are found from the runs of each
row, joined across rows by a vectorised union-find.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from model.errors import UsageError

METRICS_SCHEMA_VERSION = 1
GRAD_SIGMA = 1.4
CONN_STEP = 0.1
CONN_THETA = 0.15
_RANGE_TOLERANCE = 1e-6  # float32 rounding of values computed as 0..1


@dataclass(frozen=True)
class MattingScores:
    """The four metrics of one alpha, in the units of the papers' tables (see module docstring)."""

    sad: float
    mse: float
    grad: float
    conn: float
    pixels: int  # evaluated pixels (the mask's size)
    schema_version: int = METRICS_SCHEMA_VERSION

    @property
    def mse_e3(self) -> float:
        """MSE x 1000, as many tables print it."""
        return self.mse * 1e3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _alpha(name: str, value: Any) -> np.ndarray:
    """``value`` as a float64 2-D array in 0..1, or a :class:`UsageError` naming ``name``."""
    if not isinstance(value, np.ndarray):
        raise UsageError(f"{name} must be a numpy array, got {type(value).__name__}")
    if value.ndim == 3 and 1 in (value.shape[0], value.shape[2]):
        value = value.reshape(value.shape[1:] if value.shape[0] == 1 else value.shape[:2])
    if value.ndim != 2:
        raise UsageError(f"{name} must be a 2-D alpha (H, W) (or (1, H, W) / (H, W, 1)), got shape {value.shape}")
    if value.size == 0:
        raise UsageError(f"{name} is empty (shape {value.shape}); an alpha needs at least one pixel")
    if not np.issubdtype(value.dtype, np.floating):
        raise UsageError(
            f"{name} must be a float array with values in 0..1, got dtype {value.dtype} "
            "(divide an 8-bit alpha by 255 first)"
        )
    value = value.astype(np.float64)
    if not np.isfinite(value).all():
        raise UsageError(f"{name} contains NaN or infinite values")
    low, high = float(value.min()), float(value.max())
    if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        raise UsageError(f"{name} must have values in 0..1, got {low:.4g}..{high:.4g}")
    return np.clip(value, 0.0, 1.0)


def _inputs(pred: Any, true: Any, mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked ``(pred, true, mask)``; ``mask`` defaults to every pixel."""
    pred, true = _alpha("pred", pred), _alpha("true", true)
    if pred.shape != true.shape:
        raise UsageError(f"pred and true must have the same shape, got {pred.shape} and {true.shape}")
    if mask is None:
        return pred, true, np.ones(pred.shape, bool)
    if not isinstance(mask, np.ndarray):
        raise UsageError(f"mask must be a numpy array or None, got {type(mask).__name__}")
    if mask.shape != pred.shape:
        raise UsageError(f"mask must have the alphas' shape {pred.shape}, got {mask.shape}")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise UsageError(f"mask must be boolean (or 0/1), got dtype {mask.dtype} with other values")
        mask = mask.astype(bool)
    if not mask.any():
        raise UsageError("mask selects no pixel; pass None to evaluate the whole image")
    return pred, true, mask


def sad(pred: np.ndarray, true: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Sum of absolute differences over the evaluated pixels, / 1000."""
    pred, true, mask = _inputs(pred, true, mask)
    return float(np.abs(pred - true)[mask].sum() / 1000)


def mse(pred: np.ndarray, true: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared difference over the evaluated pixels (not scaled)."""
    pred, true, mask = _inputs(pred, true, mask)
    return float(((pred - true) ** 2)[mask].mean())


def gaussian_derivative_kernels(sigma: float = GRAD_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """The 1-D factors ``(smooth, derivative)`` of the unit-L2-norm 2-D kernel G(y) dG(x)."""
    if not sigma > 0:
        raise UsageError(f"sigma must be positive, got {sigma}")
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * 0.01)))
    x = np.arange(-half, half + 1, dtype=np.float64)
    gauss = np.exp(-(x**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    derivative = -x * gauss / sigma**2
    # The outer product's Frobenius norm is the product of the factors' norms.
    return gauss / np.linalg.norm(gauss), derivative / np.linalg.norm(derivative)


def _filter_1d(image: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """Convolution along ``axis`` with replicated borders, same size as ``image``."""
    half = len(kernel) // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (half, half)
    padded = np.pad(image, pad, mode="edge")
    out = np.zeros_like(image)
    length = image.shape[axis]
    for i, weight in enumerate(kernel[::-1]):  # flipped: a convolution, not a correlation
        out += weight * np.take(padded, np.arange(i, i + length), axis=axis)
    return out


def gradient_magnitude(alpha: np.ndarray, sigma: float = GRAD_SIGMA) -> np.ndarray:
    """Gaussian-derivative gradient magnitude of a 2-D array (see the module docstring)."""
    smooth, derivative = gaussian_derivative_kernels(sigma)
    gx = _filter_1d(_filter_1d(alpha, derivative, axis=1), smooth, axis=0)
    gy = _filter_1d(_filter_1d(alpha, derivative, axis=0), smooth, axis=1)
    return np.sqrt(gx**2 + gy**2)


def gradient_error(pred: np.ndarray, true: np.ndarray, mask: np.ndarray | None = None, sigma: float = GRAD_SIGMA) -> float:
    """Sum of squared gradient-magnitude differences over the evaluated pixels, / 1000."""
    pred, true, mask = _inputs(pred, true, mask)
    difference = gradient_magnitude(pred, sigma) - gradient_magnitude(true, sigma)
    return float((difference**2)[mask].sum() / 1000)


def largest_component(region: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean 2-D array (ties: the first in row-major
    order); all False if ``region`` is empty."""
    height, width = region.shape
    if not region.any():
        return np.zeros_like(region, dtype=bool)
    edges = np.diff(np.pad(region, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    rows, starts = np.nonzero(edges == 1)  # row-major order, so starts and ends pair up
    _, ends = np.nonzero(edges == -1)  # exclusive
    stride = width + 2
    start_keys = rows * stride + starts
    end_keys = rows * stride + ends
    # Runs of row r+1 touching run a of row r (4-connectivity: overlapping columns) form a
    # contiguous range of run indices: from the first whose end lies past a's start to the
    # last whose start lies before a's end.
    below = rows + 1
    first = np.searchsorted(end_keys, below * stride + starts, side="right")
    last = np.searchsorted(start_keys, below * stride + ends, side="left")
    counts = np.maximum(last - first, 0)
    a = np.repeat(np.arange(len(rows)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    b = np.repeat(first, counts) + offsets
    parent = np.arange(len(rows))
    while True:
        root_a, root_b = parent[a], parent[b]
        differ = root_a != root_b
        if not differ.any():
            break
        # Hook each larger root under the smallest root it meets; roots only point to smaller
        # indices, so no cycle can form, and every round merges at least one pair.
        np.minimum.at(parent, np.maximum(root_a, root_b)[differ], np.minimum(root_a, root_b)[differ])
        while True:  # path compression until every run points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    sizes = np.bincount(parent, weights=ends - starts, minlength=len(rows))
    keep = parent == int(np.argmax(sizes))
    marks = np.zeros((height, width + 1), np.int32)
    np.add.at(marks, (rows[keep], starts[keep]), 1)
    np.add.at(marks, (rows[keep], ends[keep]), -1)
    return np.cumsum(marks, axis=1)[:, :width] > 0


def connectivity_levels(pred: np.ndarray, true: np.ndarray, step: float = CONN_STEP) -> np.ndarray:
    """Per pixel, the last threshold at which it still belongs to the source region."""
    if not 0 < step <= 1:
        raise UsageError(f"step must be in (0, 1], got {step}")
    thresholds = [round(k * step, 12) for k in range(1, math.floor(1 / step + 1e-9) + 1)]
    levels = np.full(pred.shape, -1.0)
    previous = 0.0
    for threshold in thresholds:
        source = largest_component((pred >= threshold) & (true >= threshold))
        levels[(levels < 0) & ~source] = previous
        previous = threshold
    levels[levels < 0] = 1.0
    return levels


def connectivity_error(
    pred: np.ndarray, true: np.ndarray, mask: np.ndarray | None = None, step: float = CONN_STEP, theta: float = CONN_THETA
) -> float:
    """Connectivity error (Rhemann et al. 2009) over the evaluated pixels, / 1000."""
    pred, true, mask = _inputs(pred, true, mask)
    levels = connectivity_levels(pred, true, step)
    d_pred, d_true = pred - levels, true - levels
    phi_pred = 1 - d_pred * (d_pred >= theta)
    phi_true = 1 - d_true * (d_true >= theta)
    return float(np.abs(phi_pred - phi_true)[mask].sum() / 1000)


def matting_scores(pred: np.ndarray, true: np.ndarray, mask: np.ndarray | None = None) -> MattingScores:
    """SAD, MSE, Grad and Conn of one predicted alpha against its ground truth."""
    pred, true, mask = _inputs(pred, true, mask)
    return MattingScores(
        sad=sad(pred, true, mask),
        mse=mse(pred, true, mask),
        grad=gradient_error(pred, true, mask),
        conn=connectivity_error(pred, true, mask),
        pixels=int(mask.sum()),
    )
