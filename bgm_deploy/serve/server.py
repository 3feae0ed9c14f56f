"""``serve``: a real Triton Inference Server around a bgm-deploy :class:`~bgm_deploy.predictor.Predictor`.

The ``tritonserver`` binary and Triton's Python backend come from NVIDIA's PyTriton wheel
(``pip install --no-deps -r requirements-serve.txt``). ``serve`` writes a python-flavour model repository
(:mod:`bgm_deploy.serve.repository`) to a temporary folder and starts that binary on it with
dynamic batching, N model instances (each its own process, so instances run in parallel),
HTTP, gRPC and Prometheus metrics ports bound to 127.0.0.1 unless a host is given, waits
until the model is ready, and shuts the server down gracefully on SIGINT/SIGTERM.

PyTriton's own ``Triton`` class is not used: its proxy model hands results to the Python
backend with ``pb_utils.Tensor(name, ndarray)``, which returns empty tensors under numpy 2
(the stub reads numpy's C structs with numpy 1's layout); our model passes DLPack instead.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from exporters.paths import check_output_file
from model.errors import MissingExtraError, ServeError, UsageError
from model.spec import MAX_SIDE

from ..model_spec import ModelSpec
from .guard import ITEM_BYTES, GuardServer, Limits
from .repository import (
    SERVE_EXTRA_HINT,
    TritonModelOptions,
    import_model_config_pb2,
    parse_config_text,
    write_python_repository,
)

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
# Memory the Python backend shares with each stub process, and its growth step: HD uint8
# requests are ~12 MB in and up to ~23 MB out, so a large first region avoids regrowing.
STUB_SHM_BYTES = 64 << 20

Progress = Callable[[str], None]


def _body_bound(inputs: int, batch: int, max_pixels: int, itemsize: int) -> int:
    """The largest request body of ``inputs`` batched 3-channel images, plus room for the JSON header."""
    return inputs * batch * (max_pixels or MAX_SIDE * MAX_SIDE) * 3 * itemsize + (1 << 20)


def repository_limits(repository: Path, max_pixels: int) -> dict[str, Limits]:
    """The guard's limits for each model of a Triton repository, from its ``config.pbtxt``.

    A bgm-deploy python-flavour model is held to its own ``max_pixels`` and io dtype (NHWC
    images); a model taking ``[3, -1, -1]`` images (an exported ONNX file) to ``max_pixels``
    (``--max-pixels``); any other model (other ranks and layouts) only to its rank, its batch
    size and a byte bound, so that it is served, not refused. A config that does not parse
    is left to Triton, which names it when it fails to load.
    """
    model_config_pb2, _ = import_model_config_pb2()  # MissingExtraError here, not per model
    limits = {}
    for config_path in sorted(repository.glob("*/config.pbtxt")):
        try:
            message = parse_config_text(config_path.read_text(encoding="utf-8", errors="replace"))
        except ServeError:
            continue
        name = config_path.parent.name
        batched = message.max_batch_size > 0
        batch = max(message.max_batch_size, 1)
        dims = [list(tensor.dims) for tensor in message.input]
        ranks = {len(d) + batched for d in dims}
        itemsize = max((ITEM_BYTES.get(model_config_pb2.DataType.Name(tensor.data_type).removeprefix("TYPE_"), 8)
                        for tensor in message.input), default=8)
        params = message.parameters
        if message.backend == "python" and "max_pixels" in params and dims and all(d == [-1, -1, 3] for d in dims):
            own = int(params["max_pixels"].string_value or 0)
            limits[name] = Limits(max_batch=batch, max_pixels=own, max_body=_body_bound(len(dims), batch, own, itemsize),
                                  source=f"max_pixels in {name}/config.pbtxt")
            continue
        layout = ""
        if dims and all(d == [3, -1, -1] for d in dims):
            layout = "NCHW" if batched else "CHW"
        fixed = dims and all(all(v > 0 for v in d) for d in dims)
        body = (sum(batch * itemsize * math.prod(d) for d in dims) + (1 << 20) if fixed
                else _body_bound(max(len(dims), 1), batch, max_pixels, itemsize))
        limits[name] = Limits(max_batch=batch, max_pixels=max_pixels if layout else 0, max_body=body,
                              rank=ranks.pop() if len(ranks) == 1 else 0, layout=layout)
    return limits


def default_dynamic_batching(spec: ModelSpec) -> tuple[bool, str]:
    """Whether ``serve`` merges requests into batches when not told, and why.

    On the CPU one model instance already uses every core, so a batch runs no faster than
    its images one after another and the batcher only adds its queue delay: measured at HD
    on 2 cores, 1 instance with dynamic batching reached 0.68-0.74x the local predictor's
    throughput at concurrency 4, without it 0.92x (benchmarks/results/serve.json). On a GPU
    batching fills the device: on, as Triton recommends (UNVERIFIED here: no GPU measured).

    Raises:
        UsageError: the spec's target is not known.
    """
    if spec.resolve_target().device == "cpu":
        return False, "off: a CPU target (batches run no faster there; measured 0.92x the local predictor without, " \
                      "0.7x with); --dynamic-batching turns it on"
    return True, "on: a GPU target (batches fill the device; unverified, no GPU measured); --no-dynamic-batching " \
                 "turns it off"


@dataclass(frozen=True)
class ServeConfig:
    """What to serve and how.

    Attributes:
        spec: the model and where it runs (:class:`~bgm_deploy.model_spec.ModelSpec`); the
            Triton model instances load exactly this spec. None with ``repository``.
        options: the Triton model (name, batching, instances, outputs, io dtype, limits).
        host: address the three ports bind to; 127.0.0.1 keeps the server private to this
            machine, ``0.0.0.0`` exposes it.
        http_port / grpc_port / metrics_port: 0 picks a free port. The HTTP port is served by
            the request guard (:mod:`bgm_deploy.serve.guard`), which relays to Triton.
        startup_timeout: seconds to wait for the model to be ready.
        exit_timeout: seconds Triton waits for in-flight requests on shutdown.
        log_path: keep the server log here (appended; default: a temporary file, shown on failure).
        repository: serve this existing Triton model repository (e.g. from ``export --format
            triton --triton-backend python``) instead of ``spec``; its python models need
            bgm-deploy importable by the server's Python.
        max_restarts: times ``serve`` restarts a server that died on its own within
            ``restart_window`` seconds before giving up (exit 1).
    """

    spec: ModelSpec | None = None
    options: TritonModelOptions = field(default_factory=TritonModelOptions)
    host: str = LOOPBACK
    http_port: int = DEFAULT_PORTS["http"]
    grpc_port: int = DEFAULT_PORTS["grpc"]
    metrics_port: int = DEFAULT_PORTS["metrics"]
    startup_timeout: float = 180.0
    exit_timeout: int = 10
    log_path: str | Path | None = None
    repository: str | Path | None = None
    max_restarts: int = 3
    restart_window: float = 300.0

    def __post_init__(self) -> None:
        if self.repository is not None:
            if self.spec is not None:
                raise UsageError("pass either a model repository (--repository) or a model (MODEL/--checkpoint), not both")
            repository = Path(self.repository)
            if not repository.is_dir():
                raise UsageError(f"--repository {repository} is not a folder (give a Triton model repository)")
            models = [p for p in repository.iterdir() if p.is_dir() and (p / "config.pbtxt").is_file()]
            if not models:
                raise UsageError(f"--repository {repository} holds no model (no <name>/config.pbtxt); write one with "
                                 "bgm-deploy export --format triton --triton-backend python -o "
                                 f"{repository}")
        elif self.spec is None:
            raise UsageError("nothing to serve: pass MODEL (an exported file), --checkpoint, or --repository")
        ports = {"--http-port": self.http_port, "--grpc-port": self.grpc_port, "--metrics-port": self.metrics_port}
        for name, port in ports.items():
            if not 0 <= port <= 65535:
                raise UsageError(f"{name} {port} is not valid; use 1..65535, or 0 for a free port")
        used = [port for port in ports.values() if port]
        if len(set(used)) != len(used):
            raise UsageError(f"the HTTP, gRPC and metrics ports must differ, got {ports}")
        if self.startup_timeout <= 0 or self.exit_timeout < 0 or self.max_restarts < 0:
            raise UsageError("startup_timeout must be > 0, exit_timeout and max_restarts >= 0")

    def check_paths(self) -> None:
        """The log may not replace an input and must be writable (before anything starts)."""
        if self.log_path is None:
            return
        inputs: list[tuple[str, str | Path | None]] = [("--repository", self.repository)]
        if self.spec is not None:
            inputs += [("MODEL", self.spec.model), ("--checkpoint", self.spec.checkpoint),
                       ("--config", self.spec.config_file)]
        for label, path in inputs:
            if path is not None and Path(path).is_dir() and Path(path).resolve() in Path(self.log_path).resolve().parents:
                raise UsageError(f"--log {self.log_path} is inside {label} {path}; write it elsewhere")
        check_output_file(self.log_path, "--log", inputs=inputs)


@dataclass(frozen=True)
class TritonDist:
    """Where PyTriton keeps the Triton binaries on this machine."""

    server: Path
    python_backend: Path
    stub: Path
    libs: Path


def find_triton() -> TritonDist:
    """The ``tritonserver`` binary, Python backend and stub inside the installed PyTriton wheel.

    Raises:
        MissingExtraError: PyTriton/tritonclient are not installed.
        ServeError: the wheel lacks a stub for this Python version.
    """
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None or importlib.util.find_spec("tritonclient") is None:
        raise MissingExtraError(f"serving needs NVIDIA PyTriton and tritonclient: {SERVE_EXTRA_HINT}")
    root = Path(spec.origin).parent / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    dist = TritonDist(
        server=root / "bin" / "tritonserver",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=Path(spec.origin).parents[1] / "nvidia_pytriton.libs",
    )
    if not dist.server.is_file():
        raise ServeError(f"PyTriton at {root.parent} has no tritonserver binary; reinstall it: {SERVE_EXTRA_HINT}")
    if not dist.stub.is_file():
        raise ServeError(f"PyTriton has no Python backend stub for Python {version}; use Python 3.8-3.13")
    return dist


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on right now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _check_port(host: str, port: int, option: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers themselves bind: a port in TIME_WAIT after a clean stop is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServeError(f"port {port} on {host} is already in use ({option}); stop what listens there or pass another {option}") from None
            raise ServeError(f"cannot bind {host}:{port} ({option}): {exc.strerror}; check --host") from None


def server_environment(dist: TritonDist, base: dict[str, str] | None = None) -> dict[str, str]:
    """The server process's environment.

    The Python backend stub links ``libpython3.X.so`` dynamically: with an interpreter that is
    not the system's own (pyenv, conda, a custom build) it would load the system library and
    fail inside the stub (``'_thread.RLock' object has no attribute '_recursion_count'``), so
    this interpreter's library folder goes first. Its ``bin`` folder goes first on PATH so the
    stub's Python finds this environment's site-packages (as PyTriton does), and the folder
    holding ``bgm_deploy`` goes first on PYTHONPATH.
    """
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    parts = [libdir, env.get("LD_LIBRARY_PATH", ""), str(dist.libs)]
    env["LD_LIBRARY_PATH"] = ":".join(part for part in parts if part)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    # Python-backend models import the bgm-deploy this process runs (a checkout works too).
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = ":".join(part for part in (root, env.get("PYTHONPATH", "")) if part)
    return env


def failure_reason(log_path: Path | None, offset: int = 0) -> str:
    """The most telling line of the server log after byte ``offset`` (where the current server
    process started writing: the log is appended to across restarts and runs of ``--log``, and
    an older crash must not be named as this one's cause)."""
    text = ""
    if log_path is not None and log_path.exists():
        with open(log_path, "rb") as log_file:
            log_file.seek(offset)
            text = log_file.read().decode(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for marker in ("Address already in use", "failed to load", "Error:", "error:", "E1", "E0"):
        hits = [line for line in lines if marker in line and "NVML" not in line and "DCGM" not in line
                and "CudaDriver" not in line and "config modification time" not in line]
        if hits:
            reason = hits[-1] if marker != "failed to load" else hits[0]
            return f"{reason[:600]} (log: {log_path})"
    return f"see the server log {log_path}" if lines else "the server printed nothing"


def _set_parent_death_signal() -> None:
    """Runs in the child before exec: the server gets SIGTERM if this process dies (Linux).

    Linux sends it when the *thread* that started the server ends: start servers from a
    thread that outlives them (the main thread, as ``serve`` and the tests do).
    """
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class TritonServer:
    """A running ``tritonserver`` serving one bgm-deploy model; a context manager.

    ``start()`` returns when the model is ready (or raises with the server's reason and leaves
    no process behind); ``stop()`` shuts it down gracefully, then forcibly after the exit
    timeout. ``http_url``, ``grpc_url`` and ``metrics_url`` say where it listens.
    """

    def __init__(self, config: ServeConfig, progress: Progress | None = None) -> None:
        self.config = config
        self._say = progress or (lambda _message: None)
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self.log_path: Path | None = None
        self._log_offset = 0  # the log's size when the current server process started
        self.ports: dict[str, int] = {}
        self.last_pid: int | None = None  # the server process of the last start (also after stop)
        self.last_log = ""
        self._guard: GuardServer | None = None
        self._guard_thread: threading.Thread | None = None
        self._dist: TritonDist | None = None
        self._repository: Path | None = None

    # -- addresses -------------------------------------------------------------------------
    @property
    def _client_host(self) -> str:
        return LOOPBACK if self.config.host in ("0.0.0.0", "") else self.config.host

    @property
    def http_url(self) -> str:
        return f"http://{self._client_host}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self._client_host}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.ports['metrics']}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> TritonServer:
        """Writes the repository, starts tritonserver and waits for the model to be ready.

        Raises:
            MissingExtraError, ServeError (port in use, the model failed to load, timeout),
            UsageError, and the model loading errors of :meth:`Predictor.load`.
        """
        if self._process is not None:
            raise ServeError("this server is already started")
        config = self.config
        config.check_paths()
        self._dist = find_triton()
        wanted = {"http": config.http_port, "grpc": config.grpc_port, "metrics": config.metrics_port}
        for kind, port in wanted.items():
            if port:
                _check_port(config.host, port, f"--{kind}-port")
        self._workdir = tempfile.TemporaryDirectory(prefix="bgm-serve-")
        try:
            # The guard owns the public HTTP port from now on; Triton's HTTP is private.
            self._start_guard(config.http_port)
            self.ports = {"http": self._guard.port if self._guard else 0, "triton_http": free_port(LOOPBACK),
                          "grpc": config.grpc_port or free_port(config.host),
                          "metrics": config.metrics_port or free_port(config.host)}
            self._prepare(Path(self._workdir.name))
            self._launch()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self) -> None:
        """Starts tritonserver again on the same ports and repository (after it died)."""
        process, self._process = self._process, None
        if process is not None:
            # Also when the server is already gone: its stubs share its process group and must
            # not outlive it (as in stop()).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self._launch()
        self._wait_ready()

    def _start_guard(self, port: int) -> None:
        options = self.config.options
        models: dict[str, Limits] = {}
        if self.config.repository is None:
            itemsize = 4 if options.io_dtype == "float32" else 1
            limits = Limits(max_batch=options.max_batch_size, max_pixels=options.max_pixels,
                            max_body=_body_bound(2, options.max_batch_size, options.max_pixels, itemsize))
        else:  # each model by its own config.pbtxt; a path naming no model by the loosest bound
            models = repository_limits(Path(self.config.repository), options.max_pixels)
            limits = Limits(max_batch=64, max_pixels=options.max_pixels, max_body=max(
                [_body_bound(2, 64, options.max_pixels, 4), *(model.max_body for model in models.values())]), rank=0, layout="")
        self._guard = GuardServer(self.config.host, port, 0, limits, models)
        self._guard_thread = threading.Thread(target=self._guard.serve_forever, name="bgm-serve-guard", daemon=True)
        self._guard_thread.start()

    def _prepare(self, workdir: Path) -> None:
        """The model repository and the backend folder, once per server (restarts reuse them)."""
        config, dist = self.config, self._dist
        assert dist is not None
        repository = Path(config.repository).resolve() if config.repository is not None else workdir / "models"
        if config.repository is None:
            assert config.spec is not None
            self._say("preparing the model repository (loading the model once to check it) ...")
            python_path = str(Path(__file__).resolve().parents[2])  # the bgm-deploy this process runs
            write_python_repository(repository, config.options, config.spec, copy_model=False, python_path=python_path)
        self._repository = repository
        backend = workdir / "backends" / "python"
        backend.mkdir(parents=True)
        for source in (dist.python_backend / "libtriton_python.so", dist.python_backend / "triton_python_backend_utils.py", dist.stub):
            (backend / source.name).symlink_to(source)
        self.log_path = Path(config.log_path) if config.log_path else workdir / "tritonserver.log"

    def _launch(self) -> None:
        config, dist = self.config, self._dist
        assert dist is not None and self._workdir is not None and self.log_path is not None
        workdir = Path(self._workdir.name)
        host, ports = config.host, self.ports
        if self._guard is not None:
            self._guard.upstream_port = ports["triton_http"]
        command = [
            str(dist.server),
            f"--model-repository={self._repository}",
            f"--backend-directory={workdir / 'backends'}",
            f"--http-address={LOOPBACK}", f"--http-port={ports['triton_http']}",
            f"--grpc-address={host}", f"--grpc-port={ports['grpc']}",
            f"--metrics-address={host}", f"--metrics-port={ports['metrics']}",
            "--allow-metrics=true", "--allow-gpu-metrics=false", "--allow-cpu-metrics=true",
            "--model-control-mode=none", "--strict-readiness=true", "--exit-on-error=true",
            "--disable-auto-complete-config",
            f"--exit-timeout-secs={config.exit_timeout}",
            f"--backend-config=python,shm-default-byte-size={STUB_SHM_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={STUB_SHM_BYTES}",
            # Unique shared-memory names: several servers (or test runs) on one host must not collide.
            f"--backend-config=python,shm-region-prefix-name=bgm{os.getpid()}_{ports['http']}_",
        ]
        self._say(f"starting tritonserver (HTTP {ports['http']} through the request guard, gRPC {ports['grpc']}, "
                  f"metrics {ports['metrics']} on {host})")
        with open(self.log_path, "ab") as log_file:
            self._log_offset = log_file.tell()  # appended to: a restart (or an earlier run's --log) came before
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                env=server_environment(dist), start_new_session=True,
                # Only a prctl call (no locks, no allocation) runs between fork and exec.
                preexec_fn=_set_parent_death_signal,  # noqa: PLW1509
            )
        self.last_pid = self._process.pid

    def _wait_ready(self) -> None:
        assert self._process is not None
        name = self.config.options.name
        deadline = time.monotonic() + self.config.startup_timeout
        # A whole repository: every model must be ready (--strict-readiness); else our model.
        url = f"{self.http_url}/v2/health/ready" if self.config.repository else f"{self.http_url}/v2/models/{name}/ready"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServeError(f"tritonserver exited (code {self._process.returncode}) before model {name!r} was ready: {self._failure_reason()}")
            if _http_ok(url):
                self._say(f"ready: {self.http_url} (HTTP), {self.grpc_url} (gRPC), {self.metrics_url}")
                return
            time.sleep(0.2)
        raise ServeError(f"model {name!r} was not ready after {self.config.startup_timeout:.0f} s: {self._failure_reason()}")

    def _failure_reason(self) -> str:
        """The most telling line the current server process logged."""
        return failure_reason(self.log_path, self._log_offset)

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM: Triton finishes in-flight requests), then SIGKILL to
        the whole process group (server and stubs) after the exit timeout. Idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.config.exit_timeout + 10)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not stop in time; killing it")
        if process is not None:
            # Stubs are in the server's session; none may outlive it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.shutdown()
            guard.server_close()
            if self._guard_thread is not None:
                self._guard_thread.join(timeout=5)
        if self._workdir is not None:
            if self.config.log_path is None and self.log_path is not None and self.log_path.exists():
                self.last_log = self.log_path.read_text(errors="replace")
            self._workdir.cleanup()
            self._workdir = None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait(self, stop_event: threading.Event | None = None, poll: float = 0.5) -> int | None:
        """Blocks until the server exits or ``stop_event`` is set; returns its exit code."""
        while self._process is not None and self._process.poll() is None:
            if stop_event is not None and stop_event.wait(poll):
                return None
            if stop_event is None:
                time.sleep(poll)
        return self._process.returncode if self._process is not None else None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT/SIGTERM while the block runs (previous handlers restored)."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event  # signal handlers can only be set in the main thread; the caller stops us
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: Any) -> None:
        event.set()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def serve(config: ServeConfig, progress: Progress | None = None, ready: Callable[[TritonServer], None] | None = None) -> int:
    """Serves until SIGINT/SIGTERM, then shuts down gracefully.

    A server that dies on its own (a crash, the OOM killer) is restarted on the same ports,
    with one line saying why, up to ``config.max_restarts`` times within
    ``config.restart_window`` seconds; one more death in that window ends ``serve`` with a
    :class:`ServeError` (exit 1), so a server that cannot stay up does not restart forever.

    Args:
        config: see :class:`ServeConfig`.
        progress: called with one line per stage.
        ready: called once with the running server (its URLs), e.g. to print them.

    Returns:
        0 after a requested shutdown.

    Raises:
        ServeError: the server could not start, or died more often than the restart rule allows.
        MissingExtraError: PyTriton/tritonclient are not installed.
    """
    say = progress or (lambda _message: None)
    deaths: list[float] = []
    with _stop_on_signals() as stop, TritonServer(config, progress) as server:
        if ready is not None:
            ready(server)
        while True:
            code = server.wait(stop)
            if stop.is_set():
                break
            now = time.monotonic()
            deaths = [t for t in deaths if now - t < config.restart_window] + [now]
            reason = server._failure_reason()
            if len(deaths) > config.max_restarts:
                raise ServeError(f"tritonserver died {len(deaths)} times within {config.restart_window:.0f} s "
                                 f"(last exit code {code}): {reason}")
            say(f"tritonserver died (exit code {code}): {reason}; restarting ({len(deaths)}/{config.max_restarts})")
            server.restart()
        say("shutting down (finishing in-flight requests) ...")
    say("stopped")
    return 0


def with_free_ports(config: ServeConfig) -> ServeConfig:
    """The same config with every port chosen by the OS (tests, benchmarks)."""
    return replace(config, http_port=0, grpc_port=0, metrics_port=0)
