"""The ``bgm-deploy`` command line: a thin layer over the Python API.

Each command parses options, builds a config, calls one API function, and turns
:class:`BgmDeployError` into one line on stderr and its exit code (2 usage, 1 failure).
Every default and rule lives in the API; this module only translates.

Commands import the API inside their bodies (each such import is marked "deferred"): the
API loads torch, which takes seconds that ``--help`` and ``--version`` must not pay. The
configs built here (model.config, exporters.config) are torch-free and imported at the top.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click

from exporters.config import DEFAULT_EXPORTER, OnnxConfig, TorchScriptConfig
from exporters.recipes import recipes
from model.config import ModelConfig, check_resolution
from model.errors import BgmDeployError, UsageError

from . import __version__
from .cli_options import model_options, spec_from_options, target_from_options, target_options

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
    # deferred: the API loads torch (see the module docstring)
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
@click.option("--backend", "backends", multiple=True, help="Comma-separated: eager, torchscript, onnx-cpu, onnx-original (the original "
              "project's ONNX recipe, the baseline of 'vs original'), openvino-cpu, onnx-cuda, onnx-tensorrt, tensorrt. "
              "Default: every backend usable here (others reported as skipped).")
@click.option("--backbone", "backbones", multiple=True, help="Comma-separated backbones of the default model [mobilenetv2].")
@click.option("--resolution", "resolutions", multiple=True, help="hd, 4k or WxH; repeatable or comma-separated [hd].")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1), help="Frames per call.")
@click.option("--precision", "precisions", multiple=True, help="fp32 and/or fp16 (fp16 needs a GPU) [fp32].")
@click.option("--warmup", default="3", show_default=True, help="Untimed calls (N) or seconds (e.g. 2.5s).")
@click.option("--iterations", default=10, show_default=True, type=click.IntRange(min=1), help="Timed calls.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None, help="Time calls for this many seconds instead of --iterations.")
@click.option("--mode", type=click.Choice(["fixed", "adaptive"]), default="fixed", show_default=True,
              help="fixed: exactly sample_pixels refined per frame; adaptive: real pairs, refined fraction reported.")
@click.option("--end-to-end/--no-end-to-end", default=False, show_default=True,
              help="Also time decode → preprocess → infer → postprocess → encode on image files.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads for torch and onnxruntime [torch's setting].")
@click.option("--backbone-scale", type=click.FloatRange(0.01, 0.5), default=None,
              help="Override the per-resolution preset (0.25 HD, 0.125 4K).")
@click.option("--sample-pixels", type=click.IntRange(min=16), default=None, help="Override the preset (80000 HD, 320000 4K).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="Weights (default: synthetic).")
@click.option("--seed", type=int, default=0, show_default=True, help="Synthetic-weights seed.")
@click.option("--onnx-exporter", type=click.Choice(["legacy", "dynamo"]), default=None,
              help="ONNX exporter for the ONNX backends [the export command's default].")
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
          sample_pixels: int | None, checkpoint: str | None, seed: int, onnx_exporter: str | None, flops: bool,
          workdir: str | None,
          json_path: str | None, markdown_path: str | None, plot_path: str | None) -> None:
    """Benchmark backends (latency table; without MODEL: the default model, exported on the fly)."""

    # deferred: the API loads torch (see the module docstring)
    from bgm_deploy.bench.harness import TimingConfig
    from bgm_deploy.bench.report import render_table

    from .bench import BenchConfig, parse_resolution, parse_warmup, split_list
    from .bench import bench as run_bench

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
        onnx_exporter=onnx_exporter,
        count_flops=flops,
        workdir=Path(workdir) if workdir else None,
        json_path=Path(json_path) if json_path else None,
        markdown_path=Path(markdown_path) if markdown_path else None,
        plot_path=Path(plot_path) if plot_path else None,
    )
    report = run_bench(config, progress=lambda message: state.echo(message, err=True))
    click.echo(render_table(report))



def _parse_size(value: str | None, option: str, multiple: int = 4) -> tuple[int, int] | None:
    if value is None:
        return None
    width, sep, height = value.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise click.BadParameter(f"{value!r} is not WxH (e.g. 1920x1080)", param_hint=option)
    return check_resolution(int(width), int(height), option, multiple)


@cli.command()
@click.option("--src", required=True, type=click.Path(),
              help="Source image or directory (recursive); or a video file, a folder of numbered frames (with "
                   "--sequence), a URL or a device (with --src-format): see docs/video.md.")
@click.option("--bgr", required=True, type=click.Path(exists=True),
              help="Background image (for all sources) or directory matched by relative path.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Output root: OUT/<type>/<path>.")
@click.option("--model", type=click.Path(exists=True, dir_okay=False), help="Exported model (.onnx, .pt, .engine).")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), help="PyTorch checkpoint instead of --model.")
@click.option("--backbone", type=click.Choice(["mobilenetv2", "resnet50", "resnet101"]),
              help="With --checkpoint: expected backbone [read from the checkpoint].")
@click.option("--backbone-scale", type=float, help="With --checkpoint: base network scale, 0.01..0.5 [0.25].")
@click.option("--refine-mode", type=click.Choice(["sampling", "thresholding", "full"]), help="With --checkpoint [sampling].")
@click.option("--refine-sample-pixels", type=int,
              help="With --checkpoint: pixels refined in sampling mode, 16 or more [80000].")
@click.option("--refine-threshold", type=float, help="With --checkpoint: error threshold in thresholding mode, 0..1 [0.1].")
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
@click.option("--server", "servers", multiple=True, metavar="URL",
              help="Send the work to 'bgm-deploy serve' servers (http://HOST:PORT or grpc://HOST:PORT; repeatable) "
                   "instead of loading a model.")
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True,
              help="With --server: requests in flight over all servers.")
@click.option("--shared-memory/--no-shared-memory", default=False, show_default=True,
              help="With --server on this machine: pass images through Triton's system shared memory.")
@click.option("--server-model", default="bgm", show_default=True, help="With --server: the served model's name.")
@click.option("--sequence/--no-sequence", default=False, show_default=True,
              help="Video: treat the --src folder as numbered frames of one clip (video and PNG-sequence outputs).")
@click.option("--format", "formats", default=None, metavar="[KIND=]FORMAT,...",
              help="Video: h264, ffv1, prores, vp9, h264-nvenc or png, for all outputs or per output "
                   "(pha=ffv1,rgba=prores) [h264; rgba: png].")
@click.option("--crf", type=click.IntRange(0, 51), default=18, show_default=True, help="Video: quality of lossy formats.")
@click.option("--preset", default=None, help="Video: x264 preset: ultrafast (default, least CPU), veryfast, ... "
              "medium (smaller files).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Video: frames per model call.")
@click.option("--backdrop", default=None, help="Video: what 'com' composites over: R,G,B, #rrggbb, an image or a "
              "video [120,255,155]. Video outputs: pha, fgr, com, rgba (alpha channel), err, ref.")
@click.option("--align-mode", type=click.Choice(["clip", "frame"]), default="clip", show_default=True,
              help="Video with --align: one homography for the clip, or one per frame (slower).")
@click.option("--audio/--no-audio", default=True, show_default=True, help="Video: carry the source's audio over.")
@click.option("--rate", type=float, default=None, help="Video: frames per second of an image sequence [30].")
@click.option("--src-format", default=None, help="Video: FFmpeg input format of a live device (v4l2, avfoundation, "
              "dshow, ...).")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Video: stop after this many frames.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="The model's metadata JSON (MODEL.bgm.json from export) when a tool stripped the file's own.")
@click.option("--runtime", type=click.Choice(["onnxruntime", "openvino"]), default=None,
              help="Run an ONNX --model with this runtime [onnxruntime]; openvino runs at f32.")
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
    servers: tuple[str, ...],
    concurrency: int,
    shared_memory: bool,
    server_model: str,
    config_file: str | None,
    runtime: str | None,
    **video: Any,
) -> None:
    """Matte photos or footage: SRC (with subject) and BGR (same scene without it) to alpha, foreground, ..."""
    # deferred: the API loads torch (see the module docstring)
    from .matte import MatteOptions, ProgressPrinter, model_config_for
    from .matte import matte as run_matte
    from .video import is_video_job

    settings = {"backbone": backbone, "backbone_scale": backbone_scale, "refine_mode": refine_mode,
                "refine_sample_pixels": refine_sample_pixels, "refine_threshold": refine_threshold}
    if is_video_job(src, bgr, video["sequence"], video["src_format"]):
        if servers:
            raise UsageError("--server applies to photo folders; a video job runs a local model (--model/--checkpoint)")
        _matte_video(state, src, bgr, output, model, checkpoint, model_config_for(model, checkpoint, settings), provider,
                     allow_fallback, outputs, align, overwrite, skip_existing, padding, report_path, video)
        return
    options = MatteOptions(
        outputs=tuple(name.strip() for name in outputs.split(",") if name.strip()),
        fgr_format=fgr_format,
        align=align,
        resize=_parse_size(resize, "--resize", multiple=1),
        workers=workers,
        overwrite=overwrite,
        skip_existing=skip_existing,
        padding=padding,
    )
    printer = ProgressPrinter(click.echo, quiet=state.quiet)
    report = run_matte(
        src, bgr, output, model=model, checkpoint=checkpoint, provider=provider, allow_fallback=allow_fallback,
        options=options, progress=printer, report_path=report_path, status=printer.status, model_settings=settings,
        servers=servers, server_options={"model_name": server_model, "concurrency": concurrency,
                                         "shared_memory": shared_memory},
        config_file=config_file, runtime=runtime,
    )
    for path in report.unmatched_backgrounds:
        state.echo(f"unused background: {path}", err=True)
    click.echo(report.summary())
    if not report.ok:
        raise click.exceptions.Exit(1)


@cli.command("serve")
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="Serve a PyTorch checkpoint instead.")
@click.option("--name", default="bgm", show_default=True, help="Model name in request URLs.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address the ports bind to (0.0.0.0 exposes the server to the network).")
@click.option("--http-port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: a free port.")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=8001, show_default=True, help="0: a free port.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=8002, show_default=True,
              help="Prometheus metrics (/metrics); 0: a free port.")
@click.option("--max-batch-size", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--dynamic-batching/--no-dynamic-batching", default=True, show_default=True,
              help="Merge concurrent requests of the same size into one batch.")
@click.option("--queue-delay-us", type=click.IntRange(min=0), default=2000, show_default=True,
              help="How long the batcher may hold a request to fill a batch.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="Model instances (one process each).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads per instance [runtime default].")
@click.option("--outputs", default="pha,fgr", show_default=True, help="Served outputs: pha, fgr, com.")
@click.option("--io-dtype", type=click.Choice(["uint8", "float32"]), default="uint8", show_default=True,
              help="Image type on the wire (uint8: 4x less to send than float32).")
@click.option("--max-pixels", type=click.IntRange(min=0), default=3840 * 2160, show_default=True,
              help="Refuse larger images (W*H); 0: no limit.")
@click.option("--pad/--no-pad", default=False, show_default=True,
              help="Pad sizes that are not a multiple of 4 instead of refusing them (the client pads anyway).")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None, help="Keep the tritonserver log here.")
@click.option("--repository", type=click.Path(file_okay=False), default=None,
              help="Serve this Triton model repository (export --format triton --triton-backend python) instead of MODEL.")
@click.pass_obj
@handle_errors
def serve_command(
    state: Context, model: str | None, checkpoint: str | None, name: str, host: str, http_port: int, grpc_port: int,
    metrics_port: int, max_batch_size: int, dynamic_batching: bool, queue_delay_us: int, instances: int,
    threads: int | None, outputs: str, io_dtype: str, max_pixels: int, pad: bool, log_path: str | None,
    repository: str | None,
) -> None:
    """Serve MODEL (or --checkpoint) on a Triton Inference Server until Ctrl-C/SIGTERM."""
    # deferred: the API loads torch (see the module docstring)
    from .serve import ServeConfig, serve
    from .triton_repo import TritonModelOptions

    options = TritonModelOptions(
        name=name, max_batch_size=max_batch_size, dynamic_batching=dynamic_batching, max_queue_delay_us=queue_delay_us,
        instances=instances, threads=threads, outputs=tuple(o.strip() for o in outputs.split(",") if o.strip()),
        io_dtype=io_dtype, max_pixels=max_pixels, pad=pad,
    )
    config = ServeConfig(model=model, checkpoint=checkpoint, options=options, host=host, http_port=http_port,
                         grpc_port=grpc_port, metrics_port=metrics_port, log_path=log_path, repository=repository)

    def ready(server: Any) -> None:
        click.echo(f"serving {repository or repr(name)}: {server.http_url} (HTTP), {server.grpc_url} (gRPC), {server.metrics_url}; "
                   "Ctrl-C stops", err=True)

    serve(config, progress=lambda message: state.echo(message, err=True), ready=ready)


def _matte_video(state: Context, src: str, bgr: str, output: str, model: str | None, checkpoint: str | None,
                 model_config: Any, provider: str, allow_fallback: bool, outputs: str, align: bool, overwrite: bool,
                 skip_existing: bool, padding: str, report_path: str | None, video: dict[str, Any]) -> None:
    """The video branch of ``matte``: options → VideoOptions → one ``matte_video`` call."""
    # deferred: the API loads torch (see the module docstring)
    from .video import DEFAULT_BACKDROP, DEFAULT_PRESET, VideoOptions, VideoProgressPrinter, matte_video, parse_formats

    kinds = tuple(name.strip() for name in outputs.split(",") if name.strip())
    options = VideoOptions(
        outputs=kinds, formats=parse_formats(video["formats"], kinds),
        crf=video["crf"], preset=video["preset"] or DEFAULT_PRESET, batch=video["batch"],
        backdrop=video["backdrop"] or DEFAULT_BACKDROP,
        align=video["align_mode"] if align else "off", audio=video["audio"], rate=video["rate"],
        src_format=video["src_format"], max_frames=video["max_frames"], overwrite=overwrite,
        skip_existing=skip_existing, padding=padding,
    )
    printer = VideoProgressPrinter(click.echo, quiet=state.quiet)
    try:
        report = matte_video(src, bgr, output, model=model, checkpoint=checkpoint, model_config=model_config,
                             provider=provider, allow_fallback=allow_fallback, options=options, progress=printer,
                             report_path=report_path)
    finally:
        printer.close()
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(report.summary())


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
    # deferred: the API loads torch (see the module docstring)
    from .check import check as run_check

    state: Context = ctx.obj
    report = run_check(model, target=target, min_tensorrt=min_tensorrt, json_path=json_path)
    for finding in report.findings:
        if finding.severity != "info" or state.verbose:
            state.echo(finding.describe())
    click.echo(report.summary())
    if not report.ok:
        raise click.exceptions.Exit(1)


@cli.command("export")
@click.option("--format", "fmt", required=True,
              type=click.Choice(["onnx", "torchscript", "tensorrt", "triton", *(r.format for r in recipes())]),
              help="Output format (tensorrt: an engine; needs TensorRT and a GPU; triton: a model repository folder; "
                   + "; ".join(f"{r.format}: {r.summary}" for r in recipes()) + ").")
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Output file (written atomically); --format triton: the model repository folder.")
@click.option("--overwrite/--no-overwrite", default=False, show_default=True,
              help="Replace an existing output (by default an existing file is never replaced).")
@click.option("--model-type", type=click.Choice(["refine", "base"]), default="refine", show_default=True)
@click.option("--backbone", type=click.Choice(["mobilenetv2", "resnet50", "resnet101"]), default="mobilenetv2",
              show_default=True)
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="Weights (default: synthetic).")
@click.option("--seed", type=int, default=0, show_default=True, help="Synthetic-weights seed (without --checkpoint).")
@click.option("--backbone-scale", default="auto", show_default=True,
              help="auto (from --resolution: 0.25 up to HD, 0.125 above) or a float in [0.01, 0.5].")
@click.option("--refine-mode", type=click.Choice(["sampling", "thresholding", "full"]), default="sampling",
              show_default=True)
@click.option("--refine-sample-pixels", type=click.IntRange(min=16), default=None,
              help="Pixels refined per image [auto: 80000 HD, 320000 4K].")
@click.option("--refine-threshold", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--refine-kernel-size", type=click.Choice(["1", "3"]), default="3", show_default=True)
@click.option("--prevent-oversampling/--no-prevent-oversampling", default=True, show_default=True,
              help="Sampling mode: skip cells with zero error.")
@click.option("--crop-method", type=click.Choice(["roi_align", "gather", "unfold"]), default=None,
              help="Patch crop [onnx: roi_align, torchscript: unfold].")
@click.option("--replace-method", type=click.Choice(["scatter_element", "scatter_nd"]), default=None,
              help="Patch replace [onnx: scatter_element, torchscript: scatter_nd].")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--opset", type=click.IntRange(min=7), default=None, help="ONNX opset [legacy 17, dynamo 18].")
@click.option("--exporter", type=click.Choice(["legacy", "dynamo"]), default=None,
              help="ONNX exporter: dynamo (torch.export-based) or legacy (TorchScript-based) [see docs/export.md].")
@click.option("--simplify/--no-simplify", default=True, show_default=True, help="Run onnxsim (ONNX).")
@click.option("--outputs", default=None, help="Comma-separated outputs to keep, e.g. pha,fgr [all].")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Trace batch size (ONNX).")
@click.option("--resolution", default=None, metavar="WxH",
              help="Target resolution: picks --backbone-scale auto and is the trace size [auto: 1920x1080; trace 320x256].")
@click.option("--target", type=click.Choice(["generic", "tensorrt"]), default="generic", show_default=True,
              help="ONNX: tensorrt applies the TensorRT-safe rewrites.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Also write the report as JSON.")
@click.option("--from-onnx", type=click.Path(dir_okay=False), default=None,
              help="--format tensorrt: build the engine from this bgm-deploy ONNX file instead of exporting one.")
@click.option("--engine-preset", type=click.Choice(["hd", "4k"]), default=None,
              help="--format tensorrt: optimisation profile preset [from the backbone scale].")
@click.option("--workspace-mib", type=click.IntRange(min=16), default=4096, show_default=True,
              help="--format tensorrt: builder workspace limit.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="--format tensorrt: timing cache file (read and updated).")
@click.option("--verify/--no-verify", "run_verify", default=False, show_default=True,
              help="Run 'bgm-deploy verify' (default cases, CPU) on the exported file; exit 1 if it fails.")
@click.option("--triton-backend", type=click.Choice(["onnxruntime", "python"]), default="onnxruntime", show_default=True,
              help="--format triton: Triton's onnxruntime backend, or the Python backend running bgm-deploy's predictor.")
@click.option("--triton-name", default="bgm", show_default=True, help="--format triton: model name (its folder).")
@click.option("--max-batch-size", type=click.IntRange(1, 64), default=4, show_default=True, help="--format triton.")
@click.option("--queue-delay-us", type=click.IntRange(min=0), default=2000, show_default=True,
              help="--format triton: dynamic batching queue delay.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="--format triton.")
@click.option("--triton-device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="--format triton: instance kind.")
@click.option("--trt-accelerator/--no-trt-accelerator", default=False, show_default=True,
              help="--format triton (onnxruntime, gpu): onnxruntime's TensorRT accelerator on the TensorRT-safe graph.")
@click.option("--trt-fp16/--no-trt-fp16", default=True, show_default=True, help="With --trt-accelerator: FP16 engines.")
@click.pass_obj
@handle_errors
def export_command(
    state: Context, fmt: str, output: str, overwrite: bool, model_type: str, backbone: str, checkpoint: str | None, seed: int,
    backbone_scale: str, refine_mode: str, refine_sample_pixels: int | None, refine_threshold: float,
    refine_kernel_size: str, prevent_oversampling: bool, crop_method: str | None, replace_method: str | None,
    precision: str, opset: int | None, exporter: str | None, simplify: bool, outputs: str | None, batch: int,
    resolution: str | None, target: str, json_path: str | None, from_onnx: str | None, engine_preset: str | None,
    workspace_mib: int, timing_cache: str | None, run_verify: bool, triton_backend: str, triton_name: str,
    max_batch_size: int, queue_delay_us: int, instances: int, triton_device: str, trt_accelerator: bool, trt_fp16: bool,
) -> None:
    """Export a model to ONNX, TorchScript, a TensorRT engine or a Triton model repository."""
    # deferred: the API loads torch
    from exporters.tensorrt import EngineConfig

    from .export import export as run_export
    from .export import export_engine
    from .triton_repo import TritonModelOptions, export_triton, triton_export_outputs
    from .verify import format_table

    size = _parse_size(resolution, "--resolution")
    scale: float | None = None  # auto: bgm_deploy.export resolves it from --resolution
    if backbone_scale != "auto":
        try:
            scale = float(backbone_scale)
        except ValueError:
            raise UsageError(f"--backbone-scale {backbone_scale!r} is not valid; use auto or a float in [0.01, 0.5]") from None
    names = tuple(name.strip() for name in outputs.split(",") if name.strip()) if outputs else None
    # An engine is built from a TensorRT-safe ONNX export; a Triton repository holds an ONNX file.
    onnx_format = fmt in ("onnx", "tensorrt", "triton")
    model_config = ModelConfig(
        model_type=model_type,
        backbone=backbone,
        backbone_scale=scale,
        refine_mode=refine_mode,
        refine_sample_pixels=refine_sample_pixels,
        refine_threshold=refine_threshold,
        refine_kernel_size=int(refine_kernel_size),
        refine_prevent_oversampling=prevent_oversampling,
        refine_patch_crop_method=crop_method,
        refine_patch_replace_method=replace_method,
        seed=seed,
    )
    onnx_config = OnnxConfig(
        opset=opset, exporter=exporter or DEFAULT_EXPORTER, precision=precision, simplify=simplify, outputs=names,
        trace_batch=batch, target=target,
    ) if onnx_format else None
    script_config = TorchScriptConfig(precision=precision, outputs=names) if not onnx_format else None
    progress = lambda message: state.echo(message, err=True)  # noqa: E731
    if fmt == "triton":
        served, exported = triton_export_outputs(triton_backend, names)
        triton_options = TritonModelOptions(
            name=triton_name, max_batch_size=max_batch_size, max_queue_delay_us=queue_delay_us, instances=instances,
            kind=triton_device, outputs=served, tensorrt=trt_accelerator, tensorrt_fp16=trt_fp16,
        )
        repo = export_triton(model_config, output, triton_options, flavour=triton_backend,
                             onnx=dataclasses.replace(onnx_config, outputs=exported), checkpoint=checkpoint,
                             overwrite=overwrite, progress=progress, json_path=json_path)
        click.echo(f"{repo.model_dir}: {', '.join(repo.files)} ({repo.verified})")
        return
    if fmt == "tensorrt":
        engine = EngineConfig(precision=precision, preset=engine_preset, workspace_mib=workspace_mib,
                              timing_cache=timing_cache)
        info = export_engine(output, engine, model_config, onnx_config, checkpoint=checkpoint, from_onnx=from_onnx,
                             progress=progress, resolution=size, overwrite=overwrite)
        click.echo(f"{info.engine_path} (sidecar {info.sidecar_path})")
        return
    if from_onnx is not None:
        raise UsageError("--from-onnx only applies with --format tensorrt")
    report = run_export(model_config, output, fmt, onnx=onnx_config, torchscript=script_config, checkpoint=checkpoint,
                        progress=progress, resolution=size, verify_after=run_verify, json_path=json_path,
                        overwrite=overwrite)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{report.path} ({report.size_bytes / 1e6:.1f} MB, {sum(report.seconds.values()):.1f} s)")
    if report.preflight is not None:
        click.echo(report.preflight.summary())
    if report.verification is not None:
        click.echo(format_table(report.verification))
    if not report.ok:
        raise click.exceptions.Exit(1)


@cli.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="The model's metadata JSON (MODEL.bgm.json from export) when a tool stripped the file's own.")
@handle_errors
def inspect_command(model: str, as_json: bool, config_file: str | None) -> None:
    """Print an exported MODEL's metadata, inputs/outputs, op histogram and size."""
    # deferred: the API loads torch (see the module docstring)
    from .inspect import inspect_model

    info = inspect_model(model, config_file)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    meta = info["metadata"]
    click.echo(f"{info['path']}: {info['format']}, {info['size_bytes'] / 1e6:.1f} MB, {info['node_count']} nodes")
    click.echo("model config:")
    for key, value in sorted(meta["model_config"].items()):
        click.echo(f"  {key:<28} {value}")
    click.echo("export:")
    for key, value in sorted(meta["export"].items()):
        click.echo(f"  {key:<28} {value}")
    for kind in ("inputs", "outputs"):
        click.echo(f"{kind}:")
        for row in info[kind]:
            shape = "x".join(map(str, row["shape"])) if row["shape"] else "?"
            click.echo(f"  {row['name']:<8} {row['dtype']:<8} {shape}")
    for key, value in info.get("settable_attributes", {}).items():
        click.echo(f"  settable {key} = {value}")
    click.echo("ops: " + ", ".join(f"{op} {count}" for op, count in info["ops"].items()))


