"""`note-gateway serve` as a real process: SIGKILL loses nothing, SIGTERM drains, SIGHUP reloads rules."""

from __future__ import annotations

import os
import re
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509

from conftest import ALIAS_DOMAIN, SECRET, Mailer, write_config
from serving import notes_to_both_records, send_while_posting, start_senders
from serving import ROOT, Port as _Port, filed_counts as _filed_ids, rcpt as _rcpt, send as _send

from gateway.journal import Journal
from gateway.testing.configs import fresh_secret
from gateway.testing.odoo_demo import DEMO_API_KEY, GATEWAY_UID, SALE_ORDER_ID, TASK_ID

NO_RATE_LIMIT = "[rate_limit]\nper_sender = 0\nper_record = 0\n"
UNSETTLED = "451 4.3.0 An earlier delivery of this message may still be being filed by Odoo"


def test_sigkill_during_sessions_loses_nothing_and_restart_is_clean(test_odoo, serve, dkim_keys):
    # One sender files far more than the default rate limit allows here.
    gateway = serve(rules_extra=NO_RATE_LIMIT, unsettled_post_seconds=3)
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
    # every message the MTAs still hold is retried and filed once. A cut post may still have been
    # running in Odoo, so its retry is deferred until Odoo has it or unsettled_post_seconds passed.
    restarted = serve()
    with Journal(restarted.config_path.parent / "journal.sqlite3", read_only=True) as journal:
        assert journal.open_receipts() == 0
        interrupted = [row for row in journal.recent(100) if row.refusal_class == "Interrupted"]
    # Sessions were cut inside message_post (0.25 s of each message is spent there), and only
    # messages that got no reply can have left a receipt.
    assert interrupted and {row.message_id for row in interrupted} <= set(cut)
    for message_id, to, raw in messages:
        if message_id not in accepted:
            deadline = time.monotonic() + 15
            while (reply := _send(raw, to, restarted.port)).startswith(UNSETTLED):
                assert message_id in {row.message_id for row in interrupted}, (message_id, reply)
                assert time.monotonic() < deadline, (message_id, reply)
                time.sleep(0.5)
            assert reply.startswith("250 2.0.0"), (message_id, reply)
    counts = _filed_ids(test_odoo, [message_id for message_id, _, _ in messages])
    assert set(counts.values()) == {1}, counts
    assert restarted.stop() == 0
    print(f"\nSIGKILL: {len(messages)} sent, {len(accepted)} got 250 before the kill, {len(cut)} without a reply, "
          f"{len(interrupted)} receipts recovered, {sum(counts.values())} filed after retries, duplicates 0, lost 0")


def _post_started(test_odoo) -> None:
    deadline = time.monotonic() + 15
    while not [call for call in test_odoo.posts() if call.ended is None]:
        assert time.monotonic() < deadline, "the post did not start"
        time.sleep(0.02)


@pytest.mark.parametrize("workers", [None, 2])
def test_sigkill_while_odoo_still_posts_defers_the_retry_until_odoo_has_the_note(test_odoo, serve, dkim_keys,
                                                                                 workers):
    # Crash review 2: the gateway was killed while Odoo was still running message_post, and the
    # MTA's retry at the restart found nothing in Odoo yet and posted the note a second time. The
    # receipt the killed gateway left is now an unsettled post: the retry is deferred until Odoo
    # has the note, then answered "Already filed".
    gateway = serve(workers=workers, rules_extra=NO_RATE_LIMIT)
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    message_id = "<killed-while-posting@example.com>"
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, message_id))
    # Odoo goes on with the post until the test lets it, however slow the restart (a 4 s
    # latency let it finish before the retry on a loaded machine, found by a review of the tests).
    test_odoo.fail("hang", method="message_post", times=1, seconds=60)
    replies: list[str] = []
    sender = threading.Thread(target=lambda: replies.append(_send(raw, to, gateway.port)))
    sender.start()
    _post_started(test_odoo)
    gateway.kill()
    sender.join(timeout=30)
    assert replies[0].startswith("no reply"), replies

    restarted = serve()
    restarted.wait_for(rf"interrupted by the previous stop, the sender will retry: {message_id}")
    retry = _send(raw, to, restarted.port)
    assert retry.startswith(UNSETTLED) and "(odoo.unsettled_post_seconds)" in retry, retry
    test_odoo.release()
    deadline = time.monotonic() + 15
    while not _filed_ids(test_odoo, [message_id])[message_id]:
        assert time.monotonic() < deadline, "Odoo did not finish the first post"
        time.sleep(0.05)
    assert _send(raw, to, restarted.port).startswith("250 2.0.0 Already filed as Odoo message")
    assert _filed_ids(test_odoo, [message_id]) == {message_id: 1}
    assert len(test_odoo.posts()) == 1
    assert restarted.stop() == 0


def test_a_receipt_whose_post_never_reached_odoo_delays_the_retry_by_unsettled_post_seconds_only(
        test_odoo, serve, dkim_keys, tmp_path):
    # A gateway killed after writing the receipt but before its post reached Odoo: the retry cannot
    # tell this from a post still running, and waits out unsettled_post_seconds from the receipt.
    gateway = serve(rules_extra=NO_RATE_LIMIT, unsettled_post_seconds=3)
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    message_id = "<never-posted@example.com>"
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, message_id))
    gateway.kill()
    with Journal(tmp_path / "journal.sqlite3") as journal:
        journal.begin(received_at=time.time(), message_id=message_id, peer="127.0.0.1",
                      mail_from="portal.contrib@example.com", rcpt=to, from_address="portal.contrib@example.com",
                      kind="note", model="project.task", res_id=TASK_ID)
    written = time.time()
    restarted = serve()
    assert _send(raw, to, restarted.port).startswith(UNSETTLED)
    deadline = time.monotonic() + 15
    while (reply := _send(raw, to, restarted.port)).startswith(UNSETTLED):
        assert time.monotonic() < deadline, reply
        time.sleep(0.25)
    assert reply.startswith("250 2.0.0 Filed as Odoo message"), reply
    assert 3 <= time.time() - written < 6
    assert _filed_ids(test_odoo, [message_id]) == {message_id: 1}
    assert restarted.stop() == 0


