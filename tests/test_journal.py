"""The journal: entries stored and read back, filters, threads, and a file that cannot be written."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from serving import open_folder, run_unprivileged

from gateway.journal import SCHEMA_VERSION, Journal, JournalBusy, JournalEntry, JournalUnavailable, format_entries

START = 1_741_944_600.0  # 2025-03-14T09:30:00Z


def filed(**changes) -> JournalEntry:
    values = dict(
        received_at=START,
        message_id="<pump-check@example.com>",
        peer="192.0.2.25",
        mail_from="portal.contrib@example.com",
        rcpt="note+project.task-42-abcdefghijklmnop@notes.example.com",
        from_address="portal.contrib@example.com",
        dkim_domain="example.com",
        kind="note",
        model="project.task",
        res_id=42,
        verdict="filed",
        smtp_reply="250 2.0.0 Filed as message 571",
        odoo_message_id=571,
        durations={"parse": 0.002, "authenticate": 0.04, "post": 0.31},
        total_seconds=0.36,
        odoo_seconds=0.31,
        defects=["CharsetDecodeDefect"],
    )
    values.update(changes)
    return JournalEntry(**values)


@pytest.fixture
def journal(tmp_path):
    with Journal(tmp_path / "journal.sqlite3") as journal:
        yield journal


def test_record_and_get_round_trip(journal):
    entry = filed()
    entry_id = journal.record(entry)
    stored = journal.get(entry_id)
    assert stored is not None
    assert stored.id == entry_id
    entry.id = entry_id
    assert stored == entry
    assert journal.get(entry_id + 1000) is None


def test_recent_is_newest_first_and_limited(journal):
    for second in range(30):
        journal.record(filed(received_at=START + second, message_id=f"<m{second}@example.com>"))
    entries = journal.recent()
    assert len(entries) == 20
    assert [entry.message_id for entry in entries[:2]] == ["<m29@example.com>", "<m28@example.com>"]
    assert len(journal.recent(5)) == 5


def test_recent_filters_by_verdict_and_sender(journal):
    journal.record(filed())
    journal.record(
        filed(
            received_at=START + 1,
            verdict="refused",
            from_address="peter@example.net",
            mail_from="bounces@example.net",
            refusal_class="NotContributor",
            smtp_reply="550 5.7.1 Sender may not post internal notes",
            odoo_message_id=None,
        )
    )
    journal.record(
        filed(received_at=START + 2, verdict="deferred", smtp_reply="451 4.3.0 Odoo is unavailable")
    )
    assert [entry.verdict for entry in journal.recent(verdict="refused")] == ["refused"]
    assert [entry.verdict for entry in journal.recent(sender="Peter@Example.NET")] == ["refused"]
    assert [entry.verdict for entry in journal.recent(sender="bounces@example.net")] == ["refused"]
    both = journal.recent(verdict="filed", sender="portal.contrib@example.com")
    assert [entry.verdict for entry in both] == ["filed"]
    with pytest.raises(ValueError):
        journal.recent(verdict="lost")


def test_unknown_verdict_is_refused():
    with pytest.raises(ValueError):
        JournalEntry(verdict="ok")


def test_records_from_many_threads(journal):
    errors: list[BaseException] = []

    def write(thread_number: int) -> None:
        try:
            for number in range(50):
                journal.record(filed(message_id=f"<{thread_number}-{number}@example.com>"))
                journal.recent(3)
        except BaseException as error:  # Collected so the test, not the thread, reports it.
            errors.append(error)

    threads = [threading.Thread(target=write, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    entries = journal.recent(1000)
    assert len(entries) == 400
    assert len({entry.id for entry in entries}) == 400


def test_a_write_waiting_for_another_process_holds_no_read_and_ends_at_its_deadline(journal):
    import time

    journal.record(filed())
    # Another process (an operator's sqlite3) holds the write lock (journal review: each statement
    # then held the journal's lock for SQLite's 5 s, and every other thread, reads included, waited).
    holder = sqlite3.connect(journal.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO notices VALUES ('holder@example.com', 'r', 'd', 0)")
    try:
        waiting = threading.Thread(target=lambda: pytest.raises(JournalBusy, journal.record, filed(), wait=3.0))
        waiting.start()
        time.sleep(0.3)
        started = time.monotonic()
        assert journal.count_filed(START - 60, from_address="portal.contrib@example.com", domain="") == 1
        assert journal.was_filed("<pump-check@example.com>", "portal.contrib@example.com", "")
        assert len(journal.recent(5)) == 1
        assert time.monotonic() - started < 1.0
        # A write gives up at the caller's deadline, not after SQLite's whole timeout.
        started = time.monotonic()
        with pytest.raises(JournalBusy, match="database is locked"):
            journal.begin(received_at=START, message_id="<m@example.com>", peer="", mail_from="", rcpt="",
                          from_address="a@example.com", kind="note", model="project.task", res_id=42,
                          deadline=time.monotonic() + 0.5)
        assert time.monotonic() - started < 1.5
        waiting.join(timeout=10)
        assert not waiting.is_alive()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # The lock released, writes go through again.
    assert journal.record(filed(message_id="<after@example.com>"))
    assert journal.open_receipts() == 0


def test_schema_version_and_wal(tmp_path):
    path = tmp_path / "journal.sqlite3"
    Journal(path).close()
    Journal(path).close()  # Opening again finds the schema in place and leaves it alone.
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        connection.close()


def test_journal_from_a_newer_gateway_is_refused(tmp_path):
    path = tmp_path / "journal.sqlite3"
    Journal(path).close()
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()
    with pytest.raises(JournalUnavailable, match="newer"):
        Journal(path)


def test_path_that_cannot_be_created_is_unavailable(tmp_path):
    not_a_folder = tmp_path / "plain-file"
    not_a_folder.write_text("")
    with pytest.raises(JournalUnavailable, match="cannot be opened"):
        Journal(not_a_folder / "journal.sqlite3")


def test_file_that_is_not_a_database_is_unavailable(tmp_path):
    path = tmp_path / "journal.sqlite3"
    path.write_bytes(b"this is not SQLite, " * 100)
    with pytest.raises(JournalUnavailable):
        Journal(path)


# Opens the journal named by argv[1] and records an entry; prints what came of it.
_RECORD = """
import sys
from gateway.journal import JournalUnavailable, Journal
from test_journal import filed
try:
    journal = Journal(sys.argv[1])
    journal.record(filed())
