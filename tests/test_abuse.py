"""Abuse and loops over loopback SMTP: automatic mail, hostile input, smuggling, floods and per-peer caps."""

from __future__ import annotations

import base64
import contextlib
import smtplib
import socket
import threading
import time
import tracemalloc

import pytest

from conftest import SELECTOR, Mailer, read_reply

from gateway import content, observe
from gateway.config import InputLimits
from gateway.inputlimits import check_input
from gateway.journal import Journal
from gateway.message import parse
from gateway.refusals import TooManyParts
from gateway.testing.dns import DnsServer
from gateway.testing.odoo_demo import SALE_ORDER_ID, TASK_ID
from gateway.testing.sending import compose

PAULA = "portal.contrib@example.com"


def _posts(test_odoo):
    return [call for call in test_odoo.calls if call.model_method == "message_post"]


def _journal(gateway):
    with Journal(gateway.services.config.journal_path) as journal:
        return journal.recent(50)


def _with_headers(raw: bytes, *lines: str) -> bytes:
    return "".join(f"{line}\r\n" for line in lines).encode() + raw


def _with_subject(raw: bytes, subject: str) -> bytes:
    return raw.replace(b"Subject: Pump P-7 inspected", f"Subject: {subject}".encode())


# --- Automatic mail and loops ----------------------------------------------------------------------


@pytest.mark.parametrize("header, expected", [
    ("Auto-Submitted: auto-replied", "550 5.7.1 Automatic replies, bulk and list mail are not filed: Auto-Submitted: auto-replied"),
    ("Auto-Submitted: auto-generated; owner-email=x@example.com", "550 5.7.1 Automatic replies, bulk and list mail are not filed: Auto-Submitted: auto-generated"),
    ("Precedence: bulk", "550 5.7.1 Automatic replies, bulk and list mail are not filed: Precedence: bulk"),
    ("Precedence: junk", "550 5.7.1 Automatic replies, bulk and list mail are not filed: Precedence: junk"),
    ("Precedence: list", "550 5.7.1 Automatic replies, bulk and list mail are not filed: Precedence: list"),
    ("X-Autoreply: yes", "550 5.7.1 Automatic replies, bulk and list mail are not filed: X-Autoreply"),
    ("X-Autorespond: yes", "550 5.7.1 Automatic replies, bulk and list mail are not filed: X-Autorespond"),
    ("X-Note-Gateway-Loop: notes.example.com", "550 5.4.6 Mail loop: the message carries this gateway's own loop header"),
    # A list's copy with no Precedence (Mailman 3, Google Groups, Sympa send List-Id; a review of the
    # gateway behind Postfix found it filed), and a bulk mailing that only says List-Unsubscribe.
    ("List-Id: Pump maintainers <pumps.lists.example.org>",
     "550 5.7.1 Automatic replies, bulk and list mail are not filed: list mail (List-Id)"),
    ("List-Post: <mailto:pumps@lists.example.org>",
     "550 5.7.1 Automatic replies, bulk and list mail are not filed: list mail (List-Post)"),
    ("List-Unsubscribe: <https://news.example.com/u/1>, <mailto:leave@news.example.com>",
     "550 5.7.1 Automatic replies, bulk and list mail are not filed: bulk mail (List-Unsubscribe)"),
])
def test_automatic_mail_is_refused_and_not_filed(test_odoo, gateway, mailer, header, expected):
    to = mailer.address("note", "project.task", TASK_ID)
    # Signed by the sender's domain after the header was added: authenticated or not, a machine
    # wrote it, and it is refused before the gateway asks DNS or Odoo anything.
    raw = mailer.sign(_with_headers(mailer.message("note_from_contributor.eml", to), header))
    assert mailer.send(raw, to) == expected
    assert test_odoo.calls == []
    [row] = _journal(gateway)
    assert row.verdict == "refused" and row.refusal_class in ("AutomaticMessage", "MailLoop")


@pytest.mark.parametrize("subject", [
    "Out of Office: Pump P-7 inspected", "Automatic reply: Pump P-7", "Abwesenheitsnotiz: Pumpe P-7",
    "Réponse automatique : Pompe P-7", "Respuesta automática: Bomba", "Risposta automatica: pompa",
    "Automatisch antwoord: pomp", "自动回复: 泵",
    # The forms real responders write without an Auto-Submitted header: Outlook/Exchange prefixes
    # in their languages (Outlook 2003 qualified them), Lotus Notes' "AUTO: ... is out of the
    # office", and an absence phrase that is the whole subject.
    "Automatische Antwort: Pumpe P-7", "Automatic Reply:Pump P-7", "Auto-Reply - Pump P-7",
    "Out of Office AutoReply: Pump P-7", "Réponse automatique d'absence du bureau : Pompe P-7",
    "Automatiskt svar: pump", "Automaattinen vastaus: pumppu", "Automatyczna odpowiedź: pompa",
    "Автоматический ответ: насос", "自动答复: 泵", "自動応答: ポンプ",
    "AUTO: Jane Doe is out of the office (returning 05/01/2027)",
    "Out of office", "Automatic reply", "Fuori sede", "Niet aanwezig.",
])
def test_out_of_office_subjects_are_refused(test_odoo, gateway, mailer, subject):
    to = mailer.address("note", "project.task", TASK_ID)
    raw = _with_subject(mailer.message("note_from_contributor.eml", to), subject)
    reply = mailer.send(mailer.sign(raw), to)
    assert reply == "550 5.7.1 Automatic replies, bulk and list mail are not filed: out-of-office subject"
    assert _posts(test_odoo) == []


@pytest.mark.parametrize("mail_from, from_header, detail", [
    ("", None, "empty envelope sender"),
    ("MAILER-DAEMON@example.com", None, "sent from a machine address, MAILER-DAEMON"),
    (PAULA, "No Reply <noreply@example.com>", "sent from a machine address, noreply"),
    (PAULA, "<do-not-reply@example.com>", "sent from a machine address, do-not-reply"),
])
def test_bounces_and_machine_senders_are_refused(test_odoo, gateway, mailer, mail_from, from_header, detail):
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.message("note_from_contributor.eml", to)
    if from_header:
        raw = raw.replace(b"From: Paula Contributor <portal.contrib@example.com>", f"From: {from_header}".encode())
    reply = mailer.send(mailer.sign(raw), to, mail_from=mail_from)
    assert reply == f"550 5.7.1 Automatic replies, bulk and list mail are not filed: {detail}"
    assert _posts(test_odoo) == []


def _report(to: str, report_type: str, subject: str, human: str, machine: str) -> bytes:
    """A multipart/report (RFC 6522) as Thunderbird or an MTA writes it, From the person."""
    return (f"From: Paula Contributor <{PAULA}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <report-{report_type}@example.com>\r\nMIME-Version: 1.0\r\n"
            f'Content-Type: multipart/report; report-type={report_type};\r\n boundary="rep0001"\r\n\r\n'
            "This is a multi-part message in MIME format.\r\n--rep0001\r\n"
            f"Content-Type: text/plain; charset=UTF-8\r\n\r\n{human}\r\n\r\n--rep0001\r\n"
            f"Content-Type: message/{report_type}\r\n\r\n{machine}\r\n\r\n--rep0001\r\n"
            "Content-Type: text/rfc822-headers\r\n\r\nSubject: Pump P-7\r\nMessage-ID: <abc@notes.example.com>\r\n"
            "\r\n--rep0001--\r\n").encode()


