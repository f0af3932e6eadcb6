"""Progress for people: a live bar on a terminal, whole lines now and then anywhere else.

A tqdm bar redraws itself with carriage returns, which fills a redirected log with hundreds of
updates per file. When stderr is not a terminal, :class:`LineProgress` writes a line at every
tenth of the work (at most one every few seconds, and at least one a minute) and a last line
with the total time. Either way, a run whose every item came from a cache says so ("all 200 images
cached") instead of a rate, and a run that fails before any item is done writes no progress at all
(the error is then the only line: e.g. a bad layer name, found when the network is built). :class:`Steps` announces the long steps of a command that has no bar
(``compare``): one line when a step starts, one when it ends, with its time.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
import time


def progress_bar(total: int, desc: str, unit: str = "img", file=None):
    """A tqdm bar on a terminal, else a :class:`LineProgress`; both count with ``update(n)``."""
    file = file or sys.stderr
    if _is_terminal(file):
        return TerminalProgress(total, desc, unit, file)
    return LineProgress(total, desc, unit, file)


def _all_cached(n: int, cached: int, unit: str) -> str:
    return f"all {n} {'images' if unit == 'img' else unit} cached"


class _Counter:
    """What both kinds of progress share: a context manager that closes them, and the counts of items done
    and of those taken from a cache."""

    n = cached = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(failed=exc[0] is not None)
        return False

    def count(self, n: int, cached: bool) -> None:
        self.n += n
        self.cached += n if cached else 0

    def close(self, failed: bool = False) -> None:
        raise NotImplementedError


class TerminalProgress(_Counter):
    """A tqdm bar, shown from the first item that is not taken from a cache (none for a fully cached run)."""

    def __init__(self, total: int, desc: str, unit: str = "img", file=None):
        self.total, self.desc, self.unit, self.file = total, desc, unit, file or sys.stderr
        self.bar = None

    def update(self, n: int = 1, cached: bool = False) -> None:
        self.count(n, cached)
        if self.bar is None and not cached:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=self.desc, unit=self.unit, dynamic_ncols=True, file=self.file,
                            initial=self.n - n)
        if self.bar is not None:
            self.bar.update(n)

    def close(self, failed: bool = False) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.n and not failed:
            print(f"{self.desc}: {_all_cached(self.n, self.cached, self.unit)}", file=self.file, flush=True)
        self.bar, self.n = None, 0


def _is_terminal(file) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):
        return False


class LineProgress(_Counter):
    """Whole-line progress: at each `step` of the total (not more often than every `min_interval`
    seconds), at least every `max_interval` seconds, and once at the end."""

    def __init__(self, total: int, desc: str, unit: str = "img", file=None, *, step: float = 0.1,
                 min_interval: float = 5.0, max_interval: float = 60.0, clock=time.monotonic):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.file = file or sys.stderr
        self.step, self.min_interval, self.max_interval, self.clock = step, min_interval, max_interval, clock
        self.start = self.last = clock()
        self.next_mark = step
        self.closed = False

    def update(self, n: int = 1, cached: bool = False) -> None:
        """`n` more items done; `cached`: taken from a cache, not computed."""
        self.count(n, cached)
        now = self.clock()
        frac = self.n / self.total if self.total else 1.0
        if frac >= 1.0:
            return  # the last line is written by close()
        since = now - self.last
        if (frac >= self.next_mark and since >= self.min_interval) or since >= self.max_interval:
            self._write(f"{self._count()} ({frac:.0%}), {self._rate(now)}, {_duration(now - self.start)} elapsed")
            self.last = now
        while frac >= self.next_mark:
            self.next_mark += self.step

    def close(self, failed: bool = False) -> None:
        """The last line: the count, time and rate; none if the run failed before any item was done."""
        if self.closed:
            return
        self.closed = True
        now = self.clock()
        if failed and self.n == 0:
            return
        if self.n and self.cached == self.n and not failed:
            self._write(_all_cached(self.n, self.cached, self.unit))
            return
        self._write(f"{self._count()} in {_duration(now - self.start)}, {self._rate(now)}")

    def _count(self) -> str:
        return f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"

    def _rate(self, now: float) -> str:
        secs = now - self.start
        return f"{self.n / secs:.1f} {self.unit}/s" if secs > 0 else f"- {self.unit}/s"

    def _write(self, text: str) -> None:
        print(f"{self.desc}: {text}", file=self.file, flush=True)


class Steps:
    """Announce each long step on stderr: ``[i/N] what...`` when it starts, ``[i/N] done: ...`` when it ends."""

    def __init__(self, total: int, enabled: bool = True, file=None, clock=time.monotonic):
        self.total, self.enabled, self.file, self.clock = total, enabled, file, clock
        self.i = 0

    def start(self, what: str) -> None:
        self.i += 1
        self.t0 = self.clock()
        self._write(f"[{self.i}/{self.total}] {what}...")

    def done(self, result: str) -> None:
        self._write(f"[{self.i}/{self.total}] {result} ({_duration(self.clock() - self.t0)})")

    def _write(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.file or sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


class _FoldSteps:
    """The callbacks of :func:`candidate_progress` / :func:`fold_progress`: one bar over every fold."""

    def __init__(self, candidates: int, desc: str, enabled: bool):
        self.candidates, self.desc, self.enabled, self.bar = candidates, desc, enabled, None

    def __call__(self, candidate=None, k: int = 1, n: int | None = None) -> None:
        if not self.enabled:
            return
        if isinstance(candidate, int) and n is None:  # fold_progress: called with the fold number alone
            candidate, k = None, candidate
        if self.bar is None:
            self.bar = progress_bar(self.candidates * (n or 5), self.desc, unit="fold")
        if candidate is not None and hasattr(self.bar, "set_description"):
            self.bar.set_description(f"{candidate.head} on {candidate.features}: fold {k}/{n}")
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def candidate_progress(candidates: int, enabled: bool = True):
    """A callback ``step(candidate, k, n)`` for ``training.search.choose``: a bar over candidates x folds on a
    terminal (its label: which candidate, fold k of n), whole lines elsewhere; nothing when not `enabled`."""
    steps = _FoldSteps(candidates, "cross-validating", enabled)
    try:
        yield steps
    finally:
        steps.close()


@contextmanager
def fold_progress(desc: str, enabled: bool = True, folds: int = 5):
    """A callback ``step(k)`` called as fold k finishes: a bar of `folds` steps, as :func:`candidate_progress`."""
    steps = _FoldSteps(1, desc, enabled)
    try:
        yield steps
    finally:
        steps.close()
