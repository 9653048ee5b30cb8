"""Rate limits count filed messages in the journal within the window, per sender and per record."""

import time

import pytest

from gateway.config import RateLimits
from gateway.context import Target
from gateway.journal import Journal, JournalEntry
from gateway.ratelimit import check_rate
from gateway.refusals import RecordRateLimited, SenderRateLimited

TASK = Target("note", "notes.example.com", "project.task", 60, "note+project.task-60-x@notes.example.com")
OTHER = Target("note", "notes.example.com", "project.task", 61, "note+project.task-61-x@notes.example.com")


def _filed(journal, sender, target, minutes_ago, verdict="filed"):
    journal.record(JournalEntry(verdict=verdict, received_at=time.time() - minutes_ago * 60, from_address=sender,
                                model=target.model, res_id=target.res_id))


def test_only_filed_messages_within_the_window_count(tmp_path):
    limits = RateLimits(per_sender=2, per_record=0, window_minutes=60)
    with Journal(tmp_path / "journal.sqlite3") as journal:
        _filed(journal, "paula@example.com", TASK, 90)               # outside the window
        _filed(journal, "paula@example.com", TASK, 5, "deferred")    # a deferral costs nothing
        _filed(journal, "paula@example.com", TASK, 5, "refused")
        _filed(journal, "Paula@Example.com", OTHER, 10)
        check_rate(journal, limits, "paula@example.com", TASK)
        _filed(journal, "paula@example.com", OTHER, 1)
        with pytest.raises(SenderRateLimited):
            check_rate(journal, limits, "paula@example.com", TASK)
        check_rate(journal, limits, "peter@example.com", TASK)


def test_per_record_limit_counts_every_sender(tmp_path):
    limits = RateLimits(per_sender=0, per_record=2, window_minutes=60)
    with Journal(tmp_path / "journal.sqlite3") as journal:
        _filed(journal, "paula@example.com", TASK, 1)
        _filed(journal, "peter@example.com", TASK, 2)
        with pytest.raises(RecordRateLimited):
            check_rate(journal, limits, "joel@example.com", TASK)
        check_rate(journal, limits, "joel@example.com", OTHER)


def test_a_message_the_sender_filed_on_the_record_passes_at_the_limit(tmp_path):
    limits = RateLimits(per_sender=1, per_record=1, window_minutes=60)
    with Journal(tmp_path / "journal.sqlite3") as journal:
        journal.record(JournalEntry(verdict="filed", received_at=time.time() - 60, message_id="<a@example.com>",
                                    from_address="Paula@example.com", model=TASK.model, res_id=TASK.res_id))
        check_rate(journal, limits, "paula@example.com", TASK, message_id="<a@example.com>")
        with pytest.raises(SenderRateLimited):
            check_rate(journal, limits, "paula@example.com", TASK, message_id="<b@example.com>")
        with pytest.raises(SenderRateLimited):   # not filed on this record
            check_rate(journal, limits, "paula@example.com", OTHER, message_id="<a@example.com>")
        with pytest.raises(RecordRateLimited):   # another sender's message with that Message-ID
            check_rate(journal, limits, "peter@example.com", TASK, message_id="<a@example.com>")
