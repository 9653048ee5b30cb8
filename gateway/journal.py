"""The journal: one SQLite row per received message, what became of it and how long it took."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import sqlite3
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from gateway.observe import masked

T = TypeVar("T")

if TYPE_CHECKING:
    from gateway.context import MessageContext

VERDICTS = ("filed", "duplicate", "refused", "deferred")


class JournalUnavailable(OSError):
    """The journal file cannot be opened or written (read-only, disk full, locked, corrupt).

    An OSError, because like a full disk it may heal: the caller answers 451 and the sending MTA
    retries later.
    """


class JournalNewer(JournalUnavailable):
    """The journal's schema is newer than this gateway's: a newer gateway migrated it (a downgrade)."""


class JournalBusy(JournalUnavailable):
    """Another process held the journal's write lock (an sqlite3 shell, a prune) for as long as the caller could wait.

    Waited out without holding the journal's own lock, so that the other threads of the process
    (their reads above all) go on meanwhile (journal review: a journal locked for 25 s by an
    operator's sqlite3 held every thread, reads included, for 5 s per statement in turn).
    """


class JournalInUse(Exception):
    """Another running gateway holds the journal's lock: a second one must not start on it."""


@dataclass(frozen=True)
class ReceiptLimits:
    """The rate limits a receipt is written within (Journal.begin): 0 turns one off.

    Counted since ``since`` (a Unix time): the messages filed, and the receipts open (being filed
    right now, by any thread or worker), from ``sender`` through ``domain`` (``per_sender``), and on
    the receipt's record of its Odoo (``per_record``).
    """

    since: float
    sender: str
    domain: str
    per_sender: int = 0
    per_record: int = 0


class LimitReached(Exception):
    """A receipt not written: ``which`` ("sender" or "record") has had its share (Journal.begin)."""

    def __init__(self, which: str) -> None:
        super().__init__(which)
        self.which = which


def path_problem(path: Path | str) -> str | None:
    """Why the gateway's user cannot keep its journal at ``path``, or None.

    Checked at the start of `serve` and by check-config and doctor (operator review: a journal
    file the service's user may not write passed the start, then every message was deferred 451
    with "attempt to write a readonly database"; a folder, or a missing one, passed check-config
    and stopped serve). os.access asks for the real user's rights, as the gateway will use them:
    root may write a file whatever its mode, another user not.
    """
    journal = Path(path)
    folder = journal.parent
    if journal.is_dir():
        return f"{journal} is a folder; journal.path names the journal file, e.g. {journal / 'journal.sqlite3'}"
    if not folder.is_dir():
        return f"the folder {folder} does not exist" if not folder.exists() else f"{folder} is not a folder"
    # SQLite writes a -wal and a -shm file beside the journal, and the gateway its .lock and .inflight.
    if not os.access(folder, os.W_OK | os.X_OK):
        return (f"the folder {folder} is not writable by this user ({_user()}): the journal's companion "
                "files (-wal, -shm, .lock, .inflight) are created there")
    if journal.exists() and not os.access(journal, os.R_OK | os.W_OK):
        return f"{journal} is not writable by this user ({_user()})"
    return None


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def lock_journal(path: Path | str) -> int:
    """Take the exclusive lock of one running gateway on its journal; the descriptor, kept open for life.

    ``<journal>.lock`` beside it (flock): taken before the receipts of a stopped gateway are
    recovered, since a second `note-gateway serve` started by hand would otherwise take the running
    one's receipts for those of a dead gateway. The kernel drops it when the process dies, however
    it dies. Workers of a supervisor share the journal by design: the supervisor holds it.
    """
    journal = Path(path)
    lock_path = journal.with_name(journal.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise JournalInUse(
                f"journal {journal} is in use by another running gateway (pid {holder or 'unknown'} holds "
                f"{lock_path}); stop it first, or give this one a [journal] path of its own") from None
        raise
    # The holder's pid, for the message above; the lock itself needs no content.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


# What the journal and the message's log line keep of text a sender chose: a row and a line stay a
# few kilobytes whatever the message (journal review: an unsigned 4 MB message of 400 parts, each
# declaring a charset label thousands of characters long, was refused in 0.4 s and left a row and a
# JSON log line of 4 MB each). The Message-ID (at most 502 characters, gateway.message), the
# addresses and the reply are kept whole when they are of a valid message: only longer ones are cut.
TEXT_LIMIT = 1000
DEFECT_LIMIT = 200
DEFECTS_KEPT = 50
# The gateway's own notes (context.journal_notes: odoo-error with Odoo's message, unsettled-post,
# listener-answered, recipient-dropped, ...) are bounded apart from the message's defects, which
# its sender chose: 50 unknown charsets pushed every note out of the row (a review of this
# session's merges), and an odoo-error note is written with 300 characters of Odoo's message.
NOTE_LIMIT = 600
ENTRIES_KEPT = 2 * DEFECTS_KEPT


def bounded_text(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text``, or its first ``limit`` - 1 characters and "…" (so a bounded text stays as it is)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bounded_defects(defects: list[str], kept_at_most: int = DEFECTS_KEPT, limit: int = DEFECT_LIMIT) -> list[str]:
    """At most ``kept_at_most`` defects, each at most ``limit`` characters; the last says how many more there were.

    Bounding a bounded list leaves it as it is: a row read back is the row written.
    """
    if len(defects) <= kept_at_most:
        kept = defects
        more = ""
    else:
        kept = defects[: kept_at_most - 1]
        more = f"+{len(defects) - len(kept)} more defects not kept"
    bounded = [bounded_text(str(defect), limit) for defect in kept]
    return [*bounded, more] if more else bounded


@dataclass(kw_only=True)
class JournalEntry:
    """One received message as the journal keeps it."""

    id: int | None = None
    received_at: float = field(default_factory=time.time)
    message_id: str = ""
    peer: str = ""
    mail_from: str = ""
    rcpt: str = ""
    from_address: str = ""
    dkim_domain: str = ""
    kind: str = ""
    model: str = ""
    res_id: int | None = None
    # The alias domain the message came through and the [odoo.NAME] connection of its record: the
    # rate limits count per sender and alias domain, and per record of one Odoo (docs/rules.md).
    domain: str = ""
    odoo: str = ""
    # The Odoo itself (config.odoo_identity: URL and database): what the per-record rate limit and
    # the retry check count by, since two connections to one database are one Odoo.
    odoo_identity: str = ""
    verdict: str
    refusal_class: str = ""
    smtp_reply: str = ""
    odoo_message_id: int | None = None
    durations: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0
    odoo_seconds: float = 0.0
    defects: list[str] = field(default_factory=list)
    decision: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, not {self.verdict!r}")
        # Once, where every entry is made (the pipeline's, the listener's, a recovered receipt's):
        # the journal row and the JSON log line are both written from the entry.
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str) and len(value) > TEXT_LIMIT:
                setattr(self, name, bounded_text(value))
        # from_context bounded the message's defects and the gateway's notes apart, within these.
        if len(self.defects) > ENTRIES_KEPT or any(len(str(defect)) > NOTE_LIMIT for defect in self.defects):
            self.defects = bounded_defects(self.defects, ENTRIES_KEPT, NOTE_LIMIT)

    @classmethod
    def from_context(
        cls, context: MessageContext, smtp_reply: str, total_seconds: float | None = None
    ) -> JournalEntry:
        """The entry of a message at the end of the pipeline, whatever stage it reached."""
        message, sender, target = context.message, context.sender, context.target
        return cls(
            verdict=context.verdict,
            received_at=context.received_at,
            message_id=message.message_id if message else "",
            peer=context.peer,
            mail_from=context.mail_from,
            rcpt=target.address,
            from_address=message.from_address if message else "",
            dkim_domain=sender.dkim_domain if sender else "",
            kind=target.kind,
            model=target.model,
            res_id=target.res_id,
            domain=target.domain,
            odoo=context.rules.odoo,
            odoo_identity=context.odoo_identity,
            # The refusal itself, also when the reply said another in its place (pipeline.said_refusal).
            refusal_class=(context.refusal.concealed or context.refusal).name if context.refusal else "",
            smtp_reply=smtp_reply,
            odoo_message_id=context.odoo_message_id,
            durations=dict(context.stage_durations),
            total_seconds=sum(context.stage_durations.values()) if total_seconds is None else total_seconds,
            odoo_seconds=context.odoo_seconds,
            defects=[*bounded_defects(message.defects if message else []),
                     *bounded_defects(context.journal_notes, DEFECTS_KEPT, NOTE_LIMIT)],
            decision=context.decision,
        )


_COLUMNS = (
    "received_at", "message_id", "peer", "mail_from", "rcpt", "from_address", "dkim_domain", "kind",
    "model", "res_id", "verdict", "refusal_class", "smtp_reply", "odoo_message_id", "durations",
    "total_seconds", "odoo_seconds", "defects", "decision", "domain", "odoo", "odoo_identity",
)

# Each entry brings the schema from the version before it to its own (its position plus one); the
# version reached is kept in PRAGMA user_version. Add entries, never edit one that has shipped.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            received_at REAL NOT NULL,
            message_id TEXT NOT NULL DEFAULT '',
            peer TEXT NOT NULL DEFAULT '',
            mail_from TEXT NOT NULL DEFAULT '',
            rcpt TEXT NOT NULL DEFAULT '',
            from_address TEXT NOT NULL DEFAULT '',
            dkim_domain TEXT NOT NULL DEFAULT '',
            kind TEXT NOT NULL DEFAULT '',
            model TEXT NOT NULL DEFAULT '',
            res_id INTEGER,
            verdict TEXT NOT NULL CHECK (verdict IN ('filed', 'duplicate', 'refused', 'deferred')),
            refusal_class TEXT NOT NULL DEFAULT '',
            smtp_reply TEXT NOT NULL DEFAULT '',
            odoo_message_id INTEGER,
            durations TEXT NOT NULL DEFAULT '{}',
            total_seconds REAL NOT NULL DEFAULT 0,
            odoo_seconds REAL NOT NULL DEFAULT 0,
            defects TEXT NOT NULL DEFAULT '[]'
        )
        """,
        "CREATE INDEX messages_received_at ON messages (received_at)",
        "CREATE INDEX messages_message_id ON messages (message_id)",
        "CREATE INDEX messages_from_address ON messages (from_address COLLATE NOCASE)",
    ),
    # Issue 7: how a plain address was routed, why a reply+ delivery was filed as a note.
    ("ALTER TABLE messages ADD COLUMN decision TEXT NOT NULL DEFAULT ''",),
    (
        # A receipt is written, durably, before a message is posted and removed in the same
        # transaction that records its outcome (issue 4). One left behind after a restart is a
        # message whose session was cut while it was being filed: its sender got no reply, so its
        # MTA retries, and the retry is recognised in Odoo by its Message-ID.
        """
        CREATE TABLE receipts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            received_at REAL NOT NULL,
            message_id TEXT NOT NULL DEFAULT '',
            peer TEXT NOT NULL DEFAULT '',
            mail_from TEXT NOT NULL DEFAULT '',
            rcpt TEXT NOT NULL DEFAULT '',
            from_address TEXT NOT NULL DEFAULT '',
            kind TEXT NOT NULL DEFAULT '',
            model TEXT NOT NULL DEFAULT '',
            res_id INTEGER
        )
        """,
        # The rate limits count filed messages per record within a window.
        "CREATE INDEX messages_record ON messages (model, res_id, received_at)",
        # At most one refusal notice per sender, reason and day (issue 4): the primary key is the claim.
        """
        CREATE TABLE notices (
            recipient TEXT NOT NULL COLLATE NOCASE,
            reason TEXT NOT NULL,
            day TEXT NOT NULL,
            sent_at REAL NOT NULL,
            PRIMARY KEY (recipient, reason, day)
        )
        """,
    ),
    (
        # A post whose outcome is unknown: it timed out, or its connection was lost, while Odoo may
        # still be running it (up to its limit_time_real). Until odoo.unsettled_post_seconds after
        # ``since``, a later delivery that does not find the message filed is deferred rather than
        # posted again. Written only then, and removed once the message is known to be filed.
        """
        CREATE TABLE unsettled_posts (
            message_id TEXT NOT NULL,
            model TEXT NOT NULL,
            res_id INTEGER NOT NULL,
            sender TEXT NOT NULL COLLATE NOCASE,
            since REAL NOT NULL,
            PRIMARY KEY (message_id, model, res_id, sender)
        )
        """,
    ),
    (
        # The rate limits count a sender's filed messages per alias domain, and a record's per Odoo
        # (connection name): a record's model and id name another record on another Odoo. Rows of
        # an older journal keep '' in both, and count for every domain and Odoo, as they did then,
        # until they leave the window. The indexes hold every column the counts read: a flood of
        # refused or deferred messages adds rows that the count of filed ones never visits.
        "ALTER TABLE messages ADD COLUMN domain TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE messages ADD COLUMN odoo TEXT NOT NULL DEFAULT ''",
        "DROP INDEX messages_record",
        "CREATE INDEX messages_record ON messages (model, res_id, odoo, verdict, received_at)",
        "DROP INDEX messages_from_address",
        "CREATE INDEX messages_sender ON messages (from_address COLLATE NOCASE, domain, verdict, received_at)",
    ),
    (
        # A receipt says which process wrote it and when, and whose post it is (the sender's
        # verified address, as unsettled_posts keys it): a receipt left by a killed process is a
        # post that may still be running in Odoo, and becomes an unsettled post (crash review 2).
        # Receipts of an older journal keep 0 and '': recovered by any start, their sender taken
        # from their From, their time from their reception.
        "ALTER TABLE receipts ADD COLUMN pid INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE receipts ADD COLUMN sender TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE receipts ADD COLUMN written_at REAL NOT NULL DEFAULT 0",
    ),
    (
        # Which Odoo (config.odoo_identity: URL and database, not the connection's name) a filed
        # message, a receipt and an unsettled post belong to: task 60 of one Odoo is not task 60 of
        # another, and two connections to one database are one Odoo (multi-Odoo review: a post left
        # unsettled in one Odoo deferred the same message to another, and a duplicate there settled
        # the first one's marker, which let a retry file it twice). Rows of an older journal keep
        # '', which matches every Odoo, as the rows did then: an unsettled post of unknown Odoo
        # still defers the message everywhere until it expires, and a filed message counts for
        # every Odoo's record until it leaves the rate-limit window.
        "ALTER TABLE messages ADD COLUMN odoo_identity TEXT NOT NULL DEFAULT ''",
        "DROP INDEX messages_record",
        "CREATE INDEX messages_record ON messages (model, res_id, odoo_identity, verdict, received_at)",
        "ALTER TABLE receipts ADD COLUMN odoo_identity TEXT NOT NULL DEFAULT ''",
        # The Odoo is part of the primary key, which SQLite cannot alter: the table is rebuilt.
        """
        CREATE TABLE unsettled_posts_7 (
            message_id TEXT NOT NULL,
            model TEXT NOT NULL,
            res_id INTEGER NOT NULL,
            sender TEXT NOT NULL COLLATE NOCASE,
            since REAL NOT NULL,
            odoo_identity TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (message_id, model, res_id, sender, odoo_identity)
        )
        """,
        "INSERT INTO unsettled_posts_7 (message_id, model, res_id, sender, since, odoo_identity) "
        "SELECT message_id, model, res_id, sender, since, '' FROM unsettled_posts",
        "DROP TABLE unsettled_posts",
        "ALTER TABLE unsettled_posts_7 RENAME TO unsettled_posts",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)
# The rows of notes this gateway filed in Odoo, for was_filed: verdict filed, and a note the
# pipeline filed after the listener had answered its last-resort 451 (pipeline.journal), whose row
# follows that reply (deferred) and keeps its Odoo id; a retry of either is a retry, answered
# "Already filed" and never held by a rate limit. count_filed reads the verdict alone, from its
# covering index, on every message: such a rare late note is not counted against the rate limits.
_FILED = "(verdict = 'filed' OR (verdict = 'deferred' AND odoo_message_id IS NOT NULL))"

# Every text column but the verdict, which is checked against VERDICTS.
_TEXT_FIELDS = tuple(name for name, kind in JournalEntry.__annotations__.items() if kind == "str" and name != "verdict")
_JSON_COLUMNS = frozenset({"durations", "defects"})
_SELECTED = ", ".join(("id", *_COLUMNS))


# Below this much free space on the journal's file system, SQLite's "disk I/O error" or "database
# or disk is full" is said to be that (doctor fails it too).
FREE_SPACE_NEEDED = 16 * 1024 * 1024


def free_space_short(path: Path | str) -> int | None:
    """The free bytes of the file system of the journal at ``path`` when below FREE_SPACE_NEEDED, else None."""
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        return None
    return free if free < FREE_SPACE_NEEDED else None


def _create_owner_only(path: Path) -> None:
    """Create the journal file, owner-only, if it does not exist yet; an existing one is not opened at all.

    Owner-only before SQLite opens it, whatever the umask of a `serve` run by hand (the units set
    UMask=0077): the rows hold senders, Message-IDs and whole record addresses. SQLite gives the
    -wal and -shm files the mode of the journal's.

    Never a descriptor of an existing journal outside SQLite: closing any descriptor of a file
    drops every POSIX lock the process holds on it (fcntl(2); sqlite.org/howtocorrupt.html 2.2),
    the SHARED lock of the process's open connections included. A reload builds a new Journal in
    the process that serves; its os.close(os.open(journal)) let a `prune-journal` or an sqlite3
    shell, at its close, take itself for the last connection, checkpoint and delete the -wal and
    -shm files the gateway went on writing into (451 "cannot be written: disk I/O error", or rows
    filed in Odoo that `log` never showed; found by an onboarding review). With O_EXCL a file that
    exists opens no descriptor; one this call creates is new, so no connection holds a lock on it.
    """
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    os.close(descriptor)


def _unavailable(path: Path, action: str, error: sqlite3.Error | OSError) -> JournalUnavailable:
    # A restart on a full disk said "cannot be prepared: disk I/O error" (SQLite must create the
    # -wal and -shm files again), which does not say "full" (a review).
    free = free_space_short(path)
    full = "" if free is None else f" (its file system is full: {free} bytes free)"
    return JournalUnavailable(f"journal {path} cannot be {action}: {error}{full}")


# How long SQLite itself waits for another process's lock in one attempt, and how long a caller
# waits in all when it names no deadline (SQLite's own timeout before: 5 s); one that names the
# message's deadline waits until then. Between attempts the journal's lock is free, so a write
# waiting for another process holds no other thread.
_ATTEMPT_SECONDS = 0.1
_PAUSE_SECONDS = 0.02
WAIT_SECONDS = 5.0
# SQLITE_BUSY and SQLITE_LOCKED, whatever their extended codes (BUSY_SNAPSHOT, BUSY_TIMEOUT...).
_BUSY_CODES = frozenset({5, 6})


def _is_busy(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _BUSY_CODES
    return "locked" in str(error) or "busy" in str(error)


def _wait_end(deadline: float | None, wait: float) -> float:
    """The time.monotonic() by which a caller gives up waiting for another process's lock: its
    message's deadline, or ``wait`` seconds from now."""
    return time.monotonic() + wait if deadline is None else deadline


