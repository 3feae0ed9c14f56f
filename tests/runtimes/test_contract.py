"""One contract every registered runner passes (lifecycle, input checks, outputs)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from model.errors import RunnerError
from model.spec import OUTPUT_NAMES
from runtimes import BaseRunner, runner_names

BATCH, HEIGHT, WIDTH = 2, 96, 128
# Expected (channels, height, width) of every refine output for HEIGHT x WIDTH at scale 0.25.
EXPECTED_SHAPES = {
    "pha": (1, HEIGHT, WIDTH),
    "fgr": (3, HEIGHT, WIDTH),
    "pha_sm": (1, HEIGHT // 4, WIDTH // 4),
    "fgr_sm": (3, HEIGHT // 4, WIDTH // 4),
    "err_sm": (1, HEIGHT // 4, WIDTH // 4),
    "ref_sm": (1, HEIGHT // 4, WIDTH // 4),
}


def _feeds(dtype: np.dtype = np.dtype(np.float32)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {name: rng.random((BATCH, 3, HEIGHT, WIDTH)).astype(dtype) for name in ("src", "bgr")}


@pytest.fixture(params=runner_names())
def runner(request: pytest.FixtureRequest, make_runner: Callable[[str], BaseRunner]) -> BaseRunner:
    return make_runner(request.param)


def test_the_backends_of_this_package_are_registered() -> None:
    # A runner without a factory in conftest.py fails the parametrised tests below.
    assert {"onnxruntime", "torchscript", "pytorch"} <= set(runner_names())


def test_lifecycle_errors_and_context_manager(runner: BaseRunner) -> None:
    with pytest.raises(RunnerError, match="not active"):
        runner.infer(_feeds())
    with pytest.raises(RunnerError, match="not active"):
        runner.deactivate()
    with runner as active:
        assert active is runner and runner.is_active
        assert runner.provider != "unknown"
        with pytest.raises(RunnerError, match="already active"):
            runner.activate()
    assert not runner.is_active
    with pytest.raises(RunnerError, match="not active"):
        runner.input_metadata()


def test_inputs_are_checked_and_outputs_match_metadata(runner: BaseRunner) -> None:
    with runner:
        inputs = runner.input_metadata()
        assert set(inputs) == {"src", "bgr"}
        dtype = np.dtype(inputs["src"].dtype)
        feeds = _feeds(dtype)
        with pytest.raises(RunnerError, match="missing"):
            runner.infer({"src": feeds["src"], "background": feeds["bgr"]})
        with pytest.raises(RunnerError, match="dtype"):
            runner.infer({key: value.astype(np.float64) for key, value in feeds.items()})
        with pytest.raises(RunnerError, match="shape"):
            runner.infer({key: value[0] for key, value in feeds.items()})
        outputs = runner.infer(feeds)
        declared = runner.output_metadata()
        assert list(outputs) == list(declared)
        assert set(outputs) <= set(OUTPUT_NAMES["refine"])
        for name, value in outputs.items():
            assert isinstance(value, np.ndarray), name
            assert value.shape == (BATCH, *EXPECTED_SHAPES[name]), name
            assert np.isfinite(value).all(), name
        assert 0.0 <= outputs["pha"].min() and outputs["pha"].max() <= 1.0
        assert set(np.unique(outputs["ref_sm"])) <= {0.0, 1.0}
        assert runner.last_inference_time is not None and runner.last_inference_time > 0
