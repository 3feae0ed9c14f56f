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
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import click

from exporters.config import DEFAULT_TRACE_RESOLUTION, TorchScriptConfig
from exporters.recipes import ORIGINAL_RECIPE as ORIGINAL_BACKEND
from exporters.registered import RecipeConfig, get_recipe, recipes
from model.config import parse_size
from model.errors import BgmDeployError, UsageError
from runtimes.targets import targets

from . import __version__
from .cli_options import (
    engine_options,
    kubernetes_from_options,
    model_config_from_options,
    model_options,
    onnx_config_from_options,
    onnx_export_options,
    spec_from_options,
    target_from_options,
    target_options,
    triton_options,
    weights_options,
)

log = logging.getLogger("bgm_deploy")


def bench_row_names() -> list[str]:
    """Bench rows for ``--help``, read from the target registry (bench.backends imports torch)."""
    return [target.bench for target in targets() if target.bench is not None]


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
        except Terminated:
            click.echo("Terminated.", err=True)
            ctx.exit(143)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)

    return wrapper


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the job stops cleanly (finished outputs kept, no partial
    file: every writer cleans up on KeyboardInterrupt) and the command exits 143."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


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
    """Print versions, the device, and every target with whether it is usable here (and why not)."""
    # deferred: the API loads torch (see the module docstring)
    from .environment import environment_info, target_table

    data = {**environment_info(), "targets": target_table()}
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"bgm-deploy {__version__}")
    for key, value in data.items():
        if key == "targets":
            continue
        if isinstance(value, list):
            value = ", ".join(value) or "none"
        click.echo(f"  {key:<34} {('none' if key == 'gpu' else 'not installed') if value is None else value}")
    click.echo("targets (--target):")
    for row in data["targets"]:
        state = "usable" if row["usable"] else f"not usable: {row['why_not']}"
        click.echo(f"  {row['name']:<22} {','.join(row['formats']):<12} {state}")


@cli.command()
@click.argument("models", nargs=-1, type=click.Path(dir_okay=False), metavar="[MODEL ...]")
@click.option("--backend", "backends", multiple=True, help="Comma-separated bench rows (a target with the file its recipe "
              "makes): " + ", ".join(bench_row_names()) + f" ({ORIGINAL_BACKEND}: the original project's ONNX recipe, "
              "the baseline of 'vs original'); a target name picks its row. Default: every row usable here (others "
              "reported as skipped).")
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
@click.option("--quality/--no-quality", default=True, show_default=True,
              help="Score each row's alpha against the bundled pairs' ground truth (MSE, SAD): what a runtime or "
                   "precision costs in matte quality (meaningful with real weights).")
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
          quality: bool,
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
        quality=quality,
        workdir=Path(workdir) if workdir else None,
        json_path=Path(json_path) if json_path else None,
        markdown_path=Path(markdown_path) if markdown_path else None,
        plot_path=Path(plot_path) if plot_path else None,
    )
    report = run_bench(config, progress=lambda message: state.echo(message, err=True))
    click.echo(render_table(report))



def _parse_size(value: str | None, option: str, multiple: int = 4) -> tuple[int, int] | None:
    return None if value is None else parse_size(value, option, multiple)


@cli.command()
@click.option("--src", required=True, type=click.Path(),
              help="Source image or directory (recursive); or a video file, a folder of numbered frames (with "
                   "--sequence), a URL or a device (with --src-format): see docs/video.md.")
@click.option("--bgr", required=True, type=click.Path(exists=True),
              help="Background image (for all sources) or directory matched by relative path; for footage a still "
                   "plate or a background video.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Output folder: photos OUT/<kind>/<path>; footage OUT/<kind>.<ext> or OUT/<kind>/ frames.")
@model_options
@target_options
@click.option("--outputs", default="pha,fgr", show_default=True,
              help="Comma-separated: pha, fgr, com (over --backdrop), rgba (alpha channel), err, ref.")
@click.option("--format", "formats", default=None, metavar="[KIND=]FORMAT,...",
              help="Per output or for all: photos png or jpg [png]; footage h264, ffv1, prores, vp9, h264-nvenc or "
                   "png (a PNG sequence) [h264; rgba: png].")
@click.option("--fgr-format", type=click.Choice(["png", "jpg"]), default=None, hidden=True,
              help="Alias of --format fgr=png|jpg.")
