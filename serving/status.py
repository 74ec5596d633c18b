"""``abflow status`` for people: the endpoint, its release, and each arm's model version, role and state.

``abflow.serving.daemon.endpoint_status`` gives the raw record (what ``abflow status --json``
prints, for scripts); this turns it into the few lines a person looks for: is it up, where, since
when, which version each arm serves and how its traffic is going.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

ROLES = ("A", "B")
"""RANDOM_ABTEST's children: A (child 0) gets ratioA of the traffic, B the rest. The pipeline deploys
the champion as A and the challenger as B."""


def render_status(status: Mapping[str, Any], now: datetime | None = None) -> str:
    """The table for one ``endpoint_status`` record (``now`` for the age, default the clock)."""
    running = bool(status.get("running"))
    state = f"running (pid {status.get('pid')})" if running else f"NOT RUNNING (pid {status.get('pid')} is gone)"
    lines = [f"endpoint  {status.get('url')}/api/v1.0/predictions  {state}"]
    lines.append(f"since     {_since(str(status.get('started_at', '')), now or datetime.now(UTC))}")
    release = release_of(str(status.get("state_dir", "")))
    if release is not None:
        lines.append(f"release   {release}")
    health = status.get("health")
    models: Mapping[str, str] = status.get("models") or {}
    if isinstance(health, dict) and isinstance(health.get("arms"), list):
        split = f", ratioA {health['ratioA']:g}" if isinstance(health.get("ratioA"), int | float) else ""
        router = f"router {health.get('router')}{split}"
        lines.append(f"graph     {health.get('graph')}: {router}; health {health.get('status')}")
        lines += ["", *_arm_table(health["arms"], models, health.get("ratioA"))]
    else:
        if running:
            lines.append("health    no answer from /health/status (starting, or overloaded)")
        lines += ["", *_arm_table([{"name": node} for node in models], models, None)]
    lines += ["", f"log       {status.get('log_path')}"]
    return "\n".join(lines)


def release_of(state_dir: str) -> str | None:
    """The release number when the endpoint is one of the local deploy target's releases
    (``<state root>/releases/<n>/serving``), else ``None``."""
    parts = PurePosixPath(state_dir).parts
    if len(parts) >= 3 and parts[-1] == "serving" and parts[-3] == "releases":
        return parts[-2]
    return None


def _arm_table(arms: Sequence[Mapping[str, Any]], models: Mapping[str, str], ratio_a: object) -> list[str]:
    rows = [("role", "arm", "share", "model", "version", "state", "routed", "feedback", "mean reward")]
    for index, arm in enumerate(arms):
        name = str(arm.get("name"))
        model, version = _model_and_version(models.get(name, ""))
        role = ROLES[index] if index < len(ROLES) else str(index)
        share = "-"
        if isinstance(ratio_a, int | float) and index < len(ROLES):
            share = f"{ratio_a if index == 0 else 1 - ratio_a:.0%}"
        state = str(arm.get("status", "?"))
        if arm.get("reason"):
            state += f" ({arm['reason']})"
        mean = arm.get("mean_reward")
        rows.append((role, name, share, model, version, state, _count(arm.get("routed")),
                     _count(arm.get("feedback")), f"{mean:.3f}" if isinstance(mean, int | float) else "-"))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def _model_and_version(uri: str) -> tuple[str, str]:
    """``(name, version)`` from a store URI ``…/models/<name>/<version>``; otherwise the last part."""
    parts = [part for part in uri.rstrip("/").split("/") if part]
    if len(parts) >= 3 and parts[-3] == "models":
        return parts[-2], parts[-1]
    return "-", parts[-1] if parts else "-"


def _count(value: object) -> str:
    return str(value) if isinstance(value, int) else "-"


def _since(started_at: str, now: datetime) -> str:
    try:
        started = datetime.fromisoformat(started_at)
    except ValueError:
        return started_at or "unknown"
    seconds = max(0, int((now - started).total_seconds()))
    age = (f"{seconds}s" if seconds < 120 else f"{seconds // 60} min" if seconds < 7200
           else f"{seconds // 3600} h" if seconds < 172800 else f"{seconds // 86400} days")
    return f"{started.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC ({age} ago)"
