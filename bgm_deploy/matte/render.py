"""Turning a prediction into output images: one meaning per output kind for every source."""

from __future__ import annotations

import numpy as np

from ..images import to_uint8
from ..predictor import Prediction


def parse_colour(text: str) -> tuple[int, int, int] | None:
    """``R,G,B`` or ``#rrggbb`` as a tuple, or None when ``text`` is neither (a file then)."""
    value = text.strip()
    if value.startswith("#") and len(value) == 7:
        try:
            return tuple(int(value[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        except ValueError:
            return None
    parts = value.split(",")
    if len(parts) == 3 and all(part.strip().isdigit() and int(part) <= 255 for part in parts):
        return tuple(int(part) for part in parts)  # type: ignore[return-value]
    return None


def render_output(kind: str, prediction: Prediction, row: int, backdrop: np.ndarray | None) -> np.ndarray:
    """Output ``kind`` of item ``row`` of a batched prediction, as a uint8 image.

    Args:
        kind: ``pha``, ``fgr``, ``err``, ``ref`` (the maps), ``rgba`` (foreground with alpha,
            colour zeroed where alpha is 0) or ``com`` (foreground over ``backdrop``).
        prediction: a batched prediction (leading batch axis).
        row: which item of the batch.
        backdrop: ``(H, W, 3)`` uint8, for ``com``.
    """
    if kind in ("pha", "fgr", "err", "ref"):
        return to_uint8(getattr(prediction, kind)[row])
    pha, fgr = prediction.pha[row][..., None], prediction.fgr[row]
    if kind == "rgba":
        return np.concatenate([to_uint8(fgr * (pha > 0)), to_uint8(pha)], axis=-1)
    if backdrop is None:
        raise ValueError("com needs a backdrop")
    under = backdrop.astype(np.float32) / np.float32(255)
    return to_uint8(fgr * pha + under * (1 - pha))
