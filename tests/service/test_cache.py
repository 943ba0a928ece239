"""The response cache of the hot read routes: one computation per burst, stale bodies served
while one background refresh runs, invalidation that a late refresh cannot undo, errors that
reach the next caller. And the thread-side TTL cache."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from service.cache import ResponseCache, TTLCache


class Source:
    """A compute function whose answers are numbered, and which can be held or made to fail."""

    def __init__(self, ttl: float | None = 60.0) -> None:
        self.ttl = ttl
        self.calls = 0
        self.release = threading.Event()
        self.release.set()
        self.fail: Exception | None = None

    def __call__(self) -> tuple[Any, float | None]:
        self.release.wait(10)
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return f"body-{self.calls}", self.ttl


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_burst_of_misses_costs_one_computation() -> None:
    async def go() -> list[Any]:
        cache, src = ResponseCache(), Source()
        src.release.clear()
        tasks = [asyncio.create_task(cache.get(("sweep", "s1"), src)) for _ in range(50)]
        await asyncio.sleep(0.05)
        src.release.set()
        out = await asyncio.gather(*tasks)
        assert src.calls == 1 and cache.computations == 1
        return out

    assert run(go()) == ["body-1"] * 50


def test_fresh_hits_do_not_compute_and_ttl_none_never_expires() -> None:
    async def go() -> None:
        cache, src = ResponseCache(), Source(ttl=None)
        assert await cache.get(("sweep", "s1"), src) == "body-1"
        for _ in range(100):
            assert await cache.get(("sweep", "s1"), src) == "body-1"
        assert src.calls == 1

    run(go())


def test_a_stale_body_is_served_while_one_refresh_runs() -> None:
    async def go() -> None:
        cache, src = ResponseCache(), Source(ttl=0.01)
        assert await cache.get(("sweep", "s1"), src) == "body-1"
        await asyncio.sleep(0.02)
        src.release.clear()  # hold the refresh
        t0 = time.perf_counter()
        stale = [await cache.get(("sweep", "s1"), src) for _ in range(20)]
        assert stale == ["body-1"] * 20 and time.perf_counter() - t0 < 1  # nobody waited
        src.release.set()
        await cache.drain()
        assert src.calls == 2  # twenty stale reads started one refresh
        src.ttl = 60
        assert await cache.get(("sweep", "s1"), src) == "body-2"

    run(go())


def test_invalidate_wins_over_a_refresh_that_started_before_it() -> None:
    async def go() -> None:
        cache, src = ResponseCache(), Source(ttl=0.01)
        await cache.get(("sweep", "s1"), src)
        await cache.get(("results", "s2"), src)
        await asyncio.sleep(0.02)
        src.release.clear()
        assert await cache.get(("sweep", "s1"), src) == "body-1"  # stale; refresh held
        cache.invalidate("s1")  # e.g. a cancel changed the sweep meanwhile
        src.release.set()
        await cache.drain()  # the refresh computed body-3 from before the change: dropped
        src.ttl = 60
        assert await cache.get(("sweep", "s1"), src) == "body-4"  # computed after the change
        assert await cache.get(("results", "s2"), src) == "body-2"  # other sweeps untouched

    run(go())


def test_a_failing_refresh_drops_the_body_and_the_next_caller_gets_the_error() -> None:
    async def go() -> None:
        cache, src = ResponseCache(), Source(ttl=0.01)
        await cache.get(("sweep", "gone"), src)
        await asyncio.sleep(0.02)
        src.fail = LookupError("no sweep 'gone'")
        assert await cache.get(("sweep", "gone"), src) == "body-1"  # stale, refresh fails
        await cache.drain()
        with pytest.raises(LookupError, match="no sweep"):
            await cache.get(("sweep", "gone"), src)

    run(go())


def test_the_cache_holds_at_most_max_items() -> None:
    async def go() -> None:
        cache, src = ResponseCache(max_items=3), Source()
        for i in range(10):
            await cache.get(("sweep", f"s{i}"), src)
            assert len(cache._items) <= 3
        assert await cache.get(("sweep", "s9"), src) == "body-10"  # the newest stays

    run(go())


def test_ttl_cache_one_computation_per_key_across_threads() -> None:
    cache, calls = TTLCache(), []
    gate = threading.Event()

    def compute() -> int:
        gate.wait(5)
        calls.append(1)
        return 42

    out: list[int] = []
    threads = [threading.Thread(target=lambda: out.append(cache.get("k", None, compute))) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    gate.set()
    for t in threads:
        t.join()
    assert out == [42] * 8 and len(calls) == 1
    assert cache.get("k", 0.0, lambda: 7) == 7  # ttl 0: always recomputed
