"""The endpoint's limits and deadlines: what a client may cost the executor, and how long it may take.

Each limit is a ``abflow serve`` flag with an environment fallback (``ABFLOW_<NAME>``). The flags are
handed on to the serving process as those same variables (``export_limits``), so a foreground server,
a detached one and its blue/green successor all read them one way: ``EndpointLimits.from_env()``.

The defaults are chosen for a 2-core machine serving small requests, and stated here once:

* a request's headers must be complete within ``header_timeout`` (10 s) of its first byte (of the
  connection's opening, for its first request); a body may pause for at most ``body_idle_timeout``
  (30 s) between reads; an idle keep-alive connection is closed after ``keepalive_timeout`` (75 s);
* at most ``max_connections`` (1000) connections are served at once; the next one gets a 503 as soon
  as its headers are in, and its body is never read;
* bodies larger than ``large_body_bytes`` (64 KiB) may together hold at most ``max_buffered_bytes``
  (32 MiB) of the executor's memory, counted from their declared length before a byte is read: past
  it, a 503 at once. Smaller bodies are always admitted (together at most ``max_connections`` ×
  64 KiB), so small requests keep flowing while large uploads are turned away;
* a body over ``large_body_bytes`` is decoded in a worker thread, so the event loop serves other
  clients in between the decoder's steps instead of after the whole decode (about 10 ms per MiB);
* every prediction is answered within ``request_deadline`` (10 s); with ``on_arm_down="failover"``
  a request whose arm is down or does not answer in time is served by the other arm instead;
* rewards are finite and within ``±max_abs_reward`` (1e6).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

FAILOVER = "failover"
FAIL = "fail"
ON_ARM_DOWN = (FAILOVER, FAIL)
ENV_PREFIX = "ABFLOW_"
MAX_ABS_REWARD = 1e6
"""The default bound on a reward's magnitude (``abflow.serving.protocol.check_reward``): far beyond any
sensible reward scale, far below where a sum of millions of them, or of their squares, could leave
float64 (|r| ≤ 1e6 gives r² ≤ 1e12). Here rather than in ``protocol`` so the CLI imports no numpy."""


@dataclass(frozen=True)
class EndpointLimits:
    header_timeout: float = 10.0
    body_idle_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    max_connections: int = 1000
    max_buffered_bytes: int = 32 * 1024 * 1024
    large_body_bytes: int = 64 * 1024
    request_deadline: float = 10.0
    on_arm_down: str = FAILOVER
    max_abs_reward: float = MAX_ABS_REWARD

    def __post_init__(self) -> None:
        for field in fields(self):
            _check(field.name, getattr(self, field.name))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EndpointLimits:
        """The defaults, overridden by the ``ABFLOW_<NAME>`` variables that are set."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = environ.get(env_name(field.name))
            if raw is not None:
                try:
                    values[field.name] = _converter(field.name)(raw)
                except argparse.ArgumentTypeError as exc:
                    raise ValueError(f"{env_name(field.name)}: {exc}") from None
        return cls(**values)


HELP = {
    "header_timeout": "seconds a request's headers may take to arrive (default 10)",
    "body_idle_timeout": "seconds a request body may pause between reads (default 30)",
    "keepalive_timeout": "seconds an idle keep-alive connection stays open (default 75)",
    "max_connections": "connections served at once; the next get a fast 503 (default 1000)",
    "max_buffered_bytes": "bytes all large request bodies together may hold; past it a fast 503 (default 32 MiB)",
    "large_body_bytes": "bodies over this many bytes count against --max-buffered-bytes and are decoded in a "
                        "worker thread (default 65536)",
    "request_deadline": "seconds within which every prediction is answered (default 10)",
    "on_arm_down": "when a request's arm is down or too slow: 'failover' serves it from the other arm "
                   "(meta.routing names it), 'fail' answers 503 (default failover)",
    "max_abs_reward": "feedback rewards must lie within plus or minus this (default 1e6)",
}


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per limit, defaulting to its environment variable (checked by argparse either way)."""
    group = parser.add_argument_group("limits", "what one client may cost the endpoint")
    for field in fields(EndpointLimits):
        variable = env_name(field.name)
        group.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, type=_converter(field.name),
                           metavar=field.name.upper(), default=os.environ.get(variable),
                           help=f"{HELP[field.name]}; ${variable}")


def export_limits(args: argparse.Namespace) -> None:
    """Hand the limit flags that were given to the serving process as its ``ABFLOW_<NAME>`` variables."""
    for field in fields(EndpointLimits):
        value = getattr(args, field.name)
        if value is not None:
            os.environ[env_name(field.name)] = str(value)


def _converter(name: str) -> Callable[[str], Any]:
    default = getattr(EndpointLimits, name)
    kind: Callable[[str], Any] = str if isinstance(default, str) else int if isinstance(default, int) else float

    def convert(raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {raw!r}") from None
        try:
            _check(name, value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    convert.__name__ = name
    return convert


def _check(name: str, value: Any) -> None:
    where = f"--{name.replace('_', '-')} (or ${env_name(name)})"
    if name == "on_arm_down":
        if value not in ON_ARM_DOWN:
            raise ValueError(f"{where} must be one of {', '.join(ON_ARM_DOWN)}, got {value!r}")
    elif not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{where} must be a positive number, got {value!r}")
