"""``abflow run`` wall time, per step and in total, beside a no-op pipeline with as many steps.

Both pipelines run under ``kfp.local`` (``SubprocessRunner(use_venv=False)``) in the same session,
alternately, each in a fresh process as a user would start them. A step's wall time is read from
KFP's own log, from "Executing task" to "finished with status", in both runs; its work from the
``abflow: … [N.NNs of work]`` note the step prints (``components/steplog.py``: from the step body's
first import to the note). Overhead = wall − work: what it costs to run the step at all (KFP's
subprocess, interpreter start, executor, abflow's imports before the body). A no-op step does no work,
so its wall is KFP's local runner's cost by itself; abflow's overhead ÷ that is the per-step ratio the
pipeline issue sets a target for. The total is the wall time of the whole command. The first round of
each is a warm-up (cold page cache, the first run has no champion yet); the rounds after it are the
"warm" runs the pipeline issue sets targets for. Each round trains with its own seed, so it has a new
model to deploy, and concludes the previous round's experiment (which got no traffic) with
``--on-undecided replace``, so every round runs the whole DAG: conclude, then train through smoke
test, against the first round's champion (the gate is loosened so that no seed's split stops a round).

    python bench/pipeline_bench.py               # 1 warm-up + 1 measured round
    python bench/pipeline_bench.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the step names and cleanup are abflow's

from provenance import git_revision  # noqa: E402 - a sibling module, found because this runs as a script

RESULTS = BENCH_DIR / "results"
TARGET_TOTAL_S = 20.0
TARGET_STEP_RATIO = 1.2

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
KFP_EVENT = re.compile(
    r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) - INFO - (?:Executing task '([\w-]+)'|"
    r"Task '([\w-]+)' finished with status (\w+))"
)
WORK_NOTE = re.compile(r"^\s*abflow: .*\[(\d+(?:\.\d+)?)s of work\]\s*$")
ABFLOW_LOG = re.compile(r"\(log: (.+?)\)\s*$", re.M)


@dataclass
class RunTiming:
    pipeline: str
    total_s: float
    steps: dict[str, float]
    """each step's wall seconds, in the order KFP ran them"""
    work: dict[str, float]
    """each step's own work in seconds, from its ``[N.NNs of work]`` note (no-op steps: none)"""


def step_seconds(kfp_log: str) -> tuple[dict[str, float], dict[str, float]]:
    """Each task's wall seconds from KFP's log lines (HH:MM:SS.mmm timestamps, possibly across
    midnight), and the work seconds of the last ``abflow: … [N.NNs of work]`` note inside each task."""
    started: dict[str, float] = {}
    steps: dict[str, float] = {}
    work: dict[str, float] = {}
    current: str | None = None
    for raw in kfp_log.splitlines():
        line = ANSI_ESCAPE.sub("", raw)
        note = WORK_NOTE.match(line)
        if note is not None and current is not None:
            work[current] = float(note.group(1))
            continue
        event = KFP_EVENT.match(line)
        if event is None:
            continue
        hours, minutes, seconds, millis = (int(event.group(i)) for i in range(1, 5))
        stamp = hours * 3600 + minutes * 60 + seconds + millis / 1000
        if event.group(5):
            started[event.group(5)] = stamp
            current = event.group(5)
        elif event.group(7) != "SUCCESS":
            raise RuntimeError(f"step {event.group(6)} ended with {event.group(7)}")
        else:
            steps[event.group(6)] = (stamp - started[event.group(6)]) % 86400
            current = None
    return steps, work


def timed(command: list[str], output: Path) -> tuple[float, str]:
    """Run ``command`` to completion, its output in ``output``; its wall seconds and that output."""
    began = time.monotonic()
    with output.open("w") as sink:
        finished = subprocess.run(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, check=False)
    seconds = time.monotonic() - began
    text = output.read_text()
    if finished.returncode != 0:
        tail = "\n".join(text.splitlines()[-25:])
        raise RuntimeError(f"{' '.join(command)} exited {finished.returncode}:\n{tail}")
    return seconds, text


