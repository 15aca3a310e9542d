"""A chord skipped because a branch failed is one INFO line in the worker log, not an ERROR traceback."""

from __future__ import annotations

import logging
import sys

from celery.exceptions import ChordError

from fanflow.errors import BranchFailedError
from fanflow.tasks import ChordFailureLogFilter


def _record(exc: Exception) -> logging.LogRecord:
    try:
        raise exc
    except ChordError:
        info = sys.exc_info()
    return logging.LogRecord(
        "celery.backends.redis", logging.ERROR, __file__, 1, "Chord %r raised: %r", ("job.r0", exc), info
    )


def test_a_failed_branch_becomes_one_info_line() -> None:
    exc = ChordError(f"Dependency job.r0.k raised {BranchFailedError('RuntimeError: boom')!r}")
    record = _record(exc)
    assert ChordFailureLogFilter().filter(record)
    assert record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage() == (
        "fanflow: chord job.r0: a branch failed; the merge runs as the chord's error callback"
    )


def test_other_chord_errors_are_left_alone() -> None:
    record = _record(ChordError("Callback error: ConnectionError()"))
    assert ChordFailureLogFilter().filter(record)
    assert record.levelno == logging.ERROR and record.exc_info is not None
