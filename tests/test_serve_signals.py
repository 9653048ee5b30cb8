"""`note-gateway serve` as a real process: SIGKILL loses nothing, SIGTERM drains, SIGHUP reloads rules."""

from __future__ import annotations

import signal
import smtplib
import threading
import time

import pytest

from conftest import ALIAS_DOMAIN, Mailer
from serving import notes_to_both_records, send_while_posting, start_senders
from serving import Port as _Port, filed_counts as _filed_ids, rcpt as _rcpt, send as _send

from gateway.journal import Journal
from gateway.testing.odoo_demo import SALE_ORDER_ID, TASK_ID


def test_sigkill_during_sessions_loses_nothing_and_restart_is_clean(test_odoo, serve, dkim_keys):
    # One sender files far more than the default rate limit allows here.
    gateway = serve(rules_extra="[rate_limit]\nper_sender = 0\nper_record = 0\n")
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    # Slow posts keep several sessions inside message_post when the kill comes.
    test_odoo.latency = {"message_post": 0.25}
    messages = notes_to_both_records(mailer, "kill")
    threads, replies = start_senders(messages, gateway.port, 6)
    deadline = time.monotonic() + 20
    while sum(reply.startswith("250") for reply in dict(replies).values()) < 6:
        assert time.monotonic() < deadline, replies
        time.sleep(0.02)
    gateway.kill()
    for thread in threads:
        thread.join(timeout=60)
    test_odoo.latency = {}

    accepted = [message_id for message_id, reply in replies.items() if reply.startswith("250")]
    cut = [message_id for message_id, reply in replies.items() if reply.startswith("no reply")]
    assert cut, f"the kill hit no session in flight: {replies}"
    counts = _filed_ids(test_odoo, [message_id for message_id, _, _ in messages])
    # The promise of a 250: each accepted message is in Odoo, exactly once.
    assert all(counts[message_id] == 1 for message_id in accepted), counts
    assert all(count <= 1 for count in counts.values()), counts

    # Restart on the same journal: the receipts of cut sessions become "deferred" rows, then
    # every message the MTAs still hold is retried and filed once.
    restarted = serve()
    with Journal(restarted.config_path.parent / "journal.sqlite3", read_only=True) as journal:
        assert journal.open_receipts() == 0
        interrupted = [row for row in journal.recent(100) if row.refusal_class == "Interrupted"]
    # Sessions were cut inside message_post (0.25 s of each message is spent there), and only
    # messages that got no reply can have left a receipt.
    assert interrupted and {row.message_id for row in interrupted} <= set(cut)
    for message_id, to, raw in messages:
        if message_id not in accepted:
            reply = _send(raw, to, restarted.port)
            assert reply.startswith("250 2.0.0"), (message_id, reply)
    counts = _filed_ids(test_odoo, [message_id for message_id, _, _ in messages])
    assert set(counts.values()) == {1}, counts
    assert restarted.stop() == 0
    print(f"\nSIGKILL: {len(messages)} sent, {len(accepted)} got 250 before the kill, {len(cut)} without a reply, "
          f"{len(interrupted)} receipts recovered, {sum(counts.values())} filed after retries, duplicates 0, lost 0")


def test_sigterm_finishes_messages_in_flight_and_refuses_new_sessions(test_odoo, serve, dkim_keys):
    gateway = serve(listener_extra="shutdown_grace = 15")
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    test_odoo.latency = {"message_post": 1.5}
    threads, replies = send_while_posting(test_odoo, mailer, gateway.port, 3, "term")
    started = time.monotonic()
    gateway.signal(signal.SIGTERM)
    gateway.wait_for("stopping: no new sessions")
    # Refused, reset (a connection that reached the backlog just before the socket closed: the log
    # line is written a moment before), or a 421: never a greeting.
    with pytest.raises((ConnectionRefusedError, ConnectionResetError, smtplib.SMTPConnectError,
                        smtplib.SMTPServerDisconnected)):
        smtplib.SMTP("127.0.0.1", gateway.port, timeout=5)
    for thread in threads:
        thread.join(timeout=30)
    assert gateway.process.wait(timeout=20) == 0
    assert time.monotonic() - started < 15
    assert sorted(reply[:9] for reply in replies) == ["250 2.0.0"] * 3, replies
    gateway.wait_for("stopped")


def test_sigterm_cuts_a_stuck_session_after_the_grace(test_odoo, serve, dkim_keys):
    gateway = serve(listener_extra="shutdown_grace = 1", odoo_timeout=3.0)
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<stuck@example.com>"))
    test_odoo.fail("hang", method="message_post")
    replies: list[str] = []
    thread = threading.Thread(target=lambda: replies.append(_send(raw, to, gateway.port)))
    thread.start()
    deadline = time.monotonic() + 15
    while not test_odoo.posts():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    started = time.monotonic()
    gateway.signal(signal.SIGTERM)
    thread.join(timeout=30)
    assert replies == ["421 4.3.2 The gateway is shutting down, try again later"]
    # The grace, then the post's own timeout: bounded, whatever Odoo does.
    assert gateway.process.wait(timeout=15) == 0
    assert time.monotonic() - started < 10
    test_odoo.heal()
    restarted = serve()
    reply = _send(raw, to, restarted.port)
    assert reply.startswith("250 2.0.0"), reply
    assert _filed_ids(test_odoo, ["<stuck@example.com>"]) == {"<stuck@example.com>": 1}


def test_sighup_reloads_rules_and_a_broken_file_keeps_the_old_ones(test_odoo, serve, dkim_keys):
    gateway = serve()
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    rules = gateway.config_path.parent / "rules" / f"{ALIAS_DOMAIN}.toml"
    order = mailer.address("note", "sale.order", SALE_ORDER_ID)
    task = mailer.address("note", "project.task", TASK_ID)
    assert _rcpt(gateway.port, order)[0] == 250

    rules.write_text(rules.read_text().replace('models = ["project.task", "sale.order"]\ncontributor_group',
                                               'models = ["project.task"]\ncontributor_group', 1))
    mark = len(gateway.lines)
    gateway.signal(signal.SIGHUP)
    gateway.wait_for("rules reloaded: notes.example.com", start=mark)
    assert _rcpt(gateway.port, order)[0] == 550
    assert _rcpt(gateway.port, task)[0] == 250

    good = rules.read_text()
    rules.write_text(good + "\n[note\nbroken = \n")
    mark = len(gateway.lines)
    gateway.signal(signal.SIGHUP)
    line = gateway.wait_for(r"reload refused, the previous rules stay in force: (.*)", start=mark).group(1)
    assert str(rules) in line and "not valid TOML" in line
    # The rules in force are the last good ones: tasks open, orders closed, the server up.
    assert _rcpt(gateway.port, task)[0] == 250
    assert _rcpt(gateway.port, order)[0] == 550
    raw = mailer.sign(mailer.message("note_from_contributor.eml", task))
    assert _send(raw, task, gateway.port).startswith("250 2.0.0 Filed")
    assert gateway.stop() == 0
