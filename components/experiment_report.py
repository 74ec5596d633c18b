"""The experiment's report: one self-contained HTML page a person reads to trust (or overrule) a decision.

The ``conclude`` step hands it to KFP as its ``HTML`` artifact and ``abflow experiment decide --html``
writes it as a file, so it must open anywhere: no script, no stylesheet or font from a CDN, charts as
inline SVG. It shows what the decision rests on, in the order a reviewer asks: which version each arm
serves and which is champion; the traffic each got and how the split moved; the mean reward per arm
and the confidence sequence of their difference over time; the guardrails; the decision and why.

The ledger and Prometheus keep running totals only, so the curve over time is drawn from the totals
each recorded decision saved in the experiment record (a nightly ``conclude`` saves one per night)
plus the decision being reported. A confidence sequence is valid at every look at once, so reading
the whole curve, not only its last point, is sound.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from abflow.components.decision import (
    CONTINUE,
    KEEP,
    PROMOTE,
    Decision,
    Guardrail,
    Rewards,
    SequencePoint,
    Snapshot,
    mixture_phi,
    sequence_over_time,
)
from abflow.components.experiment import CHAMPION, Experiment
from abflow.serving.ledger import ArmOutcomes

CHAMPION_COLOUR = "#1f5fa8"
CHALLENGER_COLOUR = "#d9480f"
BAND_COLOUR = "#5c940d"
DECISION_COLOURS = {PROMOTE: "#2b8a3e", KEEP: "#1f5fa8", CONTINUE: "#a66d00"}

WIDTH = 900
PLOT_LEFT = 70
PLOT_RIGHT = 20
PANEL_HEIGHT = 190
PANEL_TOP = 30
PANEL_GAP = 60

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #212529;
       margin: 24px auto; max-width: 960px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.sub { color: #555; margin: 0 0 12px; }
.verdict { border-left: 6px solid; padding: 10px 14px; background: #f8f9fa; margin: 14px 0; }
.verdict b { text-transform: uppercase; letter-spacing: .04em; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #dee2e6; vertical-align: top; }
th { background: #f1f3f5; font-weight: 600; } td.when { white-space: nowrap; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td code, th { white-space: nowrap; } .uri { word-break: break-all; }
.tag { display: inline-block; padding: 0 7px; border-radius: 9px; color: #fff; font-size: 12px; font-weight: 600; }
.pass { color: #2b8a3e; font-weight: 600; } .fail { color: #c92a2a; font-weight: 600; }
.pending { color: #a66d00; font-weight: 600; }
.note { color: #555; font-size: 13px; } code { font-size: 13px; }
svg { display: block; margin: 6px 0; max-width: 100%; height: auto; }
svg text { font: 12px system-ui, sans-serif; fill: #343a40; }
"""


@dataclass(frozen=True)
class _Panel:
    """One chart panel's value range and its position on the page (SVG user units)."""

    top: float
    low: float
    high: float

    def y(self, value: float) -> float:
        share = (min(max(value, self.low), self.high) - self.low) / (self.high - self.low)
        return self.top + PANEL_HEIGHT * (1 - share)


def render_experiment_report(experiment: Experiment, outcomes: Mapping[str, ArmOutcomes], decision: Decision) -> str:
    """The whole page for ``decision`` on ``experiment``, whose arms' current totals are ``outcomes``."""
    started = _unix(experiment.started_at)
    decided_at = started + decision.elapsed_seconds if started is not None else None
    points = sequence_over_time(reward_snapshots(experiment, decision, decided_at), alpha=decision.rules.alpha,
                                tuned_for_feedback=decision.rules.tuned_for_feedback)
    colour = DECISION_COLOURS.get(decision.decision, "#495057")
    title = f"Experiment {experiment.id}: {decision.decision}"
    return "\n".join([
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_e(experiment.model_name)}: {_e(experiment.champion.version)} (champion) vs "
        f"{_e(experiment.challenger.version)} (challenger)</h1>",
        f'<p class="sub">experiment <code>{_e(experiment.id)}</code> · {_e(experiment.status)} · '
        f"{_e(experiment.target)} endpoint <code>{_e(experiment.endpoint)}</code> · started "
        f"{_e(_when(experiment.started_at))} by <code>{_e(experiment.started_by)}</code> · "
        f"{_e(_duration(decision.elapsed_seconds))} of traffic</p>",
        f'<div class="verdict" style="border-color:{colour}"><b style="color:{colour}">{_e(decision.decision)}</b> '
        f"— {_e(decision.reason)}</div>",
        "<h2>Arms</h2>",
        _arms_table(experiment, outcomes, decision),
        "<h2>Traffic</h2>",
        _traffic_section(experiment, decision, decided_at),
        "<h2>Mean reward and its confidence sequence</h2>",
        _reward_section(points, decision),
        "<h2>Guardrails</h2>",
        _guardrails_table(decision.guardrails, decision),
        "<h2>The decision</h2>",
        _decision_section(decision),
        "<h2>Decisions on record</h2>",
        _history_table(experiment),
        "</body></html>",
    ])