@pytest.mark.parametrize("workers", [None, 2])
def test_a_second_gateway_on_the_same_journal_refuses_to_start_and_leaves_the_receipts(
        test_odoo, serve, dkim_keys, tmp_path, workers):
    # Crash review 2: a second `note-gateway serve` started by hand on the running one's config
    # recovered the running gateway's receipts as "Interrupted" before it failed to bind the port.
    gateway = serve(workers=workers, rules_extra=NO_RATE_LIMIT, odoo_timeout=60)
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    message_id = "<second-gateway@example.com>"
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, message_id))
    # The post is held until the test has looked, however long the second start takes (a
    # 2 s latency let it finish first on a loaded machine, found by a review of the tests).
    test_odoo.fail("hang", method="message_post", times=1, seconds=60)
    replies: list[str] = []
    sender = threading.Thread(target=lambda: replies.append(_send(raw, to, gateway.port)))
    sender.start()
    _post_started(test_odoo)
    second = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(gateway.config_path)],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                            timeout=30)
    journal_path = tmp_path / "journal.sqlite3"
    assert second.returncode == 1, second.stderr
    [line] = [line for line in second.stderr.splitlines() if "ERROR" in line]
    assert (f"journal {journal_path} is in use by another running gateway (pid {gateway.process.pid} holds "
            f"{journal_path}.lock); stop it first, or give this one a [journal] path of its own") in line
    with Journal(journal_path, read_only=True) as journal:
        assert journal.open_receipts() == 1
    test_odoo.release()
    sender.join(timeout=30)
    assert replies[0].startswith("250 2.0.0 Filed as Odoo message"), replies
    with Journal(journal_path, read_only=True) as journal:
        assert [(row.verdict, row.refusal_class) for row in journal.recent(5)] == [("filed", "")]
    assert gateway.stop() == 0
    # Once it has stopped, the lock is free again.
    assert serve().stop() == 0


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
    assert gateway.wait(timeout=20) == 0
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
    assert gateway.wait(timeout=15) == 0
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


def test_a_secret_dropped_at_a_reload_refuses_the_data_of_a_session_that_passed_rcpt_before_it(
        test_odoo, serve, dkim_keys, tmp_path):
    gateway = serve()
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    rules = gateway.config_path.parent / "rules" / f"{ALIAS_DOMAIN}.toml"
    old = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", old, "<after-the-drop@example.com>"))
    refused = "No such gateway address: the address signature is not valid"
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=20) as client:
        client.ehlo("client.example.com")
        assert client.mail("portal.contrib@example.com")[0] == 250
        assert client.rcpt(old)[0] == 250
        # The secret that signed the address is retired (leaked, say) while the session waits.
        rules.write_text(rules.read_text().replace(SECRET, fresh_secret()))
        mark = len(gateway.lines)
        gateway.signal(signal.SIGHUP)
        gateway.wait_for("rules reloaded: notes.example.com", start=mark)
        code, text = client.data(raw)
    # What RCPT says of the address now, at once: no filing, no retry.
    assert (code, text.decode()) == (550, f"5.1.1 {refused}")
    assert _rcpt(gateway.port, old) == (550, f"5.1.1 {refused}".encode())
    assert test_odoo.posts() == []
    assert gateway.stop() == 0
    # Journaled as a refused message of that record (the RCPT refusal after it names no record).
    with Journal(tmp_path / "journal.sqlite3", read_only=True) as journal:
        data, rcpt = journal.recent(2)[::-1]
    assert (data.verdict, data.refusal_class, data.smtp_reply) == ("refused", "BadAddress", f"550 5.1.1 {refused}")
    assert (data.mail_from, data.model, data.res_id, data.domain, data.odoo) == (
        "portal.contrib@example.com", "project.task", TASK_ID, ALIAS_DOMAIN, "main")
    assert (rcpt.smtp_reply, rcpt.model) == (f"550 5.1.1 {refused}", "")


def _ehlo(port: int) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        code, text = client.ehlo("client.example.com")
        return code, text.decode()


