"""The ``conclude`` step's logic on a real store, real outcome ledgers (SQLite, written by
``OutcomeLedger`` as an endpoint writes them) and, for a moved split, the real local target: a better
challenger is promoted, a worse one kept out, too little evidence waits or is replaced, and every
decision lands in the experiment record."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from abflow.components.conclusion import (
    KEPT,
    MOVED,
    NOT_PROMOTED,
    NOTHING,
    PROMOTED,
    REPLACE,
    REPLACED,
    WAIT,
    WAITING,
    Conclusion,
    conclude_experiment,
    report_html,
    rules_from,
)
from abflow.components.decision import Rules
from abflow.components.deploy_targets import deploy_challenger
from abflow.components.experiment import (
    CHALLENGER,
    CHAMPION,
    CONCLUDED,
    LEDGER,
    RUNNING,
    Arm,
    Experiment,
    read_experiment,
    start_experiment,
)
from abflow.components.local_target import current_deployment, stop_local
from abflow.components.registry import PublishedModel, promote, promote_version, publish_model, read_champion
from abflow.components.training import TrainResult, train_iris
from abflow.serving.ledger import OutcomeLedger
from tests.fixtures.processes import free_port

RULES = Rules()


@pytest.fixture(scope="module")
def trained() -> tuple[TrainResult, TrainResult]:
    return train_iris(), train_iris(seed=7)


@pytest.fixture
def store(tmp_path: Path, trained: tuple[TrainResult, TrainResult]) -> tuple[str, PublishedModel, PublishedModel]:
    """v1 the champion, v2 published beside it."""
    root = str(tmp_path / "store")
    champion = publish_model(root, "iris", trained[0], run_id="run-1", version="v1")
    promote(root, "iris", champion, run_id="run-1")
    return root, champion, publish_model(root, "iris", trained[1], run_id="run-2", version="v2")


@pytest.fixture
def state_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "deploy"
    yield root
    stop_local(root)


def start(root: str, ledger: Path, champion: PublishedModel, challenger: PublishedModel) -> Experiment:
    arms = (Arm("classifier-1", champion.version, champion.uri, CHAMPION),
            Arm("classifier-2", challenger.version, challenger.uri, CHALLENGER))
    return start_experiment(root, experiment_id="iris-2", model_name="iris", target="local",
                            deployment_name="iris-ab", endpoint="http://127.0.0.1:1", arms=arms, ratio_a=0.5,
                            outcomes=f"{LEDGER}{ledger}", run_id="run-2")


def serve(ledger: Path, experiment_id: str, arm: str, *, requests: int, feedback: int, ones: int) -> None:
    """Record what an endpoint would: ``requests`` answers in 2 ms, ``feedback`` rewards of which
    ``ones`` are 1 and the rest 0."""
    with OutcomeLedger(ledger) as writer:
        for _ in range(requests):
            writer.record_request(experiment_id, arm, 200, 0.002)
        for index in range(feedback):
            writer.record_feedback(experiment_id, arm, 1.0 if index < ones else 0.0)


def conclude(root: str, on_undecided: str = WAIT, state_root: Path | None = None) -> Conclusion:
    return conclude_experiment(root, "iris", on_undecided=on_undecided, rules=RULES, run_id="run-3",
                               local_state_dir=str(state_root or Path(root) / "no-endpoint"))


def test_a_better_challenger_is_promoted_and_the_decision_recorded(
        store: tuple[str, PublishedModel, PublishedModel], tmp_path: Path) -> None:
    root, champion, challenger = store
    ledger = tmp_path / "serving" / "outcomes.sqlite"
    start(root, ledger, champion, challenger)
    serve(ledger, "iris-2", "classifier-1", requests=1500, feedback=1500, ones=1350)
    serve(ledger, "iris-2", "classifier-2", requests=1500, feedback=1500, ones=1470)

    conclusion = conclude(root)

    assert conclusion.proceed and conclusion.action == PROMOTED
    now_champion = read_champion(root, "iris")
    assert now_champion is not None and now_champion.version == "v2" and now_champion.run_id == "run-3"
    record = read_experiment(root, "iris", "iris-2")
    assert (record.status, record.conclusion, record.ended_by) == (CONCLUDED, "promote", "run-3")
    [entry] = record.decisions
    assert entry["decision"] == "promote" and entry["action"] == PROMOTED and entry["by"] == "run-3"
    assert [arm["feedback"] for arm in entry["arms"]] == [1500, 1500]
    assert entry["lower"] > 0 and entry["test"]["alpha"] == 0.05 and entry["on_undecided"] == WAIT
    metrics = conclusion.as_metrics()
    assert metrics["decision_promote"] == 1.0 and metrics["challenger_mean_reward"] == pytest.approx(0.98)
    assert "promote classifier-2 (v2)" in conclusion.summary and "champion is now v2" in conclusion.summary
    page = report_html(conclusion)
    assert "<title>Experiment iris-2: promote</title>" in page
    assert "v1 (champion) vs v2 (challenger)" in page


def test_a_worse_challenger_is_kept_out_and_the_champion_unchanged(
        store: tuple[str, PublishedModel, PublishedModel], tmp_path: Path) -> None:
    root, champion, challenger = store
    ledger = tmp_path / "serving" / "outcomes.sqlite"
    start(root, ledger, champion, challenger)
    serve(ledger, "iris-2", "classifier-1", requests=1500, feedback=1500, ones=1470)
    serve(ledger, "iris-2", "classifier-2", requests=1500, feedback=1500, ones=1200)
    before = read_champion(root, "iris")

    conclusion = conclude(root)

    assert conclusion.proceed and conclusion.action == KEPT
    assert read_champion(root, "iris") == before
    record = read_experiment(root, "iris", "iris-2")
    assert (record.status, record.conclusion) == (CONCLUDED, "keep")
    assert conclusion.as_metrics()["decision_keep"] == 1.0


def test_too_little_evidence_waits_retraining_nothing_and_says_what_is_missing(
        store: tuple[str, PublishedModel, PublishedModel], tmp_path: Path) -> None:
    root, champion, challenger = store
    ledger = tmp_path / "serving" / "outcomes.sqlite"
    start(root, ledger, champion, challenger)
    serve(ledger, "iris-2", "classifier-1", requests=300, feedback=30, ones=27)
    serve(ledger, "iris-2", "classifier-2", requests=300, feedback=80, ones=75)

    first = conclude(root)
    second = conclude(root)

    assert not first.proceed and first.action == WAITING
    assert "missing 20 for challenger classifier-2 (v2) (80 so far) and 70 for champion classifier-1 (v1)" \
        in first.summary
    assert "the run stops here and retrains nothing" in first.summary
    record = read_experiment(root, "iris", "iris-2")
    assert record.status == RUNNING and [d["decision"] for d in record.decisions] == ["continue", "continue"]
    assert not second.proceed
    assert read_champion(root, "iris") is not None and read_champion(root, "iris").version == "v1"  # type: ignore[union-attr]


def test_replace_ends_an_undecided_experiment_as_keep_and_goes_on(
        store: tuple[str, PublishedModel, PublishedModel], tmp_path: Path) -> None:
    root, champion, challenger = store
    ledger = tmp_path / "serving" / "outcomes.sqlite"
    start(root, ledger, champion, challenger)
    serve(ledger, "iris-2", "classifier-1", requests=10, feedback=10, ones=9)

    conclusion = conclude(root, REPLACE)

    assert conclusion.proceed and conclusion.action == REPLACED
    record = read_experiment(root, "iris", "iris-2")
    assert (record.status, record.conclusion) == (CONCLUDED, "keep")
    [entry] = record.decisions
    assert entry["undecided"] is True and entry["reason"].startswith("keep classifier-1 (v1): on_undecided=replace")
    assert read_champion(root, "iris").version == "v1"  # type: ignore[union-attr]


def test_no_running_experiment_is_nothing_to_decide(store: tuple[str, PublishedModel, PublishedModel]) -> None:
    root, _, _ = store
    conclusion = conclude(root)
    assert conclusion.proceed and conclusion.action == NOTHING and conclusion.decision is None
    assert conclusion.as_metrics() == {"proceed": 1.0, "experiment_decided": 0.0}
    assert not (Path(root) / "experiments").exists()
    assert "<h1>abflow conclude: nothing to decide</h1>" in report_html(conclusion)


def test_a_promotion_retried_after_the_pointer_swapped_finds_the_challenger_already_champion(
        store: tuple[str, PublishedModel, PublishedModel], tmp_path: Path) -> None:
    root, champion, challenger = store
    ledger = tmp_path / "serving" / "outcomes.sqlite"
    start(root, ledger, champion, challenger)
    serve(ledger, "iris-2", "classifier-1", requests=1500, feedback=1500, ones=1350)
    serve(ledger, "iris-2", "classifier-2", requests=1500, feedback=1500, ones=1470)
    promote_version(root, "iris", "v2", run_id="run-3")  # a conclude that died before recording its decision

    conclusion = conclude(root)

    assert conclusion.action == PROMOTED and "champion is already v2 (promoted by run-3)" in conclusion.summary
    record = read_experiment(root, "iris", "iris-2")
    assert (record.status, record.conclusion) == (CONCLUDED, "promote")


def test_a_winner_is_not_promoted_over_a_champion_it_never_faced(
        store: tuple[str, PublishedModel, PublishedModel], tmp_path: Path,
        trained: tuple[TrainResult, TrainResult]) -> None:
    root, champion, challenger = store
    ledger = tmp_path / "serving" / "outcomes.sqlite"
    start(root, ledger, champion, challenger)
    serve(ledger, "iris-2", "classifier-1", requests=1500, feedback=1500, ones=1350)
    serve(ledger, "iris-2", "classifier-2", requests=1500, feedback=1500, ones=1470)
    publish_model(root, "iris", train_iris(c=0.5), run_id="elsewhere", version="v3")
    promote_version(root, "iris", "v3", run_id="elsewhere")

    conclusion = conclude(root)

    assert conclusion.action == NOT_PROMOTED and "the champion is v3 now, not v1" in conclusion.summary
    assert read_champion(root, "iris").version == "v3"  # type: ignore[union-attr]
    assert read_experiment(root, "iris", "iris-2").status == CONCLUDED


def test_with_a_schedule_and_guardrails_passed_the_split_moves_one_step_on_the_same_experiment(
        store: tuple[str, PublishedModel, PublishedModel], state_root: Path) -> None:
    root, champion, challenger = store
    deployed = deploy_challenger(
        "local", artifact_root=root, model_name="iris", champion_version="v1", challenger_version="v2",
        model_a_uri=champion.uri, model_b_uri=challenger.uri, ratio_a=0.5, ratio_schedule="0.8,0.5", image="",
        namespace="", name="iris-ab", local_state_dir=str(state_root), local_port=free_port(), prometheus_url="",
        run_id="run-2")
    experiment = deployed.experiment
    assert experiment is not None
    first_release = current_deployment(state_root)
    assert first_release is not None and first_release.ratio_a == 0.8
    first_ledger = Path(experiment.outcomes[0][len(LEDGER):])
    serve(first_ledger, experiment.id, "classifier-1", requests=400, feedback=40, ones=36)
    serve(first_ledger, experiment.id, "classifier-2", requests=100, feedback=10, ones=9)

    moved = conclude(root, state_root=state_root)

    assert not moved.proceed and moved.action == MOVED
    assert "the champion's share moves from 0.8 to 0.5" in moved.summary
    release = current_deployment(state_root)
    assert release is not None and release.release != first_release.release
    assert (release.ratio_a, release.experiment_id, release.port) == (0.5, experiment.id, first_release.port)
    assert (release.model_a_uri, release.model_b_uri) == (first_release.model_a_uri, first_release.model_b_uri)
    record = read_experiment(root, "iris", experiment.id)
    assert record.status == RUNNING and record.ratio_a == 0.5
    assert [step["ratio_a"] for step in record.traffic] == [0.8, 0.5]
    assert record.outcomes == (experiment.outcomes[0], f"{LEDGER}{release.serving_state_dir}/outcomes.sqlite")
    assert record.decisions[-1]["action"] == MOVED and record.decisions[-1]["ratio_a"] == 0.5

    # The schedule's end: the split stays, and the outcomes of both releases count.
    serve(Path(record.outcomes[1][len(LEDGER):]), experiment.id, "classifier-2", requests=5, feedback=5, ones=5)
    stays = conclude(root, state_root=state_root)
    assert stays.action == WAITING and current_deployment(state_root) == release
    assert stays.decision is not None and stays.decision.challenger.feedback == 15


def test_pending_guardrails_hold_the_split_where_it_is(
        store: tuple[str, PublishedModel, PublishedModel], tmp_path: Path) -> None:
    root, champion, challenger = store
    ledger = tmp_path / "serving" / "outcomes.sqlite"
    arms = (Arm("classifier-1", "v1", champion.uri, CHAMPION), Arm("classifier-2", "v2", challenger.uri, CHALLENGER))
    start_experiment(root, experiment_id="iris-2", model_name="iris", target="local", deployment_name="iris-ab",
                     endpoint="http://127.0.0.1:1", arms=arms, ratio_a=0.9, outcomes=f"{LEDGER}{ledger}",
                     run_id="run-2", ratio_schedule=(0.9, 0.5))
    serve(ledger, "iris-2", "classifier-1", requests=900, feedback=0, ones=0)
    serve(ledger, "iris-2", "classifier-2", requests=99, feedback=0, ones=0)

    conclusion = conclude(root)

    assert conclusion.action == WAITING
    assert "the split stays at 0.9 until every guardrail has passed" in conclusion.summary
    assert read_experiment(root, "iris", "iris-2").ratio_a == 0.9


def test_parameters_are_checked_with_the_fix() -> None:
    with pytest.raises(ValueError, match="on_undecided must be wait .* or replace .*, got 'later'"):
        conclude_experiment("/nowhere", "iris", on_undecided="later", rules=RULES, run_id="r", local_state_dir="")
    with pytest.raises(ValueError, match=r"max_duration_hours must be >= 0 \(0: no limit\)"):
        rules_from(0.05, 100, -1, 5)
    assert rules_from(0.05, 100, 0, 5) == Rules()
    custom = rules_from(0.1, 50, 2, 250)
    assert (custom.alpha, custom.min_feedback, custom.max_duration_seconds, custom.p99_slack_seconds) == (
        0.1, 50, 7200, 0.25)
