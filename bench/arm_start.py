"""Two arms started three ways, measured in one run: is abflow's zygote worth its code?

``abflow serve`` forks its arms from a zygote (``abflow.serving.zygote``: a process that imported the
model runtime once, controlled over a SEQPACKET socket with fd passing). Issue 7 asks to keep it only
if the standard library's equivalent costs real start-up time or memory. This measures, for an A/B
graph's two arms serving the pipeline's own iris model, per round:

* ``zygote`` — abflow's ``Zygote`` spawning both arms (its production path);
* ``forkserver`` — ``multiprocessing``'s forkserver with ``set_forkserver_preload`` of the same
  modules the zygote preloads, starting ``abflow.serving.modelserver.main`` in two ``Process``es;
* ``subprocess`` — two fresh ``python -m abflow.serving.modelserver`` interpreters (what the zygote
  replaced).

Each round starts from nothing (the zygote and the forkserver are started inside the round, as on
``abflow serve``'s start) and ends when both arms answer on their unix sockets with their hello.
Reported: wall seconds to both arms ready, CPU seconds of the whole tree, and the tree's PSS (each
page shared copy-on-write counted once), medians over the rounds.

    python bench/arm_start.py              # 5 rounds per way, about a minute
    python bench/arm_start.py --rounds 9
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proctree import cpu_seconds, process_tree, pss_bytes
from provenance import git_revision
from serving_bench import RESULTS, write_model

READY_TIMEOUT = 60.0
Started = tuple[Callable[[], None], list[int]]
"""How to stop what a way started, and the roots of its process trees."""
WAYS = ("zygote", "forkserver", "subprocess")


def hello_received(path: str) -> bool:
    """The arm accepts on its socket and says hello (its first frame) without being asked."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(path)
            return len(sock.recv(4)) > 0
        except OSError:
            return False


def wait_ready(paths: list[str]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    pending = list(paths)
    while pending:
        if time.monotonic() > deadline:
            raise SystemExit(f"arms not ready within {READY_TIMEOUT:g}s: {pending}")
        pending = [path for path in pending if not hello_received(path)]


def arm_args(model: Path, name: str, path: str) -> list[str]:
    return ["--model", str(model), "--name", name, "--socket", path]


def start_zygote(model: Path, paths: list[str]) -> Started:
    from abflow.serving.zygote import Zygote

    zygote = Zygote.start()
    loop = asyncio.new_event_loop()

    async def spawn() -> list[Any]:
        return [await zygote.spawn(arm_args(model, f"arm{i}", path)) for i, path in enumerate(paths)]

    async def kill(arms: list[Any]) -> None:
        for arm in arms:
            arm.kill()
        for arm in arms:
            await arm.wait()
        zygote.close()

    arms = loop.run_until_complete(spawn())

    def stop() -> None:
        loop.run_until_complete(kill(arms))
        loop.close()

    assert zygote.pid is not None
    return stop, [zygote.pid]


def start_forkserver(model: Path, paths: list[str]) -> Started:
    from multiprocessing import forkserver, resource_tracker

    from abflow.serving import modelserver
    from abflow.serving.zygote import PRELOAD

    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # as the zygote's and the subprocesses' environment say
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    arms = [context.Process(target=modelserver.main, args=(arm_args(model, f"arm{i}", path),), daemon=True)
            for i, path in enumerate(paths)]
    for arm in arms:
        arm.start()

    def stop() -> None:
        for arm in arms:
            arm.kill()
            arm.join()
        # The forkserver lives as long as this process; stop it so the next round starts cold.
        server = forkserver._forkserver  # noqa: SLF001 - the stdlib has no public stop
        if server._forkserver_pid is not None:  # noqa: SLF001
            os.kill(server._forkserver_pid, 9)  # noqa: SLF001
            os.waitpid(server._forkserver_pid, 0)  # noqa: SLF001
        server._forkserver_pid = server._forkserver_address = server._forkserver_alive_fd = None  # noqa: SLF001

    # The forkserver starts multiprocessing's resource tracker: part of what this way costs.
    tracker = resource_tracker._resource_tracker._pid  # noqa: SLF001
    return stop, [forkserver._forkserver._forkserver_pid, *([tracker] if tracker else [])]  # noqa: SLF001


def start_subprocesses(model: Path, paths: list[str]) -> Started:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    arms = [subprocess.Popen([sys.executable, "-m", "abflow.serving.modelserver",
                              *arm_args(model, f"arm{i}", path)], env=env, stdout=subprocess.DEVNULL)
            for i, path in enumerate(paths)]

    def stop() -> None:
        for arm in arms:
            arm.kill()
            arm.wait()

    return stop, [arm.pid for arm in arms]


STARTERS = {"zygote": start_zygote, "forkserver": start_forkserver, "subprocess": start_subprocesses}


def one_round(way: str, model: Path, folder: Path) -> dict[str, float]:
    paths = [str(folder / f"{way}-arm{i}.sock") for i in range(2)]
    for path in paths:
        with suppress(FileNotFoundError):
            os.unlink(path)
    started = time.monotonic()
    stop, roots = STARTERS[way](model, paths)
    try:
        wait_ready(paths)
        seconds = time.monotonic() - started
        tree = [pid for root in roots for pid in process_tree(root)]
        measured = {"ready_s": seconds, "cpu_s": cpu_seconds(tree), "pss_mib": pss_bytes(tree) / 2**20,
                    "processes": float(len(tree))}
    finally:
        stop()
    return measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per way, interleaved (default 5)")
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory(prefix="abflow-arm-start-") as tmp:
        folder = Path(tmp)
        model = write_model(folder / "store")
        load_before = os.getloadavg()[0]
        for round_number in range(args.rounds):
            for way in WAYS:
                results[way].append(one_round(way, model, folder))
            print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        load_after = os.getloadavg()[0]
    medians = {way: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
               for way, rounds in results.items()}
    base = medians["zygote"]
    print("| way | both arms ready s | ÷ zygote | tree CPU s | tree PSS MiB | ÷ zygote | processes |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for way, m in medians.items():
        print(f"| {way} | {m['ready_s']:.2f} | {m['ready_s'] / base['ready_s']:.2f}× | {m['cpu_s']:.2f} | "
              f"{m['pss_mib']:.1f} | {m['pss_mib'] / base['pss_mib']:.2f}× | {m['processes']:.0f} |")
    revision = git_revision(["serving"])
    print(f"\n`python bench/arm_start.py --rounds {args.rounds}` on {os.cpu_count()} CPUs, medians of "
          f"{args.rounds} interleaved rounds, load average before {load_before:.2f}, after {load_after:.2f}; "
          f"abflow {revision}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"arm-start-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps({"revision": revision, "rounds": results, "medians": medians}, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
