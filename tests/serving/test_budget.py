"""The server-wide budget requests draw on (pixels, body bytes): take, wait, give up, give back."""
from __future__ import annotations

import asyncio

from pipeline.serving.budget import Budget


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_shares_that_fit_are_taken_at_once_and_given_back():
    async def go():
        b = Budget(100)
        got = [await b.acquire(60, 0.01), await b.acquire(40, 0.01)]
        used = b.used
        for g in got:
            b.release(g)
        return got, used, b.used

    assert run(go()) == ([60, 40], 100, 0)


def test_a_share_that_does_not_fit_gives_up_after_its_wait():
    async def go():
        b = Budget(100)
        first = await b.acquire(80, 0.01)
        second = await b.acquire(30, 0.05)
        return first, second, b.used

    assert run(go()) == (80, None, 80)


def test_a_waiting_share_is_taken_when_another_is_given_back():
    async def go():
        b = Budget(100)
        first = await b.acquire(80, 0.01)
        waiting = asyncio.ensure_future(b.acquire(30, 20))
        await asyncio.sleep(0.05)
        blocked = not waiting.done()
        b.release(first)
        return blocked, await waiting, b.used

    assert run(go()) == (True, 30, 30)


def test_a_share_larger_than_the_budget_runs_alone():
    async def go():
        b = Budget(100)
        big = await b.acquire(500, 0.01)
        small = await b.acquire(1, 0.01)
        b.release(big)
        return big, small, await b.acquire(1, 0.01)

    assert run(go()) == (100, None, 1)
