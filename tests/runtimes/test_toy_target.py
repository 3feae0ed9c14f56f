"""One registered file makes a runtime usable from verify, matte and bench (issue 23's seam)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_files  # noqa: E402

from bgm_deploy.cli import cli  # noqa: E402
from runtimes.registry import _RUNNERS  # noqa: E402
from runtimes.targets import target_choices, unregister_target  # noqa: E402


@pytest.fixture(scope="module")
def toy() -> Iterator[object]:
    import toy_runner

    yield toy_runner
    unregister_target("toy-cpu")
    _RUNNERS.pop("toy", None)


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_a_toy_runner_is_usable_everywhere(toy: object, tmp_path: Path, pairs_dir: Path) -> None:
    calls = toy.CALLS  # type: ignore[attr-defined]
    assert "toy-cpu" in target_choices()
    onnx = model_files.model_file("onnx", tmp_path.parent / "bgm_models")

    before = calls["infer"]
    report = tmp_path / "verify.json"
    _invoke("verify", str(onnx), "--target", "toy-cpu", "--inputs", "random", "--resolution", "128x96",
            "--batch", "1", "--json", str(report))
    assert json.loads(report.read_text())["target"] == "toy-cpu" and calls["infer"] > before

    before = calls["infer"]
    pair = pairs_dir / "astronaut_coffee_640x480"
    matte_report = tmp_path / "matte.json"
    _invoke("matte", "--src", str(pair / "src.jpg"), "--bgr", str(pair / "bgr.jpg"), "-o", str(tmp_path / "out"),
            "--model", str(onnx), "--target", "toy-cpu", "--outputs", "pha", "--report", str(matte_report))
    assert json.loads(matte_report.read_text())["model"]["target"] == "toy-cpu" and calls["infer"] == before + 1

    before = calls["infer"]
    bench_report = tmp_path / "bench.json"
    _invoke("bench", "--backend", "toy-cpu", "--resolution", "128x96", "--sample-pixels", "256", "--warmup", "0",
            "--iterations", "2", "--no-flops", "--onnx-exporter", "legacy", "--json", str(bench_report))
    rows = json.loads(bench_report.read_text())["results"]
    assert {row["backend"] for row in rows} == {"toy-cpu"} and rows[0]["provider"] == "toy:onnxruntime-cpu"
    assert calls["infer"] > before