def _parse_tolerance(value: str | None, option: str) -> tuple[float | None, dict[str, float]]:
    """``1e-4`` (every output) or ``pha=1e-4,fgr=2e-4`` (per output)."""
    if value is None:
        return None, {}
    try:
        if "=" not in value:
            default, per_output = float(value), {}
        else:
            pairs = (item.split("=", 1) for item in value.split(",") if item.strip())
            default, per_output = None, {name.strip(): float(number) for name, number in pairs}
    except ValueError:
        raise UsageError(f"{option} {value!r} is not valid; use a number (1e-4) or name=number pairs (pha=1e-4,fgr=2e-4)") from None
    if any(not number >= 0 for number in [*per_output.values(), *([default] if default is not None else [])]):
        raise UsageError(f"{option} {value!r} is not valid; tolerances must be >= 0")
    return default, per_output


@cli.command("verify")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="The checkpoint the model was exported from (its sha256 must match the recorded one).")
@target_options
@click.option("--resolution", "resolutions", multiple=True, metavar="WxH",
              help="Random-input resolution (repeatable) [320x256 256x192 640x480].")
@click.option("--batch", type=click.IntRange(min=1), default=2, show_default=True,
              help="Batch size of the extra random case.")
@click.option("--pairs", "pairs_dir", type=click.Path(file_okay=False), default=None,
              help="Folder of <name>/src.jpg+bgr.jpg pairs [the bundled sample pairs].")
