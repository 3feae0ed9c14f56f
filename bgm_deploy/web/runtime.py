"""The onnxruntime-web files a site ships, at the version pinned by ``package-lock.json``.

One pin, one place: ``bgm_deploy/web/package-lock.json`` (npm's lockfile, next to its
``package.json``) names the onnxruntime-web version and the sha512 integrity of its npm
tarball. ``npm ci`` in that folder installs exactly that (the tests and CI do); the export
needs no npm: it takes the files from a folder (``--ort-dist``, e.g.
``node_modules/onnxruntime-web/dist``) or downloads the pinned tarball from the npm
registry once, checks its integrity against the lockfile, and keeps the few files a site
needs in a cache (``~/.cache/bgm-deploy/onnxruntime-web-<version>/``).

A site needs two bundles (see docs/web.md): the default bundle (``ort.min.mjs``; WASM and
WebGPU through onnxruntime's JavaScript kernels, "JSEP") and the native WebGPU bundle
(``ort.webgpu.min.mjs``; onnxruntime's C++ WebGPU execution provider), each with its
Emscripten loader and WASM binary.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from model.errors import RuntimeUnavailableError, UsageError

PACKAGE = "onnxruntime-web"
LOCKFILE = Path(__file__).with_name("package-lock.json")
# The files a site loads: bundle -> (ES module, Emscripten loader, WASM binary).
BUNDLE_FILES: dict[str, tuple[str, str, str]] = {
    "jsep": ("ort.min.mjs", "ort-wasm-simd-threaded.jsep.mjs", "ort-wasm-simd-threaded.jsep.wasm"),
    "webgpu": ("ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm"),
}
DIST_FILES: tuple[str, ...] = tuple(name for files in BUNDLE_FILES.values() for name in files)
DEFAULT_REGISTRY = "https://registry.npmjs.org"
REGISTRY_ENV = "BGM_DEPLOY_NPM_REGISTRY"  # a mirror of the npm registry (the integrity check still applies)
CACHE_ENV = "BGM_DEPLOY_CACHE"  # where downloads are kept [$XDG_CACHE_HOME/bgm-deploy, ~/.cache/bgm-deploy]
DOWNLOAD_TIMEOUT_S = 60
_COMPLETE = ".complete"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RuntimePin:
    """The onnxruntime-web release a site uses.

    Attributes:
        version: e.g. ``1.31.1``.
        integrity: the npm tarball's Subresource-Integrity string (``sha512-<base64>``).
    """

    version: str
    integrity: str

    def tarball_url(self, registry: str | None = None) -> str:
        """The tarball's URL on ``registry`` (default: ``$BGM_DEPLOY_NPM_REGISTRY`` or npmjs)."""
        base = (registry or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY).rstrip("/")
        return f"{base}/{PACKAGE}/-/{PACKAGE}-{self.version}.tgz"


