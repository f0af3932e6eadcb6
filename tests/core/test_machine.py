"""pipeline/machine.py: pools are sized by the cores the process may use (taskset, Slurm, a cpuset), not the
machine's."""
from __future__ import annotations

import contextlib
import os

import pytest

from pipeline.machine import usable_cores

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is a Linux call")


@contextlib.contextmanager
def affinity(cpus: set[int]):
    """This process on `cpus` only, as `taskset` would start it; the mask as it was afterwards."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def test_one_core_of_the_mask_gives_one_tflite_thread_and_one_decode_worker():
    from pipeline.backbones import create_backbone
    from pipeline.featurizer.decodepool import default_workers

    one = min(os.sched_getaffinity(0))
    with affinity({one}):
        assert usable_cores() == 1
        assert create_backbone("mobilenet_v2_quant").threads == 1  # not one thread per CPU of the machine
        assert default_workers("thread") == 1


def test_every_cpu_allowed_gives_a_thread_per_cpu():
    from pipeline.backbones import create_backbone

    every = set(range(os.cpu_count() or 1))
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, every)  # the tests may run under taskset, on fewer CPUs than the machine's
    except OSError:  # a cpuset narrower than the machine (a container): the mask cannot be widened
        pytest.skip("this process may not run on every CPU of the machine")
    try:
        assert usable_cores() == len(every)
        assert create_backbone("mobilenet_v2_quant").threads == len(every)
    finally:
        os.sched_setaffinity(0, before)