# Journal.begin's count: what count_filed counts, plus the open receipts of the same scope (a
# receipt's alias domain is its address's: the gateway writes rcpt as <local>@<domain>); and, only
# at a limit, whether this sender filed the message on this record already (was_filed: a retry).
# What count_filed counts, from one sender through one alias domain (parameters: from_address,
# domain, since) or on one record of one Odoo (model, res_id, odoo_identity, since).
_FILED_FROM_SENDER = ("SELECT count(*) FROM messages WHERE from_address = ? COLLATE NOCASE AND domain IN (?, '') "
                      "AND verdict = 'filed' AND received_at >= ?")
_FILED_ON_RECORD = ("SELECT count(*) FROM messages WHERE model = ? AND res_id = ? AND odoo_identity IN (?, '') "
                    "AND verdict = 'filed' AND received_at >= ?")
# This sender's message, filed (_FILED) in this Odoo (parameters: message_id, from_address,
# odoo_identity): was_filed, filed_as and Journal.begin's retry test read it.
_SENDERS_FILED = f"message_id = ? AND from_address = ? COLLATE NOCASE AND odoo_identity IN (?, '') AND {_FILED}"
_SENDER_COUNT = (f"({_FILED_FROM_SENDER}) + (SELECT count(*) FROM receipts WHERE from_address = ? "
                 "COLLATE NOCASE AND substr(rcpt, -?) = ? AND received_at >= ?)")
