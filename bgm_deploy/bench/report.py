"""Benchmark reports: the dataclasses and their renderings.

JSON (schema-versioned, with the environment fingerprint), a terminal table, markdown,
and a PNG bar chart (p50 and p99 per row) drawn with Pillow, so that no plotting library
is needed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from exporters.atomic import atomic_write_bytes
from exporters.recipes import ORIGINAL_RECIPE
from model.errors import UsageError

from .stats import LatencyStats

# The original project's ONNX recipe (exporters/original.py): its row is the baseline of
# ``speedup_vs_original``. Defined here, not in backends.py, so reading reports needs no torch.
ORIGINAL_BACKEND = ORIGINAL_RECIPE  # the row of the original project's ONNX recipe

REPORT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class StageResult:
    """One stage of the end-to-end pipeline: its latency and share of the total (0..1)."""

    stage: str
    stats: LatencyStats
    share: float

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "stats": self.stats.to_dict(), "share": self.share}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageResult:
        return cls(data["stage"], LatencyStats.from_dict(data["stats"]), data["share"])


@dataclass(frozen=True)
class BenchResult:
    """One measured row: a backend on one model, resolution, precision and scope.

    ``scope`` is ``"compute"`` (tensors ready) or ``"end-to-end"`` (files in, PNG out).
    ``speedup_vs_eager`` is the ratio of eager PyTorch's median to this row's (same model,
    resolution, precision and scope), None without an eager row; ``speedup_vs_original``
    the same against the original project's ONNX recipe (the ``onnx-original`` row; a
    latency ratio of ``1 / speedup_vs_original``). ``alpha_mse``/``alpha_sad`` are the row's matte
    quality: the mean MSE and SAD (/1000) of its alpha against the ground truth of the bundled
    real pairs resized to the row's resolution (what a runtime or precision costs in quality;
    meaningful with real weights). ``flops`` counts one
    frame in the fixed-sampling configuration; ``peak_fraction`` is the achieved FLOP/s
    over the device's measured GEMM peak.
    """

    backend: str
    provider: str
    backbone: str
    backbone_scale: float
    sample_pixels: int
    width: int
    height: int
    batch: int
    precision: str
    mode: str
    scope: str
    stats: LatencyStats
    refined_fraction: float | None = None
    speedup_vs_eager: float | None = None
    speedup_vs_original: float | None = None
    flops: int | None = None
    achieved_gflops: float | None = None
    peak_fraction: float | None = None
    stages: tuple[StageResult, ...] = ()
    model_file: str | None = None
    alpha_mse: float | None = None
    alpha_sad: float | None = None

    @property
    def resolution(self) -> str:
        return f"{self.width}x{self.height}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stats"] = self.stats.to_dict()
        data["stages"] = [s.to_dict() for s in self.stages]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResult:
        data = dict(data)
        data["stats"] = LatencyStats.from_dict(data["stats"])
        data["stages"] = tuple(StageResult.from_dict(s) for s in data.get("stages", ()))
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class SkippedBackend:
    """A backend that was not measured, and why."""

    backend: str
    precision: str
    reason: str


@dataclass
class BenchReport:
    """Everything one ``bench`` run measured, with the machine it ran on."""

    results: list[BenchResult]
    skipped: list[SkippedBackend]
    environment: dict[str, Any]
    settings: dict[str, Any]
    peak_gemm: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    schema_version: int = REPORT_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "environment": self.environment,
            "settings": self.settings,
            "peak_gemm": self.peak_gemm,
            "results": [r.to_dict() for r in self.results],
            "skipped": [asdict(s) for s in self.skipped],
            "warnings": list(self.warnings),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchReport:
        version = data.get("schema_version")
        if version != REPORT_SCHEMA_VERSION:
            raise UsageError(f"bench report schema_version {version!r} is not supported; valid: {REPORT_SCHEMA_VERSION}")
        return cls(
            results=[BenchResult.from_dict(r) for r in data["results"]],
            skipped=[SkippedBackend(**s) for s in data["skipped"]],
            environment=data["environment"],
            settings=data["settings"],
            peak_gemm=data.get("peak_gemm", {}),
            warnings=list(data.get("warnings", [])),
        )


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Writes ``data`` to a temp file beside ``path``, then renames it over ``path``."""
    return atomic_write_bytes(path, data)


# -- table / markdown ------------------------------------------------------------------------
COLUMNS = ("backend", "model", "resolution", "precision", "scope", "median ms", "p99 ms", "fps", "vs eager", "vs original",
           "CV", "refined", "alpha MSE")


def _pixels(count: int) -> str:
    """80000 → "80k", 320 → "320"."""
    return f"{count / 1000:g}k" if count >= 1000 else str(count)


def _row(result: BenchResult) -> list[str]:
    s = result.stats
    batch = f" b{result.batch}" if result.batch > 1 else ""
    return [
        result.backend,
        f"{result.backbone} {result.backbone_scale:g}/{_pixels(result.sample_pixels)}",
        result.resolution + batch,
        result.precision,
        result.scope,
        f"{s.median_ms:.1f}",
        f"{s.p99_ms:.1f}",
        f"{s.fps:.2f}",
        "-" if result.speedup_vs_eager is None else f"{result.speedup_vs_eager:.2f}x",
        "-" if result.speedup_vs_original is None else f"{result.speedup_vs_original:.2f}x",
        f"{s.cv:.3f}{'!' if s.is_noisy else ''}",
        "-" if result.refined_fraction is None else f"{100 * result.refined_fraction:.2f}%",
        "-" if result.alpha_mse is None else f"{result.alpha_mse:.4f}",
    ]


