"""Every CLI command through bad inputs: one clear line, non-zero exit, nothing lost or half-written.

Each case runs in its own workspace (a copy of a small exported ONNX model, a synthetic
checkpoint, a refused pickle, two tiny images and a plain file used as a "directory"),
and asserts: non-zero exit, exactly one ``Error:`` line naming the problem, no traceback,
every input file byte-for-byte unchanged, and no new file (no ``*.part`` leftover either).
Almost every case fails in validation, before any model is built.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from bgm_deploy import cli as cli_module
from model.checkpoint import build_model
from bgm_deploy.cli import cli
from model.config import ModelConfig

SMALL = ["--resolution", "160x128", "--refine-sample-pixels", "4000", "--exporter", "legacy"]


class _Refused:
    """Pickles to a call of ``print``: a checkpoint that is not plain tensors."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return print, ("this pickle ran code",)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once: a small exported ONNX model (every output) and a synthetic checkpoint."""
    root = tmp_path_factory.mktemp("bad-inputs-assets")
    result = CliRunner().invoke(cli, ["-q", "export", "--format", "onnx", "-o", str(root / "m.onnx"), "--no-simplify", "--seed", "0", *SMALL])
    assert result.exit_code == 0, result.output
    torch.save(build_model(ModelConfig(seed=1)).state_dict(), root / "ck.pth")
    return root


@pytest.fixture()
def ws(assets: Path, tmp_path: Path) -> Path:
    """A fresh workspace: m.onnx, ck.pth, evil.pth, src/a.png, bgr/a.png, afile."""
    shutil.copy(assets / "m.onnx", tmp_path / "m.onnx")
    shutil.copy(assets / "ck.pth", tmp_path / "ck.pth")
    torch.save({"weights": _Refused()}, tmp_path / "evil.pth")
    rng = np.random.default_rng(0)
    for folder in ("src", "bgr"):
        (tmp_path / folder).mkdir()
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / folder / "a.png")
    (tmp_path / "afile").write_text("a plain file, not a directory\n")
    (tmp_path / "existing.onnx").write_text("an earlier export the user wants to keep\n")
    return tmp_path


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


