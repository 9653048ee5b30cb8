"""Faults on the way to Odoo and in the journal: each is a 4xx before anything is lost, and the retry files once."""

from __future__ import annotations

import email
import email.policy
import logging
import random
import sqlite3
import threading
import time
from contextlib import contextmanager

import pytest

from gateway import odoo
from gateway.config import load_config
from gateway.journal import Journal
from gateway.pipeline import Services
from gateway.smtp import ThreadedGateway
from gateway.testing.odoo_demo import DEMO_API_KEY, GATEWAY_UID, TASK_ID
from gateway.testing.sending import compose


def _stored(test_odoo, message_id: str) -> list[dict]:
    return [message for message in test_odoo.messages("project.task", TASK_ID) if message["message_id"] == message_id]


def test_odoo_dying_after_message_post_defers_and_the_retry_finds_the_note(test_odoo, gateway, mailer):
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<died@example.com>"))
    test_odoo.fail("die_after_post")
    reply = mailer.send(raw, to)
    # Odoo stored the note but never said so: the gateway cannot know, so it defers.
    assert reply.startswith("451 4.3.0 Odoo is unavailable"), reply
    [stored] = _stored(test_odoo, "<died@example.com>")
    test_odoo.heal()
    retry = mailer.send(raw, to)
    assert retry == f"250 2.0.0 Already filed as Odoo message {stored['id']}"
    assert len(_stored(test_odoo, "<died@example.com>")) == 1
    assert len(test_odoo.posts()) == 1
    with Journal(gateway.services.config.journal_path) as journal:
        assert [row.verdict for row in journal.recent(5)] == ["duplicate", "deferred"]
        assert journal.open_receipts() == 0


def _make_journal_read_only(journal: Journal) -> None:
    with journal._lock:
        journal._connection.execute("PRAGMA query_only = ON")


def _heal_read_only(journal: Journal) -> None:
    with journal._lock:
        journal._connection.execute("PRAGMA query_only = OFF")


def _fill_journal_disk(journal: Journal) -> None:
    # A real SQLITE_FULL: the file may not grow, and the receipts pages are filled to the brim.
    with journal._lock:
        connection = journal._connection
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        connection.execute(f"PRAGMA max_page_count = {pages + 4}")
        # Ever smaller rows, until not even an empty one fits in the last free bytes of a page.
        for size in (900, 150, 20, 0):
            with pytest.raises(sqlite3.OperationalError, match="full"):
                for _ in range(1000):
                    connection.execute("INSERT INTO receipts (received_at, message_id) VALUES (0, ?)",
                                       ("filler" + "x" * size,))


def _heal_journal_disk(journal: Journal) -> None:
    with journal._lock:
        journal._connection.execute("PRAGMA max_page_count = 1073741823")
        journal._connection.execute("DELETE FROM receipts WHERE message_id LIKE 'filler%'")


@pytest.mark.parametrize("fault, heal, error", [
    (_make_journal_read_only, _heal_read_only, "readonly"),
    (_fill_journal_disk, _heal_journal_disk, "full"),
], ids=["read-only", "disk-full"])
def test_journal_that_cannot_be_written_defers_before_posting(test_odoo, gateway, mailer, fault, heal, error,
                                                             caplog):
    journal = gateway.services.journal
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<journal@example.com>"))
    fault(journal)
    with caplog.at_level(logging.ERROR, logger="gateway.pipeline"):
        reply = mailer.send(raw, to)
    # SQLite's error and the journal's path are the admin's to read, in the log, not a stranger's
    # in the reply (journal review: "... journal /var/lib/.../journal.sqlite3 cannot be written:
    # database or disk is full" went to the remote sender).
    assert reply == "451 4.3.0 The gateway's journal cannot be written, try again later"
    assert str(journal.path) not in reply and error not in reply
    [logged] = [line for line in (record.getMessage() for record in caplog.records)
                if "journal unavailable in stage" in line]
    assert "stage record-receipt" in logged and error in logged and str(journal.path) in logged
    # Nothing reached Odoo: a note whose journal row could not be written is not posted.
    assert test_odoo.posts() == []
    heal(journal)
    assert mailer.send(raw, to).startswith("250 2.0.0 Filed")
    assert len(_stored(test_odoo, "<journal@example.com>")) == 1
    assert journal.open_receipts() == 0