@click.option("--inputs", default="random,pairs", show_default=True, help="Input kinds: random and/or pairs.")
@click.option("--atol", default=None, help="Max abs tolerance: 1e-4, or per output pha=1e-4,fgr=2e-4 [fp32 1e-4, fp16 2e-2].")
@click.option("--rtol", default=None, help="Relative tolerance, same forms as --atol [0].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the JSON report here.")
@click.option("--save-diff", type=click.Path(file_okay=False), default=None,
              help="Write |Δpha| / |Δfgr| PNG heatmaps of failing cases here.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="The model's metadata JSON (MODEL.bgm.json from export) when a tool stripped the file's own.")
@click.pass_obj
@handle_errors
def verify_command(
    state: Context, model: str, checkpoint: str | None, resolutions: tuple[str, ...], batch: int,
    pairs_dir: str | None, inputs: str, atol: str | None, rtol: str | None, seed: int, json_path: str | None,
    save_diff: str | None, config_file: str | None, **where: Any,
) -> None:
    """Check an exported model against its PyTorch reference (exit 0 pass, 1 parity failure, 2 usage)."""
    # deferred: the API loads torch (see the module docstring)
    from .verify import DEFAULT_RESOLUTIONS, VerifyConfig, format_table, verify

    target, options, settings = target_from_options(where)
    sizes = tuple(_parse_size(text, "--resolution") for item in resolutions for text in item.split(",") if text)
    default_atol, atol_map = _parse_tolerance(atol, "--atol")
    default_rtol, rtol_map = _parse_tolerance(rtol, "--rtol")
    config = VerifyConfig(
        target=target, options=options, resolutions=sizes or DEFAULT_RESOLUTIONS, batch=batch,  # type: ignore[arg-type]
        inputs=tuple(kind.strip() for kind in inputs.split(",") if kind.strip()), pairs_dir=pairs_dir,
        atol=atol_map, rtol=rtol_map, default_atol=default_atol, default_rtol=default_rtol, checkpoint=checkpoint,
        save_diff=save_diff, seed=seed, allow_fallback=settings["allow_fallback"], threads=settings["threads"],
        json_path=json_path, config_file=config_file,
    )
    report = verify(model, config, progress=lambda message: state.echo(message, err=True))
    click.echo(format_table(report))
    if not report.passed:
        raise click.exceptions.Exit(1)


def main() -> None:
    """Console entry point: Ctrl-C anywhere (imports, model load, a command) is one line, exit 130."""
    try:
        code = cli.main(prog_name="bgm-deploy", standalone_mode=False)
    except KeyboardInterrupt:
        code = _interrupted()
    except click.Abort as exc:  # click turns a Ctrl-C outside a command into Abort
        code = _interrupted() if isinstance(exc.__context__, KeyboardInterrupt) else 1
        if code == 1:
            click.echo("Aborted!", err=True)
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    sys.exit(code if isinstance(code, int) else 0)


def _interrupted() -> int:
    click.echo("Interrupted.", err=True)
    return 130


if __name__ == "__main__":
    main()
