"""Logging for the command line, and the native runtimes' chatter kept off the terminal.

TensorFlow prints from C++ straight to file descriptor 2 when it is imported ("Could not find
cuda drivers", "failed call to cuInit", oneDNN notices: `TF_CPP_MIN_LOG_LEVEL` does not reach
the lines written before absl logging starts), and TFLite prints "INFO: Created TensorFlow Lite
XNNPACK delegate for CPU." when an interpreter is built; no environment variable silences
that one. :func:`native_output_quieted` captures descriptor 2 around those calls: the known
notices go to the ``pipeline.native`` logger at INFO level (shown with ``-v``), everything else
is written back to stderr unchanged, in order. When that logger is enabled for INFO, nothing is
captured and the runtimes print as they always do.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import threading
from contextlib import contextmanager

log = logging.getLogger("pipeline.native")
# `extra=` of a warning that the run's summary (RunReport.summary) also states: the command line, which
# prints that summary, leaves such warnings out so that each fact is reported once
IN_SUMMARY = {"in_summary": True}

# notices the runtimes print on every run, which say nothing wrong
_NOTICE = re.compile(
    rb"Created TensorFlow Lite XNNPACK delegate|All log messages before absl::InitializeLog|"
    rb"Could not find cuda drivers|failed call to cuInit|oneDNN custom operations|"
    rb"Unable to register cu\w+ factory|This TensorFlow binary is optimized|TF-TRT Warning|"
    rb"computation placer already registered|Unable to load cuDNN DSO")
# where such a notice begins: TFLite's "INFO: ", absl's "I0000 ", TF's older "2024-01-01 12:00:00.1: I "
_START = re.compile(rb"INFO: |WARNING: |[IWE]\d{4} |\d{4}-\d\d-\d\d [\d:.]+: [IWE] ")
_LOCK = threading.RLock()
_depth = 0


def setup(verbose: bool = False) -> None:
    """The command line's logging: warnings and errors, everything from INFO up with `verbose`; warnings
    marked IN_SUMMARY are left out (the command prints the summary that states them)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _NotInSummary) for f in handler.filters):
            handler.addFilter(_NotInSummary())


class _NotInSummary(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "in_summary", False)


def split_notices(data: bytes) -> tuple[bytes, list[str]]:
    """(what to write back, the runtime notices taken out) of bytes written to stderr.

    A notice may follow a progress bar's partial line (no newline before it); the bar is kept.
    """
    kept, notices = [], []
    for line in re.findall(rb"[^\n]*\n|[^\n]+$", data):
        m = _NOTICE.search(line)
        if not m:
            kept.append(line)
            continue
        starts = [s.start() for s in _START.finditer(line, 0, m.start())]
        cut = starts[-1] if starts else 0
        kept.append(line[:cut])
        notices.append(line[cut:].decode("utf-8", "replace").strip())
    return b"".join(kept), notices


def _capture_fd() -> int:
    """A descriptor of an anonymous file to catch descriptor 2: in memory (memfd) where the OS has
    it, so capturing never opens a file (a server builds interpreters while answering requests)."""
    if hasattr(os, "memfd_create"):
        try:
            return os.memfd_create("tfp-stderr", getattr(os, "MFD_CLOEXEC", 0))
        except OSError:
            pass
    import tempfile  # only where memfd is missing: not imported by every run

    return os.dup(tempfile.TemporaryFile().fileno())


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


@contextmanager
def native_output_quieted():
    """Capture descriptor 2 for the block; replay it without the runtimes' routine notices."""
    global _depth
    if log.isEnabledFor(logging.INFO):
        yield
        return
    with _LOCK:  # one capture at a time; nested in the same thread: the outer one captures
        if _depth:
            yield
            return
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no descriptor 2 (embedded interpreters): nothing to quiet
            yield
            return
        tmp = _capture_fd()
        os.dup2(tmp, 2)
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
            try:
                sys.stderr.flush()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            try:
                kept, notices = split_notices(_read_all(tmp))
            finally:
                os.close(tmp)
            for n in notices:
                log.info("%s", n)
            while kept:
                kept = kept[os.write(2, kept):]