def test_a_journal_another_process_holds_defers_at_the_deadline_as_the_journal_and_reads_go_on(
        test_odoo, gateway, mailer):
    from gateway import observe

    # An operator's sqlite3 holds the journal's write lock (BEGIN IMMEDIATE) past the deadline of
    # the messages that arrive meanwhile (journal review: with a 25 s lock, each statement held
    # every other thread, reads included, for 5 s in turn; the late messages were answered "Odoo
    # is unavailable" and counted as OdooUnavailable, and the rate-limit stage took 5-10 s).
    object.__setattr__(gateway.services.config.gateway.listener, "message_deadline", 4.0)
    to = mailer.address("note", "project.task", TASK_ID)
    raws = {f"<locked-{number}@example.com>": mailer.sign(
        mailer.message("note_from_contributor.eml", to, f"<locked-{number}@example.com>")) for number in range(5)}
    refusals = {name: observe.REGISTRY.get_sample_value(
        "note_gateway_messages_total", {"verdict": "deferred", "refusal": name, "odoo": "main"}) or 0.0
        for name in ("JournalNotWritable", "OdooUnavailable")}
    holder = sqlite3.connect(gateway.services.config.journal_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO notices VALUES ('holder@example.com', 'r', 'd', 0)")
    locked = time.monotonic()
    replies: dict[str, tuple[str, float]] = {}

    def send(message_id: str) -> None:
        reply = mailer.send(raws[message_id], to)
        replies[message_id] = (reply, time.monotonic() - locked)

    # Three at once, two more while the first ones wait for the journal.
    threads = [threading.Thread(target=send, args=(message_id,)) for message_id in raws]
    for thread in threads[:3]:
        thread.start()
    time.sleep(1.5)
    for thread in threads[3:]:
        thread.start()
    time.sleep(max(0.0, 6.0 - (time.monotonic() - locked)))
    holder.execute("ROLLBACK")
    holder.close()
    for thread in threads:
        thread.join(timeout=30)
    assert len(replies) == 5
    for message_id, (reply, seconds) in replies.items():
        # The journal's refusal, said at the message's deadline (each waited on its own, none
        # behind another's wait), without the journal's path or SQLite's error.
        assert reply == ("451 4.3.0 The gateway's journal cannot be written, try again later: "
                         "the journal was busy until the message's deadline"), (message_id, reply)
        assert seconds < 9.0, (message_id, seconds)
    assert test_odoo.posts() == []
    rows = {row.message_id: row for row in gateway.services.journal.recent(20) if row.message_id in raws}
    assert set(rows) == set(raws)
    for row in rows.values():
        assert row.refusal_class == "JournalNotWritable"
        # The reads of the rate limits waited for no write, in this process or another.
        assert row.durations["rate-limit"] < 1.0, row.durations
        assert [defect for defect in row.defects if defect.startswith("journal-unavailable:")], row.defects
    assert observe.REGISTRY.get_sample_value(
        "note_gateway_messages_total", {"verdict": "deferred", "refusal": "JournalNotWritable", "odoo": "main"}
    ) == refusals["JournalNotWritable"] + 5
    assert (observe.REGISTRY.get_sample_value(
        "note_gateway_messages_total", {"verdict": "deferred", "refusal": "OdooUnavailable", "odoo": "main"}
    ) or 0.0) == refusals["OdooUnavailable"]
    # Released, every retry files once.
    for message_id, raw in raws.items():
        assert mailer.send(raw, to).startswith("250 2.0.0 Filed"), message_id
        assert len(_stored(test_odoo, message_id)) == 1


def test_slow_odoo_is_deferred_at_the_message_deadline(test_odoo, start_gateway, dns_server, dkim_keys):
    from conftest import Mailer

    # Each call is quick enough for the per-call timeout, but together they pass the deadline.
    gateway = start_gateway(dns_server.port, odoo_timeout=5.0)
    mailer = Mailer(gateway, dkim_keys)
    # The fixture's file says 20 s; a 1 s deadline keeps the test short (the model is frozen, so
    # the running gateway's copy is changed under it, as a reload would).
    object.__setattr__(gateway.services.config.gateway.listener, "message_deadline", 1.0)
    test_odoo.latency = {"*": 0.3}
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<slow@example.com>"))
    reply = mailer.send(raw, to)
    assert reply.startswith("451 4.3.0"), reply
    test_odoo.latency = {}
    assert mailer.send(raw, to).startswith("250 ")
    assert len(_stored(test_odoo, "<slow@example.com>")) == 1


def test_an_odoo_call_never_outlives_the_message_deadline(test_odoo, start_gateway, dns_server, dkim_keys):
    from conftest import Mailer

    # Odoo's own timeout (20 s) is far beyond the deadline: the call must be cut at the deadline,
    # not left to the listener's last-resort timer.
    gateway = start_gateway(dns_server.port, odoo_timeout=20.0)
    object.__setattr__(gateway.services.config.gateway.listener, "message_deadline", 1.0)
    mailer = Mailer(gateway, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<deadline@example.com>"))
    test_odoo.fail("hang", seconds=30)
    reply = mailer.send(raw, to)
    test_odoo.heal()
    assert reply.startswith("451 4.3.0 Odoo is unavailable, try again later: "), reply
    assert "took too long" not in reply  # the listener's fallback was not needed
    assert mailer.send(raw, to).startswith("250 ")


def test_two_deliveries_of_one_message_at_once_file_it_once(test_odoo, gateway, mailer):
    import threading

    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<twice@example.com>"))
    test_odoo.latency = {"message_post": 1.0}
    replies: list[str] = []
    threads = [threading.Thread(target=lambda: replies.append(mailer.send(raw, to))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    test_odoo.latency = {}
    filed = [reply for reply in replies if reply.startswith("250 2.0.0 Filed as Odoo message")]
    busy = [reply for reply in replies if reply.startswith("451 4.3.0 The same message is being filed right now")]
    assert (len(filed), len(busy)) == (1, 1), replies
    assert mailer.send(raw, to).startswith("250 2.0.0 Already filed")
    assert len(_stored(test_odoo, "<twice@example.com>")) == 1


def test_odoo_pool_is_bounded_and_reconnects_after_a_fault(test_odoo, start_gateway, dns_server, dkim_keys):
    import threading

    from conftest import Mailer

    gateway = start_gateway(dns_server.port, pool_size=2)
    mailer = Mailer(gateway, dkim_keys)
    test_odoo.latency = {"*": 0.1}
    to = mailer.address("note", "project.task", TASK_ID)
    raws = [mailer.sign(mailer.message("note_from_contributor.eml", to)) for _ in range(6)]
    replies: list[str] = []
    threads = [threading.Thread(target=lambda raw=raw: replies.append(mailer.send(raw, to))) for raw in raws]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    test_odoo.latency = {}
    assert [reply[:3] for reply in replies] == ["250"] * 6, replies
    # Never more requests in Odoo at once than connections in the pool.
    events = sorted([(call.started, 1) for call in test_odoo.calls if call.route == "/jsonrpc"] +
                    [(call.ended, -1) for call in test_odoo.calls if call.route == "/jsonrpc"])
    busy = peak = 0
    for _, change in events:
        busy += change
        peak = max(peak, busy)
    assert peak <= 2, peak

    logins = sum(call.method == "login" for call in test_odoo.calls)
    test_odoo.fail("http500")
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to))
    # Each failed message drops the connection it used: after two, the pool holds none.
    assert mailer.send(raw, to).startswith("451 ")
    assert mailer.send(raw, to).startswith("451 ")
    test_odoo.heal()
    assert mailer.send(raw, to).startswith("250 ")
    # A fresh connection logged in: that is how the gateway reconnects after Odoo restarts.
    assert sum(call.method == "login" for call in test_odoo.calls) == logins + 1


def test_other_sessions_are_served_while_odoo_hangs_on_one(test_odoo, gateway, mailer):
    import threading

    from gateway.testing.odoo_demo import SALE_ORDER_ID

    order = mailer.address("note", "sale.order", SALE_ORDER_ID)
    task = mailer.address("note", "project.task", TASK_ID)
    test_odoo.fail("hang", model="sale.order", method="message_post")
    stuck: list[str] = []
    thread = threading.Thread(target=lambda: stuck.append(
        mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", order, "<stuck@example.com>")), order)))
    thread.start()
    deadline = time.monotonic() + 15
    while not [call for call in test_odoo.posts() if call.model == "sale.order"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # While one message waits on Odoo, another is filed and a third refused, each with its reply.
    assert mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", task)), task).startswith("250 ")
    assert mailer.send(mailer.message("note_from_contributor.eml", task), task).startswith("550 5.7.1")
    assert stuck == []
    test_odoo.heal()
    thread.join(timeout=30)
    assert stuck[0].startswith(("250 ", "451 ")), stuck



UNSETTLED = "451 4.3.0 An earlier delivery of this message may still be being filed by Odoo, try again later"


@contextmanager
def _gateway_on(config_path):
    """A gateway on this config file, stopped at the end of the block: started twice, a restart."""
    from conftest import RunningGateway

    services = Services.build(load_config(config_path))
    server = ThreadedGateway(services).start()
    try:
        yield RunningGateway(services, server, config_path)
    finally:
        server.stop()
        services.close()


def _unsettled_rows(journal_path) -> list[tuple]:
    connection = sqlite3.connect(journal_path)
    try:
        return connection.execute("SELECT message_id, model, res_id, sender FROM unsettled_posts").fetchall()
    finally:
        connection.close()


def _wait_for_stored(test_odoo, message_id: str, seconds: float = 15) -> list[dict]:
    ends = time.monotonic() + seconds
    while not (stored := _stored(test_odoo, message_id)):
        assert time.monotonic() < ends, f"{message_id} never stored"
        time.sleep(0.05)
    return stored


def test_a_retry_while_odoo_still_runs_a_timed_out_post_is_deferred_and_files_once(tmp_path, test_odoo, dns_server,
                                                                                  dkim_keys):
    # Found by the failure-mode review: the first delivery's message_post outlived the gateway's
    # Odoo timeout (451), the retry found nothing in Odoo and posted again, and when Odoo finished
    # the first post the record had the note twice.
    from conftest import Mailer, write_config

    config_path = write_config(tmp_path, test_odoo, dns_server.port, odoo_timeout=1.0)
    to = Mailer.address("note", "project.task", TASK_ID)
    message_id = "<unsettled@example.com>"
    with _gateway_on(config_path) as gateway:
        mailer = Mailer(gateway, dkim_keys)
        raw = mailer.sign(mailer.message("note_from_contributor.eml", to, message_id))
        test_odoo.fail("hang", method="message_post", times=1, seconds=60)
        reply = mailer.send(raw, to)
        assert reply == "451 4.3.0 Odoo is unavailable, try again later: TimeoutError talking to Odoo", reply
        # Odoo is still running that post: the retry does not find it, and must not post.
        retry = mailer.send(raw, to)
        assert retry.startswith(UNSETTLED + ": its post "), retry
        assert "(odoo.unsettled_post_seconds)" in retry
        journal_path = gateway.services.config.journal_path
    assert _unsettled_rows(journal_path) == [(message_id, "project.task", TASK_ID, "portal.contrib@example.com")]
    # Durable: a restarted gateway still knows the post may be running.
    with _gateway_on(config_path) as gateway:
        mailer = Mailer(gateway, dkim_keys)
        assert mailer.send(raw, to).startswith(UNSETTLED + ": its post ")
        assert len(test_odoo.posts()) == 1 and _stored(test_odoo, message_id) == []
        test_odoo.release()  # Odoo finishes the first post
        [stored] = _wait_for_stored(test_odoo, message_id)
        assert mailer.send(raw, to) == f"250 2.0.0 Already filed as Odoo message {stored['id']}"
        assert len(_stored(test_odoo, message_id)) == 1
        assert len(test_odoo.posts()) == 1
        with Journal(journal_path) as journal:
            assert [(row.verdict, row.refusal_class) for row in journal.recent(5)] == [
                ("duplicate", ""), ("deferred", "PostUnsettled"), ("deferred", "PostUnsettled"),
                ("deferred", "OdooUnavailable")]
            assert any(note.startswith("unsettled-post:") for note in journal.recent(5)[-1].defects)
    # Known to be filed: the marker is gone.
    assert _unsettled_rows(journal_path) == []


def test_a_post_that_really_failed_is_posted_again_once_unsettled_post_seconds_passed(test_odoo, start_gateway,
                                                                                     dns_server, dkim_keys):
    from conftest import Mailer

    gateway = start_gateway(dns_server.port, unsettled_post_seconds=3)
    mailer = Mailer(gateway, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<rolled-back@example.com>"))
    # Odoo drops the connection without filing (a worker killed at limit_time_real rolls back): the
    # gateway cannot tell this from a post still running, so it waits out unsettled_post_seconds.
    test_odoo.fail("die_before_post", times=1)
    reply = mailer.send(raw, to)
    failed_at = time.monotonic()
    assert reply.startswith("451 4.3.0 Odoo is unavailable, try again later: "), reply
    assert mailer.send(raw, to).startswith(UNSETTLED), "retried at once"
    assert _stored(test_odoo, "<rolled-back@example.com>") == []
    time.sleep(max(0.0, failed_at + 3.2 - time.monotonic()))
    filed = mailer.send(raw, to)
    assert filed.startswith("250 2.0.0 Filed as Odoo message"), filed
    assert len(_stored(test_odoo, "<rolled-back@example.com>")) == 1
    assert [call.outcome for call in test_odoo.posts()] == ["die_before_post", "ok"]
    assert _unsettled_rows(gateway.services.config.journal_path) == []
    assert any(note.startswith("unsettled-post-expired:") for note in gateway.services.journal.recent(1)[0].defects)


@pytest.mark.parametrize("fault", ["rpc_error", "garbage"])
def test_a_post_odoo_answered_with_a_fault_is_retried_at_once(test_odoo, gateway, mailer, fault):
    # Odoo answered, if only with an error: it is done with the request, nothing is left running,
    # and the retry posts without waiting for unsettled_post_seconds. Not an HTTP 500 without
    # JSON-RPC: Odoo answers its errors with HTTP 200 and JSON-RPC, so a 500 page may be a proxy's
    # while Odoo still runs the post (test_a_proxy_that_gives_up_while_odoo_still_posts_...).
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, f"<answered-{fault}@example.com>"))
    test_odoo.fail(fault, method="message_post", times=1)
    assert mailer.send(raw, to).startswith("451 4.3.0 Odoo is unavailable"), fault
    assert mailer.send(raw, to).startswith("250 2.0.0 Filed as Odoo message")
    assert len(_stored(test_odoo, f"<answered-{fault}@example.com>")) == 1
    assert _unsettled_rows(gateway.services.config.journal_path) == []


def test_a_delivery_racing_the_outcome_of_another_is_not_taken_for_an_unsettled_post(test_odoo, gateway, mailer,
                                                                                     monkeypatch):
    # An open receipt of another delivery counts as an unsettled post (a process that died
    # posting). The outcome row that removes a receipt is written under the message's claim: a
    # copy arriving while it is written is "being filed right now", never deferred as unsettled
    # for unsettled_post_seconds on a post that Odoo had already refused.
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<racing@example.com>"))
    journal = gateway.services.journal
    recording, go_on = threading.Event(), threading.Event()
    record = journal.record

    def slow_record(entry, **options):
        if options.get("receipt_id") is not None and not recording.is_set():
            recording.set()
            go_on.wait(10)
        return record(entry, **options)

    monkeypatch.setattr(journal, "record", slow_record)
    test_odoo.fail("rpc_error", method="message_post", times=1)
    first: list[str] = []
    sender = threading.Thread(target=lambda: first.append(mailer.send(raw, to)))
    sender.start()
    assert recording.wait(10)
    racing = mailer.send(raw, to)
    go_on.set()
    sender.join(10)
    assert first[0].startswith("451 4.3.0 Odoo is unavailable"), first
    assert racing.startswith("451 4.3.0 The same message is being filed right now"), racing
    assert mailer.send(raw, to).startswith("250 2.0.0 Filed as Odoo message")
    assert len(_stored(test_odoo, "<racing@example.com>")) == 1


def test_a_refused_api_key_defers_and_the_log_says_the_key_was_refused(test_odoo, gateway, mailer, caplog,
                                                                        monkeypatch):
    # Operator review, item 11: a wrong key was logged as "RPCError" and told apart from an outage
    # nowhere. The reply stays a 451 (docs/reliability.md): the mail is filed once the key is fixed.
    # The pause after a refusal (the next test) is over at once here: each retry tries the key.
    monkeypatch.setattr(odoo, "CREDENTIALS_RETRY_SECONDS", 0)
    to = mailer.address("note", "project.task", TASK_ID)
    first = mailer.sign(mailer.message("note_from_contributor.eml", to, "<key-1@example.com>"))
    second = mailer.sign(mailer.message("note_from_contributor.eml", to, "<key-2@example.com>"))
    refused = (f"odoo main: Odoo at {test_odoo.url} refused the credentials of login gateway on database notes "
               "({}): a configuration problem, not an outage; check that the API key (api_key_file ")

    # The key is refused at the first login: odoorpc's own error, since Odoo's login answers False.
    test_odoo.revoke_api_key(GATEWAY_UID, DEMO_API_KEY)
    with caplog.at_level(logging.ERROR, logger="gateway.odoo"):
        assert mailer.send(first, to) == "451 4.3.0 Odoo is unavailable, try again later: Odoo refused the gateway's login"
    assert refused.format("Wrong login ID or password") in caplog.text
    test_odoo.add_api_key(GATEWAY_UID, DEMO_API_KEY)
    assert mailer.send(first, to).startswith("250 2.0.0 Filed")

    # The key is revoked under a logged-in connection: Odoo answers the next call AccessDenied.
    caplog.clear()
    test_odoo.revoke_api_key(GATEWAY_UID, DEMO_API_KEY)
    with caplog.at_level(logging.ERROR, logger="gateway.odoo"):
        assert mailer.send(second, to) == "451 4.3.0 Odoo is unavailable, try again later: Odoo refused the gateway's login"
    assert refused.format("Access Denied") in caplog.text
    test_odoo.add_api_key(GATEWAY_UID, DEMO_API_KEY)
    assert mailer.send(second, to).startswith("250 2.0.0 Filed")
    with Journal(gateway.services.config.journal_path) as journal:
        rows = journal.recent(4)
    assert [(row.verdict, row.refusal_class) for row in rows] == [
        ("filed", ""), ("deferred", "OdooCredentialsRefused"), ("filed", ""), ("deferred", "OdooCredentialsRefused")]


def _logins(test_odoo) -> int:
    return sum(1 for call in test_odoo.calls if call.service == "common" and call.method == "login")


def test_a_refused_api_key_is_tried_again_only_after_a_pause(test_odoo, gateway, mailer, caplog, monkeypatch):
    # Review of Odoo faults: a refused key cost one Odoo login and one ERROR per message. Odoo 18
    # counts failed logins per address and, after 5, ignores every login from it for 60 s (the test
    # Odoo does too): right after the admin fixed the key, the gateway was still refused, and so was
    # every web user behind its address. Now one try per pause (CREDENTIALS_RETRY_SECONDS).
    to = mailer.address("note", "project.task", TASK_ID)
    notes = [mailer.sign(mailer.message("note_from_contributor.eml", to, f"<pause-{n}@example.com>"))
             for n in range(7)]
    refused = "451 4.3.0 Odoo is unavailable, try again later: Odoo refused the gateway's login"
    test_odoo.revoke_api_key(GATEWAY_UID, DEMO_API_KEY)
    with caplog.at_level(logging.INFO, logger="gateway.odoo"):
        assert [mailer.send(raw, to) for raw in notes[:6]] == [refused] * 6
        assert _logins(test_odoo) == 1
        [error] = [record for record in caplog.records if record.levelno >= logging.ERROR]
        assert ("refused the credentials of login gateway on database notes (Wrong login ID or password)"
                in error.message)
        assert "tried again every 65 s" in error.message

        # The key is fixed, but the pause holds: no login (the pause outlasts Odoo's 60 s lockout).
        test_odoo.add_api_key(GATEWAY_UID, DEMO_API_KEY)
        assert mailer.send(notes[6], to) == refused
        assert _logins(test_odoo) == 1

        # The pause passed: the next message tries the key, which Odoo accepts, and all are filed.
        caplog.clear()
        monkeypatch.setattr(odoo, "CREDENTIALS_RETRY_SECONDS", 0)
        for raw in notes:
            assert mailer.send(raw, to).startswith("250 2.0.0 Filed as Odoo message")
    assert _logins(test_odoo) == 2
    assert [record.levelname for record in caplog.records if record.levelno >= logging.WARNING] == ["WARNING"]
    assert "Odoo accepts the gateway's login again; 6 message(s) were deferred (451) meanwhile" in caplog.text
    assert all(len(_stored(test_odoo, f"<pause-{n}@example.com>")) == 1 for n in range(7))
    with Journal(gateway.services.config.journal_path) as journal:
        rows = journal.recent(14)[::-1]
    assert [(row.verdict, row.refusal_class) for row in rows] == (
        [("deferred", "OdooCredentialsRefused")] * 7 + [("filed", "")] * 7)


def test_a_key_refused_again_after_the_pause_is_one_error_per_pause(test_odoo, gateway, mailer, caplog,
                                                                    monkeypatch):
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<again@example.com>"))
    test_odoo.revoke_api_key(GATEWAY_UID, DEMO_API_KEY)
    with caplog.at_level(logging.ERROR, logger="gateway.odoo"):
        for _ in range(3):
            assert mailer.send(raw, to).startswith("451 4.3.0")
        monkeypatch.setattr(odoo, "CREDENTIALS_RETRY_SECONDS", 0)  # The pause passed; the key is still revoked.
        assert mailer.send(raw, to).startswith("451 4.3.0")
    first, again = [record.message for record in caplog.records]
    assert _logins(test_odoo) == 2
    assert "Still refused when tried again, after 2 message(s) deferred (451) without calling Odoo" in again


def test_a_missing_database_is_an_error_that_names_the_setting(test_odoo, gateway, mailer, caplog):
    # Review of Odoo faults: a database renamed or dropped under a running gateway was a WARNING per
    # message, "res.users.search_read failed: ... database "notes" does not exist", naming no setting.
    to = mailer.address("note", "project.task", TASK_ID)
    first = mailer.sign(mailer.message("note_from_contributor.eml", to, "<db-1@example.com>"))
    second = mailer.sign(mailer.message("note_from_contributor.eml", to, "<db-2@example.com>"))
    missing = "451 4.3.0 Odoo is unavailable, try again later: Odoo does not have the gateway's database"
    setting = (f"odoo main: Odoo at {test_odoo.url} has no database notes (odoo.main.database): connection to "
               'server at "localhost" (127.0.0.1), port 5432 failed: FATAL: database "notes" does not exist; '
               "set odoo.main.database to the database's current name (renamed or dropped?), then reload")
    test_odoo.db.name = "notes_renamed"
    with caplog.at_level(logging.WARNING, logger="gateway.odoo"):
        assert mailer.send(first, to) == missing  # At the login.
    assert [(record.levelname, record.message) for record in caplog.records] == [("ERROR", setting)]
    test_odoo.db.name = "notes"
    assert mailer.send(first, to).startswith("250 2.0.0 Filed")

    caplog.clear()
    test_odoo.db.name = "notes_renamed"
    with caplog.at_level(logging.WARNING, logger="gateway.odoo"):
        assert mailer.send(second, to) == missing  # On the logged-in connection: an object call.
    assert [(record.levelname, record.message) for record in caplog.records] == [("ERROR", setting)]
    with Journal(gateway.services.config.journal_path) as journal:
        [row] = journal.recent(1)
    assert row.defects[-1].startswith("odoo-error:psycopg2.OperationalError on res.users.search_read: connection to ")
    test_odoo.db.name = "notes"
    assert mailer.send(second, to).startswith("250 2.0.0 Filed")


@pytest.mark.parametrize("name, level", [
    ("odoo.exceptions.UserError", "ERROR"),
    ("odoo.exceptions.ValidationError", "ERROR"),
    ("psycopg2.errors.SerializationFailure", "WARNING"),
])
def test_an_odoo_exception_on_the_post_is_logged_by_kind_and_journaled(test_odoo, gateway, mailer, caplog,
                                                                        name, level):
    # Review of Odoo faults: a UserError or ValidationError on message_post, which repeats on every
    # retry until someone acts, was a WARNING like a passing serialization failure, and the journal
    # kept only "Odoo refused project.task.message_post", not what Odoo answered.
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<post-error@example.com>"))
    test_odoo.fail("rpc_error", method="message_post", times=1, error_name=name, error_message="Odoo's own words")
    with caplog.at_level(logging.WARNING, logger="gateway.odoo"):
        reply = mailer.send(raw, to)
    assert reply == "451 4.3.0 Odoo is unavailable, try again later: Odoo refused project.task.message_post"
    [record] = caplog.records
    assert record.levelname == level
    assert record.message == ("odoo main: project.task.message_post failed: "
                              + ("" if level == "WARNING" else f"{name}: ") + "Odoo's own words")
    with Journal(gateway.services.config.journal_path) as journal:
        [row] = journal.recent(1)
    assert row.smtp_reply == reply
    assert f"odoo-error:{name} on project.task.message_post: Odoo's own words" in row.defects
    assert mailer.send(raw, to).startswith("250 2.0.0 Filed")


def test_a_slow_login_is_cut_at_the_message_deadline(test_odoo, start_gateway, dns_server, dkim_keys):
    from conftest import Mailer

    # Review of Odoo faults: odoorpc's login makes three requests (version_info, common.login,
    # context_get), each given the one timeout computed before the first; 3.8 s each under a 6 s
    # deadline answered after 11 s, from the listener's fallback, and the journal row said another
    # reply than the one sent. Each request now gets the time left.
    gateway = start_gateway(dns_server.port, odoo_timeout=5.0)
    object.__setattr__(gateway.services.config.gateway.listener, "message_deadline", 4.0)
    mailer = Mailer(gateway, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<slow-login@example.com>"))
    test_odoo.latency = {"*": 3.5}  # Each within the 5 s timeout; three of them pass 4 s + 5 s.
    started = time.monotonic()
    reply = mailer.send(raw, to)
    elapsed = time.monotonic() - started
    test_odoo.latency = {}
    assert reply.startswith("451 4.3.0 Odoo is unavailable, try again later: "), reply
    assert "took too long" not in reply  # the listener's fallback was not needed
    assert elapsed < 8.5, elapsed  # The fallback answers at 9 s.
    with Journal(gateway.services.config.journal_path) as journal:
        [row] = journal.recent(1)
    assert row.smtp_reply == reply
    assert mailer.send(raw, to).startswith("250 ")


def test_the_journal_keeps_the_reply_of_the_listener_s_fallback(test_odoo, start_gateway, dns_server, dkim_keys,
                                                                 monkeypatch):
    from conftest import Mailer

    # A stage that overruns the deadline by more than the listener's 5 s margin: the listener
    # answers for it, and the pipeline, when it ends, must journal that reply, not its own.
    gateway = start_gateway(dns_server.port)
    object.__setattr__(gateway.services.config.gateway.listener, "message_deadline", 1.0)
    mailer = Mailer(gateway, dkim_keys)
    journal = gateway.services.journal
    unsettled_since = journal.unsettled_since
    ended = threading.Event()

    def slow_unsettled_since(*args, **options):
        time.sleep(6.5)
        return unsettled_since(*args, **options)

    record = journal.record

    def recording(entry, **options):
        try:
            return record(entry, **options)
        finally:
            ended.set()

    monkeypatch.setattr(journal, "unsettled_since", slow_unsettled_since)
    monkeypatch.setattr(journal, "record", recording)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<overrun@example.com>"))
    reply = mailer.send(raw, to)
    # The listener's reply names the stage still running, not Odoo (the journal held it up here).
    assert reply == ("451 4.3.0 The message took too long to process, try again later: no outcome 6 s after its "
                     "data; stage post (post once per Message-ID and sender with message_post) still running")
    assert ended.wait(10)
    with Journal(gateway.services.config.journal_path) as reader:
        [row] = reader.recent(1)
    assert row.smtp_reply == reply
    [note] = [defect for defect in row.defects if defect.startswith("listener-answered:")]
    assert note.endswith("with 451 4.3.0 Odoo is unavailable, try again later: the message deadline passed "
                         "before Odoo answered")
    assert test_odoo.posts() == []


def test_an_unreachable_odoo_is_logged_as_unreachable(test_odoo, gateway, mailer, caplog):
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<down@example.com>"))
    url = test_odoo.url
    test_odoo.stop()
    with caplog.at_level(logging.WARNING, logger="gateway.odoo"):
        assert mailer.send(raw, to) == "451 4.3.0 Odoo is unavailable, try again later: URLError logging in to Odoo"
    assert (f"odoo main: cannot reach Odoo at {url}: ConnectionRefusedError: [Errno 111] Connection refused"
            in caplog.text)
    assert "credentials" not in caplog.text


# --- Odoo behind a reverse proxy -------------------------------------------------------------------


def _photo_note(mailer, message_id: str) -> tuple[bytes, str, bytes]:
    """A signed note with a 300 KiB JPEG (random bytes, as a compressed file is), its address, the file."""
    to = mailer.address("note", "project.task", TASK_ID)
    photo = b"\xff\xd8\xff\xe0" + random.Random(message_id).randbytes(300 * 1024)
    message = email.message_from_bytes(compose("portal.contrib@example.com", to, "Site photo", "The pump, attached.",
                                               sender_name="Paula Contributor", message_id=message_id),
                                       policy=email.policy.SMTP)
    message.add_attachment(photo, maintype="image", subtype="jpeg", filename="pump.jpg")
    return mailer.sign(message.as_bytes()), to, photo


def test_a_binary_attachment_costs_about_twice_its_size_on_the_wire_and_arrives_byte_exact(test_odoo, gateway, mailer):
    # Found by a review of Odoo-side faults: the files went as latin-1 strings in ASCII JSON, each
    # byte from 0x80 a 6-byte \u00XX escape, so a 300 KiB photo made a 1.25 MB message_post (4.07x),
    # over nginx's default 1 MB body limit. The transport sends UTF-8 JSON: such a byte costs 2.
    raw, to, photo = _photo_note(mailer, "<photo@example.com>")
    reply = mailer.send(raw, to)
    assert reply.startswith("250 2.0.0 Filed as Odoo message"), reply
    [post] = test_odoo.posts()
    assert post.size <= 2.1 * len(photo), post.size / len(photo)
    [attachment_id] = test_odoo.message(int(reply.rsplit(" ", 1)[1]))["attachment_ids"]
    assert test_odoo.attachment_bytes(attachment_id) == photo


def test_a_post_over_the_proxy_s_body_limit_says_so_and_is_filed_once_the_limit_is_raised(test_odoo, gateway, mailer,
                                                                                          caplog):
    # Found by the same review: HTTP 413 read "451 Odoo is unavailable ... HTTPError", a warning, on
    # every retry for days. Every retry meets the limit until an administrator raises it, and then
    # the note must be filed: still a 451 (the sender's MTA keeps it), saying what is wrong.
    raw, to, photo = _photo_note(mailer, "<big-photo@example.com>")
    test_odoo.body_limit = 512 * 1024
    with caplog.at_level(logging.WARNING, logger="gateway.odoo"):
        reply = mailer.send(raw, to)
    [refused] = [call for call in test_odoo.calls if call.outcome == "too large"]
    assert reply == ("451 4.3.0 The web server in front of Odoo refused this message as too large, an administrator "
                     f"must raise its limit: HTTP 413 for a request of {refused.size} bytes"), reply
    assert "unavailable" not in reply
    [record] = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert record.levelno == logging.ERROR
    assert (f"odoo main: the web server in front of Odoo at {test_odoo.url} refused the project.task.message_post "
            f"request of {refused.size} bytes as too large (HTTP 413 Request Entity Too Large); raise the request "
            "body limit of the reverse proxy in front of Odoo above that size (nginx: client_max_body_size"
            ) in record.getMessage()
    # Nothing reached Odoo, so nothing is left unsettled: the retry after the fix posts at once.
    assert _unsettled_rows(gateway.services.config.journal_path) == []
    test_odoo.body_limit = 2 * 1024 * 1024
    assert mailer.send(raw, to).startswith("250 2.0.0 Filed as Odoo message")
    [stored] = _stored(test_odoo, "<big-photo@example.com>")
    assert test_odoo.attachment_bytes(stored["attachment_ids"][0]) == photo
    with Journal(gateway.services.config.journal_path) as journal:
        assert [(row.verdict, row.refusal_class) for row in journal.recent(2)] == [
            ("filed", ""), ("deferred", "OdooRequestTooLarge")]


@pytest.mark.parametrize("status", [503, 524, 408, 504, 500])
def test_a_proxy_that_gives_up_while_odoo_still_posts_leaves_the_post_unsettled(test_odoo, start_gateway, dns_server,
                                                                                dkim_keys, status):
    # Found by a review of Odoo-side faults: Azure Front Door (classic) answers its timeout 503,
    # Cloudflare 524; only 502 and 504 counted as "Odoo may still be running it", so a quick retry
    # posted again and the record had the note twice. Odoo answers every call with HTTP 200.
    from conftest import Mailer

    gateway = start_gateway(dns_server.port, unsettled_post_seconds=300)
    mailer = Mailer(gateway, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    message_id = f"<proxy-{status}@example.com>"
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, message_id))
    test_odoo.fail("proxy_gave_up", method="message_post", times=1, status=status, seconds=30)
    assert mailer.send(raw, to) == "451 4.3.0 Odoo is unavailable, try again later: HTTPError talking to Odoo"
    # Odoo is still running the post the proxy gave up on: the retry must not post.
    assert mailer.send(raw, to).startswith(UNSETTLED + ": its post ")
    assert _unsettled_rows(gateway.services.config.journal_path) == [
        (message_id, "project.task", TASK_ID, "portal.contrib@example.com")]
    test_odoo.release()  # Odoo finishes the post
    [stored] = _wait_for_stored(test_odoo, message_id)
    assert mailer.send(raw, to) == f"250 2.0.0 Already filed as Odoo message {stored['id']}"
    assert len(_stored(test_odoo, message_id)) == 1
    assert len(test_odoo.posts()) == 1


def test_an_https_odoo_with_a_private_ca_is_reached_with_ca_file(tmp_path, test_odoo, dns_server, dkim_keys, caplog):
    # A review of Odoo-side faults: an Odoo whose certificate a private CA signed was trusted only
    # through the system's store (or SSL_CERT_FILE for the whole process); every note was a 451.
    from conftest import Mailer, write_config

    from gateway.testing.certificates import self_signed

    certificate, key = self_signed(tmp_path, "odoo.internal", name="odoo")
    test_odoo.use_tls(certificate, key)
    to = Mailer.address("note", "project.task", TASK_ID)
    config_path = write_config(tmp_path / "plain", test_odoo, dns_server.port)
    with _gateway_on(config_path) as gateway:
        raw = Mailer(gateway, dkim_keys).sign(Mailer.message("note_from_contributor.eml", to, "<tls@example.com>"))
        with caplog.at_level(logging.WARNING, logger="gateway.odoo"):
            assert Mailer(gateway, dkim_keys).send(raw, to).startswith("451 4.3.0 Odoo is unavailable")
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    config_path = write_config(tmp_path / "trusting", test_odoo, dns_server.port)
    config_path.write_text(config_path.read_text() + f'ca_file = "{certificate}"\n')
    with _gateway_on(config_path) as gateway:
        assert Mailer(gateway, dkim_keys).send(raw, to).startswith("250 2.0.0 Filed as Odoo message")
    assert len(_stored(test_odoo, "<tls@example.com>")) == 1