@click.option("--backdrop", default=None,
              help="What 'com' composites over: R,G,B, #rrggbb, an image, or (footage) a video [120,255,155].")
@click.option("--align/--no-align", default=False, show_default=True,
              help='Align backgrounds to sources (ORB + RANSAC homography; pip install "bgm-deploy[align]").')
@click.option("--align-mode", type=click.Choice(["clip", "frame"]), default=None,
              help="Footage with --align: one homography for the clip, or one per frame (slower) [clip].")
@click.option("--resize", metavar="WxH", help="Resize source and background of every pair or frame to WxH.")
@click.option("--padding", type=click.Choice(["replicate", "reflect"]), default="replicate", show_default=True,
              help="Padding to the model's multiple of 4 (cropped off again).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Frames (or same-size photos) per model call.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Photos: decode and encode threads; footage: decoder threads.")
@click.option("--overwrite/--no-overwrite", default=False, show_default=True, help="Replace existing outputs.")
@click.option("--skip-existing/--no-skip-existing", default=False, show_default=True,
              help="Keep finished outputs and do the rest (resume an interrupted run).")
@click.option("--allow-partial/--no-allow-partial", default=False, show_default=True,
              help="Exit 0 although photos failed or frames could not be decoded (counted in the report).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Also write the JSON report here.")
@click.option("--server", "servers", multiple=True, metavar="URL",
              help="Send the work to 'bgm-deploy serve' servers (http://HOST:PORT or grpc://HOST:PORT; repeatable) "
                   "instead of loading a model.")
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="With --server: requests in flight [4].")
@click.option("--shared-memory/--no-shared-memory", default=None,
              help="With --server: pass images through Triton's system shared memory [on when every server is on "
                   "this machine].")
@click.option("--server-model", default=None, help="With --server: the served model's name [bgm].")
@click.option("--sequence/--no-sequence", default=False, show_default=True,
              help="Treat the --src folder as numbered frames of one clip (footage).")
@click.option("--crf", type=click.IntRange(0, 51), default=None, help="Footage: quality of lossy formats [18].")
@click.option("--preset", default=None, help="Footage: x264 preset: ultrafast (default, least CPU), veryfast, ... "
              "medium (smaller files).")
@click.option("--audio/--no-audio", default=None, help="Footage: carry the source's audio over [on].")
@click.option("--rate", type=float, default=None, help="Image sequences: frames per second [30].")
@click.option("--src-format", default=None, help="Live devices: FFmpeg input format (v4l2, avfoundation, dshow, ...).")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Footage: stop after this many frames.")
@click.option("--ray", "ray_address", default=None, metavar="local|auto|ADDRESS",
              help='Run on a Ray cluster: local starts one here; auto/HOST:PORT join a running one (outputs on shared '
                   'storage; pip install "bgm-deploy[ray]"; docs/scale.md).')
@click.option("--ray-workers", type=click.IntRange(min=1), default=None,
              help="With --ray: workers (one model each) [one per CPU, or per GPU for a GPU target].")