def reward_snapshots(experiment: Experiment, decision: Decision, decided_at: float | None) -> list[Snapshot]:
    """Both arms' reward totals at each recorded decision with any reward, then at ``decision``
    (dropped when it has no reward, or when a recorded one already holds the same totals: ``conclude``
    renders after recording)."""
    snapshots = [snapshot for snapshot in map(_recorded_snapshot, experiment.decisions)
                 if snapshot is not None and snapshot.champion.count + snapshot.challenger.count > 0]
    if decided_at is not None and decision.champion.feedback + decision.challenger.feedback > 0:
        current = Snapshot(decided_at, decision.champion.rewards, decision.challenger.rewards)
        if not snapshots or (snapshots[-1].champion, snapshots[-1].challenger) != (current.champion,
                                                                                     current.challenger):
            snapshots.append(current)
    return sorted(snapshots, key=lambda snapshot: snapshot.at)


def _recorded_snapshot(recorded: Mapping[str, Any]) -> Snapshot | None:
    """The totals a recorded decision saved (``Decision.to_dict``'s arms), or ``None`` if it lacks them."""
    at = _unix(str(recorded.get("at", "")))
    try:
        arms = {arm["role"]: Rewards(int(arm["feedback"]), float(arm["reward_sum"]), float(arm["reward_sum_squares"]))
                for arm in recorded["arms"]}
        return None if at is None else Snapshot(at, arms["champion"], arms["challenger"])
    except (KeyError, TypeError, ValueError):
        return None


def _arms_table(experiment: Experiment, outcomes: Mapping[str, ArmOutcomes], decision: Decision) -> str:
    rows = []
    for summary in (decision.champion, decision.challenger):
        arm = next((arm for arm in experiment.arms if arm.name == summary.name), None)
        share = experiment.ratio_a if summary.role == CHAMPION else 1 - experiment.ratio_a
        colour = CHAMPION_COLOUR if summary.role == CHAMPION else CHALLENGER_COLOUR
        served = outcomes.get(summary.name)
        errors = ", ".join(f"{status}: {count}" for status, count in sorted(served.errors.items())) if served else ""
        rows.append(
            f'<tr><td><span class="tag" style="background:{colour}">{_e(summary.role)}</span></td>'
            f"<td><code>{_e(summary.name)}</code></td><td><b>{_e(summary.version)}</b><br>"
            f'<span class="note uri">{_e(arm.model_uri if arm else "")}</span></td>'
            f'<td class="n">{share:.0%}</td><td class="n">{summary.requests}</td>'
            f'<td class="n">{summary.error_rate:.2%}<br><span class="note">{_e(errors or "no errors")}</span></td>'
            f'<td class="n">{_ms(summary.p99_seconds)}</td><td class="n">{summary.feedback}</td>'
            f'<td class="n">{_number(summary.mean_reward)}</td></tr>')
    return ('<table><tr><th>role</th><th>arm</th><th>version</th><th class="n">share now</th>'
            '<th class="n">requests</th><th class="n">5xx rate</th><th class="n">p99</th><th class="n">feedback</th>'
            f'<th class="n">mean reward</th></tr>{"".join(rows)}</table>')


