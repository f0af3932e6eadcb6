"""PathSet: which ids were seen, kept as 64-bit hashes (8 bytes each), never missing a repeat."""
from __future__ import annotations

import math

from pipeline.store.pathset import PathSet


def test_a_repeat_within_a_call_or_across_calls_is_reported_at_its_later_position():
    s = PathSet()
    assert s.add(["a", "b", "c"]) == []
    assert s.add(["d", "a", "e", "d"]) == [1, 3]  # "a" from the first call, the second "d" from this one
    assert s.add([]) == [] and len(s) == 7


def test_every_repeat_is_found_among_many_calls_and_memory_is_8_bytes_an_id():
    s, n, step = PathSet(), 20_000, 1000
    for start in range(0, n, step):
        assert s.add([f"img/{i}.jpg" for i in range(start, start + step)]) == []
    assert s.nbytes == 8 * n
    assert len(s._runs) <= math.log2(n / step) + 2  # merged as they grow: each check searches few runs
    again = [f"img/{i}.jpg" for i in (5, 19_999, 7_777)] + ["new.jpg"]
    assert s.add(again) == [0, 1, 2]


def test_a_hash_collision_is_reported_as_maybe_seen_for_the_caller_to_confirm():
    s = PathSet(key=len)  # every id of the same length collides
    assert s.add(["ab", "cd"]) == [1]
    assert s.add(["xyz", "ef"]) == [1]