@click.pass_obj
@handle_errors
def matte(state: Context, src: str, bgr: str, output: str, outputs: str, formats: str | None, fgr_format: str | None,
          backdrop: str | None, align: bool, align_mode: str | None, resize: str | None, padding: str, batch: int,
          workers: int, overwrite: bool, skip_existing: bool, allow_partial: bool, report_path: str | None,
          servers: tuple[str, ...], concurrency: int | None, shared_memory: bool | None, server_model: str | None,
          sequence: bool, crf: int | None, preset: str | None, audio: bool | None, rate: float | None,
          src_format: str | None, max_frames: int | None, ray_address: str | None, ray_workers: int | None,
          **model: Any) -> None:
    """Matte photos or footage: SRC (with subject) and BGR (same scene without it) to alpha, foreground, ..."""
    # deferred: the API loads torch (see the module docstring)
    from .matte import ClusterOptions, MatteOptions, ServerOptions, parse_formats
    from .matte import matte as run_matte
    from .matte.footage import is_video_job
    from .progress import JobProgress

    if servers:
        given = sorted(name for name, value in model.items() if value not in (None, False))
        if given:
            flags = ", ".join("--" + name.replace("_file", "").replace("_", "-") for name in given)
            raise UsageError(f"--server sends the work to running servers, which run their own model on their own "
                             f"target; drop {flags}")
    spec = spec_from_options(model, padding=padding)
    kinds = tuple(name.strip() for name in outputs.split(",") if name.strip())
    chosen = parse_formats(formats, kinds)
    if fgr_format is not None:
        if "fgr" in chosen and chosen["fgr"] != fgr_format:
            raise UsageError(f"--fgr-format {fgr_format} and --format fgr={chosen['fgr']} disagree; pass --format only")
        chosen["fgr"] = fgr_format
    server_settings = {"--concurrency": concurrency, "--shared-memory": shared_memory, "--server-model": server_model}
    server_options = None
    if servers:
        server_options = ServerOptions(tuple(servers), server_model or "bgm", concurrency or 4, shared_memory,
                                       padding)
    else:
        stray = [flag for flag, value in server_settings.items() if value is not None]
        if stray:
            raise UsageError(f"{', '.join(stray)} apply with --server URL only; add --server or drop them")
    options = MatteOptions(
        outputs=kinds, formats=chosen, align=align, align_mode=align_mode,
        resize=_parse_size(resize, "--resize", multiple=1), batch=batch, workers=workers, overwrite=overwrite,
        skip_existing=skip_existing, allow_partial=allow_partial, backdrop=backdrop, crf=crf,
        preset=preset, audio=audio, rate=rate, src_format=src_format, max_frames=max_frames,
    )
    if ray_workers is not None and ray_address is None:
        raise UsageError("--ray-workers applies with --ray only; add --ray local|auto|ADDRESS or drop it")
    cluster = ClusterOptions(ray_address, workers=ray_workers) if ray_address is not None else None
    printer = JobProgress("frames" if is_video_job(src, bgr, sequence, src_format) else "img", quiet=state.quiet)
    try:
        report = run_matte(src, bgr, output, None if servers else spec, options, servers=server_options,
                           report_path=report_path, progress=printer, status=printer.status, sequence=sequence,
                           cluster=cluster)
    finally:
        printer.close()
    for path in report.unmatched_backgrounds:
        state.echo(f"unused background: {path}", err=True)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(report.summary())
    if not report.ok:
        raise click.exceptions.Exit(1)


@cli.command("serve")
@click.argument("model_file", required=False, type=click.Path(dir_okay=False), metavar="[MODEL]")
@model_options
@target_options
@click.option("--name", default="bgm", show_default=True, help="Model name in request URLs.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address the ports bind to (0.0.0.0 exposes the server to the network).")
@click.option("--http-port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: a free port.")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=8001, show_default=True, help="0: a free port.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=8002, show_default=True,
              help="Prometheus metrics (/metrics); 0: a free port.")
@click.option("--max-batch-size", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--dynamic-batching/--no-dynamic-batching", default=None,
              help="Merge concurrent requests of the same size into one batch [off on a CPU target, on on a GPU].")
@click.option("--queue-delay-us", type=click.IntRange(min=0), default=2000, show_default=True,
              help="How long the batcher may hold a request to fill a batch.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="Model instances (one process each).")
@click.option("--outputs", default="pha,fgr", show_default=True, help="Served outputs: pha, fgr, rgba (foreground with alpha as RGBA uint8).")
@click.option("--io-dtype", type=click.Choice(["uint8", "float32"]), default="uint8", show_default=True,
              help="Image type on the wire (uint8: 4x less to send than float32).")
@click.option("--max-pixels", type=click.IntRange(min=0), default=3840 * 2160, show_default=True,
              help="Refuse larger images (W*H); 0: no limit.")
@click.option("--pad/--no-pad", default=False, show_default=True,
              help="Pad sizes that are not a multiple of 4 instead of refusing them (the client pads anyway).")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None,
              help="Keep the tritonserver log here (appended).")
@click.option("--repository", type=click.Path(file_okay=False), default=None,
              help="Serve this Triton model repository (export --format triton --triton-backend python) instead of MODEL.")
@click.option("--max-restarts", type=click.IntRange(min=0), default=3, show_default=True,
              help="Restart a server that died on its own at most this often within 5 minutes, then exit 1.")
