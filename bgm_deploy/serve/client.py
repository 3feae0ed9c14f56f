"""A client for ``bgm-deploy serve``: the same ``predict`` as :class:`~bgm_deploy.predictor.Predictor`,
run by one or more Triton servers.

``TritonMatteClient(["http://a:8000", "grpc://b:8001"], concurrency=8)`` spreads requests
round-robin over the servers with at most ``concurrency`` in flight (``predict_many``, or
``predict`` from several threads; ``matte`` does this with ``--server``). Images go as uint8
``(N, H, W, 3)`` (or float32 when the server says so), padded to the model's multiple of 4 by
replicating the border like the predictor, and the outputs are cropped back, so results
equal the local predictor's. With ``shared_memory=True`` (a server on this machine) the
images and results travel through Triton's system shared memory instead of the socket.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np

from model.errors import BgmDeployError, MissingExtraError, ServeError, UsageError

from ..images import pil_to_rgb, to_uint8
from ..predictor import _MULTIPLE, PADDING_MODES, Prediction

# How to install the serving packages; said by every serve path that misses one.
SERVE_EXTRA_HINT = "pip install --no-deps -r requirements-serve.txt (see docs/serve.md)"

log = logging.getLogger(__name__)

PROTOCOLS = ("http", "grpc")
DEFAULT_CONCURRENCY = 4
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
_TRITON_DTYPES = {"UINT8": np.uint8, "FP32": np.float32}


@dataclass(frozen=True)
class ServerAddress:
    """One server: ``protocol`` (http/grpc) and ``host:port``."""

    protocol: str
    location: str

    @classmethod
    def parse(cls, url: str) -> ServerAddress:
        """``http://host:port``, ``grpc://host:port`` or ``host:port`` (HTTP)."""
        parsed = urlparse(url if "://" in url else f"http://{url}")
        if parsed.scheme not in PROTOCOLS or not parsed.hostname or parsed.port is None or parsed.path not in ("", "/"):
            raise UsageError(f"server URL {url!r} is not valid; use http://HOST:PORT or grpc://HOST:PORT (e.g. http://127.0.0.1:8000)")
        return cls(parsed.scheme, f"{parsed.hostname}:{parsed.port}")

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.location}"

    @property
    def is_local(self) -> bool:
        return self.location.rsplit(":", 1)[0].strip("[]") in _LOCAL_HOSTS


def _import_tritonclient(protocol: str) -> Any:
    try:  # optional extra, imported only when a client is made
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as exc:
        raise MissingExtraError(f"the Triton client needs tritonclient[http,grpc] ({exc.name} is missing): {SERVE_EXTRA_HINT}") from None
    return module


@dataclass(frozen=True)
class _ModelInfo:
    io_dtype: np.dtype
    outputs: tuple[str, ...]
    multiple: int
    pads: bool
    max_batch_size: int


class _ShmRegion:
    """One system shared-memory region registered with one server, grown on demand."""

    def __init__(self, client: Any, prefix: str) -> None:
        import tritonclient.utils.shared_memory as shm  # optional extra, see _import_tritonclient

        self._shm, self._client, self._prefix = shm, client, prefix
        self.handle: Any = None
        self.name = ""
        self.size = 0
        self._generation = 0

    def ensure(self, size: int) -> None:
        if size <= self.size:
            return
        self.release()
        self._generation += 1
        self.name = f"{self._prefix}_{self._generation}"
        size = max(size, 1 << 20)
        self.handle = self._shm.create_shared_memory_region(self.name, f"/{self.name}", size)
        self.size = size
        self._client.register_system_shared_memory(self.name, f"/{self.name}", size)

    def release(self) -> None:
        if self.handle is None:
            return
        with contextlib.suppress(Exception):  # the server may be gone already; the region is ours to free
            self._client.unregister_system_shared_memory(self.name)
        self._shm.destroy_shared_memory_region(self.handle)
        self.handle, self.size = None, 0


