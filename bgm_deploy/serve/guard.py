"""A guard in front of Triton's HTTP port: requests of any declared size are answered, the
server keeps serving.

The ``tritonserver`` in PyTriton 0.7.0's wheel allocates an HTTP/JSON input from its
*declared* shape before it compares it with the data sent (fixed upstream in 2026,
triton-inference-server/server#8676): one request declaring ``src`` as ``[1, 100000,
100000, 3]`` with 12 values makes it die with ``std::bad_alloc``. gRPC checks the byte size
first and is not affected. So ``serve`` binds the public HTTP port itself and relays to
Triton on a private loopback port, checking every inference request first:

* the body is at most ``max_body`` bytes (the largest valid request, plus its JSON header);
* every input's declared shape has the model's rank, non-negative dims, a batch of at most
  ``max_batch`` and at most ``max_pixels`` pixels per image, so the declared byte size is
  bounded; with ``--repository`` each model has its own :class:`Limits`, read from its
  ``config.pbtxt`` (:func:`bgm_deploy.serve.server.repository_limits`);
* JSON ``data`` holds exactly as many values as the shape declares.

A request failing a check gets a 400 with Triton's JSON error body (``{"error": "..."}``);
everything else (health, metadata, metrics are on their own port) passes through
unchanged, keep-alive on both sides.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import sys
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

# Request/response headers a relay must not forward (hop-by-hop, RFC 9110 7.6.1).
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
               "transfer-encoding", "upgrade"}
ITEM_BYTES = {"UINT8": 1, "INT8": 1, "BOOL": 1, "FP16": 2, "BF16": 2, "INT16": 2, "UINT16": 2, "FP32": 4, "INT32": 4,
              "UINT32": 4, "FP64": 8, "INT64": 8, "UINT64": 8}


@dataclass(frozen=True)
class Limits:
    """What one inference request may declare.

    Attributes:
        max_batch: images per request.
        max_pixels: pixels per image (H*W); 0: no pixel limit (the byte limit still holds).
        max_body: bytes per request body.
        rank: dims of every input including the batch axis; 0: any rank.
        layout: which dims are the image's height and width: ``"NHWC"`` (bgm-deploy's python
            flavour), ``"NCHW"`` (an exported ONNX file), ``"CHW"`` (one unbatched image) or
            ``""``: not an image model (no batch or pixel check; the byte limit still holds).
        source: where ``max_pixels`` is set, named in the refusal.
    """

    max_batch: int
    max_pixels: int
    max_body: int
    rank: int = 4
    layout: str = "NHWC"
    source: str = "--max-pixels"

    def image_size(self, shape: list[int]) -> tuple[int, int, int] | None:
        """``(batch, height, width)`` declared by an input of this layout, or None."""
        if self.layout == "NHWC":
            return shape[0], shape[1], shape[2]
        if self.layout == "NCHW":
            return shape[0], shape[2], shape[3]
        if self.layout == "CHW":
            return 1, shape[1], shape[2]
        return None


def _flat_count(data: Any) -> int:
    """Number of scalar values in a (possibly nested) JSON ``data`` list."""
    if isinstance(data, list):
        return sum(_flat_count(item) for item in data)
    return 1


def check_request(header: dict[str, Any], limits: Limits) -> str | None:
    """Why the inference request with this JSON header must be refused, or None."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        return "the request names no inputs"
    for item in inputs:
        if not isinstance(item, dict):
            return "every input must be a JSON object"
        name, shape = item.get("name", "?"), item.get("shape")
        if not isinstance(shape, list) or not all(isinstance(dim, int) and dim >= 0 for dim in shape):
            return f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}"
        if limits.rank and len(shape) != limits.rank:
            axes = f" ({', '.join(limits.layout)})" if limits.layout else ""
            return f"input {name!r}: shape {shape} must have {limits.rank} dims{axes}"
        size = limits.image_size(shape)
        if size is not None:
            batch, height, width = size
            if batch > limits.max_batch:
                return f"input {name!r}: batch {batch} is over this server's max batch size {limits.max_batch}"
            if limits.max_pixels and height * width > limits.max_pixels:
                return (f"input {name!r}: {width}x{height} = {height * width} pixels is over this server's limit of "
                        f"{limits.max_pixels} ({limits.source})")
        count = 1
        for dim in shape:
            count *= dim
        item_bytes = ITEM_BYTES.get(str(item.get("datatype", "")).upper(), 8)
        if count * item_bytes > limits.max_body:
            return f"input {name!r}: shape {shape} declares {count * item_bytes} bytes, over the request limit"
        params = item.get("parameters") or {}
        if "data" in item and "binary_data_size" not in params:
            sent = _flat_count(item["data"])
            if sent != count:
                return f"input {name!r}: shape {shape} declares {count} values but 'data' holds {sent}"
    return None