@click.pass_obj
@handle_errors
def serve_command(
    state: Context, model_file: str | None, name: str, host: str, http_port: int, grpc_port: int, metrics_port: int,
    max_batch_size: int, dynamic_batching: bool | None, queue_delay_us: int, instances: int, outputs: str, io_dtype: str,
    max_pixels: int, pad: bool, log_path: str | None, repository: str | None, max_restarts: int, **model: Any,
) -> None:
    """Serve MODEL (or --checkpoint) on a Triton Inference Server until Ctrl-C/SIGTERM."""
    # deferred: the API loads torch (see the module docstring)
    from .serve.repository import TritonModelOptions
    from .serve.server import ServeConfig, default_dynamic_batching, serve

    if model_file is not None:
        if model.get("model") is not None:
            raise UsageError(f"pass the model once: MODEL {model_file} or --model {model['model']}")
        model["model"] = model_file
    spec = spec_from_options(model, padding="replicate")
    if repository is not None and not spec.is_empty:
        raise UsageError("pass either --repository or a model (MODEL/--checkpoint/--seed), not both")
    chosen = None
    if dynamic_batching is None and not spec.is_empty:
        dynamic_batching, chosen = default_dynamic_batching(spec)
    options = TritonModelOptions(
        name=name, max_batch_size=max_batch_size, dynamic_batching=bool(dynamic_batching),
        max_queue_delay_us=queue_delay_us,
        instances=instances, outputs=tuple(o.strip() for o in outputs.split(",") if o.strip()),
        io_dtype=io_dtype, max_pixels=max_pixels, pad=pad,
    )
    config = ServeConfig(spec=None if spec.is_empty else spec, options=options, host=host, http_port=http_port,
                         grpc_port=grpc_port, metrics_port=metrics_port, log_path=log_path, repository=repository,
                         max_restarts=max_restarts)

    def ready(server: Any) -> None:
        if chosen is not None:  # said once the server runs: a failed start stays one line
            state.echo(f"dynamic batching {chosen}", err=True)
        click.echo(f"serving {repository or repr(name)}: {server.http_url} (HTTP), {server.grpc_url} (gRPC), {server.metrics_url}; "
                   "Ctrl-C stops", err=True)

    serve(config, progress=lambda message: state.echo(message, err=True), ready=ready)


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
              type=click.Choice(["onnx", "torchscript", "tensorrt", "triton", "web", *(r.format for r in recipes())]),
              help="Output format (tensorrt: an engine; needs TensorRT and a GPU; triton: a model repository folder; "
                   "web: a static site that mattes a camera in the browser, docs/web.md; "
                   + "; ".join(f"{r.format}: {r.summary}" for r in recipes()) + ").")
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Output file (written atomically); --format triton: the model repository folder.")
@click.option("--overwrite/--no-overwrite", default=False, show_default=True,
              help="Replace an existing output (by default an existing file is never replaced).")
@weights_options
@onnx_export_options
@click.option("--resolution", default=None, metavar="WxH",
              help="Target resolution: picks --backbone-scale auto and is the trace size [auto: 1920x1080; trace 320x256].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Also write the report as JSON.")
@click.option("--verify/--no-verify", "run_verify", default=False, show_default=True,
              help="Run 'bgm-deploy verify' (default cases, CPU) on the exported file; exit 1 if it fails.")
@engine_options
@triton_options
@click.option("--ort-dist", type=click.Path(file_okay=False), default=None,
              help="--format web: onnxruntime-web's dist folder (node_modules/onnxruntime-web/dist) [the pinned release, "
                   "downloaded once from the npm registry and checked]")