except JournalUnavailable as error:
    print(f"JournalUnavailable: {error}")
else:
    print("recorded")
"""


def _record_as_unprivileged(path: Path) -> subprocess.CompletedProcess:
    """Record an entry in the journal at ``path`` from a process the file modes apply to (as nobody
    when the tests run as root, who writes to read-only files: serving.run_unprivileged)."""
    return run_unprivileged(["-c", _RECORD, str(path)], path.parent)


def test_read_only_file_is_unavailable():
    # Skipped when the tests ran as root, so never in CI (found by a review of the tests); the
    # journal is now written by nobody then. In a folder of /tmp that nobody can reach (pytest's
    # tmp_path is below a folder only root may enter).
    with open_folder() as folder:
        path = folder / "journal.sqlite3"
        Journal(path).close()
        path.chmod(0o444)
        folder.chmod(0o555)
        done = _record_as_unprivileged(path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"JournalUnavailable: journal {path} "), done.stdout
        # The same process can write it once the file and its folder are writable again.
        folder.chmod(0o755)
        path.chmod(0o644)
        done = _record_as_unprivileged(path)
        assert (done.returncode, done.stdout) == (0, "recorded\n"), done.stderr


def test_read_only_journal_reads_but_does_not_write(tmp_path):
    path = tmp_path / "journal.sqlite3"
    with Journal(path) as journal:
        journal.record(filed())
    with Journal(path, read_only=True) as reader:
        assert len(reader.recent()) == 1
        with pytest.raises(JournalUnavailable, match="cannot be written"):
            reader.record(filed())


def test_full_disk_is_unavailable(journal):
    # A page limit makes SQLite answer SQLITE_FULL exactly as it does on a full disk.
    journal._connection.execute("PRAGMA max_page_count = 10")
    with pytest.raises(JournalUnavailable, match="full"):
        for number in range(1000):
            journal.record(filed(message_id=f"<{number}-{'x' * 2000}@example.com>"))


def test_closed_journal_is_unavailable(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite3")
    journal.close()
    journal.close()
    with pytest.raises(JournalUnavailable, match="closed"):
        journal.record(filed())


def test_format_entries_is_a_compact_table():
    text = format_entries(
        [
            filed(
                id=2,
                received_at=START + 60,
                verdict="refused",
                smtp_reply="550 5.7.1 Sender not authenticated",
                odoo_message_id=None,
                message_id="<x\x1b[2J@evil.example>",
            ),
            filed(id=1),
        ]
    )
    lines = text.splitlines()
    assert len(lines) == 3
    header = ["time", "(UTC)", "verdict", "sender", "target", "reply", "odoo", "id", "message-id"]
    assert lines[0].split() == header
    assert lines[1].split() == [
        "2025-03-14T09:31:00Z", "refused", "portal.contrib@example.com", "project.task/42",
        "550", "5.7.1", "-",
        "<x?[2J@evil.example>",
    ]
    assert lines[2].split() == [
        "2025-03-14T09:30:00Z", "filed", "portal.contrib@example.com", "project.task/42",
        "250", "2.0.0", "571",
        "<pump-check@example.com>",
    ]
    assert "\x1b" not in text
    assert format_entries([]) == "No journal entries."


def test_journal_of_the_first_schema_gains_the_decision_column(tmp_path):
    # A journal written by a gateway before issue 7: schema version 1, no decision column.
    import sqlite3

    from gateway.journal import _MIGRATIONS

    path = tmp_path / "old.sqlite3"
    connection = sqlite3.connect(path)
    for statement in _MIGRATIONS[0]:
        connection.execute(statement)
    connection.execute("PRAGMA user_version = 1")
    connection.execute("INSERT INTO messages (received_at, verdict) VALUES (1.0, 'filed')")
    connection.commit()
    connection.close()
    with Journal(path) as journal:
        [old] = journal.recent(5)
        assert old.decision == ""
        journal.record(JournalEntry(verdict="filed", decision="routed by mail.message <a@example.com>"))
        assert journal.recent(5)[0].decision == "routed by mail.message <a@example.com>"


def test_journal_of_schema_4_gains_the_alias_domain_and_odoo_the_rate_limits_count_by(tmp_path):
    # A journal written before the rate limits counted per alias domain and per Odoo: schema
    # version 4, its rows without either. They keep counting for every domain and Odoo, as they
    # did, until they leave the window; rows written now count only where they were filed.
    from gateway.journal import _MIGRATIONS

    path = tmp_path / "old.sqlite3"
    connection = sqlite3.connect(path)
    for statements in _MIGRATIONS[:4]:
        for statement in statements:
            connection.execute(statement)
    connection.execute("PRAGMA user_version = 4")
    connection.execute("INSERT INTO messages (received_at, message_id, from_address, model, res_id, verdict) "
                       "VALUES (?, '<old@example.com>', 'portal.contrib@example.com', 'project.task', 42, 'filed')",
                       (START,))
    connection.commit()
    connection.close()
    since = START - 60
    with Journal(path) as journal:
        [old] = journal.recent(5)
        assert (old.message_id, old.domain, old.odoo) == ("<old@example.com>", "", "")
        journal.record(filed(received_at=START + 1, domain="notes.example.com", odoo="main",
                             odoo_identity="https://main.example:443/main"))
        counted: list[str] = []
        # Reads run on the reading thread's own connection (Journal._reader).
        journal._reader().set_trace_callback(counted.append)
        assert [journal.count_filed(since, odoo_identity=odoo, model="project.task", res_id=42)
                for odoo in ("https://main.example:443/main", "https://second.example:443/second")] == [2, 1]
        assert [journal.count_filed(since, domain=domain, from_address="Portal.Contrib@example.com")
                for domain in ("notes.example.com", "notes.second.example")] == [2, 1]
        journal._reader().set_trace_callback(None)
        assert journal.was_filed("<old@example.com>", "portal.contrib@example.com", "https://second.example:443/second",
                                 "project.task", 42)
        assert not journal.was_filed("<pump-check@example.com>", "portal.contrib@example.com",
                                     "https://second.example:443/second")
        [entry] = [entry for entry in journal.recent(5) if entry.odoo]
        assert (entry.domain, entry.odoo) == ("notes.example.com", "main")
        # Each count reads one index and no table row: it runs for every message.
        plans = {journal._connection.execute("EXPLAIN QUERY PLAN " + sql).fetchall()[0][3].split(" (")[0]
                 for sql in counted}
        assert plans == {"SEARCH messages USING COVERING INDEX messages_record",
                         "SEARCH messages USING COVERING INDEX messages_sender"}
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
    finally:
        connection.close()


def test_the_journal_and_its_wal_files_are_readable_by_their_owner_only(tmp_path):
    # Operator run: a `serve` started by hand (umask 022) left journal.sqlite3, -wal and -shm
    # readable by every local user; they hold senders, Message-IDs and whole record addresses.
    import os
    import stat

    previous = os.umask(0o022)
    try:
        with Journal(tmp_path / "journal.sqlite3") as journal:
            journal.record(JournalEntry(verdict="filed", message_id="<a@example.com>"))
            modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()
                     if path.name.startswith("journal.sqlite3")}
    finally:
        os.umask(previous)
    assert {"journal.sqlite3", "journal.sqlite3-wal", "journal.sqlite3-shm"} <= set(modes)
    assert set(modes.values()) == {0o600}, modes


# Another process opens the journal and closes it again, as an sqlite3 shell or `prune-journal` does.
_OTHER_CONNECTION = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1])
connection.execute("SELECT count(*) FROM messages").fetchall()
connection.close()
"""


