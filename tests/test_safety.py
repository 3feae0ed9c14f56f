"""Every path as safe as the photo path (issue 22): each case a new user hit, through the CLI.

Each case asserts: the exit code (non-zero where nothing useful was produced), one clear line
naming the problem and the fix, no traceback, no input changed (sha256), and no partial or
temp file left. Long jobs are interrupted for real (SIGTERM, SIGKILL) in a subprocess; the
server cases run against a real tritonserver in tests/bgm_deploy/serve/test_server.py.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

av = pytest.importorskip("av")

sys.path.insert(0, str(Path(__file__).resolve().parent / "runtimes"))
import model_files  # noqa: E402

from benchmarks.make_video_clips import ClipSpec, make_clip, render_frames  # noqa: E402
from bgm_deploy.cli import cli  # noqa: E402
from model.checkpoint import build_model  # noqa: E402
from model.config import ModelConfig  # noqa: E402

FRAMES = 12
COFFEE = "astronaut_coffee_640x480"
running_as_root = os.geteuid() == 0


def _sha(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if ".part" in p.name or "bgm-deploy-tmp" in p.name)


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def _one_error(output: str, *fragments: str) -> None:
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Built once: a small ONNX model, a synthetic checkpoint, a TorchScript file, clips."""
    root = tmp_path_factory.mktemp("safety-assets")
    onnx = model_files.model_file("onnx", tmp_path_factory.getbasetemp() / "bgm_models")
    script = model_files.model_file("torchscript", tmp_path_factory.getbasetemp() / "bgm_models")
    torch.save(build_model(ModelConfig(seed=1)).state_dict(), root / "pytorch_mobilenetv2.pth")
    clip, _, plate = make_clip(root / "clip.mp4", spec=ClipSpec(size=(160, 120), frames=FRAMES))
    Image.fromarray(plate).save(root / "plate.png")
    # A clip whose header (moov first) lists every frame but whose data stops a quarter in.
    frames = render_frames(COFFEE, ClipSpec(size=(160, 120), frames=FRAMES))[0]
    with av.open(str(root / "whole.mp4"), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast", "g": "1"}  # every frame a keyframe
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    data = (root / "whole.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 4])
    (root / "whole.mp4").unlink()
    return {"root": root, "onnx": onnx, "torchscript": script, "checkpoint": root / "pytorch_mobilenetv2.pth",
            "clip": clip, "plate": root / "plate.png", "truncated": root / "truncated.mp4"}


@pytest.fixture()
def ws(assets: dict[str, Any], tmp_path: Path) -> dict[str, Path]:
    """A fresh workspace with copies of the assets (hashes taken by each test)."""
    for name in ("clip", "plate", "checkpoint", "truncated"):
        shutil.copy(assets[name], tmp_path / assets[name].name)
    shutil.copy(assets["onnx"], tmp_path / "m.onnx")
    shutil.copy(assets["torchscript"], tmp_path / "m.pt")
    src = Path(__file__).resolve().parents[1] / "bgm_deploy" / "data" / "pairs" / COFFEE
    for kind in ("src", "bgr"):
        Image.open(src / f"{kind}.jpg").resize((160, 120)).save(tmp_path / f"{kind}.jpg")
    return {"root": tmp_path, "clip": tmp_path / "clip.mp4", "plate": tmp_path / "plate.png",
            "ckpt": tmp_path / "pytorch_mobilenetv2.pth", "onnx": tmp_path / "m.onnx", "pt": tmp_path / "m.pt",
            "truncated": tmp_path / "truncated.mp4", "src": tmp_path / "src.jpg", "bgr": tmp_path / "bgr.jpg"}


# -- 1. the README's photo workflow ------------------------------------------------------------------
def test_the_readme_checkpoint_example_runs(ws: dict[str, Path]) -> None:
    before = _sha(ws["root"])
    code, output = _cli("matte", "--src", str(ws["src"]), "--bgr", str(ws["bgr"]), "-o", str(ws["root"] / "out"),
                        "--checkpoint", str(ws["ckpt"]))
    assert code == 0, output
    assert {p.name for p in (ws["root"] / "out").iterdir()} == {"pha", "fgr"}
    assert {k: v for k, v in _sha(ws["root"]).items() if not k.startswith("out")} == before


# -- 2. files destroyed without a word ------------------------------------------------------------------
def test_video_report_may_not_replace_the_source_clip(ws: dict[str, Path]) -> None:
    before = _sha(ws["root"])
    code, output = _cli("matte", "--src", str(ws["clip"]), "--bgr", str(ws["plate"]), "-o", str(ws["root"] / "out"),
                        "--model", str(ws["onnx"]), "--report", str(ws["clip"]))
    assert code == 2
    _one_error(output, "--report", "same file as --src")
    assert _sha(ws["root"]) == before and not (ws["root"] / "out").exists()


def test_video_output_may_not_replace_its_own_input(ws: dict[str, Path]) -> None:
    out = ws["root"] / "out"
    out.mkdir()
    shutil.copy(ws["clip"], out / "pha.mp4")
    before = _sha(ws["root"])
    code, output = _cli("matte", "--src", str(out / "pha.mp4"), "--bgr", str(ws["plate"]), "-o", str(out),
                        "--model", str(ws["onnx"]), "--outputs", "pha", "--overwrite")
    assert code == 2
    _one_error(output, "would replace --src", "choose another -o folder")
    assert _sha(ws["root"]) == before and not _leftovers(ws["root"])


def test_photo_output_may_not_replace_its_own_input(ws: dict[str, Path]) -> None:
    out = ws["root"] / "out"
    (out / "pha").mkdir(parents=True)
    shutil.copy(ws["src"], out / "pha" / "shot.png")
    before = _sha(ws["root"])
    code, output = _cli("matte", "--src", str(out / "pha" / "shot.png"), "--bgr", str(ws["bgr"]), "-o", str(out),
                        "--model", str(ws["onnx"]), "--outputs", "pha", "--overwrite")
    assert code == 2
    _one_error(output, "would replace --src")
    assert _sha(ws["root"]) == before


def test_serve_log_may_not_replace_the_model(ws: dict[str, Path]) -> None:
    before = _sha(ws["root"])
    code, output = _cli("serve", str(ws["onnx"]), "--log", str(ws["onnx"]), "--http-port", "0", "--grpc-port", "0",
                        "--metrics-port", "0")
    assert code == 2
    _one_error(output, "--log", "same file as MODEL")
    assert _sha(ws["root"]) == before


# -- 3. tracebacks ----------------------------------------------------------------------------------------
@pytest.mark.skipif(running_as_root, reason="root writes into read-only folders; the check is os.access-based")
def test_read_only_output_and_report_folders(ws: dict[str, Path]) -> None:
    locked = ws["root"] / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        args = ["matte", "--src", str(ws["clip"]), "--bgr", str(ws["plate"]), "--model", str(ws["onnx"])]
        code, output = _cli(*args, "-o", str(locked / "out"))
        assert code == 2
        _one_error(output, "not writable")
        code, output = _cli(*args, "-o", str(ws["root"] / "out"), "--report", str(locked / "r.json"))
        assert code == 2
        _one_error(output, "--report", "not writable")
        assert not (ws["root"] / "out").exists()  # refused before the clip was matted
        code, output = _cli("serve", str(ws["onnx"]), "--log", str(locked / "s.log"), "--http-port", "0")
        assert code == 2
        _one_error(output, "--log", "not writable")
    finally:
        locked.chmod(0o755)


def test_read_only_folders_refused_by_the_same_check(ws: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """As root (CI), the permission bits do not stop writes; the check itself is os.access."""
    locked = ws["root"] / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == locked else real(path, mode, **kw))
    args = ["matte", "--src", str(ws["clip"]), "--bgr", str(ws["plate"]), "--model", str(ws["onnx"])]
    code, output = _cli(*args, "-o", str(locked / "out"))
    assert code == 2
    _one_error(output, "-o/--output", "not writable")
    code, output = _cli(*args, "-o", str(ws["root"] / "out"), "--report", str(locked / "r.json"))
    assert code == 2
    _one_error(output, "--report", "not writable")
    assert not (ws["root"] / "out").exists()
    code, output = _cli("serve", str(ws["onnx"]), "--log", str(locked / "s.log"), "--http-port", "0")
    assert code == 2
    _one_error(output, "--log", "not writable")


def test_unknown_src_format(ws: dict[str, Path]) -> None:
    code, output = _cli("matte", "--src", "0", "--src-format", "bogusfmt", "--bgr", str(ws["plate"]),
                        "-o", str(ws["root"] / "out"), "--model", str(ws["onnx"]))
    assert code == 2
    _one_error(output, "--src-format 'bogusfmt'", "v4l2")


# -- 4. silent wrong results ------------------------------------------------------------------------------
def test_video_honours_the_target_and_refuses_what_does_not_apply(ws: dict[str, Path]) -> None:
    base = ["matte", "--src", str(ws["clip"]), "--bgr", str(ws["plate"]), "--model", str(ws["onnx"]), "--outputs", "pha"]
    report = ws["root"] / "r.json"
    code, output = _cli(*base, "-o", str(ws["root"] / "a"), "--target", "openvino-cpu", "--report", str(report))
    assert code == 0, output
    assert json.loads(report.read_text())["model"]["target"] == "openvino-cpu"
    code, output = _cli(*base, "-o", str(ws["root"] / "b"), "--resize", "80x60", "--format", "png")
    assert code == 0, output
    assert Image.open(next((ws["root"] / "b" / "pha").glob("*.png"))).size == (80, 60)
    code, output = _cli(*base, "-o", str(ws["root"] / "c"), "--rate", "24")
    assert code == 2
    _one_error(output, "--rate applies to image-sequence sources")
    code, output = _cli(*base, "-o", str(ws["root"] / "d"), "--format", "fgr=jpg", "--outputs", "fgr")
    assert code == 2
    _one_error(output, "--format fgr=jpg does not apply to video")


def test_truncated_clip_fails_unless_partial_results_are_asked_for(ws: dict[str, Path]) -> None:
    base = ["matte", "--src", str(ws["truncated"]), "--bgr", str(ws["plate"]), "--model", str(ws["onnx"]),
            "--outputs", "pha"]
    code, output = _cli(*base, "-o", str(ws["root"] / "a"))
    assert code == 1
    _one_error(output, f"of the {FRAMES} frames", "--allow-partial")
    assert not any((ws["root"] / "a").glob("pha*")) and not _leftovers(ws["root"])
    report = ws["root"] / "r.json"
    code, output = _cli(*base, "-o", str(ws["root"] / "b"), "--allow-partial", "--report", str(report))
    assert code == 0, output
    data = json.loads(report.read_text())
    assert data["partial"] is True and 0 < data["counts"]["read"] < FRAMES
    assert data["counts"]["lost"] == FRAMES - data["counts"]["read"]


def test_video_background_may_not_be_the_source(ws: dict[str, Path]) -> None:
    code, output = _cli("matte", "--src", str(ws["clip"]), "--bgr", str(ws["clip"]), "-o", str(ws["root"] / "out"),
                        "--model", str(ws["onnx"]))
    assert code == 2
    _one_error(output, "--src and --bgr are the same")


def test_png_sequences_are_complete_or_resumed(ws: dict[str, Path]) -> None:
    out = ws["root"] / "out"
    base = ["matte", "--src", str(ws["clip"]), "--bgr", str(ws["plate"]), "--model", str(ws["onnx"]), "--outputs",
            "pha", "--format", "png", "-o", str(out)]
    assert _cli(*base)[0] == 0
    assert len(list((out / "pha").glob("*.png"))) == FRAMES
    code, output = _cli(*base, "--overwrite", "--max-frames", "4")  # a shorter run replaces every old frame
    assert code == 0, output
    assert len(list((out / "pha").glob("*.png"))) == 4
    assert json.loads((out / ".bgm-matte.json").read_text())["outputs"]["pha"]["complete"] is False
    code, output = _cli(*base, "--skip-existing")  # the preview is resumed, not taken for the whole clip
    assert code == 0, output
    assert f"{FRAMES - 4} frames matted, 4 already done" in output
    assert len(list((out / "pha").glob("*.png"))) == FRAMES
    code, output = _cli(*base, "--skip-existing")
    assert code == 0 and "nothing to do" in output


def test_triton_export_names_no_deleted_temp_folder(tmp_path: Path) -> None:
    code, output = _cli("export", "--format", "triton", "-o", str(tmp_path / "models"), "--resolution", "160x128",
                        "--refine-sample-pixels", "4000", "--no-simplify")
    assert code == 0, output
    assert "bgm-triton-" not in output and "bgm.json" not in output


# -- 5. long jobs ---------------------------------------------------------------------------------------
def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bgm_deploy", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate: Any, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def long_clip(assets: dict[str, Any]) -> Path:
    clip, _, _ = make_clip(assets["root"] / "long.mp4", spec=ClipSpec(size=(160, 120), frames=240))
    return clip


def test_sigterm_stops_a_video_job_cleanly(ws: dict[str, Path], long_clip: Path) -> None:
    out = ws["root"] / "out"
    process = _start(["matte", "--src", str(long_clip), "--bgr", str(ws["plate"]), "-o", str(out), "--model",
                      str(ws["onnx"]), "--outputs", "pha,fgr", "--format", "pha=png"], ws["root"])
    _wait_for(lambda: len(list((out / "pha").glob("*.png"))) >= 3 if (out / "pha").is_dir() else False, process)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 143, output
    assert output.strip().splitlines()[-1] == "Terminated." and "Traceback" not in output
    assert not (out / "fgr.mp4").exists() and not _leftovers(out)  # no partial video
    assert len(list((out / "pha").glob("*.png"))) >= 3  # finished frames kept, to resume from
    assert json.loads((out / ".bgm-matte.json").read_text())["outputs"]["pha"]["complete"] is False


def test_sigterm_stops_a_photo_job_cleanly(ws: dict[str, Path]) -> None:
    photos = ws["root"] / "photos"
    photos.mkdir()
    for index in range(200):
        shutil.copy(ws["src"], photos / f"{index:03d}.jpg")
    out = ws["root"] / "out"
    process = _start(["matte", "--src", str(photos), "--bgr", str(ws["bgr"]), "-o", str(out), "--model",
                      str(ws["onnx"]), "--outputs", "pha"], ws["root"])
    _wait_for(lambda: len(list((out / "pha").glob("*.png"))) >= 3 if (out / "pha").is_dir() else False, process)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 143 and "Terminated." in output and "Traceback" not in output, output
    written = list((out / "pha").glob("*.png"))
    assert 3 <= len(written) < 200 and not _leftovers(out)
    for path in written:
        Image.open(path).load()  # every file that exists is whole


def test_a_killed_job_leaves_temp_files_the_next_run_removes(ws: dict[str, Path], long_clip: Path) -> None:
    out = ws["root"] / "out"
    args = ["matte", "--src", str(long_clip), "--bgr", str(ws["plate"]), "-o", str(out), "--model", str(ws["onnx"]),
            "--outputs", "pha"]
    process = _start(args, ws["root"])
    _wait_for(lambda: bool(_leftovers(out)) if out.is_dir() else False, process)
    time.sleep(0.5)
    process.kill()
    process.wait(timeout=30)
    assert _leftovers(out)  # kill -9 cannot clean up
    code, output = _cli(*args, "--max-frames", "5", "--overwrite")
    assert code == 0, output
    assert not _leftovers(out) and (out / "pha.mp4").exists()


# -- smaller -----------------------------------------------------------------------------------------------
def test_bad_preset_is_refused_before_the_model_loads(ws: dict[str, Path]) -> None:
    code, output = _cli("matte", "--src", str(ws["clip"]), "--bgr", str(ws["plate"]), "-o", str(ws["root"] / "out"),
                        "--model", str(ws["onnx"]), "--preset", "turbo")
    assert code == 2
    _one_error(output, "--preset 'turbo'", "ultrafast")
    assert "loading" not in output


def test_odd_sized_alpha_suggests_formats_that_hold_alpha(tmp_path: Path, ws: dict[str, Path]) -> None:
    clip, _, plate = make_clip(tmp_path / "odd.mp4", spec=ClipSpec(size=(161, 121), frames=2))
    Image.fromarray(plate).save(tmp_path / "odd.png")
    code, output = _cli("matte", "--src", str(clip), "--bgr", str(tmp_path / "odd.png"), "-o", str(tmp_path / "out"),
                        "--model", str(ws["onnx"]), "--outputs", "rgba", "--format", "vp9")
    if code == 0:
        pytest.skip("this FFmpeg's VP9 encodes odd-sized alpha")
    _one_error(output, "rgba=vp9", "odd")
    error = next(line for line in output.splitlines() if line.startswith("Error: "))
    assert "h264" not in error.split("pick another format")[-1]


def test_torchscript_file_as_checkpoint_says_to_pass_it_as_model(ws: dict[str, Path]) -> None:
    code, output = _cli("matte", "--src", str(ws["src"]), "--bgr", str(ws["bgr"]), "-o", str(ws["root"] / "out"),
                        "--checkpoint", str(ws["pt"]))
    assert code == 2
    _one_error(output, "TorchScript file", f"--model {ws['pt']}")
    assert "weights_only" not in output


def test_info_says_compiled_in_gpu_providers_are_not_usable() -> None:
    code, output = _cli("info", "--json")
    assert code == 0
    rows = {row["name"]: row for row in json.loads(output)["targets"]}
    if not torch.cuda.is_available():
        assert rows["onnxruntime-cuda"]["usable"] is False
        assert "compiled in, not usable: no GPU" in rows["onnxruntime-cuda"]["why_not"]


def test_verify_save_diff_on_a_pass_says_so(ws: dict[str, Path]) -> None:
    code, output = _cli("verify", str(ws["onnx"]), "--inputs", "random", "--resolution", "128x96", "--batch", "1",
                        "--save-diff", str(ws["root"] / "diffs"))
    assert code == 0, output
    assert "--save-diff: no case failed, so no heatmap was written" in output


def test_port_check_takes_time_wait_ports_for_free() -> None:
    from bgm_deploy.serve.server import _check_port

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server side closes first: its end of the connection waits in TIME_WAIT
    listener.close()
    client.close()
    _check_port("127.0.0.1", port, "--http-port")  # a clean restart on the same port works at once
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        with pytest.raises(Exception, match="already in use"):
            _check_port("127.0.0.1", busy.getsockname()[1], "--http-port")
    finally:
        busy.close()
    assert errno.EADDRINUSE  # the condition the message names


def test_empty_repository_is_refused(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    code, output = _cli("serve", "--repository", str(tmp_path / "models"), "--http-port", "0")
    assert code == 2
    _one_error(output, "holds no model", "export --format triton")
