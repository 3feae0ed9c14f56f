"""bgm_deploy.web.server: headers, MIME types, refused paths, ports, clean stops."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest

from bgm_deploy.web.layout import SITE_MANIFEST, check_site
from bgm_deploy.web.server import ISOLATION_HEADERS, WebServer, serve_web
from model.errors import UsageError

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    """A minimal site: a manifest and a few files of each served kind."""
    folder = tmp_path / "site"
    files = {"index.html": "<!doctype html><title>t</title>", "bgm.js": "export const x = 1;\n",
             "ort/ort.min.mjs": "export default {};\n", "ort/a.wasm": "\0asm", "model.json": "{}"}
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    (folder / SITE_MANIFEST).write_text(json.dumps({"schema_version": 1, "files": sorted(files)}))
    (tmp_path / "secret.txt").write_text("outside the site\n")
    return folder


def _get(url: str) -> tuple[int, Message, bytes]:
    """Status, headers (case-insensitive) and body of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def _raw(server: WebServer, path: str) -> int:
    """A request with the path exactly as given (urllib would normalise ``..``)."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        connection.putrequest("GET", path, skip_host=False)
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


def test_every_response_has_the_isolation_headers_and_the_right_type(site: Path) -> None:
    with WebServer(site, port=0) as server:
        assert server.url == f"http://127.0.0.1:{server.port}/"
        for path, mime in (("", "text/html"), ("index.html", "text/html"), ("bgm.js", "text/javascript"),
                           ("ort/ort.min.mjs", "text/javascript"), ("ort/a.wasm", "application/wasm"),
                           ("model.json", "application/json")):
            status, headers, body = _get(server.url + path)
            assert status == 200, path
            assert headers["Content-Type"].split(";")[0] == mime, path
            for name, value in ISOLATION_HEADERS.items():
                assert headers[name] == value, (path, name)
            assert body
        status, headers, _ = _get(server.url + "missing.js")
        assert status == 404 and headers["Cross-Origin-Embedder-Policy"] == "require-corp"


def test_paths_outside_the_site_are_refused(site: Path) -> None:
    (site / "link.txt").symlink_to(site.parent / "secret.txt")
    with WebServer(site, port=0) as server:
        for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/ort/..%2f..%2fsecret.txt", "/ort/%2e%2e/%2e%2e/secret.txt"):
            assert _raw(server, path) in (403, 404), path
        assert _raw(server, "/link.txt") == 403  # a link leading out of the site
        assert _raw(server, "/ort/") == 404  # no directory listings


def test_a_busy_port_and_a_folder_that_is_no_site_are_one_line_errors(site: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=rf"--port {port}: 127.0.0.1:{port} is in use"):
            WebServer(site, port=port)
    with pytest.raises(UsageError, match="not a site exported by bgm-deploy"):
        WebServer(tmp_path, port=0)
    (site / "bgm.js").unlink()
    with pytest.raises(UsageError, match="incomplete: bgm.js missing"):
        check_site(site)
    with pytest.raises(UsageError, match="is not a folder"):
        check_site(tmp_path / "nothing")


def test_serve_web_calls_ready_and_stops_on_request(site: Path) -> None:
    stop = threading.Event()
    seen: list[int] = []

    def ready(server: WebServer) -> None:
        seen.append(_get(server.url)[0])
        stop.set()

    assert serve_web(site, port=0, ready=ready, stop=stop) == 0
    assert seen == [200]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_cli_prints_the_url_and_stops_cleanly_on_a_signal(site: Path, signum: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "bgm_deploy", "web", str(site), "--port", "0"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert line.startswith("open http://127.0.0.1:"), line
        assert _get(line.split()[1])[0] == 200
        process.send_signal(signum)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Traceback" not in (process.stderr.read() if process.stderr else "")


def test_the_cli_refuses_a_busy_port_in_one_line(site: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "bgm_deploy", "web", str(site), "--port", str(port)], cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60,
                                check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [(f"Error: --port {port}: 127.0.0.1:{port} is in use; stop what uses "
                                                   "it or pass another --port (0 picks a free one)")]