def test_sighup_keeps_the_settings_that_need_a_restart_and_applies_the_rest(test_odoo, serve, dkim_keys):
    gateway = serve()
    config = gateway.config_path
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    rules = config.parent / "rules" / f"{ALIAS_DOMAIN}.toml"
    order = mailer.address("note", "sale.order", SALE_ORDER_ID)
    task = mailer.address("note", "project.task", TASK_ID)
    text = config.read_text()
    # No listener.port in the file (2525): the test's gateway listens where `serve --any-port` had
    # the system pick.
    assert "\nport = " not in text.split("[resolver]")[0] and f'hostname = "{ALIAS_DOMAIN}"' in text
    # Postfix delivers here with its smtp: transport: an LMTP listener would fail every delivery.
    config.write_text(text.replace(
        f'hostname = "{ALIAS_DOMAIN}"',
        'hostname = "reloaded.example.com"\nport = 2626\nprotocol = "lmtp"\nmax_sessions = 7'))
    rules.write_text(rules.read_text().replace('models = ["project.task", "sale.order"]\ncontributor_group',
                                               'models = ["project.task"]\ncontributor_group', 1))
    mark = len(gateway.lines)
    gateway.signal(signal.SIGHUP)
    gateway.wait_for("rules reloaded: notes.example.com", start=mark)
    warnings = [line.split(" WARNING gateway: ", 1)[1] for line in gateway.lines[mark:] if " WARNING gateway: " in line]
    assert warnings == [
        f"reload: {config}: listener.port: changed from 2525 to 2626, which needs a restart; 2525 stays in force "
        "until then",
        f"reload: {config}: listener.protocol: changed from 'smtp' to 'lmtp', which needs a restart; "
        "'smtp' stays in force until then",
        f"reload: {config}: listener.max_sessions: changed from 100 to 7, which needs a restart; "
        "100 stays in force until then",
    ]
    # Still SMTP on the same port; the hostname and the rules are the new ones.
    code, text = _ehlo(gateway.port)
    assert code == 250 and text.startswith("reloaded.example.com"), text
    assert _rcpt(gateway.port, order)[0] == 550
    raw = mailer.sign(mailer.message("note_from_contributor.eml", task))
    assert _send(raw, task, gateway.port).startswith("250 2.0.0 Filed")

    # A second reload compares with what runs, not with the file read the first time.
    mark = len(gateway.lines)
    gateway.signal(signal.SIGHUP)
    gateway.wait_for("rules reloaded: notes.example.com", start=mark)
    assert sum("needs a restart" in line for line in gateway.lines[mark:]) == 3
    assert gateway.stop() == 0


def test_refused_reloads_log_one_line_with_file_key_and_reason(test_odoo, serve, dkim_keys, tmp_path):
    from gateway.testing.certificates import self_signed

    gateway = serve()
    config = gateway.config_path
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    rules = config.parent / "rules" / f"{ALIAS_DOMAIN}.toml"
    task = mailer.address("note", "project.task", TASK_ID)
    good_config, good_rules = config.read_text(), rules.read_text()
    missing = tmp_path / "missing.crt"
    certificate, key = self_signed(tmp_path, ALIAS_DOMAIN)
    listener_line = f'hostname = "{ALIAS_DOMAIN}"'

    def refused(expected: str) -> None:
        mark = len(gateway.lines)
        gateway.signal(signal.SIGHUP)
        line = gateway.wait_for(r"ERROR gateway: reload refused, the previous rules stay in force: (.*)", start=mark)
        assert line.group(1) == expected
        time.sleep(0.3)
        assert [seen for seen in gateway.lines[mark:] if "ERROR" in seen or "WARNING" in seen or "reload" in seen] \
            == [line.string]
        assert not any("Traceback" in seen or "Exception in callback" in seen for seen in gateway.lines), gateway.log

    config.write_text(good_config.replace(listener_line, f'{listener_line}\ntls_certificate = "{missing}"\n'
                                                         f'tls_key = "{key}"'))
    refused(f"{config}: listener.tls_certificate: cannot read {missing}: No such file or directory")
    config.write_text(good_config.replace('nameservers = ["127.0.0.1"]', 'nameservers = ["not-an-ip"]'))
    refused(f"{config}: resolver.nameservers: 'not-an-ip' is not an IPv4 or IPv6 address")
    config.write_text(good_config)
    rules.write_bytes(good_rules.encode() + b"# \xff\n")
    refused(f"{rules}: not UTF-8 text: byte 0xff on line {good_rules.count(chr(10)) + 1}")
    rules.write_text(good_rules.replace(f'domain = "{ALIAS_DOMAIN}"', 'domain = "notes example .com"'))
    refused(f"{rules}: domain: 'notes example .com' is not a domain name: each dot-separated label is 1 to 63 "
            "letters, digits or hyphens, not starting or ending with a hyphen")
    rules.write_text(good_rules)

    # The configuration in force is the first one: no STARTTLS, mail filed.
    assert "STARTTLS" not in _ehlo(gateway.port)[1]
    raw = mailer.sign(mailer.message("note_from_contributor.eml", task))
    assert _send(raw, task, gateway.port).startswith("250 2.0.0 Filed")
    # A certificate that loads is taken by a reload.
    config.write_text(good_config.replace(listener_line, f'{listener_line}\ntls_certificate = "{certificate}"\n'
                                                         f'tls_key = "{key}"'))
    mark = len(gateway.lines)
    gateway.signal(signal.SIGHUP)
    gateway.wait_for("rules reloaded: notes.example.com", start=mark)
    assert "STARTTLS" in _ehlo(gateway.port)[1]
    assert gateway.stop() == 0


def _open_files(pid: int) -> list[str]:
    names = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            names.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    return names


def test_a_reload_keeps_the_claim_file_and_closes_the_replaced_journal_when_its_last_message_is_done(
        test_odoo, serve, dkim_keys):
    gateway = serve(rules_extra="[rate_limit]\nper_sender = 0\nper_record = 0\n")
    config = gateway.config_path
    journal, claims = str(config.parent / "journal.sqlite3"), str(config.parent / "journal.sqlite3.inflight")
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    # A message is inside message_post when the reload moves the journal: it goes on with the
    # services it started with, which stay open until it is done, and not a moment longer.
    test_odoo.latency = {"message_post": 2.0}
    threads, replies = send_while_posting(test_odoo, mailer, gateway.port, 1, "moved")
    # The claim file is the process's for its whole life: a reload neither opens it again beside
    # the new journal (where a directory stands in the way here) nor closes it (which would drop
    # the claims of the messages in flight, fcntl(2)).
    (config.parent / "other.sqlite3.inflight").mkdir()
    config.write_text(config.read_text().replace('path = "journal.sqlite3"', 'path = "other.sqlite3"'))
    mark = len(gateway.lines)
    gateway.signal(signal.SIGHUP)
    gateway.wait_for("rules reloaded: notes.example.com", start=mark)
    open_files = _open_files(gateway.process.pid)
    assert open_files.count(claims) == 1 and journal in open_files, open_files
    assert str(config.parent / "other.sqlite3") in open_files
    for thread in threads:
        thread.join(30)
    assert replies[0].startswith("250 2.0.0 Filed"), replies
    deadline = time.monotonic() + 5
    while journal in _open_files(gateway.process.pid):
        assert time.monotonic() < deadline, "the replaced journal is still open after its last message"
        time.sleep(0.05)
    with Journal(journal, read_only=True) as old:
        assert [row.verdict for row in old.recent(10)] == ["filed"]
    assert _open_files(gateway.process.pid).count(claims) == 1
    assert gateway.stop() == 0