def abflow_executable() -> str:
    beside = Path(sys.executable).parent / "abflow"
    found = str(beside) if beside.exists() else shutil.which("abflow")
    if not found:
        raise SystemExit("abflow is not installed in this interpreter: pip install -e .")
    return found


def run_abflow(data_dir: Path, port: int, output: Path, seed: int) -> RunTiming:
    """``abflow run`` on its defaults but ``seed`` (see the module docstring), with its own data folder
    and port so it touches nothing of the user's. Its per-step progress lines round to 0.1 s, so the
    steps are read from the KFP log the command names in its last line."""
    round_flags = ["--seed", str(seed), "--on-undecided", "replace", "--min-accuracy", "0.8", "--max-regression", "1"]
    seconds, text = timed([abflow_executable(), "run", "--data-dir", str(data_dir), "--local-port", str(port),
                           *round_flags], output)
    log = ABFLOW_LOG.search(text)
    if log is None:
        raise RuntimeError(f"abflow run printed no '(log: …)' line; see {output}")
    steps, work = step_seconds(Path(log.group(1)).read_text())
    silent = [name for name in steps if name not in work]
    if silent:
        raise RuntimeError(f"steps printed no '[N.NNs of work]' note: {', '.join(silent)}; see {log.group(1)}")
    return RunTiming("abflow", seconds, steps, work)


