"""bgm-deploy verify: passing exports, tampered models, selection analysis, report, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from bgm_deploy.cli import cli
from bgm_deploy.export import export
from bgm_deploy.verify import VerifyConfig, analyse_selection, compare_output, verify
from exporters.config import OnnxConfig, TorchScriptConfig
from model.config import ModelConfig

SMALL = VerifyConfig(resolutions=((160, 128), (128, 96)), batch=2, inputs=("random",))


def _config(**changes) -> ModelConfig:
    changes.setdefault("refine_patch_crop_method", "roi_align")
    changes.setdefault("refine_patch_replace_method", "scatter_element")
    changes.setdefault("refine_sample_pixels", 2_000)
    return ModelConfig(backbone_scale=0.25, **changes)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("verify")


@pytest.fixture(scope="module")
def onnx_legacy(workdir: Path) -> Path:
    path = workdir / "legacy.onnx"
    export(_config(), path, "onnx", onnx=OnnxConfig(exporter="legacy", trace_resolution=(160, 128)))
    return path


@pytest.fixture(scope="module")
def onnx_thresholding(workdir: Path) -> Path:
    path = workdir / "thresholding.onnx"
    export(_config(refine_mode="thresholding"), path, "onnx", onnx=OnnxConfig(exporter="legacy", trace_resolution=(160, 128)))
    return path


def test_onnx_legacy_passes(onnx_legacy: Path) -> None:
    report = verify(onnx_legacy, SMALL)
    assert report.passed, [c.notes for c in report.cases]
    assert {c.verdict for c in report.cases} == {"pass"}
    assert any(c.selection.refined_reference > 0 for c in report.cases)
    assert report.provider == "CPUExecutionProvider"


def test_onnx_dynamo_passes(workdir: Path) -> None:
    path = workdir / "dynamo.onnx"
    export(_config(refine_mode="thresholding"), path, "onnx", onnx=OnnxConfig(exporter="dynamo", opset=18, trace_resolution=(160, 128)))
    report = verify(path, VerifyConfig(resolutions=((160, 128),), batch=2, inputs=("random",)))
    assert report.passed, [c.notes for c in report.cases]


def test_torchscript_passes(workdir: Path) -> None:
    path = workdir / "model.pt"
    export(_config(), path, "torchscript", torchscript=TorchScriptConfig())
    report = verify(path, VerifyConfig(resolutions=((160, 128),), batch=2, inputs=("random",)))
    assert report.passed and report.format == "torchscript"


def test_real_pairs_and_zero_patch_case(onnx_thresholding: Path, pairs_dir: Path) -> None:
    report = verify(onnx_thresholding, VerifyConfig(resolutions=((160, 128),), batch=1, inputs=("random", "pairs")))
    assert report.passed
    names = [c.name for c in report.cases]
    assert any(n.startswith("pair:cat_rocket") for n in names) and any("src=bgr" in n for n in names)
    cat = next(c for c in report.cases if c.name.startswith("pair:cat_rocket"))
    assert cat.shape == [1, 3, 664, 1000]  # cropped to a multiple of 4


def _tampered(source: Path, target: Path, edit) -> Path:
    proto = onnx.load(str(source))
    edit(proto)
    onnx.save(proto, str(target))
    return target


def test_perturbed_initializer_fails_with_exit_1(onnx_legacy: Path, tmp_path: Path) -> None:
    def perturb(proto: onnx.ModelProto) -> None:
        # The decoder's last bias (37 channels; channel 0 is alpha).
        init = next(t for t in proto.graph.initializer if list(t.dims) == [37])
        array = numpy_helper.to_array(init).copy()
        array[0] += 0.05
        init.CopyFrom(numpy_helper.from_array(array, init.name))

    bad = _tampered(onnx_legacy, tmp_path / "perturbed.onnx", perturb)
    result = CliRunner().invoke(
        cli, ["verify", str(bad), "--inputs", "random", "--resolution", "160x128", "--save-diff", str(tmp_path / "diff"),
              "--json", str(tmp_path / "r.json")]
    )
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["verdict"] == "fail"
    assert list((tmp_path / "diff").glob("*_pha_absdiff_*.png"))


def test_swapped_outputs_fail(onnx_legacy: Path, tmp_path: Path) -> None:
    def swap(proto: onnx.ModelProto) -> None:
        names = {o.name: o for o in proto.graph.output}
        for node in proto.graph.node:
            node.output[:] = ["__tmp__" if o == "pha_sm" else o for o in node.output]
            node.input[:] = ["__tmp__" if i == "pha_sm" else i for i in node.input]
        for node in proto.graph.node:
            node.output[:] = ["pha_sm" if o == "err_sm" else o for o in node.output]
            node.input[:] = ["pha_sm" if i == "err_sm" else i for i in node.input]
        for node in proto.graph.node:
            node.output[:] = ["err_sm" if o == "__tmp__" else o for o in node.output]
            node.input[:] = ["err_sm" if i == "__tmp__" else i for i in node.input]
        assert names

    bad = _tampered(onnx_legacy, tmp_path / "swapped.onnx", swap)
    report = verify(bad, VerifyConfig(resolutions=((160, 128),), batch=1, inputs=("random",)))
    assert not report.passed


def test_selection_forced_to_differ_fails(onnx_thresholding: Path, tmp_path: Path) -> None:
    """Move the threshold constant inside the graph: selections differ away from ties."""

    def move_threshold(proto: onnx.ModelProto) -> None:
        inits = {t.name: t for t in proto.graph.initializer}
        changed = 0
        for node in proto.graph.node:
            if node.op_type == "Greater":
                for name in node.input:
                    if name in inits and numpy_helper.to_array(inits[name]).size == 1:
                        value = numpy_helper.to_array(inits[name])
                        if np.isclose(float(value), 0.1):
                            inits[name].CopyFrom(numpy_helper.from_array(np.full_like(value, 0.3), name))
                            changed += 1
            for attr in node.attribute:
                if node.op_type == "Constant" and attr.t.dims == [] and attr.t.data_type == onnx.TensorProto.FLOAT:
                    value = numpy_helper.to_array(attr.t)
                    if np.isclose(float(value), 0.1):
                        attr.t.CopyFrom(numpy_helper.from_array(np.full_like(value, 0.3)))
                        changed += 1
        assert changed, "no threshold constant found in the graph"

    bad = _tampered(onnx_thresholding, tmp_path / "threshold.onnx", move_threshold)
    report = verify(bad, VerifyConfig(resolutions=((160, 128),), batch=1, inputs=("random",)))
    assert not report.passed
    case = report.cases[0]
    assert case.selection.differing > case.selection.differing_at_ties
    assert any("away from any tie" in note for note in case.notes)


def test_selection_analysis_explains_ties() -> None:
    err = np.zeros((1, 1, 4, 4), dtype=np.float32)
    err[0, 0, 0, :] = [0.9, 0.5, 0.5, 0.1]  # k=2: the 2nd place is tied between two cells
    ref_a = np.zeros_like(err)
    ref_b = np.zeros_like(err)
    ref_a[0, 0, 0, [0, 1]] = 1
    ref_b[0, 0, 0, [0, 2]] = 1
    stats, differing = analyse_selection(ref_a, ref_b, err, "sampling", 0.1, 2, True, 1e-4)
    assert (stats.differing, stats.differing_at_ties) == (2, 2)
    ref_c = np.zeros_like(err)
    ref_c[0, 0, 0, [0, 3]] = 1  # a cell far below the k-th value
    stats, _ = analyse_selection(ref_a, ref_c, err, "sampling", 0.1, 2, True, 1e-4)
    assert stats.differing == 2 and stats.differing_at_ties == 1
    stats, _ = analyse_selection(err > 0.3, err > 0.45, err, "thresholding", 0.3, 0, True, 1e-4)
    assert stats.differing == 0


def test_compare_output_statistics() -> None:
    ref = np.zeros((1, 1, 4, 4), dtype=np.float32)
    act = ref.copy()
    act[0, 0, 1, 2] = 0.01
    stats = compare_output("pha", ref, act, atol=1e-3, rtol=0.0)
    assert stats.max_abs == pytest.approx(0.01) and stats.over_tolerance == 1 and stats.worst_index == [0, 0, 1, 2]
    assert not stats.passed and stats.psnr == pytest.approx(10 * np.log10(1 / (0.01**2 / 16)))
    mask = np.zeros_like(ref, dtype=bool)
    mask[0, 0, 1, 2] = True
    assert compare_output("pha", ref, act, 1e-3, 0.0, mask).over_tolerance_outside == 0


def test_json_report_schema(onnx_legacy: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["--quiet", "verify", str(onnx_legacy), "--inputs", "random", "--resolution", "128x96",
                                      "--batch", "1", "--atol", "pha=1e-3", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["schema_version"] == 1 and data["verdict"] == "pass" and data["format"] == "onnx"
    assert {"config", "environment", "cases"} - {"config"} <= set(data) and "model_config" in data
    assert {"onnxruntime", "torch", "cpu"} <= set(data["environment"])
    case = data["cases"][0]
    assert {"name", "shape", "outputs", "selection", "verdict"} <= set(case)
    assert {"refined_reference", "refined_runtime", "differing", "differing_at_ties", "refined_fraction"} <= set(case["selection"])
    pha = next(o for o in case["outputs"] if o["name"] == "pha")
    assert {"max_abs", "mean_abs", "p99_abs", "max_rel", "psnr", "over_tolerance", "worst_index", "passed"} <= set(pha)
    assert pha["atol"] == 1e-3


@pytest.mark.parametrize(
    "args,message",
    [
        (["missing.onnx"], "does not exist"),
        (["{model}", "--resolution", "130x96"], "divisible by 4"),
        (["{model}", "--inputs", "photos"], "inputs="),
        (["{model}", "--atol", "pha=big"], "--atol"),
        (["{model}", "--provider", "cuda"], "CUDA"),
    ],
)
def test_usage_and_environment_errors_exit_2(onnx_legacy: Path, args: list[str], message: str) -> None:
    args = [a.replace("{model}", str(onnx_legacy)) for a in args]
    result = CliRunner().invoke(cli, ["verify", *args])
    assert result.exit_code == 2, result.output
    assert message.lower() in result.output.lower()
    assert "Traceback" not in result.output


# -- the selection boundary (issue: a tie flip must be an explained warning) --------------
def _synthetic_case(err_q: np.ndarray, ref_ref: np.ndarray, ref_rt: np.ndarray, flip_blocks_in_pha: bool = True):
    """Reference/runtime outputs of a 1x3xHxW image whose quarter-resolution error map is
    ``err_q`` (err_sm at quarter size, so the bilinear resize is the identity); the runtime's
    pha differs by 0.5 in the 4x4 blocks where the two selections differ."""
    _, _, hq, wq = err_q.shape
    pha = np.zeros((1, 1, hq * 4, wq * 4), dtype=np.float32)
    expected = {"pha": pha, "fgr": np.zeros((1, 3, hq * 4, wq * 4), np.float32), "err_sm": err_q, "ref_sm": ref_ref}
    differing = (ref_ref > 0.5) != (ref_rt > 0.5)
    got_pha = pha + 0.5 * np.repeat(np.repeat(differing, 4, axis=2), 4, axis=3) * flip_blocks_in_pha
    got = {"pha": got_pha.astype(np.float32), "fgr": expected["fgr"].copy(), "err_sm": err_q.copy(), "ref_sm": ref_rt}
    return expected, got


def _cells(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(1, 1, 2, 4)


def test_sampling_tie_flip_is_an_explained_warning() -> None:
    from bgm_deploy.verify import compare_case

    err_q = _cells([0.9, 0.5, 0.5, 0.1, 0.05, 0.2, 0.3, 0.0])
    ref_ref = _cells([1, 1, 0, 0, 0, 0, 0, 0])
    ref_rt = _cells([1, 0, 1, 0, 0, 0, 0, 0])  # the other of the two cells tied at the k-th value
    config = ModelConfig(refine_sample_pixels=2 * 16)  # k = 2
    expected, got = _synthetic_case(err_q, ref_ref, ref_rt)
    case = compare_case("tie", [1, 3, 8, 16], expected, got, config, "float32", VerifyConfig())
    assert case.verdict == "warn", case.notes
    assert (case.selection.differing, case.selection.differing_at_ties) == (2, 2)
    assert any("selection boundary" in note for note in case.notes)


def test_sampling_flip_away_from_the_boundary_fails() -> None:
    from bgm_deploy.verify import compare_case

    err_q = _cells([0.9, 0.5, 0.5, 0.1, 0.05, 0.2, 0.3, 0.0])
    ref_ref = _cells([1, 1, 0, 0, 0, 0, 0, 0])
    ref_rt = _cells([1, 0, 0, 1, 0, 0, 0, 0])  # 0.1 is far below the k-th value 0.5
    expected, got = _synthetic_case(err_q, ref_ref, ref_rt)
    case = compare_case("flip", [1, 3, 8, 16], expected, got, ModelConfig(refine_sample_pixels=32), "float32", VerifyConfig())
    assert case.verdict == "fail"
    assert any("away from any tie" in note for note in case.notes)


def test_thresholding_rounding_flip_warns_and_a_real_flip_fails() -> None:
    from bgm_deploy.verify import compare_case

    config = ModelConfig(refine_mode="thresholding", refine_threshold=0.1)
    err_q = _cells([0.9, 0.1 + 3e-7, 0.05, 0.3, 0.0, 0.0, 0.2, 0.01])
    ref_ref = (err_q > 0.1).astype(np.float32)
    rounding = ref_ref.copy()
    rounding[0, 0, 0, 1] = 0  # the runtime's error came out a hair below the threshold
    case = compare_case("rounding", [1, 3, 8, 16], *_synthetic_case(err_q, ref_ref, rounding), config, "float32", VerifyConfig())
    assert case.verdict == "warn", case.notes
    real = ref_ref.copy()
    real[0, 0, 1, 3] = 1  # error 0.01, far below the threshold
    case = compare_case("real", [1, 3, 8, 16], *_synthetic_case(err_q, ref_ref, real), config, "float32", VerifyConfig())
    assert case.verdict == "fail"


def test_tie_flip_with_outputs_differing_elsewhere_fails() -> None:
    from bgm_deploy.verify import compare_case

    err_q = _cells([0.9, 0.5, 0.5, 0.1, 0.05, 0.2, 0.3, 0.0])
    expected, got = _synthetic_case(err_q, _cells([1, 1, 0, 0, 0, 0, 0, 0]), _cells([1, 0, 1, 0, 0, 0, 0, 0]))
    got["pha"][0, 0, 7, 15] += 0.01  # outside every differing block
    case = compare_case("elsewhere", [1, 3, 8, 16], expected, got, ModelConfig(refine_sample_pixels=32), "float32", VerifyConfig())
    assert case.verdict == "fail"
    assert not any("same patch selection" in note for note in case.notes)


def test_pruned_ref_sm_tie_is_explained_not_same_selection() -> None:
    from bgm_deploy.verify import compare_case

    err_q = _cells([0.9, 0.5, 0.5, 0.1, 0.05, 0.2, 0.3, 0.0])
    expected, got = _synthetic_case(err_q, _cells([1, 1, 0, 0, 0, 0, 0, 0]), _cells([1, 0, 1, 0, 0, 0, 0, 0]))
    pruned = {"pha": got["pha"], "fgr": got["fgr"]}
    config = ModelConfig(refine_sample_pixels=32)
    case = compare_case("pruned", [1, 3, 8, 16], expected, pruned, config, "float32", VerifyConfig())
    assert case.verdict == "warn", case.notes
    assert not any("same patch selection" in note for note in case.notes)
    pruned["pha"] = pruned["pha"].copy()
    pruned["pha"][0, 0, 0, 12] += 0.3  # cell (0, 3): error 0.1, nowhere near the boundary
    case = compare_case("pruned", [1, 3, 8, 16], expected, pruned, config, "float32", VerifyConfig())
    assert case.verdict == "fail"
    assert not any("same patch selection" in note for note in case.notes)


def test_hd_pair_with_tied_cells_is_a_warning_not_a_failure(tmp_path: Path, pairs_dir: Path) -> None:
    """The reported case: seed 1 with the HD preset (k = 5,000) on the HD photo pair; 1,324
    cells tied at the k-th error are picked differently by onnxruntime's and PyTorch's top-k.
    This failed before the boundary fix; it must pass with an explained warning."""
    import shutil

    path = tmp_path / "s.onnx"
    report = export(_config(seed=1, refine_sample_pixels=80_000), path, "onnx",
                    onnx=OnnxConfig(exporter="legacy", trace_resolution=(320, 256)))
    assert report.recheck_max_abs_diff is not None
    hd = tmp_path / "pairs"
    shutil.copytree(pairs_dir / "astronaut_rocket_1920x1080_shifted", hd / "astronaut_rocket_1920x1080_shifted")
    result = verify(path, VerifyConfig(inputs=("pairs",), pairs_dir=str(hd)))
    assert result.passed, [c.notes for c in result.cases]
    case = result.cases[0]
    assert case.verdict == "warn" and case.selection.differing > 0
    assert case.selection.differing == case.selection.differing_at_ties
    assert any("ties" in warning for warning in result.warnings)


def test_save_diff_heatmap_has_image_and_legend(onnx_legacy: Path, tmp_path: Path) -> None:
    from PIL import Image

    from bgm_deploy.verify import render_diff

    image = np.zeros((3, 64, 96), dtype=np.float32)
    image[:, :, 48:] = 1.0  # a visible image beneath: left half dark, right half light
    diff = np.zeros((64, 96), dtype=np.float32)
    diff[10:20, 10:20] = 0.05
    picture = render_diff(image, diff, 1e-4, "case")
    array = np.asarray(picture)
    assert picture.height > 64 + 40  # the colour bar and its labels below the image
    body = array[18 : 18 + 64, :96].astype(int)
    assert body[40, 20].sum() < body[40, 70].sum()  # the image shows through where there is no error
    assert tuple(body[15, 15]) != tuple(body[40, 20])  # the error is coloured
    legend = array[18 + 64 :]
    assert (legend < 100).any() and (legend.std(axis=(0, 2)) > 0).any()  # text and a ramp drawn
    Image.fromarray(array).save(tmp_path / "h.png")