def test_the_same_message_at_once_across_a_reload_is_filed_once(test_odoo, serve, dkim_keys):
    gateway = serve(rules_extra="[rate_limit]\nper_sender = 0\nper_record = 0\n")
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<across-reload@example.com>"))
    test_odoo.latency = {"message_post": 3.0}
    first: list[str] = []
    thread = threading.Thread(target=lambda: first.append(_send(raw, to, gateway.port)))
    thread.start()
    deadline = time.monotonic() + 15
    while not [call for call in test_odoo.posts() if call.ended is None]:
        assert time.monotonic() < deadline, "the post did not start"
        time.sleep(0.02)
    mark = len(gateway.lines)
    gateway.signal(signal.SIGHUP)
    gateway.wait_for("rules reloaded: notes.example.com", start=mark)
    # The services of the reload see the claim of the message their predecessors are posting.
    second = _send(raw, to, gateway.port)
    thread.join(30)
    assert second == ("451 4.3.0 The same message is being filed right now, try again later: "
                      "<across-reload@example.com>")
    assert first and first[0].startswith("250 2.0.0 Filed"), first
    assert _filed_ids(test_odoo, ["<across-reload@example.com>"]) == {"<across-reload@example.com>": 1}
    assert gateway.stop() == 0


def _note_gateway(config, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *arguments, "--config", str(config)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("workers", [None, 2])
def test_prune_journal_after_a_reload_leaves_the_serving_journal_whole(test_odoo, serve, dkim_keys, workers):
    # Onboarding review: a reload opened and closed the journal file outside SQLite in the process
    # that serves, which dropped the POSIX locks of its open connections (fcntl(2)). The daily
    # `prune-journal` ("safe while it serves"), at its close, took itself for the last connection
    # and deleted the -wal and -shm files the gateway went on writing into: the next notes got
    # 451 "The gateway's journal cannot be written", or were filed with rows `log` never showed.
    gateway = serve(workers=workers, rules_extra=NO_RATE_LIMIT)
    config = gateway.config_path
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)

    def note(message_id: str) -> str:
        return _send(mailer.sign(mailer.message("note_from_contributor.eml", to, message_id)), to, gateway.port)

    assert note("<before-reload@example.com>").startswith("250 2.0.0 Filed")
    gateway.reload(workers or 1)
    pruned = _note_gateway(config, "prune-journal", "--keep-days", "30")
    assert pruned.returncode == 0, pruned.stderr
    assert (config.parent / "journal.sqlite3-wal").exists() and (config.parent / "journal.sqlite3-shm").exists()
    # Each worker (one message each, at least, among four) writes where the readers read.
    after = [f"<after-prune-{number}@example.com>" for number in range(4)]
    for message_id in after:
        assert note(message_id).startswith("250 2.0.0 Filed"), gateway.log
    listed = _note_gateway(config, "log", "--verdict", "filed")
    assert listed.returncode == 0, listed.stderr
    assert sorted(line.split()[-1] for line in listed.stdout.splitlines()[1:]) == sorted(
        ["<before-reload@example.com>", *after]), listed.stdout
    assert gateway.stop() == 0


def test_reloads_keep_no_files_open_once_no_message_uses_them(test_odoo, serve):
    gateway = serve()
    pid = gateway.process.pid
    # The start logs in to Odoo after it listens: its connection is counted once it is made.
    gateway.wait_for(r"odoo main: (logged in|cannot log in)")
    before = len(_open_files(pid))
    for _ in range(40):
        mark = len(gateway.lines)
        gateway.signal(signal.SIGHUP)
        gateway.wait_for("rules reloaded: notes.example.com", start=mark)
    # The services each reload replaced were closed at once, no message using them: not 40 times
    # a journal and its friends kept for message_deadline + 10 s.
    assert len(_open_files(pid)) <= before + 1, _open_files(pid)
    assert gateway.stop() == 0


