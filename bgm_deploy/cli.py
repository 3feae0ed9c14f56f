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


def main() -> None:
    cli(prog_name="bgm-deploy")


if __name__ == "__main__":
    main()