class _Connection:
    """One thread's client for one server (tritonclient clients are not shared across threads)."""

    def __init__(self, address: ServerAddress, timeout: float, shared_memory: bool) -> None:
        self.address = address
        self.module = _import_tritonclient(address.protocol)
        if address.protocol == "grpc":
            self.client = self.module.InferenceServerClient(address.location)
        else:
            self.client = self.module.InferenceServerClient(
                address.location, connection_timeout=timeout, network_timeout=timeout
            )
        # gRPC takes the per-call deadline here; the HTTP client got it at construction.
        self.call_options = {"client_timeout": timeout} if address.protocol == "grpc" else {}
        self.regions: tuple[_ShmRegion, _ShmRegion] | None = None
        if shared_memory:
            prefix = f"bgm_{os.getpid()}_{threading.get_ident()}_{id(self)}"
            self.regions = (_ShmRegion(self.client, f"{prefix}_in"), _ShmRegion(self.client, f"{prefix}_out"))

    def close(self) -> None:
        if self.regions is not None:
            for region in self.regions:
                region.release()
        with contextlib.suppress(Exception):
            self.client.close()


class TritonMatteClient:
    """Mattes through ``bgm-deploy serve`` servers; a drop-in for :class:`Predictor` in ``matte``.

    Args:
        urls: one or more server URLs (``http://host:port`` or ``grpc://host:port``).
        model_name: the served model's name.
        concurrency: requests in flight at most (over all servers).
        shared_memory: send images and receive results through Triton's system shared memory
            (every server must be on this machine). None: on when every server is on this
            machine (127.0.0.1/localhost) and a probe region registers, else off (measured:
            the fastest transport on one host, benchmarks/results/serve.json).
        timeout: seconds per request.
        padding: ``"replicate"`` or ``"reflect"`` padding to the model's multiple (cropped off).

    Raises:
        UsageError: bad URLs/options; ServeError: a server is unreachable or lacks the model;
        MissingExtraError: tritonclient is not installed.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        model_name: str = "bgm",
        concurrency: int = DEFAULT_CONCURRENCY,
        shared_memory: bool | None = None,
        timeout: float = 120.0,
        padding: str = "replicate",
    ) -> None:
        urls = [urls] if isinstance(urls, str) else list(urls)
        if not urls:
            raise UsageError("no server URL given; pass --server http://HOST:PORT (repeatable)")
        if concurrency < 1:
            raise UsageError(f"concurrency={concurrency} is not valid; it must be >= 1")
        if padding not in PADDING_MODES:
            raise UsageError(f"padding={padding!r} is not valid; valid: {', '.join(PADDING_MODES)}")
        self.addresses = [ServerAddress.parse(url) for url in urls]
        local = all(address.is_local for address in self.addresses)
        if shared_memory and not local:
            raise UsageError("shared_memory needs every server on this machine (127.0.0.1/localhost); drop --shared-memory for remote servers")
        auto = shared_memory is None
        shared_memory = local if auto else bool(shared_memory)
        self.model_name = model_name
        self.concurrency = concurrency
        self.shared_memory = shared_memory
        self.timeout = timeout
        self.padding = padding
        self.source = f"triton {model_name} at {', '.join(address.url for address in self.addresses)}"
        self._local = threading.local()
        self._connections: list[_Connection] = []
        self._lock = threading.Lock()
        self._turn = itertools.count()
        self._closed = False
        # predict_many's threads live as long as the client: each thread keeps its connections
        # (and shared-memory regions), so they are made once, not per call.
        self._pool: ThreadPoolExecutor | None = None
        self.info = self._model_info()
        self.shared_memory_note = "on" if self.shared_memory else "off"
        if auto:
            self._choose_shared_memory()

    def _choose_shared_memory(self) -> None:
        """Automatic shared memory: kept only if a small region registers with every server (a
        server at 127.0.0.1 in another container or namespace cannot see this host's regions)."""
        if not self.shared_memory:
            self.shared_memory_note = "off (a server is not on this machine)"
            return
        for index, address in enumerate(self.addresses):
            connection = self._connection(index)
            probe = _ShmRegion(connection.client, f"bgm_{os.getpid()}_{id(self)}_probe")
            try:
                probe.ensure(1)
            except Exception as exc:  # noqa: BLE001 - tritonclient's exception types differ per protocol
                self.shared_memory = False
                self.shared_memory_note = f"off ({address.url} cannot map this host's shared memory: {_first_line(exc)})"
                for each in self._connections:
                    each.regions = None
                return
            finally:
                probe.release()
        self.shared_memory_note = "on (every server is on this machine)"

    # -- setup -------------------------------------------------------------------------------
    def _connection(self, index: int) -> _Connection:
        cache: dict[int, _Connection] | None = getattr(self._local, "connections", None)
        if cache is None:
            cache = self._local.connections = {}
        if index not in cache:
            if self._closed:
                raise ServeError("this client is closed")
            connection = _Connection(self.addresses[index], self.timeout, self.shared_memory)
            cache[index] = connection
            with self._lock:
                self._connections.append(connection)
        return cache[index]

    def _model_info(self) -> _ModelInfo:
        infos = []
        for index, address in enumerate(self.addresses):
            connection = self._connection(index)
            try:
                ready = connection.client.is_model_ready(self.model_name)
                config = connection.client.get_model_config(self.model_name)
            except Exception as exc:  # noqa: BLE001 - tritonclient and socket errors alike mean unreachable
                raise ServeError(f"cannot reach model {self.model_name!r} at {address.url}: {_first_line(exc)}; "
                                 "is `bgm-deploy serve` running there?") from None
            if not ready:
                raise ServeError(f"model {self.model_name!r} at {address.url} is not ready")
            infos.append(_parse_config(config, address))
        if len(set(infos)) != 1:
            raise ServeError(f"the servers serve different models (inputs/outputs differ): {', '.join(a.url for a in self.addresses)}")
        return infos[0]

    # -- Predictor-like surface ----------------------------------------------------------------
    @property
    def available_outputs(self) -> tuple[str, ...]:
        return self.info.outputs

    @property
    def provider(self) -> str:
        return "triton"

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "runner": "triton-client",
            "provider": ",".join(sorted({address.protocol for address in self.addresses}))
            + ("+shared-memory" if self.shared_memory else ""),
            "servers": [address.url for address in self.addresses],
            "model_name": self.model_name,
            "io_dtype": self.info.io_dtype.name,
            "concurrency": self.concurrency,
            "padding": self.padding,
        }

    def close(self) -> None:
        """Closes every connection and frees shared-memory regions."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        for connection in connections:
            connection.close()

    def __enter__(self) -> TritonMatteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inference -----------------------------------------------------------------------------
    def predict(self, src: Any, bgr: Any, outputs: tuple[str, ...] | list[str] = ("pha", "fgr")) -> Prediction:
        """Mattes one image ``(H, W, 3)`` or a batch ``(N, H, W, 3)`` on the next server.

        Thread-safe: call it from up to ``concurrency`` threads (``predict_many`` does).

        Raises:
            UsageError: bad images or outputs; ServeError: the server refused the request
                (its message) or every server failed.
        """
        wanted = (outputs,) if isinstance(outputs, str) else tuple(outputs)
        missing = [name for name in wanted if name not in self.info.outputs]
        if missing or not wanted:
            raise UsageError(f"outputs={list(wanted)!r} not served by {self.source}; it serves {', '.join(self.info.outputs)}")
        src_array, batched = self._as_nhwc(src, "src")
        bgr_array, _ = self._as_nhwc(bgr, "bgr")
        if src_array.shape != bgr_array.shape:
            raise UsageError(
                f"src and bgr must have the same size, got src {src_array.shape[2]}x{src_array.shape[1]} and bgr "
                f"{bgr_array.shape[2]}x{bgr_array.shape[1]}; resize the background (matte --resize WxH) or align it (--align)"
            )
        height, width = src_array.shape[1:3]
        multiple = 1 if self.info.pads else self.info.multiple
        pad_h, pad_w = -height % multiple, -width % multiple
        if pad_h or pad_w:
            mode = PADDING_MODES[self.padding]
            if mode == "reflect" and (height <= pad_h or width <= pad_w):
                mode = "edge"
            padding = ((0, 0), (0, pad_h), (0, pad_w), (0, 0))
            src_array, bgr_array = np.pad(src_array, padding, mode=mode), np.pad(bgr_array, padding, mode=mode)
        raw, seconds = self._infer(src_array, bgr_array, wanted)
        result = Prediction(seconds=seconds)
        for name in wanted:
            value = raw[name][:, :height, :width]
            if name != "rgba":
                # One pass, one allocation (an HD fgr is 6 M values).
                value = np.divide(value, np.float32(255), dtype=np.float32) if value.dtype == np.uint8 else value
            setattr(result, name, value if batched else value[0])
        return result

    def predict_many(
        self, pairs: Iterable[tuple[Any, Any]], outputs: tuple[str, ...] | list[str] = ("pha", "fgr")
    ) -> Iterator[Prediction]:
        """Predictions of ``(src, bgr)`` pairs in order, at most ``concurrency`` in flight."""
        with self._lock:
            if self._closed:
                raise ServeError("this client is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="bgm-client")
            pool = self._pool
        window: deque[Future[Prediction]] = deque()
        try:
            for src, bgr in pairs:
                window.append(pool.submit(self.predict, src, bgr, outputs))
                if len(window) >= self.concurrency:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()

    def _as_nhwc(self, image: Any, name: str) -> tuple[np.ndarray, bool]:
        if hasattr(image, "mode") and hasattr(image, "getbands"):  # PIL.Image
            image = np.asarray(pil_to_rgb(image))
        if not isinstance(image, np.ndarray):
            raise UsageError(f"{name} must be a numpy array (H, W, 3) or (N, H, W, 3) or a PIL image, got {type(image).__name__}")
        batched = image.ndim == 4
        array = image if batched else image[None]
        if array.ndim == 4 and array.shape[1] == 3 and array.shape[3] != 3:
            array = array.transpose(0, 2, 3, 1)  # (N, 3, H, W), the Predictor's batch layout
        if array.ndim != 4 or array.shape[3] != 3:
            raise UsageError(f"{name} has shape {image.shape}; expected (H, W, 3), (N, H, W, 3) or (N, 3, H, W) RGB")
        if array.dtype == self.info.io_dtype:
            return np.ascontiguousarray(array), batched
        if array.dtype == np.uint8:
            return array.astype(np.float32) / np.float32(255), batched
        if np.issubdtype(array.dtype, np.floating):  # float64/float16: the server's dtype
            if self.info.io_dtype == np.float32:
                return np.ascontiguousarray(array, dtype=np.float32), batched
            return to_uint8(array), batched
        raise UsageError(f"{name} has dtype {array.dtype}; expected uint8 or float in 0..1")

    def _infer(self, src: np.ndarray, bgr: np.ndarray, wanted: tuple[str, ...]) -> tuple[dict[str, np.ndarray], float]:
        import time

        names = list(dict.fromkeys(wanted))
        first = next(self._turn) % len(self.addresses)
        errors = []
        for attempt in range(len(self.addresses)):  # on a dead server, the next one takes the request
            index = (first + attempt) % len(self.addresses)
            connection = self._connection(index)
            started = time.perf_counter()
            try:
                return self._infer_on(connection, src, bgr, names), time.perf_counter() - started
            except BgmDeployError:
                raise
            except Exception as exc:  # noqa: BLE001 - tritonclient's exception types differ per protocol
                message = _first_line(exc)
                status = str(getattr(exc, "status", lambda: "")() or "")
                if "400" in status or "INVALID_ARG" in status or message.startswith("[400]"):
                    raise ServeError(f"{connection.address.url} refused the request: {message}") from None
                errors.append(f"{connection.address.url}: {message}")
        raise ServeError(f"every server failed: {'; '.join(errors)}")

    def _infer_on(self, connection: _Connection, src: np.ndarray, bgr: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        module = connection.module
        datatype = "UINT8" if src.dtype == np.uint8 else "FP32"
        inputs = [module.InferInput("src", list(src.shape), datatype), module.InferInput("bgr", list(bgr.shape), datatype)]
        batch, height, width = src.shape[:3]
        shapes = {"pha": (batch, height, width), "fgr": (batch, height, width, 3), "rgba": (batch, height, width, 4)}
        dtypes = {name: (np.dtype(np.uint8) if name == "rgba" else self.info.io_dtype) for name in names}
        if connection.regions is None:
            inputs[0].set_data_from_numpy(src)
            inputs[1].set_data_from_numpy(bgr)
            requested = [module.InferRequestedOutput(name) for name in names]
            result = connection.client.infer(self.model_name, inputs, outputs=requested, **connection.call_options)
            return {name: result.as_numpy(name) for name in names}
        import tritonclient.utils.shared_memory as shm  # optional extra, see _import_tritonclient

        region_in, region_out = connection.regions
        region_in.ensure(src.nbytes + bgr.nbytes)
        shm.set_shared_memory_region(region_in.handle, [src, bgr])
        inputs[0].set_shared_memory(region_in.name, src.nbytes, 0)
        inputs[1].set_shared_memory(region_in.name, bgr.nbytes, src.nbytes)
        sizes = {name: int(np.prod(shapes[name])) * dtypes[name].itemsize for name in names}
        region_out.ensure(sum(sizes.values()))
        requested, offsets, offset = [], {}, 0
        for name in names:
            output = module.InferRequestedOutput(name)
            output.set_shared_memory(region_out.name, sizes[name], offset)
            requested.append(output)
            offsets[name], offset = offset, offset + sizes[name]
        connection.client.infer(self.model_name, inputs, outputs=requested, **connection.call_options)
        return {
            # Copied out: the region is reused by this thread's next request.
            name: shm.get_contents_as_numpy(region_out.handle, dtypes[name], list(shapes[name]), offsets[name]).copy()
            for name in names
        }


def _parse_config(config: Any, address: ServerAddress) -> _ModelInfo:
    """The served model's contract from its config (JSON dict over HTTP, protobuf over gRPC)."""
    if not isinstance(config, dict):
        from google.protobuf import json_format

        config = json_format.MessageToDict(config.config, preserving_proto_field_name=True)
    inputs = {item["name"]: item for item in config.get("input", [])}
    if set(inputs) != {"src", "bgr"}:
        raise ServeError(f"{address.url} does not serve a bgm-deploy model (inputs {sorted(inputs)}, expected src and bgr)")
    datatype = inputs["src"]["data_type"].removeprefix("TYPE_")
    if datatype not in _TRITON_DTYPES or len(inputs["src"].get("dims", [])) != 3:
        raise ServeError(f"{address.url} serves src as {datatype} {inputs['src'].get('dims')}; expected the python flavour's UINT8/FP32 (H, W, 3)")
    params = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
    return _ModelInfo(
        io_dtype=np.dtype(_TRITON_DTYPES[datatype]),
        outputs=tuple(item["name"] for item in config.get("output", [])),
        multiple=_MULTIPLE.get(params.get("model_type", "refine"), 4),
        pads=params.get("pad") == "true",
        max_batch_size=int(config.get("max_batch_size", 1)),
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:400]
