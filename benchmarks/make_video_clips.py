"""Short test clips made from the bundled real photo pairs, with ground truth per frame.

Each pair's subject (its ground-truth alpha cut out of ``src.jpg``) moves along a path over
its background plate (``bgr.jpg``) with a little camera shake (the whole frame shifted by a
pixel or two, as a hand-held camera would), and is encoded with PyAV. The plate itself
stays the matting background, so the shake is what ``--align`` would correct.

Used by the video tests (session fixtures write into tmp dirs) and by
``benchmarks/video_bench.py``; nothing large is committed. Run as a script to write clips::

    python -m benchmarks.make_video_clips OUT_DIR [--pair astronaut_coffee_640x480] [--size 320x240]
        [--frames 30] [--rate 30] [--vfr] [--audio]
"""

from __future__ import annotations

import argparse
import fractions
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PAIRS_DIR = Path(__file__).resolve().parents[1] / "bgm_deploy" / "data" / "pairs"
DEFAULT_PAIR = "astronaut_coffee_640x480"


@dataclass(frozen=True)
class ClipSpec:
    """What clip to make.

    Attributes:
        size: ``(width, height)`` of the clip (the pair is resized to it).
        frames: number of frames.
        rate: frames per second (the mean rate for a VFR clip).
        vfr: irregular frame durations (timestamps in milliseconds, 1/2x to 3/2x the mean).
        audio: add a 440 Hz AAC tone as long as the video.
        codec: ``libx264`` (``.mp4``), ``ffv1`` (``.mkv``) or ``mpeg2video``/``h264`` in ``.ts``.
        shake: largest camera-shake shift in pixels.
        seed: seeds path jitter and shake.
        crf: H.264 quality.
        pix_fmt: the encoded pixel format (e.g. ``yuv420p10le`` for a 10-bit clip); None: 8-bit.
        rotation: display-matrix rotation in counter-clockwise degrees (a phone clip filmed
            upright: frames are stored sideways and players rotate them back).
        gop: frames between keyframes (None: the encoder's default, 250 for x264).
    """

    size: tuple[int, int] = (320, 240)
    frames: int = 30
    rate: int = 30
    vfr: bool = False
    audio: bool = False
    codec: str = "libx264"
    shake: int = 2
    seed: int = 0
    crf: int = 18
    pix_fmt: str | None = None
    rotation: int = 0
    gop: int | None = None


