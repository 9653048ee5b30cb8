"""The message parsed once by the email package tells each header reader what its own header parse told it (issue 6)."""

from __future__ import annotations

import email.parser

import pytest

from gateway import automatic, inputlimits, message, senderauth
from gateway.config import InputLimits
from gateway.refusals import Refusal

_HEADER = (b"From: Paula Contributor <portal.contrib@example.com>\r\n"
           b"To: note+project.task-7-abc@notes.example.com\r\n"
           b"Subject: Pump P-7 inspected\r\n"
           b"Message-ID: <one@example.com>\r\n"
           b"In-Reply-To: <parent@example.com>\r\n"
           b"References: <root@example.com>\r\n <parent@example.com>\r\n")
_BODY = b"\r\nThe pump was inspected.\r\n"

# The shapes where a header-only parse of the header block and a full parse could part ways.
CASES = {
    "plain": _HEADER + _BODY,
    "bare LF": (_HEADER + _BODY).replace(b"\r\n", b"\n"),
    "bare CR ends the header": _HEADER.replace(b"Subject", b"\rSubject") + _BODY,
    "no separator before the body": _HEADER + b"The pump was inspected.\r\nFrom: mallory@evil.example\r\n",
    "no body at all": _HEADER.rstrip(b"\r\n"),
    "second From in obsolete syntax": _HEADER + b"From : Mallory <mallory@evil.example>\r\n" + _BODY,
    "two From headers": _HEADER + b"From: Mallory <mallory@evil.example>\r\n" + _BODY,
    "From only in the body": _HEADER.split(b"\r\n", 1)[1] + b"\r\nFrom: mallory@evil.example\r\n",
    "obsolete display name": _HEADER.replace(b"Paula Contributor", b"Paula Q. Contributor") + _BODY,
    "a continuation line first": b" folded\r\n" + _HEADER + _BODY,
    "automatic": b"Auto-Submitted: auto-replied\r\nPrecedence: bulk\r\n" + _HEADER + _BODY,
    "our own loop": b"X-Note-Gateway-Loop: 1\r\n" + _HEADER + _BODY,
    "mbox From_ line": b"From portal.contrib@example.com Mon Jan  1 00:00:00 2024\r\n" + _HEADER + _BODY,
    "multipart": _HEADER + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n"
                           b"\r\nThe pump.\r\n--b--\r\n",
    "read receipt": _HEADER + b"Content-Type: multipart/report; report-type=disposition-notification;\r\n boundary=b\r\n"
                              b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nThis is a Return Receipt\r\n--b\r\n"
                              b"Content-Type: message/disposition-notification\r\n\r\nDisposition: manual-action/"
                              b"MDN-sent-manually; displayed\r\n--b--\r\n",
}


def _outcome(read):
    try:
        return "returned", read()
    except Refusal as refusal:
        return type(refusal).__name__, refusal.detail


@pytest.mark.parametrize("raw", CASES.values(), ids=CASES.keys())
def test_header_readers_see_the_same_fields_in_the_parsed_message(raw):
    parsed = message.parse_email(raw)
    for header in ("In-Reply-To", "References"):
        assert message.all_message_ids(raw, header, parsed) == message.all_message_ids(raw, header)
    for mail_from in ("portal.contrib@example.com", ""):
        assert (_outcome(lambda: automatic.check_not_automatic(raw, mail_from, "", "", parsed))
                == _outcome(lambda: automatic.check_not_automatic(raw, mail_from, "", "")))
    assert (_outcome(lambda: senderauth.read_from_address(raw, parsed))
            == _outcome(lambda: senderauth.read_from_address(raw)))
    assert _outcome(lambda: message.parse(raw, parsed)) == _outcome(lambda: message.parse(raw))


def test_cases_cover_refusals_and_acceptances():
    # The comparison above says little if every case ended the same way.
    outcomes = {_outcome(lambda: senderauth.read_from_address(raw))[0] for raw in CASES.values()}
    assert outcomes == {"returned", "FromHeaderInvalid"}
    assert message.all_message_ids(CASES["plain"], "References") == ["<root@example.com>", "<parent@example.com>"]


def test_input_limits_hand_over_the_multipart_message_they_parsed():
    raw = CASES["multipart"]
    parsed = inputlimits.check_input(raw, InputLimits())
    assert parsed is not None and parsed.is_multipart()
    assert message.parse(raw, parsed) == message.parse(raw)
    # A message without MIME structure is not parsed there: the parse stage does it.
    assert inputlimits.check_input(CASES["plain"], InputLimits()) is None


def test_a_report_is_recognised_in_the_message_parsed_once(monkeypatch):
    # The top-level Content-Type of a multipart/report is read from the message the pipeline parsed
    # (a MIME review asked that refusing reports costs no second parse).
    raw = CASES["read receipt"]
    parsed = message.parse_email(raw)

    def parsed_again(*args, **kwargs):
        raise AssertionError("the message was parsed a second time")

    monkeypatch.setattr(email.parser.BytesParser, "parsebytes", parsed_again)
    assert _outcome(lambda: automatic.check_not_automatic(raw, "portal.contrib@example.com", "", "", parsed)) == (
        "AutomaticMessage", "a read receipt (multipart/report, report-type=disposition-notification)")
