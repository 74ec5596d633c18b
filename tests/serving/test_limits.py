"""The endpoint's limits: stated defaults, ``ABFLOW_<NAME>`` variables, ``abflow serve`` flags."""

from __future__ import annotations

import argparse
import os
from dataclasses import fields

import pytest

from abflow.serving.limits import FAIL, EndpointLimits, add_limit_arguments, env_name, export_limits


def parser() -> argparse.ArgumentParser:
    built = argparse.ArgumentParser(exit_on_error=False)
    add_limit_arguments(built)
    return built


def test_the_stated_defaults() -> None:
    limits = EndpointLimits.from_env({})
    assert (limits.header_timeout, limits.body_idle_timeout, limits.request_deadline) == (10.0, 30.0, 10.0)
    assert (limits.max_connections, limits.max_buffered_bytes, limits.large_body_bytes) == (1000, 32 << 20, 65536)
    assert (limits.on_arm_down, limits.max_abs_reward) == ("failover", 1e6)


def test_variables_override_defaults_and_bad_ones_name_the_variable() -> None:
    limits = EndpointLimits.from_env({"ABFLOW_MAX_CONNECTIONS": "40", "ABFLOW_ON_ARM_DOWN": "fail",
                                      "ABFLOW_HEADER_TIMEOUT": "0.5"})
    assert (limits.max_connections, limits.on_arm_down, limits.header_timeout) == (40, FAIL, 0.5)
    for variable, raw, words in [("ABFLOW_MAX_CONNECTIONS", "many", "an integer"),
                                 ("ABFLOW_REQUEST_DEADLINE", "-1", "positive"),
                                 ("ABFLOW_MAX_ABS_REWARD", "inf", "positive"),
                                 ("ABFLOW_ON_ARM_DOWN", "retry", "failover, fail")]:
        with pytest.raises(ValueError, match=words) as error:
            EndpointLimits.from_env({variable: raw})
        assert variable in str(error.value)


def test_flags_are_checked_and_handed_on_as_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for field in fields(EndpointLimits):
        # setenv first: monkeypatch records a variable's absence only when it changes it, and delenv of an
        # absent one changes nothing, so what export_limits sets would outlive the test and reach every
        # server later tests start (their failover turned off by --on-arm-down fail).
        monkeypatch.setenv(env_name(field.name), "")
        monkeypatch.delenv(env_name(field.name))
    monkeypatch.setenv("ABFLOW_MAX_CONNECTIONS", "7")
    args = parser().parse_args(["--request-deadline", "2.5", "--on-arm-down", "fail"])
    assert args.max_connections == 7 and args.body_idle_timeout is None
    export_limits(args)
    assert os.environ[env_name("request_deadline")] == "2.5" and env_name("body_idle_timeout") not in os.environ
    limits = EndpointLimits.from_env()
    assert (limits.request_deadline, limits.on_arm_down, limits.max_connections) == (2.5, FAIL, 7)
    with pytest.raises(argparse.ArgumentError, match="must be a positive number"):
        parser().parse_args(["--max-buffered-bytes", "0"])