def _traffic_section(experiment: Experiment, decision: Decision, decided_at: float | None) -> str:
    champion, challenger = decision.champion, decision.challenger
    total = champion.requests + challenger.requests
    observed = f"{champion.requests / total:.1%}" if total else "no requests yet"
    splits = [(_unix(str(step.get("at", ""))), float(step.get("ratio_a", experiment.ratio_a)), str(step.get("by", "")))
              for step in experiment.traffic]
    rows = "".join(f'<tr><td>{_e(_when_unix(at))}</td><td class="n">{ratio:.0%}</td>'
                   f'<td class="n">{1 - ratio:.0%}</td><td><code>{_e(by)}</code></td></tr>'
                   for at, ratio, by in splits)
    shares = _observed_shares(experiment, decision, decided_at)
    chart = _split_chart([(at, ratio) for at, ratio, _ in splits if at is not None], shares, decided_at)
    return (f"<p>{total} requests: champion {champion.requests}, challenger {challenger.requests} "
            f"(champion's observed share {observed}, configured {experiment.ratio_a:.0%}).</p>{chart}"
            '<table><tr><th>from</th><th class="n">champion share</th><th class="n">challenger share</th>'
            f"<th>set by</th></tr>{rows}</table>")


def _observed_shares(experiment: Experiment, decision: Decision, decided_at: float | None) -> list[tuple[float, float]]:
    """The champion's share of all requests so far, at each recorded decision and at ``decision``."""
    counts = []
    for recorded in experiment.decisions:
        at = _unix(str(recorded.get("at", "")))
        try:
            requests = {arm["role"]: int(arm["requests"]) for arm in recorded["arms"]}
            counts.append((at, requests["champion"], requests["challenger"]))
        except (KeyError, TypeError, ValueError):
            continue
    counts.append((decided_at, decision.champion.requests, decision.challenger.requests))
    return [(at, a / (a + b)) for at, a, b in counts if at is not None and a + b > 0]


def _split_chart(splits: Sequence[tuple[float, float]], shares: Sequence[tuple[float, float]],
                 until: float | None) -> str:
    """The champion's configured share as a step line from the start to the decision, and its
    observed share of the requests so far as dots."""
    if not splits:
        return '<p class="note">The record lists no split.</p>'
    start = splits[0][0]
    end = max(until or start, splits[-1][0], *(at for at, _ in shares), start + 1)
    top, height = 22, 120

    def x(at: float) -> float:
        return PLOT_LEFT + (WIDTH - PLOT_LEFT - PLOT_RIGHT) * (at - start) / (end - start)

    def y(ratio: float) -> float:
        return top + height * (1 - min(max(ratio, 0.0), 1.0))

    path = [f"M{x(splits[0][0]):.1f} {y(splits[0][1]):.1f}"]
    for at, ratio in splits[1:]:
        path.append(f"H{x(at):.1f} V{y(ratio):.1f}")
    path.append(f"H{x(end):.1f}")
    grid = "".join(f'<line x1="{PLOT_LEFT}" x2="{WIDTH - PLOT_RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                   f'stroke="#e9ecef"/><text x="{PLOT_LEFT - 8}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.0%}</text>'
                   for v in (0.0, 0.25, 0.5, 0.75, 1.0))
    dots = "".join(f'<circle cx="{x(at):.1f}" cy="{y(share):.1f}" r="4" fill="#fff" stroke="{CHAMPION_COLOUR}" '
                   f'stroke-width="2"><title>observed {share:.1%}</title></circle>' for at, share in shares)
    labels = _time_labels([start, *(at for at, _ in splits), end], x, top + height + 18)
    legend = (f'<text x="{PLOT_LEFT}" y="12">champion\'s share of traffic: configured (line), observed so far '
              "(circles)</text>")
    return (f'<svg width="100%" viewBox="0 0 {WIDTH} {top + height + 30}" role="img" '
            f'aria-label="champion share of traffic over time">{grid}'
            f'<path d="{" ".join(path)}" fill="none" stroke="{CHAMPION_COLOUR}" stroke-width="2.5"/>'
            f"{dots}{labels}{legend}</svg>")


