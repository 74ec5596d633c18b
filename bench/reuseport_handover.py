"""Does the blue/green handover's BPF steering save requests? Handovers with and without it, one run.

A blue/green replace binds the successor's listener beside the old one with SO_REUSEPORT
(``abflow.serving.takeover.take_over``), then the old release closes its listener. Without steering,
the kernel hashes new connections over both listeners, and whatever sits in the old one's accept
queue when it closes is reset. ``take_over`` attaches a one-instruction classic BPF program that sends
every new connection to the successor. Issue 7 asks to keep such Linux-only code only if a
measurement shows what it saves; this counts it.

Each handover: 8 client threads open a new connection per request (connect, ``ping``, ``pong``) against
the old listener; the successor binds (``take_over`` for "steered", ``bind(..., reuse_port=True)``, the
same call without the program, for "unsteered") and starts accepting; the old listener stops
accepting, answers what its queue holds and closes, as the old release does after its handover;
the clients go on a moment. A
failed request is a connect, send or receive error. The old side accepts slowly (a 1 ms pause per
connection, an executor busy with other requests), so its accept queue is rarely empty.

    python bench/reuseport_handover.py                 # 20 handovers each way, about 30 s
    python bench/reuseport_handover.py --handovers 50
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from abflow.serving.takeover import bind, take_over  # noqa: E402 - after the path it needs

CLIENTS = 8
BEFORE_S = 0.3
AFTER_S = 0.3
OLD_ACCEPT_PAUSE_S = 0.001
HANDOVER_GAP_S = 0.05


class Listener(threading.Thread):
    """Answers ``pong`` to every connection it accepts until stopped; then closes its socket."""

    def __init__(self, sock: socket.socket, pause: float) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.sock.settimeout(0.05)
        self.pause = pause
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.answer(conn)
        self.sock.close()  # as aiohttp's server does on stop: what the accept queue still holds is reset

    def answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                if conn.recv(4):
                    conn.sendall(b"pong")
            except OSError:
                pass
        time.sleep(self.pause)  # stands for the executor's other work, not synchronisation

    def stop(self) -> None:
        self.stopping.set()
        self.join()


class Client(threading.Thread):
    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stopping = threading.Event()
        self.ok = 0
        self.failed = 0

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                    sock.sendall(b"ping")
                    if sock.recv(4) == b"pong":
                        self.ok += 1
                        continue
            except OSError:
                pass
            self.failed += 1


def handover(port: int, steered: bool) -> tuple[int, int]:
    """One handover from an old listener to a successor; (requests answered, requests failed)."""
    old = Listener(bind("127.0.0.1", port, reuse_port=True), OLD_ACCEPT_PAUSE_S)
    old.start()
    clients = [Client(port) for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    time.sleep(BEFORE_S)  # load on the old release for a moment: a measured phase, not a wait
    successor = Listener(take_over("127.0.0.1", port) if steered else bind("127.0.0.1", port, reuse_port=True), 0.0)
    successor.start()
    time.sleep(HANDOVER_GAP_S)  # the old release serves on until it is told to stop: part of the scenario
    old.stop()
    time.sleep(AFTER_S)
    for client in clients:
        client.stopping.set()
    for client in clients:
        client.join()
    successor.stop()
    return sum(c.ok for c in clients), sum(c.failed for c in clients)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--handovers", type=int, default=20, help="handovers per way, interleaved (default 20)")
    args = parser.parse_args(argv)
    totals = {True: [0, 0, 0], False: [0, 0, 0]}  # answered, failed, handovers with a failure
    for _ in range(args.handovers):
        for steered in (True, False):
            ok, failed = handover(free_port(), steered)
            totals[steered][0] += ok
            totals[steered][1] += failed
            totals[steered][2] += failed > 0
    print("| handover | requests answered | requests failed | handovers with a failure |")
    print("|---|---:|---:|---:|")
    for steered, (ok, failed, bad) in totals.items():
        print(f"| {'steered (take_over, BPF)' if steered else 'unsteered (SO_REUSEPORT only)'} | {ok} | {failed} | "
              f"{bad} of {args.handovers} |")
    print(f"\n`python bench/reuseport_handover.py --handovers {args.handovers}` on {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
