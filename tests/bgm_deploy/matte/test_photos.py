"""``bgm-deploy matte`` and ``bgm_deploy.matte.matte`` over the real photo pairs."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "runtimes"))
import model_files  # noqa: E402

from bgm_deploy.cli import cli  # noqa: E402
from bgm_deploy.images import load_image, save_image  # noqa: E402
from bgm_deploy.matte import MatteOptions, find_pairs, matte  # noqa: E402
from model.errors import ImageError, UsageError  # noqa: E402

COFFEE, CAT, ROCKET = "astronaut_coffee_640x480", "cat_rocket_1001x667", "astronaut_rocket_1920x1080_shifted"
MODES = {"pha": "L", "fgr": "RGB", "com": "RGB", "rgba": "RGBA", "err": "L", "ref": "L"}


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_files.model_file("onnx", tmp_path_factory.getbasetemp() / "bgm_models")


@pytest.fixture()
def tree(tmp_path: Path, pairs_dir: Path) -> Path:
    """src/ and bgr/ trees: three real pairs (same file name in two folders), a corrupt
    source, a source without background, an unused background and a non-image file."""
    layout = {"indoor/shot.jpg": COFFEE, "outdoor/shot.jpg": CAT, "outdoor/far/rocket.jpg": ROCKET}
    for relative, pair in layout.items():
        for kind in ("src", "bgr"):
            target = tmp_path / kind / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(pairs_dir / pair / f"{kind}.jpg", target)
    (tmp_path / "src" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 20)
    shutil.copy(pairs_dir / COFFEE / "bgr.jpg", tmp_path / "bgr" / "broken.png")  # matched by stem
    shutil.copy(pairs_dir / COFFEE / "src.jpg", tmp_path / "src" / "lonely.jpg")
    shutil.copy(pairs_dir / COFFEE / "bgr.jpg", tmp_path / "bgr" / "unused.jpg")
    (tmp_path / "src" / "notes.txt").write_text("not an image")
    return tmp_path


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["matte", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_matte_a_tree_of_real_pairs(tree: Path, onnx_model: Path, pairs_dir: Path) -> None:
    out, report_path = tree / "out", tree / "report.json"
    base = ["--src", str(tree / "src"), "--bgr", str(tree / "bgr"), "-o", str(out), "--model", str(onnx_model)]
    code, output = _run(*base, "--outputs", "pha,fgr,com,rgba,err,ref", "--report", str(report_path))
    assert code == 1, output  # one corrupt file and one unmatched source
    assert "FAILED" in output and "broken.jpg" in output and "UNMATCHED" in output and "lonely.jpg" in output
    assert "3 matted, 0 skipped (existing), 1 failed, 1 without background" in output

    sizes = {"indoor/shot": (640, 480), "outdoor/shot": (1001, 667), "outdoor/far/rocket": (1920, 1080)}
    for name, size in sizes.items():
        for kind, mode in MODES.items():
            with Image.open(out / kind / f"{name}.png") as image:
                assert (image.size, image.mode) == (size, mode), (kind, name)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted(f"{kind}/{name}.png" for kind in MODES for name in sizes)  # no partial/temp files

    report = json.loads(report_path.read_text())
    assert report["schema_version"] == 2 and report["ok"] is False and report["source"]["kind"] == "photos"
    assert report["counts"] == {"ok": 3, "skipped": 0, "failed": 1, "unmatched": 1}
    assert report["model"]["provider"] == "CPUExecutionProvider" and report["model"]["weights"] == "synthetic (seed 0)"
    assert report["unmatched_backgrounds"] == [str(tree / "bgr" / "unused.jpg")]
    assert report["ignored_files"] == [str(tree / "src" / "notes.txt")]
    failed = next(p for p in report["items"] if p["status"] == "failed")
    assert failed["src"].endswith("broken.jpg")
    assert "cannot decode" in failed["error"] or "not a readable image" in failed["error"]

    # Existing outputs are never silently replaced.
    code, output = _run(*base)
    assert code == 2 and "already exist" in output and "--overwrite" in output and "--skip-existing" in output

    # Resume: finished pairs are skipped, an interrupted one (missing output) is redone.
    (out / "pha" / "outdoor" / "shot.png").unlink()
    before = {p: p.stat().st_mtime_ns for p in (out / "pha").rglob("*.png")}
    code, output = _run(*base, "--skip-existing", "--report", str(report_path))
    report = json.loads(report_path.read_text())
    assert code == 1 and report["counts"] == {"ok": 1, "skipped": 2, "failed": 1, "unmatched": 1}
    assert next(p for p in report["items"] if p["status"] == "ok")["src"].endswith("outdoor/shot.jpg")
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    assert (out / "pha" / "outdoor" / "shot.png").exists()
    code, _ = _run(*base, "--overwrite", "--skip-existing")
    assert code == 2


def test_one_background_for_all_sources_and_the_python_api(tmp_path: Path, onnx_model: Path, pairs_dir: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    image = Image.open(pairs_dir / COFFEE / "src.jpg")
    image.save(src / "a.jpg")
    image.convert("L").save(src / "gray.png")  # grayscale: converted
    image.convert("CMYK").save(src / "cmyk.jpg")  # CMYK: converted
    image.convert("RGBA").save(src / "alpha.png")  # alpha channel: dropped
    image.save(src / "a.png")  # same stem as a.jpg: both kept, no collision
    events = []
    report = matte(
        src, pairs_dir / COFFEE / "bgr.jpg", tmp_path / "out", model=onnx_model,
        options=MatteOptions(outputs=("pha", "fgr"), formats={"fgr": "jpg"}, workers=1),
        progress=lambda done, total, unit, outcome, error: events.append((outcome, done, total)),
    )
    assert report.ok and report.count("ok") == 5
    assert events == [("ok", i, 5) for i in range(1, 6)]
    names = sorted(p.name for p in (tmp_path / "out" / "fgr").iterdir())
    assert names == ["a_jpg.jpg", "a_png.jpg", "alpha.jpg", "cmyk.jpg", "gray.jpg"]
    pha = {p.stem: np.asarray(Image.open(p)) for p in (tmp_path / "out" / "pha").iterdir()}
    np.testing.assert_array_equal(pha["a_png"], pha["alpha"])  # RGBA source == the same RGB source


def test_size_mismatch_and_resize(tmp_path: Path, onnx_model: Path, pairs_dir: Path) -> None:
    args = ["--src", str(pairs_dir / CAT / "src.jpg"), "--bgr", str(pairs_dir / COFFEE / "bgr.jpg"), "--model", str(onnx_model)]
    code, output = _run(*args, "-o", str(tmp_path / "a"))
    assert code == 1 and "size mismatch" in output and "--resize" in output
    code, output = _run(*args, "-o", str(tmp_path / "b"), "--resize", "320x240", "--outputs", "pha")
    assert code == 0, output
    assert Image.open(tmp_path / "b" / "pha" / "src.png").size == (320, 240)
    code, output = _run(*args, "-o", str(tmp_path / "c"), "--resize", "320by240")
    assert code == 2 and "WIDTHxHEIGHT" in output


def test_usage_errors(tmp_path: Path, onnx_model: Path, pairs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, output = _run("--src", str(empty), "--bgr", str(pairs_dir / COFFEE / "bgr.jpg"), "-o", str(tmp_path / "o"), "--model", str(onnx_model))
    assert code == 2 and "contains no images" in output
    code, output = _run("--src", str(pairs_dir / COFFEE / "src.jpg"), "--bgr", str(pairs_dir), "-o", str(tmp_path / "o"), "--model", str(onnx_model))
    assert code == 2 and "is a directory" in output
    code, output = _run("--src", str(pairs_dir / COFFEE / "src.jpg"), "--bgr", str(pairs_dir / COFFEE / "bgr.jpg"),
                        "-o", str(tmp_path / "demo"))
    assert code == 0 and "no model given: using the demo weights" in output, output
    code, output = _run("--src", str(pairs_dir / COFFEE / "src.jpg"), "--bgr", str(pairs_dir / COFFEE / "bgr.jpg"),
                        "-o", str(tmp_path / "o"), "--model", str(onnx_model), "--outputs", "pha,alpha")
    assert code == 2 and "choose distinct names from pha, fgr, com, rgba, err, ref" in output
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if OpenCV were not installed
    code, output = _run("--src", str(pairs_dir / COFFEE / "src.jpg"), "--bgr", str(pairs_dir / COFFEE / "bgr.jpg"),
                        "-o", str(tmp_path / "o"), "--model", str(onnx_model), "--align")
    assert code == 2 and output.strip() == 'Error: --align needs OpenCV, which is not installed: pip install "bgm-deploy[align]"'
    assert not (tmp_path / "o").exists()


def test_pairing_by_relative_stem(tmp_path: Path) -> None:
    for relative in ("src/a/x.jpg", "src/a/y.jpg", "src/x.jpg", "bgr/a/x.png", "bgr/a/y.jpg", "bgr/a/y.png", "bgr/z.jpg"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"")
    plan = find_pairs(tmp_path / "src", tmp_path / "bgr")
    assert [(p.src.relative_to(tmp_path).as_posix(), p.bgr.name, p.name) for p in plan.pairs] == [("src/a/x.jpg", "x.png", "a/x")]
    assert [p.relative_to(tmp_path).as_posix() for p in plan.unmatched_sources] == ["src/x.jpg"]
    assert [(s.name, len(c)) for s, c in plan.ambiguous] == [("y.jpg", 2)]
    assert [p.name for p in plan.unmatched_backgrounds] == ["z.jpg"]


def test_image_decoding_and_atomic_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # EXIF orientation 6 (rotate 90° clockwise to display): a 40x20 file shows as 20x40.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255  # left edge white -> top edge after rotation
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    upright = load_image(tmp_path / "rotated.jpg")
    assert upright.shape == (40, 20, 3) and upright[:5].mean() > 200 and upright[-5:].mean() < 50
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "deep.png")
    assert load_image(tmp_path / "deep.png")[0, 0, 0] == round(40000 / 65535 * 255)
    truncated = tmp_path / "truncated.jpg"
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    truncated.write_bytes(buffer.getvalue()[:200])
    with pytest.raises(ImageError, match="truncated.jpg"):
        load_image(truncated)

    target = tmp_path / "out" / "pha.png"
    save_image(target, np.zeros((4, 4), np.uint8))

    def broken_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(ImageError, match="disk full"):
        save_image(target, np.full((4, 4), 255, np.uint8))
    assert np.asarray(Image.open(target)).max() == 0  # the old file is intact
    assert [p.name for p in target.parent.iterdir()] == ["pha.png"]  # no temporary left
    with pytest.raises(UsageError):
        MatteOptions(workers=0)
