"""Every refusal: a coherent SMTP reply, a notice template that exists, one line whatever the detail."""

from __future__ import annotations

import re

import pytest

from gateway.refusals import (AddressExpired, BadAddress, PlainAddressNotAccepted, Refusal, UnknownAliasDomain,
                              UnknownSender, all_refusal_classes)
from gateway.render import Renderer

REFUSALS = [Refusal, *all_refusal_classes()]
ENHANCED_CODE = re.compile(r"^[245]\.[0-9]{1,3}\.[0-9]{1,3}$")


def test_refusal_classes_are_found():
    names = {refusal.__name__ for refusal in REFUSALS}
    assert {"BadAddress", "EmptyBody", "SenderNotAuthenticated", "OdooUnavailable"} <= names


@pytest.mark.parametrize("refusal_class", REFUSALS, ids=lambda refusal: refusal.__name__)
def test_codes_agree_with_each_other(refusal_class):
    refusal = refusal_class()
    assert 400 <= refusal.smtp_code < 600
    assert refusal.transient == (400 <= refusal.smtp_code < 500)
    # RFC 3463: the class digit of the enhanced code repeats the first digit of the reply code.
    assert ENHANCED_CODE.match(refusal.enhanced_code)
    assert refusal.enhanced_code[0] == str(refusal.smtp_code)[0]
    assert refusal.reason.strip()


@pytest.mark.parametrize("refusal_class", REFUSALS, ids=lambda refusal: refusal.__name__)
def test_notice_template_is_bundled_and_renders(refusal_class):
    renderer = Renderer()
    refusal = refusal_class("detail of this message")
    assert renderer.has_template(refusal.template), refusal.template
    notice = renderer.render_refusal(
        refusal, address="note+project.task-42-abcdefghijklmnop@notes.example.com", subject="Pump check",
        sender_email="portal.contrib@example.com",
    )
    assert refusal.reason in notice
    assert "detail of this message" in notice


@pytest.mark.parametrize("refusal_class", REFUSALS, ids=lambda refusal: refusal.__name__)
def test_smtp_reply_is_one_line_whatever_the_detail(refusal_class):
    reply = refusal_class("evil\r\n250 2.0.0 Ok\rmore\nlines\x85end").smtp_reply()
    assert "\r" not in reply and "\n" not in reply
    assert len(reply.splitlines()) == 1
    assert reply.startswith(f"{refusal_class.smtp_code} {refusal_class.enhanced_code} ")


def test_smtp_reply_carries_no_control_character_of_the_detail():
    # RFC 5321's reply text is printable ASCII; a detail taken from a message (a file name, a
    # header) with an escape sequence or a backspace reached the client and the log lines quoting
    # the reply raw (found by a review of the journal).
    reply = UnknownSender("report\x1b[31m\x08\x08.pdf\x7f\x9b").smtp_reply()
    assert reply.endswith(": report?[31m??.pdf??")
    assert all(0x20 <= ord(char) < 0x7F for char in reply)


@pytest.mark.parametrize("detail, written", [
    # Found by a review of internationalised senders: without its accents the domain was another,
    # real one ("paula@bucher.example"). A-labels name the same domain in ASCII.
    ("paula@bücher.example", "paula@xn--bcher-kva.example"),
    ("paula@bücher.example (2 users)", "paula@xn--bcher-kva.example (2 users)"),
    ("jürgen@bücher.example is not partner 7.", "j\\x{FC}rgen@xn--bcher-kva.example is not partner 7."),
    # Anything else keeps its letters without their accents, as before.
    ("Rechnung Müller.vbs", "Rechnung Muller.vbs"),
])
def test_smtp_reply_writes_an_address_in_ascii_without_changing_it(detail, written):
    # A local part has no ASCII form: RFC 6533's EmbeddedUnicodeChar (\\x{FC}), never "jurgen".
    assert UnknownSender(detail).smtp_reply() == f"550 5.7.1 No Odoo user has this sender address: {written}"


@pytest.mark.parametrize("refusal_class", [BadAddress, UnknownAliasDomain, AddressExpired, PlainAddressNotAccepted])
def test_an_address_notice_sends_nobody_to_an_odoo_screen(refusal_class):
    # Found by a review of misleading refusals: the notice said to "copy the address again from the
    # record in Odoo", and no Odoo screen shows a gateway address (an administrator mints them with
    # note-gateway address).
    notice = " ".join(Renderer().render_refusal(
        refusal_class(), address="note+project.task-42-abcdefghijklmnop@notes.example.com", subject="",
        sender_email="portal.contrib@example.com").split())
    assert "Each record has its own gateway addresses, given out by the administrator of the Odoo database" in notice
    assert "Ask the person who gave you the address for the record's current address" in notice
    assert "from the record in Odoo" not in notice and "by hand" not in notice