@click.pass_obj
@handle_errors
def export_command(state: Context, fmt: str, output: str, overwrite: bool, resolution: str | None, json_path: str | None,
                   run_verify: bool, **groups: Any) -> None:
    """Export a model to ONNX, TorchScript, a TensorRT engine, a Triton model repository, or a registered format."""
    # deferred: the API loads torch
    from exporters.tensorrt import EngineConfig

    from .export import export as run_export
    from .export import export_engine
    from .serve.repository import TritonModelOptions, export_triton, triton_export_outputs
    from .verify import format_table

    size = _parse_size(resolution, "--resolution")
    model_config, checkpoint = model_config_from_options(groups)
    onnx_config, names = onnx_config_from_options(groups)
    precision, onnx_batch = onnx_config.precision, onnx_config.trace_batch
    if fmt != "web" and groups["ort_dist"] is not None:
        raise UsageError("--ort-dist only applies with --format web")
    if fmt != "triton" and (groups["k8s_dir"] is not None or groups["model_uri"] is not None):
        raise UsageError("--k8s and --model-uri apply with --format triton only (manifests that run its repository)")
    engine_only = [flag for flag, key in (("--from-onnx", "from_onnx"), ("--engine-preset", "engine_preset"),
                                          ("--timing-cache", "timing_cache")) if groups[key] is not None]
    if fmt != "tensorrt" and engine_only:
        one = len(engine_only) == 1
        raise UsageError(f"{', '.join(engine_only)} appl{'ies' if one else 'y'} with --format tensorrt only (the "
                         f"engine build); drop {'it' if one else 'them'}")
    if fmt == "web":  # a static site around the web-ready model: bgm_deploy/web, docs/web.md
        from .web.site import export_web

        if run_verify:
            raise UsageError("--verify does not apply to --format web: the export re-checks the web model itself; "
                             "run bgm-deploy verify on an --format onnx export of the same model")
        site = export_web(model_config, output, onnx=onnx_config, checkpoint=checkpoint, resolution=size,
                          ort_dist=groups["ort_dist"], overwrite=overwrite, json_path=json_path,
                          progress=lambda message: state.echo(message, err=True))
        click.echo(f"{site.path}: {len(site.files)} files, {site.size_bytes / 1e6:.0f} MB; serve it with: "
                   f"bgm-deploy web {site.path}")
        return
    if fmt not in ("onnx", "tensorrt", "triton"):
        onnx_config = None  # the other formats take precision/outputs only
    script_config = TorchScriptConfig(precision=precision, outputs=names) if fmt == "torchscript" else None
    progress = lambda message: state.echo(message, err=True)  # noqa: E731
    if fmt == "triton":
        if run_verify:
            raise UsageError("--verify does not apply to --format triton: the ONNX export inside it is re-checked "
                             "against PyTorch; run bgm-deploy verify on an --format onnx export of the same model")
        served, exported = triton_export_outputs(groups["triton_backend"], names)
        triton_options = TritonModelOptions(
            name=groups["triton_name"], max_batch_size=groups["max_batch_size"],
            max_queue_delay_us=groups["queue_delay_us"], instances=groups["instances"], kind=groups["triton_device"],
            outputs=served, tensorrt=groups["trt_accelerator"], tensorrt_fp16=groups["trt_fp16"],
        )
        kubernetes, manifests_dir = kubernetes_from_options(groups, groups["triton_name"])
        repo = export_triton(model_config, output, triton_options, flavour=groups["triton_backend"],
                             onnx=dataclasses.replace(onnx_config, outputs=exported), checkpoint=checkpoint,
                             overwrite=overwrite, progress=progress, json_path=json_path, kubernetes=kubernetes,
                             manifests_dir=manifests_dir)
        click.echo(f"{repo.model_dir}: {', '.join(repo.files)} ({repo.verified})")
        if repo.manifests:
            click.echo(f"kubernetes: {', '.join(repo.manifests)} (validated offline, unverified on a cluster)")
        return
    if fmt == "tensorrt":
        if run_verify or json_path is not None:
            raise UsageError("--verify and --json do not apply to --format tensorrt (the engine build writes no "
                             "report); check the engine on the GPU with: bgm-deploy verify ENGINE")
        engine = EngineConfig(precision=precision, preset=groups["engine_preset"], workspace_mib=groups["workspace_mib"],
                              timing_cache=groups["timing_cache"])
        info = export_engine(output, engine, model_config, onnx_config, checkpoint=checkpoint,
                             from_onnx=groups["from_onnx"], progress=progress, resolution=size, overwrite=overwrite)
        click.echo(f"{info.engine_path} (sidecar {info.sidecar_path})")
        return
    recipe_config = None
    if get_recipe(fmt) is not None:  # a registered format: its settings from the same options
        recipe_config = RecipeConfig(resolution=size or DEFAULT_TRACE_RESOLUTION, batch=onnx_batch, precision=precision,
                                     outputs=names)
    report = run_export(model_config, output, fmt, onnx=onnx_config, torchscript=script_config, checkpoint=checkpoint,
                        progress=progress, resolution=size, verify_after=run_verify, json_path=json_path,
                        overwrite=overwrite, recipe_config=recipe_config)
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
    if save_diff is not None and not any(case.verdict == "fail" for case in report.cases):
        click.echo(f"--save-diff: no case failed, so no heatmap was written to {save_diff}", err=True)
    if not report.passed:
        raise click.exceptions.Exit(1)