def render_table(report: BenchReport) -> str:
    """The terminal table, followed by skipped backends, stage shares and warnings."""
    rows = [list(COLUMNS)] + [_row(r) for r in report.results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    numeric = set(range(5, len(COLUMNS)))

    def fmt(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))

    lines = [fmt(rows[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows[1:]]
    lines += _details(report)
    return "\n".join(lines)


def _details(report: BenchReport) -> list[str]:
    lines: list[str] = []
    for result in report.results:
        if result.stages:
            shares = ", ".join(f"{s.stage} {s.stats.median_ms:.1f} ms ({100 * s.share:.0f}%)" for s in result.stages)
            lines.append(f"end-to-end {result.backend} {result.resolution}: {shares}")
    for result in report.results:
        if result.peak_fraction is not None and result.scope == "compute":
            # The arithmetic floor: the frame's FLOPs at the measured GEMM peak.
            floor_ms = result.stats.median_ms * result.peak_fraction
            lines.append(
                f"{result.backend} {result.backbone} {result.resolution}: {result.flops / 1e9:.1f} GFLOP/frame, "
                f"{result.achieved_gflops:.1f} GFLOP/s = {100 * result.peak_fraction:.1f}% of measured peak "
                f"(floor {floor_ms:.1f} ms; {1 / result.peak_fraction:.2f}x the floor)"
            )
    for result in report.results:
        if result.speedup_vs_original and result.backend != ORIGINAL_BACKEND and result.scope == "compute":
            lines.append(
                f"{result.backend} {result.backbone} {result.resolution}: latency {1 / result.speedup_vs_original:.3f}x "
                f"the original project's ONNX recipe ({ORIGINAL_BACKEND})"
            )
    if report.peak_gemm:
        peaks = ", ".join(f"{device} {p['gflops']:.1f} GFLOP/s" for device, p in report.peak_gemm.items())
        lines.append(f"measured fp32 GEMM peak: {peaks}")
    for skipped in report.skipped:
        lines.append(f"skipped {skipped.backend} ({skipped.precision}): {skipped.reason}")
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    return [""] + lines if lines else []


def render_markdown(report: BenchReport) -> str:
    """A markdown table with the environment it was measured on."""
    env = report.environment
    out = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if i < 5 else "---:" for i in range(len(COLUMNS))) + "|",
    ]
    out += ["| " + " | ".join(_row(r)) + " |" for r in report.results]
    out.append("")
    out.append(
        f"Machine: {env.get('cpu')} ({env.get('cpu_count')} logical CPUs, {report.settings.get('threads')} threads), "
        f"GPU: {env.get('gpu') or 'none'}; torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}, "
        f"TensorRT {env.get('tensorrt') or 'not installed'}. Timing: {report.settings.get('timing')}, "
        f"mode {report.settings.get('mode')}."
    )
    details = [line for line in _details(report) if line]
    if details:
        out.append("")
        out += [f"- {line}" for line in details]
    return "\n".join(out) + "\n"


def write_json(report: BenchReport, path: str | Path) -> Path:
    return write_atomic(path, (report.to_json() + "\n").encode())


def write_markdown(report: BenchReport, path: str | Path) -> Path:
    return write_atomic(path, render_markdown(report).encode())


# -- plot --------------------------------------------------------------------------------------
P50_COLOUR = (52, 101, 164)
P99_COLOUR = (245, 121, 0)


def render_plot(report: BenchReport) -> Any:
    """A horizontal bar chart (PIL image): per row, p50 and p99 latency in ms."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    labels = [f"{r.backend} {r.backbone} {r.resolution} {r.precision} {r.scope}" for r in report.results]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = int(max([measure.textlength(label, font=font) for label in labels] + [60])) + 20
    bar_area, bar_height, gap, top = 520, 14, 12, 50
    width = label_width + bar_area + 90
    height = top + len(report.results) * (2 * bar_height + gap) + 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), "bgm-deploy bench: latency per call (ms), lower is better", fill="black", font=font)
    draw.rectangle((10, 28, 22, 38), fill=P50_COLOUR)
    draw.text((26, 28), "median (p50)", fill="black", font=font)
    draw.rectangle((130, 28, 142, 38), fill=P99_COLOUR)
    draw.text((146, 28), "p99", fill="black", font=font)
    longest = max([r.stats.p99_ms for r in report.results] + [1e-9])
    y = top
    for label, result in zip(labels, report.results):
        draw.text((10, y + bar_height // 2), label, fill="black", font=font)
        for value, colour in ((result.stats.median_ms, P50_COLOUR), (result.stats.p99_ms, P99_COLOUR)):
            length = max(1, int(bar_area * value / longest))
            draw.rectangle((label_width, y, label_width + length, y + bar_height - 2), fill=colour)
            draw.text((label_width + length + 4, y), f"{value:.1f}", fill="black", font=font)
            y += bar_height
        y += gap
    draw.line((label_width, top - 4, label_width, y), fill="black")
    return image


def write_plot(report: BenchReport, path: str | Path) -> Path:
    import io

    if not report.results:
        raise UsageError("nothing to plot: the report has no measured results")
    buffer = io.BytesIO()
    render_plot(report).save(buffer, format="PNG")
    return write_atomic(path, buffer.getvalue())
