"""The target registry: which runner runs which model files on which device.

A :class:`Target` is one runner/device pair, declared next to its runner (``onnxruntime-cpu``
in ``runtimes/onnxruntime.py``): the file formats it runs, how to tell whether it is usable
on this machine (and why not), the options a user may set, and how a load request becomes
the runner's keyword arguments. Everything that offers a choice of "where it runs" reads
this table: the CLI's ``--target`` choices, ``info``, bench's rows, Triton's instance kind,
``verify``/``matte``/``serve``. Adding a runtime is one runner file that registers its
runner and its targets.

``--target`` also takes a device word (``cpu``, ``cuda``, ``tensorrt``): the default target
of the model's file format on that device, so ``--target cuda`` runs an ONNX file on
onnxruntime's CUDA provider and a TorchScript file on torch's CUDA device.

Kept free of heavy imports: targets import their libraries inside ``unavailable`` only.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.errors import RuntimeUnavailableError, UsageError

if TYPE_CHECKING:
    from model.config import ModelConfig

DEVICES = ("cpu", "cuda")
# Device words --target takes besides target names: the format's default target there.
DEVICE_WORDS = ("cpu", "cuda", "tensorrt")


@dataclass(frozen=True)
class TargetOption:
    """A setting of one target that users may change (e.g. OpenVINO's inference precision).

    Attributes:
        name: the runner keyword argument it sets.
        flag: the command-line flag (``--openvino-precision``).
        help: one line for ``--help``.
        choices: valid values (None: any string).
        default: the value used when the option is not given.
    """

    name: str
    flag: str
    help: str
    choices: tuple[str, ...] | None = None
    default: Any = None


@dataclass(frozen=True)
class LoadRequest:
    """What a target needs to build its runner: the model and the generic run settings.

    Attributes:
        fmt: the file format (``onnx``, ``torchscript``, ``tensorrt``, ``pytorch`` for a
            checkpoint or synthetic weights, and those of registered exporters).
        path: the model file (None for ``pytorch``).
        model_config: the model (``pytorch``), or what the file's metadata says.
        checkpoint: the weights for ``pytorch`` (None: synthetic from the config's seed).
        threads: intra-op threads (None: the runtime's default).
        allow_fallback: run on the CPU with a loud warning when the device is not usable.
        precision: ``fp32`` or ``fp16`` (what bench asks eager PyTorch for).
        options: values of the target's :class:`TargetOption` s.
        shared_cores: other threads of the process need the same cores (video decode and
            encode): runtimes should not spin-wait.
        cache_dir: where GPU runtimes may cache engines.
    """

    fmt: str
    path: Path | None = None
    model_config: ModelConfig | None = None
    checkpoint: Path | None = None
    threads: int | None = None
    allow_fallback: bool = False
    precision: str = "fp32"
    options: dict[str, Any] = field(default_factory=dict)
    shared_cores: bool = False
    cache_dir: Path | None = None


def _always_usable() -> str | None:
    return None


@dataclass(frozen=True)
class Target:
    """One runner on one device.

    Attributes:
        name: what ``--target`` takes (``onnxruntime-cpu``).
        runner: the registered runner (:func:`runtimes.registry.register_runner`).
        device: ``cpu`` or ``cuda`` (Triton's instance kind follows it).
        formats: the file formats it runs.
        summary: one line for ``info`` and ``--help``.
        build: the runner's keyword arguments for a :class:`LoadRequest`.
        unavailable: why it cannot run here (None when it can); cheap, imports lazily.
        options: settings users may change, with their flags.
        default_for: formats for which this is the default target on its device.
        aliases: device words that pick it (``tensorrt`` picks ``onnxruntime-tensorrt``
            for an ONNX file and ``tensorrt-cuda`` for an engine).
        bench: the bench row name of this target with its default export recipe.
        recipe: the export recipe bench makes for it (``onnx``, ``onnx-tensorrt`` for the
            TensorRT-safe graph, ``torchscript``, ``tensorrt`` for an engine; None:
            ``pytorch`` runs the model itself).
        verified: False where no run on real hardware has happened (documentation).
        bench_by_default: a plain ``bench`` runs this row; False for rows whose file takes
            minutes to build (AOTInductor's compile): they run when named with ``--backend``.
    """

    name: str
    runner: str
    device: str
    formats: tuple[str, ...]
    summary: str
    build: Callable[[LoadRequest], dict[str, Any]]
    unavailable: Callable[[], str | None] = _always_usable
    options: tuple[TargetOption, ...] = ()
    default_for: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    bench: str | None = None
    recipe: str | None = None
    verified: bool = True
    bench_by_default: bool = True

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise UsageError(f"target {self.name!r}: device={self.device!r} is not valid; valid: {', '.join(DEVICES)}")
        unknown = [f for f in self.default_for if f not in self.formats]
        if unknown:
            raise UsageError(f"target {self.name!r}: default_for {unknown} is not among its formats {self.formats}")

    def why_unusable(self) -> str | None:
        """None when this target can run here; else the reason, with what to install."""
        return self.unavailable()

    def require_usable(self, allow_fallback: bool = False) -> None:
        """Raises :class:`RuntimeUnavailableError` when the target cannot run here.

        A CUDA target without a GPU is allowed through with ``allow_fallback`` (its runner
        then warns loudly and runs on the CPU)."""
        reason = self.why_unusable()
        if reason is not None and not (allow_fallback and self.device == "cuda"):
            fallback = " (or pass --allow-fallback to run on the CPU)" if self.device == "cuda" else ""
            raise RuntimeUnavailableError(f"target {self.name} is not usable here: {reason}{fallback}")

    def option_values(self, given: dict[str, Any]) -> dict[str, Any]:
        """``given`` checked against :attr:`options`, with defaults filled in.

        Raises:
            UsageError: an option this target does not have, or a value outside its choices.
        """
        known = {option.name: option for option in self.options}
        stray = sorted(set(given) - set(known))
        if stray:
            flags = ", ".join(_option_flag(name) for name in stray)
            valid = ", ".join(o.flag for o in self.options) or "none"
            raise UsageError(f"{flags} does not apply to target {self.name} (its options: {valid})")
        values = {}
        for name, option in known.items():
            value = given.get(name, option.default)
            if option.choices is not None and value is not None and value not in option.choices:
                raise UsageError(f"{option.flag} {value!r} is not valid; valid: {', '.join(option.choices)}")
            if value is not None:
                values[name] = value
        return values


_TARGETS: dict[str, Target] = {}


def register_target(target: Target) -> Target:
    """Adds ``target`` to the registry; registering a name twice raises."""
    if target.name in _TARGETS:
        raise UsageError(f"target {target.name!r} is already registered")
    if target.name in DEVICE_WORDS:
        raise UsageError(f"target name {target.name!r} is reserved for a device word")
    _TARGETS[target.name] = target
    return target


def unregister_target(name: str) -> None:
    """Removes a target (tests that register a toy runtime clean up with it)."""
    _TARGETS.pop(name, None)


def targets() -> list[Target]:
    """Every registered target, in registration order."""
    return list(_TARGETS.values())


def get_target(name: str) -> Target:
    try:
        return _TARGETS[name]
    except KeyError:
        raise UsageError(f"--target {name!r} is not valid; valid: {', '.join(target_choices())}") from None


def target_choices() -> list[str]:
    """What ``--target`` accepts: the device words and every target name."""
    return [*DEVICE_WORDS, *_TARGETS]


def formats() -> list[str]:
    """Every file format some target runs."""
    seen: dict[str, None] = {}
    for target in _TARGETS.values():
        seen.update(dict.fromkeys(target.formats))
    return list(seen)


def targets_for(fmt: str) -> list[Target]:
    return [target for target in _TARGETS.values() if fmt in target.formats]


def resolve_target(choice: str | None, fmt: str) -> Target:
    """The target that runs a ``fmt`` model for ``--target choice``.

    Args:
        choice: a target name, a device word (``cpu``, ``cuda``, ``tensorrt``), or None
            (``cpu``).
        fmt: the model's file format.

    Raises:
        UsageError: unknown choice, or a target that cannot run this format (the message
            lists those that can).
    """
    choice = choice or "cpu"
    able = targets_for(fmt)
    if not able:
        raise UsageError(f"no registered target runs {fmt} models; registered formats: {', '.join(formats())}")
    valid = ", ".join(t.name for t in able)
    if choice in DEVICE_WORDS:
        picked = [t for t in able if choice in t.aliases or (t.device == choice and fmt in t.default_for)]
        if not picked:
            raise UsageError(f"--target {choice} cannot run a {fmt} model; targets for {fmt}: {valid}")
        return picked[0]
    target = get_target(choice)
    if fmt not in target.formats:
        raise UsageError(
            f"--target {choice} runs {', '.join(target.formats)} models, not {fmt}; targets for {fmt}: {valid}"
        )
    return target


def _option_flag(name: str) -> str:
    for target in _TARGETS.values():
        for option in target.options:
            if option.name == name:
                return option.flag
    return name


def all_options() -> list[TargetOption]:
    """Every target option once (by flag), for the CLI's shared option group."""
    seen: dict[str, TargetOption] = {}
    for target in _TARGETS.values():
        for option in target.options:
            seen.setdefault(option.flag, option)
    return list(seen.values())


# -- helpers the runner files use in their declarations ---------------------------------------
def module_missing(module: str, install: str) -> Callable[[], str | None]:
    """An ``unavailable`` check: the Python module ``module`` is not installed."""

    def check() -> str | None:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed ({install})"
        return None

    return check


def cuda_missing() -> str | None:
    """No CUDA device for torch (a CPU-only build, or no GPU/driver)."""
    import torch

    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}"
        return f"no GPU: torch.cuda.is_available() is False ({build})"
    return None


def all_of(*checks: Callable[[], str | None]) -> Callable[[], str | None]:
    """An ``unavailable`` check that reports the first failing one of ``checks``."""

    def check() -> str | None:
        for item in checks:
            reason = item()
            if reason is not None:
                return reason
        return None

    return check