@pytest.mark.parametrize("report_type, subject, human, machine, detail", [
    # Thunderbird's read receipt, sent with the reader's own envelope sender and From.
    ("disposition-notification", "Return Receipt (displayed) - Pump P-7",
     "This is a Return Receipt for the mail that you sent to portal.contrib@example.com.",
     "Reporting-UA: example.com; Thunderbird 115.5.0\r\nFinal-Recipient: rfc822;portal.contrib@example.com\r\n"
     "Original-Message-ID: <abc@notes.example.com>\r\nDisposition: manual-action/MDN-sent-manually; displayed",
     "a read receipt (multipart/report, report-type=disposition-notification)"),
    # A delivery report a relay sent with the user's envelope sender instead of the null one.
    ("delivery-status", "Undeliverable: Pump P-7", "Delivery has failed to these recipients: customer@client.example",
     "Reporting-MTA: dns;mx.example.com\r\n\r\nFinal-Recipient: rfc822;customer@client.example\r\n"
     "Action: failed\r\nStatus: 5.1.1",
     "a delivery report (multipart/report, report-type=delivery-status)"),
    ("feedback-report", "Abuse report", "This is an email abuse report.",
     "Feedback-Type: abuse\r\nUser-Agent: SomeGenerator/1.0\r\nVersion: 1",
     "an abuse feedback report (multipart/report, report-type=feedback-report)"),
    ("x-vendor-report", "Report", "A report.", "Whatever: 1", "a report (multipart/report, report-type=x-vendor-report)"),
], ids=["read-receipt", "delivery-report", "feedback-report", "other-report"])
def test_reports_on_other_messages_are_refused_whatever_their_sender(test_odoo, gateway, mailer, report_type, subject,
                                                                      human, machine, detail):
    # A MIME review: a read receipt and a delivery report with a person's envelope sender were filed
    # as notes; only the headers and the envelope were read.
    to = mailer.address("note", "project.task", TASK_ID)
    reply = mailer.send(mailer.sign(_report(to, report_type, subject, human, machine)), to, mail_from=PAULA)
    assert reply == f"550 5.7.1 Automatic replies, bulk and list mail are not filed: {detail}"
    assert test_odoo.calls == []


def test_a_report_forwarded_as_an_attachment_is_a_persons_message(test_odoo, gateway, mailer):
    to = mailer.address("note", "project.task", TASK_ID)
    report = _report(to, "delivery-status", "Undeliverable: Pump P-7", "Delivery has failed.", "Action: failed")
    raw = (f"From: Paula Contributor <{PAULA}>\r\nTo: {to}\r\nSubject: Fwd: Undeliverable: Pump P-7\r\n"
           "Message-ID: <forwarded-report@example.com>\r\nMIME-Version: 1.0\r\n"
           'Content-Type: multipart/mixed; boundary="fw"\r\n\r\n--fw\r\nContent-Type: text/plain\r\n\r\n'
           "The customer's address bounces, see below.\r\n--fw\r\nContent-Type: message/rfc822\r\n\r\n").encode() \
        + report + b"\r\n--fw--\r\n"
    reply = mailer.send(mailer.sign(raw), to)
    assert reply.startswith("250 2.0.0 Filed"), reply


def _calendar_reply(to: str, *, text: str = "", method: str = "REPLY") -> bytes:
    """Outlook's answer to an invitation: a text part (empty unless the attendee wrote a comment)
    and the iTIP object (RFC 5546)."""
    ics = ("BEGIN:VCALENDAR\r\nMETHOD:{method}\r\nPRODID:Microsoft Exchange Server 2010\r\nVERSION:2.0\r\n"
           "BEGIN:VEVENT\r\nORGANIZER:mailto:bob@example.org\r\n"
           f"ATTENDEE;PARTSTAT=ACCEPTED:mailto:{PAULA}\r\nUID:040000008200E00074C5B7101A82E008\r\n"
           "SUMMARY:Site visit P-7\r\nDTSTART:20270110T090000Z\r\nDTEND:20270110T100000Z\r\n"
           "END:VEVENT\r\nEND:VCALENDAR\r\n").format(method=method)
    return (f"From: Paula Contributor <{PAULA}>\r\nTo: {to}\r\nSubject: Accepted: Site visit P-7\r\n"
            f"Message-ID: <accept-{method}-{len(text)}@example.com>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/alternative; boundary="acc"\r\n\r\n'
            f'--acc\r\nContent-Type: text/plain; charset="us-ascii"\r\n\r\n{text}\r\n'
            f'--acc\r\nContent-Type: text/calendar; charset="utf-8"; method={method}\r\n\r\n{ics}'
            "--acc--\r\n").encode()


def test_a_calendar_reply_without_a_comment_is_refused_as_automatic(test_odoo, gateway, mailer):
    # A MIME review: Outlook's "Accept, send the response now" was filed as an empty note with an .ics.
    to = mailer.address("note", "project.task", TASK_ID)
    reply = mailer.send(mailer.sign(_calendar_reply(to)), to)
    assert reply == ("550 5.7.1 Automatic replies, bulk and list mail are not filed: a calendar reply "
                     "(METHOD:REPLY) with no text, the answer to an invitation")
    assert test_odoo.calls == []


@pytest.mark.parametrize("text, method", [
    ("I will bring the new seal for P-7.", "REPLY"),  # "Accept, edit the response before sending"
    ("", "REQUEST"),  # an invitation sent to the record: its .ics is the content
], ids=["reply-with-comment", "invitation"])
def test_a_calendar_reply_with_a_comment_and_an_invitation_are_filed(test_odoo, gateway, mailer, text, method):
    to = mailer.address("note", "project.task", TASK_ID)
    reply = mailer.send(mailer.sign(_calendar_reply(to, text=text, method=method)), to)
    assert reply.startswith("250 2.0.0 Filed"), reply
    [post] = _posts(test_odoo)
    assert text in post.kwargs["body"]


@pytest.mark.parametrize("subject", [
    # Found by exploratory testing (2026-12): notes whose subject only starts with the words of an
    # out-of-office subject were refused as automatic mail.
    "Out of office hours call-out at pump P-7", "Niet aanwezig bij afspraak, klant was weg",
    "Fuori sede: intervento completato", "Autoreply module configured on the PLC",
    "Auto: Ölwechsel erledigt", "Abwesend wegen Krankheit, Pumpe P-7 morgen", "Out of office-hours work on P-7",
])
def test_human_subjects_starting_like_an_out_of_office_reply_are_filed(test_odoo, gateway, mailer, subject):
    to = mailer.address("note", "project.task", TASK_ID)
    raw = _with_subject(mailer.message("note_from_contributor.eml", to), subject)
    reply = mailer.send(mailer.sign(raw), to)
    assert reply.startswith("250 2.0.0 Filed"), reply
    [post] = _posts(test_odoo)
    assert subject in post.kwargs["body"]


def test_auto_submitted_no_and_an_ordinary_subject_are_filed(test_odoo, gateway, mailer):
    to = mailer.address("note", "project.task", TASK_ID)
    raw = _with_subject(mailer.message("note_from_contributor.eml", to), "Absence of a seal on pump P-7")
    reply = mailer.send(mailer.sign(_with_headers(raw, "Auto-Submitted: no")), to)
    assert reply.startswith("250 2.0.0 Filed")


# --- Hostile input ---------------------------------------------------------------------------------


def _plain(to: str, body: bytes = b"Inspected pump P-7.\r\n", *, headers: bytes = b"") -> bytes:
    return (b"From: Paula Contributor <portal.contrib@example.com>\r\nTo: " + to.encode() + b"\r\n"
            b"Subject: Pump\r\nMessage-ID: <hostile@example.com>\r\nMIME-Version: 1.0\r\n" + headers +
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body)


def _nested(to: str, depth: int) -> bytes:
    body = b"Inspected pump P-7.\r\n"
    content_type = b"text/plain"
    for level in range(depth):
        boundary = f"b{level}".encode()
        body = (b"--" + boundary + b"\r\nContent-Type: " + content_type + b"\r\n\r\n" + body +
                b"\r\n--" + boundary + b"--\r\n")
        content_type = b'multipart/mixed; boundary="' + boundary + b'"'
    return (b"From: portal.contrib@example.com\r\nTo: " + to.encode() + b"\r\nSubject: deep\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: " + content_type + b"\r\n\r\n" + body)


def _many_parts(to: str, parts: int) -> bytes:
    body = b"".join(b"--sep\r\nContent-Type: text/plain\r\n\r\npart\r\n" for _ in range(parts)) + b"--sep--\r\n"
    return (b"From: portal.contrib@example.com\r\nTo: " + to.encode() + b"\r\nSubject: parts\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"sep\"\r\n\r\n" + body)


def _bad_base64(to: str) -> bytes:
    return (b"From: portal.contrib@example.com\r\nTo: " + to.encode() + b"\r\nSubject: b64\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"sep\"\r\n\r\n--sep\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
            b"--sep\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0x!!!not*base64***A\r\n--sep--\r\n")


