"""The read routes' caches.

`TTLCache` holds query results (MLflow runs, aggregated results) for worker threads.
`ResponseCache` holds rendered response bodies for the event loop: the hot routes
(``GET /v1/sweeps/{id}`` and its results, which dashboards and `dab run` poll) answer from it
without a thread hop, and recompute off the request path (stale-while-revalidate), so that no
request waits behind a recomputation once a body exists. docs/service.md, Benchmark, has the
numbers this buys.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

log = logging.getLogger("service.cache")


class TTLCache:
    """A small cache with a per-key lock, so that 50 clients asking at once cost one query."""

    def __init__(self, max_items: int = 256) -> None:
        self.max_items = max_items
        self._items: dict[Any, tuple[float, Any]] = {}
        self._locks: dict[Any, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, ttl_s: float | None, compute: Callable[[], Any]) -> Any:
        """The cached value of `key` if younger than `ttl_s` (None: forever), else `compute()`."""
        now = time.monotonic()
        hit = self._items.get(key)
        if hit is not None and (ttl_s is None or now - hit[0] < ttl_s):
            return hit[1]
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            hit = self._items.get(key)
            if hit is not None and (ttl_s is None or time.monotonic() - hit[0] < ttl_s):
                return hit[1]
            value = compute()
            with self._lock:
                if len(self._items) >= self.max_items:
                    oldest = min(self._items, key=lambda k: self._items[k][0])
                    self._items.pop(oldest, None)
                    self._locks.pop(oldest, None)
                self._items[key] = (time.monotonic(), value)
            return value


Compute = Callable[[], tuple[Any, float | None]]


def _sweep_of(key: Hashable) -> Any:
    return key[1] if isinstance(key, tuple) and len(key) > 1 else None


class ResponseCache:
    """Rendered bodies of hot read routes, keyed ``(route, sweep_id, ...)``; event loop only.

    ``compute`` runs in the threadpool and returns ``(body, ttl_s)``; ``ttl_s`` None keeps the
    body until `invalidate` (an ended sweep's answers never change). An entry keeps its
    ``compute``, so that `peek` (the fast path in front of the router) can refresh it too.

    * fresh hit: returned at once (no thread, no lock);
    * stale hit (older than its TTL): returned at once as well, and one refresh starts in the
      background; under load a body is at most its TTL plus one computation old;
    * miss: computed under a per-key lock, so a burst of clients costs one computation;
    * `invalidate(sweep_id)` drops the sweep's bodies, and a refresh that began before it does
      not write its older result back (cancel uses this: the next read sees the new state);
    * a refresh that raises drops the body, so the next request computes in the foreground and
      gets the error itself (a vanished sweep is a 404, never a stale 200).
    """

    def __init__(self, max_items: int = 1024) -> None:
        self.max_items = max_items
        self._items: dict[Hashable, tuple[float | None, Any, Compute]] = {}
        self._locks: dict[Hashable, asyncio.Lock] = {}
        self._generation: dict[Any, int] = {}
        self._refreshing: set[Hashable] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.computations = 0  # foreground and background, for tests

    def peek(self, key: Hashable) -> Any | None:
        """The body held for `key`, fresh or stale (starting its refresh), or None."""
        hit = self._items.get(key)
        if hit is None:
            return None
        expires, value, compute = hit
        if expires is not None and time.monotonic() >= expires and key not in self._refreshing:
            self._refreshing.add(key)
            task = asyncio.get_running_loop().create_task(self._refresh(key, compute, self._gen(key)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return value

    async def get(self, key: Hashable, compute: Compute) -> Any:
        value = self.peek(key)
        if value is not None:
            return value
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            hit = self._items.get(key)
            if hit is not None:
                return hit[1]
            generation = self._gen(key)
            value, ttl = await self._compute(compute)
            self._store(key, value, ttl, compute, generation)
            return value

    def invalidate(self, sweep_id: str) -> None:
        self._generation[sweep_id] = self._generation.get(sweep_id, 0) + 1
        for key in [k for k in self._items if _sweep_of(k) == sweep_id]:
            self._items.pop(key, None)

    async def drain(self) -> None:
        """Wait for the background refreshes in flight (tests; shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _compute(self, compute: Compute) -> tuple[Any, float | None]:
        from starlette.concurrency import run_in_threadpool

        self.computations += 1
        return await run_in_threadpool(compute)

    async def _refresh(self, key: Hashable, compute: Compute, generation: int) -> None:
        try:
            value, ttl = await self._compute(compute)
        except Exception as e:  # the next request recomputes in the foreground and reports it
            log.debug("refresh of %r failed: %s", key, e)
            if self._gen(key) == generation:
                self._items.pop(key, None)
        else:
            self._store(key, value, ttl, compute, generation)
        finally:
            self._refreshing.discard(key)

    def _gen(self, key: Hashable) -> int:
        return self._generation.get(_sweep_of(key), 0)

    def _store(self, key: Hashable, value: Any, ttl: float | None, compute: Compute, generation: int) -> None:
        if self._gen(key) != generation:
            return  # invalidated while computing: this body may predate the change
        if key not in self._items and len(self._items) >= self.max_items:
            self._items.clear()
            self._locks = {key: self._locks[key]} if key in self._locks else {}
        self._items[key] = (None if ttl is None else time.monotonic() + ttl, value, compute)


__all__ = ["ResponseCache", "TTLCache"]
