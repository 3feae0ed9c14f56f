"""A TensorRT-safe refinement-region selection and the export patches that install it.

The reference :func:`model.refiner.select_refinement_regions` picks, per image, the top
``k = sample_pixels // 16`` cells of the quarter-resolution error map with
``torch.topk(k, sorted=False)``. Exported to ONNX that is one ``TopK`` with ``K = 5,000``
(HD preset) or ``20,000`` (4K preset), and TensorRT's TopK accepts ``K <= 3840`` only.

:func:`select_refinement_regions_tensorrt` selects the same cells without TopK:

1. ``k_eff = min(k, Hq*Wq)`` per image (the reference pads with error -1 so that a ``k``
   larger than the grid selects every cell; this is the same thing).
2. The k-th largest error ``t`` is found *exactly* by bisection on the IEEE-754 bit
   pattern: for non-negative float32 values the order of the bit patterns read as
   integers is the order of the values, so a bisection over every finite non-negative
   float32 ends, after 31 halvings, on the largest float ``t`` with
   ``count(err >= t) >= k_eff`` — which is the k-th largest value. The bit pattern is
   bisected in its two halves, never as one integer near 1e9 (OpenVINO's CPU plugin does
   not add/divide such int32 values exactly, and selected k±1 cells): first the biased
   exponent ``e`` (8 halvings of ``[0, 255]``), then the mantissa ``m`` within it (23
   halvings of ``[0, 2**23]``). Every number the bisection touches is an integer below
   2**24, held in float32 (exact there on every runtime, with or without integer units).
   A candidate ``(e, m)`` becomes its float with exact arithmetic
   (``2**(e-127) * (1 + m * 2**-23)``, the power of two read from a constant table), so no
   bit-cast operator is needed; each step costs one comparison and one sum over the map.
3. Every cell with ``err > t`` is selected, and among the cells with ``err == t`` the ones
   with the lowest flat (row-major) indices, as many as are still needed
   (``k_eff - count(err > t)``), found with a cumulative sum.
4. ``prevent_oversampling`` then drops cells with zero error, as in the reference.

The exported graph uses Cast, Mul/Add/Sub, Floor, Gather (from a constant), Where,
comparisons, ReduceSum, CumSum and Min: all accepted by TensorRT >= 8.5, with no TopK and
no K at all, for dynamic batch, height and width. Exactness (exactly ``k_eff`` cells) is
tested on onnxruntime and OpenVINO (f32) at the HD and 4K grids, batch 1 and 2.

Ties: ``torch.topk(sorted=False)`` chooses an implementation-defined subset among cells
whose error equals the k-th largest value; this selection always takes the lowest flat
indices among them. Both select exactly ``k_eff`` cells, the same cells strictly above the
threshold, and the same multiset of error values; the chosen *cells* can differ only among
cells tied at the threshold, so refined outputs can differ only at such cells. The
precondition is the reference's: errors are finite and ``>= 0`` (the error map is clamped
to ``[0, 1]`` and bilinearly resized).

``TENSORRT_PATCHES`` is the patch list the ONNX exporter applies when
``OnnxConfig.target == "tensorrt"``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .patcher import Patch
from .preflight import TOPK_MAX_K

# Bisection over the bit patterns of every finite non-negative float32, in two halves: the
# biased exponent in [0, 255] (255 = +inf, never a candidate), then the mantissa in
# [0, 2**23] (2**23 = the next exponent's first value, never a candidate).
_EXPONENT_HIGH = 255.0
_MANTISSA_BITS = 23
_MANTISSA_HIGH = float(1 << _MANTISSA_BITS)
# ceil(log2(255)) + 23: after these halvings each interval holds one integer.
EXPONENT_STEPS = 8
MANTISSA_STEPS = _MANTISSA_BITS
BISECTION_STEPS = EXPONENT_STEPS + MANTISSA_STEPS
# 2**(e - 127) for every biased exponent e of a finite float32 (index 0 is unused: subnormals
# are decoded as m * 2**-149). Every entry is an exact power of two in float32.
_POW2_TABLE = [0.0] + [2.0 ** (e - 127) for e in range(1, 255)]
_SUBNORMAL_UNIT = 2.0**-149
_MANTISSA_UNIT = 2.0**-_MANTISSA_BITS

TENSORRT_MAX_TOPK_K = TOPK_MAX_K  # TensorRT's TopK limit (K <= 3840), defined with the preflight


def float_from_bits(bits: Tensor) -> Tensor:
    """Exact float32 value of non-negative int32 bit patterns below ``0x7F800000``.

    Args:
        bits: integer tensor, values in ``[0, 0x7F800000)``.

    Returns:
        float32 tensor of the same shape whose IEEE-754 bit patterns are ``bits``
        (computed arithmetically: exporters and TensorRT have no bit-cast operator).
    """
    bits = bits.to(torch.int32)
    exponent = torch.div(bits, 1 << _MANTISSA_BITS, rounding_mode="trunc")
    mantissa = bits - exponent * (1 << _MANTISSA_BITS)
    return float_from_parts(exponent.to(torch.float32), mantissa.to(torch.float32))


def float_from_parts(exponent: Tensor, mantissa: Tensor) -> Tensor:
    """Exact float32 value of a biased exponent and a mantissa, both held in float32.

    Args:
        exponent: integers in ``[0, 254]``.
        mantissa: integers in ``[0, 2**23]`` (``2**23`` is the next exponent's first value).

    Returns:
        ``2**(e-127) * (1 + m * 2**-23)``, or ``m * 2**-149`` for ``e == 0`` (subnormals).
        Every operation is exact in float32: no integer arithmetic near 1e9 is involved.
    """
    table = torch.tensor(_POW2_TABLE, dtype=torch.float32, device=exponent.device)
    normal = table[exponent.long()] * (1.0 + mantissa * _MANTISSA_UNIT)
    subnormal = mantissa * _SUBNORMAL_UNIT
    return torch.where(exponent == 0, subnormal, normal)


def _bisect(values: Tensor, k: Tensor, low: Tensor, high: Tensor, steps: int, candidate: Callable[[Tensor], Tensor]) -> Tensor:
    """Largest integer ``x`` in ``[low, high)`` with ``count(values >= candidate(x)) >= k``.

    Invariant: ``count(values >= candidate(low)) >= k`` and ``count(values >= candidate(high)) < k``
    (``high`` itself is never evaluated). ``low``/``high`` are float32 integers below 2**24, so
    the midpoint ``floor((low + high) / 2)`` is exact.
    """
    for _ in range(steps):
        mid = torch.floor((low + high) * 0.5)
        count = (values >= candidate(mid)).to(torch.float32).sum(dim=1, keepdim=True)
        enough = count >= k
        low = torch.where(enough, mid, low)
        high = torch.where(enough, high, mid)
    return low


def kth_largest(values: Tensor, k: Tensor) -> Tensor:
    """Exact k-th largest value of each row, by bisection on float32 bit patterns.

    Args:
        values: ``(B, N)`` float32, finite and ``>= 0``.
        k: ``(B, 1)`` float32 holding integers, ``1 <= k <= N``.

    Returns:
        ``(B, 1)`` float32: the largest ``t`` with ``count(values >= t) >= k``.
    """
    # Counts are float32 sums (exact below 2**24 cells): TensorRT's ReduceSum and CumSum
    # accept FP32/FP16 only. The bounds come from k (Mul), not ConstantOfShape (FP32-only
    # in TensorRT's ONNX parser, and the shape would be symbolic anyway).
    zero = k * 0.0
    exponent = _bisect(values, k, zero, zero + _EXPONENT_HIGH, EXPONENT_STEPS, lambda e: float_from_parts(e, zero))
    mantissa = _bisect(
        values, k, zero, zero + _MANTISSA_HIGH, MANTISSA_STEPS, lambda m: float_from_parts(exponent, m)
    )
    return float_from_parts(exponent, mantissa)


def select_top_cells(values: Tensor, k: int) -> Tensor:
    """Marks the ``min(k, N)`` largest entries of each row (ties → lowest indices).

    Args:
        values: ``(B, N)`` float, finite and ``>= 0``.
        k: number of entries to mark per row, ``>= 1``. Counting is exact for rows of
            up to 2**24 entries (a 268-megapixel image at quarter resolution).

    Returns:
        ``(B, N)`` bool mask with exactly ``min(k, N)`` True entries per row.
    """
    values = values.to(torch.float32)
    # N comes from the (symbolic) shape, so k_eff stays correct for any exported size.
    cells = torch.ones_like(values).sum(dim=1, keepdim=True)
    k_eff = torch.clamp(cells, max=float(k))
    threshold = kth_largest(values, k_eff)
    above = values > threshold
    tied = values == threshold
    missing = k_eff - above.to(torch.float32).sum(dim=1, keepdim=True)
    # Deterministic tie-break: the first `missing` tied cells in row-major order.
    tie_rank = torch.cumsum(tied.to(torch.float32), dim=1)
    return above | (tied & (tie_rank <= missing))


def select_refinement_regions_tensorrt(
    err: Tensor, mode: str, sample_pixels: int, threshold: float, prevent_oversampling: bool
) -> Tensor:
    """Drop-in replacement for :func:`model.refiner.select_refinement_regions` without TopK.

    Args:
        err: error map at quarter resolution, ``(B, 1, Hq, Wq)``, 0..1.
        mode: ``"sampling"`` (top ``sample_pixels // 16`` cells per image) or
            ``"thresholding"`` (cells with error > ``threshold``; unchanged).
        sample_pixels: pixel budget per image in sampling mode.
        threshold: error threshold in thresholding mode.
        prevent_oversampling: in sampling mode, drop selected cells with zero error.

    Returns:
        ``(B, 1, Hq, Wq)`` mask in ``err.dtype``, 1 where a cell is refined. Identical to
        the reference except which cells are taken among cells tied at the k-th value
        (see the module docstring).
    """
    if mode != "sampling":
        return (err > threshold).to(err.dtype)
    flat = err.flatten(1)
    ref = select_top_cells(flat, sample_pixels // 16).to(err.dtype)
    if prevent_oversampling:
        ref = ref * (flat > 0).to(ref.dtype)
    return ref.view_as(err)


# -- export patches ------------------------------------------------------------------------

TENSORRT_PATCHES: tuple[Patch, ...] = (
    # Refiner.forward looks the selection up in its module's globals at call time, so
    # replacing that global (restored by the patcher) swaps the selection for the export
    # without touching model/.
    Patch(
        "module:model.refiner",
        "select_refinement_regions",
        select_refinement_regions_tensorrt,
        reason=f"TensorRT's TopK accepts K <= {TOPK_MAX_K}; sampling needs K = sample_pixels // 16 (5,000 HD, 20,000 4K)",
    ),
)
"""Rewrites the ONNX exporter applies (after ``EXPORT_PATCHES``) when ``target == "tensorrt"``."""