HOSTILE = {
    "nul-byte": (lambda to: _plain(to, b"Inspected\x00 pump.\r\n"), "550 5.6.0 NUL byte in message data"),
    "huge-header-block": (lambda to: _plain(to, headers=b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 900) for i in range(400))),
                          "552 5.3.4 Message header too large: more than 262144 bytes"),
    "thousands-of-header-fields": (lambda to: _plain(to, headers=b"".join(b"X-F: %d\r\n" % i for i in range(5000))),
                                   "552 5.3.4 Message header too large: 5006 header fields, at most 1000"),
    "8-bit-header-not-utf8": (lambda to: _plain(to).replace(b"Subject: Pump", b"Subject: caf\xe9 pump"),
                              "550 5.6.0 Message header has 8-bit bytes that are not UTF-8: at byte"),
    "deeply-nested-mime": (lambda to: _nested(to, 60), "554 5.6.0 MIME parts nested too deep: more than 20 levels"),
    # message/rfc822 parts nest without any boundary (RFC 2046 section 5.2.1).
    "deeply-nested-message-rfc822": (
        lambda to: (b"From: portal.contrib@example.com\r\nTo: " + to.encode() + b"\r\nSubject: deep\r\n" +
                    b"MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n" +
                    b"From: a@example.com\r\nContent-Type: message/rfc822\r\n\r\n" * 60 + b"Subject: x\r\n\r\nhi\r\n"),
        "554 5.6.0 MIME parts nested too deep: more than 20 levels"),
    "thousands-of-parts": (lambda to: _many_parts(to, 5000), "552 5.3.4 Message has too many MIME parts: about"),
    "invalid-base64-attachment": (_bad_base64, "554 5.6.0 Malformed message, it could not be parsed: attachment 'r.pdf' is not valid base64"),
    # Found by tests/test_fuzz.py: mail-parser hands back a list, which crashed the parse stage.
    "two-subject-headers": (lambda to: _plain(to, headers=b"Subject: second\r\n"),
                            "554 5.6.0 Malformed message, it could not be parsed: more than one Subject header"),
    # Found by a security review: dkimpy's header parser raised IndexError on these, which the
    # pipeline answered with 451 4.3.0, asking for retries that fail the same way forever.
    "header-starts-with-a-continuation-line": (
        lambda to: b" X-Folded: starts the header with a continuation line\r\n" + _plain(to),
        "550 5.6.0 Malformed message header, it cannot be read: a continuation line (beginning with white space) "
        "comes before any header field"),
    "continuation-line-after-an-mbox-from-line": (
        lambda to: b"From portal.contrib@example.com Mon Dec  7 10:00:00 2026\r\n\tfolded\r\n" + _plain(to),
        "550 5.6.0 Malformed message header, it cannot be read: a continuation line"),
    "over-long-line": (lambda to: _plain(to, b"x" * 5000 + b"\r\n"),
                       "500 5.5.2 Line too long in the message data: a line may hold 1000 bytes with its CRLF"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_input_is_refused_with_a_precise_code(test_odoo, gateway, mailer, name):
    build, expected = HOSTILE[name]
    to = mailer.address("note", "project.task", TASK_ID)
    reply = mailer.send(build(to), to)
    assert reply.startswith(expected), reply
    assert test_odoo.calls == []
    # The server keeps serving: a good message right after is filed.
    assert mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to)), to).startswith("250 ")


def test_many_parts_are_refused_before_the_message_is_parsed():
    # 200 000 parts in 8 MB: the delimiter count refuses it without building 200 000 objects.
    raw = _many_parts("note+project.task-60-x@notes.example.com", 200_000)
    tracemalloc.start()
    try:
        with pytest.raises(TooManyParts):
            check_input(raw, InputLimits())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < len(raw) // 4, (peak, len(raw))


def _forwarded(to: str, inner: bytes, content_type: str = "message/rfc822") -> bytes:
    """A note with ``inner`` attached base64-encoded as a forwarded message, as clients
    send message/global (RFC 6532 section 3.5) and some message/rfc822: the input limits see text."""
    return (b"From: Paula Contributor <portal.contrib@example.com>\r\nTo: " + to.encode() + b"\r\n"
            b"Subject: Pump\r\nMessage-ID: <forward@example.com>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"out\"\r\n\r\n"
            b"--out\r\nContent-Type: text/plain\r\n\r\nSee the forwarded message.\r\n"
            b"--out\r\nContent-Type: " + content_type.encode() + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
            base64.encodebytes(inner).replace(b"\n", b"\r\n") + b"--out--\r\n")


def _deep_inner(depth: int) -> bytes:
    nesting = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (level, level)
                       for level in range(depth))
    return b"From: a@example.com\r\nSubject: Deep inside\r\nMIME-Version: 1.0\r\n" + nesting + \
        b"Content-Type: text/plain\r\n\r\nx\r\n"


@pytest.mark.parametrize("content_type", ["message/rfc822", "message/global"])
def test_a_forwarded_message_is_filed_without_parsing_its_body(test_odoo, gateway, mailer, content_type):
    # SECURITY (found by a security review): a base64 forwarded message was decoded and parsed
    # whole, its MIME structure never bounded by the input limits, and before the DKIM check: 900 KB
    # hiding 800 nested multiparts and 200 000 lines held a thread 12 s. Only its header block is
    # read now (for the file name); nesting the parser cannot even recurse through shows it: it was
    # refused "554 ... RecursionError", and is filed as the bytes it is.
    to = mailer.address("note", "project.task", TASK_ID)
    inner = _deep_inner(1200)
    reply = mailer.send(mailer.sign(_forwarded(to, inner, content_type)), to)
    assert reply.startswith("250 2.0.0 Filed"), reply
    [attachment_id] = test_odoo.message(int(reply.rsplit(" ", 1)[1]))["attachment_ids"]
    assert test_odoo.record("ir.attachment", attachment_id, ["name"])["name"] == "Deep inside.eml"
    assert test_odoo.attachment_bytes(attachment_id) == inner


def test_a_forwarded_message_hiding_many_parts_costs_what_its_size_does():
    # The same review: 200 000 parts hidden in 9.8 MB took 227 MB to parse. Parsed, 20 000 of them
    # took 17 times the message's size; its header block alone, under 4 times.
    inner = (b"Subject: Parts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" +
             b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" * 20_000 + b"--b--\r\n")
    raw = _forwarded("note+project.task-60-x@notes.example.com", inner)
    email_message = check_input(raw, InputLimits())
    tracemalloc.start()
    try:
        parsed = parse(raw, email_message)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(item.filename, item.payload) for item in parsed.attachments] == [("Parts.eml", inner)]
    assert peak < 6 * len(raw), (peak, len(raw))


def test_utf8_header_is_accepted(test_odoo, gateway, mailer):
    # RFC 6532: UTF-8 in headers is legitimate; only other 8-bit bytes are refused.
    to = mailer.address("note", "project.task", TASK_ID)
    raw = _with_subject(mailer.message("note_from_contributor.eml", to), "Pumpe P-7 geprüft")
    assert mailer.send(mailer.sign(raw), to).startswith("250 2.0.0 Filed")
    # Read as UTF-8, not as Latin-1 bytes ("geprÃ¼ft"; found by a mutation audit).
    [post] = _posts(test_odoo)
    assert "Pumpe P-7 geprüft" in post.kwargs["body"]


# RFC 5321 section 4.1.1.4 ends DATA only at CRLF.CRLF; these are the endings other servers took
# for it (CVE-2023-51764/51765/51766, CVE-2024-27305 for aiosmtpd before 1.4.5).
SMUGGLING = [b"\n.\n", b"\n.\r\n", b"\r.\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r\n\x00.\r\n"]


@pytest.mark.parametrize("ending", SMUGGLING, ids=lambda ending: repr(ending)[2:-1])
def test_smtp_smuggling_is_one_refused_message(test_odoo, gateway, mailer, ending):
    to = mailer.address("note", "project.task", TASK_ID)
    other = mailer.address("note", "sale.order", SALE_ORDER_ID)
    smuggled = mailer.sign(mailer.message("note_from_contributor.eml", other, "<smuggled@example.com>"))
    first = mailer.sign(mailer.message("note_from_contributor.eml", to, "<carrier@example.com>"))
    payload = (first + ending + b"MAIL FROM:<portal.contrib@example.com>\r\nRCPT TO:<" + other.encode() +
               b">\r\nDATA\r\n" + smuggled + b"\r\n.\r\n")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as connection:
        reader = connection.makefile("rb")

        def command(line: bytes) -> bytes:
            connection.sendall(line + b"\r\n")
            return read_reply(reader)[-1]

        assert reader.readline().startswith(b"220 ")
        assert command(b"EHLO client.example.com").startswith(b"250 ")
        assert command(b"MAIL FROM:<portal.contrib@example.com>").startswith(b"250 ")
        assert command(b"RCPT TO:<" + to.encode() + b">").startswith(b"250 ")
        assert command(b"DATA").startswith(b"354 ")
        connection.sendall(payload)
        reply = reader.readline()
        assert reply.startswith((b"550 5.6.0 Bare CR or LF", b"550 5.6.0 NUL byte")), reply
        # One message, one reply: nothing the smuggled commands would have answered follows.
        connection.settimeout(0.5)
        with pytest.raises(socket.timeout):
            reader.readline()
    assert _posts(test_odoo) == []
    assert [row.message_id for row in _journal(gateway)] in ([""], ["<carrier@example.com>"])


