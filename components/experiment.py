"""The experiment record: one deployment of champion (arm A) against challenger (arm B), kept in the
artifact store so the next run can decide it.

``deploy-ab`` writes ``experiments/<model>/<id>.json`` when the two arms serve different versions (a
first deployment, both arms the same model, is not an experiment); ``conclude`` (the first step of
the next run) finds the running one, reads its outcomes from where the record says, decides, and
appends the decision; ``abflow experiment status|decide`` read it. Every change is a compare-and-swap
read-modify-write, as for the champion pointer, so two runs concluding at once lose nothing.

Outcome sources name where the endpoint keeps its per-arm outcomes: ``ledger:<path>`` (the local
endpoint's SQLite ledger) or ``prometheus:<url>`` (a cluster's Prometheus). A split moved by
``ratio_schedule`` redeploys the same experiment as a new release, and a new local release writes a
new ledger, so a record lists every source the experiment has had; its outcomes are their sum.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from abflow.components.store_writes import ABSENT, open_writable_store
from abflow.serving.graph import check_ratio
from abflow.serving.ledger import LEDGER_FILE
from abflow.serving.store import StoreError

EXPERIMENTS = "experiments"
RUNNING = "running"
CONCLUDED = "concluded"
ROLLED_BACK = "rolled-back"
CHAMPION = "champion"
CHALLENGER = "challenger"
LEDGER = "ledger:"
PROMETHEUS = "prometheus:"
UPDATE_ATTEMPTS = 50

_ID = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


class ExperimentError(RuntimeError):
    """An experiment record is missing, malformed or could not be updated; the message says what to do."""


@dataclass(frozen=True)
class Arm:
    """One arm: its graph node name, the model version and folder it serves, and its role."""

    name: str
    version: str
    model_uri: str
    role: str


@dataclass(frozen=True)
class Experiment:
    """What ``experiments/<model_name>/<id>.json`` holds.

    ``ratio_a`` is the champion's share of traffic now; ``traffic`` lists every split it has had
    (``ratio_a``, ``at``, ``by``: the run that set it). ``decisions`` lists every decision taken on it,
    each with its numbers, test and parameters, when and by which run; ``status`` turns ``concluded``
    with the decision that ended it, or ``rolled-back`` when its deployment failed its smoke test."""

    id: str
    model_name: str
    status: str
    target: str
    deployment_name: str
    endpoint: str
    arms: tuple[Arm, Arm]
    ratio_a: float
    started_at: str
    started_by: str
    outcomes: tuple[str, ...]
    ratio_schedule: tuple[float, ...] = ()
    traffic: tuple[dict[str, Any], ...] = ()
    decisions: tuple[dict[str, Any], ...] = ()
    ended_at: str = ""
    ended_by: str = ""
    conclusion: str = ""

    @property
    def champion(self) -> Arm:
        return next(arm for arm in self.arms if arm.role == CHAMPION)

    @property
    def challenger(self) -> Arm:
        return next(arm for arm in self.arms if arm.role == CHALLENGER)

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        for key in ("arms", "outcomes", "ratio_schedule", "traffic", "decisions"):
            body[key] = list(body[key])
        return body

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2).encode()

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> Experiment:
        if not isinstance(raw, dict):
            raise ExperimentError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        required = {"id", "model_name", "status", "target", "deployment_name", "endpoint", "arms", "ratio_a",
                    "started_at", "started_by", "outcomes"}
        missing = sorted(required - raw.keys())
        if missing:
            raise ExperimentError(f"{where} lacks {missing}; restore it from the store's history or delete it "
                                  "to forget the experiment")
        try:
            arms = tuple(Arm(**arm) for arm in raw["arms"])
        except TypeError as exc:
            raise ExperimentError(f"{where}: an arm is malformed ({exc})") from exc
        if len(arms) != 2 or {arm.role for arm in arms} != {CHAMPION, CHALLENGER}:
            raise ExperimentError(f"{where} must name two arms, one champion and one challenger")
        return cls(
            id=str(raw["id"]), model_name=str(raw["model_name"]), status=str(raw["status"]),
            target=str(raw["target"]), deployment_name=str(raw["deployment_name"]), endpoint=str(raw["endpoint"]),
            arms=(arms[0], arms[1]), ratio_a=float(raw["ratio_a"]), started_at=str(raw["started_at"]),
            started_by=str(raw["started_by"]), outcomes=tuple(str(s) for s in raw["outcomes"]),
            ratio_schedule=tuple(float(r) for r in raw.get("ratio_schedule", ())),
            traffic=tuple(dict(t) for t in raw.get("traffic", ())),
            decisions=tuple(dict(d) for d in raw.get("decisions", ())),
            ended_at=str(raw.get("ended_at", "")), ended_by=str(raw.get("ended_by", "")),
            conclusion=str(raw.get("conclusion", "")),
        )


def new_experiment_id(model_name: str, now: datetime | None = None) -> str:
    """``<model>-<UTC time>-<random>``: sorts by start time within a model, unique without coordination,
    and fits a Kubernetes label value (the Prometheus path selects by it)."""
    moment = now or datetime.now(UTC)
    return check_id(f"{model_name[:30]}-{moment:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}")


def check_id(experiment_id: str) -> str:
    if not _ID.fullmatch(experiment_id):
        raise ExperimentError(f"experiment id {experiment_id!r} must be 1-63 lower-case letters, digits or '-', "
                              "starting and ending with a letter or digit")
    return experiment_id


def parse_ratio_schedule(text: str) -> tuple[float, ...]:
    """``"0.9,0.75,0.5"``: the champion's share at each step; empty means a fixed split."""
    if not text.strip():
        return ()
    try:
        steps = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"ratio_schedule must be comma-separated numbers like 0.9,0.75,0.5, got {text!r}") from None
    for number, step in enumerate(steps, 1):
        check_ratio(step, f"ratio_schedule step {number}", f" in {text!r}")
    return steps


