"""Homographic alignment of a background photo to its source (hand-held shots).

As in the original project: ORB features on both images, matched by Hamming distance, a
RANSAC homography from background to source, and the background warped into the source's
frame; pixels the warped background does not cover are copied from the source (so they
look like background to the model). Unlike the original, the fit is checked and rejected
when it is unreliable (too few inliers, a low inlier ratio, or a degenerate warp) instead of
being applied blindly. OpenCV is an optional extra: ``pip install "bgm-deploy[align]"``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from model.errors import RuntimeUnavailableError

INSTALL_HINT = 'pip install "bgm-deploy[align]"'


def import_cv2() -> Any:
    """OpenCV, or a :class:`RuntimeUnavailableError` saying how to install it."""
    try:
        import cv2
    except ImportError:
        raise RuntimeUnavailableError(f"--align needs OpenCV, which is not installed: {INSTALL_HINT}") from None
    return cv2


@dataclass(frozen=True)
class AlignConfig:
    """Feature matching and acceptance thresholds.

    Attributes:
        features: ORB keypoints per image.
        ratio: Lowe's ratio test threshold on the two nearest matches.
        ransac_threshold: max reprojection error (pixels at working scale) for an inlier.
        min_inliers: fewer RANSAC inliers than this → rejected.
        min_inlier_ratio: inliers / good matches below this → rejected.
        max_shift: a corner moving more than this fraction of the image diagonal → rejected
            (a hand-held re-shot moves a little; a big warp means a wrong fit).
        max_side: images are matched at a size whose longer side is at most this (speed).
    """

    features: int = 5000
    ratio: float = 0.75
    ransac_threshold: float = 3.0
    min_inliers: int = 30
    min_inlier_ratio: float = 0.2
    max_shift: float = 0.2
    max_side: int = 1280


@dataclass
class AlignResult:
    """What alignment did for one pair (goes into matte's per-pair report)."""

    applied: bool
    reason: str
    keypoints: tuple[int, int] = (0, 0)
    matches: int = 0
    inliers: int = 0
    homography: list[list[float]] | None = field(default=None)
    status: str = "rejected"  # "applied", "not_needed" (already aligned) or "rejected"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return f"align {self.status.replace('_', ' ')}: {self.inliers} inliers of {self.matches} matches ({self.reason})"


def align_background(
    src: np.ndarray, bgr: np.ndarray, config: AlignConfig | None = None
) -> tuple[np.ndarray, AlignResult]:
    """Warps ``bgr`` onto ``src``.

    Args:
        src: ``(H, W, 3)`` uint8 RGB source.
        bgr: ``(h, w, 3)`` uint8 RGB background (its size may differ from src's).

    Returns:
        The aligned background ``(H, W, 3)`` uint8 (``bgr`` unchanged when rejected) and
        what happened.

    Raises:
        RuntimeUnavailableError: OpenCV is not installed.
    """
    cv2 = import_cv2()
    config = config or AlignConfig()
    height, width = src.shape[:2]
    scale_src = min(1.0, config.max_side / max(height, width))
    scale_bgr = min(1.0, config.max_side / max(bgr.shape[:2]))
    gray_src = _gray(cv2, src, scale_src)
    gray_bgr = _gray(cv2, bgr, scale_bgr)
    orb = cv2.ORB_create(nfeatures=config.features)
    kp_src, des_src = orb.detectAndCompute(gray_src, None)
    kp_bgr, des_bgr = orb.detectAndCompute(gray_bgr, None)
    counts = (len(kp_src), len(kp_bgr))
    if des_src is None or des_bgr is None or min(counts) < 4:
        return bgr, AlignResult(False, "too few features (textureless images?)", counts)
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    good = [
        pair[0]
        for pair in matcher.knnMatch(des_bgr, des_src, k=2)
        if len(pair) == 2 and pair[0].distance < config.ratio * pair[1].distance
    ]
    if len(good) < max(4, config.min_inliers):
        return bgr, AlignResult(False, f"only {len(good)} good matches (need {config.min_inliers})", counts, len(good))
    points_bgr = np.float32([kp_bgr[m.queryIdx].pt for m in good]) / scale_bgr
    points_src = np.float32([kp_src[m.trainIdx].pt for m in good]) / scale_src
    # RANSAC in full-resolution pixels; the threshold is given at working scale.
    homography, mask = cv2.findHomography(points_bgr, points_src, cv2.RANSAC, config.ransac_threshold / scale_src)
    inliers = int(mask.sum()) if mask is not None else 0
    result = AlignResult(False, "", counts, len(good), inliers)
    if homography is None:
        result.reason = "no homography found"
        return bgr, result
    result.homography = homography.tolist()
    if _max_corner_shift(homography, (bgr.shape[1], bgr.shape[0]), (width, height)) < 0.5 and bgr.shape == src.shape:
        # Warping an already aligned background would only blur it.
        result.reason = "already aligned (corners move less than half a pixel)"
        result.status = "not_needed"
        return bgr, result
    problem = _check(homography, inliers, len(good), (bgr.shape[1], bgr.shape[0]), (width, height), config)
    if problem:
        result.reason = problem
        return bgr, result
    warped, uncovered = warp_background(src, bgr, homography)
    result.applied = True
    result.status = "applied"
    result.reason = f"inlier ratio {inliers / len(good):.2f}, {uncovered * 100:.1f}% of pixels uncovered"
    return warped, result


def warp_background(src: np.ndarray, bgr: np.ndarray, homography: np.ndarray) -> tuple[np.ndarray, float]:
    """``bgr`` warped into ``src``'s frame by ``homography`` (background to source), pixels it
    does not cover copied from ``src``; and the uncovered fraction.

    Raises:
        RuntimeUnavailableError: OpenCV is not installed.
    """
    cv2 = import_cv2()
    height, width = src.shape[:2]
    warped = cv2.warpPerspective(bgr, homography, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    coverage = cv2.warpPerspective(
        np.ones(bgr.shape[:2], np.uint8), homography, (width, height), flags=cv2.INTER_NEAREST, borderValue=0
    )
    uncovered = coverage == 0
    warped[uncovered] = src[uncovered]
    return warped, float(uncovered.mean())


def _gray(cv2: Any, image: np.ndarray, scale: float) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return gray


def _check(
    homography: np.ndarray,
    inliers: int,
    matches: int,
    bgr_size: tuple[int, int],
    src_size: tuple[int, int],
    config: AlignConfig,
) -> str:
    """Why a fitted homography is not trustworthy ('' when it is)."""
    if inliers < config.min_inliers:
        return f"only {inliers} RANSAC inliers (need {config.min_inliers})"
    if inliers / matches < config.min_inlier_ratio:
        return f"inlier ratio {inliers / matches:.2f} below {config.min_inlier_ratio}"
    if abs(float(np.linalg.det(homography[:2, :2]))) < 1e-6:
        return "degenerate homography"
    shift = _max_corner_shift(homography, bgr_size, src_size) / float(np.hypot(*src_size))
    if not np.isfinite(shift):
        return "homography flips the image (a corner maps behind the camera)"
    if shift > config.max_shift:
        return f"corners move {shift * 100:.0f}% of the diagonal (max {config.max_shift * 100:.0f}%)"
    return ""


def _max_corner_shift(homography: np.ndarray, bgr_size: tuple[int, int], src_size: tuple[int, int]) -> float:
    """Largest distance (pixels) between a mapped background corner and the source corner."""
    w, h = bgr_size
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], dtype=np.float64).T
    mapped = homography @ corners
    if np.any(mapped[2] <= 0):
        return float("inf")
    sw, sh = src_size
    target = np.array([[0, sw, sw, 0], [0, 0, sh, sh]], dtype=np.float64)
    return float(np.max(np.linalg.norm(mapped[:2] / mapped[2] - target, axis=0)))
