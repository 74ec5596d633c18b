"""The experiment record in a real store: written once, found while running, updated without losing
a concurrent change."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from abflow.components.experiment import (
    CHALLENGER,
    CHAMPION,
    CONCLUDED,
    RUNNING,
    Arm,
    Experiment,
    ExperimentError,
    list_experiments,
    mark_rolled_back,
    move_traffic,
    new_experiment_id,
    next_ratio,
    parse_ratio_schedule,
    read_experiment,
    record_decision,
    running_experiment,
    start_experiment,
    update_experiment,
)

ARMS = (Arm("classifier-1", "v1", "file:///m/v1", CHAMPION), Arm("classifier-2", "v2", "file:///m/v2", CHALLENGER))


def start(root: str, experiment_id: str, schedule: tuple[float, ...] = ()) -> Experiment:
    return start_experiment(root, experiment_id=experiment_id, model_name="iris", target="local",
                            deployment_name="iris-ab", endpoint="http://127.0.0.1:1", arms=ARMS,
                            ratio_a=schedule[0] if schedule else 0.5, outcomes="ledger:/s/outcomes.sqlite",
                            run_id="run-1", ratio_schedule=schedule)


def test_a_started_experiment_reads_back_and_is_the_running_one(tmp_path: Path) -> None:
    root = str(tmp_path)
    started = start(root, "iris-1")
    assert read_experiment(root, "iris", "iris-1") == started
    assert started.champion.version == "v1" and started.challenger.version == "v2"
    assert running_experiment(root, "iris") == started
    assert (tmp_path / "experiments" / "iris" / "iris-1.json").is_file()
    with pytest.raises(ExperimentError, match="already exists: experiment ids are never reused"):
        start(root, "iris-1")


def test_the_latest_running_experiment_is_found_and_concluded_ones_are_not(tmp_path: Path) -> None:
    root = str(tmp_path)
    assert running_experiment(root, "iris") is None
    start(root, "iris-1")
    second = start(root, "iris-2")
    assert running_experiment(root, "iris") == second
    update_experiment(root, "iris", "iris-2", lambda e: record_decision(e, {"decision": "keep"}, run_id="run-2",
                                                                        ends_it=True))
    update_experiment(root, "iris", "iris-1", lambda e: mark_rolled_back(e, run_id="run-2", reason="smoke"))
    assert running_experiment(root, "iris") is None
    concluded = read_experiment(root, "iris", "iris-2")
    assert concluded.status == CONCLUDED and concluded.conclusion == "keep" and concluded.ended_by == "run-2"
    assert concluded.decisions[0]["decision"] == "keep" and concluded.decisions[0]["by"] == "run-2"
    assert [e.id for e in list_experiments(root, "iris")] == ["iris-1", "iris-2"]


def test_concurrent_updates_lose_nothing(tmp_path: Path) -> None:
    root = str(tmp_path)
    start(root, "iris-1")

    def decide(index: int) -> None:
        update_experiment(root, "iris", "iris-1",
                          lambda e: record_decision(e, {"decision": "continue", "look": index}, run_id=f"r{index}",
                                                    ends_it=False))

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    looks = sorted(d["look"] for d in read_experiment(root, "iris", "iris-1").decisions)
    assert looks == list(range(8))
    assert read_experiment(root, "iris", "iris-1").status == RUNNING


def test_the_ratio_schedule_moves_one_step_per_move(tmp_path: Path) -> None:
    experiment = start(str(tmp_path), "iris-1", (0.9, 0.75, 0.5))
    assert experiment.ratio_a == 0.9 and next_ratio(experiment) == 0.75
    moved = move_traffic(experiment, ratio_a=0.75, outcomes="ledger:/s2/outcomes.sqlite", run_id="run-2")
    assert moved.outcomes == ("ledger:/s/outcomes.sqlite", "ledger:/s2/outcomes.sqlite")
    assert [t["ratio_a"] for t in moved.traffic] == [0.9, 0.75] and next_ratio(moved) == 0.5
    last = move_traffic(moved, ratio_a=0.5, outcomes="ledger:/s2/outcomes.sqlite", run_id="run-3")
    assert next_ratio(last) is None and len(last.outcomes) == 2
    assert next_ratio(replace(experiment, ratio_schedule=())) is None


def test_malformed_records_say_what_to_do(tmp_path: Path) -> None:
    folder = tmp_path / "experiments" / "iris"
    folder.mkdir(parents=True)
    (folder / "iris-1.json").write_text("{")
    with pytest.raises(ExperimentError, match="is not valid JSON"):
        read_experiment(str(tmp_path), "iris", "iris-1")
    (folder / "iris-1.json").write_text('{"id": "iris-1"}')
    with pytest.raises(ExperimentError, match=r"lacks \['arms'"):
        read_experiment(str(tmp_path), "iris", "iris-1")
    with pytest.raises(ExperimentError, match="no experiment 'iris-2'"):
        read_experiment(str(tmp_path), "iris", "iris-2")


def test_ids_are_unique_and_label_safe() -> None:
    ids = {new_experiment_id("iris") for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) <= 63 and i.startswith("iris-") for i in ids)


@given(st.lists(st.floats(0, 1), min_size=1, max_size=6))
def test_ratio_schedules_parse(steps: list[float]) -> None:
    assert parse_ratio_schedule(",".join(map(repr, steps))) == tuple(steps)


@pytest.mark.parametrize("text", ["0.9,x", "0.9,1.5", "-0.1"])
def test_bad_ratio_schedules_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="ratio_schedule"):
        parse_ratio_schedule(text)


def test_an_empty_schedule_is_a_fixed_split() -> None:
    assert parse_ratio_schedule(" ") == ()