def _reward_section(points: Sequence[SequencePoint], decision: Decision) -> str:
    level = f"{1 - decision.rules.alpha:.0%}"
    if not points:
        return '<p class="note">No rewards on record yet.</p>'
    return (_reward_chart(points, level)
            + f'<p class="note">Top: each arm\'s mean reward at every recorded decision and now (n = feedbacks). '
              f"Bottom: challenger − champion with its {level} anytime-valid confidence sequence (shaded): valid "
              "at every point at once, however often it is looked at. Entirely above 0 promotes, entirely below 0 "
              "keeps; an arrow marks a side the test cannot bound yet (too few rewards, or none varied).</p>")


def _reward_chart(points: Sequence[SequencePoint], level: str) -> str:
    start = points[0].at
    end = points[-1].at if points[-1].at > start else start + 1
    left, right = PLOT_LEFT + 20, WIDTH - PLOT_RIGHT - 20

    def x(at: float) -> float:
        return (left + right) / 2 if len(points) == 1 else left + (right - left) * (at - start) / (end - start)

    means = [m for p in points for m in (p.champion_mean, p.challenger_mean) if m is not None]
    top = _Panel(PANEL_TOP, *_range(means, pad_to=0.02))
    differences = [v for p in points for v in (p.bounds.difference, p.bounds.lower, p.bounds.upper)
                   if v is not None and math.isfinite(v)]
    bottom = _Panel(PANEL_TOP + PANEL_HEIGHT + PANEL_GAP, *_range([*differences, 0.0], pad_to=0.02))
    parts = [_axes(top, "mean reward"), _axes(bottom, f"challenger − champion, {level} confidence sequence")]
    series = (("champion", CHAMPION_COLOUR, 5.5, [(p.at, p.champion_mean, p.champion_feedback) for p in points]),
              ("challenger", CHALLENGER_COLOUR, 3.5,
               [(p.at, p.challenger_mean, p.challenger_feedback) for p in points]))
    legend_x = float(WIDTH - PLOT_RIGHT)
    for role, colour, _, values in reversed(series):
        drawn = [(x(at), top.y(mean), mean, n) for at, mean, n in values if mean is not None]
        if len(drawn) > 1:
            parts.append(f'<polyline points="{" ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in drawn)}" '
                         f'fill="none" stroke="{colour}" stroke-width="2"/>')
        label = f"{role} {drawn[-1][2]:.3f} (n={drawn[-1][3]})" if drawn else f"{role}: no reward yet"
        parts.append(f'<text x="{legend_x:.1f}" y="{top.top - 10}" text-anchor="end" style="fill:{colour}">'
                     f"● {_e(label)}</text>")
        legend_x -= len(label) * 6.6 + 30
    for role, colour, radius, values in series:
        for at, mean, n in values:
            if mean is not None:
                parts.append(f'<circle cx="{x(at):.1f}" cy="{top.y(mean):.1f}" r="{radius}" fill="{colour}">'
                             f"<title>{role}: {mean:.4f} (n={n})</title></circle>")
    parts.append(_band(points, bottom, x))
    zero = bottom.y(0.0)
    parts.append(f'<line x1="{PLOT_LEFT}" x2="{WIDTH - PLOT_RIGHT}" y1="{zero:.1f}" y2="{zero:.1f}" stroke="#212529" '
                 'stroke-dasharray="4 3"/>')
    ticks = [p.at for p in points]
    parts.append(_time_labels(ticks, x, bottom.top + PANEL_HEIGHT + 18))
    height = bottom.top + PANEL_HEIGHT + 30
    return (f'<svg width="100%" viewBox="0 0 {WIDTH} {height}" role="img" '
            f'aria-label="mean reward per arm and the confidence sequence over time">{"".join(parts)}</svg>')


