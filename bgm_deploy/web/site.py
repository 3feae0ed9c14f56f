"""``export_web``: a self-contained static site that mattes a camera (or files) in the browser.

The site (``bgm-deploy export --format web -o site/``)::

    site/
      index.html, page.js, style.css   the page (camera or files, plate, outputs, fps, backend)
      bench.html                       the latency page (what benchmarks/web_speed.py drives)
      bgm.js                           the JavaScript module with the documented API (JSDoc)
      model.onnx                       the default ONNX export + the exact web rewrites (exporters.web)
      model.json                       its config (the metadata embedded in model.onnx, again)
      ort/                             onnxruntime-web at the pinned version (bgm_deploy.web.runtime)
      samples/<pair>/src.jpg, bgr.jpg  a bundled photo pair, so the page shows a matte without a camera
      bgm-site.json                    what this is: versions, files (``bgm-deploy web`` checks it)

It is written whole or not at all: built in a temp folder next to ``output`` and renamed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporters.atomic import TEMP_MARKER, atomic_write_text, replace_folder
from exporters.config import DEFAULT_TRACE_RESOLUTION, OnnxConfig
from exporters.paths import check_output_file
from exporters.web import REFINE_K_INPUT, WebRewriteReport, web_from_onnx_file
from model.config import ModelConfig
from model.errors import ExportError, UsageError
from runtimes import create_runner

from ..export import ExportReport, export
from ..images import BUNDLED_PAIRS_DIR
from ..verify import VerifyConfig, compare_case
from .layout import (
    CONFIG_FILE,
    MODEL_FILE,
    RUNTIME_DIR,
    SAMPLE_PAIRS,
    SITE_MANIFEST,
    SITE_SCHEMA_VERSION,
    STATIC_DIR,
    STATIC_FILES,
)
from .runtime import BUNDLE_FILES, PACKAGE, RuntimePin, runtime_files

REPORT_SCHEMA_VERSION = 1
# The web model against the plain export in onnxruntime: the rewrites only add zero terms
# and move constants into an input, so float32 summation order is all that may differ.
WEB_RECHECK_TOLERANCE = 1e-5

Progress = Callable[[str], None]

_ORT_NOTICE = """onnxruntime-web {version} (https://www.npmjs.com/package/onnxruntime-web), copied unchanged from
its npm package (sha512 integrity {integrity}).

MIT License

Copyright (c) Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the Software without restriction, including without limitation the
rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to permit
persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of the
Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE
WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR
COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


@dataclass
class WebExportReport:
    """What :func:`export_web` wrote (``to_dict``: schema-versioned JSON)."""

    path: str
    files: list[str]
    size_bytes: int
    runtime: dict[str, str]
    web: dict[str, Any]
    recheck_max_abs_diff: dict[str, float]
    export: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    schema_version: int = REPORT_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "path": self.path,
            "files": self.files,
            "size_bytes": self.size_bytes,
            "runtime": self.runtime,
            "web": self.web,
            "recheck_max_abs_diff": self.recheck_max_abs_diff,
            "export": self.export,
            "seconds": self.seconds,
            "warnings": self.warnings,
        }


def _inside(path: Path, tree: Path) -> bool:
    path, tree = path.resolve(), tree.resolve()
    return path == tree or tree in path.parents