def load_pair(pair: str | Path, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(src, bgr, alpha)`` of a bundled pair at ``size``: uint8 HWC RGB, RGB, float32 HW."""
    root = Path(pair) if Path(pair).is_dir() else PAIRS_DIR / str(pair)
    images = []
    for name, mode in (("src.jpg", "RGB"), ("bgr.jpg", "RGB"), ("alpha.png", "L")):
        with Image.open(root / name) as image:
            images.append(np.asarray(image.convert(mode).resize(size, Image.Resampling.BILINEAR)))
    src, bgr, alpha = images
    return src, bgr, alpha.astype(np.float32) / 255.0


def _shift(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Translates by whole pixels, repeating the border (a shifted camera sees a bit more scene)."""
    height, width = image.shape[:2]
    ys = np.clip(np.arange(height) - dy, 0, height - 1)
    xs = np.clip(np.arange(width) - dx, 0, width - 1)
    return image[ys][:, xs]


def _shift_zero(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Translates by whole pixels, filling with zeros (the subject's alpha leaves the frame)."""
    out = np.zeros_like(image)
    height, width = image.shape[:2]
    src_y, dst_y = slice(max(0, -dy), min(height, height - dy)), slice(max(0, dy), min(height, height + dy))
    src_x, dst_x = slice(max(0, -dx), min(width, width - dx)), slice(max(0, dx), min(width, width + dx))
    out[dst_y, dst_x] = image[src_y, src_x]
    return out


def render_frames(pair: str | Path, spec: ClipSpec) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """The clip's RGB frames, their ground-truth alphas and the background plate."""
    src, bgr, alpha = load_pair(pair, spec.size)
    width, height = spec.size
    rng = np.random.default_rng(spec.seed)
    frames, alphas = [], []
    for index in range(spec.frames):
        t = index / max(spec.frames - 1, 1)
        # Left to right across a sixth of the frame, bobbing up and down.
        dx = int(round((t - 0.5) * width / 6))
        dy = int(round(np.sin(2 * np.pi * t) * height / 40))
        sx, sy = (int(v) for v in rng.integers(-spec.shake, spec.shake + 1, size=2)) if spec.shake else (0, 0)
        moved_alpha = _shift_zero(alpha, dx + sx, dy + sy)
        subject = _shift(src, dx + sx, dy + sy).astype(np.float32)
        plate = _shift(bgr, sx, sy).astype(np.float32)
        a = moved_alpha[..., None]
        frames.append(np.clip(np.rint(subject * a + plate * (1 - a)), 0, 255).astype(np.uint8))
        alphas.append(moved_alpha)
    return frames, alphas, bgr


def frame_times(spec: ClipSpec) -> tuple[list[int], fractions.Fraction]:
    """Presentation timestamps and their time base: constant rate, or irregular milliseconds."""
    if not spec.vfr:
        return list(range(spec.frames)), fractions.Fraction(1, spec.rate)
    mean = 1000 / spec.rate
    pattern = (0.5, 1.0, 1.5, 1.0, 0.75, 1.25)  # averages to 1
    times, now = [], 0
    for index in range(spec.frames):
        times.append(now)
        now += max(1, int(round(mean * pattern[index % len(pattern)])))
    return times, fractions.Fraction(1, 1000)


def write_clip(path: str | Path, frames: list[np.ndarray], spec: ClipSpec) -> Path:
    """Encodes ``frames`` (RGB uint8) to ``path`` with PyAV, per ``spec``."""
    import av  # optional extra "video"

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    times, time_base = frame_times(spec)
    if spec.rotation:
        # Stored as a phone does: the upright picture turned back by the display rotation.
        frames = [np.ascontiguousarray(np.rot90(frame, -spec.rotation // 90)) for frame in frames]
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(spec.codec, rate=spec.rate)
        stream.width, stream.height = width, height
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        if spec.codec == "libx264":
            stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
            stream.options = {"crf": str(spec.crf), "preset": "veryfast"}
        elif spec.codec == "ffv1":
            stream.pix_fmt = "yuv444p"
        else:
            stream.pix_fmt = "yuv420p"
        if spec.pix_fmt:
            stream.pix_fmt = spec.pix_fmt
        if spec.gop:
            stream.options = {**stream.options, "g": str(spec.gop)}
        if spec.rotation:
            stream.set_display_rotation(spec.rotation)
        audio = None
        if spec.audio:
            audio = container.add_stream("aac", rate=48000)
            audio.layout = "mono"
        for frame_rgb, pts in zip(frames, times):
            frame = av.VideoFrame.from_ndarray(frame_rgb, format="rgb24")
            frame.pts = pts
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if audio is not None:
            duration = (times[-1] + (times[1] - times[0] if len(times) > 1 else 1)) * time_base
            samples = int(48000 * duration)
            tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / 48000)).astype(np.float32)
            for start in range(0, samples, 1024):
                chunk = tone[start:start + 1024][None]
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate = 48000
                frame.pts = start
                container.mux(audio.encode(frame))
            container.mux(audio.encode())
    return path


def make_clip(path: str | Path, pair: str | Path = DEFAULT_PAIR,
              spec: ClipSpec | None = None) -> tuple[Path, list[np.ndarray], np.ndarray]:
    """Renders and encodes one clip; returns its path, per-frame ground-truth alphas and the plate."""
    spec = spec or ClipSpec()
    frames, alphas, plate = render_frames(pair, spec)
    return write_clip(path, frames, spec), alphas, plate


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--pair", default=DEFAULT_PAIR)
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--rate", type=int, default=30)
    parser.add_argument("--vfr", action="store_true")
    parser.add_argument("--audio", action="store_true")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    spec = ClipSpec(size=(width, height), frames=args.frames, rate=args.rate, vfr=args.vfr, audio=args.audio)
    name = f"{args.pair}_{width}x{height}_{args.frames}f{'_vfr' if args.vfr else ''}{'_audio' if args.audio else ''}"
    path, _, plate = make_clip(args.out_dir / f"{name}.mp4", args.pair, spec)
    Image.fromarray(plate).save(args.out_dir / f"{name}_plate.png")
    print(path)


if __name__ == "__main__":
    _main()
