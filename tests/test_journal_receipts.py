"""Receipts before posting, their recovery after a crash, notice claims, and the upgrade of a version 1 journal."""

import sqlite3
import time

from gateway import journal as journal_module
from gateway.journal import Journal, JournalEntry


def _begin(journal: Journal, message_id: str) -> int:
    return journal.begin(received_at=time.time(), message_id=message_id, peer="127.0.0.1",
                         mail_from="portal.contrib@example.com", rcpt="note+project.task-60-x@notes.example.com",
                         from_address="portal.contrib@example.com", kind="note", model="project.task", res_id=60)


def test_outcome_removes_the_receipt_in_the_same_transaction(tmp_path):
    with Journal(tmp_path / "journal.sqlite3") as journal:
        receipt = _begin(journal, "<a@example.com>")
        assert journal.open_receipts() == 1
        journal.record(JournalEntry(verdict="filed", message_id="<a@example.com>", odoo_message_id=7), receipt_id=receipt)
        assert journal.open_receipts() == 0
        assert [entry.verdict for entry in journal.recent()] == ["filed"]


def test_receipts_left_by_a_crash_become_interrupted_rows(tmp_path):
    path = tmp_path / "journal.sqlite3"
    crashed = Journal(path)
    _begin(crashed, "<cut@example.com>")
    # No close: the process died here. A new gateway opens the same file.
    with Journal(path) as journal:
        [entry] = journal.recover_interrupted()
        assert (entry.verdict, entry.refusal_class, entry.message_id) == ("deferred", "Interrupted", "<cut@example.com>")
        assert journal.open_receipts() == 0
        assert journal.recover_interrupted() == []
        [row] = journal.recent()
        assert row.rcpt == "note+project.task-60-x@notes.example.com" and row.model == "project.task"
    crashed.close()


def test_a_notice_is_claimed_once_per_recipient_reason_and_day(tmp_path):
    with Journal(tmp_path / "journal.sqlite3") as journal:
        assert journal.claim_notice("paula@example.com", "NotContributor", "2026-11-22")
        assert not journal.claim_notice("Paula@Example.com", "NotContributor", "2026-11-22")
        assert journal.claim_notice("paula@example.com", "RecordAccessDenied", "2026-11-22")
        assert journal.claim_notice("paula@example.com", "NotContributor", "2026-11-23")


def test_a_version_1_journal_is_upgraded_with_its_rows(tmp_path):
    # A journal as the first release wrote it: its schema only, and one row.
    path = tmp_path / "journal.sqlite3"
    connection = sqlite3.connect(path)
    try:
        for statement in journal_module._MIGRATIONS[0]:
            connection.execute(statement)
        connection.execute("INSERT INTO messages (received_at, message_id, verdict) VALUES (1.0, '<old@example.com>', 'filed')")
        connection.execute("PRAGMA user_version = 1")
        connection.commit()
    finally:
        connection.close()
    with Journal(path) as journal:
        assert [entry.message_id for entry in journal.recent()] == ["<old@example.com>"]
        assert journal.open_receipts() == 0
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == journal_module.SCHEMA_VERSION == 5
    finally:
        connection.close()
