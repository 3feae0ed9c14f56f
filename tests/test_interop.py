"""Our files in other people's tools (issue 14): Polygraphy, OpenVINO, bare libtorch loads.

The tools run for real (optional extras of the ``test`` install); a test is skipped with
the reason only when its tool cannot be imported. Small models (160x128 trace) exported
once per module.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from bgm_deploy import export
from bgm_deploy.bench import BenchConfig, bench
from bgm_deploy.bench.harness import TimingConfig
from bgm_deploy.images import BUNDLED_PAIRS_DIR as PAIRS_DIR
from bgm_deploy.cli import cli
from bgm_deploy.inspect import inspect_model
from bgm_deploy.predictor import Predictor
from bgm_deploy.verify import VerifyConfig, verify
from exporters.config import OnnxConfig
from exporters.metadata import METADATA_KEY, read_metadata, sidecar_config_path
from model.config import ModelConfig
from model.errors import ModelFileError

CONFIG = ModelConfig(refine_sample_pixels=4_000)
SIZE = (160, 128)
SMALL_VERIFY = VerifyConfig(resolutions=(SIZE,), batch=2, inputs=("random",))


def polygraphy(*args: str) -> None:
    """Runs the real ``polygraphy`` command installed next to this interpreter."""
    pytest.importorskip("polygraphy", reason="polygraphy is not installed (pip install polygraphy)")
    pytest.importorskip("onnx_graphsurgeon", reason="polygraphy surgeon needs onnx-graphsurgeon")
    command = shutil.which("polygraphy", path=str(Path(sys.executable).parent)) or shutil.which("polygraphy")
    if command is None:
        pytest.skip("the polygraphy command is not on PATH")
    done = subprocess.run([command, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.fixture(scope="module")
def legacy_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("legacy") / "legacy.onnx"
    export(CONFIG, path, "onnx", resolution=SIZE)
    return path


@pytest.fixture(scope="module")
def sanitized(legacy_onnx: Path) -> Path:
    """``polygraphy surgeon sanitize --fold-constants``: rewrites the graph, drops metadata_props."""
    out = legacy_onnx.with_name("sanitized.onnx")
    polygraphy("surgeon", "sanitize", str(legacy_onnx), "--fold-constants", "-o", str(out))
    return out


# --- finding 4: the config survives a tool that strips the file's metadata ------------------


def test_export_writes_the_config_sidecar(legacy_onnx: Path) -> None:
    sidecar = sidecar_config_path(legacy_onnx)
    assert sidecar.name == "legacy.onnx.bgm.json"
    embedded = {p.key: p.value for p in onnx.load(str(legacy_onnx), load_external_data=False).metadata_props}
    assert json.loads(sidecar.read_text()) == json.loads(embedded[METADATA_KEY])
    assert not [p for p in legacy_onnx.parent.iterdir() if ".bgm-deploy-tmp-" in p.name]  # written atomically


def test_sanitized_file_needs_the_config_and_verifies_with_it(legacy_onnx: Path, sanitized: Path) -> None:
    props = {p.key for p in onnx.load(str(sanitized), load_external_data=False).metadata_props}
    assert METADATA_KEY not in props  # what the tool does: the reason for the sidecar
    with pytest.raises(ModelFileError, match="--config"):
        read_metadata(sanitized)
    sidecar = str(sidecar_config_path(legacy_onnx))
    result = CliRunner().invoke(
        cli, ["verify", str(sanitized), "--config", sidecar, "--inputs", "random", "--resolution", "160x128"]
    )
    assert result.exit_code == 0, result.output
    assert "verdict: PASS" in result.output
    info = inspect_model(sanitized, sidecar)
    assert info["metadata"]["model_config"] == read_metadata(legacy_onnx).model_config.to_dict()
    src = np.random.default_rng(0).random((128, 160, 3), dtype=np.float32)
    with Predictor.load(sanitized, config_file=sidecar) as predictor:
        assert predictor.predict(src, src * 0.9, outputs=("pha",)).pha.shape == (128, 160)


def test_sidecar_next_to_a_stripped_file_is_found(legacy_onnx: Path, sanitized: Path, tmp_path: Path) -> None:
    stripped = tmp_path / "model.onnx"
    shutil.copy(sanitized, stripped)
    shutil.copy(sidecar_config_path(legacy_onnx), sidecar_config_path(stripped))
    assert read_metadata(stripped) == read_metadata(legacy_onnx)  # read order: embedded, then sidecar
    result = CliRunner().invoke(cli, ["inspect", str(stripped)])
    assert result.exit_code == 0 and "refine_sample_pixels" in result.output


def test_a_missing_config_file_is_one_clear_error(sanitized: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["inspect", str(sanitized), "--config", str(tmp_path / "nope.json")])
    assert result.exit_code != 0 and "--config" in result.output and "does not exist" in result.output
    assert "Traceback" not in result.output


# --- finding 6: the docs' claims agree with what was measured and with the CLI -------------


def test_export_docs_match_the_measurement_and_the_cli() -> None:
    repo = Path(__file__).resolve().parents[1]
    text = " ".join((repo / "docs" / "export.md").read_text().split())
    assert "`--verify` is not part of `export`" not in text
    assert "--verify" in CliRunner().invoke(cli, ["export", "--help"]).output
    measured = json.loads((repo / "benchmarks" / "results" / "fp16_cpu_error.json").read_text())
    assert measured["command"] in text
    means = [case["pha_sm"]["mean_abs"] for case in measured["cases"]]
    maxes = [case["pha_sm"]["max_abs"] for case in measured["cases"]]
    claim = f"`pha_sm` is off by {min(means):.1e}–{max(means):.1e} mean, {min(maxes):.1e}–{max(maxes):.1e} max"
    assert claim.replace("e-0", "e-") in text


# --- finding 1: OpenVINO as a runtime, at a precision that keeps mattes right ---------------


def _openvino() -> object:
    return pytest.importorskip("openvino", reason='openvino is not installed (pip install "bgm-deploy[openvino]")')


def test_openvino_verify_passes_at_f32(legacy_onnx: Path) -> None:
    _openvino()
    report = verify(legacy_onnx, dataclasses.replace(SMALL_VERIFY, target="openvino-cpu"))
    assert report.passed and report.provider == "openvino:CPU/f32"


def test_openvino_reduced_precision_fails_verify(legacy_onnx: Path) -> None:
    """OpenVINO's default on CPUs with native bf16 ruins the mattes; verify must say FAIL.

    ``"default"`` (no hint: what a user opening the file by hand gets) is checked where this
    CPU's default is bf16; an explicit bf16 hint where the plugin can do bf16 at all.
    """
    from runtimes.openvino import cpu_precision_facts

    facts = cpu_precision_facts()
    if "BF16" not in facts["optimization_capabilities"]:
        pytest.skip(f"this CPU has no bf16 in OpenVINO ({facts}); its default is f32, nothing to fail here")
    bf16 = verify(legacy_onnx, dataclasses.replace(SMALL_VERIFY, target="openvino-cpu", options={"precision": "bf16"}))
    assert not bf16.passed and bf16.provider == "openvino:CPU/bf16"
    if "bf16" in facts["default_inference_precision"] or "bfloat16" in facts["default_inference_precision"]:
        default = verify(legacy_onnx, dataclasses.replace(SMALL_VERIFY, target="openvino-cpu", options={"precision": "default"}))
        assert not default.passed and default.provider == "openvino:CPU/bf16"
    result = CliRunner().invoke(
        cli, ["verify", str(legacy_onnx), "--runtime", "openvino", "--openvino-precision", "bf16",
              "--inputs", "random", "--resolution", "160x128"],
    )  # fmt: skip
    assert result.exit_code == 1 and "verdict: FAIL" in result.output


def test_openvino_in_predictor_matte_and_bench(legacy_onnx: Path, tmp_path: Path) -> None:
    _openvino()
    rng = np.random.default_rng(1)
    src = rng.random((128, 160, 3), dtype=np.float32)
    bgr = np.clip(src + rng.normal(0, 0.05, src.shape).astype(np.float32), 0, 1)
    with Predictor.load(legacy_onnx, target="openvino-cpu") as ov, Predictor.load(legacy_onnx) as ort:
        assert ov.provider == "openvino:CPU/f32"
        got, want = ov.predict(src, bgr, outputs=("pha", "fgr")), ort.predict(src, bgr, outputs=("pha", "fgr"))
        np.testing.assert_allclose(got.pha, want.pha, atol=1e-4)
        np.testing.assert_allclose(got.fgr, want.fgr, atol=1e-4)
    pair = next(p for p in sorted(PAIRS_DIR.iterdir()) if p.is_dir())
    result = CliRunner().invoke(cli, ["matte", "--src", str(pair / "src.jpg"), "--bgr", str(pair / "bgr.jpg"),
                                      "-o", str(tmp_path / "out"), "--model", str(legacy_onnx), "--runtime", "openvino",
                                      "--resize", "160x128"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "pha" / "src.png").is_file()
    report = bench(BenchConfig(models=(legacy_onnx,), backends=("onnx-cpu", "openvino-cpu"), resolutions=(SIZE,),
                               timing=TimingConfig(warmup=0, iterations=1), count_flops=False))  # fmt: skip
    rows = {row.backend: row for row in report.results}
    assert rows["openvino-cpu"].provider == "openvino:CPU/f32" and "onnx-cpu" in rows


def test_onnx_file_documents_the_precision_it_needs(legacy_onnx: Path) -> None:
    doc = onnx.load(str(legacy_onnx), load_external_data=False).doc_string
    assert "INFERENCE_PRECISION_HINT': 'f32'" in doc and "bf16" in doc


# --- finding 3: exports survive the common graph tools --------------------------------------


@pytest.fixture(scope="module")
def dynamo_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dynamo") / "dynamo.onnx"
    export(CONFIG, path, "onnx", onnx=OnnxConfig(exporter="dynamo"), resolution=SIZE)
    return path


def _run_onnx(path: Path, batch: int = 2) -> list[np.ndarray]:
    import onnxruntime as ort

    rng = np.random.default_rng(5)
    src = rng.random((batch, 3, 256, 320), dtype=np.float32)
    bgr = np.clip(src + rng.normal(0, 0.05, src.shape).astype(np.float32), 0, 1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"src": src, "bgr": bgr})


def _assert_same_outputs(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_polygraphy_constant_folding_keeps_the_graph_working(
    exporter: str, legacy_onnx: Path, dynamo_onnx: Path, tmp_path: Path
) -> None:
    # Before: the dynamo file failed in Resize ("Scale value should be greater than 0").
    source = {"legacy": legacy_onnx, "dynamo": dynamo_onnx}[exporter]
    folded = tmp_path / "folded.onnx"
    polygraphy("surgeon", "sanitize", str(source), "--fold-constants", "-o", str(folded))
    _assert_same_outputs(_run_onnx(folded), _run_onnx(source))


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_symbolic_shape_inference_and_onnxsim_again(
    exporter: str, legacy_onnx: Path, dynamo_onnx: Path, tmp_path: Path
) -> None:
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    onnxsim = pytest.importorskip("onnxsim", reason="onnxsim is not installed")
    source = {"legacy": legacy_onnx, "dynamo": dynamo_onnx}[exporter]
    want = _run_onnx(source)
    inferred = SymbolicShapeInference.infer_shapes(onnx.load(str(source)), auto_merge=True)
    onnx.save(inferred, str(tmp_path / "inferred.onnx"))
    _assert_same_outputs(_run_onnx(tmp_path / "inferred.onnx"), want)
    simplified, ok = onnxsim.simplify(onnx.load(str(source)), check_n=0)
    assert ok
    onnx.save(simplified, str(tmp_path / "simplified.onnx"))
    _assert_same_outputs(_run_onnx(tmp_path / "simplified.onnx"), want)
