"""Fixtures of the web tests: onnxruntime-web's files, one exported site, a headless Chromium.

onnxruntime-web comes from ``npm ci`` in ``bgm_deploy/web`` (its lockfile pins the
release; ``.ci/run`` does it); Chromium is Debian's ``chromium`` (or ``$BGM_CHROMIUM``),
driven by Playwright's Python package (bgm_deploy.web.browser). Without them the browser
tests skip locally, with the reason; under CI (``CI`` set) they fail instead, so a CI run
cannot pass without having run them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bgm_deploy.web.browser import HeadlessChromium, chromium_path
from bgm_deploy.web.layout import CONFIG_FILE
from bgm_deploy.web.runtime import DIST_FILES
from exporters.metadata import read_config_file
from model.errors import RuntimeUnavailableError

REPO = Path(__file__).resolve().parents[3]
NODE_DIST = REPO / "bgm_deploy" / "web" / "node_modules" / "onnxruntime-web" / "dist"
# The web tests' model: small budget, traced at 320x256 (the export's default trace size).
SITE_RESOLUTION = (320, 256)
SITE_SAMPLE_PIXELS = 4000


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must install it: see .ci/run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def ort_dist() -> Path:
    """onnxruntime-web's dist folder from ``npm ci`` in bgm_deploy/web."""
    if not all((NODE_DIST / name).is_file() for name in DIST_FILES):
        _missing(f"onnxruntime-web is not installed: run `npm ci` in {NODE_DIST.parents[2]}")
    return NODE_DIST


@pytest.fixture()
def fake_dist(tmp_path: Path) -> Path:
    """A dist folder with placeholder files (tests of the site writer that load no page)."""
    folder = tmp_path / "dist"
    folder.mkdir()
    for name in DIST_FILES:
        (folder / name).write_text(f"// placeholder {name}\n")
    return folder


@pytest.fixture(scope="session")
def web_site(ort_dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One site exported for the session (synthetic weights, sample pixels 4000)."""
    from bgm_deploy.web.site import export_web
    from model.config import ModelConfig

    folder = tmp_path_factory.mktemp("web") / "site"
    export_web(ModelConfig(refine_sample_pixels=SITE_SAMPLE_PIXELS), folder, resolution=SITE_RESOLUTION,
               ort_dist=ort_dist)
    return folder


@pytest.fixture(scope="session")
def plain_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plain ONNX export of the site's model (same config, no web rewrites)."""
    from bgm_deploy.export import export
    from model.config import ModelConfig

    path = tmp_path_factory.mktemp("web-plain") / "plain.onnx"
    export(ModelConfig(refine_sample_pixels=SITE_SAMPLE_PIXELS), path, "onnx", resolution=SITE_RESOLUTION)
    return path


@pytest.fixture(scope="session")
def site_config(web_site: Path) -> Any:
    return read_config_file(web_site / CONFIG_FILE)


@pytest.fixture(scope="module")
def browser_ready() -> None:
    """Skips (locally) or fails (CI) when Playwright or Chromium is missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("playwright is not installed (pip install -c constraints.txt -e '.[test]')")
    try:
        chromium_path()
    except RuntimeUnavailableError as exc:
        _missing(str(exc))


@pytest.fixture()
def make_browser(browser_ready: None) -> Iterator[Any]:
    """``make_browser(site, webgpu=False)`` → a :class:`HeadlessChromium` on bench.html (a page of
    the site that loads no model by itself), closed after the test."""
    opened: list[HeadlessChromium] = []

    def make(site: Path, webgpu: bool = False) -> HeadlessChromium:
        browser = HeadlessChromium(site, webgpu)
        opened.append(browser)
        return browser

    yield make
    for browser in opened:
        browser.close()
