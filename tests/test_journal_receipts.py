"""Receipts before posting, their recovery after a crash, notice claims, and the upgrade of a version 1 journal."""

import os
import re
import sqlite3
import time

import pytest

from gateway import journal as journal_module
from gateway.journal import Journal, JournalEntry, JournalInUse, lock_journal


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


def test_a_recovered_receipt_names_its_alias_domain_and_odoo_for_log_filters(tmp_path):
    # Review of the last merges: rows recovered from a dead process's receipts had no domain or Odoo,
    # so `log --domain` / `--odoo` never listed them.
    path = tmp_path / "journal.sqlite3"
    crashed = Journal(path)
    _begin(crashed, "<cut@example.com>")
    with Journal(path) as journal:
        [entry] = journal.recover_interrupted(odoo_of={"notes.example.com": "main"})
        assert (entry.domain, entry.odoo) == ("notes.example.com", "main")
        assert [row.message_id for row in journal.recent(domain="notes.example.com", odoo="main")] == ["<cut@example.com>"]
    crashed.close()


def test_a_recovered_receipt_is_an_unsettled_post_since_it_was_written(tmp_path):
    # Crash review 2: the post a receipt announced may still be running in Odoo after its process died.
    path = tmp_path / "journal.sqlite3"
    crashed = Journal(path)
    before = time.time()
    _begin(crashed, "<cut@example.com>")
    with Journal(path) as journal:
        [entry] = journal.recover_interrupted()
        assert entry.defects[0].startswith("unsettled-post:")
        since = journal.unsettled_since("<cut@example.com>", "project.task", 60, "portal.contrib@example.com")
        assert since is not None and before <= since <= time.time()
    crashed.close()


def test_a_supervisor_recovers_only_the_receipts_of_the_dead_worker(tmp_path):
    with Journal(tmp_path / "journal.sqlite3") as journal:
        _begin(journal, "<mine@example.com>")
        journal._connection.execute("UPDATE receipts SET pid = 999999999")
        _begin(journal, "<sibling@example.com>")
        assert journal.recover_interrupted(pids=[]) == []
        [entry] = journal.recover_interrupted(pids=[999999999])
        assert entry.message_id == "<mine@example.com>" and journal.open_receipts() == 1


def test_an_open_receipt_of_another_delivery_counts_as_an_unsettled_post(tmp_path):
    # Read under the message's claim: another delivery's receipt was left by a process that died posting.
    key = ("<a@example.com>", "project.task", 60, "portal.contrib@example.com")
    with Journal(tmp_path / "journal.sqlite3") as journal:
        own = _begin(journal, "<a@example.com>")
        assert journal.unsettled_since(*key, own_receipt=own) is None
        assert journal.unsettled_since(*key) is not None
        journal.record(JournalEntry(verdict="filed", message_id="<a@example.com>"), receipt_id=own)
        assert journal.unsettled_since(*key) is None


