"""The ``bgm-deploy`` command line: a thin layer over the Python API.

Each command parses options, builds a config, calls one API function, and turns
:class:`BgmDeployError` into one line on stderr and its exit code (2 usage, 1 failure).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from typing import Any, Callable

import click

from . import __version__
from .errors import BgmDeployError

log = logging.getLogger("bgm_deploy")


class Context:
    """Global options shared by every command."""

    def __init__(self, verbose: int = 0, quiet: bool = False, debug: bool = False) -> None:
        self.verbose = verbose
        self.quiet = quiet
        self.debug = debug

    def echo(self, message: str = "", err: bool = False) -> None:
        """Progress/status output, silenced by --quiet."""
        if not self.quiet:
            click.echo(message, err=err)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turns package errors into one line and an exit code; --debug re-raises for the traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        state: Context = ctx.find_object(Context) or Context()
        try:
            return func(*args, **kwargs)
        except BgmDeployError as exc:
            if state.debug:
                raise
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)

    return wrapper


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr, force=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="bgm-deploy")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and results.")
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, debug: bool) -> None:
    """Export, verify, benchmark and serve BackgroundMattingV2 models."""
    _configure_logging(verbose, quiet)
    ctx.obj = Context(verbose, quiet, debug)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@handle_errors
def info(as_json: bool) -> None:
    """Print versions of torch / onnx / onnxruntime / TensorRT, providers and the device."""
    from .environment import environment_info

    data = environment_info()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"bgm-deploy {__version__}")
    for key, value in data.items():
        if isinstance(value, list):
            value = ", ".join(value) or "none"
        click.echo(f"  {key:<22} {('none' if key == 'gpu' else 'not installed') if value is None else value}")


@cli.command()
@click.argument("models", nargs=-1, type=click.Path(dir_okay=False), metavar="[MODEL ...]")
@click.option("--backend", "backends", multiple=True, help="Comma-separated: eager, torchscript, onnx-cpu, onnx-cuda, "
              "onnx-tensorrt, tensorrt. Default: every backend usable here (others reported as skipped).")
@click.option("--backbone", "backbones", multiple=True, help="Comma-separated backbones of the default model [mobilenetv2].")
@click.option("--resolution", "resolutions", multiple=True, help="hd, 4k or WxH; repeatable or comma-separated [hd].")
@click.option("--batch", default=1, show_default=True, type=int, help="Frames per call.")
@click.option("--precision", "precisions", multiple=True, help="fp32 and/or fp16 (fp16 needs a GPU) [fp32].")
@click.option("--warmup", default="3", show_default=True, help="Untimed calls (N) or seconds (e.g. 2.5s).")
@click.option("--iterations", default=10, show_default=True, type=int, help="Timed calls.")
@click.option("--duration", type=float, default=None, help="Time calls for this many seconds instead of --iterations.")
@click.option("--mode", type=click.Choice(["fixed", "adaptive"]), default="fixed", show_default=True,
              help="fixed: exactly sample_pixels refined per frame; adaptive: real pairs, refined fraction reported.")
@click.option("--end-to-end/--no-end-to-end", default=False, show_default=True,
              help="Also time decode → preprocess → infer → postprocess → encode on image files.")
@click.option("--threads", type=int, default=None, help="Intra-op threads for torch and onnxruntime [torch's setting].")
@click.option("--backbone-scale", type=float, default=None, help="Override the per-resolution preset (0.25 HD, 0.125 4K).")
@click.option("--sample-pixels", type=int, default=None, help="Override the preset (80000 HD, 320000 4K).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="Weights (default: synthetic).")
@click.option("--seed", type=int, default=0, show_default=True, help="Synthetic-weights seed.")
@click.option("--flops/--no-flops", default=True, show_default=True, help="Count FLOPs and measure the GEMM peak.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None, help="Keep exports here (default: temp dir).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the JSON report.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), default=None, help="Write a markdown table.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="Write a PNG bar chart.")
@click.pass_context
@handle_errors
def bench(ctx: click.Context, models: tuple[str, ...], backends: tuple[str, ...], backbones: tuple[str, ...],
          resolutions: tuple[str, ...], batch: int, precisions: tuple[str, ...], warmup: str, iterations: int,
          duration: float | None, mode: str, end_to_end: bool, threads: int | None, backbone_scale: float | None,
          sample_pixels: int | None, checkpoint: str | None, seed: int, flops: bool, workdir: str | None,
          json_path: str | None, markdown_path: str | None, plot_path: str | None) -> None:
    """Benchmark backends (latency table; without MODEL: the default model, exported on the fly)."""
    from pathlib import Path

    from benchmarks.harness import TimingConfig
    from benchmarks.report import render_table

    from .bench import BenchConfig, bench as run_bench, parse_resolution, parse_warmup, split_list

    state: Context = ctx.find_object(Context) or Context()
    config = BenchConfig(
        models=tuple(Path(m) for m in models),
        backends=split_list(backends) or None,
        backbones=split_list(backbones) or ("mobilenetv2",),
        resolutions=tuple(parse_resolution(r) for r in split_list(resolutions) or ("hd",)),
        batch=batch,
        precisions=split_list(precisions) or ("fp32",),
        timing=TimingConfig(parse_warmup(warmup), iterations, duration),
        mode=mode,
        end_to_end=end_to_end,
        threads=threads,
        backbone_scale=backbone_scale,
        sample_pixels=sample_pixels,
        checkpoint=Path(checkpoint) if checkpoint else None,
        seed=seed,
        count_flops=flops,
        workdir=Path(workdir) if workdir else None,
        json_path=Path(json_path) if json_path else None,
        markdown_path=Path(markdown_path) if markdown_path else None,
        plot_path=Path(plot_path) if plot_path else None,
    )
    report = run_bench(config, progress=lambda message: state.echo(message, err=True))
    click.echo(render_table(report))


def _parse_size(value: str | None, option: str) -> tuple[int, int] | None:
    if value is None:
        return None
    width, sep, height = value.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise click.BadParameter(f"{value!r} is not WxH (e.g. 1920x1080)", param_hint=option)
    return int(width), int(height)


@cli.command()
@click.option("--src", required=True, type=click.Path(exists=True), help="Source image or directory (recursive).")
@click.option("--bgr", required=True, type=click.Path(exists=True),
              help="Background image (for all sources) or directory matched by relative path.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Output root: OUT/<type>/<path>.")
@click.option("--model", type=click.Path(exists=True, dir_okay=False), help="Exported model (.onnx, .pt, .engine).")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), help="PyTorch checkpoint instead of --model.")
@click.option("--backbone", type=click.Choice(["mobilenetv2", "resnet50", "resnet101"]),
              help="With --checkpoint: expected backbone [read from the checkpoint].")
@click.option("--backbone-scale", type=float, help="With --checkpoint: base network scale [0.25].")
@click.option("--refine-mode", type=click.Choice(["sampling", "thresholding", "full"]), help="With --checkpoint [sampling].")
@click.option("--refine-sample-pixels", type=int, help="With --checkpoint: pixels refined in sampling mode [80000].")
@click.option("--refine-threshold", type=float, help="With --checkpoint: error threshold in thresholding mode [0.1].")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True)
@click.option("--allow-fallback/--no-allow-fallback", default=False, show_default=True,
              help="Run on CPU (loud warning) when the provider is not usable, instead of failing.")
@click.option("--outputs", default="pha,fgr", show_default=True, help="Comma-separated: pha, fgr, com, err, ref.")
@click.option("--fgr-format", type=click.Choice(["png", "jpg"]), default="png", show_default=True)
@click.option("--align/--no-align", default=False, show_default=True,
              help='Align backgrounds to sources (ORB + RANSAC homography; pip install "bgm-deploy[align]").')
@click.option("--resize", metavar="WxH", help="Resize source and background of every pair to WxH.")
@click.option("--padding", type=click.Choice(["replicate", "reflect"]), default="replicate", show_default=True,
              help="Padding to the model's multiple of 4 (cropped off again).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Decode and encode threads.")
@click.option("--overwrite/--no-overwrite", default=False, show_default=True, help="Replace existing outputs.")
@click.option("--skip-existing/--no-skip-existing", default=False, show_default=True,
              help="Skip pairs whose outputs all exist (resume an interrupted run).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Also write the JSON report here.")
@click.pass_obj
@handle_errors
def matte(
    state: Context,
    src: str,
    bgr: str,
    output: str,
    model: str | None,
    checkpoint: str | None,
    backbone: str | None,
    backbone_scale: float | None,
    refine_mode: str | None,
    refine_sample_pixels: int | None,
    refine_threshold: float | None,
    provider: str,
    allow_fallback: bool,
    outputs: str,
    fgr_format: str,
    align: bool,
    resize: str | None,
    padding: str,
    workers: int,
    overwrite: bool,
    skip_existing: bool,
    report_path: str | None,
) -> None:
    """Matte photos: SRC (with subject) and BGR (same scene without it) to alpha, foreground, ..."""
    from .errors import UsageError
    from .matte import MatteOptions, ProgressPrinter, matte as run_matte
    from .predictor import config_from_checkpoint

    options = MatteOptions(
        outputs=tuple(name.strip() for name in outputs.split(",") if name.strip()),
        fgr_format=fgr_format,
        align=align,
        resize=_parse_size(resize, "--resize"),
        workers=workers,
        overwrite=overwrite,
        skip_existing=skip_existing,
        padding=padding,
    )
    settings = {"backbone": backbone, "backbone_scale": backbone_scale, "refine_mode": refine_mode,
                "refine_sample_pixels": refine_sample_pixels, "refine_threshold": refine_threshold}
    if model is not None and (checkpoint is not None or any(v is not None for v in settings.values())):
        raise UsageError("--model carries its own settings; --checkpoint/--backbone/--refine-* apply only without it")
    model_config = config_from_checkpoint(checkpoint, **settings) if checkpoint is not None else None
    report = run_matte(
        src, bgr, output, model=model, checkpoint=checkpoint, model_config=model_config, provider=provider,
        allow_fallback=allow_fallback, options=options, progress=ProgressPrinter(click.echo, quiet=state.quiet),
        report_path=report_path,
    )
    for path in report.unmatched_backgrounds:
        state.echo(f"unused background: {path}", err=True)
    click.echo(report.summary())
    if not report.ok:
        raise click.exceptions.Exit(1)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", type=click.Choice(["tensorrt"]), default="tensorrt", show_default=True,
              help="Deployment target to check for.")
@click.option("--min-tensorrt", default="10.0", show_default=True, help="Oldest TensorRT version to support.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the report as JSON here.")
@click.pass_context
@handle_errors
def check(ctx: click.Context, model: str, target: str, min_tensorrt: str, json_path: str | None) -> None:
    """Preflight an ONNX MODEL for a target without its hardware (exit 1 if something blocks it)."""
    from .check import check as run_check

    state: Context = ctx.obj
    report = run_check(model, target=target, min_tensorrt=min_tensorrt, json_path=json_path)
    for finding in report.findings:
        if finding.severity != "info" or state.verbose:
            state.echo(finding.describe())
    click.echo(report.summary())
    if not report.ok:
        raise click.exceptions.Exit(1)


def main() -> None:
    cli(prog_name="bgm-deploy")


if __name__ == "__main__":
    main()