# --- Floods ----------------------------------------------------------------------------------------


def test_rate_limit_per_sender_defers_with_450(test_odoo, start_gateway, dns_server, dkim_keys):
    gateway = start_gateway(dns_server.port, rules_extra="[rate_limit]\nper_sender = 2\nper_record = 0\n")
    mailer = Mailer(gateway, dkim_keys)
    replies = []
    for res_id, model in ((TASK_ID, "project.task"), (SALE_ORDER_ID, "sale.order"), (TASK_ID, "project.task")):
        to = mailer.address("note", model, res_id)
        replies.append(mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to)), to))
    assert [reply[:3] for reply in replies] == ["250", "250", "450"]
    assert replies[2] == "450 4.7.1 Too many messages from this sender, try again later: 2 in 120 minutes"
    assert len(_posts(test_odoo)) == 2
    assert _journal(gateway)[0].refusal_class == "SenderRateLimited"


def test_rate_limit_per_record_defers_with_450(test_odoo, start_gateway, dns_server, dkim_keys):
    gateway = start_gateway(dns_server.port, rules_extra="[rate_limit]\nper_record = 1\nwindow_minutes = 5\n")
    mailer = Mailer(gateway, dkim_keys)
    task = mailer.address("note", "project.task", TASK_ID)
    order = mailer.address("note", "sale.order", SALE_ORDER_ID)
    assert mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", task)), task).startswith("250 ")
    assert mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", task)), task) == \
        "450 4.7.1 Too many messages to this record, try again later: 1 in 5 minutes"
    assert mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", order)), order).startswith("250 ")
    # A retry of the filed message is still recognised, not counted as a new one.
    assert len(_posts(test_odoo)) == 2


@pytest.mark.parametrize("limits", ["per_sender = 2\nper_record = 0", "per_sender = 0\nper_record = 2"])
def test_a_retry_of_a_filed_message_at_the_limit_is_already_filed_not_deferred(
        test_odoo, start_gateway, dns_server, dkim_keys, limits):
    # Found by a failure-mode review: the sender's MTA never saw the first 250 (the connection
    # dropped after the final dot) and retries once the limit is reached; a 450 kept the filed note
    # queued until the window emptied, and could end in a bounce.
    gateway = start_gateway(dns_server.port, rules_extra=f"[rate_limit]\n{limits}\n")
    mailer = Mailer(gateway, dkim_keys)
    task = mailer.address("note", "project.task", TASK_ID)
    first = mailer.sign(mailer.message("note_from_contributor.eml", task))
    filed = mailer.send(first, task)
    assert filed.startswith("250 2.0.0 Filed as Odoo message ")
    assert mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", task)), task).startswith("250 ")
    assert mailer.send(first, task) == filed.replace("Filed as", "Already filed as")
    # A new message at the limit is still deferred.
    assert mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", task)), task).startswith("450 4.7.1 ")
    assert len(_posts(test_odoo)) == 2


def test_connections_per_peer_and_in_all_are_capped(start_gateway, dns_server):
    gateway = start_gateway(dns_server.port, listener_extra="max_sessions = 3\nmax_sessions_per_ip = 2")
    first = smtplib.SMTP("127.0.0.1", gateway.port, timeout=10)
    second = smtplib.SMTP("127.0.0.1", gateway.port, timeout=10)
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", gateway.port, timeout=10)
    assert refused.value.smtp_code == 421
    assert refused.value.smtp_error == b"4.7.0 Too many connections from your address, try again later"
    # Another address of this host is another peer, until the cap on all sessions.
    third = smtplib.SMTP("127.0.0.1", gateway.port, timeout=10, source_address=("127.0.0.2", 0))
    with pytest.raises(smtplib.SMTPConnectError) as full:
        smtplib.SMTP("127.0.0.1", gateway.port, timeout=10, source_address=("127.0.0.3", 0))
    assert (full.value.smtp_code, full.value.smtp_error) == (421, b"4.3.2 Too many sessions, try again later")
    for client in (second, third):
        assert client.noop()[0] == 250
    first.quit()
    # The session's slot is freed once the server has closed it, a moment after QUIT's reply.
    deadline = time.monotonic() + 5
    while True:
        try:
            again = smtplib.SMTP("127.0.0.1", gateway.port, timeout=10)
            break
        except smtplib.SMTPConnectError:
            assert time.monotonic() < deadline, "the slot of a closed session was never freed"
            time.sleep(0.05)
    assert again.noop()[0] == 250
    for client in (second, third, again):
        client.quit()


# --- DKIM signatures: how many, and for how long ----------------------------------------------------
# Found by a security review: every signature was tried, with no deadline inside the DKIM check. A
# message with hundreds of aligned signatures whose DNS never answers held a pipeline thread for an
# hour, a few such messages made every genuine note wait and fail with "451 4.3.0 Odoo is
# unavailable", and signatures under a published key with a wrong bh= hashed the body each time.

NOT_AUTHENTICATED = "550 5.7.1 Sender not authenticated, no valid DKIM signature aligned with the From domain: "


def _fabricated_signatures(domain: str, selectors: list[str]) -> bytes:
    """DKIM-Signature fields that pass every check made before their key is looked up."""
    return b"".join(f"DKIM-Signature: v=1; a=rsa-sha256; d={domain}; s={selector}; h=from; bh=AAAA; "
                    f"b=AAAA\r\n".encode() for selector in selectors)


@pytest.fixture
def silent_dns(dkim_keys):
    """The signing domains' keys, served by a DNS server that can be told to never answer a name."""
    records = {key.record_name(SELECTOR, domain): key.txt_record for domain, key in dkim_keys.items()}
    with DnsServer(records) as server:
        yield server


def test_more_dkim_signatures_than_the_gateway_examines_are_refused_at_once(test_odoo, gateway, mailer):
    to = mailer.address("note", "project.task", TASK_ID)
    note = mailer.sign(mailer.message("note_from_contributor.eml", to))
    lists = _fabricated_signatures("lists.example.org", [f"s{number}" for number in range(20)])
    started = time.monotonic()
    assert mailer.send(lists + note, to) == (
        "550 5.7.1 Too many DKIM signatures: the message has 21, the gateway examines at most 20")
    assert time.monotonic() - started < 10
    assert _journal(gateway)[0].refusal_class == "TooManySignatures"
    # 19 of a list's signatures are never looked up, and do not hide the author's.
    assert mailer.send(lists[lists.index(b"DKIM-Signature", 1):] + note, to).startswith("250 2.0.0 Filed")
    assert len(_posts(test_odoo)) == 1


@pytest.mark.parametrize("selectors, reason", [
    # Keys that do not exist: one lookup each.
    ([f"gone{number}" for number in range(20)], "key not found for gone0._domainkey.example.com"),
    # The key of example.com, a wrong body hash: each one examined hashes the whole body again.
    ([SELECTOR] * 20, "body hash mismatch"),
])
def test_at_most_five_aligned_signatures_are_examined(test_odoo, gateway, mailer, selectors, reason):
    to = mailer.address("note", "project.task", TASK_ID)
    raw = _fabricated_signatures("example.com", selectors) + mailer.message("note_from_contributor.eml", to)
    assert mailer.send(raw, to) == (
        f"{NOT_AUTHENTICATED}{reason} (15 more aligned signatures not examined, the gateway examines at most 5)")
    assert _posts(test_odoo) == []