def check_site_output(output: str | Path, overwrite: bool, inputs: list[tuple[str, str | Path | None]]) -> Path:
    """``output`` may become the site folder without destroying anything.

    A missing or empty folder is fine; an existing site only with ``overwrite``; any other
    non-empty folder never (``--overwrite`` replaces exported sites only). No input may
    lie inside ``output`` (replacing it would delete the input) nor ``output`` inside an
    input folder.

    Raises:
        UsageError: see above.
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UsageError(f"-o/--output {output} is a file; --format web writes a folder")
    for label, other in inputs:
        if other is None:
            continue
        other = Path(other)
        if _inside(other, output):
            raise UsageError(f"-o/--output {output} contains {label} {other}; writing the site would delete it; "
                             "choose another folder")
        if other.is_dir() and _inside(output, other):
            raise UsageError(f"-o/--output {output} is inside {label} {other}; choose a folder outside it")
    if output.is_dir() and any(output.iterdir()):
        if not (output / SITE_MANIFEST).is_file():
            raise UsageError(f"-o/--output {output} is a non-empty folder that is not a bgm-deploy site; it is never "
                             "replaced, even with --overwrite; choose a new or empty folder")
        if not overwrite:
            raise UsageError(f"-o/--output {output} already exists; pass --overwrite to replace it, or choose another folder")
    check_output_file(output / "x", "-o/--output")  # the nearest existing folder must be writable
    return output


def _recheck(plain: Path, web: Path, model_config: ModelConfig, report: WebRewriteReport,
             resolution: tuple[int, int]) -> dict[str, float]:
    """The web model against the plain export in onnxruntime, through the runners and
    verify's comparison (fed the export's own refine budget)."""
    import numpy as np

    width, height = resolution
    rng = np.random.default_rng(7)
    bgr = rng.random((1, 3, height, width), dtype=np.float32)
    src = bgr.copy()
    src[:, :, height // 4: 3 * height // 4, width // 3: 2 * width // 3] = rng.random((3, 1, 1), dtype=np.float32)
    feeds = {"src": src, "bgr": bgr}
    web_feeds = {**feeds, REFINE_K_INPUT: np.array([report.refine_k], np.int64)} if report.refine_k is not None else feeds
    with create_runner("onnxruntime", path=plain, provider="cpu") as reference, \
            create_runner("onnxruntime", path=web, provider="cpu") as runner:
        expected = reference.infer(feeds)
        got = runner.infer(web_feeds)
    case = compare_case("web rewrites", list(src.shape), expected, got, model_config, "float32",
                        VerifyConfig(default_atol=WEB_RECHECK_TOLERANCE))
    if case.verdict == "fail":
        worst = max(out.max_abs for out in case.outputs)
        raise ExportError(f"the web rewrites changed the model's outputs (max abs diff {worst:.3g}, tolerance "
                          f"{WEB_RECHECK_TOLERANCE}; {'; '.join(case.notes)}); nothing written; report it with --debug")
    return {out.name: out.max_abs for out in case.outputs}


def _manifest(pin: RuntimePin, metadata_export: dict[str, Any], files: list[str]) -> str:
    return json.dumps({
        "schema_version": SITE_SCHEMA_VERSION,
        "generator": "bgm-deploy export --format web",
        "bgm_deploy_version": metadata_export.get("bgm_deploy_version"),
        "runtime": {"package": PACKAGE, "version": pin.version, "integrity": pin.integrity,
                    "bundles": {name: list(names) for name, names in BUNDLE_FILES.items()}},
        "model": MODEL_FILE,
        "config": CONFIG_FILE,
        "files": sorted(files),
    }, indent=2)


def export_web(
    model_config: ModelConfig | None = None,
    output: str | Path = "site",
    *,
    onnx: OnnxConfig | None = None,
    checkpoint: str | Path | None = None,
    resolution: tuple[int, int] | None = None,
    ort_dist: str | Path | None = None,
    cache: str | Path | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    json_path: str | Path | None = None,
) -> WebExportReport:
    """Exports the model and writes the static site around it. ``bgm-deploy export --format web`` is this.

    Args:
        model_config: the model (default ``ModelConfig()``), as for :func:`bgm_deploy.export.export`.
        output: the site folder (new, empty, or an earlier site with ``overwrite``).
        onnx: ONNX settings (fp32 only); default :class:`OnnxConfig`.
        checkpoint: official/compatible weights; None: synthetic weights (meaningless mattes).
        resolution: target ``(width, height)``: picks the backbone scale and sample pixels
            left unset and is the trace size (as for the ONNX export).
        ort_dist: a folder with onnxruntime-web's dist files (``node_modules/onnxruntime-web/dist``);
            None: the pinned release from the cache, downloaded and checked on first use.
        cache: the download cache (default ``~/.cache/bgm-deploy``).
        overwrite: replace an existing site.
        progress: called with one line per stage.
        json_path: also write the report there.

    Returns:
        :class:`WebExportReport`.

    Raises:
        UsageError, CheckpointError, ExportError, RuntimeUnavailableError: see the message;
        nothing is left half-written.
    """
    say = progress or (lambda _message: None)
    started = time.perf_counter()
    output = Path(output)
    onnx_config = onnx or OnnxConfig()
    if onnx_config.precision != "fp32":
        raise UsageError(f"--precision {onnx_config.precision}: --format web exports fp32 only (the page feeds float32)")
    inputs: list[tuple[str, str | Path | None]] = [("--checkpoint", checkpoint), ("--ort-dist", ort_dist),
                                                   ("--json", json_path)]
    check_site_output(output, overwrite, inputs)
    if json_path is not None:
        check_output_file(json_path, "--json", inputs=[("--checkpoint", checkpoint)])
    # The runtime first: offline without --ort-dist fails now, not after the export.
    pin, dist = runtime_files(ort_dist, cache, progress)
    seconds: dict[str, float] = {}
    output.absolute().parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.absolute().parent, prefix=f".{output.name}{TEMP_MARKER}{os.getpid()}-",
                                    suffix=".part"))
    try:
        with tempfile.TemporaryDirectory(prefix="bgm-web-") as folder:
            plain = Path(folder) / "plain.onnx"
            exported: ExportReport = export(model_config, plain, "onnx", onnx=onnx_config, checkpoint=checkpoint,
                                            progress=progress, resolution=resolution, overwrite=True)
            seconds.update({f"onnx_{key}": value for key, value in exported.seconds.items()})
            start = time.perf_counter()
            web_path = staging / MODEL_FILE
            report, metadata = web_from_onnx_file(plain, web_path)
            padded = ", ".join(f"{conv.channels}->{conv.padded_to}" for conv in report.padded_convs) or "none"
            say(f"web: zero-padded Conv input channels to multiples of {report.channel_multiple} ({padded}); "
                + (f"refine budget is the input {REFINE_K_INPUT} (default {report.refine_k} cells)"
                   if report.refine_k is not None else "refine budget fixed by the model"))
            trace = tuple(metadata.export.get("trace_resolution") or DEFAULT_TRACE_RESOLUTION)
            recheck = _recheck(plain, web_path, metadata.model_config, report, (int(trace[0]), int(trace[1])))
            say(f"web: re-check against the plain export in onnxruntime, max abs diff "
                f"{max(recheck.values(), default=0.0):.2g}")
            seconds["web_rewrites"] = time.perf_counter() - start
        (staging / CONFIG_FILE).write_text(metadata.to_json(), encoding="utf-8")
        for name in STATIC_FILES:
            shutil.copyfile(STATIC_DIR / name, staging / name)
        runtime = staging / RUNTIME_DIR
        runtime.mkdir()
        for names in BUNDLE_FILES.values():
            for name in names:
                shutil.copyfile(dist / name, runtime / name)
        (runtime / "NOTICE.txt").write_text(_ORT_NOTICE.format(version=pin.version, integrity=pin.integrity),
                                            encoding="utf-8")
        for pair in SAMPLE_PAIRS:
            (staging / "samples" / pair).mkdir(parents=True)
            for name in ("src.jpg", "bgr.jpg"):
                shutil.copyfile(BUNDLED_PAIRS_DIR / pair / name, staging / "samples" / pair / name)
        files = sorted(str(path.relative_to(staging)) for path in staging.rglob("*") if path.is_file())
        (staging / SITE_MANIFEST).write_text(_manifest(pin, metadata.export, files), encoding="utf-8")
        os.chmod(staging, 0o755)
        replace_folder(staging, output)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
        raise
    seconds["total"] = time.perf_counter() - started
    files = [*files, SITE_MANIFEST]
    size = sum((output / name).stat().st_size for name in files)
    say(f"web: wrote {output} ({len(files)} files, {size / 1e6:.0f} MB)")
    result = WebExportReport(
        path=str(output), files=sorted(files), size_bytes=size,
        runtime={"package": PACKAGE, "version": pin.version, "integrity": pin.integrity, "source": str(dist)},
        web=report.to_dict(), recheck_max_abs_diff=recheck, export=metadata.export, seconds=seconds,
        warnings=list(exported.warnings),
    )
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(result.to_dict(), indent=2))
    return result
