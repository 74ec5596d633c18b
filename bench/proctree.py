"""A server under test as a whole process tree.

Every server we measure is several processes: abflow runs an executor plus one model server per arm,
the Seldon wrapper forks gunicorn, a gRPC server and a metrics server, MLServer may fork workers.
Charging only the parent would flatter whoever forks the most, so CPU and memory are summed over the
parent and all its descendants, read straight from /proc (Linux only, like the servers' targets).
Each server starts in its own session, so stopping it means signalling its process group and then
anything of its tree that escaped the group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _parent_pids() -> dict[int, int]:
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        # Field 4 is the parent pid; fields are counted after the command name, which may hold spaces.
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def process_tree(root: int) -> list[int]:
    """``root`` and every live descendant of it."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parent_pids().items():
        children.setdefault(parent, []).append(pid)
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, ()))
    return tree


def _start_ticks(pid: int) -> int | None:
    """When the process started (field 22 of stat): with the pid, an identity that a recycled pid
    cannot fake."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except OSError:
        return None


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / CLOCK_TICKS


def pss_bytes(pids: list[int]) -> int:
    """Proportional set size summed over the processes: shared pages are split among their users, so
    the sum is what the tree really costs the machine (RSS would count shared libraries N times)."""
    total = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
    return total


def machine_busy_seconds() -> float:
    """CPU time all cores spent not idle since boot: the run's share of it that is neither the server
    nor the load generator is the background load that makes numbers noisy."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


class ServerProcess:
    """One server command started in its own session, its output kept in a log file."""

    def __init__(self, command: list[str], *, env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self.command = command
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def tree(self) -> list[int]:
        return process_tree(self.pid)

    def exited(self) -> int | None:
        return self.process.poll()

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the group (a server's own graceful shutdown), SIGKILL whatever is left after
        ``grace`` seconds, including descendants that moved to a group of their own."""
        tree = {pid: _start_ticks(pid) for pid in self.tree()} if self.exited() is None else {}
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace)
        for pid, started in tree.items():
            if started is not None and _start_ticks(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.process.wait()
        self._log.close()

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
