"""A newcomer's first commands: ``--help`` and ``--version`` must not import torch (seconds).

numpy (~0.1 s) is allowed: the runner contract's tables are numpy dtypes, and ``--help``
lists the registered targets, read from the runner modules.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporters.progress import stage

PROBE = """
import sys
from bgm_deploy.cli import cli
try:
    cli([{args}], prog_name="bgm-deploy")
except SystemExit as exc:
    assert exc.code == 0, exc.code
heavy = sorted(name for name in ("torch", "onnx", "onnxruntime", "openvino", "PIL") if name in sys.modules)
print("HEAVY:" + ",".join(heavy))
"""


@pytest.mark.parametrize("args", ["'--help'", "'--version'", "'export', '--help'", "'verify', '--help'", "'matte', '--help'"])
def test_help_and_version_import_no_heavy_library(args: str) -> None:
    result = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "HEAVY:\n" in result.stdout, result.stdout.splitlines()[-1]


def test_public_api_names_stay_functions_after_submodule_imports() -> None:
    import bgm_deploy
    import bgm_deploy.export  # noqa: F401 - the submodule of the same name as the function
    import bgm_deploy.verify  # noqa: F401

    assert callable(bgm_deploy.export) and bgm_deploy.export.__name__ == "export"
    assert bgm_deploy.verify.__module__ == "bgm_deploy.verify"
    from bgm_deploy import Predictor, export

    assert export.__name__ == "export" and Predictor.__name__ == "Predictor"


def test_stage_prints_start_heartbeat_and_times_the_block() -> None:
    import time

    lines: list[str] = []
    with stage(lines.append, "simplify", "onnxsim", every=0.05) as timing:
        time.sleep(0.3)
    assert lines[0] == "simplify: onnxsim"
    assert any(line.startswith("simplify: still running") for line in lines[1:])
    assert timing["seconds"] >= 0.3


def test_an_exported_model_runs_without_importing_torch(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A Ray worker (or any process) that mattes with an exported ONNX file never imports torch:
    importing it took ~2 s of each worker's start (benchmarks/results/ray.json, worker start)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "runtimes"))
    import model_files

    onnx_model = model_files.model_file("onnx", tmp_path_factory.getbasetemp() / "bgm_models")
    code = f"""
import sys
import numpy as np
import bgm_deploy.matte.cluster  # what a Ray worker imports
from bgm_deploy import ModelSpec, Predictor
predictor = Predictor.from_spec(ModelSpec(model={str(onnx_model)!r}))
frame = np.zeros((128, 160, 3), np.uint8)
assert predictor.predict(frame, frame, ("pha",)).pha.shape[:2] == (128, 160)
print("TORCH:" + str("torch" in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "TORCH:False" in result.stdout, result.stdout
