"""A budget that all requests of a server draw on: decoded pixels, or request-body bytes, in flight.

A request takes its share before the work that needs the memory and gives it back after. When the
budget is spent it waits, on the event loop (no thread is held), for at most a given time; then the
caller refuses it (503 with ``Retry-After``). A share larger than the whole budget is cut to the
budget, so it runs, alone. Used only from the server's event loop thread: no locks.
"""
from __future__ import annotations

import asyncio


class Budget:
    """`limit` units (pixels, bytes) shared by every request of one server."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self.used = 0
        self._waiters: list[asyncio.Future] = []

    async def acquire(self, units: int, wait_s: float) -> int | None:
        """Take `units` (at most the whole budget), waiting up to `wait_s` seconds for them to be free.

        Returns the units taken (hand them to :meth:`release`), or None when they did not come free in time.
        """
        units = max(0, min(int(units), self.limit))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while self.used + units > self.limit:
            left = deadline - loop.time()
            if left <= 0:
                return None
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, left)
            except asyncio.TimeoutError:
                pass
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.used += units
        return units

    def release(self, units: int) -> None:
        """Give back what :meth:`acquire` returned, and wake every waiting request to try again."""
        self.used -= units
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)
