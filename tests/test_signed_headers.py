"""Headers the gateway reads must be the ones the DKIM signature covers, over loopback SMTP with real keys.

dkimpy verifies the bottom-most copies of the headers h= names; the email package and mail-parser
read the topmost. A security review found that a header prepended to a message someone signed was
read and not verified: a Content-Type made the quoted text of a signed reply the whole note, an
In-Reply-To chose the record of a plain note@, a Cc had Odoo email internal users the note.
"""

from __future__ import annotations

import email.utils
import uuid

import dkim
import pytest

from conftest import ALIAS_DOMAIN
from gateway.journal import Journal
from gateway.testing.odoo_demo import MARC_PARTNER_ID, SALE_ORDER_ID, TASK_ID

PAULA = "portal.contrib@example.com"
ODOO_THREAD = f"<0.1-openerp-{TASK_ID}-project.task@odoo.example>"
PLAIN_NOTE = f"note@{ALIAS_DOMAIN}"
# Every header of the message named once, as dkimpy, OpenDKIM and Exim sign by default (dkimpy
# leaves Content-Disposition out, which is named here so that it is covered too).
SIGNED_ONCE = [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"in-reply-to", b"references",
               b"mime-version", b"content-type", b"content-transfer-encoding", b"content-disposition"]
# Microsoft 365's h= (its selector1/selector2 signatures): To, Cc, In-Reply-To, References and
# Content-Transfer-Encoding are not signed.
MICROSOFT_365 = [b"from", b"date", b"subject", b"message-id", b"content-type", b"mime-version"]


def _posts(test_odoo):
    return [call for call in test_odoo.calls if call.model_method == "message_post"]


def _journal(gateway):
    with Journal(gateway.services.config.journal_path) as journal:
        return journal.recent(50)


def _reply(to: str) -> bytes:
    """Paula answers an outsider Outlook style: his mail is quoted below her text, lines he chose unprefixed."""
    return (f"From: Paula Contributor <{PAULA}>\r\n"
            f"To: {to}\r\n"
            "Cc: Marc Demo <mark.brown23@example.com>\r\n"
            "Subject: Re: pump P-7\r\n"
            f"Date: {email.utils.formatdate()}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.com>\r\n"
            f"In-Reply-To: {ODOO_THREAD}\r\n"
            f"References: {ODOO_THREAD}\r\n"
            "MIME-Version: 1.0\r\n"
            'Content-Type: text/plain; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: 8bit\r\n"
            "Content-Disposition: inline\r\n"
            "\r\n"
            "Thanks, I will look at it next week.\r\n"
            "\r\n"
            "-----Original Message-----\r\n"
            "From: someone@outside.example\r\n"
            "\r\n"
            "--EVIL\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "\r\n"
            "APPROVED: pay invoice 4711 (50,000 EUR) to IBAN XX00 EVIL today. -- Paula\r\n"
            "--EVIL--\r\n").encode()


def _changed(header: str) -> str:
    return (f"550 5.7.1 The message was changed after it was signed: the {header} header was added after the "
            "DKIM signature (not covered by it)")


def _duplicate(header: str) -> str:
    return f"554 5.6.0 Malformed message, it could not be parsed: more than one {header} header"


PREPENDED = [
    # Read from every copy (To and Cc choose whom Odoo emails, In-Reply-To and References route and
    # decide note or public): a copy above the signed one is refused by the signature check.
    ("To: mark.brown23@example.com", _changed("To")),
    ("Cc: Admin <admin@yourcompany.example.com>", _changed("Cc")),
    ("In-Reply-To: <0.2-openerp-1-project.task@odoo.example>", _changed("In-Reply-To")),
    ("References: <0.2-openerp-1-project.task@odoo.example>", _changed("References")),
    # One allowed (RFC 5322, RFC 2045, RFC 2183): two are refused whatever the signature covers.
    ('Content-Type: multipart/mixed; boundary="EVIL"', _duplicate("Content-Type")),
    ("MIME-Version: 1.0", _duplicate("MIME-Version")),
    ("Content-Transfer-Encoding: quoted-printable", _duplicate("Content-Transfer-Encoding")),
    ('Content-Disposition: attachment; filename="reply.txt"', _duplicate("Content-Disposition")),
    ("Subject: APPROVED: pay invoice 4711", _duplicate("Subject")),
    ("Message-ID: <chosen-by-the-attacker@example.com>", _duplicate("Message-ID")),
    ("Date: Mon, 01 Jan 2029 10:00:00 +0000", _duplicate("Date")),
]


@pytest.mark.parametrize("header, expected", PREPENDED, ids=[line.split(":")[0] for line, _ in PREPENDED])
def test_a_header_prepended_above_the_signed_one_is_refused(test_odoo, gateway, mailer, header, expected):
    to = mailer.address("note", "project.task", TASK_ID)
    signed = mailer.sign(_reply(to), include_headers=SIGNED_ONCE)
    forged = f"{header}\r\n".encode() + signed
    # dkimpy alone still finds the signature good: it hashes the bottom-most copy.
    assert dkim.DKIM(forged).verify(dnsfunc=lambda name, timeout=5: mailer.keys["example.com"].txt_record.encode())
    assert mailer.send(forged, to) == expected
    assert _posts(test_odoo) == []
    [row] = _journal(gateway)
    assert row.verdict == "refused" and row.smtp_reply == expected


