"""What an operator sees of each outcome the listener says itself: /metrics, the journal and the JSON line.

Found by a review of what reaches the operator: a session turned away at connect, a DATA with no
free slot, a line over 1000 bytes, a refused recipient and the listener's own 451 for a stuck
pipeline were each told to the client and to nothing (or not everything) an operator watches.
Each test runs `note-gateway serve` with a [metrics] section and reads /metrics over HTTP.
"""

from __future__ import annotations

import json
import smtplib
import urllib.request

import pytest

from conftest import Mailer
from serving import PAULA, Port

from gateway.journal import Journal
from gateway.testing.postfix import free_port as _free_port
from gateway.testing.odoo_demo import TASK_ID


def _metrics(port: int, name: str) -> dict[str, float]:
    """The samples of one metric on /metrics, by their labels as written ('{reason="..."}')."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            series, value = line.rsplit(" ", 1)
            samples[series[len(name):]] = float(value)
    return samples


def _journal(tmp_path) -> list:
    with Journal(tmp_path / "journal.sqlite3") as journal:
        return journal.recent(50)


def _message_lines(gateway) -> list[dict]:
    return [json.loads(line) for line in gateway.lines if line.startswith('{"event": "message"')]


def test_sessions_turned_away_at_connect_are_counted_by_reason(serve, tmp_path):
    # Behind Postfix every session comes from 127.0.0.1: max_sessions_per_ip is the limit that
    # binds, and its 421s were in no metric, the journal or a JSON line.
    metrics_port = _free_port()
    gateway = serve(metrics_port=metrics_port, listener_extra="max_sessions = 3\nmax_sessions_per_ip = 2\n")
    # Every reason is a series from the start, so that an alert on its rate has something to read.
    assert _metrics(metrics_port, "note_gateway_sessions_refused_total") == {
        '{reason="TooManySessions"}': 0.0, '{reason="TooManyConnectionsFromPeer"}': 0.0,
        '{reason="ShuttingDown"}': 0.0}
    held = [smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) for _ in range(2)]
    for _ in range(2):
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", gateway.port, timeout=10)
        assert refused.value.smtp_code == 421
    held.append(smtplib.SMTP("127.0.0.1", gateway.port, timeout=10, source_address=("127.0.0.2", 0)))
    with pytest.raises(smtplib.SMTPConnectError) as full:
        smtplib.SMTP("127.0.0.1", gateway.port, timeout=10, source_address=("127.0.0.3", 0))
    assert full.value.smtp_error == b"4.3.2 Too many sessions, try again later"
    assert _metrics(metrics_port, "note_gateway_sessions_refused_total") == {
        '{reason="TooManySessions"}': 1.0, '{reason="TooManyConnectionsFromPeer"}': 2.0,
        '{reason="ShuttingDown"}': 0.0}
    for client in held:
        client.quit()
    # No message was sent: no journal row, no message counted.
    assert _journal(tmp_path) == []
    assert _metrics(metrics_port, "note_gateway_messages_total") == {}


def test_a_data_with_no_free_slot_is_journaled_and_counted_as_deferred(test_odoo, serve, tmp_path, dkim_keys):
    # The 451 4.3.2 of a gateway whose DATA slots stayed taken for a session_timeout was seen only
    # by its clients; it is a deferred message now, as the other refusals at DATA.
    metrics_port = _free_port()
    gateway = serve(metrics_port=metrics_port, listener_extra="max_messages_in_data = 1\nlight_message_size = 0\n",
                    session_timeout=1)
    mailer = Mailer(Port(gateway.port), dkim_keys)
    task = mailer.address("note", "project.task", TASK_ID)
    # Filing takes longer than session_timeout: the first message holds the only slot meanwhile.
    test_odoo.latency = {"message_post": 2.5}
    first = smtplib.SMTP("127.0.0.1", gateway.port, timeout=30)
    first.ehlo("first.example.com")
    first.mail(PAULA)
    first.rcpt(task)
    first.putcmd("data")
    assert first.getreply()[0] == 354
    note = mailer.sign(mailer.message("note_from_contributor.eml", task)).decode()
    first.send(smtplib.quotedata(note).encode() + b"\r\n.\r\n")
    second = smtplib.SMTP("127.0.0.1", gateway.port, timeout=30)
    second.ehlo("second.example.com")
    second.mail(PAULA)
    second.rcpt(task)
    busy = "451 4.3.2 The gateway is busy with other messages, try again later"
    assert second.docmd("DATA") == (451, busy[4:].encode())
    assert first.getreply()[0] == 250
    # The second session was idle past session_timeout meanwhile, and closed.
    first.quit()
    second.close()
    rows = _journal(tmp_path)
    assert sorted(row.verdict for row in rows) == ["deferred", "filed"]
    [deferred] = [row for row in rows if row.verdict == "deferred"]
    assert (deferred.verdict, deferred.refusal_class, deferred.smtp_reply) == ("deferred", "GatewayBusy", busy)
    assert (deferred.mail_from, deferred.rcpt, deferred.model, deferred.res_id, deferred.odoo) == (
        PAULA, task, "project.task", TASK_ID, "main")
    assert _metrics(metrics_port, "note_gateway_messages_total") == {
        '{odoo="main",refusal="none",verdict="filed"}': 1.0,
        '{odoo="main",refusal="GatewayBusy",verdict="deferred"}': 1.0}
    gateway.wait_for('"refusal_class": "GatewayBusy"')
    [line] = [line for line in _message_lines(gateway) if line["verdict"] == "deferred"]
    assert line["smtp_reply"] == busy and line["journal_id"] == deferred.id


def test_a_line_over_1000_bytes_in_data_is_refused_precisely_journaled_and_counted(test_odoo, serve, tmp_path,
                                                                                   dkim_keys):
    # aiosmtpd's own "500 Line too long (see RFC5321 4.5.3.1.6)" had no enhanced code, and no
    # journal row, metric or INFO line heard of the message: "every message that reaches DATA gets
    # a row in the journal" was not true of it.
    metrics_port = _free_port()
    gateway = serve(metrics_port=metrics_port)
    mailer = Mailer(Port(gateway.port), dkim_keys)
    task = mailer.address("note", "project.task", TASK_ID)
    long_line = mailer.sign(mailer.message("note_from_contributor.eml", task, "<long-line@example.com>")).replace(
        b"\r\n\r\n", b"\r\n\r\n" + b"y" * 1200 + b"\r\n", 1)
    expected = ("500 5.5.2 Line too long in the message data: a line may hold 1000 bytes with its CRLF "
                "(RFC 5321 section 4.5.3.1.6)")
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
        client.ehlo("client.example.com")
        client.mail(PAULA)
        client.rcpt(task)
        assert client.data(long_line) == (500, expected[4:].encode())
        # aiosmtpd read the data to its end and reset the transaction: the session goes on.
        client.mail(PAULA)
        client.rcpt(task)
        code, filed = client.data(mailer.sign(mailer.message("note_from_contributor.eml", task)))
        assert (code, filed[:15]) == (250, b"2.0.0 Filed as ")
    rows = _journal(tmp_path)
    [refused] = [row for row in rows if row.verdict == "refused"]
    assert (refused.refusal_class, refused.smtp_reply) == ("LineTooLong", expected)
    assert (refused.mail_from, refused.rcpt, refused.model, refused.res_id, refused.odoo) == (
        PAULA, task, "project.task", TASK_ID, "main")
    assert _metrics(metrics_port, "note_gateway_messages_total") == {
        '{odoo="main",refusal="none",verdict="filed"}': 1.0,
        '{odoo="main",refusal="LineTooLong",verdict="refused"}': 1.0}
    gateway.wait_for('"refusal_class": "LineTooLong"')
    [line] = [line for line in _message_lines(gateway) if line["verdict"] == "refused"]
    assert line["smtp_reply"] == expected and line["journal_id"] == refused.id
    assert gateway.wait_for(r"INFO gateway\.smtp: DATA from .* refused: 500 5\.5\.2 Line too long")


def test_the_listener_s_own_451_is_counted_as_sent_and_the_late_row_follows_it(test_odoo, serve, tmp_path,
                                                                                dkim_keys):
    # The listener's last-resort 451, for a pipeline still running 5 s past the message's deadline,
    # reached no metric until the pipeline ended, if it ever did; and the row the pipeline wrote
    # then had the pipeline's verdict (filed, counted as filed) while the sender had been told to
    # retry. Here the post stage files the note, then overruns the deadline by 9 s.
    metrics_port = _free_port()
    gateway = serve(metrics_port=metrics_port, stalling=True, message_deadline=2,
                    rules_extra="[rate_limit]\nper_sender = 0\nper_record = 1\n")
    mailer = Mailer(Port(gateway.port), dkim_keys)
    task = mailer.address("note", "project.task", TASK_ID)

    def note(message_id: str, subject: str = "Pump P-7 inspected") -> bytes:
        raw = mailer.message("note_from_contributor.eml", task, message_id)
        return mailer.sign(raw.replace(b"Subject: Pump P-7 inspected", f"Subject: {subject}".encode()))

    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
        client.ehlo("client.example.com")
        client.mail(PAULA)
        client.rcpt(task)
        code, text = client.data(note("<late@example.com>", "Pump P-7 inspected [stall post 9]"))
    reply = f"{code} {text.decode()}"
    assert reply == ("451 4.3.0 The message took too long to process, try again later: no outcome 7 s after its "
                     "data; stage post (post once per Message-ID and sender with message_post) still running")
    # Counted as the reply went out, before any row.
    deferred = '{odoo="main",refusal="MessageTookTooLong",verdict="deferred"}'
    assert _metrics(metrics_port, "note_gateway_messages_total") == {deferred: 1.0}
    assert _metrics(metrics_port, "note_gateway_message_seconds_count") == {"": 1.0}
    assert [row for row in _journal(tmp_path) if row.message_id == "<late@example.com>"] == []

    # The pipeline ends: its row is the reply the sender got, and the message is not counted again.
    line = json.loads(gateway.wait_for(r'^\{"event": "message".*', timeout=15).group(0))
    [row] = _journal(tmp_path)
    assert (row.verdict, row.refusal_class, row.smtp_reply) == ("deferred", "MessageTookTooLong", reply)
    assert row.total_seconds < 8 and row.odoo_message_id is not None
    [answered] = [defect for defect in row.defects if defect.startswith("listener-answered:")]
    assert answered.endswith(f"with 250 2.0.0 Filed as Odoo message {row.odoo_message_id}")
    assert (line["journal_id"], line["verdict"], line["smtp_reply"]) == (row.id, "deferred", reply)
    assert _metrics(metrics_port, "note_gateway_messages_total") == {deferred: 1.0}
    assert _metrics(metrics_port, "note_gateway_message_seconds_count") == {"": 1.0}

    # A new note fills the record's rate limit (per_record = 1); the sender's retry of the late one
    # is still recognised as a retry, and answered "Already filed", not held by the limit.
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
        client.ehlo("client.example.com")
        client.mail(PAULA)
        client.rcpt(task)
        assert client.data(note("<next@example.com>"))[0] == 250
        client.mail(PAULA)
        client.rcpt(task)
        assert client.data(note("<late@example.com>")) == (
            250, f"2.0.0 Already filed as Odoo message {row.odoo_message_id}".encode())
    assert _metrics(metrics_port, "note_gateway_messages_total") == {
        deferred: 1.0, '{odoo="main",refusal="none",verdict="filed"}': 1.0,
        '{odoo="main",refusal="none",verdict="duplicate"}': 1.0}


def test_a_recipient_refused_at_rcpt_has_its_json_line_and_its_own_counter(serve, tmp_path, dkim_keys):
    # A refused recipient had a journal row and nothing else: no JSON line (every other row has
    # one) and no metric. It is no message (none reached DATA): messages_total leaves it out.
    metrics_port = _free_port()
    gateway = serve(metrics_port=metrics_port)
    mailer = Mailer(Port(gateway.port), dkim_keys)
    forged = mailer.address("note", "project.task", TASK_ID).replace("note+", "note+x", 1)
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
        client.ehlo("client.example.com")
        client.mail(PAULA)
        code, text = client.rcpt(forged)
    assert code == 550
    [row] = _journal(tmp_path)
    assert (row.verdict, row.rcpt, row.smtp_reply) == ("refused", forged, f"{code} {text.decode()}")
    line = json.loads(gateway.wait_for(r'^\{"event": "refused-recipient".*').group(0))
    assert (line["journal_id"], line["refusal_class"], line["smtp_reply"]) == (row.id, row.refusal_class,
                                                                              row.smtp_reply)
    assert _message_lines(gateway) == []
    assert _metrics(metrics_port, "note_gateway_recipients_refused_total") == {
        f'{{odoo="main",refusal="{row.refusal_class}"}}': 1.0}
    assert _metrics(metrics_port, "note_gateway_messages_total") == {}
