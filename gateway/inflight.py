"""Which messages are being filed right now, across the threads and worker processes of one gateway."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from gateway.refusals import MessageInProgress


class InFlight:
    """Claims on (Message-ID, model, record, Odoo): one delivery at a time between the search and the post.

    Two deliveries of one message at once (a retry while the first is still posting) would both find
    nothing in Odoo and both post. Threads of one process share a set; worker processes
    (listener.workers) share a lock file beside the journal, where a claim is a POSIX record lock
    on one byte at an offset taken from the key. The kernel drops the locks of a process that dies,
    so a killed worker never leaves a message claimed; and a record lock never conflicts with
    another of the same process, which is why the set is still needed.
    """

    def __init__(self, lock_path: Path | str | None = None) -> None:
        self._keys: set[tuple] = set()
        self._lock = threading.Lock()
        self._fd: int | None = None
        if lock_path is not None:
            # Kept open for the life of the process: closing any descriptor of the file would
            # release every record lock the process holds on it (fcntl(2), "Advisory record locking").
            self._fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @staticmethod
    def _offset(key: tuple) -> int:
        # 62 bits of a hash: two different keys share a byte with a chance of about 2**-62, and
        # the offset stays within off_t; the file itself never grows, locks need no data behind them.
        digest = hashlib.sha256(repr(key).encode()).digest()
        return int.from_bytes(digest[:8], "big") >> 2

    @contextmanager
    def claim(self, key: tuple) -> Iterator[None]:
        """Hold ``key`` for the block, or raise MessageInProgress (451) if another delivery holds it."""
        with self._lock:
            if key in self._keys:
                raise MessageInProgress(key[0])
            self._keys.add(key)
        locked = False
        try:
            if self._fd is not None:
                try:
                    fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, self._offset(key))
                except OSError as error:
                    if error.errno in (errno.EACCES, errno.EAGAIN):
                        raise MessageInProgress(key[0]) from None
                    raise
                locked = True
            yield
        finally:
            if locked:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, self._offset(key))
            with self._lock:
                self._keys.discard(key)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
