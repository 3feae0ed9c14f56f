"""Video matting (``bgm_deploy.matte`` on footage, ``bgm-deploy matte`` on footage) on clips made from
the bundled real photo pairs by ``benchmarks/make_video_clips.py``."""

from __future__ import annotations

import fractions
import json
import re
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

av = pytest.importorskip("av")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "runtimes"))
import model_files  # noqa: E402

from benchmarks.make_video_clips import ClipSpec, make_clip, render_frames, write_clip  # noqa: E402
from bgm_deploy.cli import cli  # noqa: E402
from bgm_deploy.images import to_uint8  # noqa: E402
from bgm_deploy.predictor import Predictor  # noqa: E402
from bgm_deploy.matte import MatteOptions, MatteReport, iter_mattes, matte, parse_formats  # noqa: E402
from bgm_deploy.matte.footage import MANIFEST, is_video_job  # noqa: E402
from model.errors import RuntimeUnavailableError, UsageError, VideoError  # noqa: E402

FRAMES = 16
VideoOptions = MatteOptions


def matte_video(src: Any, bgr: Any, out: Any, predictor: Any = None, options: MatteOptions | None = None,
                report_path: Path | None = None, **model: Any) -> MatteReport:
    """The footage job with a loaded predictor (or a model spec's fields)."""
    from bgm_deploy.model_spec import spec_for_config

    chosen = predictor if predictor is not None else spec_for_config(model.get("model_config"))
    return matte(src, bgr, out, chosen, options, report_path=report_path)


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 320x240 H.264 clip, a VFR variant with an AAC track, their plate, and odd cases."""
    root = tmp_path_factory.mktemp("clips")
    cfr, alphas, plate = make_clip(root / "cfr.mp4", spec=ClipSpec(frames=FRAMES))
    vfr, _, _ = make_clip(root / "vfr_audio.mp4", spec=ClipSpec(frames=FRAMES, vfr=True, audio=True, seed=1))
    Image.fromarray(plate).save(root / "plate.png")
    return {"root": root, "cfr": cfr, "vfr": vfr, "plate": root / "plate.png", "alphas": alphas,
            "plate_array": plate}


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_files.model_file("onnx", tmp_path_factory.getbasetemp() / "bgm_models")


@pytest.fixture(scope="module")
def predictor(onnx_model: Path) -> Predictor:
    with Predictor.load(onnx_model) as loaded:
        yield loaded


def decode(path: Path) -> list[Any]:
    with av.open(str(path)) as container:
        return [frame for frame in container.decode(video=0)]


def times(path: Path) -> list[fractions.Fraction]:
    return [frame.pts * frame.time_base for frame in decode(path)]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if (p.name.startswith(".") and p.name != MANIFEST)
                  or p.suffix == ".part")


class CountingPredictor:
    """A predictor that counts frames, and can be made to fail after some calls."""

    def __init__(self, inner: Predictor, fail_after: int | None = None, error: BaseException | None = None) -> None:
        self.inner, self.fail_after, self.error = inner, fail_after, error
        self.frames = 0
        self.calls = 0
        self.source, self.available_outputs = inner.source, inner.available_outputs

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def predict(self, src: np.ndarray, bgr: np.ndarray, outputs: Any) -> Any:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise self.error or KeyboardInterrupt()
        self.calls += 1
        self.frames += len(src)
        return self.inner.predict(src, bgr, outputs)


# -- parity and formats ----------------------------------------------------------------------------
def test_lossless_outputs_equal_the_predictor_frame_by_frame(clips: dict[str, Any], predictor: Predictor,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "out"
    options = VideoOptions(outputs=("pha", "fgr", "rgba"), formats={"pha": "png", "fgr": "ffv1", "rgba": "ffv1"})
    report = matte_video(clips["cfr"], clips["plate"], out, predictor=predictor, options=options)
    assert (report.counts["read"], report.counts["matted"], report.counts["written"]) == (FRAMES, FRAMES, FRAMES)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "fgr.mkv", "pha", "rgba.mkv"] and not leftovers(out)
    state = json.loads((out / MANIFEST).read_text())["outputs"]
    assert {kind: (s["frames"], s["complete"]) for kind, s in state.items()} == {
        "pha": (FRAMES, True), "fgr": (FRAMES, True), "rgba": (FRAMES, True)}

    plate = clips["plate_array"]
    fgr_frames = [f.to_ndarray(format="rgb24") for f in decode(out / "fgr.mkv")]
    rgba_frames = [f.to_ndarray(format="rgba") for f in decode(out / "rgba.mkv")]
    sources = decode(clips["cfr"])
    assert len(sources) == len(fgr_frames) == len(rgba_frames) == FRAMES
    for index, frame in enumerate(sources):
        expected = predictor.predict(frame.to_ndarray(format="rgb24"), plate, ("pha", "fgr", "rgba"))
        pha = np.asarray(Image.open(out / "pha" / f"{index:06d}.png"))
        np.testing.assert_array_equal(pha, to_uint8(expected.pha), err_msg=f"pha frame {index}")
        np.testing.assert_array_equal(fgr_frames[index], to_uint8(expected.fgr), err_msg=f"fgr frame {index}")
        np.testing.assert_array_equal(rgba_frames[index], expected.rgba, err_msg=f"rgba frame {index}")


def test_video_outputs_keep_timestamps_audio_size_and_count(clips: dict[str, Any], predictor: Predictor,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "out"
    options = VideoOptions(outputs=("pha", "fgr", "com", "rgba"), formats={"rgba": "prores"}, batch=3)
    report = matte_video(clips["vfr"], clips["plate"], out, predictor=predictor, options=options,
                         report_path=tmp_path / "report.json")
    assert set(report.outputs) == {"pha", "fgr", "com", "rgba"} and not leftovers(out)
    source_times = times(clips["vfr"])
    assert len(set(np.diff([float(t) for t in source_times]).round(3))) > 1  # really variable rate
    with av.open(str(clips["vfr"])) as container:
        source_audio = [bytes(p) for p in container.demux(audio=0) if p.size]
    for name in ("pha.mp4", "fgr.mp4", "com.mp4", "rgba.mov"):
        frames = decode(out / name)
        assert [(f.width, f.height) for f in frames] == [(320, 240)] * FRAMES, name
        assert [f.pts * f.time_base for f in frames] == source_times, name
        with av.open(str(out / name)) as container:
            audio = [bytes(p) for p in container.demux(audio=0) if p.size]
        assert audio == source_audio, f"{name}: audio packets not carried over untouched"
    rgba = decode(out / "rgba.mov")[5]
    assert rgba.format.name == "yuva444p10le"
    alpha = rgba.to_ndarray(format="rgba")[..., 3].astype(int)
    pha = decode(out / "pha.mp4")[5].to_ndarray(format="gray").astype(int)
    assert np.abs(alpha - pha).mean() < 3  # the same matte, through two lossy codecs
    com = decode(out / "com.mp4")[5].to_ndarray(format="rgb24")
    fgr = decode(out / "fgr.mp4")[5].to_ndarray(format="rgb24")
    background = alpha < 5
    assert abs(com[background].mean(axis=0) - np.array([120, 255, 155])).max() < 8  # the default backdrop
    assert np.abs(com.astype(int) - fgr).mean() > 10

    data = json.loads((tmp_path / "report.json").read_text())
    assert data["schema_version"] == 2 and data["counts"]["read"] == FRAMES and data["partial"] is False
    assert data["source"]["audio"] is True and data["formats"]["rgba"] == "prores"
    assert set(data["stages"]["encode"]) == {"pha", "fgr", "com", "rgba"} and data["stages"]["infer"] > 0


def test_a_max_frames_preview_keeps_only_its_own_sound(clips: dict[str, Any], predictor: Predictor,
                                                       tmp_path: Path) -> None:
    """--max-frames: the sound stops with the last matted frame (a full run keeps it all, above)."""
    report = matte_video(clips["vfr"], clips["plate"], tmp_path, predictor=predictor,
                         options=VideoOptions(outputs=("pha",), formats={"pha": "h264"}, max_frames=6))
    assert report.partial and report.counts["matted"] == 6
    with av.open(str(clips["vfr"])) as container:
        source_audio = [p for p in container.demux(audio=0) if p.size]
    with av.open(str(tmp_path / "pha.mp4")) as container:
        video = [p for p in container.demux(video=0) if p.size]
        end = max((p.pts + p.duration) * p.time_base for p in video)
    with av.open(str(tmp_path / "pha.mp4")) as container:
        audio = [p for p in container.demux(audio=0) if p.size]
    assert len(video) == 6 and 0 < len(audio) < len(source_audio)
    assert all(p.pts * p.time_base < end for p in audio)


def test_vp9_alpha_and_a_container_without_the_audio_codec(clips: dict[str, Any], predictor: Predictor,
                                                           tmp_path: Path) -> None:
    report = matte_video(clips["vfr"], clips["plate"], tmp_path, predictor=predictor,
                         options=VideoOptions(outputs=("rgba",), formats={"rgba": "vp9"}))
    assert any("audio not carried over" in w and "rgba.webm" in w for w in report.warnings)
    with av.open(str(tmp_path / "rgba.webm")) as container:
        stream = container.streams.video[0]
        assert [s.type for s in container.streams] == ["video"]
        assert stream.codec_context.name == "vp9" and container.streams.video[0].frames in (0, FRAMES)
    assert len(decode(tmp_path / "rgba.webm")) == FRAMES


def test_image_sequence_source_and_background_video(clips: dict[str, Any], predictor: Predictor,
                                                    tmp_path: Path) -> None:
    frames, _, plate = render_frames("astronaut_coffee_640x480", ClipSpec(frames=6))
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(frames, 1):  # frame_2 sorts before frame_10
        Image.fromarray(frame).save(folder / f"frame_{index * 2}.png")
    bgr_video = write_clip(tmp_path / "plate.mp4", [plate] * 6, ClipSpec(rate=25))
    options = VideoOptions(outputs=("pha", "com"), formats={"pha": "png"}, rate=25, backdrop=str(bgr_video))
    report = matte_video(folder, bgr_video, tmp_path / "out", predictor=predictor, options=options)
    assert sorted(p.name for p in (tmp_path / "out" / "pha").iterdir()) == sorted(
        f"frame_{i * 2}.png" for i in range(1, 7))
    assert report.counts["written"] == 6
    with av.open(str(tmp_path / "out" / "com.mp4")) as container:
        assert container.streams.video[0].average_rate == 25
    # The first frame of the sequence is frame_2, not frame_10.
    first = predictor.predict(frames[0], decode(bgr_video)[0].to_ndarray(format="rgb24"), ("pha",))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "pha" / "frame_2.png")), to_uint8(first.pha))


def test_resume_a_png_sequence(clips: dict[str, Any], predictor: Predictor, tmp_path: Path) -> None:
    options = VideoOptions(outputs=("pha", "rgba"), formats={"pha": "png"})
    matte_video(clips["cfr"], clips["plate"], tmp_path, predictor=predictor, options=options)
    finished = {p.name: p.read_bytes() for p in (tmp_path / "pha").iterdir()}
    for name in ("000003.png", "000011.png"):
        (tmp_path / "pha" / name).unlink()
    (tmp_path / "rgba" / "000011.png").unlink()
    with pytest.raises(UsageError, match="already exists.*--skip-existing"):
        matte_video(clips["cfr"], clips["plate"], tmp_path, predictor=predictor, options=options)
    counting = CountingPredictor(predictor)
    report = matte_video(clips["cfr"], clips["plate"], tmp_path, predictor=counting,  # type: ignore[arg-type]
                         options=VideoOptions(outputs=("pha", "rgba"), formats={"pha": "png"}, skip_existing=True))
    assert counting.frames == 2 and report.counts["skipped"] == FRAMES - 2 and report.counts["matted"] == 2
    assert {p.name: p.read_bytes() for p in (tmp_path / "pha").iterdir()} == finished
    assert len(list((tmp_path / "rgba").iterdir())) == FRAMES


def test_an_interrupted_run_leaves_no_video(clips: dict[str, Any], predictor: Predictor, tmp_path: Path) -> None:
    failing = CountingPredictor(predictor, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        matte_video(clips["vfr"], clips["plate"], tmp_path, predictor=failing,  # type: ignore[arg-type]
                    options=VideoOptions(outputs=("pha", "fgr"), formats={"fgr": "png"}, batch=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, "fgr"] and not leftovers(tmp_path)
    assert json.loads((tmp_path / MANIFEST).read_text())["outputs"]["fgr"]["complete"] is False
    assert 0 < len(list((tmp_path / "fgr").iterdir())) < FRAMES  # whole PNG frames, to resume from


def test_iter_mattes_yields_frames_and_stops_early(clips: dict[str, Any], predictor: Predictor) -> None:
    seen = []
    for matted in iter_mattes(clips["vfr"], clips["plate"], predictor, outputs=("pha",),
                              options=VideoOptions(batch=2, queue_size=1)):
        seen.append((matted.index, matted.time, matted.pha.shape, matted.fgr))
        if len(seen) == 5:
            break
    assert [s[0] for s in seen] == [0, 1, 2, 3, 4] and all(s[2] == (240, 320) and s[3] is None for s in seen)
    assert [pytest.approx(s[1]) for s in seen] == [float(t) for t in times(clips["vfr"])[:5]]


def test_rotated_10bit_odd_sized_clip(tmp_path: Path, predictor: Predictor) -> None:
    spec = ClipSpec(size=(161, 121), frames=4, rotation=90, pix_fmt="yuv444p10le")
    clip, _, plate = make_clip(tmp_path / "phone.mp4", spec=spec)
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (121, 161)  # stored sideways
    Image.fromarray(plate).save(tmp_path / "plate.png")
    report = matte_video(clip, tmp_path / "plate.png", tmp_path / "out", predictor=predictor,
                         options=VideoOptions(outputs=("pha",)))
    assert report.source["rotation"] == 90 and report.source["pix_fmt"] == "yuv444p10le"
    assert any("odd size 161x121" in w for w in report.warnings)
    frames = decode(tmp_path / "out" / "pha.mp4")
    assert [(f.width, f.height) for f in frames] == [(161, 121)] * 4  # upright, size kept


# -- bad input ------------------------------------------------------------------------------------
def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["matte", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


def test_cli_on_a_clip_with_report(clips: dict[str, Any], onnx_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = _cli("--src", str(clips["vfr"]), "--bgr", str(clips["plate"]), "-o", str(out), "--model",
                        str(onnx_model), "--outputs", "pha,com", "--format", "pha=ffv1", "--backdrop", "#0000ff",
                        "--batch", "2", "--report", str(tmp_path / "r.json"))
    assert code == 0, output
    assert f"{FRAMES} frames matted" in output and sorted(p.name for p in out.iterdir()) == [MANIFEST, "com.mp4", "pha.mkv"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["counts"]["written"] == FRAMES and report["counts"]["lost"] == 0
    assert report["options"]["backdrop"] == "#0000ff" and report["options"]["batch"] == 2
    code, output = _cli("--src", str(clips["vfr"]), "--bgr", str(clips["plate"]), "-o", str(out), "--model",
                        str(onnx_model), "--outputs", "pha,com", "--format", "pha=ffv1")
    assert code == 2 and "already exists" in output and "--overwrite" in output


@pytest.fixture(scope="module")
def bad_inputs(clips: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    data = clips["cfr"].read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    with av.open(str(root / "audio_only.mp4"), "w") as container:
        stream = container.add_stream("aac", rate=48000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 48000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with av.open(str(root / "empty.mkv"), "w") as container:
        stream = container.add_stream("ffv1", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv444p"
        container.start_encoding()  # a header, a video stream, no frame
    write_clip(root / "small.mp4", render_frames("astronaut_coffee_640x480", ClipSpec(size=(160, 120), frames=4))[0],
               ClipSpec(size=(160, 120), frames=4))
    frames = render_frames("astronaut_coffee_640x480", ClipSpec(frames=FRAMES))[0]
    write_clip(root / "rate25.mp4", frames, ClipSpec(frames=FRAMES, rate=25))
    write_clip(root / "short.mp4", frames[:5], ClipSpec(frames=5))
    return {"root": root, **{p.stem: p for p in root.iterdir()}}


@pytest.mark.parametrize(
    ("case", "bgr", "extra", "code", "message"),
    [
        ("truncated", "plate", (), 1, "cannot open.*truncated, corrupt or not a video"),
        ("audio_only", "plate", (), 1, "has no video stream \\(streams: audio\\)"),
        ("empty", "plate", (), 1, "no frames"),
        ("missing.mp4", "plate", (), 2, "does not exist"),
        ("cfr", "small", (), 2, "is 160x120 but the source is 320x240"),
        ("cfr", "rate25", (), 2, "runs at 25.000 fps but the source at 30.000 fps"),
        ("cfr", "short", (), 2, "has 5 frames but the source 16"),
        ("cfr", "plate", ("--format", "h264-nvenc"), 2, "h264_nvenc encoder cannot be opened here"),
        ("cfr", "plate", ("--format", "rgba=h264", "--outputs", "rgba"), 2, "cannot store alpha"),
        ("cfr", "plate", ("--format", "hevc"), 2, "--format pha=hevc, fgr=hevc is not valid; photos: png, jpg; video: h264"),
    ],
)
def test_bad_inputs_give_one_line_and_no_output(case: str, bgr: str, extra: tuple[str, ...], code: int, message: str,
                                                clips: dict[str, Any], bad_inputs: dict[str, Path],
                                                onnx_model: Path, tmp_path: Path) -> None:
    if case == "cfr" and "h264-nvenc" in extra:
        try:
            from bgm_deploy.matte.video_io import check_format

            check_format("pha", "h264-nvenc", "gray", (320, 240))
            pytest.skip("NVENC works on this machine")
        except RuntimeUnavailableError:
            pass
    src = clips.get(case) or bad_inputs.get(case) or bad_inputs["root"] / case
    background = clips["plate"] if bgr == "plate" else bad_inputs[bgr]
    out = tmp_path / "out"
    exit_code, output = _cli("--src", str(src), "--bgr", str(background), "-o", str(out), "--model", str(onnx_model),
                             *extra)
    assert exit_code == code, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists() or not any(out.rglob("*"))


def _serve_once(payload: bytes) -> tuple[str, threading.Thread]:
    """A loopback TCP server that sends ``payload`` to the first client, then hangs up."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def serve() -> None:
        with server:
            connection, _ = server.accept()
            with connection:
                connection.sendall(payload)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"tcp://127.0.0.1:{server.getsockname()[1]}", thread