# (id, argv with {ws} for the workspace, a fragment the error line must contain)
CASES: list[tuple[str, list[str], str]] = [
    # info
    ("info-unknown-option", ["info", "--bogus"], "--bogus"),
    # export
    ("export-missing-checkpoint", ["export", "--format", "onnx", "-o", "{ws}/out.onnx", "--checkpoint", "{ws}/nope.pth"], "nope.pth"),
    ("export-output-is-checkpoint", ["export", "--format", "onnx", "-o", "{ws}/ck.pth", "--checkpoint", "{ws}/ck.pth"], "same file"),
    ("export-existing-output", ["export", "--format", "onnx", "-o", "{ws}/existing.onnx", *SMALL], "--overwrite"),
    ("export-output-in-file", ["export", "--format", "onnx", "-o", "{ws}/afile/out.onnx", *SMALL], "afile"),
    ("export-json-is-output", ["export", "--format", "onnx", "-o", "{ws}/o.onnx", "--json", "{ws}/o.onnx", *SMALL], "same file"),
    ("export-json-is-checkpoint", ["export", "--format", "onnx", "-o", "{ws}/o.onnx", "--checkpoint", "{ws}/ck.pth",
                                   "--json", "{ws}/ck.pth"], "same file"),
    ("export-json-in-file", ["export", "--format", "onnx", "-o", "{ws}/o.onnx", "--json", "{ws}/afile/r.json", *SMALL], "afile"),
    ("export-tiny-scale", ["export", "--format", "onnx", "-o", "{ws}/o.onnx", "--backbone-scale", "0.001"], "--backbone-scale"),
    ("export-big-scale", ["export", "--format", "onnx", "-o", "{ws}/o.onnx", "--backbone-scale", "0.9"], "--backbone-scale"),
    ("export-huge-resolution", ["export", "--format", "onnx", "-o", "{ws}/o.onnx", "--resolution", "20000x20000"], "--resolution"),
    ("export-odd-resolution", ["export", "--format", "onnx", "-o", "{ws}/o.onnx", "--resolution", "161x128"], "--resolution"),
    ("export-zero-pixels", ["export", "--format", "onnx", "-o", "{ws}/o.onnx", "--refine-sample-pixels", "0"], "--refine-sample-pixels"),
    ("export-threshold", ["export", "--format", "onnx", "-o", "{ws}/o.onnx", "--refine-threshold", "2"], "--refine-threshold"),
    ("export-opset", ["export", "--format", "onnx", "-o", "{ws}/o.onnx", "--opset", "3"], "--opset"),
    ("export-malicious-checkpoint", ["export", "--format", "onnx", "-o", "{ws}/o.onnx", "--checkpoint", "{ws}/evil.pth"],
     "refused to unpickle"),
    ("export-unknown-output", ["export", "--format", "onnx", "-o", "{ws}/o.onnx", "--outputs", "zzz", *SMALL], "zzz"),
    ("export-torchscript-existing", ["export", "--format", "torchscript", "-o", "{ws}/existing.onnx"], "--overwrite"),
    ("export-from-onnx-missing", ["export", "--format", "tensorrt", "-o", "{ws}/e.engine", "--from-onnx", "{ws}/nope.onnx"], "nope.onnx"),
    # inspect
    ("inspect-missing", ["inspect", "{ws}/nope.onnx"], "nope.onnx"),
    ("inspect-checkpoint", ["inspect", "{ws}/ck.pth"], "checkpoint"),
    ("inspect-not-a-model", ["inspect", "{ws}/afile"], "afile"),
    # verify
    ("verify-json-is-model", ["verify", "{ws}/m.onnx", "--json", "{ws}/m.onnx"], "same file"),
    ("verify-json-in-file", ["verify", "{ws}/m.onnx", "--json", "{ws}/afile/r.json"], "afile"),
    ("verify-save-diff-is-file", ["verify", "{ws}/m.onnx", "--save-diff", "{ws}/afile"], "afile"),
    ("verify-save-diff-in-file", ["verify", "{ws}/m.onnx", "--save-diff", "{ws}/afile/diffs"], "afile"),
    ("verify-negative-atol", ["verify", "{ws}/m.onnx", "--atol", "-1"], "--atol"),
    ("verify-negative-rtol", ["verify", "{ws}/m.onnx", "--rtol", "pha=-1"], "--rtol"),
    ("verify-unknown-output", ["verify", "{ws}/m.onnx", "--atol", "zzz=1e-3"], "zzz"),
    ("verify-huge-resolution", ["verify", "{ws}/m.onnx", "--resolution", "20000x20000"], "--resolution"),
    ("verify-odd-resolution", ["verify", "{ws}/m.onnx", "--resolution", "161x128"], "--resolution"),
    ("verify-checkpoint-as-model", ["verify", "{ws}/ck.pth"], "export it first"),
    ("verify-checkpoint-missing", ["verify", "{ws}/m.onnx", "--checkpoint", "{ws}/nope.pth"], "nope.pth"),
    ("verify-synthetic-with-checkpoint", ["verify", "{ws}/m.onnx", "--checkpoint", "{ws}/ck.pth"], "synthetic"),
    ("verify-bad-inputs-kind", ["verify", "{ws}/m.onnx", "--inputs", "webcam"], "webcam"),
    ("verify-missing-pairs", ["verify", "{ws}/m.onnx", "--pairs", "{ws}/nope"], "nope"),
    ("verify-no-backbone-option", ["verify", "{ws}/m.onnx", "--backbone", "resnet50"], "--backbone"),
    # matte
    # (matte with no model at all mattes with the bundled demo weights: tests/bgm_deploy/matte/test_photos.py)
    ("matte-unknown-output", ["matte", "--src", "{ws}/src", "--bgr", "{ws}/bgr", "-o", "{ws}/out", "--model", "{ws}/m.onnx",
                              "--outputs", "zzz"], "zzz"),
    ("matte-src-missing", ["matte", "--src", "{ws}/nope", "--bgr", "{ws}/bgr", "-o", "{ws}/out", "--model", "{ws}/m.onnx"], "nope"),
    ("matte-output-inside-src", ["matte", "--src", "{ws}/src", "--bgr", "{ws}/bgr", "-o", "{ws}/src/out", "--model", "{ws}/m.onnx"],
     "inside"),
    ("matte-src-is-bgr", ["matte", "--src", "{ws}/src", "--bgr", "{ws}/src", "-o", "{ws}/out", "--model", "{ws}/m.onnx"], "--bgr"),
    ("matte-checkpoint-as-model", ["matte", "--src", "{ws}/src", "--bgr", "{ws}/bgr", "-o", "{ws}/out", "--model", "{ws}/ck.pth"],
     "--checkpoint"),
    ("matte-report-in-file", ["matte", "--src", "{ws}/src", "--bgr", "{ws}/bgr", "-o", "{ws}/out", "--model", "{ws}/m.onnx",
                              "--report", "{ws}/afile/r.json"], "afile"),
    ("matte-report-is-input", ["matte", "--src", "{ws}/src", "--bgr", "{ws}/bgr", "-o", "{ws}/out", "--model", "{ws}/m.onnx",
                               "--report", "{ws}/src/a.png"], "inside"),
    ("matte-output-is-file", ["matte", "--src", "{ws}/src", "--bgr", "{ws}/bgr", "-o", "{ws}/afile", "--model", "{ws}/m.onnx"], "afile"),
    ("matte-malicious-checkpoint", ["matte", "--src", "{ws}/src", "--bgr", "{ws}/bgr", "-o", "{ws}/out", "--checkpoint", "{ws}/evil.pth"],
     "refused to unpickle"),
    ("matte-tiny-scale", ["matte", "--src", "{ws}/src", "--bgr", "{ws}/bgr", "-o", "{ws}/out", "--checkpoint", "{ws}/ck.pth",
                          "--backbone-scale", "0.001"], "--backbone-scale"),
    ("matte-zero-pixels", ["matte", "--src", "{ws}/src", "--bgr", "{ws}/bgr", "-o", "{ws}/out", "--checkpoint", "{ws}/ck.pth",
                           "--refine-sample-pixels", "0"], "--refine-sample-pixels"),
    ("matte-huge-resize", ["matte", "--src", "{ws}/src", "--bgr", "{ws}/bgr", "-o", "{ws}/out", "--model", "{ws}/m.onnx",
                           "--resize", "20000x20000"], "--resize"),
    # bench
    ("bench-missing-checkpoint", ["bench", "--checkpoint", "{ws}/nope.pth", "--backend", "eager", "--resolution", "160x128",
                                  "--no-flops"], "nope.pth"),
    ("bench-tiny-scale", ["bench", "--backbone-scale", "0.001", "--backend", "eager", "--no-flops"], "--backbone-scale"),
    ("bench-huge-resolution", ["bench", "--resolution", "20000x20000", "--backend", "eager", "--no-flops"], "--resolution"),
    ("bench-zero-iterations", ["bench", "--iterations", "0", "--backend", "eager", "--no-flops"], "--iterations"),
    ("bench-zero-batch", ["bench", "--batch", "0", "--backend", "eager", "--no-flops"], "--batch"),
    ("bench-zero-threads", ["bench", "--threads", "0", "--backend", "eager", "--no-flops"], "--threads"),
    ("bench-json-is-model", ["bench", "{ws}/m.onnx", "--json", "{ws}/m.onnx", "--backend", "onnx-cpu", "--no-flops"], "same file"),
    ("bench-json-in-file", ["bench", "--json", "{ws}/afile/r.json", "--backend", "eager", "--no-flops"], "afile"),
    # check
    ("check-checkpoint", ["check", "{ws}/ck.pth"], "ck.pth"),
    ("check-missing", ["check", "{ws}/nope.onnx"], "nope.onnx"),
    ("check-bad-version", ["check", "{ws}/m.onnx", "--min-tensorrt", "ten"], "ten"),
    ("check-json-is-model", ["check", "{ws}/m.onnx", "--json", "{ws}/m.onnx"], "same file"),
    ("check-json-in-file", ["check", "{ws}/m.onnx", "--json", "{ws}/afile/r.json"], "afile"),
]


