"""``bgm-deploy serve`` on a real tritonserver (PyTriton's binary), its client, and Triton repositories.

One server per module, started through the CLI as a user would (loopback, free ports), is
shared by the parity, load, bad-request and ``matte --server`` tests and stopped with
SIGTERM by the last test. Needs the ``serve`` extra; skipped without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

if importlib.util.find_spec("pytriton") is None:  # only its wheel's tritonserver binary is used, never imported
    pytest.skip("needs the serving packages: pip install --no-deps -r requirements-serve.txt", allow_module_level=True)
tritonclient_http = pytest.importorskip("tritonclient.http")
tritonclient_grpc = pytest.importorskip("tritonclient.grpc")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "runtimes"))
import model_files

from bgm_deploy.cli import cli
from bgm_deploy.serve.client import ServerAddress, TritonMatteClient
from bgm_deploy.errors import UsageError
from bgm_deploy.images import to_uint8
from bgm_deploy.model_spec import ModelSpec
from bgm_deploy.predictor import Predictor
from bgm_deploy.serve.server import ServeConfig, TritonServer, free_port, with_free_ports
from bgm_deploy.serve.repository import (
    MissingExtraError,
    ServeError,
    TritonModelOptions,
    validate_config_text,
    write_python_repository,
)

REPO = Path(__file__).resolve().parents[3]
MAX_PIXELS = 160 * 160  # small, so the oversize check is cheap to trigger
STARTUP_S = 120


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent's wait is missing.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_files.model_file("onnx", tmp_path_factory.getbasetemp() / "bgm_models")


@pytest.fixture(scope="module")
def predictor(onnx_model: Path) -> Iterator[Predictor]:
    with Predictor.load(onnx_model) as local:
        yield local


@pytest.fixture(scope="module")
def cli_server(onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """``bgm-deploy serve`` in a subprocess: uint8, pha/fgr/com, small max_pixels."""
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    log = tmp_path_factory.mktemp("serve") / "cli.log"
    command = [
        sys.executable, "-m", "bgm_deploy", "serve", str(onnx_model), "--http-port", str(ports["http"]),
        "--grpc-port", str(ports["grpc"]), "--metrics-port", str(ports["metrics"]), "--threads", "1",
        "--outputs", "pha,fgr,rgba", "--max-pixels", str(MAX_PIXELS), "--max-batch-size", "4",
    ]
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    info = {"process": process, "ports": ports, "log": log, "http": f"http://127.0.0.1:{ports['http']}",
            "grpc": f"grpc://127.0.0.1:{ports['grpc']}"}
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline and process.poll() is None and "serving 'bgm'" not in log.read_text():
        time.sleep(0.2)
    if "serving 'bgm'" not in log.read_text():
        process.kill()
        pytest.fail(f"bgm-deploy serve did not come up:\n{log.read_text()[-3000:]}")
    yield info
    if process.poll() is None:  # the SIGTERM test did not run
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def _images(seed: int, width: int = 64, height: int = 48, batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if batch is None else (batch, height, width, 3)
    bgr = rng.integers(0, 256, shape, dtype=np.uint8)
    src = bgr.copy()
    # A bright block the background lacks: something to matte.
    src[..., height // 4 : 3 * height // 4, width // 4 : 3 * width // 4, :] = rng.integers(150, 256, 3, dtype=np.uint8)
    return src, bgr


def _expect_equal_uint8(got: object, want: object) -> None:
    assert np.array_equal(to_uint8(got.pha), to_uint8(want.pha))
    assert np.array_equal(to_uint8(got.fgr), to_uint8(want.fgr))
    assert np.array_equal(got.rgba, want.rgba)


# -- parity ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["http", "grpc", "http+shm", "grpc+shm"])
def test_served_outputs_equal_the_local_predictor(cli_server: dict, predictor: Predictor, transport: str) -> None:
    protocol, _, shm = transport.partition("+")
    src, bgr = _images(1, 66, 50)  # not a multiple of 4: the client pads like the predictor
    want = predictor.predict(src, bgr, ("pha", "fgr", "rgba"))
    with TritonMatteClient(cli_server[protocol], shared_memory=bool(shm)) as client:
        got = client.predict(src, bgr, ("pha", "fgr", "rgba"))
        assert got.pha.shape == (50, 66) and got.rgba.shape == (50, 66, 4)
        _expect_equal_uint8(got, want)
        batch_src, batch_bgr = _images(2, 64, 48, batch=3)
        got = client.predict(batch_src, batch_bgr, ("pha", "fgr", "rgba"))
    want = predictor.predict(batch_src.transpose(0, 3, 1, 2), batch_bgr.transpose(0, 3, 1, 2), ("pha", "fgr", "rgba"))
    _expect_equal_uint8(got, want)


def test_python_repository_float_io_loads_in_tritonserver(onnx_model: Path, predictor: Predictor, tmp_path: Path) -> None:
    """A self-contained python-flavour repository (what export --format triton --triton-backend
    python writes) loaded by the real tritonserver: float32 in and out, equal to ≤ 1e-4."""
    options = TritonModelOptions(name="bgm_float", io_dtype="float32", outputs=("pha", "fgr"), pad=True)
    model_dir = write_python_repository(tmp_path / "repo", options, ModelSpec(model=str(onnx_model), threads=1))
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["model.onnx", "model.onnx.bgm.json", "model.py"]
    validate_config_text((model_dir / "config.pbtxt").read_text())
    src, bgr = _images(3, 62, 46)
    src_f, bgr_f = src.astype(np.float32) / 255, bgr.astype(np.float32) / 255
    want = predictor.predict(src_f, bgr_f, ("pha", "fgr"))
    with (
        TritonServer(with_free_ports(ServeConfig(repository=tmp_path / "repo"))) as server,
        TritonMatteClient(server.grpc_url, model_name="bgm_float") as client,
    ):
        assert client.info.io_dtype == np.float32 and client.info.pads
        got = client.predict(src_f, bgr_f, ("pha", "fgr"))
    assert got.pha.dtype == np.float32
    assert float(np.abs(got.pha - want.pha).max()) <= 1e-4
    assert float(np.abs(got.fgr - want.fgr).max()) <= 1e-4


# -- load -------------------------------------------------------------------------------------------
def test_bounded_load_every_response_matched(cli_server: dict, predictor: Predictor) -> None:
    """4 clients x 8 requests (mixed sizes, HTTP and gRPC): 0 failed, 0 lost, each response is
    the one for its own request (compared to the local predictor's output for that request)."""
    requests = [(_images(100 + i, 64 if i % 2 else 48, 48 if i % 3 else 32)) for i in range(32)]
    expected = [to_uint8(predictor.predict(src, bgr, ("pha",)).pha) for src, bgr in requests]
    clients = [TritonMatteClient(cli_server["http" if i % 2 else "grpc"], concurrency=1) for i in range(4)]

    def run(worker: int) -> list[tuple[int, np.ndarray]]:
        return [(i, to_uint8(clients[worker].predict(*requests[i], ("pha",)).pha)) for i in range(worker, 32, 4)]

    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(run, worker) for worker in range(4)]
            answers = [item for future in futures for item in future.result(timeout=120)]
    finally:
        for client in clients:
            client.close()
    assert sorted(index for index, _ in answers) == list(range(32))  # none lost, none twice
    mismatched = [index for index, pha in answers if not np.array_equal(pha, expected[index])]
    assert mismatched == []