def _open_and_close_in_another_process(path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _OTHER_CONNECTION, str(path)], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr


def test_a_second_journal_on_the_file_keeps_the_locks_of_the_process_connections(tmp_path):
    # Onboarding review: a reload builds a new Journal in the process that serves, and its
    # os.close(os.open(journal)) dropped every POSIX lock the process held on the file (fcntl(2)),
    # the SHARED lock of the running journal's connections too. Another process closing its
    # connection then took itself for the last one: it checkpointed and deleted the -wal and -shm
    # files the running journal went on writing into (451 "disk I/O error", rows `log` never saw).
    path = tmp_path / "journal.sqlite3"
    wal = tmp_path / "journal.sqlite3-wal"
    with Journal(path) as serving:
        serving.record(filed(message_id="<before@example.com>"))
        assert [entry.message_id for entry in serving.recent(5)] == ["<before@example.com>"]  # a reader too
        with Journal(path) as reloaded:
            _open_and_close_in_another_process(path)
            assert wal.exists() and (tmp_path / "journal.sqlite3-shm").exists()
            reloaded.record(filed(message_id="<reloaded@example.com>"))
        # The reload's journal closed (the next reload retires it): the first one's locks stay.
        _open_and_close_in_another_process(path)
        assert wal.exists()
        serving.record(filed(message_id="<after@example.com>"))
    with Journal(path, read_only=True) as reader:
        assert [entry.message_id for entry in reader.recent(5)] == [
            "<after@example.com>", "<reloaded@example.com>", "<before@example.com>"]


