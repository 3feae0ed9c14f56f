"""``serve_web``: a static file server for an exported web site, with cross-origin isolation.

onnxruntime-web runs its WASM backend multi-threaded only when the page is cross-origin
isolated (``SharedArrayBuffer``), which takes two response headers on the page and every
file it loads: ``Cross-Origin-Opener-Policy: same-origin`` and
``Cross-Origin-Embedder-Policy: require-corp``. A page opened from ``file://`` or from a
plain ``python -m http.server`` falls back to one thread; this server sends both headers,
serves ``.wasm`` as ``application/wasm`` (needed for streaming compilation) and ``.mjs`` as
JavaScript, refuses paths outside the site (``..``, symbolic links leading out) and stops
cleanly on SIGINT/SIGTERM. It is meant for ``127.0.0.1``: a camera page needs a secure
context, which browsers grant to ``http://127.0.0.1`` and ``http://localhost`` only.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from model.errors import UsageError

from .layout import check_site

log = logging.getLogger("bgm_deploy.web")

# Headers every response carries (see the module docstring).
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
MIME_TYPES = {
    ".wasm": "application/wasm",
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".json": "application/json",
    ".onnx": "application/octet-stream",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}
DEFAULT_PORT = 8080


class _SiteHandler(SimpleHTTPRequestHandler):
    """Serves files of one site folder with the isolation headers; no directory listings."""

    extensions_map: ClassVar[dict[str, str]] = {**SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}
    root: Path

    def __init__(self, *args: Any, root: Path, **kwargs: Any) -> None:
        self.root = root
        super().__init__(*args, directory=str(root), **kwargs)

    def end_headers(self) -> None:
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        # The site is rewritten by every export: never serve a stale model or module.
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def send_head(self) -> Any:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        parts = [part for part in path.split("/") if part]
        if any(part in ("..", ".") or "\\" in part or "\x00" in part for part in parts):
            self.send_error(HTTPStatus.FORBIDDEN, "path outside the site")
            return None
        target = self.root.joinpath(*parts)
        try:  # inside the try: is_dir raises for a name too long (ENAMETOOLONG)
            if target.is_dir():
                target = target / "index.html"
            resolved = target.resolve(strict=True)
        except (OSError, RuntimeError):
            self.send_error(HTTPStatus.NOT_FOUND, "file not found")
            return None
        if resolved != self.root and self.root not in resolved.parents:
            self.send_error(HTTPStatus.FORBIDDEN, "path outside the site")
            return None
        if not resolved.is_file():
            self.send_error(HTTPStatus.NOT_FOUND, "file not found")
            return None
        if path.endswith("/") or not parts:
            self.path = "/" + "/".join([*parts, "index.html"])
        return super().send_head()

    def list_directory(self, path: Any) -> None:  # never list folders
        self.send_error(HTTPStatus.NOT_FOUND, "file not found")

    def log_message(self, format: str, *args: Any) -> None:  # the base class's argument names
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A browser that hangs up mid-download (a reload while the model loads) is no error:
        one debug line, not a traceback on the console."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.debug("%s hung up: %r", client_address, error)
            return
        super().handle_error(request, client_address)


class WebServer:
    """A running site server (context manager): ``url``, ``port``, ``close()``.

    Args:
        folder: an exported site (checked with :func:`bgm_deploy.web.layout.check_site`).
        host: address to bind (``127.0.0.1``: this machine only).
        port: TCP port; 0 picks a free one.

    Raises:
        UsageError: not a site, or the port is in use / not allowed.
    """

    def __init__(self, folder: str | Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
        self.folder = check_site(folder).resolve()
        handler = partial(_SiteHandler, root=self.folder)
        try:
            self._server = _Server((host, port), handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"--port {port}: {host}:{port} is in use; stop what uses it or pass another --port "
                                 "(0 picks a free one)") from None
            raise UsageError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="bgm-web-server", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The page's URL (``http://127.0.0.1:PORT/``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def close(self) -> None:
        """Stops serving and closes the socket (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()

    def __enter__(self) -> WebServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT/SIGTERM while the block runs (previous handlers restored)."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event  # handlers can only be installed in the main thread; the caller stops us
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda _signum, _frame: event.set())
    try:
        yield event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def serve_web(
    folder: str | Path,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    ready: Callable[[WebServer], None] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Serves an exported site until SIGINT/SIGTERM (or ``stop`` is set). ``bgm-deploy web`` is this.

    Args:
        folder: the folder ``export_web`` wrote.
        host: address to bind; keep ``127.0.0.1`` (camera access needs a secure context,
            which ``http://`` gets on loopback only).
        port: TCP port; 0 picks a free one.
        ready: called once with the running :class:`WebServer` (e.g. to print its URL).
        stop: an event that stops the server when set (tests, embedding).

    Returns:
        0 after a requested stop.

    Raises:
        UsageError: not an exported site, or the port cannot be used.
    """
    with _stop_on_signals() as signalled, WebServer(folder, host, port) as server:
        if ready is not None:
            ready(server)
        while not signalled.is_set() and not (stop is not None and stop.is_set()):
            signalled.wait(0.2)
    return 0
