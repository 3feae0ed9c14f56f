"""Predictor: input formats, padding, dtype conversion, outputs, and parity across runners."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "runtimes"))
import model_files  # noqa: E402

from bgm_deploy.images import load_image, to_uint8  # noqa: E402
from bgm_deploy.predictor import Predictor  # noqa: E402
from model.errors import UsageError  # noqa: E402
from runtimes import BaseRunner, TensorMeta, create_runner  # noqa: E402

ALL = ("pha", "fgr", "rgba", "err", "ref")
# The fp32 parity tolerance of the whole suite (exported graphs vs eager PyTorch differ by
# ~2e-6 on these synthetic weights).
ATOL = 1e-4


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.getbasetemp() / "bgm_models"
    return {kind: model_files.model_file(kind, root) for kind in ("onnx", "torchscript")}


@pytest.fixture(scope="module")
def pair(pairs_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """A crop of the 1001x667 pair of a size not divisible by 4 (129 x 163)."""
    src = load_image(pairs_dir / "cat_rocket_1001x667" / "src.jpg")
    bgr = load_image(pairs_dir / "cat_rocket_1001x667" / "bgr.jpg")
    window = (slice(300, 429), slice(400, 563))
    return src[window].copy(), bgr[window].copy()


@pytest.fixture(scope="module")
def onnx_predictor(models: dict[str, Path]) -> Predictor:
    with Predictor.load(models["onnx"]) as predictor:
        yield predictor


def test_same_results_through_every_runner(models: dict[str, Path], pair: tuple[np.ndarray, np.ndarray]) -> None:
    results, providers = {}, {}
    for label, predictor in (
        ("onnxruntime", Predictor.load(models["onnx"])),
        ("torchscript", Predictor.load(models["torchscript"])),
        ("pytorch", Predictor.load(model_config=model_files.TEST_CONFIG)),
    ):
        with predictor:
            assert predictor.runner.name == label
            results[label] = predictor.predict(*pair, outputs=ALL)
            providers[label] = predictor.provider
    assert providers == {"onnxruntime": "CPUExecutionProvider", "torchscript": "torch.jit:cpu", "pytorch": "torch:cpu"}
    reference = results["pytorch"]
    for label in ("onnxruntime", "torchscript"):
        for name in ("pha", "fgr", "err"):
            np.testing.assert_allclose(getattr(results[label], name), getattr(reference, name), atol=ATOL, err_msg=f"{label} {name}")
        assert np.abs(results[label].rgba.astype(int) - reference.rgba.astype(int)).max() <= 2
        assert np.array_equal(results[label].ref, reference.ref), label


def test_openvino_same_results_as_pytorch(models: dict[str, Path], pair: tuple[np.ndarray, np.ndarray]) -> None:
    """The optional OpenVINO runner (extra [openvino]) in the same parity check, at f32."""
    pytest.importorskip("openvino", reason='openvino is not installed (pip install "bgm-deploy[openvino]")')
    with Predictor.load(models["onnx"], target="openvino-cpu") as ov, Predictor.load(model_config=model_files.TEST_CONFIG) as pt:
        assert ov.runner.name == "openvino" and ov.provider == "openvino:CPU/f32"
        got, reference = ov.predict(*pair, outputs=ALL), pt.predict(*pair, outputs=ALL)
    for name in ("pha", "fgr", "err"):
        np.testing.assert_allclose(getattr(got, name), getattr(reference, name), atol=ATOL, err_msg=f"openvino {name}")
    assert np.abs(got.rgba.astype(int) - reference.rgba.astype(int)).max() <= 2
    assert np.array_equal(got.ref, reference.ref)


def test_outputs_have_the_input_size_and_documented_types(onnx_predictor: Predictor, pair: tuple[np.ndarray, np.ndarray]) -> None:
    result = onnx_predictor.predict(*pair, outputs=ALL)
    height, width = pair[0].shape[:2]
    assert result.pha.shape == (height, width) and result.pha.dtype == np.float32
    assert result.fgr.shape == (height, width, 3) and result.fgr.dtype == np.float32
    assert result.err.shape == (height, width) and result.ref.shape == (height, width)
    assert result.rgba.shape == (height, width, 4) and result.rgba.dtype == np.uint8
    assert 0 <= result.pha.min() and result.pha.max() <= 1 and 0 <= result.err.min() and result.err.max() <= 1
    assert set(np.unique(result.ref)) <= {0.0, 1.0} and result.ref.any()
    np.testing.assert_array_equal(result.rgba[..., 3], to_uint8(result.pha))
    assert not result.rgba[..., :3][result.pha == 0].any()
    assert result.seconds > 0
    default = onnx_predictor.predict(*pair)
    assert default.rgba is None and default.err is None and default.ref is None


def test_padding_is_cropped_back(onnx_predictor: Predictor, pair: tuple[np.ndarray, np.ndarray]) -> None:
    src, bgr = pair  # 129 x 163 -> padded to 132 x 164
    padded = [np.pad(image, ((0, 3), (0, 1), (0, 0)), mode="edge") for image in pair]
    full = onnx_predictor.predict(*padded, outputs=("pha", "fgr"))
    cropped = onnx_predictor.predict(src, bgr, outputs=("pha", "fgr"))
    np.testing.assert_allclose(cropped.pha, full.pha[:129, :163], atol=1e-6)
    np.testing.assert_allclose(cropped.fgr, full.fgr[:129, :163], atol=1e-6)
    with Predictor.load(onnx_predictor.source, padding="reflect") as reflect:
        other = reflect.predict(src, bgr)
    assert other.pha.shape == cropped.pha.shape
    with pytest.raises(UsageError, match="'zeros' is not valid"):
        Predictor.load(onnx_predictor.source, padding="zeros")


def test_input_formats_give_the_same_result(onnx_predictor: Predictor, pair: tuple[np.ndarray, np.ndarray]) -> None:
    src, bgr = pair
    reference = onnx_predictor.predict(src, bgr)
    as_float = onnx_predictor.predict(src / 255.0, bgr.astype(np.float32) / 255)
    as_pil = onnx_predictor.predict(Image.fromarray(src), Image.fromarray(bgr))
    as_torch = onnx_predictor.predict(torch.from_numpy(src).permute(2, 0, 1), torch.from_numpy(bgr).permute(2, 0, 1))
    as_rgba = onnx_predictor.predict(Image.fromarray(src).convert("RGBA"), np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)]))
    for other in (as_float, as_pil, as_torch, as_rgba):
        np.testing.assert_allclose(other.pha, reference.pha, atol=1e-5)
    batch = np.stack([src, src[::-1, ::-1]]).transpose(0, 3, 1, 2).astype(np.float32) / 255
    batched = onnx_predictor.predict(batch, np.stack([bgr, bgr[::-1, ::-1]]).transpose(0, 3, 1, 2) / 255.0)
    assert batched.pha.shape == (2, *src.shape[:2]) and batched.fgr.shape == (2, *src.shape)
    np.testing.assert_allclose(batched.pha[0], reference.pha, atol=1e-4)
    gray = onnx_predictor.predict(Image.fromarray(src).convert("L"), Image.fromarray(bgr).convert("L"))
    assert gray.pha.shape == src.shape[:2]


def test_bad_inputs_are_usage_errors(onnx_predictor: Predictor, pair: tuple[np.ndarray, np.ndarray]) -> None:
    src, bgr = pair
    with pytest.raises(UsageError, match="same size"):
        onnx_predictor.predict(src, bgr[:-4])
    with pytest.raises(UsageError, match="divide 8-bit values by 255"):
        onnx_predictor.predict(src.astype(np.float32), bgr.astype(np.float32))
    with pytest.raises(UsageError, match="choose from"):
        onnx_predictor.predict(src, bgr, outputs=("alpha",))
    with pytest.raises(UsageError, match="numpy array, a PIL image or a torch tensor"):
        onnx_predictor.predict(src.tolist(), bgr)
    with pytest.raises(UsageError, match="channels"):
        onnx_predictor.predict(src[..., :2], bgr[..., :2])


def test_outputs_missing_from_the_model_are_reported(pair: tuple[np.ndarray, np.ndarray]) -> None:
    runner = create_runner("pytorch", model_config=model_files.TEST_CONFIG, outputs=("pha", "fgr"))
    with Predictor.from_runner(runner) as predictor:
        assert predictor.available_outputs == ("pha", "fgr", "rgba")
        assert predictor.predict(*pair, outputs=("rgba",)).rgba is not None
        with pytest.raises(UsageError, match="err not available"):
            predictor.predict(*pair, outputs=("pha", "err"))
    assert not runner.is_active


class _Float16Runner(BaseRunner):
    """A stand-in for an fp16 model file: records what it was fed, returns fp16 outputs."""

    name = "fake-fp16"

    def __init__(self) -> None:
        super().__init__()
        self.fed: dict[str, Any] = {}

    def _activate(self) -> None:
        self.provider = "fake"

    def _deactivate(self) -> None:
        pass

    def _io_metadata(self) -> tuple[dict[str, TensorMeta], dict[str, TensorMeta]]:
        inputs = {n: TensorMeta(n, np.dtype(np.float16), ("b", 3, "h", "w")) for n in ("src", "bgr")}
        outputs = {n: TensorMeta(n, np.dtype(np.float16), ("b", None, None, None)) for n in ("pha", "fgr")}
        return inputs, outputs

    def _infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        self.fed = feeds
        return {"pha": feeds["src"][:, :1], "fgr": feeds["bgr"]}


def test_float16_models_get_float16_inputs_and_give_float32() -> None:
    runner = _Float16Runner()
    with Predictor.from_runner(runner) as predictor:
        src = np.full((10, 14, 3), 128, np.uint8)
        result = predictor.predict(src, src)
    assert runner.fed["src"].dtype == np.float16 and runner.fed["src"].shape == (1, 3, 12, 16)
    assert result.pha.dtype == np.float32 and result.pha.shape == (10, 14)
    np.testing.assert_allclose(result.pha, 128 / 255, atol=1e-3)


def test_load_from_a_checkpoint_and_load_errors(tmp_path: Path, models: dict[str, Path], pair: tuple[np.ndarray, np.ndarray]) -> None:
    from model.checkpoint import build_model

    checkpoint = tmp_path / "weights.pth"
    torch.save(build_model(model_files.TEST_CONFIG).state_dict(), checkpoint)
    with Predictor.load(checkpoint=checkpoint) as predictor:
        config = predictor.model_config
        assert config.backbone == "mobilenetv2" and config.checkpoint_sha256 is not None and config.seed is None
        assert predictor.runner.name == "pytorch"
        assert predictor.predict(*pair).pha.shape == pair[0].shape[:2]
    with pytest.raises(UsageError, match="nothing to load"):
        Predictor.load()
    with pytest.raises(UsageError, match="alternatives"):
        Predictor.load(models["onnx"], checkpoint=checkpoint)
    with pytest.raises(UsageError, match="cannot run a torchscript model"):
        Predictor.load(models["torchscript"], target="tensorrt")


# Runners compared for parity in test_same_results_through_every_runner, and runners whose
# parity needs hardware this suite cannot assume (with where it is tested instead).
PARITY_RUNNERS = {"onnxruntime", "torchscript", "pytorch", "openvino",  # openvino: test_openvino_same_results_as_pytorch
                  # export then verify against PyTorch: tests/bgm_deploy/test_export_targets.py
                  "executorch", "aoti", "litert"}
HARDWARE_ONLY_RUNNERS = {"tensorrt": "tests/tensorrt/test_tensorrt_engine.py (marked tensorrt)",
                         "coreml": "macOS only: tests/bgm_deploy/test_export_targets.py checks the conversion and spec"}


def test_every_registered_runner_is_in_the_parity_matrix() -> None:
    from runtimes import runner_names

    missing = set(runner_names()) - PARITY_RUNNERS - set(HARDWARE_ONLY_RUNNERS)
    assert not missing, f"runners without a parity test: {sorted(missing)}; add them to the cross-runner test"


def test_every_export_format_is_in_the_parity_matrix() -> None:
    from bgm_deploy.export import FORMATS

    # onnx: tests/exporters/test_onnx.py matrix; torchscript: tests/exporters/test_torchscript.py
    # and the cross-runner test above; tensorrt engines: hardware-only (see above).
    assert set(FORMATS) == {"onnx", "torchscript"}
