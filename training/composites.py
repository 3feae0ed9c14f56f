"""Seeded matting composites built at run time: subject (foreground + alpha) over a background,
and a background plate perturbed the way a real capture differs from it.

Every sample is a pure function of ``(seed, index, split, size)``: the same call gives the same
arrays, so a resumed run sees the data it would have seen, and the held-out validation set is
fixed by its seeds. Nothing is downloaded.

Image sources (all shipped inside the scikit-image wheel, ``skimage/data``; install with
``pip install "bgm-deploy[train]"``), with the licence their docstrings state:

- ``brick.png``, ``grass.png``, ``gravel.png``: CC0Textures, Creative Commons CC0.
- ``camera.png``: CC0 by the photographer (Lav Varshney).
- ``cell.png``: CC0, dedicated to the public domain.
- ``clock_motion.png``: public domain (photographer Stefan van der Walt).
- ``coins.png``, ``ihc.png`` (immunohistochemistry): no known copyright restrictions.
- ``horse.png``: CC0 (Andreas Preuss); used as a subject silhouette.
- ``hubble_deep_field.jpg``: NASA, public domain.
- ``microaneurysms.png``: CC0 (Andreas Maier).
- ``retina.jpg``: CC0 1.0 Universal public domain dedication.
- ``text.png``: no known copyright restrictions, public domain.

Never used: ``astronaut``, ``coffee``, ``rocket`` and ``chelsea`` (they make up the real test
pairs in ``bgm_deploy/data/pairs``), nor images whose docstring states no licence.

Splits: training draws textures from :data:`TRAIN_IMAGES` and procedural textures; the held-out
validation set (:func:`validation_set`) uses :data:`VAL_IMAGES` only, other seeds, and no
horse silhouette.

Arrays are float32 in 0..1, channels last inside this module; :func:`make_batch` returns
torch-ready (B, C, H, W) arrays: ``src``, ``bgr`` (3 channels), ``pha`` (1), ``fgr`` (3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np

TRAIN_IMAGES = (
    "brick.png",
    "camera.png",
    "cell.png",
    "clock_motion.png",
    "grass.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "microaneurysms.png",
    "text.png",
)
VAL_IMAGES = ("coins.png", "gravel.png", "retina.jpg")
SILHOUETTES = ("horse.png",)
HELD_OUT_TEST_IMAGES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
SPLITS = ("train", "val")

# Index ranges keep the two splits' random streams apart even for the same seed.
_SPLIT_SALT = {"train": 0x5EED, "val": 0xBA1D}

cv2.setNumThreads(1)  # the trainer owns the cores; composites are built between steps


@dataclass(frozen=True)
class PlateConfig:
    """How the background plate differs from the background behind the subject.

    Attributes:
        misalign_share: share of samples whose plate is shifted and rotated.
        max_shift: largest shift in pixels at the full sample size (uniform in 0..max).
        max_rotation: largest rotation in degrees.
        shadow_share: share of samples where the subject casts a shadow on the scene.
        light_share: share of samples with a brightness/colour change between plate and scene.
        jpeg_share: share of images (src and plate independently) re-encoded as JPEG.
        max_noise: largest standard deviation of the sensor noise added to each image.
        camouflage_share: share of subjects coloured like the scene behind them
            (:func:`_camouflage`), where only structure tells them apart.
        absolute_shift: ``max_shift`` is in pixels of the sample itself (crops of a large photo,
            as the refine stage sees them); otherwise it is scaled by ``max(H, W) / 1920`` (at
            least 0.35), as for a whole photo downsampled to the sample size.
        empty_share: share of samples with no subject at all (alpha 0 everywhere): with a
            perturbed plate these are hard negatives, where every difference between the
            photo and the plate is background.
        frame_size: ``(height, width)`` of the whole photo a sample is a crop of: the plate is
            rotated about that photo's centre (the crop lies at a random place in it), so a
            crop far from the centre also moves by the rotation (about 19 px at 1 degree for a
            640 px crop at the edge of a 1920x1080 photo). ``None``: about the sample's centre.
    """

    misalign_share: float = 0.5
    max_shift: float = 12.0
    max_rotation: float = 1.0
    shadow_share: float = 0.35
    light_share: float = 0.5
    jpeg_share: float = 0.6
    max_noise: float = 0.02
    absolute_shift: bool = False
    camouflage_share: float = 0.25
    empty_share: float = 0.03
    frame_size: tuple[int, int] | None = None


# The refine stage's composites from the v2 recipe on (``train.RECIPES["refine-v2"]``): crops of
# a 1920x1080 photo whose plate is more often misaligned, rotated about the photo's centre, and
# more crops without a subject (hard negatives for false foreground).
REFINE_PLATE = PlateConfig(misalign_share=0.7, absolute_shift=True, empty_share=0.1, frame_size=(1080, 1920))


@cache
def _image(name: str) -> np.ndarray:
    """A scikit-image data file as float32 (H, W, 3) or (H, W) in 0..1 (cached per process)."""
    if name in HELD_OUT_TEST_IMAGES:
        raise ValueError(f"{name} is part of the held-out real test pairs and must not be used for training")
    import skimage

    path = Path(skimage.__file__).parent / "data" / name
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FileNotFoundError(f"{path} is missing: reinstall scikit-image (pip install 'bgm-deploy[train]')")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return image.astype(np.float32) / (65535.0 if image.dtype == np.uint16 else 255.0)


# ---------------------------------------------------------------------------------------------
# Textures


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, octaves: int) -> np.ndarray:
    """Fractal value noise in 0..1: random grids upsampled bicubically, finer octaves weaker."""
    acc = np.zeros((h, w), np.float32)
    amplitude, total = 1.0, 0.0
    persistence = rng.uniform(0.35, 0.65)
    for octave in range(octaves):
        n = cells * 2**octave
        grid = rng.random((max(2, round(n * h / max(h, w))) + 1, max(2, round(n * w / max(h, w))) + 1))
        acc += amplitude * cv2.resize(grid.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        total += amplitude
        amplitude *= persistence
    acc /= total
    lo, hi = np.percentile(acc, (1, 99))
    return np.clip((acc - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def _palette_map(rng: np.random.Generator, value: np.ndarray, stops: int | None = None) -> np.ndarray:
    """Maps a 0..1 field through a random colour ramp with 2..5 stops: (H, W) → (H, W, 3)."""
    stops = stops or int(rng.integers(2, 6))
    xs = np.sort(rng.random(stops)).astype(np.float32)
    xs[0], xs[-1] = 0.0, 1.0
    colours = rng.random((stops, 3)).astype(np.float32)
    # Natural scenes are rarely fully saturated: pull some ramps towards grey.
    grey = colours.mean(axis=1, keepdims=True)
    colours = grey + (colours - grey) * rng.uniform(0.2, 1.0)
    return np.stack([np.interp(value, xs, colours[:, c]).astype(np.float32) for c in range(3)], axis=-1)


def _procedural_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random colour texture: fractal noise, stripes, checks or a smooth gradient."""
    kind = rng.choice(["noise", "noise", "stripes", "checks", "gradient"])
    if kind == "noise":
        field = _smooth_noise(rng, h, w, int(rng.integers(2, 9)), int(rng.integers(2, 6)))
    else:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        angle = rng.uniform(0, math.pi)
        u = xx * math.cos(angle) + yy * math.sin(angle)
        v = -xx * math.sin(angle) + yy * math.cos(angle)
        period = rng.uniform(6, max(h, w) / 2)
        if kind == "stripes":
            field = 0.5 + 0.5 * np.sin(2 * math.pi * u / period)
            field = np.clip((field - 0.5) * rng.uniform(1, 8) + 0.5, 0, 1)
        elif kind == "checks":
            field = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
            field = cv2.GaussianBlur(field, (0, 0), rng.uniform(0.3, 1.5))
        else:
            field = (u - u.min()) / max(float(np.ptp(u)), 1e-6)
        field = 0.8 * field + 0.2 * _smooth_noise(rng, h, w, 4, 3)
    return _palette_map(rng, field)


