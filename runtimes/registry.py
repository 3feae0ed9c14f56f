"""Runner registry: ``create_runner(name, **opts)``."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from model.errors import UsageError

from .base import BaseRunner

_RUNNERS: dict[str, type[BaseRunner]] = {}
R = TypeVar("R", bound=type[BaseRunner])


def register_runner(name: str) -> Callable[[R], R]:
    """Class decorator adding a runner under ``name``; registering a name twice raises."""

    def decorate(cls: R) -> R:
        if name in _RUNNERS:
            raise UsageError(f"runner {name!r} is already registered (by {_RUNNERS[name].__qualname__})")
        cls.name = name
        _RUNNERS[name] = cls
        return cls

    return decorate


def runner_names() -> list[str]:
    return sorted(_RUNNERS)


def runner_class(name: str) -> type[BaseRunner]:
    try:
        return _RUNNERS[name]
    except KeyError:
        raise UsageError(f"runner {name!r} is not known; valid: {', '.join(runner_names())}") from None


def create_runner(name: str, **opts: Any) -> BaseRunner:
    """Creates (does not activate) the runner registered as ``name``."""
    return runner_class(name)(**opts)
