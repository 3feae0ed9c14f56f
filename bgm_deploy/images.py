"""Image decoding and encoding for the predictor and ``matte``.

Decoding respects EXIF orientation and converts every mode (grayscale, palette, CMYK,
16-bit, alpha) to 8-bit RGB; encoding writes atomically (a temporary file in the target
directory, then ``os.replace``) so that an interrupted run never leaves a truncated image
that ``--skip-existing`` would take for a finished one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from exporters.atomic import atomic_open, atomic_write_text  # noqa: F401 - re-exported for callers
from model.errors import ImageError

# The real photo pairs shipped with the package (src, bgr, ground-truth alpha per folder).
BUNDLED_PAIRS_DIR = Path(__file__).resolve().parent / "data" / "pairs"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# PIL's decompression-bomb limit (~89 MP) is lower than a 12K frame; keep a sane cap.
Image.MAX_IMAGE_PIXELS = 200_000_000


def pil_to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as RGB: alpha is dropped (not composited), CMYK/palette/16-bit converted."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bit instead of clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        gray = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if image.mode == "F":
        gray = np.clip(np.asarray(image, dtype=np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if image.mode in ("P", "PA", "LA", "RGBA", "La", "RGBa"):
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_image(path: str | Path) -> np.ndarray:
    """Reads an image file as ``(H, W, 3)`` uint8 RGB, upright per its EXIF orientation.

    Raises:
        ImageError: the file is missing, not an image, truncated or corrupt.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return np.asarray(pil_to_rgb(image), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (OSError, ValueError, SyntaxError) as exc:  # PIL reports truncation as OSError, bad headers as SyntaxError
        raise ImageError(f"{path}: cannot decode image ({exc})") from None


def resize_rgb(image: np.ndarray, size: tuple[int, int], resample: str = "lanczos") -> np.ndarray:
    """Resizes ``(H, W, 3)`` uint8 to ``size = (width, height)`` with ``lanczos`` (default) or
    ``bilinear`` filtering."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    method = {"lanczos": Image.Resampling.LANCZOS, "bilinear": Image.Resampling.BILINEAR}[resample]
    return np.asarray(Image.fromarray(image).resize(size, method))


def to_uint8(values: np.ndarray) -> np.ndarray:
    """0..1 floats to uint8 with rounding (not truncation)."""
    # In place on one temporary (same result as clip(rint(x * 255))): video frames go through
    # here for every output, and each extra full-frame temporary costs milliseconds at HD.
    scaled = np.multiply(np.asarray(values, dtype=np.float32), np.float32(255.0))
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def save_image(path: str | Path, array: np.ndarray, quality: int = 95, compress_level: int = 6) -> None:
    """Writes uint8 ``(H, W)`` (gray), ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA) atomically.

    The format follows the suffix (``.png``, ``.jpg``/``.jpeg``, ...); JPEG cannot hold alpha.

    Raises:
        ImageError: the array has an unsupported shape/dtype, or the file cannot be written.
    """
    path = Path(path)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"{path}: cannot save array of shape {array.shape} and dtype {array.dtype}; "
                         "expected uint8 (H, W), (H, W, 3) or (H, W, 4)")
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"{path}: unknown image suffix {path.suffix!r}; use .png or .jpg")
    if fmt == "JPEG" and array.ndim == 3 and array.shape[2] == 4:
        raise ImageError(f"{path}: JPEG cannot store an alpha channel; use .png")
    image = Image.fromarray(np.ascontiguousarray(array))
    options = {"quality": quality} if fmt == "JPEG" else {"compress_level": compress_level} if fmt == "PNG" else {}
    try:
        with atomic_open(path) as handle:
            image.save(handle, format=fmt, **options)
    except OSError as exc:
        raise ImageError(f"{path}: cannot write image ({exc})") from None


def checkerboard(height: int, width: int, cell: int = 16) -> np.ndarray:
    """A light-gray checkerboard ``(H, W, 3)`` uint8, the usual backdrop for transparency."""
    ys, xs = np.mgrid[0:height, 0:width]
    light = ((ys // cell + xs // cell) % 2 == 0)
    board = np.where(light, 204, 153).astype(np.uint8)
    return np.repeat(board[:, :, None], 3, axis=2)


def composite_over(rgba: np.ndarray, backdrop: np.ndarray) -> np.ndarray:
    """Alpha-composites uint8 RGBA over an uint8 RGB backdrop of the same size."""
    alpha = rgba[:, :, 3:4].astype(np.float32) / 255.0
    mixed = rgba[:, :, :3].astype(np.float32) * alpha + backdrop.astype(np.float32) * (1 - alpha)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