def _band(points: Sequence[SequencePoint], panel: _Panel, x: Callable[[float], float]) -> str:
    """The confidence sequence as a shaded band (an interval bar at each point) and the difference."""
    parts = []
    bounded = [(x(p.at), panel.y(p.bounds.lower), panel.y(p.bounds.upper)) for p in points]
    if len(bounded) > 1:
        outline = [f"{px:.1f},{low:.1f}" for px, low, _ in bounded] + [f"{px:.1f},{up:.1f}"
                                                                        for px, _, up in reversed(bounded)]
        parts.append(f'<polygon points="{" ".join(outline)}" fill="{BAND_COLOUR}" fill-opacity="0.18" stroke="none"/>')
    for p, (px, low, up) in zip(points, bounded, strict=True):
        parts.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{low:.1f}" y2="{up:.1f}" stroke="{BAND_COLOUR}" '
                     'stroke-width="6" stroke-opacity="0.45"/>')
        for bound, edge, direction in ((p.bounds.lower, low, 1), (p.bounds.upper, up, -1)):
            if math.isinf(bound):
                parts.append(f'<path d="M{px - 6:.1f} {edge - 8 * direction:.1f} L{px:.1f} {edge:.1f} '
                             f'L{px + 6:.1f} {edge - 8 * direction:.1f}" fill="none" stroke="{BAND_COLOUR}" '
                             'stroke-width="2"/>')
        if p.bounds.difference is not None:
            middle = panel.y(p.bounds.difference)
            interval = f"[{_bound(p.bounds.lower)}, {_bound(p.bounds.upper)}]"
            parts.append(f'<circle cx="{px:.1f}" cy="{middle:.1f}" r="4" fill="#212529"><title>difference '
                         f"{p.bounds.difference:+.4f}, sequence {interval}</title></circle>")
    last = points[-1]
    if last.bounds.difference is not None:
        parts.append(f'<text x="{WIDTH - PLOT_RIGHT}" y="{panel.top - 10}" text-anchor="end">now: '
                     f"{last.bounds.difference:+.4f} in [{_bound(last.bounds.lower)}, {_bound(last.bounds.upper)}]"
                     "</text>")
    return "".join(parts)


def _axes(panel: _Panel, title: str) -> str:
    parts = [f'<text x="{PLOT_LEFT}" y="{panel.top - 10}" font-weight="600">{_e(title)}</text>',
             f'<rect x="{PLOT_LEFT}" y="{panel.top}" width="{WIDTH - PLOT_LEFT - PLOT_RIGHT}" '
             f'height="{PANEL_HEIGHT}" fill="none" stroke="#ced4da"/>']
    for value in _ticks(panel.low, panel.high):
        y = panel.y(value)
        parts.append(f'<line x1="{PLOT_LEFT}" x2="{WIDTH - PLOT_RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#f1f3f5"/>'
                     f'<text x="{PLOT_LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{value:g}</text>')
    return "".join(parts)


def _time_labels(moments: Iterable[float], x: Callable[[float], float], y: float) -> str:
    """UTC times under the plot, leaving out any that would overlap the one before; labels near the
    plot's edges are aligned to them so they stay on the page."""
    ordered = sorted(set(moments))
    span = ordered[-1] - ordered[0] if ordered else 0.0
    parts, occupied_to = [], -math.inf
    for at in ordered:
        px, text = x(at), _when_unix(at, span)
        width = len(text) * 6.6
        anchor, left = (("end", px - width) if px + width / 2 > WIDTH - PLOT_RIGHT else
                        ("start", px) if px - width / 2 < PLOT_LEFT else ("middle", px - width / 2))
        if left < occupied_to + 12:
            continue
        occupied_to = left + width
        parts.append(f'<text x="{px:.1f}" y="{y:.1f}" text-anchor="{anchor}">{_e(text)}</text>')
    return "".join(parts)