def test_a_strangers_message_leaves_a_row_and_a_log_line_of_bounded_size(gateway, mailer, caplog):
    import json
    import logging

    from gateway.testing.odoo_demo import TASK_ID

    # Found by a review of the journal: an unsigned 4 MB message of 400 text parts, each declaring
    # a charset label thousands of characters long (RFC 2231 continuations), was refused in 0.4 s
    # and left a journal row whose defects were 3,968,000 characters and a JSON log line of 3.9 MB:
    # each refused message of max_message_size could leave as much in the journal and in journald.
    to = mailer.address("note", "project.task", TASK_ID)
    label = b"".join(b';\r\n charset*%d="%s"' % (number, b"x" * 900) for number in range(10))
    parts = b"".join(b"--B\r\nContent-Type: text/plain" + label + b"\r\n\r\nhello\r\n" for _ in range(120))
    # A quoted local part may be folded (RFC 5322 section 3.2.4): a From address of 3600 characters.
    sender = '"' + "\r\n ".join(["x" * 900] * 4) + '"@nowhere.invalid'
    raw = (f"From: {sender}\r\nTo: {to}\r\nSubject: hi\r\nMessage-ID: <bloat@nowhere.invalid>\r\n"
           "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\n").encode() + parts + b"--B--\r\n"
    assert len(raw) > 1_000_000
    with caplog.at_level(logging.INFO, logger="gateway.messages"):
        reply = mailer.send(raw, to, mail_from="stranger@nowhere.invalid")
    assert reply.startswith("550 5.7.1"), reply
    [row] = [row for row in gateway.services.journal.recent(5) if row.message_id == "<bloat@nowhere.invalid>"]
    # At most 50 defects of at most 200 characters; the last says how many more there were.
    assert len(row.defects) == 50
    assert row.defects[-1] == f"+{120 - 49} more defects not kept"
    assert all(len(defect) <= 200 for defect in row.defects)
    assert row.defects[0].startswith("charset-unknown:") and row.defects[0].endswith("…")
    assert len(row.from_address) == 1000 and row.from_address.endswith("…")
    with sqlite3.connect(gateway.services.config.journal_path) as connection:
        [(size,)] = connection.execute(
            "SELECT length(message_id) + length(mail_from) + length(rcpt) + length(from_address) + length(defects) "
            "+ length(smtp_reply) + length(decision) + length(durations) FROM messages WHERE id = ?", (row.id,))
    assert size < 15_000
    [line] = [record.getMessage() for record in caplog.records if "<bloat@nowhere.invalid>" in record.getMessage()]
    assert len(line.encode()) < 15_000
    logged = json.loads(line)
    assert logged["defects"] == row.defects and logged["from_address"] == row.from_address


