"""The experiment report: a page that opens anywhere (nothing fetched, nothing run) and says which
version serves where, what was decided and why, with the confidence sequence drawn at every look."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest

from abflow.components.decision import KEEP, PROMOTE, ArmSummary, Decision, decide
from abflow.components.experiment import (
    CHALLENGER,
    CHAMPION,
    Arm,
    Experiment,
    ledger_source,
    read_experiment,
    record_decision,
    start_experiment,
    update_experiment,
)
from abflow.components.experiment_report import render_experiment_report, reward_snapshots
from abflow.components.outcomes import arm_summaries, read_experiment_outcomes
from abflow.serving.ledger import ArmOutcomes, OutcomeLedger

ARMS = (Arm("classifier-1", "v20260101-aaaa", "file:///store/models/iris/v20260101-aaaa", CHAMPION),
        Arm("classifier-2", "v20260102-bbbb", "file:///store/models/iris/v20260102-bbbb", CHALLENGER))


class Page(HTMLParser):
    """Every start tag with its attributes, and the text, of a parsed page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def count(self, tag: str) -> int:
        return sum(1 for name, _ in self.tags if name == tag)

    @property
    def words(self) -> str:
        return " ".join(" ".join(self.text).split())


def served(root: Path, champion_ones: int, challenger_ones: int, *, feedback: int = 400,
           champion_errors: int = 0, challenger_errors: int = 0) -> Experiment:
    """An experiment in the store at ``root`` whose endpoint's real ledger holds these outcomes."""
    state = root / "serving"
    experiment = start_experiment(str(root), experiment_id="iris-20260102-220000-abcdef", model_name="iris",
                                  target="local", deployment_name="iris-ab", endpoint="http://127.0.0.1:8000",
                                  arms=ARMS, ratio_a=0.5, outcomes=ledger_source(str(state)), run_id="run-2")
    with OutcomeLedger(state / "outcomes.sqlite") as ledger:
        for arm, ones, errors in (("classifier-1", champion_ones, champion_errors),
                                  ("classifier-2", challenger_ones, challenger_errors)):
            for index in range(feedback):
                ledger.record_request(experiment.id, arm, 503 if index < errors else 200, 0.002)
                ledger.record_feedback(experiment.id, arm, 1.0 if index < ones else 0.0)
    return experiment


def decided(experiment: Experiment) -> tuple[dict[str, ArmOutcomes], Decision]:
    outcomes = read_experiment_outcomes(experiment)
    champion, challenger = arm_summaries(experiment, outcomes)
    return dict(outcomes), decide(champion, challenger, elapsed_seconds=3600.0)


def test_the_report_says_who_serves_what_and_what_was_decided(tmp_path: Path) -> None:
    experiment = served(tmp_path, champion_ones=300, challenger_ones=380)
    outcomes, decision = decided(experiment)
    assert decision.decision == PROMOTE
    page = Page(render_experiment_report(experiment, outcomes, decision))
    words = page.words
    assert "iris: v20260101-aaaa (champion) vs v20260102-bbbb (challenger)" in words
    assert "champion classifier-1 v20260101-aaaa file:///store/models/iris/v20260101-aaaa 50% 400" in words
    assert "challenger classifier-2 v20260102-bbbb file:///store/models/iris/v20260102-bbbb 50% 400" in words
    assert "0.7500" in words and "0.9500" in words, "each arm's mean reward"
    assert f"promote — {decision.reason}" in words
    assert "error rate passed" in words and "p99 latency passed" in words
    assert "[+0.1" in words and decision.test in words


def test_a_failed_guardrail_is_shown_as_the_reason_to_keep(tmp_path: Path) -> None:
    experiment = served(tmp_path, champion_ones=300, challenger_ones=380, challenger_errors=40)
    outcomes, decision = decided(experiment)
    assert decision.decision == KEEP
    words = Page(render_experiment_report(experiment, outcomes, decision)).words
    assert "error rate failed 10.00 % 1.00 %" in words
    assert "503: 40" in words
    assert f"keep — {decision.reason}" in words


