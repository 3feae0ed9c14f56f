"""bgm_deploy.web.runtime: the pinned onnxruntime-web, from a folder or the (loopback) registry."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import socket
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bgm_deploy.web.runtime import (
    DIST_FILES,
    LOCKFILE,
    PACKAGE,
    RuntimePin,
    check_dist,
    fetch_dist,
    runtime_pin,
)
from model.errors import RuntimeUnavailableError, UsageError


def test_the_lockfile_pins_the_version_package_json_asks_for() -> None:
    pin = runtime_pin()
    manifest = json.loads(LOCKFILE.with_name("package.json").read_text())
    assert manifest["dependencies"][PACKAGE] == pin.version == "1.31.1"
    assert pin.integrity.startswith("sha512-")
    assert pin.tarball_url("http://mirror.invalid/") == f"http://mirror.invalid/{PACKAGE}/-/{PACKAGE}-1.31.1.tgz"


def test_check_dist_names_what_is_missing_or_wrong(fake_dist: Path) -> None:
    pin = runtime_pin()
    assert check_dist(fake_dist, pin) == fake_dist
    (fake_dist / "ort.webgpu.min.mjs").unlink()
    with pytest.raises(UsageError, match="lacks ort.webgpu.min.mjs"):
        check_dist(fake_dist, pin)
    with pytest.raises(UsageError, match="is not a folder"):
        check_dist(fake_dist / "nothing", pin)


def test_check_dist_refuses_another_release(tmp_path: Path) -> None:
    dist = tmp_path / PACKAGE / "dist"
    dist.mkdir(parents=True)
    for name in DIST_FILES:
        (dist / name).write_text("x")
    (dist.parent / "package.json").write_text(json.dumps({"name": PACKAGE, "version": "1.20.0"}))
    with pytest.raises(UsageError, match="is onnxruntime-web 1.20.0; this bgm-deploy is tested with 1.31.1 only"):
        check_dist(dist, runtime_pin())


def _tarball(content: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in [*(f"dist/{n}" for n in DIST_FILES), "dist/ort.all.min.mjs", "package.json"]:
            data = content or f"// {name}\n".encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


@pytest.fixture()
def registry(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    """A loopback 'npm registry' holding one tarball of version 9.9.9."""
    root = tmp_path / "registry"
    (root / PACKAGE / "-").mkdir(parents=True)
    data = _tarball()
    (root / PACKAGE / "-" / f"{PACKAGE}-9.9.9.tgz").write_bytes(data)
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", data
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_dist_checks_the_integrity_and_caches_only_the_needed_files(registry: tuple[str, bytes],
                                                                         tmp_path: Path) -> None:
    url, data = registry
    cache = tmp_path / "cache"
    lines: list[str] = []
    folder = fetch_dist(RuntimePin("9.9.9", _sri(data)), cache, lines.append, registry=url)
    assert folder == cache / f"{PACKAGE}-9.9.9"
    assert sorted(p.name for p in folder.iterdir()) == sorted([*DIST_FILES, ".complete"])
    assert (folder / "ort.min.mjs").read_text() == "// dist/ort.min.mjs\n"
    assert "downloading" in lines[0] and "checked (sha512)" in lines[-1]
    # Cached: no network needed the second time.
    again = fetch_dist(RuntimePin("9.9.9", _sri(data)), cache, lines.append, registry="http://127.0.0.1:9")
    assert again == folder and "from the cache" in lines[-1]


def test_fetch_dist_refuses_a_tarball_that_is_not_the_pinned_one(registry: tuple[str, bytes], tmp_path: Path) -> None:
    url, _ = registry
    with pytest.raises(RuntimeUnavailableError, match="integrity check failed"):
        fetch_dist(RuntimePin("9.9.9", _sri(b"another release")), tmp_path / "cache", registry=url)
    assert not (tmp_path / "cache" / f"{PACKAGE}-9.9.9").exists()


def _free_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_offline_is_one_line_that_names_the_way_out(tmp_path: Path) -> None:
    port = _free_port()
    with pytest.raises(RuntimeUnavailableError) as info:
        fetch_dist(RuntimePin("1.31.1", "sha512-x"), tmp_path / "cache", registry=f"http://127.0.0.1:{port}")
    message = str(info.value)
    assert "\n" not in message and "pass --ort-dist DIR" in message and "npm install onnxruntime-web@1.31.1" in message
    assert not (tmp_path / "cache").exists()
