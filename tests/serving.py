"""`note-gateway serve` as a real child process, with its log lines read as they come."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# How long ServeProcess.wait() waits, once the process has exited, for the end of its log.
READER_GRACE_SECONDS = 10


class ServeProcess:
    """Runs ``python -m gateway serve --config PATH`` and follows its log on stderr."""

    def __init__(self, config_path: Path, *, stalling: bool = False, verbose: bool = False) -> None:
        self.config_path = config_path
        self.lines: list[str] = []
        self._changed = threading.Condition()
        # ``stalling``: tests/stalling/sitecustomize.py makes "[stall STAGE]" in a Subject hang that stage.
        python_path = [str(ROOT / "tests" / "stalling")] if stalling else []
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join([*python_path, str(ROOT)])}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", *(["--verbose"] if verbose else []), "serve", "--config", str(config_path),
             "--any-port"],
            cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        match = self.wait_for(r"listening on [\d.]+:(\d+)", timeout=20)
        self.port = int(match.group(1))

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 10, start: int = 0) -> re.Match:
        """The first log line from index ``start`` on that matches, waiting for it if need be."""
        regex = re.compile(pattern)
        ends = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[start:]:
                    match = regex.search(line)
                    if match:
                        return match
                remaining = ends - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no log line matches {pattern!r}; log:\n" + "\n".join(self.lines))
                self._changed.wait(min(remaining, 0.2))

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def reload(self, count: int = 1, said: str = "rules reloaded: ", timeout: float = 15) -> int:
        """SIGHUP, then wait until ``count`` log lines say ``said`` (one per worker); the log position
        before the signal."""
        mark = len(self.lines)
        self.signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while sum(said in line for line in self.lines[mark:]) < count:
            assert time.monotonic() < deadline, self.log
            time.sleep(0.05)
        return mark

    def kill(self) -> None:
        self.process.kill()
        self.wait(timeout=10)

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout=timeout)

    def wait(self, timeout: float = 30) -> int:
        """The exit status, once the process has exited and its log has been read to the end.

        The process's exit does not mean its last lines are in ``lines``: the reader thread may not
        have had them yet on a loaded machine (found by a review of the tests), and ``... in
        gateway.log`` after a stop missed them. Its workers hold the pipe too: EOF comes when the
        last of them has gone, which the reader is given READER_GRACE_SECONDS for.
        """
        status = self.process.wait(timeout=timeout)
        self._reader.join(timeout=READER_GRACE_SECONDS)
        assert not self._reader.is_alive(), (
            f"the log of pid {self.process.pid} was still open {READER_GRACE_SECONDS} s after it exited; "
            "log so far:\n" + self.log)
        return status

    @property
    def log(self) -> str:
        return "\n".join(self.lines)


PAULA = "portal.contrib@example.com"


class Port:
    """Stands in for a RunningGateway so the Mailer can sign and address messages for a child process."""

    def __init__(self, port: int) -> None:
        self.port = port


def send(raw: bytes, to: str, port: int) -> str:
    """The reply to DATA, or "no reply: <error>" when the session was cut."""
    from gateway.testing.sending import deliver

    try:
        return deliver(raw, to, port=port, mail_from=PAULA, timeout=30)
    except smtplib.SMTPResponseException as error:
        return f"no reply: {type(error).__name__} {error.smtp_code} {error.smtp_error!r}"
    except (OSError, smtplib.SMTPException) as error:
        return f"no reply: {type(error).__name__}"


def rcpt(port: int, recipient: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.example.com")
        client.mail(PAULA)
        return client.rcpt(recipient)


def filed_counts(test_odoo, message_ids) -> dict[str, int]:
    """How many times each Message-ID is on the demo task and sale order."""
    from gateway.testing.odoo_demo import SALE_ORDER_ID, TASK_ID

    counts = dict.fromkeys(message_ids, 0)
    for model, res_id in (("project.task", TASK_ID), ("sale.order", SALE_ORDER_ID)):
        for message in test_odoo.messages(model, res_id):
            if message["message_id"] in counts:
                counts[message["message_id"]] += 1
    return counts


def send_while_posting(test_odoo, mailer, port: int, count: int, prefix: str) -> tuple[list[threading.Thread], list[str]]:
    """Send ``count`` notes to the demo task at once and return when Odoo is inside all their posts.

    The caller has made message_post slow (test_odoo.latency); the replies fill the list as they come.
    """
    from gateway.testing.odoo_demo import TASK_ID

    to = mailer.address("note", "project.task", TASK_ID)
    raws = [mailer.sign(mailer.message("note_from_contributor.eml", to, f"<{prefix}-{n}@example.com>"))
            for n in range(count)]
    replies: list[str] = []
    threads = [threading.Thread(target=lambda raw=raw: replies.append(send(raw, to, port))) for raw in raws]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 15
    while len([call for call in test_odoo.posts() if call.ended is None]) < count:
        assert time.monotonic() < deadline, "the posts did not all start"
        time.sleep(0.02)
    return threads, replies


def notes_to_both_records(mailer, prefix: str, count: int = 24) -> list[tuple[str, str, bytes]]:
    """``count`` signed notes, alternately to the demo sale order and task: (Message-ID, to, raw)."""
    from gateway.testing.odoo_demo import SALE_ORDER_ID, TASK_ID

    messages = []
    for number in range(count):
        model, res_id = ("project.task", TASK_ID) if number % 2 else ("sale.order", SALE_ORDER_ID)
        to = mailer.address("note", model, res_id)
        message_id = f"<{prefix}-{number}@example.com>"
        messages.append((message_id, to, mailer.sign(mailer.message("note_from_contributor.eml", to, message_id))))
    return messages


def start_senders(messages: list[tuple[str, str, bytes]], port: int,
                  count: int) -> tuple[list[threading.Thread], dict[str, str]]:
    """``count`` threads sending ``messages`` in turn; the replies fill the dict by Message-ID."""
    replies: dict[str, str] = {}
    queue = list(messages)
    lock = threading.Lock()

    def sender() -> None:
        while True:
            with lock:
                if not queue:
                    return
                message_id, to, raw = queue.pop(0)
            reply = send(raw, to, port)
            with lock:
                replies[message_id] = reply

    threads = [threading.Thread(target=sender) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, replies


# Who runs a child process of the tests when they run as root (CI and containers do): root writes
# to a chmod 444 file and lists a chmod 000 folder, so what a file mode forbids is tested as nobody.
NOBODY = 65534


@contextlib.contextmanager
def open_folder() -> Iterator[Path]:
    """A new folder under /tmp that nobody can reach (pytest's tmp_path is below a folder only root
    may enter), removed afterwards whatever modes a test left in it."""
    path = Path(tempfile.mkdtemp(prefix="note-gateway-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for inner in (path, *path.rglob("*")):
            if inner.is_dir() and not inner.is_symlink():
                inner.chmod(0o755)
        shutil.rmtree(path)


def run_unprivileged(arguments: Sequence[str], folder: Path, *, timeout: float = 30) -> subprocess.CompletedProcess:
    """``python ARGUMENTS`` (the repository and tests/ on its path, run from /) in a process the file
    modes apply to: the tests' own user, or nobody (NOBODY) when the tests run as root, ``folder`` and
    all below it given to nobody first (an open_folder()). Never skipped: a test that skipped as root
    never ran in CI (found by reviews of the tests); where nobody cannot start Python, it fails saying so."""
    command = [sys.executable, *arguments]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    if os.geteuid() == 0:
        assert shutil.which("setpriv"), "the tests run as root: setpriv(1) (util-linux) is needed to run as nobody"
        for path in (folder, *folder.rglob("*")):
            os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
        # setpriv(1), as a review did: subprocess's own user= could not even start Python here.
        command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]
    return subprocess.run(command, cwd="/", env=environment, capture_output=True, text=True, timeout=timeout)


def folded_msg_id(message_id: str, fold: str = "\r\n ") -> str:
    """``message_id`` folded inside the msg-id, as some mail clients split a long References or
    In-Reply-To ("<...-openerp-\r\n 60-project.task@host>"): after "-openerp-" (Odoo's own
    Message-IDs), else after the first "." or "-"."""
    if "-openerp-" in message_id:
        cut = message_id.index("-openerp-") + len("-openerp-")
    else:
        cut = min(found for found in (message_id.find("."), message_id.find("-")) if found >= 0) + 1
    return message_id[:cut] + fold + message_id[cut:]