def ledger_source(serving_state_dir: str) -> str:
    """Where a local endpoint started in ``serving_state_dir`` keeps its outcomes."""
    return f"{LEDGER}{serving_state_dir.rstrip('/')}/{LEDGER_FILE}"


def start_experiment(
    artifact_root: str,
    *,
    experiment_id: str,
    model_name: str,
    target: str,
    deployment_name: str,
    endpoint: str,
    arms: tuple[Arm, Arm],
    ratio_a: float,
    outcomes: str,
    run_id: str,
    ratio_schedule: Sequence[float] = (),
) -> Experiment:
    """Write the record of an experiment that has just started serving; an id is never reused."""
    now = _now()
    experiment = Experiment(
        id=check_id(experiment_id), model_name=model_name, status=RUNNING, target=target,
        deployment_name=deployment_name, endpoint=endpoint, arms=arms, ratio_a=float(ratio_a), started_at=now,
        started_by=run_id, outcomes=(outcomes,), ratio_schedule=tuple(ratio_schedule),
        traffic=({"ratio_a": float(ratio_a), "at": now, "by": run_id},),
    )
    store = open_writable_store(artifact_root)
    key = _key(model_name, experiment.id)
    if not store.write_if_unchanged(key, experiment.to_json(), ABSENT):
        raise ExperimentError(f"{store.uri_for(key)} already exists: experiment ids are never reused")
    return experiment


def read_experiment(artifact_root: str, model_name: str, experiment_id: str) -> Experiment:
    store = open_writable_store(artifact_root)
    key = _key(model_name, check_id(experiment_id))
    data, _ = store.read_versioned(key)
    if data is None:
        raise ExperimentError(f"no experiment {experiment_id!r} of model {model_name!r}: {store.uri_for(key)} "
                              "does not exist")
    return _parse(data, store.uri_for(key))


def list_experiments(artifact_root: str, model_name: str) -> list[Experiment]:
    """Every experiment of ``model_name``, oldest first."""
    store = open_writable_store(artifact_root)
    folder = f"{EXPERIMENTS}/{model_name}/"
    keys = [key for key in store.list_keys(folder) if key.endswith(".json") and "/" not in key[len(folder):]]
    experiments = [_parse(store.read_bytes(key), store.uri_for(key)) for key in keys]
    return sorted(experiments, key=lambda experiment: (experiment.started_at, experiment.id))


def running_experiment(artifact_root: str, model_name: str) -> Experiment | None:
    """The experiment of ``model_name`` that is running now: the latest started, if several are (a
    run that died between deploying and concluding leaves its predecessor running too)."""
    running = [e for e in list_experiments(artifact_root, model_name) if e.status == RUNNING]
    return running[-1] if running else None


def update_experiment(artifact_root: str, model_name: str, experiment_id: str,
                      change: Callable[[Experiment], Experiment]) -> Experiment:
    """Apply ``change`` to the stored record with compare-and-swap, re-reading and re-applying when
    another run changed it in between."""
    store = open_writable_store(artifact_root)
    key = _key(model_name, check_id(experiment_id))
    where = store.uri_for(key)
    for attempt in range(UPDATE_ATTEMPTS):
        data, generation = store.read_versioned(key)
        if data is None:
            raise ExperimentError(f"{where} does not exist: nothing to update")
        updated = change(_parse(data, where))
        if store.write_if_unchanged(key, updated.to_json(), generation):
            return updated
        time.sleep(random.uniform(0, 0.005 * (attempt + 1)))
    raise StoreError(f"gave up updating {where} after {UPDATE_ATTEMPTS} conflicting writes: retry the step")


def record_decision(experiment: Experiment, decision: dict[str, Any], *, run_id: str,
                    ends_it: bool) -> Experiment:
    """``experiment`` with ``decision`` appended (stamped with when and by which run); ``ends_it``
    concludes the experiment with that decision."""
    now = _now()
    stamped = {**decision, "at": now, "by": run_id}
    updated = replace(experiment, decisions=(*experiment.decisions, stamped))
    if ends_it:
        updated = replace(updated, status=CONCLUDED, ended_at=now, ended_by=run_id,
                          conclusion=str(decision["decision"]))
    return updated


def move_traffic(experiment: Experiment, *, ratio_a: float, outcomes: str, run_id: str) -> Experiment:
    """``experiment`` after its split moved to ``ratio_a`` (a new release, reading ``outcomes`` too)."""
    sources = experiment.outcomes if outcomes in experiment.outcomes else (*experiment.outcomes, outcomes)
    return replace(experiment, ratio_a=float(ratio_a), outcomes=sources,
                   traffic=(*experiment.traffic, {"ratio_a": float(ratio_a), "at": _now(), "by": run_id}))


def mark_rolled_back(experiment: Experiment, *, run_id: str, reason: str) -> Experiment:
    return replace(experiment, status=ROLLED_BACK, ended_at=_now(), ended_by=run_id, conclusion=reason)


def next_ratio(experiment: Experiment) -> float | None:
    """The schedule's next step, or ``None`` at its end (or without a schedule): the experiment started
    at step 0 and each move appended one ``traffic`` entry."""
    step = len(experiment.traffic)
    return experiment.ratio_schedule[step] if step < len(experiment.ratio_schedule) else None


def _parse(data: bytes, where: str) -> Experiment:
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise ExperimentError(f"{where} is not valid JSON ({exc}); restore it or delete it") from exc
    return Experiment.from_dict(raw, where)


def _key(model_name: str, experiment_id: str) -> str:
    return f"{EXPERIMENTS}/{model_name}/{experiment_id}.json"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")