def _colourise(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Gives a grey image colour (a random ramp or a tint) and jitters a colour image's channels."""
    if image.ndim == 2:
        if rng.random() < 0.5:
            return _palette_map(rng, image)
        tint = rng.uniform(0.4, 1.0, 3).astype(np.float32)
        return np.clip(image[..., None] * tint / tint.max() + rng.uniform(-0.1, 0.1, 3), 0, 1).astype(np.float32)
    image = image[..., :3]
    if rng.random() < 0.5:
        image = image[..., rng.permutation(3)]
    return np.clip(image * rng.uniform(0.7, 1.3, 3) + rng.uniform(-0.08, 0.08, 3), 0, 1).astype(np.float32)


def _image_crop(rng: np.random.Generator, names: tuple[str, ...], h: int, w: int) -> np.ndarray:
    """A random crop of a random source image, resized to (h, w), flipped and colourised."""
    image = _image(str(rng.choice(names)))
    ih, iw = image.shape[:2]
    aspect = w / h
    scale = rng.uniform(0.35, 1.0)
    ch = int(min(ih, iw / aspect) * scale)
    cw = int(ch * aspect)
    y0 = int(rng.integers(0, ih - ch + 1))
    x0 = int(rng.integers(0, iw - cw + 1))
    crop = cv2.resize(image[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_AREA if ch > h else cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.3:
        crop = crop[::-1]
    return _colourise(rng, np.ascontiguousarray(crop))


def _scene(rng: np.random.Generator, names: tuple[str, ...], h: int, w: int) -> np.ndarray:
    """A background: an image crop or a procedural texture, often with hard-edged objects and
    a lighting gradient, so that plate misalignment produces edge differences as in real scenes."""
    base = _image_crop(rng, names, h, w) if rng.random() < 0.6 else _procedural_texture(rng, h, w)
    if rng.random() < 0.6:
        for _ in range(int(rng.integers(1, 6))):
            patch = _image_crop(rng, names, h, w) if rng.random() < 0.4 else _procedural_texture(rng, h, w)
            mask = np.zeros((h, w), np.float32)
            if rng.random() < 0.5:
                x0, x1 = sorted(rng.integers(0, w, 2))
                y0, y1 = sorted(rng.integers(0, h, 2))
                cv2.rectangle(mask, (int(x0), int(y0)), (int(x1), int(y1)), 1.0, -1, cv2.LINE_AA)
            else:
                points = rng.integers([0, 0], [w, h], (int(rng.integers(3, 7)), 2)).astype(np.int32)
                cv2.fillPoly(mask, [points], 1.0, cv2.LINE_AA)
            base = base * (1 - mask[..., None]) + patch * mask[..., None]
    if rng.random() < 0.5:
        base = base * (0.6 + 0.8 * _smooth_noise(rng, h, w, 2, 1))[..., None]
    return np.clip(base, 0, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Subject silhouettes


def _ellipse(mask: np.ndarray, centre: tuple[float, float], axes: tuple[float, float], angle: float) -> None:
    """Draws a filled, anti-aliased ellipse (sub-pixel precision via cv2's shift argument)."""
    s = 16
    cv2.ellipse(
        mask,
        (int(centre[0] * s), int(centre[1] * s)),
        (max(1, int(axes[0] * s)), max(1, int(axes[1] * s))),
        angle,
        0,
        360,
        1.0,
        -1,
        cv2.LINE_AA,
        shift=4,
    )


def _bust(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A person- or animal-like shape: torso from the bottom edge, a head, maybe arms or ears."""
    mask = np.zeros((h, w), np.float32)
    size = min(h, w) * rng.uniform(0.25, 0.6)
    cx = w * rng.uniform(0.2, 0.8)
    torso_w = size * rng.uniform(0.6, 1.1)
    torso_top = h - size * rng.uniform(0.6, 1.6)
    _ellipse(mask, (cx, h + size * 0.2), (torso_w, max(1.0, h + size * 0.2 - torso_top)), rng.uniform(-10, 10))
    head_r = size * rng.uniform(0.25, 0.45)
    head = (cx + rng.uniform(-0.3, 0.3) * torso_w, torso_top - head_r * rng.uniform(0.4, 1.0))
    _ellipse(mask, head, (head_r * rng.uniform(0.75, 1.0), head_r), rng.uniform(-20, 20))
    cv2.rectangle(mask, (int(head[0] - head_r * 0.4), int(head[1])), (int(head[0] + head_r * 0.4), int(torso_top + head_r)), 1.0, -1, cv2.LINE_AA)
    if rng.random() < 0.4:  # ears
        for side in (-1, 1):
            _ellipse(mask, (head[0] + side * head_r * 0.6, head[1] - head_r * 0.9), (head_r * 0.25, head_r * 0.5), side * 20)
    for _ in range(int(rng.integers(0, 3))):  # arms
        side = rng.choice([-1, 1])
        sx, sy = cx + side * torso_w * 0.8, torso_top + size * 0.3
        length = size * rng.uniform(0.5, 1.2)
        angle = rng.uniform(-160, -20) if side < 0 else rng.uniform(-160, -20) + 180
        ex, ey = sx + length * math.cos(math.radians(angle)), sy + length * math.sin(math.radians(angle))
        _ellipse(mask, ((sx + ex) / 2, (sy + ey) / 2), (length / 2, size * rng.uniform(0.08, 0.16)), angle)
    return mask


def _blob(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An organic shape: fractal noise with a radial falloff, thresholded with a soft edge."""
    noise = _smooth_noise(rng, h, w, int(rng.integers(2, 6)), 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h * rng.uniform(0.3, 0.8), w * rng.uniform(0.2, 0.8)
    radius = min(h, w) * rng.uniform(0.2, 0.5)
    falloff = 1 - np.sqrt(((yy - cy) / radius) ** 2 + ((xx - cx) / (radius * rng.uniform(0.6, 1.4))) ** 2)
    field = falloff + 0.6 * (noise - 0.5)
    width = rng.uniform(0.002, 0.02)
    return np.clip(field / width + 0.5, 0, 1).astype(np.float32)


def _polygon(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A star-shaped polygon with a smoothly varying radius (objects with corners)."""
    mask = np.zeros((h, w), np.float32)
    n = int(rng.integers(5, 40))
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    radius = min(h, w) * rng.uniform(0.15, 0.45) * rng.uniform(0.5, 1.0, n)
    cx, cy = w * rng.uniform(0.25, 0.75), h * rng.uniform(0.25, 0.75)
    points = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
    cv2.fillPoly(mask, [(points * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
    return mask


def _silhouette(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """The horse silhouette (training split only), scaled, rotated, flipped and placed."""
    source = _image(SILHOUETTES[0])
    shape = 1.0 - source[..., :3].mean(axis=-1)  # a dark horse on white
    if rng.random() < 0.5:
        shape = shape[:, ::-1]
    scale = min(h, w) / max(shape.shape) * rng.uniform(0.5, 1.1)
    matrix = cv2.getRotationMatrix2D((shape.shape[1] / 2, shape.shape[0] / 2), rng.uniform(-25, 25), scale)
    matrix[0, 2] += w * rng.uniform(0.3, 0.7) - shape.shape[1] / 2
    matrix[1, 2] += h * rng.uniform(0.3, 0.7) - shape.shape[0] / 2
    return cv2.warpAffine(np.ascontiguousarray(shape, np.float32), matrix, (w, h), flags=cv2.INTER_LINEAR)


def _strands(rng: np.random.Generator, alpha: np.ndarray) -> np.ndarray:
    """Hair-like strands growing out of the silhouette: thin curved lines drawn at 4x and
    averaged down, so that they carry fractional alpha like real hair or fur."""
    h, w = alpha.shape
    edge = np.argwhere((alpha > 0.3) & (alpha < 0.7))
    if len(edge) == 0:
        return alpha
    s = 4
    canvas = np.zeros((h * s, w * s), np.float32)
    cy, cx = np.argwhere(alpha > 0.5).mean(axis=0) if (alpha > 0.5).any() else (h / 2, w / 2)
    count = int(rng.integers(10, 120))
    region = edge[rng.integers(0, len(edge), max(1, count // 10))]
    for i in range(count):
        y, x = region[i % len(region)] + rng.normal(0, min(h, w) * 0.03, 2)
        angle = math.atan2(y - cy, x - cx) + rng.normal(0, 0.6)
        length = min(h, w) * rng.uniform(0.02, 0.15)
        curl = rng.normal(0, 0.08)
        points = []
        for t in np.linspace(0, 1, 8):
            points.append((x * s, y * s))
            angle += curl
            x += math.cos(angle) * length / 7
            y += math.sin(angle) * length / 7
        opacity = rng.uniform(0.4, 1.0)
        cv2.polylines(canvas, [np.array(points, np.int32)], False, opacity, int(rng.integers(1, 4)), cv2.LINE_AA)
    fine = cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA)
    return np.maximum(alpha, np.clip(fine, 0, 1))


def _alpha(rng: np.random.Generator, h: int, w: int, split: str) -> np.ndarray:
    """A realistic alpha: 1-3 shapes, then holes, strands, soft edges, transparency."""
    makers = [_bust, _bust, _blob, _polygon] + ([_silhouette] if split == "train" else [])
    alpha = np.zeros((h, w), np.float32)
    for _ in range(int(rng.choice([1, 1, 1, 2, 3]))):
        alpha = np.maximum(alpha, makers[int(rng.integers(len(makers)))](rng, h, w))
    if rng.random() < 0.3:  # holes (between an arm and the body, a handle, a gap in fur)
        holes = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(1, 4))):
            _ellipse(holes, (w * rng.random(), h * rng.random()), tuple(min(h, w) * rng.uniform(0.02, 0.1, 2)), rng.uniform(0, 180))
        alpha = alpha * (1 - holes)
    if rng.random() < 0.5:
        alpha = _strands(rng, alpha)
    if rng.random() < 0.5:  # soft edges (defocus), blended in by a smooth mask so only parts are soft
        soft = cv2.GaussianBlur(alpha, (0, 0), rng.uniform(0.7, 3.5))
        blend = _smooth_noise(rng, h, w, 3, 2)
        alpha = alpha * (1 - blend) + soft * blend
    if rng.random() < 0.12:  # a semi-transparent part (veil, glass, thin fabric)
        veil = _blob(rng, h, w)
        alpha = alpha * (1 - veil * rng.uniform(0.2, 0.7))
    return np.clip(alpha, 0, 1).astype(np.float32)


def _motion_blur(rng: np.random.Generator, alpha: np.ndarray, fgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blurs the subject along a line (premultiplied, as a moving subject integrates over time)."""
    length = int(rng.integers(3, 16))
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0
    kernel = cv2.warpAffine(kernel, cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), rng.uniform(0, 180), 1.0), (length, length))
    kernel /= max(kernel.sum(), 1e-6)
    premultiplied = cv2.filter2D(fgr * alpha[..., None], -1, kernel, borderType=cv2.BORDER_REFLECT)
    blurred = cv2.filter2D(alpha, -1, kernel, borderType=cv2.BORDER_REFLECT)
    fgr = np.where(blurred[..., None] > 1e-3, premultiplied / np.maximum(blurred[..., None], 1e-3), fgr)
    return np.clip(blurred, 0, 1), np.clip(fgr, 0, 1).astype(np.float32)


def _camouflage(rng: np.random.Generator, behind: np.ndarray, fgr: np.ndarray) -> np.ndarray:
    """A subject with the scene's own colours but another structure: the scene flipped, turned
    or rolled (a red jacket over a red chair). Never the pixels right behind it, which would
    look like transparency and make the alpha ambiguous."""
    h, w = behind.shape[:2]
    kind = rng.integers(3)
    if kind == 0:
        copy = behind[::-1, ::-1]
    elif kind == 1:
        copy = behind[::-1] if rng.random() < 0.5 else behind[:, ::-1]
    else:
        copy = np.roll(behind, (int(rng.integers(h // 4, 3 * h // 4)), int(rng.integers(w // 4, 3 * w // 4))), axis=(0, 1))
    copy = copy * rng.uniform(0.85, 1.15, 3)
    mix = rng.uniform(0.6, 1.0)
    return np.clip(mix * copy + (1 - mix) * fgr, 0, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Capture effects


def _warp(image: np.ndarray, dx: float, dy: float, degrees: float, centre: tuple[float, float] | None = None) -> np.ndarray:
    """Shifts and rotates about ``centre`` (x, y; default the image's centre); borders reflect
    (the plate still covers the frame)."""
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(centre or (w / 2, h / 2), degrees, 1.0)
    matrix[:, 2] += (dx, dy)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _capture(rng: np.random.Generator, image: np.ndarray, plate: PlateConfig) -> np.ndarray:
    """Sensor noise and JPEG compression, drawn independently for each photo."""
    if rng.random() < 0.7:
        sigma = rng.uniform(0, plate.max_noise)
        image = image + rng.normal(0, sigma, image.shape).astype(np.float32)
    image = np.clip(image, 0, 1)
    if rng.random() < plate.jpeg_share:
        quality = int(rng.integers(55, 96))
        ok, data = cv2.imencode(".jpg", (image[..., ::-1] * 255 + 0.5).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            image = cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0
    return image.astype(np.float32)


def make_sample(seed: int, index: int, size: tuple[int, int], split: str = "train", plate: PlateConfig | None = None) -> dict[str, np.ndarray]:
    """One composite, a pure function of its arguments.

    Args:
        seed: run seed.
        index: sample number within the run (step * batch + position for training).
        size: (height, width) of the sample.
        split: ``"train"`` or ``"val"`` (different images and random streams).
        plate: capture perturbations (defaults: :class:`PlateConfig`).

    Returns:
        ``src``, ``bgr`` (H, W, 3), ``pha`` (H, W), ``fgr`` (H, W, 3); float32 in 0..1.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not valid; valid: {list(SPLITS)}")
    plate = plate or PlateConfig()
    rng = np.random.default_rng([_SPLIT_SALT[split], seed, index])
    h, w = size
    names = TRAIN_IMAGES if split == "train" else VAL_IMAGES
    # Margin so that a shifted/rotated plate is still real scene content at the borders.
    scale = 1.0 if plate.absolute_shift else max(max(h, w) / 1920, 0.35)
    margin = math.ceil(plate.max_shift * scale + max(h, w) * math.sin(math.radians(plate.max_rotation))) + 2
    if plate.frame_size is not None:  # rotation about a centre up to half the photo away
        fh, fw = plate.frame_size
        margin += math.ceil(math.hypot(max(fh - h, 0), max(fw - w, 0)) / 2 * math.sin(math.radians(plate.max_rotation)))
    scene = _scene(rng, names, h + 2 * margin, w + 2 * margin)

    fgr = _image_crop(rng, names, h, w) if rng.random() < 0.55 else _procedural_texture(rng, h, w)
    if rng.random() < 0.5:  # shading on the subject
        fgr = np.clip(fgr * (0.5 + 0.9 * _smooth_noise(rng, h, w, 2, 2))[..., None], 0, 1)
    if rng.random() < plate.camouflage_share:
        fgr = _camouflage(rng, scene[margin : margin + h, margin : margin + w], fgr)
    alpha = _alpha(rng, h, w, split) if rng.random() >= plate.empty_share else np.zeros((h, w), np.float32)
    if rng.random() < 0.15:
        alpha, fgr = _motion_blur(rng, alpha, fgr)
    fgr = fgr.astype(np.float32)

    behind = scene[margin : margin + h, margin : margin + w].copy()
    if rng.random() < plate.shadow_share and alpha.any():
        offset = rng.normal(0, min(h, w) * 0.06, 2)
        matrix = np.float32([[1, rng.uniform(-0.4, 0.4), offset[0]], [0, rng.uniform(0.8, 1.1), offset[1]]])
        cast = cv2.warpAffine(alpha, matrix, (w, h))
        cast = cv2.GaussianBlur(cast, (0, 0), rng.uniform(2, min(h, w) * 0.05 + 2))
        strength = rng.uniform(0.15, 0.6)
        behind = behind * (1 - strength * cast[..., None] * rng.uniform(0.85, 1.0, 3))

    bgr = scene
    if rng.random() < plate.misalign_share:
        shift = rng.uniform(0, plate.max_shift) * scale
        direction = rng.uniform(0, 2 * math.pi)
        degrees = rng.uniform(-plate.max_rotation, plate.max_rotation)
        centre = None
        if plate.frame_size is not None:  # the photo's centre, seen from a crop at a random place in it
            fh, fw = plate.frame_size
            oy, ox = rng.uniform(-1, 1, 2) * (max(fh - h, 0) / 2, max(fw - w, 0) / 2)
            centre = (scene.shape[1] / 2 + ox, scene.shape[0] / 2 + oy)
        bgr = _warp(scene, shift * math.cos(direction), shift * math.sin(direction), degrees, centre)
    bgr = bgr[margin : margin + h, margin : margin + w]
    if rng.random() < plate.light_share:  # auto exposure / white balance differ between the two shots
        bgr = bgr * rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3) + rng.uniform(-0.04, 0.04)
    if rng.random() < 0.15:  # focus or motion differs slightly
        bgr = cv2.GaussianBlur(bgr, (0, 0), rng.uniform(0.3, 1.0))

    src = alpha[..., None] * fgr + (1 - alpha[..., None]) * behind
    return {
        "src": _capture(rng, src, plate),
        "bgr": _capture(rng, np.clip(bgr, 0, 1).astype(np.float32), plate),
        "pha": alpha,
        "fgr": fgr,
    }


def make_batch(seed: int, first_index: int, count: int, size: tuple[int, int], split: str = "train", plate: PlateConfig | None = None) -> dict[str, np.ndarray]:
    """``count`` consecutive samples stacked as (B, C, H, W) float32 arrays."""
    samples = [make_sample(seed, first_index + i, size, split, plate) for i in range(count)]
    batch = {}
    for key in ("src", "bgr", "pha", "fgr"):
        stacked = np.stack([s[key] for s in samples])
        batch[key] = np.ascontiguousarray(stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2))
    return batch


def validation_set(count: int, size: tuple[int, int], seed: int = 1_000_003, plate: PlateConfig | None = None) -> dict[str, np.ndarray]:
    """The held-out synthetic set: validation images only, a seed no training run uses.
    The first ``n`` samples of a larger set are the set of ``n`` (same seed and plate)."""
    return make_batch(seed, 0, count, size, split="val", plate=plate)