class _Relay(BaseHTTPRequestHandler):
    """One client connection; relays to Triton over a keep-alive connection of its own."""

    protocol_version = "HTTP/1.1"
    server: GuardServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        log.debug("guard: " + format, *args)

    def _upstream(self) -> http.client.HTTPConnection:
        connection = getattr(self, "_connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(self.server.upstream_host, self.server.upstream_port, timeout=600)
            self._connection = connection
        return connection

    def _answer(self, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _relay(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:  # rfile.read(-1) would read until the client hangs up, unbounded
            self._answer(400, f"Content-Length {self.headers.get('Content-Length')!r} is not a byte count")
            self.close_connection = True
            return
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self._answer(411, "send a Content-Length (chunked requests are not accepted)")
            self.close_connection = True
            return
        limits = self.server.limits_for(self.path)
        if length > limits.max_body:
            self._answer(413, f"request body of {length} bytes is over this server's limit of "
                              f"{limits.max_body} bytes")
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        # Triton routes on the path without the query string: "/infer?x" is an inference too.
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).rstrip("/")
        if self.command == "POST" and path.endswith("/infer"):
            problem = self._check_infer(body, limits)
            if problem is not None:
                self._answer(400, problem)
                return
        headers = {key: value for key, value in self.headers.items() if key.lower() not in _HOP_BY_HOP}
        for attempt in (1, 2):  # a keep-alive connection Triton closed meanwhile: reconnect once
            try:
                connection = self._upstream()
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                break
            except (http.client.HTTPException, OSError) as exc:
                self._connection = None
                if attempt == 2:
                    self._answer(503, f"the inference server is not reachable ({exc}); retry shortly")
                    return
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _check_infer(self, body: bytes, limits: Limits) -> str | None:
        header_size = self.headers.get("Inference-Header-Content-Length")
        try:
            size = int(header_size) if header_size is not None else len(body)
            if not 0 <= size <= len(body):
                return f"Inference-Header-Content-Length {header_size} does not fit the body of {len(body)} bytes"
            header = json.loads(body[:size])
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            return f"the request's JSON header does not parse ({type(exc).__name__}: {exc})"
        if not isinstance(header, dict):
            return "the request's JSON header must be an object"
        try:
            return check_request(header, limits)
        except (TypeError, RecursionError) as exc:  # odd JSON types (parameters not an object, data nested too deep)
            return f"the request's JSON header is malformed ({type(exc).__name__})"

    do_GET = _relay
    do_POST = _relay
    do_HEAD = _relay
    do_DELETE = _relay
    do_PUT = _relay


class GuardServer(ThreadingHTTPServer):
    """The guard: listens on ``(host, port)``, relays to ``upstream_port`` on loopback."""

    daemon_threads = True
    allow_reuse_address = True  # restarting on the same port must not wait out TIME_WAIT

    def __init__(self, host: str, port: int, upstream_port: int, limits: Limits,
                 models: dict[str, Limits] | None = None) -> None:
        self.upstream_host = "127.0.0.1"
        self.upstream_port = upstream_port
        self.limits = limits
        self.models = dict(models or {})
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.address_family = family
        super().__init__((host, port), _Relay)

    def limits_for(self, path: str) -> Limits:
        """The limits of the model a request path names (``/v2/models/NAME/...``), else the default."""
        parts = urllib.parse.unquote(urllib.parse.urlsplit(path).path).strip("/").split("/")
        if len(parts) >= 3 and parts[0] == "v2" and parts[1] == "models":
            return self.models.get(parts[2], self.limits)
        return self.limits

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-request (a closed keep-alive connection, a killed client)
        is not the server's failure: one debug line, never a traceback on the console."""
        error = sys.exc_info()[1]
        log.debug("guard: connection from %s ended: %r", client_address, error)