_RECORD_COUNT = (f"({_FILED_ON_RECORD}) + (SELECT count(*) FROM receipts WHERE model = ? "
                 "AND res_id = ? AND odoo_identity IN (?, '') AND received_at >= ?)")
_LIMITS_COUNT = "SELECT {sender}, {record}"
_FILED_HERE = f"SELECT 1 FROM messages WHERE {_SENDERS_FILED} AND model = ? AND res_id = ? LIMIT 1"


class Journal:
    """The journal file. One connection, guarded by a lock, writes for every thread; each thread reads on its own.

    Reads (the rate limits, the retry and unsettled-post checks, `log`) go through a connection of
    the reading thread, which under WAL neither waits for a writer nor holds the others (journal
    review: the rate-limit stage of 8 messages took 5-10 s while another process held the write
    lock, as each read queued behind writes waiting out SQLite's 5 s timeout under the lock).
    A write waits for another process's lock in short attempts, with the lock free between them,
    until the caller's ``deadline`` (time.monotonic(): its message's), or for WAIT_SECONDS.
    """

    # SQLite's own name for a database of no file: the schema and no rows, gone when it is closed.
    IN_MEMORY = ":memory:"

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        in_memory = str(path) == self.IN_MEMORY
        # Reads on the one connection: a read-only file has no writer to stay clear of, and a
        # database in memory is another, empty, one for every connection.
        self._one_connection = read_only or in_memory
        self._lock = threading.Lock()
        self._closed = False
        # The reading connection of each thread, and all of them, to be closed with the journal.
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        try:
            if in_memory:
                # For `note-gateway check` where no journal exists yet: what it reads is empty.
                self._connection = sqlite3.connect(self.IN_MEMORY, check_same_thread=False)
            elif read_only:
                # For `note-gateway log` and `check` run by an admin who may read the journal but not write it.
                uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=ro"
                self._connection = sqlite3.connect(uri, uri=True, timeout=WAIT_SECONDS, check_same_thread=False)
            else:
                _create_owner_only(self.path)
                self._connection = sqlite3.connect(self.path, timeout=WAIT_SECONDS, check_same_thread=False)
        except OSError as error:
            raise _unavailable(self.path, "opened", error) from error
        except sqlite3.Error as error:
            raise _unavailable(self.path, "opened", error) from error
        # Autocommit: each record is one INSERT, and migrations open their own transactions.
        self._connection.isolation_level = None
        try:
            if in_memory or not read_only:
                self._prepare()
                # The migrations waited as long as SQLite's timeout says (another gateway starting
                # at the same time); a statement from now on waits in attempts (_write).
                self._connection.execute(f"PRAGMA busy_timeout = {int(_ATTEMPT_SECONDS * 1000)}")
            self._check_version()
        except BaseException:
            self._connection.close()
            raise

    def _prepare(self) -> None:
        try:
            # WAL lets `note-gateway log` read while the gateway writes. synchronous=NORMAL can lose
            # the last rows on a power cut but never corrupts the file; the journal is a record of
            # what happened, not the copy of a message that the SMTP contract depends on.
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.Error as error:
            raise _unavailable(self.path, "prepared", error) from error

    def _migrate(self) -> None:
        for version, statements in enumerate(_MIGRATIONS, start=1):
            # BEGIN IMMEDIATE takes the write lock before the version is read, so two gateways
            # starting at once cannot both apply the same migration.
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                if self._schema_version() < version:
                    for statement in statements:
                        self._connection.execute(statement)
                    self._connection.execute(f"PRAGMA user_version = {version}")
                self._connection.execute("COMMIT")
            except BaseException:
                # SQLite has already rolled back after some errors (a full disk among them).
                if self._connection.in_transaction:
                    self._connection.execute("ROLLBACK")
                raise

    def _schema_version(self) -> int:
        return self._connection.execute("PRAGMA user_version").fetchone()[0]

    def _check_version(self) -> None:
        try:
            version = self._schema_version()
        except sqlite3.Error as error:
            raise _unavailable(self.path, "read", error) from error
        if version > SCHEMA_VERSION:
            raise JournalNewer(
                f"journal {self.path} has schema version {version}, newer than the {SCHEMA_VERSION} "
                "this gateway knows; was it written by a newer gateway?"
            )
        if version < SCHEMA_VERSION:
            raise JournalUnavailable(
                f"journal {self.path} has schema version {version}, older than {SCHEMA_VERSION}; "
                "start the gateway once to bring it up to date"
            )

    def _run(self, action: str, sql: str, parameters: tuple = (), *, deadline: float | None = None,
             wait: float = WAIT_SECONDS) -> tuple[list[tuple], int | None]:
        """Run one statement; return its rows and the id of an inserted row.

        A read ("read") on the thread's own connection, a write under the lock (_write).
        """
        if action == "read" and not self._one_connection:
            return self._read(sql, parameters, deadline=deadline, wait=wait)

        def run(connection: sqlite3.Connection) -> tuple[list[tuple], int | None]:
            cursor = connection.execute(sql, parameters)
            return cursor.fetchall(), cursor.lastrowid

        return self._write(action, run, deadline=deadline, wait=wait)

    def _write(self, action: str, work, *, deadline: float | None = None, wait: float = WAIT_SECONDS):
        """``work(connection)`` under the lock, in attempts while another process holds the file's lock.

        Each attempt waits at most _ATTEMPT_SECONDS in SQLite (its busy timeout), then lets go of
        the lock for the other threads; JournalBusy once the ``deadline`` (or ``wait`` seconds) passed.
        """
        started = time.monotonic()
        end = _wait_end(deadline, wait)
        while True:
            if not self._lock.acquire(timeout=max(end - time.monotonic(), _ATTEMPT_SECONDS)):
                # Its other writes took turns at it, each for one attempt: the journal stayed locked.
                raise JournalBusy(f"journal {self.path} cannot be {action}: busy for {time.monotonic() - started:.1f} s "
                                  "(database is locked; this process's other writes waited for it in turn)")
            try:
                if self._closed:
                    raise JournalUnavailable(f"journal {self.path} is closed")
                try:
                    return work(self._connection)
                except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
                    # A bad value or bad SQL is a bug in the gateway, not a state of the file.
                    raise
                except sqlite3.Error as error:
                    # Disk full, a read-only file, a lock held too long, a damaged file: each may heal
                    # or be healed by an admin, and none is the message's fault.
                    if not _is_busy(error):
                        raise _unavailable(self.path, action, error) from error
                    if time.monotonic() >= end:
                        raise JournalBusy(f"journal {self.path} cannot be {action}: {error} (another process "
                                          f"held it for {time.monotonic() - started:.1f} s)") from error
            finally:
                self._lock.release()
            time.sleep(_PAUSE_SECONDS)

    def _reader(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            try:
                connection = sqlite3.connect(self.path, timeout=_ATTEMPT_SECONDS, check_same_thread=False,
                                             isolation_level=None)
                connection.execute("PRAGMA query_only = ON")
            except sqlite3.Error as error:
                raise _unavailable(self.path, "read", error) from error
            with self._readers_lock:
                if self._closed:
                    connection.close()
                    raise JournalUnavailable(f"journal {self.path} is closed")
                self._readers.append(connection)
            self._local.connection = connection
        return connection

    def _read(self, sql: str, parameters: tuple, *, deadline: float | None = None,
              wait: float = WAIT_SECONDS) -> tuple[list[tuple], None]:
        """Run a query on this thread's connection: under WAL it waits for no writer, and holds no other thread."""
        started = time.monotonic()
        end = _wait_end(deadline, wait)
        while True:
            if self._closed:
                raise JournalUnavailable(f"journal {self.path} is closed")
            try:
                return self._reader().execute(sql, parameters).fetchall(), None
            except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
                if self._closed:
                    raise JournalUnavailable(f"journal {self.path} is closed") from None
                raise
            except sqlite3.Error as error:
                if not _is_busy(error):
                    raise _unavailable(self.path, "read", error) from error
                if time.monotonic() >= end:
                    raise JournalBusy(f"journal {self.path} cannot be read: {error} (another process "
                                      f"held it for {time.monotonic() - started:.1f} s)") from error
            time.sleep(_PAUSE_SECONDS)

    def record(self, entry: JournalEntry, *, receipt_id: int | None = None, wait: float = WAIT_SECONDS) -> int:
        """Store the entry and return its id; the receipt of the message, if given, goes in the same transaction.

        ``wait``: how long another process's lock is waited for (JournalBusy then).
        """
        values = tuple(
            json.dumps(getattr(entry, column)) if column in _JSON_COLUMNS else getattr(entry, column)
            for column in _COLUMNS
        )
        placeholders = ", ".join("?" for _ in _COLUMNS)
        insert = f"INSERT INTO messages ({', '.join(_COLUMNS)}) VALUES ({placeholders})"
        if receipt_id is None:
            _, entry_id = self._run("written", insert, values, wait=wait)
            return int(entry_id or 0)
        return self._transaction("written", [(insert, values), ("DELETE FROM receipts WHERE id = ?", (receipt_id,))],
                                 wait=wait)

    def _transaction(self, action: str, statements: list[tuple[str, tuple]], *, deadline: float | None = None,
                     wait: float = WAIT_SECONDS) -> int:
        """Run statements in one transaction (_atomically); return the last inserted row id of the first."""

        def run(connection: sqlite3.Connection) -> int:
            first_id = None
            for sql, parameters in statements:
                cursor = connection.execute(sql, parameters)
                first_id = cursor.lastrowid if first_id is None else first_id
            return int(first_id or 0)

        return self._atomically(action, run, deadline=deadline, wait=wait)

    def _atomically(self, action: str, work: Callable[[sqlite3.Connection], T], *, deadline: float | None = None,
                    wait: float = WAIT_SECONDS) -> T:
        """``work(connection)`` in one BEGIN IMMEDIATE transaction (_write): committed if it returns,
        rolled back if it raises (whatever it raises, which is raised again)."""

        def run(connection: sqlite3.Connection) -> T:
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = work(connection)
                connection.execute("COMMIT")
            except BaseException:
                # SQLite has already rolled back after some errors (a full disk among them).
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            return result

        return self._write(action, run, deadline=deadline, wait=wait)

    def begin(self, *, received_at: float, message_id: str, peer: str, mail_from: str, rcpt: str,
              from_address: str, kind: str, model: str, res_id: int, sender: str = "",
              odoo_identity: str = "", limits: ReceiptLimits | None = None, deadline: float | None = None) -> int:
        """Write the receipt of a message about to be posted; JournalUnavailable if it cannot be written.

        ``deadline`` (time.monotonic()): the message's, beyond which another process's lock is not
        waited for (JournalBusy).

        ``sender`` and ``odoo_identity``: the key of an unsettled post of it (the verified address,
        lower case; the Odoo, config.odoo_identity); the receipt also keeps this process's id and
        the time, so that the receipt of a process that dies can be told apart and taken for a post
        that may still be running in Odoo.

        ``limits``: written only within them (LimitReached otherwise, nothing written), counted in
        the same transaction. BEGIN IMMEDIATE takes the file's write lock before the count, so the
        threads and worker processes writing receipts take turns: of N messages at once, only as
        many as the limit leaves get a receipt, where the count of filed rows alone let all N
        through while each was still being posted (found by a concurrency review: 12 parallel
        notes with limits of 3 were all filed). The same message this sender filed on this record
        already (a retry; docs/rules.md) is written whatever the counts. One query, on the indexes
        the rate limits read (receipts are few: one per message being filed), and a second only at
        a limit, for the retry.
        """
        insert = ("INSERT INTO receipts (received_at, message_id, peer, mail_from, rcpt, from_address, kind, model,"
                  " res_id, pid, sender, written_at, odoo_identity) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        values = (received_at, message_id, peer, mail_from, rcpt, from_address, kind, model, res_id, os.getpid(),
                  sender or from_address.strip().lower(), time.time(), odoo_identity)
        if limits is None or not (limits.per_sender or limits.per_record):
            _, receipt_id = self._run("written", insert, values, deadline=deadline)
            return int(receipt_id or 0)
        count = _LIMITS_COUNT.format(
            sender=_SENDER_COUNT if limits.per_sender else "0", record=_RECORD_COUNT if limits.per_record else "0")
        parameters = ((limits.sender, limits.domain, limits.since, limits.sender, len(limits.domain) + 1,
                       f"@{limits.domain}", limits.since) if limits.per_sender else ()) + (
            (model, res_id, odoo_identity, limits.since, model, res_id, odoo_identity, limits.since)
            if limits.per_record else ())

        def run(connection: sqlite3.Connection) -> int:
            senders, records = connection.execute(count, parameters).fetchone()
            reached = ("sender" if limits.per_sender and senders >= limits.per_sender else
                       "record" if limits.per_record and records >= limits.per_record else None)
            if reached is not None and connection.execute(
                    _FILED_HERE, (message_id, limits.sender, odoo_identity, model, res_id)).fetchone() is None:
                raise LimitReached(reached)  # Rolled back by _atomically: nothing written.
            return int(connection.execute(insert, values).lastrowid or 0)

        return self._atomically("written", run, deadline=deadline)

    def open_receipts(self) -> int:
        rows, _ = self._run("read", "SELECT count(*) FROM receipts")
        return int(rows[0][0])

    def recover_interrupted(self, *, pids: list[int] | None = None,
                            odoo_of: dict[str, str] | None = None) -> list[JournalEntry]:
        """Turn the receipts a dead process left behind into "deferred" rows and unsettled posts; return the rows.

        Run at start for every receipt (the gateway that wrote them is gone), and by a supervisor
        for those of a worker that died (``pids``). No reply reached their senders, and the post
        each receipt announced may have reached Odoo and still be running there (up to its
        limit_time_real): each becomes an unsettled post since the receipt was written, so a retry
        is deferred until Odoo has the message (then "Already filed") or odoo.unsettled_post_seconds
        have passed (then posted). A message that never reached Odoo waits no longer than that.
        """
        sql = ("SELECT id, received_at, message_id, peer, mail_from, rcpt, from_address, kind, model, res_id, "
               "sender, written_at, odoo_identity FROM receipts")
        parameters: tuple = ()
        if pids is not None:
            if not pids:
                return []
            sql += f" WHERE pid IN ({', '.join('?' for _ in pids)})"
            parameters = tuple(pids)
        rows, _ = self._run("read", sql + " ORDER BY id", parameters)
        recovered = []
        for (receipt_id, received_at, message_id, peer, mail_from, rcpt, from_address, kind, model, res_id,
             sender, written_at, odoo_identity) in rows:
            # The alias domain of the address (as the gateway wrote it: lower case, A-labels) and,
            # given ``odoo_of`` (domain -> [odoo.NAME] of the configuration), its connection, so
            # that `log --domain/--odoo` list these rows too.
            domain = rcpt.rpartition("@")[2]
            entry = JournalEntry(
                verdict="deferred", received_at=received_at, message_id=message_id, peer=peer,
                mail_from=mail_from, rcpt=rcpt, from_address=from_address, kind=kind, model=model,
                res_id=res_id, domain=domain, odoo=(odoo_of or {}).get(domain, ""),
                odoo_identity=odoo_identity, refusal_class="Interrupted",
                smtp_reply="(no reply: the gateway stopped while filing; the sender's retry is matched by Message-ID)",
                defects=["unsettled-post:the process filing it died; a retry that does not find it in Odoo "
                         "is deferred for odoo.unsettled_post_seconds"],
            )
            values = tuple(
                json.dumps(getattr(entry, column)) if column in _JSON_COLUMNS else getattr(entry, column)
                for column in _COLUMNS
            )
            statements = [
                (f"INSERT INTO messages ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})", values),
                ("DELETE FROM receipts WHERE id = ?", (receipt_id,)),
            ]
            if message_id and model and res_id is not None:
                # A later marker of the same post (a retry that timed out again) is kept. The receipt
                # of an older journal has no Odoo (''): its marker holds for every Odoo.
                statements.append((
                    "INSERT INTO unsettled_posts (message_id, model, res_id, sender, since, odoo_identity) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET since = max(since, excluded.since)",
                    (message_id, model, res_id, sender or from_address.strip().lower(), written_at or received_at,
                     odoo_identity)))
            self._transaction("written", statements)
            recovered.append(entry)
        return recovered

    def claim_notice(self, recipient: str, reason: str, day: str) -> bool:
        """True the first time a notice of this reason to this recipient is claimed on this day."""
        rows, _ = self._run("written", "INSERT OR IGNORE INTO notices (recipient, reason, day, sent_at) "
                                       "VALUES (?, ?, ?, ?) RETURNING 1", (recipient, reason, day, time.time()))
        return bool(rows)

    def mark_unsettled(self, message_id: str, model: str, res_id: int, sender: str, odoo_identity: str = "", *,
                       since: float | None = None, forget_before: float | None = None) -> None:
        """Remember that this sender's post of this message on this record of this Odoo may still be running there.

        ``odoo_identity``: the Odoo (config.odoo_identity); '' (a marker of unknown Odoo, as an older
        journal's) holds for every Odoo. ``forget_before``: markers left before this time are
        deleted in the same transaction (a sender that never retried leaves one behind, and an
        expired one decides nothing).
        """
        statements = [("INSERT OR REPLACE INTO unsettled_posts (message_id, model, res_id, sender, since, odoo_identity) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (message_id, model, res_id, sender,
                                                     time.time() if since is None else since, odoo_identity))]
        if forget_before is not None:
            statements.append(("DELETE FROM unsettled_posts WHERE since < ?", (forget_before,)))
        self._transaction("written", statements)

    def unsettled_since(self, message_id: str, model: str, res_id: int, sender: str, odoo_identity: str = "", *,
                        own_receipt: int | None = None, deadline: float | None = None) -> float | None:
        """When this sender's post of this message on this record of this Odoo was left unsettled, if it is.

        An open receipt of the same post, other than ``own_receipt``, counts as well: read under the
        message's claim, it was left by a process that died while posting (a killed worker whose
        supervisor has not yet turned it into a marker) or that could not record the outcome. A
        marker or receipt of unknown Odoo ('', an older journal's) counts for every Odoo: it may be
        this one's. Still one query, on the primary key.
        """
        rows, _ = self._run(
            "read",
            "SELECT max(since) FROM (SELECT since FROM unsettled_posts WHERE message_id = ? AND model = ? "
            "AND res_id = ? AND sender = ? AND odoo_identity IN (?, '') UNION ALL SELECT CASE WHEN written_at > 0 "
            "THEN written_at ELSE received_at END FROM receipts WHERE message_id = ? AND model = ? AND res_id = ? "
            "AND sender = ? AND odoo_identity IN (?, '') AND id != ?)",
            (message_id, model, res_id, sender, odoo_identity, message_id, model, res_id, sender, odoo_identity,
             -1 if own_receipt is None else own_receipt), deadline=deadline)
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    def settle(self, message_id: str, model: str, res_id: int, sender: str, odoo_identity: str = "") -> None:
        """Forget an unsettled post: the message is known to be filed now, in this Odoo.

        Only this Odoo's marker: the message filed in another Odoo says nothing of a post still
        running here (multi-Odoo review: a duplicate in one Odoo cleared the other's marker, and a
        retry there filed the note twice). A marker of unknown Odoo ('') is not settled either: it
        may be another Odoo's, and it expires after odoo.unsettled_post_seconds.
        """
        self._run("written", "DELETE FROM unsettled_posts WHERE message_id = ? AND model = ? AND res_id = ? "
                             "AND sender = ? AND odoo_identity = ?", (message_id, model, res_id, sender, odoo_identity))

    def count_filed(self, since: float, *, odoo_identity: str = "", domain: str | None = None,
                    from_address: str | None = None, model: str | None = None, res_id: int | None = None,
                    deadline: float | None = None) -> int:
        """How many messages were filed since a time: from one sender through one alias domain
        (``from_address``, ``domain``), or to one record of one Odoo (``odoo_identity``, ``model``, ``res_id``).

        One Odoo is one URL and database (config.odoo_identity), whatever its connections are called.
        Rows of a journal older than schema version 5 (no domain: '') count for every domain, and
        older than 7 (no Odoo: '') for every Odoo.
        """
        if from_address is not None:
            sql, parameters = _FILED_FROM_SENDER, (from_address, domain or "", since)
        else:
            sql, parameters = _FILED_ON_RECORD, (model, res_id, odoo_identity, since)
        rows, _ = self._run("read", sql, parameters, deadline=deadline)
        return int(rows[0][0])

    def was_filed(self, message_id: str, from_address: str, odoo_identity: str, model: str | None = None,
                  res_id: int | None = None, *, deadline: float | None = None) -> bool:
        """Whether this sender's message was filed on this record of this Odoo (any time): a retry,
        not a new message. Without a record (a plain address not routed yet): on any record of it.
        A row of unknown Odoo ('', older than schema version 7) counts for every Odoo."""
        sql = f"SELECT 1 FROM messages WHERE {_SENDERS_FILED}"
        parameters: tuple = (message_id, from_address, odoo_identity)
        if model is not None:
            sql += " AND model = ? AND res_id = ?"
            parameters += (model, res_id)
        rows, _ = self._run("read", sql + " LIMIT 1", parameters, deadline=deadline)
        return bool(rows)

    def filed_as(self, message_id: str, from_address: str, odoo_identity: str, model: str, res_id: int, *,
                 public_reply_to: str | None = None, deadline: float | None = None) -> int | None:
        """The Odoo message this sender's message was filed as on this record of this Odoo (as was_filed),
        or None: what a retry refused after the record or the sender changed is answered with
        (pipeline._answer_retry_of_filed).

        ``public_reply_to``: the address of a delivery that files a public reply; only a row filed
        as a public reply, or one of this very address (a reply-all filed as a note), is its first
        delivery. The note of its Bcc'd note address is not: a reply refused for a reason of its
        own (an employee where allow_internal_users is false, a sender who may not post publicly)
        was answered "Already filed" under that note, and the customer never got the answer
        (found by a review of the session's merges; post.look_up counts public messages only the
        same way)."""
        sql = (f"SELECT odoo_message_id FROM messages WHERE {_SENDERS_FILED} AND model = ? AND res_id = ? "
               "AND odoo_message_id IS NOT NULL")
        parameters: tuple = (message_id, from_address, odoo_identity, model, res_id)
        if public_reply_to is not None:
            sql += " AND (kind = 'reply' OR rcpt = ? COLLATE NOCASE)"
            parameters += (public_reply_to,)
        rows, _ = self._run("read", sql + " ORDER BY id DESC LIMIT 1", parameters, deadline=deadline)
        return int(rows[0][0]) if rows else None

    def prune(self, before: float, *, batch: int = 2000) -> dict[str, int]:
        """Delete the rows older than ``before`` (a Unix time) that nothing reads any more; the counts per table.

        messages by their reception, notices by when they were sent, unsettled posts by their
        ``since``; never a receipt (an open receipt is a message being filed, or one a start or a
        supervisor recovers). The caller keeps ``before`` earlier than the longest rate-limit
        window and odoo.unsettled_post_seconds. Deleted in short transactions, so that a running
        gateway's writes wait for one batch at most, not for the whole prune.
        """
        deleted = {"messages": 0, "notices": 0, "unsettled_posts": 0}
        statements = {
            "messages": "DELETE FROM messages WHERE id IN "
                        "(SELECT id FROM messages WHERE received_at < ? ORDER BY received_at LIMIT ?)",
            "notices": "DELETE FROM notices WHERE rowid IN (SELECT rowid FROM notices WHERE sent_at < ? LIMIT ?)",
            "unsettled_posts": "DELETE FROM unsettled_posts WHERE rowid IN "
                               "(SELECT rowid FROM unsettled_posts WHERE since < ? LIMIT ?)",
        }
        for table, sql in statements.items():
            while True:
                count = self._write("pruned", lambda connection: connection.execute(sql, (before, batch)).rowcount)
                deleted[table] += count
                if count < batch:
                    break
        return deleted

    def health(self) -> tuple[str | None, float | None]:
        """(what SQLite's quick_check found wrong, or None; the oldest message row's received_at, or None)."""
        found, _ = self._run("checked", "PRAGMA quick_check")
        problems = [str(row[0]) for row in found if row and row[0] != "ok"]
        oldest, _ = self._run("read", "SELECT MIN(received_at) FROM messages")
        return ("; ".join(problems[:3]) or None), (oldest[0][0] if oldest else None)

    def recent(
        self, limit: int = 20, *, verdict: str | None = None, sender: str | None = None,
        since: float | None = None, model: str | None = None, res_id: int | None = None,
        domain: str | None = None, odoo: str | None = None, odoo_identity: str | None = None,
        message_id: str | None = None,
    ) -> list[JournalEntry]:
        """The newest entries first, optionally of one verdict, one sender (From or envelope),
        received at or after ``since`` (a Unix time), about one model (and record), through one
        alias domain or for one [odoo.NAME] connection. With ``odoo_identity`` too (config's
        odoo_identities[odoo]), every connection to that connection's database counts: rows naming
        the database, and rows of ``odoo`` written before the journal kept it. ``message_id``: the
        rows of one Message-ID, as message.own_message_id reads it ("<id@host>"; a retry, another
        recipient of the same message each have their own)."""
        conditions: list[str] = []
        parameters: list[object] = []
        if message_id is not None:
            # Stored as own_message_id made it; a journal written before it (commit 2bd49ad, no
            # migration rewrote the rows) kept a header without brackets as it was, bare.
            conditions.append("message_id IN (?, ?)")
            parameters.extend((message_id, message_id.removeprefix("<").removesuffix(">")))
        if domain is not None:
            conditions.append("domain = ?")
            parameters.append(domain)
        if odoo is not None and odoo_identity:
            conditions.append("(odoo_identity = ? OR (odoo_identity = '' AND odoo = ?))")
            parameters.extend((odoo_identity, odoo))
        elif odoo is not None:
            conditions.append("odoo = ?")
            parameters.append(odoo)
        if since is not None:
            conditions.append("received_at >= ?")
            parameters.append(float(since))
        if model is not None:
            conditions.append("model = ?")
            parameters.append(model)
        if res_id is not None:
            conditions.append("res_id = ?")
            parameters.append(int(res_id))
        if verdict is not None:
            if verdict not in VERDICTS:
                raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, not {verdict!r}")
            conditions.append("verdict = ?")
            parameters.append(verdict)
        if sender is not None:
            conditions.append("(from_address = ? COLLATE NOCASE OR mail_from = ? COLLATE NOCASE)")
            parameters += [sender, sender]
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        parameters.append(int(limit))
        rows, _ = self._run(
            "read",
            f"SELECT {_SELECTED} FROM messages {where} ORDER BY received_at DESC, id DESC LIMIT ?",
            tuple(parameters),
        )
        return [self._entry(row) for row in rows]

    def get(self, entry_id: int) -> JournalEntry | None:
        rows, _ = self._run("read", f"SELECT {_SELECTED} FROM messages WHERE id = ?", (entry_id,))
        return self._entry(rows[0]) if rows else None

    @staticmethod
    def _entry(row: tuple) -> JournalEntry:
        values = dict(zip(("id", *_COLUMNS), row))
        for column in _JSON_COLUMNS:
            values[column] = json.loads(values[column])
        return JournalEntry(**values)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._connection.close()
                with self._readers_lock:
                    readers, self._readers = self._readers, []
                for reader in readers:
                    reader.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# Message-IDs, addresses and SMTP replies come from strangers; printed raw, an escape sequence in
