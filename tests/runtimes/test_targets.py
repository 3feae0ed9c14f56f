"""The target registry: one declaration per runner/device pair, read by --help, info and bench."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bgm_deploy.bench.backends import bench_rows
from bgm_deploy.cli import cli
from model.errors import UsageError
from runtimes import runner_names
from runtimes.targets import DEVICE_WORDS, Target, register_target, resolve_target, target_choices, targets


def test_every_target_is_in_help_info_and_bench() -> None:
    names = [target.name for target in targets()]
    assert set(DEVICE_WORDS) | set(names) == set(target_choices())
    for command in ("verify", "matte", "serve", "evaluate"):
        text = " ".join(CliRunner().invoke(cli, [command, "--help"], terminal_width=10_000).output.split())
        missing = [name for name in names if name not in text]
        assert not missing, f"{command} --help does not list {missing}"
    info = json.loads(CliRunner().invoke(cli, ["info", "--json"]).output)
    assert [row["name"] for row in info["targets"]] == names
    for row in info["targets"]:
        assert row["usable"] == (row["why_not"] is None)
    rows = {row.target.name for row in bench_rows()}
    assert rows == set(names), "every target is a bench row"


def test_each_target_names_a_registered_runner_and_a_known_device() -> None:
    for target in targets():
        assert target.runner in runner_names(), target.name
        assert target.device in ("cpu", "cuda")
        if target.device == "cuda":
            assert target.verified is False, f"{target.name}: no GPU run has verified it"


def test_registering_twice_or_a_device_word_is_refused() -> None:
    existing = targets()[0]
    with pytest.raises(UsageError, match="already registered"):
        register_target(existing)
    with pytest.raises(UsageError, match="reserved"):
        register_target(Target("cpu", "onnxruntime", "cpu", ("onnx",), "x", lambda request: {}))
    with pytest.raises(UsageError, match="device='tpu' is not valid"):
        Target("x-tpu", "onnxruntime", "tpu", ("onnx",), "x", lambda request: {})


def test_target_options_apply_only_where_declared() -> None:
    openvino = resolve_target("openvino-cpu", "onnx")
    assert openvino.option_values({}) == {"precision": "f32"}
    with pytest.raises(UsageError, match="--openvino-precision 'int4' is not valid"):
        openvino.option_values({"precision": "int4"})
    with pytest.raises(UsageError, match="does not apply to target onnxruntime-cpu"):
        resolve_target("cpu", "onnx").option_values({"precision": "f32"})