def test_the_signed_reply_replayed_by_its_recipient_with_a_content_type_above_it_is_refused(test_odoo, gateway, mailer):
    """The review's case: Paula's signed reply went to the outsider, who sends it on to a note address."""
    to = mailer.address("note", "project.task", TASK_ID)
    signed = mailer.sign(_reply("someone@outside.example"))
    forged = b'Content-Type: multipart/mixed; boundary="EVIL"\r\n' + signed
    assert mailer.send(forged, to, mail_from="someone@outside.example") == _duplicate("Content-Type")
    assert _posts(test_odoo) == []


def test_an_in_reply_to_prepended_for_a_plain_note_address_is_refused(test_odoo, gateway, mailer):
    signed = mailer.sign(_reply("someone@outside.example").replace(ODOO_THREAD.encode(), b"<their-thread@outside.example>"))
    forged = f"In-Reply-To: {ODOO_THREAD}\r\n".encode() + signed
    assert mailer.send(forged, PLAIN_NOTE, mail_from="someone@outside.example") == _changed("In-Reply-To")
    assert _posts(test_odoo) == []


@pytest.mark.parametrize("include_headers", [
    SIGNED_ONCE,
    None,  # dkimpy's default list (From named twice, Content-Disposition not at all)
    # Oversigned: each named once more than it is present, so that none can be added.
    SIGNED_ONCE + SIGNED_ONCE + [b"reply-to", b"sender"],
], ids=["signed-once", "dkimpy-default", "oversigned"])
def test_the_same_message_unmodified_is_filed(test_odoo, gateway, mailer, include_headers):
    to = mailer.address("note", "project.task", TASK_ID)
    reply = mailer.send(mailer.sign(_reply(to), include_headers=include_headers), to)
    assert reply.startswith("250 2.0.0 Filed")
    [post] = _posts(test_odoo)
    assert post.args == [[TASK_ID]]
    # The whole text, the quoted lines as quoted text; the signed Cc names an internal user.
    assert "I will look at it next week" in post.kwargs["body"]
    assert post.kwargs["partner_ids"] == [MARC_PARTNER_ID]


def test_a_plain_note_address_is_routed_by_a_signed_in_reply_to(test_odoo, gateway, mailer):
    reply = mailer.send(mailer.sign(_reply(PLAIN_NOTE)), PLAIN_NOTE)
    assert reply.startswith("250 2.0.0 Filed")
    [post] = _posts(test_odoo)
    assert post.args == [[TASK_ID]]


def test_a_plain_note_address_passes_over_unsigned_references_for_a_signed_in_reply_to(test_odoo, gateway, mailer):
    # Routing reads References before In-Reply-To, as Odoo's mail gateway does; a References the
    # signature leaves out could be anyone's, and names the order here: the signed In-Reply-To decides.
    test_odoo.add_record("mail.message", {"model": "sale.order", "res_id": SALE_ORDER_ID, "message_type": "comment",
                                          "subtype_id": 1, "body": "<p>x</p>", "author_id": 3,
                                          "message_id": "<order@customer.example>"})
    raw = _reply(PLAIN_NOTE).replace(f"References: {ODOO_THREAD}".encode(), b"References: <order@customer.example>")
    signed = mailer.sign(raw, include_headers=[name for name in SIGNED_ONCE if name != b"references"])
    assert mailer.send(signed, PLAIN_NOTE).startswith("250 2.0.0 Filed")
    [post] = _posts(test_odoo)
    assert (post.model, post.args) == ("project.task", [[TASK_ID]])
    assert _journal(gateway)[0].decision.startswith(f"routed by Odoo Message-ID {ODOO_THREAD}")


def test_to_and_cc_left_out_of_h_still_notify_internal_users(test_odoo, gateway, mailer):
    """Signed as Microsoft 365 signs (To and Cc left out of h=): the colleague she copied is told.

    Only internal users are ever notified, of a note its author signed: dropping them would lose
    every Microsoft 365 contributor's copies for no protection of the note (docs/rules.md)."""
    to = mailer.address("note", "project.task", TASK_ID)
    reply = mailer.send(mailer.sign(_reply(to), include_headers=MICROSOFT_365), to)
    assert reply.startswith("250 2.0.0 Filed")
    [post] = _posts(test_odoo)
    assert post.kwargs["partner_ids"] == [MARC_PARTNER_ID]
    [row] = _journal(gateway)
    assert not any("mark.brown23" in defect for defect in row.defects)


def test_in_reply_to_and_references_left_out_of_h_choose_no_record(test_odoo, gateway, mailer):
    reply = mailer.send(mailer.sign(_reply(PLAIN_NOTE), include_headers=MICROSOFT_365), PLAIN_NOTE)
    assert reply == ("550 5.1.1 No record found for this message: reply to an Odoo notification, or write to the "
                     "record's own note+ or reply+ address: In-Reply-To and References are not covered by the DKIM "
                     "signature, so the record cannot be chosen by them")
    assert _posts(test_odoo) == []