@pytest.mark.parametrize(("argv", "fragment"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_clear_line(ws: Path, argv: list[str], fragment: str) -> None:
    before = _snapshot(ws)
    result = CliRunner().invoke(cli, [arg.replace("{ws}", str(ws)) for arg in argv])
    output = result.output
    assert result.exit_code != 0, output
    assert isinstance(result.exception, SystemExit), f"{result.exception!r}\n{output}"
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert fragment in errors[0], output
    assert "weights_only=False" not in output
    for internal in ("trace_resolution", "model_config", "backbone_scale=", "refine_sample_pixels="):
        assert internal not in errors[0], output
    assert _snapshot(ws) == before, "an input changed or a file was left behind"


def test_refused_pickle_is_explained(ws: Path) -> None:
    result = CliRunner().invoke(cli, ["matte", "--src", str(ws / "src"), "--bgr", str(ws / "bgr"), "-o", str(ws / "out"),
                                      "--checkpoint", str(ws / "evil.pth")])
    assert "weights_only=True" in result.output and "truncated" not in result.output


def test_hints_name_real_options() -> None:
    """Every ``--option`` a message of the package suggests exists on some command."""
    import re

    import click

    options = {opt for command in cli.commands.values() for param in command.params if isinstance(param, click.Option)
               for opt in param.opts + param.secondary_opts}
    root = Path(cli_module.__file__).parent.parent
    named: set[str] = set()
    for folder in ("bgm_deploy", "exporters", "runtimes"):
        for path in (root / folder).glob("*.py"):
            for text in re.findall(r'(?:Error|echo|warn\w*|append)\(\s*f?"([^"]*)"', path.read_text()):
                # "--refine-*" names a family of options, not one
                named.update(m for m, star in re.findall(r"(--[a-z][a-z0-9-]*[a-z0-9])(-\*)?", text) if not star)
    assert named, "no hints found: the scan is broken"
    assert not named - options, f"hints name options no command has: {sorted(named - options)}"


def test_verify_error_hints_exist_on_verify(ws: Path) -> None:
    """A checkpoint/backbone mismatch in verify names only options verify has."""
    other = ws / "other.pth"
    torch.save(build_model(ModelConfig(backbone="resnet50", seed=1, model_type="base")).state_dict(), other)
    # m.onnx has synthetic weights: passing a checkpoint of another backbone is a mismatch.
    result = CliRunner().invoke(cli, ["verify", str(ws / "m.onnx"), "--checkpoint", str(other), "--inputs", "random",
                                      "--resolution", "64x64", "--batch", "1"])
    assert result.exit_code != 0
    assert "--backbone" not in result.output, result.output


def test_sample_pixels_larger_than_image_is_explained() -> None:
    from model.config import sample_pixels_note

    note = sample_pixels_note(80_000, 160, 128)
    assert note is not None and "80000 > 160x128 = 20480" in note and "every" in note
    assert sample_pixels_note(4_000, 160, 128) is None


def test_interrupt_during_startup_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C before any command runs (click would print "Aborted!" and exit 1)."""

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "_configure_logging", interrupted)
    monkeypatch.setattr(sys, "argv", ["bgm-deploy", "info"])
    with pytest.raises(SystemExit) as exit_info:
        cli_module.main()
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.strip() == "Interrupted."


def test_sigint_during_startup_is_one_line(tmp_path: Path) -> None:
    """A real SIGINT while the CLI starts up: "Interrupted.", exit 130, no traceback."""
    code = (
        "import os, signal, sys, time\n"
        "import bgm_deploy.cli as c\n"
        "def slow_start(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(5)\n"
        "c._configure_logging = slow_start\n"
        "sys.argv = ['bgm-deploy', 'info']\n"
        "c.main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == "Interrupted." and "Traceback" not in done.stderr


def test_stale_temp_files_are_named_and_cleaned(tmp_path: Path) -> None:
    from exporters.atomic import atomic_write_bytes, stale_temp_files, temp_name

    target = tmp_path / "model.onnx"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / temp_name(target, dead.pid)
    stale.write_bytes(b"x" * 1000)
    live = tmp_path / temp_name(target, os.getpid())
    live.write_bytes(b"in use")
    other = tmp_path / temp_name(tmp_path / "other.onnx", dead.pid)
    other.write_bytes(b"another target's")
    assert stale_temp_files(target) == [stale]
    atomic_write_bytes(target, b"model")
    assert target.read_bytes() == b"model"
    assert not stale.exists() and live.exists() and other.exists()


def test_killed_export_leaves_a_findable_temp_file_that_the_next_export_removes(tmp_path: Path) -> None:
    """``kill -9`` mid-write: the leftover is named after its target and pid; the next write cleans it."""
    from exporters.atomic import stale_temp_files

    target = tmp_path / "m.onnx"
    code = (
        "import os, sys\n"
        "from exporters.atomic import atomic_open\n"
        f"with atomic_open({str(target)!r}) as h:\n"
        "    h.write(b'half'); h.flush(); print('writing', flush=True); os.kill(os.getpid(), 9)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == -9 and "writing" in done.stdout
    leftovers = stale_temp_files(target)
    assert len(leftovers) == 1 and ".bgm-deploy-tmp-" in leftovers[0].name and not target.exists()
    from exporters.onnx import temp_path_for

    temp = temp_path_for(target, ".onnx")
    assert not leftovers[0].exists() and ".bgm-deploy-tmp-" in temp.name
    temp.unlink()