# one could rewrite the admin's terminal, and a bidirectional override reorder the line. Control
# and bidirectional formatting characters (observe.UNPRINTABLE) are shown as "?" (observe.masked).


def _cell(value: object, width: int | None = None) -> str:
    text = "-" if value in (None, "") else masked(str(value))
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def needed_columns(entries: list[JournalEntry]) -> tuple[bool, bool]:
    """Whether the table of ``entries`` needs a domain column and an odoo column, from the rows themselves.

    Columns only where they tell these rows apart: an odoo column when they name several [odoo.NAME]
    connections (the same MODEL/ID is a record in each), a domain column when the rows of one of
    them name several alias domains (otherwise the Odoo names the domain). Not from the
    configuration, which may no longer have the names of older rows (day-2 review: after [odoo.main]
    was removed by a reload, rows of two Odoos were listed without an odoo column). Rows written
    before the journal kept these names (empty) tell nothing apart.
    """
    domains_of: dict[str, set[str]] = {}
    for entry in entries:
        if entry.odoo:
            domains_of.setdefault(entry.odoo, set()).update({entry.domain} if entry.domain else ())
    return any(len(domains) > 1 for domains in domains_of.values()), len(domains_of) > 1


def format_entries(entries: list[JournalEntry]) -> str:
    """A compact table of entries for `note-gateway log`, one line each.

    The alias domain and the [odoo.NAME] connection of each row follow its target where they tell
    the rows apart (needed_columns): with several Odoo databases, project.task/60 names a record in each.
    """
    if not entries:
        return "No journal entries."
    domain_column, odoo_column = needed_columns(entries)
    extra = (("domain", lambda entry: _cell(entry.domain, 40)),) if domain_column else ()
    extra += (("odoo", lambda entry: _cell(entry.odoo, 20)),) if odoo_column else ()
    header = ("time (UTC)", "verdict", "sender", "target", *(name for name, _ in extra), "reply", "odoo id",
              "message-id")
    rows = []
    for entry in entries:
        received = datetime.fromtimestamp(entry.received_at, tz=timezone.utc)
        target = f"{entry.model}/{entry.res_id}" if entry.model and entry.res_id is not None else entry.model
        reply_code = " ".join(entry.smtp_reply.split()[:2])
        rows.append(
            (
                received.strftime("%Y-%m-%dT%H:%M:%SZ"),
                _cell(entry.verdict),
                _cell(entry.from_address or entry.mail_from, 40),
                _cell(target, 32),
                *(cell(entry) for _, cell in extra),
                _cell(reply_code),
                _cell(entry.odoo_message_id),
                _cell(entry.message_id),
            )
        )
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        # The last column (the Message-ID) is not padded: it is often long and ends the line.
        lines.append("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]).rstrip())
    return "\n".join(lines)


def format_decision(entry: JournalEntry) -> str:
    """One message's whole decision for `note-gateway log --id N`: envelope, verdict, reply, stages."""
    received = datetime.fromtimestamp(entry.received_at, tz=timezone.utc)
    target = f"{entry.kind}+ {entry.model}/{_cell(entry.res_id)}" if entry.model else _cell(entry.kind)
    if entry.odoo:
        target += f" on Odoo {_cell(entry.odoo)}"
    lines = [
        f"journal id     {entry.id}",
        f"received       {received.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}",
        f"peer           {_cell(entry.peer)}",
        f"MAIL FROM      {_cell(entry.mail_from)}",
        f"RCPT TO        {_cell(entry.rcpt)}",
        f"From           {_cell(entry.from_address)}",
        f"DKIM d=        {_cell(entry.dkim_domain)}",
        f"Message-ID     {_cell(entry.message_id)}",
        f"target         {target}",
        f"verdict        {entry.verdict}" + (f" ({entry.refusal_class})" if entry.refusal_class else ""),
        f"reply          {_cell(entry.smtp_reply)}",
        # How a plain address was routed, why a reply was a note, what the reply left out for the
        # operator only (the access policy, the refusal a plain address's reply said another in place of).
        *([f"decision       {_cell(entry.decision)}"] if entry.decision else []),
        f"odoo message   {_cell(entry.odoo_message_id)}",
        f"total          {entry.total_seconds * 1000:.1f} ms (Odoo {entry.odoo_seconds * 1000:.1f} ms)",
        "stages:",
    ]
    if entry.durations:
        width = max(len(stage) for stage in entry.durations)
        # The stages in the order they ran; the last one listed is where a refusal stopped the run.
        lines += [f"  {stage.ljust(width)}  {seconds * 1000:9.1f} ms" for stage, seconds in entry.durations.items()]
    else:
        lines.append("  (none ran)")
    lines.append("defects:" + ("" if entry.defects else " none"))
    lines += [f"  {_cell(defect)}" for defect in entry.defects]
    return "\n".join(lines)