def test_one_gateway_at_a_time_holds_the_journal(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "journal.sqlite3"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from gateway.journal import lock_journal; "
                               "lock_journal(sys.argv[1]); print('held', flush=True); sys.stdin.readline()", str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(JournalInUse, match=rf"pid {holder.pid} holds {re.escape(str(path))}\.lock"):
            lock_journal(path)
    finally:
        holder.kill()
        holder.wait()
    os.close(lock_journal(path))


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
        assert connection.execute("PRAGMA user_version").fetchone()[0] == journal_module.SCHEMA_VERSION == 7
    finally:
        connection.close()


ODOO_A = "https://erp-a.example:443/production"
ODOO_B = "https://erp-b.example:443/production"


def test_an_unsettled_post_is_kept_per_odoo(tmp_path):
    # Multi-Odoo review: task 60 of one Odoo is not task 60 of another; a marker of one neither
    # defers the other nor is settled by it.
    key = ("<a@example.com>", "project.task", 60, "portal.contrib@example.com")
    with Journal(tmp_path / "journal.sqlite3") as journal:
        journal.mark_unsettled(*key, ODOO_A)
        assert journal.unsettled_since(*key, ODOO_B) is None
        assert journal.unsettled_since(*key, ODOO_A) is not None
        journal.settle(*key, ODOO_B)
        assert journal.unsettled_since(*key, ODOO_A) is not None
        journal.settle(*key, ODOO_A)
        assert journal.unsettled_since(*key, ODOO_A) is None
        # An open receipt (a process that died posting) likewise holds for its own Odoo only.
        journal.begin(received_at=time.time(), message_id=key[0], peer="127.0.0.1", mail_from=key[3], rcpt="r",
                      from_address=key[3], kind="note", model=key[1], res_id=key[2], odoo_identity=ODOO_A)
        assert journal.unsettled_since(*key, ODOO_B) is None
        assert journal.unsettled_since(*key, ODOO_A) is not None
        [entry] = journal.recover_interrupted()
        assert entry.odoo_identity == ODOO_A
        assert journal.unsettled_since(*key, ODOO_B) is None
        assert journal.unsettled_since(*key, ODOO_A) is not None


def test_a_version_6_journal_keeps_its_unsettled_posts_for_every_odoo(tmp_path):
    # Its markers and receipts do not say which Odoo the post went to: each keeps deferring the
    # message in every Odoo, as it did, until it expires; no delivery to one Odoo settles it.
    path = tmp_path / "journal.sqlite3"
    key = ("<old@example.com>", "project.task", 60, "portal.contrib@example.com")
    since = time.time() - 10
    connection = sqlite3.connect(path)
    try:
        for statements in journal_module._MIGRATIONS[:6]:
            for statement in statements:
                connection.execute(statement)
        connection.execute("INSERT INTO unsettled_posts (message_id, model, res_id, sender, since) VALUES (?, ?, ?, ?, ?)",
                           (*key, since))
        connection.execute("INSERT INTO receipts (received_at, message_id, model, res_id, sender, written_at) "
                           "VALUES (?, '<cut@example.com>', 'project.task', 60, ?, ?)", (since, key[3], since + 1))
        connection.execute("PRAGMA user_version = 6")
        connection.commit()
    finally:
        connection.close()
    with Journal(path) as journal:
        assert journal.unsettled_since(*key, ODOO_A) == journal.unsettled_since(*key, ODOO_B) == since
        journal.settle(*key, ODOO_A)
        assert journal.unsettled_since(*key, ODOO_B) == since
        later = time.time()
        journal.mark_unsettled(*key, ODOO_A, since=later)
        assert (journal.unsettled_since(*key, ODOO_A), journal.unsettled_since(*key, ODOO_B)) == (later, since)
        journal.settle(*key, ODOO_A)
        assert journal.unsettled_since(*key, ODOO_A) == since
        # The old receipt becomes a marker of unknown Odoo too.
        cut = ("<cut@example.com>", *key[1:])
        assert journal.unsettled_since(*cut, ODOO_A) == since + 1
        [entry] = journal.recover_interrupted()
        assert entry.message_id == "<cut@example.com>" and entry.odoo_identity == ""
        assert journal.unsettled_since(*cut, ODOO_A) == journal.unsettled_since(*cut, ODOO_B) == since + 1
        # Expired markers are forgotten as before, whatever their Odoo.
        journal.mark_unsettled("<new@example.com>", *key[1:], ODOO_B, forget_before=time.time())
        rows = journal._connection.execute("SELECT message_id, odoo_identity FROM unsettled_posts").fetchall()
        assert rows == [("<new@example.com>", ODOO_B)]
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == journal_module.SCHEMA_VERSION == 7
        columns = [row[1] for row in connection.execute("PRAGMA table_info(unsettled_posts)")]
        assert columns == ["message_id", "model", "res_id", "sender", "since", "odoo_identity"]
    finally:
        connection.close()