def test_live_source_that_stops_mid_run(clips: dict[str, Any], predictor: Predictor, tmp_path: Path) -> None:
    frames = render_frames("astronaut_coffee_640x480", ClipSpec(frames=FRAMES))[0]
    stream = write_clip(tmp_path / "live.ts", frames, ClipSpec(frames=FRAMES))
    data = stream.read_bytes()
    url, server = _serve_once(data[: len(data) * 2 // 3])  # the camera drops out a third of the way from the end
    report = matte_video(url, clips["plate"], tmp_path / "out", predictor=predictor,
                         options=VideoOptions(outputs=("pha",), src_format="mpegts"))
    server.join(5)
    assert report.source["kind"] == "live" and 0 < report.counts["read"] < FRAMES
    assert report.counts["matted"] == report.counts["read"] and any("live source" in w for w in report.warnings)
    assert len(decode(tmp_path / "out" / "pha.mp4")) == report.counts["read"]
    assert float(times(tmp_path / "out" / "pha.mp4")[0]) == 0.0

    url, server = _serve_once(b"")  # a source that sends nothing: an error, no output
    with pytest.raises(VideoError):
        matte_video(url, clips["plate"], tmp_path / "none", predictor=predictor,
                    options=VideoOptions(outputs=("pha",), src_format="mpegts"))
    assert not (tmp_path / "none").exists() or not any((tmp_path / "none").rglob("*"))


def test_option_checks() -> None:
    assert parse_formats("pha=ffv1, rgba=prores") == {"pha": "ffv1", "rgba": "prores"}
    assert parse_formats("png", ("pha", "fgr")) == {"pha": "png", "fgr": "png"}
    with pytest.raises(UsageError, match="KIND=FORMAT"):
        parse_formats("alpha=png")
    for bad in ({"outputs": ("pha", "com2")}, {"formats": {"com": "png"}}, {"crf": 60}, {"align_mode": "always"},
                {"overwrite": True, "skip_existing": True}, {"preset": "bogus"}, {"backdrop": "#ffffff"}):
        with pytest.raises(UsageError):
            VideoOptions(**bad)  # type: ignore[arg-type]


def test_without_pyav_one_line_names_the_extra(monkeypatch: pytest.MonkeyPatch, clips: dict[str, Any]) -> None:
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(RuntimeUnavailableError, match=r'pip install "bgm-deploy\[video\]"'):
        matte_video(clips["cfr"], clips["plate"], "unused", model_config=model_files.TEST_CONFIG,
                    options=MatteOptions(outputs=("pha",)))
    assert not Path("unused").exists()


def test_align_once_per_clip_or_every_frame(clips: dict[str, Any], predictor: Predictor, tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    for mode, fits in (("clip", 1), ("frame", 4)):
        report = matte_video(clips["cfr"], clips["plate"], tmp_path / mode, predictor=predictor,
                             options=VideoOptions(outputs=("pha",), formats={"pha": "png"}, align=True, align_mode=mode,
                                                  max_frames=4))
        assert report.counts["matted"] == 4 and len(report.options["align_results"]) == fits
        assert all("applied" in result for result in report.options["align_results"])


def test_align_clip_moves_every_frame_of_a_background_video(clips: dict[str, Any], tmp_path: Path) -> None:
    """--align-mode clip fits once; a background *video* still changes frame by frame (it froze on
    its first frame before)."""
    pytest.importorskip("cv2")
    import threading

    from bgm_deploy.matte.footage import open_footage

    plate = clips["plate_array"].astype(np.int16)
    frames = [np.clip(plate + 12 * i, 0, 255).astype(np.uint8) for i in range(FRAMES)]  # the light comes up
    background = write_clip(tmp_path / "plate.mkv", frames, ClipSpec(frames=FRAMES, codec="ffv1"))
    footage = open_footage(clips["cfr"], background, MatteOptions(outputs=("pha",), align=True, align_mode="clip",
                                                                  max_frames=4))
    try:
        means = [float(unit.bgr.mean()) for unit in footage.units(threading.Event())]
    finally:
        footage.close()
    assert len(footage.align_results) == 1 and len(means) == 4
    assert all(later > earlier + 5 for earlier, later in zip(means, means[1:])), means


def test_a_background_video_of_another_size_is_resized_with_resize(clips: dict[str, Any], tmp_path: Path) -> None:
    """As a still plate: with --resize both are resized; without it the sizes must match."""
    import threading

    from bgm_deploy.matte.footage import open_footage

    small = np.ascontiguousarray(clips["plate_array"][::2, ::2])
    background = write_clip(tmp_path / "small.mkv", [small] * FRAMES, ClipSpec(frames=FRAMES, codec="ffv1"))
    with pytest.raises(UsageError, match="is 160x120 but the source is 320x240"):
        open_footage(clips["cfr"], background, MatteOptions(outputs=("pha",)))
    footage = open_footage(clips["cfr"], background, MatteOptions(outputs=("pha",), resize=(160, 120), max_frames=2))
    try:
        shapes = [(unit.src.shape, unit.bgr.shape) for unit in footage.units(threading.Event())]
    finally:
        footage.close()
    assert shapes == [((120, 160, 3), (120, 160, 3))] * 2


def test_progress_bar_on_a_terminal_and_log_lines_otherwise() -> None:
    import io

    from bgm_deploy.progress import JobProgress

    terminal = io.StringIO()
    bar = JobProgress("frames", stream=terminal, tty=True, refresh=0)
    bar(5, 10)
    bar(10, 10)
    bar.close()
    assert "5/10" in terminal.getvalue() and "10/10" in terminal.getvalue()  # tqdm's bar
    log = io.StringIO()
    lines = JobProgress("frames", stream=log, tty=False, every=5.0)
    lines.started -= 100  # as if 100 s had passed: a steady 0.05-0.11 fps
    for frame in range(1, 12):
        lines(frame, None)  # live: no total, no ETA
    assert log.getvalue().splitlines() == ["1 frames 0.01 fps ETA --:--"]  # at most one line per 5 s
    failure = io.StringIO()
    JobProgress("img", stream=failure, tty=False, quiet=True)(1, 2, None, "failed", "bad file")
    assert failure.getvalue() == "FAILED: : bad file\n"  # failures print even when quiet


def test_which_jobs_are_video_jobs(tmp_path: Path) -> None:
    assert is_video_job("clip.MOV") and is_video_job("rtsp://cam/stream") and is_video_job("/dev/video0")
    assert is_video_job("frames/", sequence=True) and is_video_job("0", src_format="v4l2")
    assert is_video_job("photo.jpg", "plate.mp4")  # a background video makes it footage
    assert not is_video_job("photos/", "plate.jpg") and not is_video_job("shot.jpg", "plate.jpg")


def test_cli_image_sequence(tmp_path: Path, onnx_model: Path) -> None:
    frames, _, plate = render_frames("astronaut_coffee_640x480", ClipSpec(frames=3))
    (tmp_path / "frames").mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / "frames" / f"f{index:03d}.jpg")
    Image.fromarray(plate).save(tmp_path / "plate.png")
    code, output = _cli("--src", str(tmp_path / "frames"), "--sequence", "--rate", "24", "--bgr",
                        str(tmp_path / "plate.png"), "-o", str(tmp_path / "out"), "--model", str(onnx_model),
                        "--outputs", "pha,rgba")
    assert code == 0, output
    assert sorted(p.name for p in (tmp_path / "out" / "rgba").iterdir()) == ["f000.png", "f001.png", "f002.png"]
    with av.open(str(tmp_path / "out" / "pha.mp4")) as container:
        assert container.streams.video[0].average_rate == 24 and container.streams.video[0].frames == 3
