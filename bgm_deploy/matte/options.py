"""How a matte job runs: one options value for photos and footage alike.

Every option either applies to a source kind or is refused there with a message naming
what does apply (:meth:`MatteOptions.check_for`): no option is silently dropped. Options
that only make sense for some sources default to None ("not given"), so an explicit value
can be told from a default.

Output kinds, the same meaning for photos and video:

* ``pha`` alpha, ``fgr`` foreground, ``err`` error map, ``ref`` refined regions (gray/RGB);
* ``rgba`` the foreground with alpha as an alpha channel (colour zeroed where alpha is 0);
* ``com`` the foreground composited over ``backdrop`` (a colour, an image, or a video).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from model.errors import UsageError

from .video_io import FORMATS as VIDEO_FORMATS

OUTPUT_KINDS = ("pha", "fgr", "com", "rgba", "err", "ref")
# Channel layout of each kind's image.
LAYOUTS = {"pha": "gray", "fgr": "rgb", "com": "rgb", "rgba": "rgba", "err": "gray", "ref": "gray"}
# Predictor outputs each kind is rendered from.
NEEDS = {"pha": ("pha",), "fgr": ("fgr",), "com": ("pha", "fgr"), "rgba": ("pha", "fgr"), "err": ("err",),
         "ref": ("ref",)}
# Photo outputs: image files. rgba needs an alpha channel (PNG).
PHOTO_FORMATS = ("png", "jpg")
PHOTO_DEFAULT_FORMAT = "png"
# Video outputs: see bgm_deploy.matte.video_io.FORMATS. On a 2-core CPU every stage shares the
# cores with the model: benchmarks/results/video.json measured the pipeline's extra CPU per HD
# frame at 131 ms with x264 "veryfast" and 32 ms with "ultrafast" (files ~2-3x larger):
# real time first. ProRes 4444 costs more than the model, so alpha goes to a PNG sequence.
VIDEO_DEFAULT_FORMATS = {"pha": "h264", "fgr": "h264", "com": "h264", "rgba": "png", "err": "h264", "ref": "h264"}
DEFAULT_PRESET = "ultrafast"
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
DEFAULT_CRF = 18
DEFAULT_BACKDROP = "120,255,155"  # the green the original project composites over
ALIGN_MODES = ("clip", "frame")

# Where each option applies (the CLI flag names it in messages). Options not listed apply to both.
APPLIES: dict[str, tuple[tuple[str, ...], str]] = {
    "crf": (("video",), "--crf"),
    "preset": (("video",), "--preset"),
    "audio": (("video",), "--audio/--no-audio"),
    "rate": (("sequence",), "--rate"),
    "src_format": (("live",), "--src-format"),
    "max_frames": (("video",), "--max-frames"),
    "align_mode": (("video",), "--align-mode"),
}


@dataclass(frozen=True)
class MatteOptions:
    """Everything about a matte job except what to read, where to write and the model.

    Attributes:
        outputs: output kinds (see the module docstring).
        formats: per kind: photos ``png``/``jpg``; video ``h264``, ``ffv1``, ``prores``,
            ``vp9``, ``h264-nvenc`` or ``png`` (a PNG sequence). Unnamed kinds use the defaults.
        align: align each background to its source (ORB + RANSAC homography, OpenCV).
        align_mode: video with ``align``: ``clip`` (one homography for the clip, default) or
            ``frame`` (one per frame, follows a moving camera).
        resize: ``(width, height)`` both images of every pair/frame are resized to.
        batch: frames (or same-size photos) per model call.
        workers: photos: decode and encode threads each; video: FFmpeg decoder threads.
        overwrite: replace existing outputs (a PNG sequence's earlier frames are removed).
        skip_existing: keep finished outputs and do the rest (resume).
        allow_partial: exit 0 although some photos failed or frames could not be decoded
            (counted in the report) instead of failing the run.
        backdrop: what ``com`` composites over: ``R,G,B``, ``#rrggbb``, an image, or a video
            of the source's size, rate and length (None: :data:`DEFAULT_BACKDROP`).
        crf, preset: video: quality and x264 preset of lossy formats.
        audio: video: carry the source's audio into video outputs.
        rate: frames per second of an image-sequence source.
        src_format: FFmpeg input format of a live device (``v4l2``); makes the source live.
        src_options: FFmpeg demuxer options of the source.
        max_frames: video: stop after this many frames.
        queue_size: batches waiting in each queue (bounds memory).
    """

    outputs: tuple[str, ...] = ("pha", "fgr")
    formats: dict[str, str] = field(default_factory=dict)
    align: bool = False
    align_mode: str | None = None
    resize: tuple[int, int] | None = None
    batch: int = 1
    workers: int = 2
    overwrite: bool = False
    skip_existing: bool = False
    allow_partial: bool = False
    backdrop: str | None = None
    crf: int | None = None
    preset: str | None = None
    audio: bool | None = None
    rate: float | None = None
    src_format: str | None = None
    src_options: dict[str, str] = field(default_factory=dict)
    max_frames: int | None = None
    queue_size: int = 4

    def __post_init__(self) -> None:
        unknown = [name for name in self.outputs if name not in OUTPUT_KINDS]
        if unknown or not self.outputs or len(set(self.outputs)) != len(self.outputs):
            raise UsageError(f"--outputs {','.join(self.outputs)!r} is not valid; choose distinct names from "
                             f"{', '.join(OUTPUT_KINDS)}")
        stray = [kind for kind in self.formats if kind not in self.outputs]
        if stray:
            raise UsageError(f"--format names {', '.join(stray)}, which is not among --outputs {','.join(self.outputs)}")
        known = {*PHOTO_FORMATS, *VIDEO_FORMATS}
        bad = {kind: name for kind, name in self.formats.items() if name not in known}
        if bad:
            raise UsageError(f"--format {', '.join(f'{k}={v}' for k, v in bad.items())} is not valid; photos: "
                             f"{', '.join(PHOTO_FORMATS)}; video: {', '.join(VIDEO_FORMATS)}")
        if self.align_mode is not None and self.align_mode not in ALIGN_MODES:
            raise UsageError(f"--align-mode {self.align_mode!r} is not valid; valid: {', '.join(ALIGN_MODES)}")
        if self.align_mode is not None and not self.align:
            raise UsageError("--align-mode applies with --align; add --align")
        if self.resize is not None and (len(self.resize) != 2 or min(self.resize) < 4):
            raise UsageError(f"--resize {self.resize!r} is not valid; give WIDTHxHEIGHT, both >= 4")
        if self.batch < 1 or self.workers < 1 or self.queue_size < 1:
            raise UsageError(f"--batch {self.batch}, --workers {self.workers} and queue_size {self.queue_size} must "
                             "all be >= 1")
        if self.overwrite and self.skip_existing:
            raise UsageError("--overwrite and --skip-existing exclude each other; pass one")
        if self.crf is not None and not 0 <= self.crf <= 51:
            raise UsageError(f"--crf {self.crf} is not valid; it must be in 0..51 (lower is better, {DEFAULT_CRF} default)")
        if self.preset is not None and self.preset not in X264_PRESETS:
            raise UsageError(f"--preset {self.preset!r} is not valid; valid: {', '.join(X264_PRESETS)}")
        if self.rate is not None and not self.rate > 0:
            raise UsageError(f"--rate {self.rate} is not valid; give frames per second > 0")
        if self.backdrop is not None and "com" not in self.outputs:
            raise UsageError("--backdrop applies to the com output (the foreground over it); add com to --outputs or drop it")
        if self.max_frames is not None and self.max_frames < 1:
            raise UsageError(f"--max-frames {self.max_frames} is not valid; it must be >= 1")

    def check_for(self, kind: str, sequence: bool = False, live: bool = False) -> None:
        """Refuses options that do not apply to this source (see :data:`APPLIES`).

        Args:
            kind: ``photos`` or ``video``.
            sequence: the video source is a folder of numbered frames.
            live: the video source is a live stream or device.

        Raises:
            UsageError: naming the option and what it applies to.
        """
        where = {"photos": "photos", "video": "video files, image sequences and live sources",
                 "sequence": "image-sequence sources (--sequence)", "live": "live sources (URLs, devices)"}
        tags = {kind} | ({"sequence"} if sequence else set()) | ({"live"} if live else set())
        for name, (applies, flag) in APPLIES.items():
            if getattr(self, name) is not None and not tags & set(applies):
                raise UsageError(f"{flag} applies to {' and '.join(where[a] for a in applies)} only, not to "
                                 f"{where[kind] if not sequence else where['sequence']}; drop it")
        formats = PHOTO_FORMATS if kind == "photos" else tuple(VIDEO_FORMATS)
        bad = {k: v for k, v in self.formats.items() if v not in formats}
        if bad:
            pairs = ", ".join(f"{k}={v}" for k, v in bad.items())
            raise UsageError(f"--format {pairs} does not apply to {where[kind]}; valid there: {', '.join(formats)}")
        if kind == "photos" and self.formats.get("rgba") == "jpg":
            raise UsageError("--format rgba=jpg cannot store alpha; use png for rgba")

    def format_of(self, kind: str, source: str) -> str:
        """The format of output ``kind`` for a ``photos`` or ``video`` source."""
        default = PHOTO_DEFAULT_FORMAT if source == "photos" else VIDEO_DEFAULT_FORMATS[kind]
        return self.formats.get(kind, default)

    @property
    def backdrop_value(self) -> str:
        return DEFAULT_BACKDROP if self.backdrop is None else self.backdrop

    @property
    def crf_value(self) -> int:
        return DEFAULT_CRF if self.crf is None else self.crf

    @property
    def preset_value(self) -> str:
        return DEFAULT_PRESET if self.preset is None else self.preset

    @property
    def audio_value(self) -> bool:
        return True if self.audio is None else self.audio

    @property
    def align_how(self) -> str:
        """``off``, ``clip`` or ``frame``."""
        if not self.align:
            return "off"
        return self.align_mode or "clip"

    def needed(self) -> tuple[str, ...]:
        """The predictor outputs the requested kinds are rendered from."""
        return tuple(dict.fromkeys(name for kind in self.outputs for name in NEEDS[kind]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_formats(text: str | None, outputs: tuple[str, ...] = OUTPUT_KINDS) -> dict[str, str]:
    """``"pha=ffv1,rgba=prores"`` (or one ``"ffv1"`` for every one of ``outputs``) → ``{kind: format}``."""
    if not text:
        return {}
    if "=" not in text:
        return {kind: text.strip() for kind in outputs}
    result = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, sep, name = item.partition("=")
        if not sep or kind.strip() not in OUTPUT_KINDS:
            raise UsageError(f"--format {text!r} is not valid; use FORMAT or KIND=FORMAT pairs (pha=ffv1,rgba=png), "
                             f"kinds: {', '.join(OUTPUT_KINDS)}")
        result[kind.strip()] = name.strip()
    return result