def test_predict_many_keeps_order_over_two_transports(cli_server: dict, predictor: Predictor) -> None:
    pairs = [_images(200 + i) for i in range(6)]
    with TritonMatteClient([cli_server["http"], cli_server["grpc"]], concurrency=3) as client:
        results = list(client.predict_many(pairs, ("pha",)))
    for (src, bgr), got in zip(pairs, results):
        assert np.array_equal(to_uint8(got.pha), to_uint8(predictor.predict(src, bgr, ("pha",)).pha))


# -- bad requests ----------------------------------------------------------------------------------
BAD_REQUESTS = {
    "wrong dtype": (np.zeros((1, 48, 64, 3), np.float32), np.zeros((1, 48, 64, 3), np.float32), "expects 'UINT8'"),
    "wrong rank": (np.zeros((1, 48, 64), np.uint8), np.zeros((1, 48, 64), np.uint8), "unexpected shape|must have 4 dims"),
    "size mismatch": (np.zeros((1, 48, 64, 3), np.uint8), np.zeros((1, 48, 60, 3), np.uint8), "same shape"),
    "not multiple of 4": (np.zeros((1, 50, 66, 3), np.uint8), np.zeros((1, 50, 66, 3), np.uint8), "not a multiple of 4"),
    "oversized": (np.zeros((1, 200, 200, 3), np.uint8), np.zeros((1, 200, 200, 3), np.uint8), "over this server's limit"),
    "empty image": (np.zeros((1, 0, 64, 3), np.uint8), np.zeros((1, 0, 64, 3), np.uint8), "empty request"),
    "empty batch": (np.zeros((0, 48, 64, 3), np.uint8), np.zeros((0, 48, 64, 3), np.uint8), "byte size"),
}


