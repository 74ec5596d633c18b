"""After large bodies go, the executor collects their garbage cycles and trims the heap once per burst."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable

from abflow.serving.heap import HeapTrimmer
from abflow.serving.http import start_http
from abflow.serving.limits import EndpointLimits
from abflow.serving.metrics import ServingMetrics
from abflow.serving.service import Call, Reply, UrlDispatch, status_reply


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_a_burst_of_releases_is_one_collection_and_one_trim_that_frees_cycles() -> None:
    trims: list[int] = []

    async def burst() -> tuple[int, bool]:
        trimmer = HeapTrimmer(lambda: True, trim=lambda: trims.append(1), delay=0.05)
        gc.disable()  # only the trimmer may collect the cycle
        try:
            garbage = Cycle()
            alive = weakref.ref(garbage)
            del garbage
            for _ in range(5):
                trimmer.freed()
            await until(lambda: not trimmer.scheduled, "the trim")
        finally:
            gc.enable()
        return trimmer.trims, alive() is None

    assert asyncio.run(burst()) == (1, True)
    assert trims == [1]


def test_no_trim_while_large_bodies_are_buffered_again() -> None:
    trims: list[int] = []

    async def busy() -> int:
        trimmer = HeapTrimmer(lambda: False, trim=lambda: trims.append(1), delay=0)
        trimmer.freed()
        await until(lambda: not trimmer.scheduled, "the skipped trim")
        return trimmer.trims

    assert asyncio.run(busy()) == 0 and trims == []


def test_a_large_body_cut_off_by_its_client_leads_to_one_trim_and_small_ones_to_none() -> None:
    class Echo:
        max_body_bytes = 1 << 20

        def __init__(self) -> None:
            self.metrics = ServingMetrics()
            self.routes = UrlDispatch()

            async def fine(call: Call) -> Reply:
                return status_reply(200, "fine")

            self.routes.add("POST", "/fine", fine)

    async def post(port: int, declared: int, sent: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST /fine HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {declared}\r\n\r\n"
                     .encode() + b" " * sent)
        await writer.drain()
        if sent == declared:
            await reader.read()
        writer.close()
        await writer.wait_closed()

    async def exchange() -> tuple[tuple[bool, int], int]:
        service = Echo()
        endpoint = await start_http(service, "127.0.0.1", 0, limits=EndpointLimits(large_body_bytes=1024))
        try:
            await post(endpoint.port, 100, 100)
            after_small = (endpoint.heap.scheduled, endpoint.heap.trims)
            await post(endpoint.port, 500_000, 200_000)
            await until(lambda: endpoint.heap.trims > 0, "the trim after the large body")
            return after_small, endpoint.heap.trims
        finally:
            await endpoint.stop()

    assert asyncio.run(exchange()) == ((False, 0), 1)
