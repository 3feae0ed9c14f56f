"""Renders docs/images/video_outputs.png: one frame of every ``bgm-deploy matte`` video output.

Runs the documented commands (through the CLI) on a clip made from a bundled photo pair by
``benchmarks/make_video_clips.py``: export the default model to ONNX, then matte the clip to
pha, fgr, com, rgba, err and ref, and tiles frame ``--frame`` of each output, decoded back
from the files written. The export takes the bundled **demo weights** (the CLI's default:
trained here on synthetic composites, far less accurate than the official checkpoints). With
the official weights pass ``--checkpoint pytorch_mobilenetv2.pth``.

    python -m benchmarks.make_video_montage
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image, ImageDraw

from benchmarks.make_video_clips import ClipSpec, make_clip
from bgm_deploy.cli import cli
from bgm_deploy.images import checkerboard, composite_over, save_image
from bgm_deploy.matte.video_io import import_av

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "docs" / "images" / "video_outputs.png"
KINDS = ("pha", "fgr", "com", "rgba", "err", "ref")


def _run(args: list[str]) -> None:
    print("$ bgm-deploy " + " ".join(shlex.quote(a) for a in args))
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    print(result.output.strip())
    if result.exit_code != 0:
        raise SystemExit(result.exit_code)


def _frame(path: Path, index: int, fmt: str) -> np.ndarray:
    av = import_av()
    with av.open(str(path)) as container:
        for number, frame in enumerate(container.decode(video=0)):
            if number == index:
                return frame.to_ndarray(format=fmt)
    raise SystemExit(f"{path} has fewer than {index + 1} frames")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frame", type=int, default=20)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--out", type=Path, default=TARGET)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bgm_video_docs_") as temp:
        work = Path(temp)
        clip, _, plate = make_clip(work / "clip.mp4", spec=ClipSpec(size=(320, 240), frames=30, vfr=True, audio=True))
        save_image(work / "plate.png", plate)
        export = ["export", "--format", "onnx", "-o", str(work / "model.onnx"), "--resolution", "320x240"]
        _run(export + (["--checkpoint", args.checkpoint] if args.checkpoint else []))
        _run(["matte", "--src", str(clip), "--bgr", str(work / "plate.png"), "-o", str(work / "out"),
              "--model", str(work / "model.onnx"), "--outputs", ",".join(KINDS), "--batch", "2"])
        out = work / "out"
        tiles = {"src": _frame(clip, args.frame, "rgb24")}
        for kind in ("pha", "fgr", "com", "err", "ref"):
            tiles[kind] = _frame(out / f"{kind}.mp4", args.frame, "rgb24")
        rgba = np.asarray(Image.open(out / "rgba" / f"{args.frame:06d}.png"))
        tiles["rgba"] = composite_over(rgba, checkerboard(*rgba.shape[:2], cell=8))
    labels = {"src": "src (clip.mp4)", "pha": "pha.mp4", "fgr": "fgr.mp4", "com": "com.mp4 (over green)",
              "rgba": "rgba/*.png (over checker)", "err": "err.mp4", "ref": "ref.mp4"}
    height, width = 120, 160
    caption = 16
    canvas = Image.new("RGB", (width * 4, (height + caption) * 2), "white")
    draw = ImageDraw.Draw(canvas)
    for slot, (name, image) in enumerate(tiles.items()):
        x, y = (slot % 4) * width, (slot // 4) * (height + caption)
        canvas.paste(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR), (x, y + caption))
        draw.text((x + 3, y + 2), labels[name], fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out, optimize=True)
    print(f"wrote {args.out} (frame {args.frame})")


if __name__ == "__main__":
    main()
