"""Every option of ``bgm-deploy matte`` is honoured or refused on photos, footage and ``--server`` alike.

The options are read from the command itself: a new option fails this test until it is put
in a run below (honoured: its effect is checked) or in ``REFUSED`` (refused: exit 2 and a
one-line error naming it). Runs combine several options each to keep the module short; the
server column sends the same clip and photos to a real tritonserver.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

av = pytest.importorskip("av")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "runtimes"))
import model_files  # noqa: E402

from benchmarks.make_video_clips import ClipSpec, make_clip  # noqa: E402
from bgm_deploy.cli import cli  # noqa: E402
from model.checkpoint import build_model  # noqa: E402

COLUMNS = ("photos", "video", "server")
SETUP = {"src", "bgr", "output"}  # what every run names; not options of the job
HAS_SERVER = importlib.util.find_spec("pytriton") is not None and importlib.util.find_spec("tritonclient") is not None


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("matrix")
    onnx = model_files.model_file("onnx", tmp_path_factory.getbasetemp() / "bgm_models")
    shutil.copy(onnx, root / "m.onnx")
    (root / "m.onnx.bgm.json").write_text(Path(str(onnx) + ".bgm.json").read_text())
    torch.save(build_model(model_files.TEST_CONFIG).state_dict(), root / "ck.pth")
    clip, _, plate = make_clip(root / "clip.mp4", spec=ClipSpec(size=(160, 120), frames=6, audio=True))
    Image.fromarray(plate).save(root / "plate.png")
    (root / "photos").mkdir()
    with av.open(str(clip)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index < 3:
                frame.to_image().save(root / "photos" / f"p{index}.png")
    return {"root": root, "onnx": root / "m.onnx", "ckpt": root / "ck.pth", "clip": clip, "plate": root / "plate.png",
            "photos": root / "photos"}


@pytest.fixture(scope="module")
def server(ws: dict[str, Path]) -> Iterator[str]:
    if not HAS_SERVER:
        pytest.skip("needs the serving packages: pip install --no-deps -r requirements-serve.txt")
    from bgm_deploy.model_spec import ModelSpec
    from bgm_deploy.serve.repository import TritonModelOptions
    from bgm_deploy.serve.server import ServeConfig, TritonServer, with_free_ports

    config = with_free_ports(ServeConfig(spec=ModelSpec(model=str(ws["onnx"])),
                                         options=TritonModelOptions(outputs=("pha", "fgr"), pad=True)))
    with TritonServer(config) as running:
        yield running.http_url


def _matte(ws: dict[str, Path], column: str, out: str, *args: str, server: str | None = None) -> tuple[int, str, dict]:
    src = ws["photos"] if column == "photos" else ws["clip"]
    bgr = ws["plate"]
    model = ["--server", server] if column == "server" else ["--model", str(ws["onnx"])]
    if column == "server" and "--model" in args:
        model = ["--server", server or ""]
    report = ws["root"] / f"{out}.json"
    result = CliRunner().invoke(cli, ["matte", "--src", str(src), "--bgr", str(bgr), "-o", str(ws["root"] / out),
                                      *model, *args, "--report", str(report)])
    assert "Traceback" not in result.output and (result.exception is None or isinstance(result.exception, SystemExit))
    data = json.loads(report.read_text()) if report.exists() else {}
    return result.exit_code, result.output, data


# Refused options: per column, the arguments and a fragment of the one-line error.
REFUSED: dict[str, dict[str, tuple[tuple[str, ...], str]]] = {
    "photos": {
        "align_mode": (("--align", "--align-mode", "frame"), "--align-mode applies to video"),
        "crf": (("--crf", "30"), "--crf applies to video"),
        "preset": (("--preset", "veryfast"), "--preset applies to video"),
        "audio": (("--no-audio",), "--audio/--no-audio applies to video"),
        "rate": (("--rate", "24"), "--rate applies to image-sequence sources"),
        "max_frames": (("--max-frames", "2"), "--max-frames applies to video"),
        "src_format": (("--src-format", "mpegts"), "--src-format applies to live sources"),
        "concurrency": (("--concurrency", "2"), "apply with --server"),
        "shared_memory": (("--shared-memory",), "apply with --server"),
        "server_model": (("--server-model", "bgm"), "apply with --server"),
        "ray_address": (("--ray", ""), "--ray needs local, auto or the HOST:PORT"),
        "ray_workers": (("--ray-workers", "2"), "--ray-workers applies with --ray only"),
    },
    "video": {
        "fgr_format": (("--fgr-format", "jpg", "--outputs", "fgr"), "--format fgr=jpg does not apply to video"),
        "rate": (("--rate", "24"), "--rate applies to image-sequence sources"),
        "sequence": (("--sequence",), "is not a folder of numbered frames"),
        "concurrency": (("--concurrency", "2"), "apply with --server"),
        "shared_memory": (("--shared-memory",), "apply with --server"),
        "server_model": (("--server-model", "bgm"), "apply with --server"),
        "ray_address": (("--ray", "local", "--max-frames", "2"), "--max-frames does not apply with --ray"),
        "ray_workers": (("--ray-workers", "2"), "--ray-workers applies with --ray only"),
    },
    "server": {
        **{name: (args, "--server sends the work to running servers") for name, args in {
            "model": ("--model", "x.onnx"), "checkpoint": ("--checkpoint", "ck.pth"), "config_file": ("--config", "c.json"),
            "seed": ("--seed", "1"), "backbone": ("--backbone", "resnet50"), "backbone_scale": ("--backbone-scale", "0.25"),
            "refine_mode": ("--refine-mode", "full"), "refine_sample_pixels": ("--refine-sample-pixels", "320"),
            "refine_threshold": ("--refine-threshold", "0.2"), "target": ("--target", "cpu"),
            "allow_fallback": ("--allow-fallback",), "threads": ("--threads", "1"), "provider": ("--provider", "cpu"),
            "runtime": ("--runtime", "openvino"), "openvino_precision": ("--openvino-precision", "f32"),
        }.items()},
        "fgr_format": (("--fgr-format", "jpg", "--outputs", "fgr"), "--format fgr=jpg does not apply to video"),
        "rate": (("--rate", "24"), "--rate applies to image-sequence sources"),
        "sequence": (("--sequence",), "is not a folder of numbered frames"),
        "ray_address": (("--ray", "local"), "--ray and --server are alternatives"),
        "ray_workers": (("--ray-workers", "2"), "--ray-workers applies with --ray only"),
    },
}
HONOURED: dict[str, set[str]] = {column: set() for column in COLUMNS}


def _honours(column: str, *names: str) -> None:
    HONOURED[column].update(names)


def _image(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(int)


def _frames(path: Path) -> list[np.ndarray]:
    if path.is_dir():
        return [_image(p) for p in sorted(path.glob("*.png"))]
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24").astype(int) for f in container.decode(video=0)]


def _check_outputs_backdrop_resize(column: str, out: Path, data: dict) -> None:
    """--outputs, --format, --backdrop, --resize, --batch, --workers, --padding, --report."""
    if column == "photos":
        pha, fgr, com = (_image(out / kind / "p1.png") for kind in ("pha", "fgr", "com"))
        rgba = _image(out / "rgba" / "p1.png")
        assert pha.shape == (60, 80) and rgba.shape == (60, 80, 4)  # --resize 80x60
    else:
        pha = _frames(out / "pha")[1]
        fgr, com = _frames(out / "fgr")[1], _frames(out / "com")[1]
        assert pha.shape == (60, 80) and len(_frames(out / "rgba")) == 6
    alpha = pha[..., None] / 255.0
    expected = fgr * alpha + np.array([0, 0, 255]) * (1 - alpha)  # com over --backdrop #0000ff
    assert np.abs(com - expected).max() <= 2
    options = data["options"]
    assert (options["batch"], options["workers"], options["backdrop"]) == (2, 1, "#0000ff")
    assert data["model"]["padding"] == "reflect"  # the predictor's, or the server client's


@pytest.mark.parametrize("column", COLUMNS)
def test_every_option_is_honoured_or_refused(column: str, ws: dict[str, Path], request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("server") if column == "server" else None
    formats = "png" if column == "photos" else "pha=png,fgr=png,com=png,rgba=png"

    # One run honouring most of the job's options at once.
    code, output, data = _matte(ws, column, f"{column}-a", "--outputs", "pha,fgr,com,rgba", "--format", formats,
                                "--backdrop", "#0000ff", "--resize", "80x60", "--batch", "2", "--workers", "1",
                                "--padding", "reflect", server=url)
    assert code == 0, output
    _check_outputs_backdrop_resize(column, ws["root"] / f"{column}-a", data)
    _honours(column, "outputs", "formats", "backdrop", "resize", "batch", "workers", "padding", "report_path")

    # Resume and replace.
    code, output, data = _matte(ws, column, f"{column}-a", "--outputs", "pha,fgr,com,rgba", "--format", formats,
                                "--backdrop", "#0000ff", "--resize", "80x60", "--skip-existing", server=url)
    assert code == 0, output
    assert data["counts"]["skipped"] == (3 if column == "photos" else 0) or "nothing to do" in output
    code, output, _ = _matte(ws, column, f"{column}-a", "--outputs", "pha", "--format", "png", "--resize", "80x60",
                             server=url)
    assert code == 2 and "--overwrite" in output
    code, output, data = _matte(ws, column, f"{column}-a", "--outputs", "pha", "--format", "png", "--resize", "80x60",
                                "--overwrite", "--allow-partial", server=url)
    assert code == 0, output
    assert data["options"]["allow_partial"] is True and data["options"]["overwrite"] is True
    _honours(column, "skip_existing", "overwrite", "allow_partial")

    # Alignment (and, for footage, its mode, quality, audio and length options).
    if importlib.util.find_spec("cv2") is not None:
        extra = ("--align-mode", "frame", "--max-frames", "3", "--crf", "30", "--preset", "veryfast", "--no-audio") \
            if column != "photos" else ()
        code, output, data = _matte(ws, column, f"{column}-b", "--outputs", "pha", "--align", *extra, server=url)
        assert code == 0, output
        if column == "photos":
            assert all(item["align"] for item in data["items"])
        else:
            assert len(data["options"]["align_results"]) == 3 and data["counts"]["read"] == 3
            options = data["options"]
            assert (options["crf"], options["preset"], options["audio"]) == (30, "veryfast", False)
            with av.open(str(ws["root"] / f"{column}-b" / "pha.mp4")) as container:
                assert [s.type for s in container.streams] == ["video"]  # --no-audio
            _honours(column, "align_mode", "max_frames", "crf", "preset", "audio")
        _honours(column, "align")

    if column == "photos":
        code, output, _ = _matte(ws, column, "photos-c", "--fgr-format", "jpg", "--outputs", "fgr")
        assert code == 0 and (ws["root"] / "photos-c" / "fgr" / "p0.jpg").exists(), output
        frames = ws["root"] / "frames"
        frames.mkdir(exist_ok=True)
        for path in ws["photos"].iterdir():
            shutil.copy(path, frames / path.name)
        result = CliRunner().invoke(cli, ["matte", "--src", str(frames), "--sequence", "--bgr", str(ws["plate"]), "-o",
                                          str(ws["root"] / "photos-d"), "--model", str(ws["onnx"]), "--outputs", "pha"])
        assert result.exit_code == 0 and (ws["root"] / "photos-d" / "pha.mp4").exists(), result.output
        _honours(column, "fgr_format", "sequence")
    if column == "video":
        code, output, data = _matte(ws, column, "video-c", "--outputs", "pha", "--src-format", "mp4")
        assert code == 0 and data["source"]["kind"] == "live", output  # the file read as a stream of that format
        _honours(column, "src_format")
    if column == "server":
        code, output, data = _matte(ws, column, "server-c", "--outputs", "pha", "--concurrency", "2",
                                    "--shared-memory", "--server-model", "bgm", server=url)
        assert code == 0, output
        model = data["model"]
        assert (model["concurrency"], model["model_name"]) == (2, "bgm") and "shared-memory" in model["provider"]
        _honours(column, "servers", "concurrency", "shared_memory", "server_model")
        code, output, _ = _matte(ws, column, "server-d", "--outputs", "pha", "--src-format", "mp4", server=url)
        assert code == 0, output
        _honours(column, "src_format")
    else:
        _check_model_options(column, ws)
        if HAS_SERVER:  # the same source through a server: what --server means for this column
            url = request.getfixturevalue("server")
            result = CliRunner().invoke(cli, ["matte", "--src", str(ws["photos"] if column == "photos" else ws["clip"]),
                                              "--bgr", str(ws["plate"]), "-o", str(ws["root"] / f"{column}-s"),
                                              "--server", url, "--outputs", "pha"])
            assert result.exit_code == 0, result.output
            _honours(column, "servers")

    for name, (args, fragment) in REFUSED[column].items():
        result = CliRunner().invoke(cli, ["matte", "--src", str(ws["photos"] if column == "photos" else ws["clip"]),
                                          "--bgr", str(ws["plate"]), "-o", str(ws["root"] / f"{column}-refused"),
                                          *(["--server", url] if column == "server" else ["--model", str(ws["onnx"])]),
                                          *args], catch_exceptions=False)
        errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
        assert result.exit_code == 2 and len(errors) == 1 and fragment in errors[0], (name, result.output)
        assert not (ws["root"] / f"{column}-refused").exists()

    options = {p.name for p in cli.commands["matte"].params} - SETUP
    covered = HONOURED[column] | set(REFUSED[column])
    if importlib.util.find_spec("cv2") is None:
        covered |= {"align", "align_mode", "max_frames", "crf", "preset", "audio"}
    assert options - covered == set(), f"{column}: options neither honoured nor refused here"


def _check_model_options(column: str, ws: dict[str, Path]) -> None:
    """The model and target options (the same spec on photos and footage)."""
    runs: list[tuple[tuple[str, ...], Callable[[dict[str, Any]], bool], tuple[str, ...]]] = [
        (("--target", "openvino-cpu", "--openvino-precision", "f32", "--threads", "1"),
         lambda m: m["target"] == "openvino-cpu" and m["provider"] == "openvino:CPU/f32" and m["spec"]["threads"] == 1,
         ("target", "openvino_precision", "threads")),
        (("--runtime", "openvino"), lambda m: m["target"] == "openvino-cpu", ("runtime",)),
        (("--provider", "cpu", "--allow-fallback"), lambda m: m["target"] == "onnxruntime-cpu" and m["spec"]["allow_fallback"],
         ("provider", "allow_fallback")),
        (("--config", str(ws["onnx"]) + ".bgm.json"), lambda m: m["spec"]["config_file"].endswith(".bgm.json"),
         ("config_file",)),
    ]
    for args, check, names in runs:
        code, output, data = _matte(ws, column, f"{column}-m", "--outputs", "pha", "--overwrite", *args)
        assert code == 0 and check(data["model"]), (args, output)
        _honours(column, *names)
    with_checkpoint = ("--backbone", "mobilenetv2", "--backbone-scale", "0.125", "--refine-mode", "thresholding",
                       "--refine-threshold", "0.2", "--refine-sample-pixels", "320")
    code, output, data = _matte_with(ws, column, "--checkpoint", str(ws["ckpt"]), *with_checkpoint)
    assert code == 0, output
    config = data["model"]["model_config"]
    assert (config["backbone_scale"], config["refine_mode"], config["refine_threshold"], config["refine_sample_pixels"]) \
        == (0.125, "thresholding", 0.2, 320) and data["model"]["runner"] == "pytorch"
    code, output, data = _matte_with(ws, column, "--seed", "3")
    assert code == 0 and data["model"]["weights"] == "synthetic (seed 3)", output
    _honours(column, "model", "checkpoint", "seed", "backbone", "backbone_scale", "refine_mode", "refine_threshold",
             "refine_sample_pixels")


def _matte_with(ws: dict[str, Path], column: str, *args: str) -> tuple[int, str, dict]:
    src = ws["photos"] if column == "photos" else ws["clip"]
    report = ws["root"] / f"{column}-w.json"
    out = ws["root"] / f"{column}-w"
    shutil.rmtree(out, ignore_errors=True)
    result = CliRunner().invoke(cli, ["matte", "--src", str(src), "--bgr", str(ws["plate"]), "-o", str(out),
                                      "--outputs", "pha", "--resize", "80x60", *args, "--report", str(report)])
    return result.exit_code, result.output, json.loads(report.read_text()) if report.exists() else {}