def runtime_pin(lockfile: str | Path = LOCKFILE) -> RuntimePin:
    """The pin of onnxruntime-web in ``lockfile`` (npm lockfile v2/v3)."""
    try:
        data = json.loads(Path(lockfile).read_text(encoding="utf-8"))
        entry = data["packages"][f"node_modules/{PACKAGE}"]
        return RuntimePin(entry["version"], entry["integrity"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{lockfile}: cannot read the pinned {PACKAGE} version ({exc}); reinstall bgm-deploy") from None


def cache_root() -> Path:
    """Where downloads are cached: ``$BGM_DEPLOY_CACHE``, else ``$XDG_CACHE_HOME/bgm-deploy``, else ``~/.cache/bgm-deploy``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bgm-deploy"


def check_integrity(data: bytes, integrity: str, source: str) -> None:
    """Raises :class:`RuntimeUnavailableError` unless ``data`` matches the SRI string ``integrity``."""
    algorithm, _, expected = integrity.partition("-")
    if algorithm not in ("sha512", "sha384", "sha256"):
        raise UsageError(f"integrity {integrity[:20]}...: unsupported algorithm {algorithm!r}")
    actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode("ascii")
    if actual != expected:
        raise RuntimeUnavailableError(f"{source}: integrity check failed ({algorithm} {actual[:16]}... is not the "
                                      f"pinned {expected[:16]}...); the download is corrupt or not the pinned release")


def _dist_version(folder: Path) -> str | None:
    """The version in ``<folder>/../package.json`` when ``folder`` is an npm package's dist/."""
    manifest = folder.parent / "package.json"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(data.get("version")) if data.get("name") == PACKAGE else None


def check_dist(folder: str | Path, pin: RuntimePin, label: str = "--ort-dist") -> Path:
    """``folder`` must hold every file of :data:`DIST_FILES` of the pinned version.

    The version is read from the ``package.json`` above ``folder`` (an npm install's
    ``node_modules/onnxruntime-web/dist``); a folder without one is accepted as is.

    Raises:
        UsageError: not a folder, a file missing, or another version.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{label} {folder} is not a folder; pass onnxruntime-web's dist folder "
                         f"(node_modules/{PACKAGE}/dist after `npm install {PACKAGE}@{pin.version}`)")
    missing = [name for name in DIST_FILES if not (folder / name).is_file()]
    if missing:
        raise UsageError(f"{label} {folder} lacks {', '.join(missing)}; pass the dist folder of {PACKAGE} {pin.version}")
    version = _dist_version(folder)
    if version is not None and version != pin.version:
        raise UsageError(f"{label} {folder} is {PACKAGE} {version}; this bgm-deploy is tested with {pin.version} only "
                         f"(npm install {PACKAGE}@{pin.version})")
    return folder


def _download(url: str, pin: RuntimePin) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            return bytes(response.read())
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise RuntimeUnavailableError(
            f"cannot download {url} ({reason}); offline? pass --ort-dist DIR with the dist folder of "
            f"{PACKAGE} {pin.version} (npm install {PACKAGE}@{pin.version})"
        ) from None


def fetch_dist(pin: RuntimePin, cache: str | Path | None = None, progress: Progress | None = None,
               registry: str | None = None) -> Path:
    """The cached dist files of ``pin``, downloaded and checked on first use.

    Args:
        pin: the release (:func:`runtime_pin`).
        cache: cache root (default :func:`cache_root`).
        progress: called with one line per stage.
        registry: npm registry base URL (default ``$BGM_DEPLOY_NPM_REGISTRY`` or npmjs).

    Returns:
        ``<cache>/onnxruntime-web-<version>/`` holding :data:`DIST_FILES`.

    Raises:
        RuntimeUnavailableError: no network (the message says to pass ``--ort-dist``), or
            the tarball does not match the pinned integrity.
    """
    say = progress or (lambda _message: None)
    root = Path(cache) if cache is not None else cache_root()
    target = root / f"{PACKAGE}-{pin.version}"
    if (target / _COMPLETE).is_file() and all((target / name).is_file() for name in DIST_FILES):
        say(f"runtime: {PACKAGE} {pin.version} from the cache {target}")
        return target
    url = pin.tarball_url(registry)
    say(f"runtime: downloading {url} (~35 MB, once) ...")
    data = _download(url, pin)
    check_integrity(data, pin.integrity, url)
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{target.name}.", suffix=".part"))
    except OSError as exc:
        raise UsageError(f"cache {root} is not writable ({exc.strerror}); set {CACHE_ENV} to a writable folder") from None
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for name in DIST_FILES:
                try:
                    member = archive.getmember(f"package/dist/{name}")
                except KeyError:
                    raise RuntimeUnavailableError(f"{url}: the tarball has no dist/{name}") from None
                source = archive.extractfile(member)
                if source is None:
                    raise RuntimeUnavailableError(f"{url}: dist/{name} is not a file")
                (staging / name).write_bytes(source.read())
            license_member = next((m for m in archive.getmembers() if m.name.lower() == "package/license"), None)
            if license_member is not None and (source := archive.extractfile(license_member)) is not None:
                (staging / "LICENSE").write_bytes(source.read())
        (staging / _COMPLETE).write_text(pin.integrity + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"runtime: {PACKAGE} {pin.version} checked (sha512) and cached in {target}")
    return target


def runtime_files(ort_dist: str | Path | None = None, cache: str | Path | None = None,
                  progress: Progress | None = None) -> tuple[RuntimePin, Path]:
    """``(pin, folder)`` with the site's onnxruntime-web files: ``ort_dist`` when given, else the cache/download."""
    pin = runtime_pin()
    if ort_dist is not None:
        return pin, check_dist(ort_dist, pin)
    return pin, fetch_dist(pin, cache, progress)