def _guardrails_table(guardrails: Sequence[Guardrail], decision: Decision) -> str:
    rows = []
    for guardrail in guardrails:
        verdict, css = (("pending", "pending") if guardrail.passed is None else
                        ("passed", "pass") if guardrail.passed else ("failed", "fail"))
        scale, unit = (1000.0, " ms") if "latency" in guardrail.name else (100.0, " %")
        value = "—" if guardrail.challenger is None else f"{guardrail.challenger * scale:.2f}{unit}"
        limit = "—" if guardrail.limit is None else f"{guardrail.limit * scale:.2f}{unit}"
        rows.append(f'<tr><td>{_e(guardrail.name)}</td><td class="{css}">{verdict}</td><td class="n">{value}</td>'
                    f'<td class="n">{limit}</td><td>{_e(guardrail.detail)}</td></tr>')
    rules = decision.rules
    return ('<table><tr><th>guardrail</th><th>verdict</th><th class="n">challenger</th><th class="n">limit</th>'
            f'<th>detail</th></tr>{"".join(rows)}</table><p class="note">As Flagger checks a canary: the '
            f"challenger's 5xx rate may exceed the champion's by {rules.max_error_rate_increase:.2%}, its p99 may be "
            f"{rules.max_p99_ratio:g} × the champion's + {rules.p99_slack_seconds * 1000:g} ms; judged from "
            f"{rules.min_requests} requests per arm. A failed guardrail keeps the champion whatever the rewards "
            "say.</p>")


def _decision_section(decision: Decision) -> str:
    rules, bounds = decision.rules, decision.bounds
    difference = "—" if bounds.difference is None else f"{bounds.difference:+.4f}"
    facts = [
        ("decision", f"<b>{_e(decision.decision)}</b>"),
        ("why", _e(decision.reason)),
        ("difference of mean rewards", f"{difference} (challenger − champion)"),
        (f"{1 - rules.alpha:.0%} confidence sequence", f"[{_bound(bounds.lower)}, {_bound(bounds.upper)}]"),
        ("test", _e(decision.test)),
        ("parameters", _e(f"alpha {rules.alpha:g}, at least {rules.min_feedback} feedbacks per arm, maximum duration "
                          f"{_duration(rules.max_duration_seconds) if rules.max_duration_seconds else 'none'}, "
                          f"tuned for {rules.tuned_for_feedback} feedbacks per arm "
                          f"(phi {mixture_phi(rules.alpha, rules.tuned_for_feedback):.4g})")),
        ("elapsed", _e(_duration(decision.elapsed_seconds))),
    ]
    rows = "".join(f"<tr><th>{_e(name)}</th><td>{value}</td></tr>" for name, value in facts)
    return f"<table>{rows}</table>"


def _history_table(experiment: Experiment) -> str:
    if not experiment.decisions:
        return '<p class="note">None yet: this is the first look at the experiment.</p>'
    rows = "".join(
        f'<tr><td class="when">{_e(_when(str(entry.get("at", ""))))}</td>'
        f'<td class="when"><code>{_e(str(entry.get("by", "")))}</code></td>'
        f'<td><b>{_e(str(entry.get("decision", "")))}</b></td><td>{_e(str(entry.get("action", "")))}</td>'
        f'<td>{_e(str(entry.get("reason", "")))}</td></tr>'
        for entry in experiment.decisions)
    ended = (f'<p class="note">Ended {_e(_when(experiment.ended_at))} by <code>{_e(experiment.ended_by)}</code>: '
             f"{_e(experiment.conclusion)}.</p>" if experiment.ended_at else "")
    header = "<tr><th>when</th><th>run</th><th>decision</th><th>action</th><th>reason</th></tr>"
    return f"<table>{header}{rows}</table>{ended}"


def _range(values: Sequence[float], *, pad_to: float) -> tuple[float, float]:
    """A value range holding ``values`` with a margin, at least ``pad_to`` wide."""
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    margin = max((high - low) * 0.12, pad_to / 2)
    return low - margin, high + margin


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step) + 1)]


def _unix(stamp: str) -> float | None:
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _when(stamp: str) -> str:
    at = _unix(stamp)
    return stamp if at is None else _when_unix(at)


def _when_unix(at: float | None, span: float = math.inf) -> str:
    """A UTC time, to the second when the times around it are less than an hour apart."""
    if at is None:
        return "?"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M" + (":%S" if span < 3600 else "") + " UTC")


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.1f} ms"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _bound(value: float) -> str:
    return f"{value:+.4f}" if math.isfinite(value) else ("−∞" if value < 0 else "+∞")


def _e(text: str) -> str:
    return html.escape(text, quote=True)