def test_the_page_is_self_contained_and_escapes_what_it_shows(tmp_path: Path) -> None:
    experiment = served(tmp_path, champion_ones=300, challenger_ones=310)
    hostile = Experiment(**{**experiment.__dict__, "endpoint": "http://x/<script>alert(1)</script>"})
    outcomes, decision = decided(hostile)
    text = render_experiment_report(hostile, outcomes, decision)
    page = Page(text)
    assert page.count("script") == 0 and "&lt;script&gt;" in text
    assert page.count("svg") == 2, "the traffic chart and the reward chart, inline"
    for tag, attributes in page.tags:
        assert not {"src", "href"} & attributes.keys(), f"<{tag}> would fetch something: {attributes}"
    assert "url(" not in text and "@import" not in text


def test_the_sequence_is_drawn_at_every_recorded_decision_and_now(tmp_path: Path) -> None:
    experiment = served(tmp_path, champion_ones=300, challenger_ones=310)
    outcomes, first = decided(experiment)
    for run in ("run-3", "run-4"):
        update_experiment(str(tmp_path), "iris", experiment.id,
                          lambda stored, run=run: record_decision(stored, first.to_dict(), run_id=run, ends_it=False))
    recorded = read_experiment(str(tmp_path), "iris", experiment.id)
    with OutcomeLedger(tmp_path / "serving" / "outcomes.sqlite") as ledger:
        for _ in range(100):
            ledger.record_feedback(experiment.id, "classifier-2", 1.0)
    outcomes, now = decided(recorded)
    snapshots = reward_snapshots(recorded, now, 1e10)
    assert [(s.champion.count, s.challenger.count) for s in snapshots] == [(400, 400), (400, 400), (400, 500)]
    page = Page(render_experiment_report(recorded, outcomes, now))
    assert page.count("polygon") == 1, "the band between the looks"
    differences = [text for text in page.text if text.startswith("difference ") and ", sequence [" in text]
    assert len(differences) == 3, differences
    assert "now: +0.0700 in [" in page.words, "challenger 410/500 against champion 300/400"


def test_a_decision_already_on_record_is_not_drawn_twice(tmp_path: Path) -> None:
    experiment = served(tmp_path, champion_ones=300, challenger_ones=310)
    outcomes, decision = decided(experiment)
    update_experiment(str(tmp_path), "iris", experiment.id,
                      lambda stored: record_decision(stored, decision.to_dict(), run_id="run-3", ends_it=False))
    recorded = read_experiment(str(tmp_path), "iris", experiment.id)
    assert len(reward_snapshots(recorded, decision, 1e10)) == 1
    page = Page(render_experiment_report(recorded, outcomes, decision))
    assert page.count("polygon") == 0 and "run-3" in page.words


@pytest.mark.parametrize("feedback", [0, 1])
def test_an_experiment_without_evidence_still_renders(feedback: int) -> None:
    def arm(name: str, version: str, role: str) -> ArmSummary:
        return ArmSummary(name, version, role, requests=3, errors=0, p99_seconds=None, feedback=feedback,
                          reward_sum=float(feedback), reward_sum_squares=float(feedback))

    experiment = Experiment(id="iris-x", model_name="iris", status="running", target="local",
                            deployment_name="iris-ab", endpoint="http://127.0.0.1:8000", arms=ARMS, ratio_a=0.9,
                            started_at="2026-01-02T22:00:00+00:00", started_by="run-2", outcomes=("ledger:/x",))
    decision = decide(arm("classifier-1", "v20260101-aaaa", CHAMPION), arm("classifier-2", "v20260102-bbbb",
                                                                            CHALLENGER), elapsed_seconds=60.0)
    words = Page(render_experiment_report(experiment, {}, decision)).words
    assert "continue —" in words and "90%" in words
    assert ("No rewards on record yet" in words) is (feedback == 0)
    assert "The record lists no split" in words