def _raw_infer(module: object, location: str, src: np.ndarray, bgr: np.ndarray) -> str:
    client = module.InferenceServerClient(location)
    try:
        datatype = "FP32" if src.dtype == np.float32 else "UINT8"
        inputs = [module.InferInput("src", list(src.shape), datatype), module.InferInput("bgr", list(bgr.shape), datatype)]
        inputs[0].set_data_from_numpy(src)
        inputs[1].set_data_from_numpy(bgr)
        try:
            client.infer("bgm", inputs)
        except Exception as exc:  # noqa: BLE001 - tritonclient's InferenceServerException, per protocol
            return str(exc)
        return "no error"
    finally:
        client.close()


def test_bad_requests_get_clear_errors_while_good_requests_succeed(cli_server: dict, predictor: Predictor) -> None:
    src, bgr = _images(7)
    want = to_uint8(predictor.predict(src, bgr, ("pha",)).pha)
    stop, good, failures = threading.Event(), [], []

    def keep_busy() -> None:
        with TritonMatteClient(cli_server["grpc"]) as client:
            while not stop.is_set():
                try:
                    good.append(np.array_equal(to_uint8(client.predict(src, bgr, ("pha",)).pha), want))
                except Exception as exc:  # noqa: BLE001 - any failure of a good request fails the test
                    failures.append(repr(exc))

    worker = threading.Thread(target=keep_busy)
    worker.start()
    try:
        for name, (bad_src, bad_bgr, expected) in BAD_REQUESTS.items():
            for module, url in ((tritonclient_http, cli_server["http"]), (tritonclient_grpc, cli_server["grpc"])):
                message = _raw_infer(module, url.split("//")[1], bad_src, bad_bgr)
                assert re.search(expected, message), f"{name} over {url}: {message}"
    finally:
        stop.set()
        worker.join(timeout=60)
    assert failures == [] and good and all(good)
    with TritonMatteClient(cli_server["http"]) as client:  # still serving
        assert np.array_equal(to_uint8(client.predict(src, bgr, ("pha",)).pha), want)


