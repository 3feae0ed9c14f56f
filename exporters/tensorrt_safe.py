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
   integers is the order of the values, so a bisection over the integers
   ``[0, 0x7F800000)`` (every finite non-negative float32) ends, after 31 halvings, on the
   largest float ``t`` with ``count(err >= t) >= k_eff`` — which is the k-th largest value.
   Each candidate integer is turned into its float with exact arithmetic
   (``2**(e-127) * (1 + m * 2**-23)``, the power of two read from a constant table), so no
   bit-cast operator is needed; each step costs one comparison and one sum over the map.
3. Every cell with ``err > t`` is selected, and among the cells with ``err == t`` the ones
   with the lowest flat (row-major) indices, as many as are still needed
   (``k_eff - count(err > t)``), found with a cumulative sum.
4. ``prevent_oversampling`` then drops cells with zero error, as in the reference.

The exported graph uses Cast, Mul/Add/Sub/Div, Gather (from a constant), Where,
comparisons, ReduceSum, CumSum and Min: all accepted by TensorRT >= 8.5, with no TopK and
no K at all, for dynamic batch, height and width.

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

import torch
from torch import Tensor

from .patcher import Patch
from .preflight import TOPK_MAX_K

# Bisection over the bit patterns of every finite non-negative float32: [0, +inf bits).
_BITS_HIGH = 0x7F800000
# ceil(log2(_BITS_HIGH)): after this many halvings the interval holds one integer.
BISECTION_STEPS = 31
_MANTISSA_BITS = 23
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
    mantissa = (bits - exponent * (1 << _MANTISSA_BITS)).to(torch.float32)
    table = torch.tensor(_POW2_TABLE, dtype=torch.float32, device=bits.device)
    normal = table[exponent.long()] * (1.0 + mantissa * _MANTISSA_UNIT)
    subnormal = mantissa * _SUBNORMAL_UNIT
    return torch.where(exponent == 0, subnormal, normal)


def kth_largest(values: Tensor, k: Tensor) -> Tensor:
    """Exact k-th largest value of each row, by bisection on float32 bit patterns.

    Args:
        values: ``(B, N)`` float32, finite and ``>= 0``.
        k: ``(B, 1)`` float32 holding integers, ``1 <= k <= N``.

    Returns:
        ``(B, 1)`` float32: the largest ``t`` with ``count(values >= t) >= k``.
    """
    # Counts are float32 sums (exact below 2**24 cells): TensorRT's ReduceSum and CumSum
    # accept FP32/FP16 only. Integer bit patterns come from a Cast, not ConstantOfShape
    # (FP32-only in TensorRT's ONNX parser).
    low = k.to(torch.int32) * 0
    # Invariant: count(values >= f(low)) >= k and count(values >= f(high)) < k.
    high = low + _BITS_HIGH
    for _ in range(BISECTION_STEPS):
        # low + (high - low) // 2 cannot overflow int32 (low + high can).
        mid = low + torch.div(high - low, 2, rounding_mode="trunc")
        count = (values >= float_from_bits(mid)).to(torch.float32).sum(dim=1, keepdim=True)
        enough = count >= k
        low = torch.where(enough, mid, low)
        high = torch.where(enough, high, mid)
    return float_from_bits(low)


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