def run_noop(steps: int, pipeline_root: Path, output: Path) -> RunTiming:
    seconds, text = timed(
        [
            sys.executable,
            str(BENCH_DIR / "noop_pipeline.py"),
            "--steps",
            str(steps),
            "--pipeline-root",
            str(pipeline_root),
        ],
        output,
    )
    steps, work = step_seconds(text)
    return RunTiming("noop", seconds, steps, work)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def report(abflow_runs: list[RunTiming], noop_runs: list[RunTiming]) -> tuple[str, list[dict[str, object]]]:
    """Markdown tables and the target checks. A no-op step is the median of all no-op steps measured
    (the no-op steps are identical, so the median is the steadiest estimate of one). Per abflow step:
    the median over the measured runs of its wall, work and overhead (= wall − work)."""
    noop_step = statistics.median(s for run in noop_runs for s in run.steps.values())
    names = list(abflow_runs[0].steps)
    lines = [
        "| step | wall s | work s | overhead s | no-op step s | overhead ÷ no-op | wall ÷ no-op |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    overhead_ratios, wall_ratios = [], []
    walls, works, overheads = [], [], []
    for name in names:
        wall = statistics.median(run.steps[name] for run in abflow_runs)
        work = statistics.median(run.work[name] for run in abflow_runs)
        overhead = statistics.median(run.steps[name] - run.work[name] for run in abflow_runs)
        walls.append(wall)
        works.append(work)
        overheads.append(overhead)
        overhead_ratios.append(overhead / noop_step)
        wall_ratios.append(wall / noop_step)
        lines.append(
            f"| {name} | {wall:.2f} | {work:.2f} | {overhead:.2f} | {noop_step:.2f} | "
            f"{overhead_ratios[-1]:.2f}× | {wall_ratios[-1]:.2f}× |"
        )
    lines.append(
        f"| **all steps** | **{sum(walls):.2f}** | **{sum(works):.2f}** | **{sum(overheads):.2f}** | "
        f"{noop_step * len(names):.2f} | mean **{statistics.mean(overhead_ratios):.2f}×**, "
        f"worst **{max(overhead_ratios):.2f}×** | mean {statistics.mean(wall_ratios):.2f}× |"
    )
    abflow_total = statistics.median(run.total_s for run in abflow_runs)
    noop_total = statistics.median(run.total_s for run in noop_runs)
    abflow_outside = statistics.median(run.total_s - sum(run.steps.values()) for run in abflow_runs)
    noop_outside = statistics.median(run.total_s - sum(run.steps.values()) for run in noop_runs)
    lines += [
        "",
        f"| whole command (median of {len(abflow_runs)} warm) | abflow s | no-op s |",
        "|---|---:|---:|",
        f"| wall time | {abflow_total:.2f} | {noop_total:.2f} |",
        f"| of which outside the steps (start-up, compile, runner) | {abflow_outside:.2f} | {noop_outside:.2f} |",
    ]
    over = [name for name, r in zip(names, overhead_ratios, strict=True) if r > TARGET_STEP_RATIO]
    worst = names[overhead_ratios.index(max(overhead_ratios))]
    checks: list[dict[str, object]] = [
        {
            "what": "warm abflow run wall time (s)",
            "value": round(abflow_total, 2),
            "target": f"≤ {TARGET_TOTAL_S:g}",
            "passed": abflow_total <= TARGET_TOTAL_S,
        },
        {
            "what": f"abflow overhead ÷ no-op step, worst step ({worst})",
            "value": round(max(overhead_ratios), 2),
            "target": f"≤ {TARGET_STEP_RATIO:g}× on every step",
            "passed": not over,
            "mean_over_steps": round(statistics.mean(overhead_ratios), 2),
            "steps_over_target": over,
        },
    ]
    lines += ["", "| target | measured | goal | |", "|---|---:|---:|---|"]
    lines += [f"| {c['what']} | {c['value']} | {c['target']} | {'pass' if c['passed'] else 'FAIL'} |" for c in checks]
    if over:
        lines.append(f"\nsteps whose overhead is over {TARGET_STEP_RATIO:g}× a no-op step: {', '.join(over)}")
    return "\n".join(lines), checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: python bench/pipeline_bench.py --runs 3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=1, help="measured rounds of each pipeline (default 1)")
    parser.add_argument("--warmup-runs", type=int, default=1, help="unmeasured rounds first (default 1)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup_runs < 0:
        parser.error("--runs must be at least 1 and --warmup-runs at least 0")

    from abflow.components.local_target import stop_local
    from abflow.pipelines.pipeline import STEP_NAMES

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = RESULTS / f"pipeline-{stamp}"
    work.mkdir(parents=True)
    data_dir, port = work / "abflow-data", free_port()
    load_before = os.getloadavg()
    revision = git_revision(("serving", "components", "pipelines"))
    abflow_runs, noop_runs = [], []
    try:
        for round_number in range(args.warmup_runs + args.runs):
            kind = "warm-up" if round_number < args.warmup_runs else "measured"
            abflow = run_abflow(data_dir, port, work / f"abflow-{round_number}.out", seed=42 + round_number)
            noop = run_noop(len(STEP_NAMES), work / "noop-root", work / f"noop-{round_number}.out")
            print(
                f"round {round_number + 1} ({kind}): abflow run {abflow.total_s:.1f}s, no-op {noop.total_s:.1f}s",
                file=sys.stderr,
            )
            if kind == "measured":
                abflow_runs.append(abflow)
                noop_runs.append(noop)
    finally:
        stop_local(data_dir)  # the endpoint `abflow run` leaves behind

    load_after = os.getloadavg()
    table, checks = report(abflow_runs, noop_runs)
    command = " ".join(["python", *sys.argv])
    json_path = RESULTS / f"pipeline-{stamp}.json"
    json_path.write_text(
        json.dumps(
            {
                "command": command,
                "started": stamp,
                "cpus": os.cpu_count(),
                "load_average_before": load_before,
                "load_average_after": load_after,
                "abflow_revision": revision,
                "steps": list(STEP_NAMES),
                "abflow_runs": [asdict(r) for r in abflow_runs],
                "noop_runs": [asdict(r) for r in noop_runs],
                "checks": checks,
            },
            indent=2,
        )
    )
    print(table)
    print(
        f"\n`{command}` on {os.cpu_count()} CPUs, load average before {load_before[0]:.2f}, after "
        f"{load_after[0]:.2f}; abflow {revision}; JSON and logs: {json_path.relative_to(REPO)}, "
        f"{work.relative_to(REPO)}/"
    )
    return 0 if all(c["passed"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