def test_bidirectional_overrides_of_a_stranger_reach_no_log_line_or_journal_view_raw(gateway, mailer, caplog):
    import json
    import logging

    from gateway.journal import format_decision
    from gateway.testing.odoo_demo import TASK_ID

    # Found by a fuzzing review: the control characters were escaped, the bidirectional overrides and
    # isolates not. U+202E (right-to-left override) shows what follows it reversed on an operator's
    # terminal: the "exe.jpg" of this Message-ID read "gpj.exe".
    message_id = "<note-\u202eexe.jpg\u2066x\u2069@example.com>"
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.message("note_from_contributor.eml", to, message_id=message_id)
    with caplog.at_level(logging.INFO):
        reply = mailer.send(mailer.sign(raw), to)
    assert reply.startswith("250 2.0.0 Filed"), reply
    [row] = [row for row in gateway.services.journal.recent(5) if "exe.jpg" in row.message_id]
    assert row.message_id == message_id  # the journal keeps the value as it was written
    # The JSON line escapes them, and a JSON reader reads the same value back.
    [line] = [record.getMessage() for record in caplog.records
              if record.name == "gateway.messages" and "exe.jpg" in record.getMessage()]
    assert "\u202e" not in line and "\u2066" not in line and "\\u202e" in line
    assert json.loads(line)["message_id"] == message_id
    # The diagnostic line of the listener shows them escaped.
    [smtp_line] = [record.getMessage() for record in caplog.records
                   if record.name == "gateway.smtp" and "exe.jpg" in record.getMessage()]
    assert "\u202e" not in smtp_line and "<note-\\u202eexe.jpg\\u2066x\\u2069@example.com>" in smtp_line
    # `note-gateway log` and `log --id N` show them as "?", as any control character.
    for text in (format_entries([row]), format_decision(row)):
        assert "\u202e" not in text and "<note-?exe.jpg?x?@example.com>" in text


def test_the_gateways_own_notes_are_kept_whatever_the_messages_defects(test_odoo, gateway, mailer):
    # Found by a review of this session's merges: the message's defects (its sender's choice) came
    # first and the bound kept the first 49, so 60 parts in unknown charsets pushed the gateway's
    # notes (recipient-dropped, odoo-error, unsettled-post, ...) out of the row.
    import email.utils

    from gateway.testing.odoo_demo import TASK_ID

    to = mailer.address("note", "project.task", TASK_ID)
    parts = "".join(f"--B\r\nContent-Type: text/plain; charset=\"x-no-such-{index}\"\r\n\r\nline {index} caf\xe9\r\n"
                    for index in range(60))
    raw = (f"From: Paula <portal.contrib@example.com>\r\nTo: {to}\r\nCc: stranger@outside.example\r\n"
           f"Subject: many parts\r\nDate: {email.utils.formatdate()}\r\nMessage-ID: <many-parts@example.com>\r\n"
           "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\n"
           "--B\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe pump is fixed.\r\n" + parts + "--B--\r\n"
           ).encode("latin-1")
    assert mailer.send(mailer.sign(raw), to).startswith("250 2.0.0 Filed")
    [row] = [row for row in gateway.services.journal.recent(5) if row.message_id == "<many-parts@example.com>"]
    assert "recipient-dropped:stranger@outside.example (not an internal user)" in row.defects
    assert len(row.defects) <= 100 and f"+{120 - 49} more defects not kept" in row.defects
