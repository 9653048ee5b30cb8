"""Refusal notices through a real smarthost on loopback: only to verified senders, once a day, marked automatic."""

from __future__ import annotations

import email
import email.policy
import socket
from dataclasses import replace

import pytest
from aiosmtpd.controller import Controller

from conftest import Mailer

from gateway import notices
from gateway.testing.odoo_demo import TASK_ID

NON_MEMBER = "portal.plain@example.com"


class Sink:
    """An SMTP server that keeps what it receives: the smarthost of these tests."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Queued"


@pytest.fixture
def smarthost():
    sink = Sink()
    # aiosmtpd's Controller connects to its own port once started, so it needs a real one.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        sink.port = probe.getsockname()[1]
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port, decode_data=False)
    controller.start()
    yield sink
    controller.stop()


@pytest.fixture
def noticing_mailer(start_gateway, dns_server, dkim_keys, smarthost) -> Mailer:
    gateway = start_gateway(
        dns_server.port,
        listener_extra=f"\n[notices]\nsmarthost = \"127.0.0.1\"\nsmarthost_port = {smarthost.port}\n"
                       "from_address = \"gateway@notes.example.com\"\n",
        rules_extra="[notices]\nenabled = true\n")
    return Mailer(gateway, dkim_keys)


def _refused_note(mailer: Mailer, message_id: str, *, sign: bool = True) -> str:
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.message("note_from_non_member.eml", to, message_id)
    return mailer.send(mailer.sign(raw) if sign else raw, to, mail_from=NON_MEMBER)


def test_verified_sender_gets_one_notice_per_reason_and_day(test_odoo, noticing_mailer, smarthost):
    assert _refused_note(noticing_mailer, "<first@example.com>").startswith("550 5.7.1 Sender may not post internal notes")
    [(mail_from, recipients, raw)] = smarthost.received
    # The null reverse-path, so that an undeliverable notice cannot bounce back (RFC 3834 3.3).
    assert (mail_from, recipients) == ("<>", [NON_MEMBER])  # aiosmtpd shows the null path as "<>"
    notice = email.message_from_bytes(raw, policy=email.policy.default)
    assert notice["Auto-Submitted"] == "auto-replied"
    assert notice["X-Note-Gateway-Loop"] == "notes.example.com"
    assert notice["In-Reply-To"] == "<first@example.com>"
    assert notice["To"] == NON_MEMBER and "gateway@notes.example.com" in notice["From"]
    assert "Reason: Sender may not post internal notes" in notice.get_content()

    assert _refused_note(noticing_mailer, "<second@example.com>").startswith("550 5.7.1")
    assert len(smarthost.received) == 1  # the same reason on the same day: no second notice


def test_no_notice_to_an_unverified_sender(test_odoo, noticing_mailer, smarthost):
    # Anyone can write any From; answering it would be backscatter to an innocent address.
    assert _refused_note(noticing_mailer, "<forged@example.com>", sign=False).startswith("550 5.7.1 Sender not authenticated")
    assert smarthost.received == []


def test_no_notice_for_transient_or_automatic_refusals(test_odoo, noticing_mailer, smarthost):
    to = noticing_mailer.address("note", "project.task", TASK_ID)
    test_odoo.fail("http500")
    raw = noticing_mailer.sign(noticing_mailer.message("note_from_non_member.eml", to))
    assert noticing_mailer.send(raw, to, mail_from=NON_MEMBER).startswith("451 ")
    test_odoo.heal()
    automatic = noticing_mailer.sign(b"Auto-Submitted: auto-replied\r\n" + noticing_mailer.message("note_from_non_member.eml", to))
    assert noticing_mailer.send(automatic, to, mail_from=NON_MEMBER).startswith("550 5.7.1 Automatic")
    assert smarthost.received == []


def test_no_notice_unless_the_rules_ask(test_odoo, start_gateway, dns_server, dkim_keys, smarthost):
    gateway = start_gateway(dns_server.port,
                            listener_extra=f"\n[notices]\nsmarthost = \"127.0.0.1\"\nsmarthost_port = {smarthost.port}\n")
    assert _refused_note(Mailer(gateway, dkim_keys), "<quiet@example.com>").startswith("550 5.7.1")
    assert smarthost.received == []


def test_a_notice_that_comes_back_is_refused_as_a_loop(test_odoo, noticing_mailer, smarthost):
    _refused_note(noticing_mailer, "<loop@example.com>")
    [(_, _, raw)] = smarthost.received
    to = noticing_mailer.address("note", "project.task", TASK_ID)
    reply = noticing_mailer.send(raw, to, mail_from="portal.plain@example.com")
    assert reply.startswith("550 5.4.6 Mail loop")
    assert len(smarthost.received) == 1


def test_cr_or_lf_in_a_header_value_stops_the_notice(test_odoo, noticing_mailer, smarthost, caplog):
    # A value that would add a header (Bcc: to anyone) is refused, not cleaned (MAIL_SECURITY.md 17).
    services = noticing_mailer.gateway.services
    from gateway.context import MessageContext, ParsedMessage, VerifiedSender
    from gateway.refusals import NotContributor

    target = noticing_mailer.gateway.services.config.domains["notes.example.com"]
    ctx = MessageContext(raw=b"", mail_from=NON_MEMBER, rules=target, target=_target(noticing_mailer))
    ctx.message = ParsedMessage(message_id="<x@example.com>\r\nBcc: victim@example.net", from_address=NON_MEMBER,
                                from_name="", subject="s", text_plain="", text_html="")
    ctx.sender = VerifiedSender(NON_MEMBER, "example.com", "gateway")
    ctx.refusal = NotContributor()
    with pytest.raises(notices.UnsafeHeader):
        notices.compose(ctx, services)
    notices.maybe_send(ctx, services)
    assert smarthost.received == [] and not ctx.notice_sent
    assert "contains CR or LF" in caplog.text
    # The same context with a clean value is sent, so the refusal above was for the CR/LF alone.
    ctx.message = replace(ctx.message, message_id="<x@example.com>")
    notices.maybe_send(ctx, services)
    assert len(smarthost.received) == 1 and ctx.notice_sent


def _target(mailer: Mailer):
    from gateway import address

    config = mailer.gateway.services.config
    return address.parse(mailer.address("note", "project.task", TASK_ID), config.secrets)
