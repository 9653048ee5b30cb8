"""The deadline of the message a pipeline thread is working on, for the steps that loop over its text.

The steps that loop over blocks, lines and elements (gateway.content, gateway.quotes) give up once
it has passed, so that a text costlier than foreseen frees its pipeline thread at the deadline
rather than after it (found by a security review: a runaway content stage went on for minutes after
the message's 451). Per thread: each pipeline runs in one. A module of its own, which both import:
quotes imported content for it while content imports quotes.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from gateway.refusals import MessageTookTooLong

_running = threading.local()


@contextmanager
def deadline(when: float | None):
    """Within this block, the steps of this thread raise MessageTookTooLong once ``when`` (time.monotonic()) has passed."""
    previous = getattr(_running, "deadline", None)
    _running.deadline = when
    try:
        yield
    finally:
        _running.deadline = previous


def current_deadline() -> float | None:
    """The deadline (time.monotonic()) of this thread's message, None outside deadline(): for a loop
    that checks it itself, each turn."""
    return getattr(_running, "deadline", None)


def check_deadline() -> None:
    """MessageTookTooLong if the deadline of the message this thread works on has passed (about 50 ns)."""
    when = getattr(_running, "deadline", None)
    if when is not None and time.monotonic() > when:
        raise MessageTookTooLong()