def test_aligned_signatures_whose_dns_never_answers_end_at_the_deadline_and_free_the_threads(
        test_odoo, start_gateway, silent_dns, dkim_keys):
    # Two pipeline threads, both taken by messages from a domain whose DNS never answers: 20
    # aligned signatures each, 3 s per lookup (the tests' resolver.timeout). Each message ends at
    # its deadline with a reply that names DNS, and a genuine note sent right after is filed.
    gateway = start_gateway(silent_dns.port, listener_extra="max_sessions = 2\n")
    object.__setattr__(gateway.services.config.gateway.listener, "message_deadline", 5.0)
    mailer = Mailer(gateway, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    for number in range(20):
        silent_dns.drop(f"s{number}._domainkey.slow.example")
    attack = _fabricated_signatures("slow.example", [f"s{number}" for number in range(20)]) + compose(
        "x@slow.example", to, "Hi", "hello", message_id="<flood@slow.example>")
    replies: dict[int, tuple[str, float]] = {}

    def send(number: int) -> None:
        started = time.monotonic()
        reply = mailer.send(attack, to, mail_from="x@slow.example")
        replies[number] = (reply, time.monotonic() - started)

    attackers = [threading.Thread(target=send, args=(number,)) for number in range(2)]
    for thread in attackers:
        thread.start()
    for thread in attackers:
        thread.join(60)
    for reply, seconds in replies.values():
        assert reply.startswith("451 4.4.3 The DKIM check took too long (DNS lookups of its keys), try again "
                                "later: the message's deadline passed with "), reply
        assert "timeout looking up s" in reply
        # The listener's own timer (deadline + 5 s) would have said "Odoo is unavailable".
        assert seconds < 9.5
    assert len(replies) == 2
    assert [row.refusal_class for row in _journal(gateway)] == ["SenderAuthenticationTimedOut"] * 2
    note = mailer.sign(mailer.message("note_from_contributor.eml", to))
    assert mailer.send(note, to).startswith("250 2.0.0 Filed")


def test_a_dkim_check_that_ends_past_the_deadline_is_deferred_as_such(test_odoo, start_gateway, dns_server,
                                                                       dkim_keys):
    # The key answers, but only after the message's deadline (a lookup cut at the deadline, then the
    # verify): the pipeline's check after the stage said "Odoo is unavailable".
    gateway = start_gateway(dns_server.port)
    listener = gateway.services.config.gateway.listener
    object.__setattr__(listener, "message_deadline", 1.0)
    resolver = gateway.services.resolver

    def late_lookup(name, timeout=5):
        time.sleep(1.5)
        return resolver(name, timeout=timeout)

    late_lookup.timeout = resolver.timeout
    gateway.services.resolver = late_lookup
    mailer = Mailer(gateway, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    note = mailer.sign(mailer.message("note_from_contributor.eml", to))
    assert mailer.send(note, to) == (
        "451 4.4.3 The DKIM check took too long (DNS lookups of its keys), try again later: the message's deadline "
        "passed while its DKIM signature was checked")
    assert _journal(gateway)[0].refusal_class == "SenderAuthenticationTimedOut"
    gateway.services.resolver = resolver
    object.__setattr__(listener, "message_deadline", 20.0)
    assert mailer.send(note, to).startswith("250 2.0.0 Filed")


def test_a_selector_repeated_after_its_dns_failed_is_not_asked_again(test_odoo, start_gateway, silent_dns,
                                                                      dkim_keys):
    # 19 signatures of one silent selector above the author's good one: the first is looked up
    # (3 s), the 18 others are skipped, and the good one below them is still examined.
    gateway = start_gateway(silent_dns.port)
    mailer = Mailer(gateway, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    silent_dns.drop("silent._domainkey.example.com")
    note = mailer.sign(mailer.message("note_from_contributor.eml", to))
    assert mailer.send(_fabricated_signatures("example.com", ["silent"] * 19) + note, to).startswith(
        "250 2.0.0 Filed")
    # dnspython tries twice within one lookup's lifetime (gateway/resolver.py); five lookups ask 10 times.
    assert silent_dns.query_count("silent._domainkey.example.com") <= 3


# --- CPU: text that costs more than its size ------------------------------------------------------


def _paren_run(mailer, to: str, count: int) -> bytes:
    """A signed note whose one line is a URL followed by ``count`` ')' (sent base64 or quoted-printable)."""
    return mailer.sign(compose(PAULA, to, "Parentheses", "hello http://x" + ")" * count + "\n",
                               message_id=f"<parens-{count}@example.com>"))


def test_a_run_of_closing_brackets_after_a_url_costs_what_its_length_does(test_odoo, gateway, mailer):
    # SECURITY (found by a security review): the link of a plain-text URL gave its trailing ")" back
    # to the sentence one at a time, counting the URL's brackets again for each: quadratic. A 1.3 MB
    # note, one URL and 1 000 000 ")", held a pipeline thread about 300 s past its deadline. Four
    # times the run now costs about four times as much (quadratic: 16), and the note is filed.
    to = mailer.address("note", "project.task", TASK_ID)
    seconds = {}
    for count in (50_000, 200_000):
        reply = mailer.send(_paren_run(mailer, to, count), to)
        assert reply.startswith("250 2.0.0 Filed"), reply
        body = test_odoo.message(int(reply.rsplit(" ", 1)[1]))["body"]
        assert '<a href="http://x">http://x</a>' + ")" * 100 in body
        seconds[count] = next(row for row in _journal(gateway)
                              if row.message_id == f"<parens-{count}@example.com>").durations["extract-content"]
    assert seconds[200_000] < 6 * seconds[50_000] + 0.5, seconds


TOOK_TOO_LONG = "451 4.3.0 The message took too long to process, try again later: "
EXTRACT_CONTENT = "extract-content (take the body, trim quote and signature, sanitize its HTML)"


def test_a_content_stage_ending_past_the_deadline_is_deferred_as_such_not_as_odoo(
        test_odoo, start_gateway, dns_server, dkim_keys, monkeypatch):
    # Found by a security review: the pipeline's check after a stage said "Odoo is unavailable" for
    # every stage but the DKIM check's, here after the gateway's own work on the text.
    gateway = start_gateway(dns_server.port)
    listener = gateway.services.config.gateway.listener
    object.__setattr__(listener, "message_deadline", 1.0)
    extract_body = content.extract_body

    def slow_extract_body(message, **options):
        time.sleep(1.5)
        return extract_body(message, **options)

    monkeypatch.setattr(content, "extract_body", slow_extract_body)
    mailer = Mailer(gateway, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    note = mailer.sign(mailer.message("note_from_contributor.eml", to))
    assert mailer.send(note, to) == f"{TOOK_TOO_LONG}the deadline passed in stage {EXTRACT_CONTENT}"
    assert _journal(gateway)[0].refusal_class == "MessageTookTooLong"
    assert _posts(test_odoo) == []
    monkeypatch.setattr(content, "extract_body", extract_body)
    object.__setattr__(listener, "message_deadline", 20.0)
    assert mailer.send(note, to).startswith("250 2.0.0 Filed")


def test_a_runaway_content_stage_gives_up_at_the_deadline_and_lets_go_of_the_message(
        test_odoo, start_gateway, dns_server, dkim_keys, monkeypatch):
    # The same review: the deadline was checked only between stages, so a stage costlier than
    # foreseen ran on after the 451, holding a pipeline thread and the message's claim (its retries
    # got "being filed right now"). The text's steps now check it between blocks and lines: 400
    # lines at 50 ms each (20 s) end at the 1 s deadline, with the stage's own reply.
    gateway = start_gateway(dns_server.port)
    listener = gateway.services.config.gateway.listener
    object.__setattr__(listener, "message_deadline", 1.0)
    linked_line = content._linked_line

    def slow_linked_line(line):
        time.sleep(0.05)
        return linked_line(line)

    monkeypatch.setattr(content, "_linked_line", slow_linked_line)
    mailer = Mailer(gateway, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    note = mailer.sign(compose(PAULA, to, "Long", "".join(f"line {number}\n" for number in range(400)),
                               message_id="<runaway@example.com>"))
    started = time.monotonic()
    reply = mailer.send(note, to)
    # The listener's own timer (deadline + 5 s) would have answered at 6 s.
    assert time.monotonic() - started < 4, reply
    assert reply == f"{TOOK_TOO_LONG}the deadline passed in stage {EXTRACT_CONTENT}"
    [row] = [row for row in _journal(gateway) if row.message_id == "<runaway@example.com>"]
    assert row.refusal_class == "MessageTookTooLong" and row.durations["extract-content"] < 3
    # The claim is let go: the retry is filed, not "being filed right now".
    monkeypatch.setattr(content, "_linked_line", linked_line)
    object.__setattr__(listener, "message_deadline", 20.0)
    assert mailer.send(note, to).startswith("250 2.0.0 Filed")


def test_deeply_nested_empty_html_is_filed_well_within_the_deadline(test_odoo, start_gateway, dns_server, dkim_keys):
    # Found by a fuzzing review: 2000 nested <div>s around 6000 empty <b>s (52 KB) took 14-35 s of
    # CPU: each block element's text was read to see whether it is an attribution line, and that
    # reading was bounded by characters, not by the elements of its subtree (12 million read). It
    # reads at most 100 elements now: the note is filed well before a deadline of 5 s.
    gateway = start_gateway(dns_server.port, message_deadline=5)
    mailer = Mailer(gateway, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    html = "<div>" * 2000 + "<b></b>" * 6000 + "DEEP-EMPTY-TEXT"
    reply = mailer.send(mailer.sign(compose(PAULA, to, "Deep", "DEEP-EMPTY-TEXT", html=html)), to)
    assert reply.startswith("250 2.0.0 Filed"), reply
    assert "DEEP-EMPTY-TEXT" in test_odoo.message(int(reply.rsplit(" ", 1)[1]))["body"]


def test_html_costlier_than_the_deadline_gives_up_at_the_deadline_in_the_quote_split(
        test_odoo, start_gateway, dns_server, dkim_keys):
    # The same review: the quote split never looked at the message's deadline, and the content stage
    # ran on for as long as the HTML's shape made it cost (17.7 s past a deadline of 1 s). 1 MB of
    # blocks of 2000 nested <div>s, each still read for its text (100 elements each), costs seconds:
    # the split checks the deadline at each element and ends at it, with the stage's own reply.
    gateway = start_gateway(dns_server.port)
    listener = gateway.services.config.gateway.listener
    object.__setattr__(listener, "message_deadline", 1.0)
    mailer = Mailer(gateway, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    block = "<div>" * 2000 + "<b></b>" * 101 + "x" + "</div>" * 2000
    note = mailer.sign(compose(PAULA, to, "Deep", "x", html=block * 50, message_id="<deep-blocks@example.com>"))
    started = time.monotonic()
    reply = mailer.send(note, to)
    # The listener's own timer (deadline + 5 s) would have answered at 6 s.
    assert time.monotonic() - started < 4, reply
    assert reply == f"{TOOK_TOO_LONG}the deadline passed in stage {EXTRACT_CONTENT}"
    [row] = [row for row in _journal(gateway) if row.message_id == "<deep-blocks@example.com>"]
    assert row.refusal_class == "MessageTookTooLong" and row.durations["extract-content"] < 3


@contextlib.contextmanager
def _held(monkeypatch, module, name: str):
    """Within this block, ``module.name`` holds the pipeline thread that calls it (for at most 30 s),
    as a stage stuck past the deadline does; it runs once the block ends, whatever the block raised."""
    released = threading.Event()
    original = getattr(module, name)

    def held(*args, **options):
        released.wait(30)
        return original(*args, **options)

    monkeypatch.setattr(module, name, held)
    try:
        yield
    finally:
        released.set()


@pytest.mark.parametrize("held, stage", [
    # The listener's fallback (deadline + 5 s) said "Odoo is unavailable" whatever held the thread.
    (("content", "extract_body"), EXTRACT_CONTENT),
    # The stage's description, which this reply shows the sender, named the company before the
    # record access policy; policy.check_record_access reads the company only after the access
    # search, so that a sender who may not read the record never learns its company (a review).
    (("policy", "check_record_access"),
     "authorize (model allowed, contributor group for notes, record access policy, then company)"),
], ids=["extract-content", "authorize"])
def test_a_pipeline_without_an_outcome_past_the_deadline_is_answered_by_the_listener_naming_its_stage(
        test_odoo, start_gateway, dns_server, dkim_keys, monkeypatch, held, stage):
    from gateway import policy

    module, name = {"content": content, "policy": policy}[held[0]], held[1]
    gateway = start_gateway(dns_server.port)
    object.__setattr__(gateway.services.config.gateway.listener, "message_deadline", 1.0)
    mailer = Mailer(gateway, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    with _held(monkeypatch, module, name):
        reply = mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to)), to)
    assert reply == f"{TOOK_TOO_LONG}no outcome 6 s after its data; stage {stage} still running"


def _raw_reply(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n") or data.split(b"\r\n")[-2][3:4] == b"-":
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _send_data_without_reading_the_reply(gateway, mailer, task: str, raw: bytes | None = None) -> smtplib.SMTP:
    """A session that has sent a whole message and waits for the reply to its DATA."""
    session = smtplib.SMTP("127.0.0.1", gateway.port, timeout=30)
    session.ehlo("first.example.com")
    session.mail("portal.contrib@example.com")
    session.rcpt(task)
    session.putcmd("data")
    assert session.getreply()[0] == 354
    body = raw or mailer.sign(mailer.message("note_from_contributor.eml", task))
    session.send(smtplib.quotedata(body.decode("utf-8")).encode("utf-8") + b"\r\n.\r\n")
    return session


def _large_note(mailer, task: str, size: int) -> bytes:
    """A signed note of about ``size`` bytes of prose."""
    line = "The seal of pump P-7 is worn; replacement is planned within two weeks, parts are ordered.\n"
    raw = compose("portal.contrib@example.com", task, "Inspection report", line * (size // len(line) + 1),
                  sender_name="Portal Contributor")
    assert len(raw) > size
    return mailer.sign(raw)


def _second_session_in_data(gateway, task: str) -> socket.socket:
    second = socket.create_connection(("127.0.0.1", gateway.port), timeout=30)
    assert _raw_reply(second).startswith(b"220")
    for line in (b"EHLO second.example.com", b"MAIL FROM:<portal.contrib@example.com>", f"RCPT TO:<{task}>".encode()):
        second.sendall(line + b"\r\n")
        assert _raw_reply(second).startswith(b"250")
    second.sendall(b"DATA\r\n")
    return second


@pytest.mark.parametrize("listener_extra, first_size", [
    ("max_messages_in_data = 1\nlight_message_size = 0", 0),
    # Light messages give their slot back, but not one above light_message_size (64 KB by default).
    ("max_messages_in_data = 1", 100 * 1024),
], ids=["every-message-keeps-its-slot", "a-message-above-light_message_size"])
def test_sessions_beyond_max_messages_in_data_wait_for_their_354(test_odoo, start_gateway, dns_server, dkim_keys,
                                                                 listener_extra, first_size):
    # The memory bound of issue 6: one message inside DATA at a time, the second session's DATA
    # is answered 354 only once the first has its reply, and both are filed.
    gateway = start_gateway(dns_server.port, listener_extra=listener_extra)
    mailer = Mailer(gateway, dkim_keys)
    task = mailer.address("note", "project.task", TASK_ID)
    test_odoo.latency = {"message_post": 1.5}
    first = _send_data_without_reading_the_reply(gateway, mailer, task,
                                                 _large_note(mailer, task, first_size) if first_size else None)
    second = _second_session_in_data(gateway, task)
    second.settimeout(0.7)
    with pytest.raises(socket.timeout):
        second.recv(4096)
    assert first.getreply()[0] == 250
    second.settimeout(30)
    assert _raw_reply(second).startswith(b"354")
    other = mailer.sign(mailer.message("note_from_contributor.eml", task))
    second.sendall(smtplib.quotedata(other.decode("utf-8")).encode("utf-8") + b"\r\n.\r\n")
    assert _raw_reply(second).startswith(b"250")
    second.sendall(b"QUIT\r\n")
    second.close()
    first.quit()
    assert len(_posts(test_odoo)) == 2


def test_a_light_message_gives_its_data_slot_back_while_it_waits_for_odoo(test_odoo, start_gateway, dns_server,
                                                                          dkim_keys):
    # listener.light_message_size (64 KB by default): a small note waiting for a slow Odoo does
    # not keep the next session out of DATA; both wait for Odoo side by side and both are filed.
    gateway = start_gateway(dns_server.port, listener_extra="max_messages_in_data = 1")
    mailer = Mailer(gateway, dkim_keys)
    task = mailer.address("note", "project.task", TASK_ID)
    test_odoo.fail("hang", method="message_post")
    first = _send_data_without_reading_the_reply(gateway, mailer, task)
    deadline = time.monotonic() + 10
    while not _posts(test_odoo):
        assert time.monotonic() < deadline, "the first note never reached message_post"
        time.sleep(0.02)
    second = _second_session_in_data(gateway, task)
    assert _raw_reply(second).startswith(b"354")
    other = mailer.sign(mailer.message("note_from_contributor.eml", task))
    second.sendall(smtplib.quotedata(other.decode("utf-8")).encode("utf-8") + b"\r\n.\r\n")
    while len(_posts(test_odoo)) < 2:
        assert time.monotonic() < deadline, "the second note never reached message_post"
        time.sleep(0.02)
    test_odoo.heal()
    assert first.getreply()[0] == 250
    assert _raw_reply(second).startswith(b"250")
    second.sendall(b"QUIT\r\n")
    second.close()
    first.quit()
    assert len(_posts(test_odoo)) == 2


def test_a_session_that_waits_a_session_timeout_for_a_data_slot_gets_451(test_odoo, start_gateway, dns_server,
                                                                         dkim_keys):
    gateway = start_gateway(dns_server.port, listener_extra="max_messages_in_data = 1\nlight_message_size = 0",
                            session_timeout=1)
    mailer = Mailer(gateway, dkim_keys)
    task = mailer.address("note", "project.task", TASK_ID)
    # Filing takes longer than session_timeout: the message's own deadline governs it, not the idle timer.
    test_odoo.latency = {"message_post": 2.5}
    first = _send_data_without_reading_the_reply(gateway, mailer, task)
    second = smtplib.SMTP("127.0.0.1", gateway.port, timeout=30)
    second.ehlo("second.example.com")
    second.mail("portal.contrib@example.com")
    second.rcpt(task)
    assert second.docmd("DATA") == (451, b"4.3.2 The gateway is busy with other messages, try again later")
    assert first.getreply()[0] == 250
    first.quit()
    assert len(_posts(test_odoo)) == 1


# --- How long and how much one session may go on (MAIL_SECURITY.md item 15) -------------------------


@pytest.fixture(params=["smtp", "lmtp"])
def protocol(request):
    """Each listener protocol, with its greeting command and the listener_extra that selects it."""
    if request.param == "lmtp":
        return b"LHLO client.example.com", 'protocol = "lmtp"\n'
    return b"EHLO client.example.com", ""


def _session(gateway, greeting: bytes):
    connection = socket.create_connection(("127.0.0.1", gateway.port), timeout=30)
    stream = connection.makefile("rb")
    assert read_reply(stream)[-1].startswith(b"220 ")
    connection.sendall(greeting + b"\r\n")
    assert read_reply(stream)[-1].startswith(b"250 ")
    return connection, stream


def _command(connection, stream, line: bytes) -> bytes:
    connection.sendall(line + b"\r\n")
    return read_reply(stream)[-1].rstrip(b"\r\n")


def _deliver_in_session(connection, stream, raw: bytes, rcpt: str) -> bytes:
    """One transaction as a relay's reused session sends it: RSET, MAIL, RCPT, DATA; the reply to the data."""
    for line in (b"RSET", f"MAIL FROM:<{PAULA}>".encode(), f"RCPT TO:<{rcpt}>".encode()):
        reply = _command(connection, stream, line)
        assert reply.startswith(b"250 "), (line, reply)
    assert _command(connection, stream, b"DATA").startswith(b"354 ")
    return _command(connection, stream, smtplib.quotedata(raw.decode("utf-8")).encode("utf-8") + b"\r\n.")


def _closed(stream) -> bool:
    return stream.readline() == b""


@pytest.mark.parametrize("command", [b"NOOP", b"HELP", b"VRFY portal.contrib@example.com", b"EXPN staff", None],
                         ids=["NOOP", "HELP", "VRFY", "EXPN", "greeting"])
def test_a_command_that_carries_no_mail_is_answered_20_times_per_session(start_gateway, dns_server, protocol, command):
    # Before, 2000 NOOPs all got 250, and as each one restarts the idle timer, a few addresses
    # could hold every session slot for ever. The greeting itself is the first of its 20.
    greeting, listener_extra = protocol
    gateway = start_gateway(dns_server.port, listener_extra=listener_extra)
    connection, stream = _session(gateway, greeting)
    line = command or greeting
    with connection:
        replies = [_command(connection, stream, line) for _ in range(20 - (command is None))]
        assert not [reply for reply in replies if reply.startswith(b"421")]
        name = line.split()[0].decode()
        assert _command(connection, stream, line) == f"421 4.7.0 {name} sent too many times".encode()
        assert _closed(stream)


@pytest.mark.parametrize("commands", [[b"XYZZY"] * 5, [b"XYZZY%d" % number for number in range(5)]],
                         ids=["the same", "different ones"])
def test_the_fifth_unknown_command_ends_the_session_before_command_call_limit(start_gateway, dns_server, protocol,
                                                                                commands):
    # The sample config and docs said command_call_limit (20) counts unknown commands too; aiosmtpd's
    # fixed limit of five unknown commands per session ends it first (docs/reliability.md).
    greeting, listener_extra = protocol
    gateway = start_gateway(dns_server.port, listener_extra=listener_extra)
    connection, stream = _session(gateway, greeting)
    with connection:
        for command in commands[:4]:
            assert _command(connection, stream, command) == b'500 Error: command "%s" not recognized' % command
        assert _command(connection, stream, commands[4]) == b"502 5.5.1 Too many unrecognized commands, goodbye."
        assert _closed(stream)

def test_a_relay_session_that_delivers_many_messages_is_not_cut(test_odoo, start_gateway, dns_server, dkim_keys,
                                                               protocol):
    # Postfix's connection cache delivers many messages on one session, each with RSET, MAIL, RCPT and
    # DATA: far more than the 20 a command that carries no mail is allowed.
    greeting, listener_extra = protocol
    gateway = start_gateway(dns_server.port, listener_extra=listener_extra,
                            rules_extra="[rate_limit]\nper_sender = 0\nper_record = 0\n")
    mailer = Mailer(gateway, dkim_keys)
    task = mailer.address("note", "project.task", TASK_ID)
    connection, stream = _session(gateway, greeting)
    with connection:
        for _ in range(500):
            raw = mailer.sign(mailer.message("note_from_contributor.eml", task))
            assert _deliver_in_session(connection, stream, raw, task).startswith(b"250 2.0.0 Filed")
        assert _command(connection, stream, b"QUIT").startswith(b"221 ")
    assert len(_posts(test_odoo)) == 500


def test_the_commands_of_a_transaction_have_their_own_limit(start_gateway, dns_server, protocol):
    greeting, listener_extra = protocol
    gateway = start_gateway(dns_server.port, listener_extra=listener_extra + "transaction_call_limit = 3\n")
    connection, stream = _session(gateway, greeting)
    with connection:
        for _ in range(3):
            assert _command(connection, stream, f"MAIL FROM:<{PAULA}>".encode()).startswith(b"250 ")
            assert _command(connection, stream, b"RSET").startswith(b"250 ")
        assert _command(connection, stream, f"MAIL FROM:<{PAULA}>".encode()) == b"421 4.7.0 MAIL sent too many times"
        assert _closed(stream)


def test_a_session_past_max_session_seconds_is_closed_at_its_next_command(start_gateway, dns_server, protocol):
    # A NOOP every half second used to keep a session with session_timeout = 1 open for ever.
    greeting, listener_extra = protocol
    gateway = start_gateway(dns_server.port, session_timeout=1,
                            listener_extra=listener_extra + "max_session_seconds = 2\ncommand_call_limit = 100\n")
    connection, stream = _session(gateway, greeting)
    started = time.monotonic()
    with connection:
        while True:
            reply = _command(connection, stream, b"NOOP")
            if not reply.startswith(b"250 "):
                break
            assert time.monotonic() - started < 2.5, "the session outlived max_session_seconds"
            time.sleep(0.25)
        assert reply == b"421 4.4.2 This session has lasted too long, reconnect to go on: the limit is 2 s"
        assert time.monotonic() - started >= 2
        assert _closed(stream)


def test_a_message_in_data_when_the_session_time_runs_out_is_filed(test_odoo, start_gateway, dns_server, dkim_keys,
                                                                   protocol):
    greeting, listener_extra = protocol
    gateway = start_gateway(dns_server.port, listener_extra=listener_extra + "max_session_seconds = 1\n")
    mailer = Mailer(gateway, dkim_keys)
    task = mailer.address("note", "project.task", TASK_ID)
    # Filing goes on past the session's end: the message gets its reply, the next command the 421.
    test_odoo.latency = {"message_post": 1.5}
    connection, stream = _session(gateway, greeting)
    with connection:
        raw = mailer.sign(mailer.message("note_from_contributor.eml", task))
        assert _deliver_in_session(connection, stream, raw, task).startswith(b"250 2.0.0 Filed")
        assert _command(connection, stream, f"MAIL FROM:<{PAULA}>".encode()) == (
            b"421 4.4.2 This session has lasted too long, reconnect to go on: the limit is 1 s")
        assert _closed(stream)
    assert len(_posts(test_odoo)) == 1


# --- Messages over listener.max_message_size (DESIGN.md: a precise reply and a journal row) ------------


def _too_large_count(odoo: str) -> float:
    """``odoo``: the recipient's Odoo, or "" for a message refused at MAIL, before any recipient."""
    labels = {"verdict": "refused", "refusal": "MessageTooLarge", "odoo": odoo}
    return observe.REGISTRY.get_sample_value("note_gateway_messages_total", labels) or 0.0


def test_a_message_over_max_message_size_is_refused_journaled_and_the_session_goes_on(
        test_odoo, start_gateway, dns_server, dkim_keys, protocol):
    # Found by a design review: the client got aiosmtpd's bare "552 Error: Too much mail data",
    # which names no limit, and the journal and the metrics never heard of the message.
    greeting, listener_extra = protocol
    gateway = start_gateway(dns_server.port, listener_extra=listener_extra + "max_message_size = 4000\n")
    mailer = Mailer(gateway, dkim_keys)
    task = mailer.address("note", "project.task", TASK_ID)
    before = _too_large_count("main")
    connection, stream = _session(gateway, greeting)
    with connection:
        reply = _deliver_in_session(connection, stream, _large_note(mailer, task, 8000), task)
        # Over LMTP too, one reply: the one recipient of the transaction's.
        assert reply == b"552 5.3.4 Message too large: the limit is 4000 bytes"
        # aiosmtpd read the data to its end and reset the transaction: the session goes on.
        small = mailer.sign(mailer.message("note_from_contributor.eml", task))
        assert _deliver_in_session(connection, stream, small, task).startswith(b"250 2.0.0 Filed")
        assert _command(connection, stream, b"QUIT").startswith(b"221 ")
    assert len(_posts(test_odoo)) == 1
    filed, refused = _journal(gateway)
    assert filed.verdict == "filed"
    assert (refused.verdict, refused.refusal_class, refused.smtp_reply) == (
        "refused", "MessageTooLarge", "552 5.3.4 Message too large: the limit is 4000 bytes")
    assert (refused.peer, refused.mail_from, refused.rcpt) == ("127.0.0.1", PAULA, task)
    assert (refused.kind, refused.model, refused.res_id) == ("note", "project.task", TASK_ID)
    assert _too_large_count("main") == before + 1


def test_a_declared_size_over_max_message_size_is_refused_at_mail_and_journaled(
        test_odoo, start_gateway, dns_server, dkim_keys, protocol):
    # RFC 1870: a client that declares SIZE hears at MAIL that the message will not fit, before
    # sending it; the reply was aiosmtpd's "552 Error: message size exceeds fixed maximum message size".
    greeting, listener_extra = protocol
    gateway = start_gateway(dns_server.port, listener_extra=listener_extra + "max_message_size = 4000\n")
    mailer = Mailer(gateway, dkim_keys)
    task = mailer.address("note", "project.task", TASK_ID)
    before = _too_large_count("")
    connection, stream = _session(gateway, greeting)
    expected = b"552 5.3.4 Message too large: SIZE=8000 declared, the limit is 4000 bytes"
    with connection:
        assert _command(connection, stream, f"MAIL FROM:<{PAULA}> SIZE=8000".encode()) == expected
        # No transaction was opened: the next MAIL of the session is answered as usual.
        assert _command(connection, stream, f"MAIL FROM:<{PAULA}> SIZE=4000".encode()).startswith(b"250 ")
        small = mailer.sign(mailer.message("note_from_contributor.eml", task))
        assert _deliver_in_session(connection, stream, small, task).startswith(b"250 2.0.0 Filed")
    assert len(_posts(test_odoo)) == 1
    filed, refused = _journal(gateway)
    assert filed.verdict == "filed"
    assert (refused.verdict, refused.refusal_class, refused.smtp_reply.encode()) == (
        "refused", "MessageTooLarge", expected)
    # Refused before any RCPT: no recipient, no target.
    assert (refused.peer, refused.mail_from, refused.rcpt, refused.model) == ("127.0.0.1", PAULA, "", "")
    assert _too_large_count("") == before + 1


def test_a_refusal_said_in_the_session_is_said_even_if_its_journaling_fails(
        test_odoo, start_gateway, dns_server, dkim_keys, monkeypatch, caplog):
    # Found by a security review: only JournalUnavailable was caught; anything else the journaling
    # raised (a RuntimeError from the executor shut down at stop) skipped the precise reply and
    # aiosmtpd's reset of the transaction, and the client got "500 Error: (RuntimeError) ...".
    gateway = start_gateway(dns_server.port, listener_extra="max_message_size = 4000\n")
    mailer = Mailer(gateway, dkim_keys)
    task = mailer.address("note", "project.task", TASK_ID)
    journal = gateway.services.journal
    record = journal.record

    def record_or_fail(entry, **options):
        if entry.refusal_class:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return record(entry, **options)

    monkeypatch.setattr(journal, "record", record_or_fail)
    connection, stream = _session(gateway, b"EHLO client.example.com")
    with connection:
        assert _command(connection, stream, f"MAIL FROM:<{PAULA}> SIZE=8000".encode()) == (
            b"552 5.3.4 Message too large: SIZE=8000 declared, the limit is 4000 bytes")
        assert _command(connection, stream, f"MAIL FROM:<{PAULA}>".encode()).startswith(b"250 ")
        forged = b"RCPT TO:<note+project.task-60-x@notes.example.com>"
        assert _command(connection, stream, forged).startswith(b"550 5.1.1 ")
        assert _command(connection, stream, f"RCPT TO:<{task}>".encode()).startswith(b"250 ")
        assert _command(connection, stream, b"DATA").startswith(b"354 ")
        raw = _large_note(mailer, task, 8000)
        assert _command(connection, stream, smtplib.quotedata(raw.decode()).encode() + b"\r\n.") == (
            b"552 5.3.4 Message too large: the limit is 4000 bytes")
        # The transaction was reset: a MAIL with no RSET before it opens the next one.
        assert _command(connection, stream, f"MAIL FROM:<{PAULA}>".encode()).startswith(b"250 ")
        small = mailer.sign(mailer.message("note_from_contributor.eml", task))
        assert _deliver_in_session(connection, stream, small, task).startswith(b"250 2.0.0 Filed")
    assert len(_posts(test_odoo)) == 1
    assert caplog.text.count("refusal not recorded in the journal") == 3


def test_data_over_max_message_size_is_read_to_its_end_but_not_kept(test_odoo, start_gateway, dns_server):
    # The memory bound: 8 MB sent to a 64 KB limit are read and dropped line by line, never
    # gathered to be refused whole.
    gateway = start_gateway(dns_server.port, listener_extra="max_message_size = 65536\n")
    chunk = (b"x" * 998 + b"\r\n") * 64
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
        client.ehlo("client.example.com")
        client.mail(PAULA)
        client.rcpt(Mailer.address("note", "project.task", TASK_ID))
        assert client.docmd("DATA")[0] == 354
        tracemalloc.start()
        try:
            for _ in range(128):
                client.send(chunk)
            client.send(b".\r\n")
            reply = client.getreply()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert reply == (552, b"5.3.4 Message too large: the limit is 65536 bytes")
        assert client.noop()[0] == 250
    assert peak < 2 * 1024 * 1024, peak
    assert _posts(test_odoo) == []