def _post(url: str, body: bytes, headers: dict[str, str] | None = None,
          path: str = "/v2/models/bgm/infer") -> tuple[int, str]:
    request = urllib.request.Request(f"{url}{path}", data=body,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_request_of_any_declared_size_is_answered_and_the_server_keeps_serving(cli_server: dict,
                                                                                predictor: Predictor) -> None:
    """tritonserver 2.5x allocates an HTTP/JSON input by its declared shape before checking the
    data (std::bad_alloc killed the server): the guard answers such requests itself."""
    huge = {"inputs": [{"name": name, "shape": [1, 100000, 100000, 3], "datatype": "UINT8", "data": list(range(12))}
                       for name in ("src", "bgr")]}
    cases = [
        (json.dumps(huge).encode(), {}, "over this server's limit"),
        (json.dumps({"inputs": [{"name": "src", "shape": [1, 48, 64, 3], "datatype": "UINT8", "data": [1, 2, 3]},
                                {"name": "bgr", "shape": [1, 48, 64, 3], "datatype": "UINT8", "data": [1, 2, 3]}]}).encode(),
         {}, "declares 9216 values but 'data' holds 3"),
        (json.dumps({"inputs": [{"name": "src", "shape": [1, -4, 64, 3], "datatype": "UINT8"}]}).encode(), {},
         "non-negative integers"),
        (b"{not json", {}, "does not parse"),
        (b"x" * 16, {"Inference-Header-Content-Length": "999"}, "does not fit the body"),
    ]
    for body, headers, expected in cases:
        status, text = _post(cli_server["http"], body, headers)
        assert status == 400 and expected in json.loads(text)["error"], (status, text)
    # Triton routes on the decoded path without the query string: so does the guard.
    for path in ("/v2/models/bgm/infer?x=1", "/v2/models/bgm/inf%65r"):
        status, text = _post(cli_server["http"], json.dumps(huge).encode(), path=path)
        assert status == 400 and "over this server's limit" in json.loads(text)["error"], (path, status, text)
    for body, expected in ((b"[" * 100_000 + b"]" * 100_000, "does not parse"),
                           (json.dumps({"inputs": [{"name": "src", "shape": [1, 48, 64, 3], "datatype": "UINT8", "parameters": 5,
                                                        "data": [1]}]}).encode(), "malformed")):
        status, text = _post(cli_server["http"], body)
        assert status == 400 and expected in json.loads(text)["error"], (status, text[:200])
    host, port = cli_server["http"].removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as raw:  # urllib would fix the header
        raw.sendall(b"POST /v2/models/bgm/infer HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
        assert raw.recv(4096).split(b"\r\n", 1)[0].endswith(b"400 Bad Request")
    assert cli_server["process"].poll() is None  # still running
    src, bgr = _images(11)
    with TritonMatteClient(cli_server["http"]) as client:  # the next good request succeeds
        got = client.predict(src, bgr, ("pha",)).pha
    assert np.array_equal(to_uint8(got), to_uint8(predictor.predict(src, bgr, ("pha",)).pha))


def test_client_errors_are_clear(cli_server: dict) -> None:
    with pytest.raises(UsageError, match="not valid"):
        ServerAddress.parse("ftp://host:1")
    with pytest.raises(UsageError, match="same size"), TritonMatteClient(cli_server["http"]) as client:
        client.predict(np.zeros((48, 64, 3), np.uint8), np.zeros((48, 60, 3), np.uint8))
    with pytest.raises(ServeError, match="refused the request.*over this server's limit"), TritonMatteClient(cli_server["http"]) as client:
        client.predict(np.zeros((200, 200, 3), np.uint8), np.zeros((200, 200, 3), np.uint8))
    with pytest.raises(ServeError, match="cannot reach model 'bgm' at http://127.0.0.1:"):
        TritonMatteClient(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UsageError, match="shared_memory needs every server on this machine"):
        TritonMatteClient("http://10.1.2.3:8000", shared_memory=True)


def test_serving_defaults_fit_where_they_run(cli_server: dict, predictor: Predictor) -> None:
    """serve (no --dynamic-batching flag) on a CPU target: no dynamic batching, and it says so; a
    client of a server on this machine uses shared memory unless told otherwise."""
    from bgm_deploy.serve.server import default_dynamic_batching

    assert "dynamic batching off: a CPU target" in cli_server["log"].read_text()
    assert default_dynamic_batching(ModelSpec(seed=0))[0] is False
    assert default_dynamic_batching(ModelSpec(seed=0, target="cuda"))[0] is True
    src, bgr = _images(11)
    with TritonMatteClient(cli_server["http"]) as client:
        assert client.shared_memory and client.shared_memory_note.startswith("on")
        outputs = ("pha", "fgr", "rgba")
        _expect_equal_uint8(client.predict(src, bgr, outputs), predictor.predict(src, bgr, outputs))
    with TritonMatteClient(cli_server["http"], shared_memory=False) as client:
        assert not client.shared_memory


# -- matte --server ----------------------------------------------------------------------------------
def test_matte_server_writes_what_local_matte_writes(cli_server: dict, onnx_model: Path, pairs_dir: Path, tmp_path: Path) -> None:
    for kind in ("src", "bgr"):
        for index, pair in enumerate(sorted(p for p in pairs_dir.iterdir() if p.is_dir())[:3]):
            target = tmp_path / kind / f"shot{index}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.open(pair / f"{kind}.jpg").convert("RGB").resize((90, 62)).save(target)
    common = ["matte", "--src", str(tmp_path / "src"), "--bgr", str(tmp_path / "bgr"), "--outputs", "pha,com"]
    local = CliRunner().invoke(cli, [*common, "-o", str(tmp_path / "local"), "--model", str(onnx_model)])
    assert local.exit_code == 0, local.output
    remote = CliRunner().invoke(cli, [*common, "-o", str(tmp_path / "remote"), "--server", cli_server["http"],
                                      "--server", cli_server["grpc"], "--concurrency", "3"])
    assert remote.exit_code == 0, remote.output
    assert "3 matted" in remote.output
    for path in sorted((tmp_path / "local").rglob("*.png")):
        other = tmp_path / "remote" / path.relative_to(tmp_path / "local")
        local_image, remote_image = (np.asarray(Image.open(p)).astype(int) for p in (path, other))
        # pha is served as 8 bits and equal; com is composited by the client from the served 8-bit
        # pha and fgr, so it may differ from the local float composite by a rounding step.
        assert np.abs(local_image - remote_image).max() <= (0 if path.parent.name == "pha" else 2), path
    clash = CliRunner().invoke(cli, [*common, "-o", str(tmp_path / "x"), "--server", cli_server["http"], "--model", str(onnx_model)])
    assert clash.exit_code == 2 and "drop --model" in clash.output


# -- failures: one line, non-zero, nothing left running ------------------------------------------------
def test_port_in_use_is_one_line(cli_server: dict, onnx_model: Path) -> None:
    result = CliRunner().invoke(cli, ["serve", str(onnx_model), "--http-port", str(cli_server["ports"]["http"]),
                                      "--grpc-port", "0", "--metrics-port", "0"])
    assert result.exit_code != 0
    port = cli_server["ports"]["http"]
    expected = f"Error: port {port} on 127.0.0.1 is already in use (--http-port); stop what listens there or pass another --http-port"
    assert result.output.strip().splitlines() == [expected]


def test_missing_extra_is_one_line(monkeypatch: pytest.MonkeyPatch, onnx_model: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytriton" else real(name, *a))
    result = CliRunner().invoke(cli, ["serve", str(onnx_model)])
    assert result.exit_code == 2
    assert result.output.strip() == 'Error: serving needs NVIDIA PyTriton and tritonclient: pip install --no-deps -r requirements-serve.txt (see docs/serve.md)'
    with pytest.raises(MissingExtraError):
        TritonServer(with_free_ports(ServeConfig(spec=ModelSpec(model=str(onnx_model))))).start()


def test_model_that_fails_to_load(onnx_model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file" * 10)
    result = CliRunner().invoke(cli, ["serve", str(broken), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"])
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "not a readable ONNX file" in errors[0], result.output
    assert "Traceback" not in result.output
    # A repository whose model only fails inside the server: the server's reason, no process left.
    model_dir = write_python_repository(tmp_path / "repo", TritonModelOptions(), ModelSpec(model=str(onnx_model), threads=1))
    (model_dir / "1" / "model.onnx").write_bytes(b"corrupted after export")
    server = TritonServer(with_free_ports(ServeConfig(repository=tmp_path / "repo")))
    with pytest.raises(ServeError, match="before model 'bgm' was ready.*(failed to load|model.onnx)"):
        server.start()
    assert server.last_pid is not None and not _alive(server.last_pid)


# -- shutdown (last: stops the module's server) ------------------------------------------------------------
def test_sigterm_stops_gracefully(cli_server: dict) -> None:
    process = cli_server["process"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    text = cli_server["log"].read_text()
    assert "shutting down" in text and text.rstrip().endswith("stopped")
    with pytest.raises(ServeError):
        TritonMatteClient(cli_server["http"])