@cli.command("evaluate")
@model_options
@target_options
@click.option("--pairs", "pairs_dir", type=click.Path(file_okay=False), default=None,
              help="Folder of <name>/src, bgr, alpha triples [the bundled real pairs].")
@click.option("--src", type=click.Path(), default=None,
              help="Photos (a file or folder) or footage (a clip); with --bgr and --alpha instead of --pairs.")
@click.option("--bgr", type=click.Path(exists=True), default=None, help="Background(s) of --src.")
@click.option("--alpha", type=click.Path(exists=True), default=None,
              help="True alpha: files/folder matched by name (photos), or per-frame images or a video (footage).")
@click.option("--align/--no-align", default=False, show_default=True, help="Align backgrounds first (OpenCV).")
@click.option("--padding", type=click.Choice(["replicate", "reflect"]), default="replicate", show_default=True)
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Footage: the first frames only.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Also write the report as JSON.")
@click.pass_obj
@handle_errors
def evaluate_command(state: Context, pairs_dir: str | None, src: str | None, bgr: str | None, alpha: str | None,
                     align: bool, padding: str, max_frames: int | None, json_path: str | None, **model: Any) -> None:
    """Score a model's alpha against ground truth: SAD, MSE, Grad, Conn per image and mean [bundled pairs]."""
    # deferred: the API loads torch (see the module docstring)
    from model.demo import DEMO_NOTE, DEMO_WEIGHTS_PATH, demo_available

    from .evaluate import EvaluateConfig, evaluate
    from .predictor import Predictor

    spec = spec_from_options(model, padding=padding)
    config = EvaluateConfig(pairs_dir=pairs_dir, src=src, bgr=bgr, alpha=alpha, align=align, max_frames=max_frames,
                            json_path=json_path)
    if spec.is_empty and demo_available():
        spec = dataclasses.replace(spec, checkpoint=str(DEMO_WEIGHTS_PATH))
        state.echo(f"no model given: using the {DEMO_NOTE}", err=True)
    with Predictor.from_spec(spec) as predictor:
        report = evaluate(predictor, config, progress=lambda message: state.echo(message, err=True))
    click.echo(report.table())
    click.echo(f"model: {report.model['source']} on {report.model['target']} ({report.model['weights']}); "
               "SAD, Grad and Conn in thousands, MSE as is")


@cli.command("samples")
@click.argument("output", type=click.Path(file_okay=False))
@click.option("--overwrite/--no-overwrite", default=False, show_default=True, help="Replace existing files.")
@handle_errors
def samples_command(output: str, overwrite: bool) -> None:
    """Write the bundled real photo pairs to OUTPUT/src, OUTPUT/bgr and OUTPUT/alpha (for matte and evaluate)."""
    # deferred: the API loads torch (see the module docstring)
    from .evaluate import write_samples

    written = write_samples(output, overwrite=overwrite)
    click.echo(f"{len(written) // 3} sample pairs in {output}: src/, bgr/ (plates), alpha/ (ground truth); try\n"
               f"  bgm-deploy matte --src {output}/src --bgr {output}/bgr -o out/ --outputs pha,com\n"
               f"  bgm-deploy evaluate --src {output}/src --bgr {output}/bgr --alpha {output}/alpha")


@cli.command("web")
@click.argument("site", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (browsers allow the camera on http:// for 127.0.0.1/localhost only).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="0: a free port.")
@click.pass_obj
@handle_errors
def web_command(state: Context, site: str, host: str, port: int) -> None:
    """Serve a SITE from 'export --format web' with cross-origin isolation (WASM threads) until Ctrl-C."""
    # deferred: keeps --help fast (the server itself is torch-free)
    from .web.server import serve_web

    def ready(server: Any) -> None:
        click.echo(f"open {server.url}", err=False)
        state.echo(f"serving {site} on {server.url} (COOP/COEP for WASM threads); Ctrl-C stops", err=True)
        if host not in ("127.0.0.1", "localhost", "::1"):
            state.echo(f"warning: --host {host}: browsers block the camera on plain http:// except on localhost", err=True)

    serve_web(site, host=host, port=port, ready=ready)


def main() -> None:
    """Console entry point: Ctrl-C anywhere (imports, model load, a command) is one line, exit 130;
    SIGTERM the same with exit 143 (commands that serve install their own handlers)."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        code = cli.main(prog_name="bgm-deploy", standalone_mode=False)
    except Terminated:
        click.echo("Terminated.", err=True)
        code = 143
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