def test_a_reload_waiting_for_a_locked_journal_does_not_stall_the_sessions(test_odoo, serve):
    import sqlite3

    gateway = serve()
    # A reload whose new journal is locked by another program waits for it (up to its busy
    # timeout) in a thread: the sessions are answered meanwhile.
    config = gateway.config_path
    other = sqlite3.connect(config.parent / "other.sqlite3", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        config.write_text(config.read_text().replace('path = "journal.sqlite3"', 'path = "other.sqlite3"'))
        mark = len(gateway.lines)
        gateway.signal(signal.SIGHUP)
        time.sleep(0.5)
        started = time.monotonic()
        code, _ = _rcpt(gateway.port, Mailer.address("note", "project.task", TASK_ID))
        assert code == 250 and time.monotonic() - started < 1.0
        assert not any("reload" in line for line in gateway.lines[mark:]), gateway.log
    finally:
        other.rollback()
        other.close()
    gateway.wait_for(r"rules reloaded: notes.example.com|reload refused", start=mark)
    assert gateway.stop() == 0


def test_a_reload_keeps_the_running_journal_while_an_sqlite3_shell_holds_its_write_lock(test_odoo, serve, dkim_keys):
    import sqlite3

    # A reload whose journal.path is unchanged goes on with the journal the process has open: it
    # opens no second one (which ran the migrations again, waited 5 s for a shell's write lock and
    # was refused "journal.path: ... database is locked"; and a second open of the file in the
    # serving process is what once dropped the SQLite locks of the first, onboarding review).
    gateway = serve(rules_extra=NO_RATE_LIMIT)
    journal = str(gateway.config_path.parent / "journal.sqlite3")
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<before-locked-reload@example.com>"))
    assert _send(raw, to, gateway.port).startswith("250 2.0.0 Filed")
    before = _open_files(gateway.process.pid).count(journal)
    shell = sqlite3.connect(journal, isolation_level=None)
    shell.execute("BEGIN IMMEDIATE")
    try:
        mark = len(gateway.lines)
        started = time.monotonic()
        gateway.signal(signal.SIGHUP)
        gateway.wait_for(r"rules reloaded: notes.example.com|reload refused", start=mark)
        assert "rules reloaded: notes.example.com" in gateway.log and time.monotonic() - started < 2.0, gateway.log
    finally:
        shell.rollback()
        shell.close()
    assert _open_files(gateway.process.pid).count(journal) == before
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<after-locked-reload@example.com>"))
    assert _send(raw, to, gateway.port).startswith("250 2.0.0 Filed")
    with Journal(journal, read_only=True) as rows:
        assert [row.message_id for row in rows.recent(5)] == ["<after-locked-reload@example.com>",
                                                              "<before-locked-reload@example.com>"]
    # A later reload that moves the journal still opens the new file, and the stop closes it.
    config = gateway.config_path
    config.write_text(config.read_text().replace('path = "journal.sqlite3"', 'path = "other.sqlite3"'))
    mark = len(gateway.lines)
    gateway.signal(signal.SIGHUP)
    gateway.wait_for("rules reloaded: notes.example.com", start=mark)
    deadline = time.monotonic() + 5
    while journal in _open_files(gateway.process.pid):
        assert time.monotonic() < deadline, "the replaced journal is still open"
        time.sleep(0.05)
    assert str(config.parent / "other.sqlite3") in _open_files(gateway.process.pid)
    assert gateway.stop() == 0


def test_a_sighup_while_the_gateway_is_still_starting_is_a_reload_not_its_end(test_odoo, serve):
    import sqlite3

    # systemd's ExecReload (kill -HUP) may come while the gateway still loads: SIGHUP's default
    # action would end it. Here the start is held where it opens the journal (locked by the test),
    # past its imports, and the SIGHUPs come then.
    gateway = serve()  # writes the config; the one under test is started by hand below
    assert gateway.stop() == 0
    journal = str(gateway.config_path.parent / "journal.sqlite3")
    other = sqlite3.connect(journal, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    process = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(gateway.config_path),
                                "--any-port"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def opened_journal() -> bool:
            try:
                return any(os.path.realpath(f"/proc/{process.pid}/fd/{fd}") == journal
                           for fd in os.listdir(f"/proc/{process.pid}/fd"))
            except OSError:
                return False

        deadline = time.monotonic() + 30
        while not opened_journal():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        for _ in range(5):
            process.send_signal(signal.SIGHUP)
            time.sleep(0.05)
        assert process.poll() is None
    finally:
        other.rollback()
        other.close()
    try:
        lines: list[str] = []
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "listening on" in line:
                break
        assert any("listening on" in line for line in lines), "".join(lines)
        port = int(lines[-1].split("listening on ")[1].split(" ")[0].rsplit(":", 1)[1])
        assert _rcpt(port, Mailer.address("note", "project.task", TASK_ID))[0] == 250
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_templates_change_at_a_reload_only_and_a_broken_one_is_refused(test_odoo, serve, dkim_keys, tmp_path):
    template = tmp_path / "tpl" / "note" / "default.html.j2"
    template.parent.mkdir(parents=True)
    template.write_text("<p>Version one by {{ sender_email }}</p>\n{{ body }}\n")
    gateway = serve()  # writes the config on its first call; started again below with templates_dir
    gateway.stop()
    config = gateway.config_path
    config.write_text('templates_dir = "tpl"\n' + config.read_text())
    gateway = serve()
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    task = mailer.address("note", "project.task", TASK_ID)

    def filed(message_id: str) -> str:
        raw = mailer.sign(mailer.message("note_from_contributor.eml", task, message_id))
        assert _send(raw, task, gateway.port).startswith("250 2.0.0 Filed"), gateway.log
        [body] = [message["body"] for message in test_odoo.messages("project.task", TASK_ID)
                  if message["message_id"] == message_id]
        return body

    assert filed("<tpl-1@example.com>").startswith("<p>Version one by portal.contrib@example.com</p>")
    # An edit saved half-way, with no reload: the running gateway keeps the template it checked.
    template.write_text("<p>Version two by {{ sender_email }</p>\n{{ body }}\n")
    assert filed("<tpl-2@example.com>").startswith("<p>Version one")
    # A reload with it is refused, as a broken rules file is, and the running templates stay.
    mark = len(gateway.lines)
    gateway.signal(signal.SIGHUP)
    line = gateway.wait_for(r"ERROR gateway: reload refused, the previous rules stay in force: (.*)", start=mark)
    assert line.group(1) == f"{config}: templates_dir: {template}, line 1: unexpected '}}'"
    assert filed("<tpl-3@example.com>").startswith("<p>Version one")
    # A value no message gives (StrictUndefined) is refused the same way, with its line.
    template.write_text("<p>Version two by {{ sender_email }}</p>\n<p>{{ sender_nmae }}</p>\n{{ body }}\n")
    mark = len(gateway.lines)
    gateway.signal(signal.SIGHUP)
    line = gateway.wait_for(r"ERROR gateway: reload refused, the previous rules stay in force: (.*)", start=mark)
    assert line.group(1).startswith(f"{config}: templates_dir: {template}, line 2: 'sender_nmae' is undefined")
    assert filed("<tpl-4@example.com>").startswith("<p>Version one")
    # Corrected: the reload takes it.
    template.write_text("<p>Version two by {{ sender_email }}</p>\n{{ body }}\n")
    mark = len(gateway.lines)
    gateway.signal(signal.SIGHUP)
    gateway.wait_for("rules reloaded: notes.example.com", start=mark)
    assert filed("<tpl-5@example.com>").startswith("<p>Version two by portal.contrib@example.com</p>")
    assert gateway.stop() == 0


def test_serve_logs_the_configurations_warnings_at_start_and_at_each_reload(test_odoo, serve):
    # check-config prints them; serve logs them once at start and once per reload (load_config
    # itself no longer logs, so that check-config does not show each twice).
    gateway = serve(rules_extra="[notices]\nenabled = true\n")
    warning = "configuration: .*notices.enabled: true, but gateway.toml has no \\[notices\\] smarthost"
    gateway.wait_for(warning)
    assert len([line for line in gateway.lines if "no notice is sent until it names one" in line]) == 1
    mark = len(gateway.lines)
    gateway.signal(signal.SIGHUP)
    gateway.wait_for("rules reloaded: notes.example.com", start=mark)
    assert len([line for line in gateway.lines[mark:] if "no notice is sent until it names one" in line]) == 1
    assert gateway.stop() == 0


def _served_certificate(port: int) -> bytes:
    """The certificate (DER) the gateway presents after STARTTLS, unchecked as most senders leave it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.example.com")
        client.starttls(context=context)
        return client.sock.getpeercert(binary_form=True)


@pytest.mark.parametrize("workers", [None, 2])
def test_an_expired_certificate_is_warned_of_at_start_and_at_each_reload_and_still_offered(
        test_odoo, serve, tmp_path, workers):
    # Found by a review of STARTTLS: an expired certificate was loaded at the start and at a reload
    # without a word; only doctor compared its dates. The gateway still offers STARTTLS with it
    # (an expired certificate is better than none for the senders that do not check it), and says
    # so once (a worker's supervisor for all of them).
    from gateway.testing.certificates import self_signed

    folder = tmp_path / "certificates"
    folder.mkdir()
    expired, expired_key = self_signed(folder, ALIAS_DOMAIN, days=10, name="expired",
                                       not_before=datetime.now(timezone.utc) - timedelta(days=40))
    certificate, key = folder / "tls.crt", folder / "tls.key"
    shutil.copy(expired, certificate)
    shutil.copy(expired_key, key)
    ended = x509.load_pem_x509_certificate(expired.read_bytes()).not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
    said = (f"certificate: {certificate} expired on {ended}: senders that check certificates (MTA-STS, DANE-TA) "
            "defer their mail; STARTTLS is still offered with it, which senders that do not check take, rather than "
            "none: renew it, then systemctl reload note-gateway")

    def warnings(lines: list[str]) -> list[str]:
        return [line.split(" WARNING ", 1)[1].split(": ", 1)[1] for line in lines
                if " WARNING " in line and ": certificate: " in line]

    gateway = serve(workers=workers, listener_extra=f'tls_certificate = "{certificate}"\ntls_key = "{key}"\n')
    gateway.wait_for(re.escape(said))
    assert warnings(gateway.lines) == [said]
    assert ssl.PEM_cert_to_DER_cert(expired.read_text()) == _served_certificate(gateway.port)

    def reload() -> list[str]:
        return warnings(gateway.lines[gateway.reload(workers or 1):])

    assert reload() == [said]
    # Renewed, for ten days only: doctor's warning window (checks.EXPIRY_WARNING_DAYS).
    renewed, renewed_key = self_signed(folder, ALIAS_DOMAIN, days=10, name="renewed")
    shutil.copy(renewed, certificate)
    shutil.copy(renewed_key, key)
    [line] = reload()
    assert re.fullmatch(rf"certificate: {re.escape(str(certificate))} expires on \S+ \S+ UTC, in (9|10) days: renew it, "
                        "then systemctl reload note-gateway", line), line
    assert ssl.PEM_cert_to_DER_cert(renewed.read_text()) == _served_certificate(gateway.port)
    # Renewed for ninety days: nothing to say.
    renewed, renewed_key = self_signed(folder, ALIAS_DOMAIN, days=90, name="renewed")
    shutil.copy(renewed, certificate)
    shutil.copy(renewed_key, key)
    assert reload() == []
    assert gateway.stop() == 0


@pytest.mark.parametrize("workers", [None, 2])
def test_a_reload_warns_that_credentials_and_environment_keep_their_values_until_a_restart(
        test_odoo, serve, dkim_keys, dns_server, tmp_path, monkeypatch, workers):
    # Day-2 operations review: under the unit's LoadCredential=, systemd copies the credentials into
    # $CREDENTIALS_DIRECTORY at start and never again, and a process's environment never changes: a
    # leaked address secret retired by editing its credential and reloading stayed valid, silently,
    # and a reload after adding a credential for a new domain said only "No such file or directory".
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "address-secrets").write_text(SECRET + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    monkeypatch.setenv("NOTE_GATEWAY_TEST_KEY", DEMO_API_KEY)
    config = write_config(tmp_path, test_odoo, dns_server.port, listener_extra=f"workers = {workers or 1}\n")
    rules = config.parent / "rules" / f"{ALIAS_DOMAIN}.toml"
    config.write_text(config.read_text().replace('api_key_file = "odoo-api-key"', 'api_key_env = "NOTE_GATEWAY_TEST_KEY"'))
    rules.write_text(rules.read_text().replace(f'secrets = ["{SECRET}"]', 'secrets_credential = "address-secrets"'))
    gateway = serve()
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    task = mailer.address("note", "project.task", TASK_ID)

    def reload(said: str, count: int) -> int:
        return gateway.reload(count, said)

    # Every worker reloads; the supervisor says it once for all of them.
    mark = reload("rules reloaded: ", workers or 1)
    warnings = [line.split(" ", 2)[2] for line in gateway.lines[mark:] if "kept the values of the gateway's start" in line]
    assert warnings == [
        f"WARNING gateway: reload: odoo.main.api_key_env ({config}), secrets_credential ({rules}) kept the values of "
        "the gateway's start: systemd copies credentials into $CREDENTIALS_DIRECTORY when the service starts, and a "
        "process keeps the environment it started with; after changing one of them, restart the gateway "
        "(systemctl restart note-gateway), a reload does not see the change (*_file values are read at each reload)"
    ], gateway.log

    # A domain whose credential the unit does not load yet: the reload names the restart it needs.
    (rules.parent / "notes-b.example.com.toml").write_text(
        'domain = "notes-b.example.com"\nodoo = "main"\nsecrets_credential = "address-secrets-b"\n'
        '[note]\nmodels = ["project.task"]\n')
    mark = reload("reload refused", 1)
    line = gateway.wait_for(r"ERROR gateway: reload refused, the previous rules stay in force: (.*)", start=mark).group(1)
    assert line == (f"{rules.parent / 'notes-b.example.com.toml'}: secrets_credential: cannot read "
                    f"{credentials / 'address-secrets-b'}: No such file or directory; systemd puts the service's "
                    "credentials there when it starts (LoadCredential=address-secrets-b:PATH in the unit) and not at "
                    "a reload: add that line if it is missing, then restart the gateway (systemctl restart note-gateway)")

    # An API key from the environment that Odoo no longer takes: the ERROR says restart, not reload.
    test_odoo.revoke_api_key(GATEWAY_UID, DEMO_API_KEY)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", task, "<revoked-env-key@example.com>"))
    assert _send(raw, task, gateway.port).startswith("451 4.3.0 Odoo is unavailable")
    line = gateway.wait_for(r"ERROR gateway.odoo: odoo main: .*refused the credentials.*", start=mark).group(0)
    assert ("a new key: set NOTE_GATEWAY_TEST_KEY to it in the service's environment, systemctl restart "
            "note-gateway (a process keeps the environment it started with: a reload does not see it)") in line
    assert "systemctl reload" not in line
    assert gateway.stop() == 0


@pytest.mark.parametrize("workers", [None, 2])
def test_a_refused_reload_logs_no_warning_of_the_configuration_it_refused(
        test_odoo, serve, dns_server, tmp_path, monkeypatch, workers):
    # Shape review: the reload warnings were put together twice, and a one-process gateway logged
    # the configuration's warnings, "kept the values of the gateway's start" and "needs a restart"
    # before building what a broken template then refused: lines about a configuration that never
    # ran. Now config.reload_warnings, logged once the reload is taken, in one order.
    monkeypatch.setenv("NOTE_GATEWAY_TEST_KEY", DEMO_API_KEY)
    config = write_config(tmp_path, test_odoo, dns_server.port, listener_extra=f"workers = {workers or 1}\n")
    config.write_text(config.read_text().replace('api_key_file = "odoo-api-key"', 'api_key_env = "NOTE_GATEWAY_TEST_KEY"'))
    rules = config.parent / "rules" / f"{ALIAS_DOMAIN}.toml"
    gateway = serve()
    deadline = time.monotonic() + 20
    while sum(" serving " in line for line in gateway.lines) < (workers or 0):
        assert time.monotonic() < deadline, gateway.log
        time.sleep(0.05)
    template = tmp_path / "tpl" / "note" / "default.html.j2"
    template.parent.mkdir(parents=True)
    template.write_text("<p>By {{ sender_email }</p>\n{{ body }}\n")
    config.write_text('templates_dir = "tpl"\n' + config.read_text().replace(
        f'hostname = "{ALIAS_DOMAIN}"', f'hostname = "{ALIAS_DOMAIN}"\nmax_sessions = 7'))
    rules.write_text(rules.read_text() + "\n[notices]\nenabled = true\n")
    said = ("configuration: ", "kept the values of the gateway's start", "which needs a restart")

    mark = len(gateway.lines)
    gateway.signal(signal.SIGHUP)
    gateway.wait_for(r"ERROR gateway: reload refused, the previous rules stay in force: .*templates_dir", start=mark)
    time.sleep(0.5)
    assert not [line for line in gateway.lines[mark:] if any(words in line for words in said)], gateway.log

    template.write_text("<p>By {{ sender_email }}</p>\n{{ body }}\n")
    mark = len(gateway.lines)
    gateway.signal(signal.SIGHUP)
    gateway.wait_for("rules reloaded: notes.example.com", start=mark)
    time.sleep(0.5)
    warnings = [line.split(" WARNING ", 1)[1].split(": ", 1)[1] for line in gateway.lines[mark:] if " WARNING " in line]
    assert [next(words for words in said if words in line) for line in warnings] == list(said), gateway.log
    assert "notices.enabled: true, but gateway.toml has no [notices] smarthost" in warnings[0]
    assert "api_key_env" in warnings[1] and "listener.max_sessions: changed from 100 to 7" in warnings[2]
    assert gateway.stop() == 0


def _stalled(mailer, to: str, stage: str, message_id: str) -> bytes:
    raw = mailer.message("note_from_contributor.eml", to, message_id)
    return mailer.sign(raw.replace(b"Subject: Pump P-7 inspected", f"Subject: Pump P-7 [stall {stage}]".encode()))


@pytest.mark.parametrize("workers", [None, 2])
def test_sigterm_does_not_wait_for_a_pipeline_stuck_past_its_deadline(test_odoo, serve, dkim_keys, workers):
    # Found by a security review: SIGTERM had not stopped the gateway after 240 s while a note whose
    # text took minutes to link was being filed, as the stop waited for every pipeline thread without
    # a bound (docs/reliability.md promises shutdown_grace + message_deadline). Two stages that never
    # end (tests/stalling): one before anything reached the journal, one in the post, after the
    # receipt. The gateway (each worker: its supervisor would kill one after 10 s more) exits within
    # the bound; the first message is journaled deferred, the second as an interrupted post, whose
    # retry is deferred as unsettled rather than filed a second time.
    gateway = serve(workers=workers, stalling=True, listener_extra="shutdown_grace = 1", message_deadline=3,
                    rules_extra=NO_RATE_LIMIT)
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    in_content = _stalled(mailer, to, "extract-content", "<stuck-in-content@example.com>")
    in_post = _stalled(mailer, to, "post", "<stuck-in-post@example.com>")
    replies: list[str] = []
    senders = [threading.Thread(target=lambda raw=raw: replies.append(_send(raw, to, gateway.port)))
               for raw in (in_content, in_post)]
    for sender in senders:
        sender.start()
    gateway.wait_for("stalling in extract-content: <stuck-in-content@example.com>", timeout=20)
    gateway.wait_for("stalling in post: <stuck-in-post@example.com>", timeout=20)
    started = time.monotonic()
    gateway.signal(signal.SIGTERM)
    # Before: still running after 240 s; a worker killed by its supervisor after grace + deadline + 10 s.
    assert gateway.wait(timeout=30) == 0, gateway.log
    assert time.monotonic() - started < 1 + 3 + 3, gateway.log
    assert "did not stop in time" not in gateway.log
    for sender in senders:
        sender.join(timeout=10)
    assert sorted(replies) == ["421 4.3.2 The gateway is shutting down, try again later"] * 2, replies
    gateway.wait_for(r"exiting without waiting for \d pipeline thread")
    gateway.wait_for("interrupted by the stop, the sender will retry: <stuck-in-post@example.com>")
    with Journal(gateway.config_path.parent / "journal.sqlite3") as journal:
        rows = {row.message_id: row for row in journal.recent(10)}
    content_row, post_row = rows["<stuck-in-content@example.com>"], rows["<stuck-in-post@example.com>"]
    assert (content_row.verdict, content_row.refusal_class) == ("deferred", "MessageTookTooLong")
    assert content_row.smtp_reply == "421 4.3.2 The gateway is shutting down, try again later"
    assert (post_row.verdict, post_row.refusal_class) == ("deferred", "Interrupted")
    assert _filed_ids(test_odoo, ["<stuck-in-post@example.com>"]) == {"<stuck-in-post@example.com>": 0}
    restarted = serve()
    assert _send(in_post, to, restarted.port).startswith(UNSETTLED)
    assert _send(in_content, to, restarted.port).startswith("250 2.0.0 Filed")
    assert restarted.stop() == 0


@pytest.mark.parametrize("workers", [None, 2])
def test_a_reload_that_points_an_alias_domain_at_another_odoo_says_to_rotate_its_secret(
        test_odoo, serve, dns_server, tmp_path, workers):
    # Review of addresses as a credential: the Odoo is not signed into an address, so a rules file
    # pointed at another database (or its [odoo.NAME] url or database changed) made every address
    # given out name the record with the same id there, and the reload said nothing.
    config = write_config(tmp_path, test_odoo, dns_server.port, listener_extra=f"workers = {workers or 1}\n")
    gateway = serve()
    deadline = time.monotonic() + 20
    while sum(" serving " in line for line in gateway.lines) < (workers or 0):
        assert time.monotonic() < deadline, gateway.log
        time.sleep(0.05)
    rules = config.parent / "rules" / f"{ALIAS_DOMAIN}.toml"
    config.write_text(config.read_text().replace(f'database = "{test_odoo.database}"', 'database = "other"'))
    expected = (f"reload: {rules}: odoo: the Odoo of {ALIAS_DOMAIN} changed from {test_odoo.url}/{test_odoo.database} "
                f"to {test_odoo.url}/other: the Odoo is not part of an address's signature, so every address of "
                f"{ALIAS_DOMAIN} already given out now names the record with the same id in {test_odoo.url}/other; "
                "unless both are the same data (a database moved to another server), rotate the domain's secret: a "
                'new one first, the old ones dropped (docs/rules.md, "Address secrets")')

    def reload() -> list[str]:
        """SIGHUP, once every process reloaded: the "reload:" warnings logged since the start."""
        mark = len(gateway.lines)
        gateway.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while sum("rules reloaded: " in line for line in gateway.lines[mark:]) < (workers or 1):
            assert time.monotonic() < deadline, gateway.log
            time.sleep(0.05)
        return [line.split(" WARNING gateway: ", 1)[1] for line in gateway.lines if " WARNING gateway: reload: " in line]

    assert reload() == [expected], gateway.log
    # Said once, at the reload that changed it (by the supervisor for its workers): the next one
    # compares with the Odoo in force since then, not with the start's.
    assert reload() == [expected], gateway.log
    assert gateway.stop() == 0
