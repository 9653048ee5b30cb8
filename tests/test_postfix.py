"""Real neighbours: Debian's Postfix in front of the gateway over SMTP and LMTP, and OpenDKIM as the signer.

Postfix is configured by the test as a second instance in a temporary folder (``postfix -c DIR``),
as the internet-facing MTA of the alias domain: relay_domains names it, and either its smtpd passes
each transaction to the gateway (a before-queue proxy filter, the README's setup) or transport_maps
sends queued mail on to it (the after-queue setup). The sender's domain (example.com) is routed to a small SMTP sink, so the bounces
Postfix writes can be read.
"""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
import threading
import time

import pytest
from aiosmtpd.controller import Controller

from conftest import ALIAS_DOMAIN, SECRET, Mailer
from docs_snippets import readme_postfix_example

from gateway import address
from gateway.journal import Journal
from gateway.testing import dnsmasq, opendkim
from gateway.testing import postfix as postfix_module
from gateway.testing.odoo_demo import SALE_ORDER_ID, TASK_ID
from gateway.testing.postfix import Postfix, free_port

pytestmark = pytest.mark.skipif(
    not postfix_module.available(),
    reason="Postfix is not installed or this is not root (apt-get install postfix; .ci/run does it as root)")

PAULA = "portal.contrib@example.com"


class Sink:
    """An SMTP server on loopback that keeps what it receives: the sender's mail system, for bounces."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.arrived = threading.Condition()
        self.controller = Controller(self, hostname="127.0.0.1", port=free_port())

    async def handle_DATA(self, server, session, envelope) -> str:
        with self.arrived:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
            self.arrived.notify_all()
        return "250 2.0.0 Kept"

    def wait(self, count: int = 1, timeout: float = 30) -> list[tuple[str, list[str], bytes]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.messages) >= count, timeout=timeout)
            return list(self.messages)


@pytest.fixture
def sink():
    server = Sink()
    server.controller.start()
    yield server
    server.controller.stop()


@pytest.fixture
def front(start_gateway, dns_server, sink):
    """Start the gateway (SMTP or LMTP) and a Postfix relaying the alias domain to it."""
    running: list[Postfix] = []

    def start(*, protocol: str = "smtp", settings: dict[str, str] | None = None, dns_port: int | None = None):
        gateway = start_gateway(dns_port or dns_server.port, listener_extra=f'protocol = "{protocol}"')
        nexthop = f"{protocol}:[127.0.0.1]:{gateway.port}"
        postfix = Postfix(relay_domains=[ALIAS_DOMAIN],
                          transports={ALIAS_DOMAIN: nexthop, "example.com": f"smtp:[127.0.0.1]:{sink.controller.port}"},
                          settings=settings).start()
        running.append(postfix)
        return gateway, postfix

    yield start
    for postfix in running:
        postfix.stop()


def _submit(postfix: Postfix, raw: bytes, recipients: list[str], mail_from: str = PAULA) -> dict:
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as client:
        client.ehlo("client.example.com")
        return client.sendmail(mail_from, recipients, raw)


def _journal(gateway):
    with Journal(gateway.services.config.journal_path) as journal:
        return journal.recent(50)


def test_mail_through_postfix_over_smtp_is_filed(front, test_odoo, dkim_keys):
    gateway, postfix = front(protocol="smtp")
    mailer = Mailer(gateway, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<via-postfix-smtp@example.com>"))
    assert _submit(postfix, raw, [to]) == {}

    line = postfix.wait_for_log(f"to=<{to}>")
    assert "status=sent" in line and f"relay=127.0.0.1[127.0.0.1]:{gateway.port}" in line
    assert "250 2.0.0 Filed as Odoo message" in line
    [post] = test_odoo.posts()
    assert post.kwargs["subtype_xmlid"] == "mail.mt_note" and post.kwargs["message_id"] == "<via-postfix-smtp@example.com>"
    # Postfix added its Received header above the signature; the signature still verified.
    [row] = _journal(gateway)
    assert row.verdict == "filed" and row.dkim_domain == "example.com" and row.peer == "127.0.0.1"


# The after-queue setup of docs/operations.md: a transport of its own for the gateway, so that its
# recipient limit of 1 and its process limit apply to the gateway's mail only.
NOTEGW_SERVICE = "notegw    unix  -       -       n       -       20      lmtp"
NOTEGW_SETTINGS = {"notegw_destination_recipient_limit": "1"}


def test_postfix_delivers_each_recipient_in_its_own_lmtp_transaction(start_gateway, dns_server, sink, test_odoo,
                                                                    dkim_keys):
    # One gateway target per transaction (MAIL_SECURITY.md item 16): with the recipient limit at 1,
    # Postfix's LMTP client opens one transaction per recipient.
    gateway = start_gateway(dns_server.port, listener_extra='protocol = "lmtp"')
    postfix = Postfix(relay_domains=[ALIAS_DOMAIN], settings=NOTEGW_SETTINGS, services=[NOTEGW_SERVICE],
                      transports={ALIAS_DOMAIN: f"notegw:[127.0.0.1]:{gateway.port}",
                                  "example.com": f"smtp:[127.0.0.1]:{sink.controller.port}"}).start()
    try:
        mailer = Mailer(gateway, dkim_keys)
        task = mailer.address("note", "project.task", TASK_ID)
        order = mailer.address("note", "sale.order", SALE_ORDER_ID)
        raw = mailer.sign(mailer.message("note_from_contributor.eml", f"{task}, {order}", "<via-postfix-lmtp@example.com>"))
        assert _submit(postfix, raw, [task, order]) == {}
        for to in (task, order):
            line = postfix.wait_for_log(f"to=<{to}>", "status=")
            assert "status=sent" in line and f"relay=127.0.0.1[127.0.0.1]:{gateway.port}" in line, postfix.log()
            assert "250 2.0.0 Filed as Odoo message" in line
        log = postfix.log()
    finally:
        postfix.stop()
    posts = test_odoo.posts()
    assert sorted((post.model, post.args[0][0]) for post in posts) == [("project.task", TASK_ID),
                                                                      ("sale.order", SALE_ORDER_ID)]
    assert {post.kwargs["message_id"] for post in posts} == {"<via-postfix-lmtp@example.com>"}
    assert "452 4.5.3" not in log and "status=deferred" not in log


def test_a_backlog_through_the_dedicated_transport_is_never_turned_away(start_gateway, dns_server, sink, test_odoo,
                                                                      dkim_keys):
    # A review of the gateway behind Postfix: with lmtp_destination_recipient_limit = 1 (what the
    # docs said), Postfix's concurrency limit counts recipients, not the destination, so a backlog
    # opened up to the lmtp process limit (100) deliveries at once, and the gateway answered a storm
    # of "421 4.7.0 Too many connections from your address" (228 deferrals for 45 notes). The
    # dedicated transport's process limit (20) is at most listener.max_sessions_per_ip (20).
    test_odoo.latency = {"*": 0.2}
    gateway = start_gateway(dns_server.port, listener_extra='protocol = "lmtp"')
    postfix = Postfix(relay_domains=[ALIAS_DOMAIN], settings=NOTEGW_SETTINGS, services=[NOTEGW_SERVICE],
                      transports={ALIAS_DOMAIN: f"notegw:[127.0.0.1]:{gateway.port}",
                                  "example.com": f"smtp:[127.0.0.1]:{sink.controller.port}"}).start()
    try:
        mailer = Mailer(gateway, dkim_keys)
        recipients = [address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "project.task", 1000 + i) for i in range(40)]
        with smtplib.SMTP("127.0.0.1", postfix.port, timeout=60) as client:
            client.ehlo("client.example.com")
            for to in recipients:
                client.sendmail(PAULA, [to], mailer.sign(mailer.message("note_from_contributor.eml", to)))
        deadline = time.monotonic() + 120
        while "Mail queue is empty" not in postfix.queue() and time.monotonic() < deadline:
            time.sleep(0.5)
        deliveries = [line for line in postfix.log().splitlines() if f"relay=127.0.0.1[127.0.0.1]:{gateway.port}" in line]
    finally:
        postfix.stop()
    # Every note reached the gateway (record 1000+i does not exist: each is refused, 550, and
    # bounced; what matters here is that none was turned away at connect).
    assert len([line for line in deliveries if "status=" in line]) == len(recipients), deliveries
    assert not [line for line in deliveries if "421 4.7.0" in line or "status=deferred" in line]


def test_mail_with_utf8_headers_through_debian_postfix_is_filed(front, test_odoo, dkim_keys, sink):
    # Debian's Postfix has smtputf8_enable = yes (compatibility_level 3.6) and relays a message that
    # arrived with SMTPUTF8 only to a next hop that offers it: before the listener did, Postfix
    # bounced it ("SMTPUTF8 is required, but was not offered by host"), and this harness hid it
    # with smtputf8_enable = no (a review of the gateway behind Postfix).
    gateway, postfix = front(protocol="lmtp")
    mailer = Mailer(gateway, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<utf8-via-postfix@example.com>").replace(
        b"From: Paula Contributor", "From: Paula Müller".encode()).replace(
        b"Subject: Pump P-7 inspected", "Subject: Pumpe P-7 geprüft".encode()))
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as client:
        client.ehlo("client.example.com")
        assert client.sendmail(PAULA, [to], raw, mail_options=["SMTPUTF8", "BODY=8BITMIME"]) == {}
    line = postfix.wait_for_log(f"to=<{to}>", "status=")
    assert "status=sent" in line and "250 2.0.0 Filed as Odoo message" in line, line
    [post] = test_odoo.posts()
    assert post.kwargs["message_id"] == "<utf8-via-postfix@example.com>"


def _readme_postfix(gateway, sink) -> Postfix:
    """A Postfix set up as the README's "How mail reaches the gateway" says, in front of ``gateway``.

    Its main.cf and master.cf lines are used as written; only the gateway's port and what the test
    instance itself needs (chroot, the listening address) differ.
    """
    example = readme_postfix_example()
    assert example.main_cf["relay_domains"] == ALIAS_DOMAIN and example.smtpd[-1] == "smtpd"
    options = {name: value.replace("127.0.0.1:2525", f"127.0.0.1:{gateway.port}")
               for name, value in example.smtpd_options.items()}
    assert options != example.smtpd_options
    settings = {key: value for key, value in example.main_cf.items() if key != "relay_domains"}
    return Postfix(relay_domains=[ALIAS_DOMAIN], settings=settings, smtpd_options=options,
                   smtpd_maxproc=example.smtpd[6],
                   transports={**example.transports, "example.com": f"smtp:[127.0.0.1]:{sink.controller.port}"}).start()


def _readme_gateway(start_gateway, dns_server):
    example = readme_postfix_example()
    return start_gateway(dns_server.port, listener_extra="".join(
        f"{key} = {json.dumps(value)}\n" for key, value in example.listener.items()))


def test_the_readme_postfix_setup_refuses_in_the_senders_own_session_and_bounces_nothing(
        start_gateway, dns_server, sink, test_odoo, dkim_keys):
    # A review of the gateway behind Postfix: the README's after-queue setup (Postfix queued, then
    # relayed over LMTP) turned every refusal into a bounce to the envelope sender, which may be
    # forged: unsigned spam to a note address, made-up addresses, auto-replies all came back as
    # delivery status notifications to bystanders. As a before-queue proxy filter, the sending
    # server gets the gateway's own reply in its session, and Postfix writes no bounce.
    gateway = _readme_gateway(start_gateway, dns_server)
    postfix = _readme_postfix(gateway, sink)
    try:
        mailer = Mailer(gateway, dkim_keys)
        to = mailer.address("note", "project.task", TASK_ID)
        forged = mailer.message("note_from_contributor.eml", to).replace(b"portal.contrib@example.com",
                                                                          b"ceo@example.com")
        with smtplib.SMTP("127.0.0.1", postfix.port, timeout=60) as client:
            client.ehlo("client.example.com")
            # Unsigned, the envelope sender a bystander's: refused at the end of DATA, in session.
            assert client.mail("innocent.bystander@example.com")[0] == 250
            assert client.rcpt(to)[0] == 250
            code, text = client.data(forged)
            assert (code, text) == (550, b"5.7.1 Sender not authenticated, no valid DKIM signature aligned with "
                                    b"the From domain: no DKIM signature"), text
            client.rset()
            # A made-up address of the alias domain: refused at RCPT.
            assert client.mail("innocent.bystander@example.com")[0] == 250
            code, text = client.rcpt(f"info@{ALIAS_DOMAIN}")
            assert code == 550 and text.startswith(b"5.1.1 No such gateway address"), text
            client.rset()
            # An auto-reply, signed: refused as automatic mail.
            auto = mailer.sign(mailer.message("note_from_contributor.eml", to).replace(
                b"Subject: Pump P-7 inspected", b"Auto-Submitted: auto-replied\r\nSubject: Automatic reply: Pump P-7"))
            assert client.mail(PAULA)[0] == 250 and client.rcpt(to)[0] == 250
            assert client.data(auto) == (550, b"5.7.1 Automatic replies, bulk and list mail are not filed: "
                                              b"Auto-Submitted: auto-replied")
            # A signed note, with UTF-8 header fields (Postfix offers SMTPUTF8 and passes it on):
            # filed, and the gateway's 250 is the one the sending server gets.
            signed = mailer.sign(mailer.message("note_from_contributor.eml", to, "<before-queue@example.com>").replace(
                b"Subject: Pump P-7 inspected", "Subject: Pumpe P-7 geprüft".encode()))
            assert client.has_extn("smtputf8")
            assert client.mail(PAULA, ["SMTPUTF8", "BODY=8BITMIME"])[0] == 250 and client.rcpt(to)[0] == 250
            code, text = client.data(signed)
            assert code == 250 and text.startswith(b"2.0.0 Filed as Odoo message"), text
        time.sleep(2)  # what a bounce would take to be written and sent, were one queued
        assert sink.messages == []
        assert "Mail queue is empty" in postfix.queue()
        assert "status=bounced" not in postfix.log() and "sender non-delivery notification" not in postfix.log()
    finally:
        postfix.stop()
    [post] = test_odoo.posts()
    assert post.kwargs["message_id"] == "<before-queue@example.com>"
    assert sorted(row.refusal_class or row.verdict for row in _journal(gateway)) == [
        "AutomaticMessage", "BadAddress", "SenderNotAuthenticated", "filed"]


def test_refusal_at_data_comes_back_as_a_postfix_bounce(front, test_odoo, dkim_keys, sink):
    # Postfix took the message (250 queued) before the gateway saw it, so the gateway's 550 at
    # the end of DATA can only come back as a bounce (a DSN, RFC 3464) to the envelope sender.
    gateway, postfix = front(protocol="smtp")
    mailer = Mailer(gateway, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_non_member.eml", to))
    assert _submit(postfix, raw, [to], mail_from="portal.plain@example.com") == {}

    line = postfix.wait_for_log(f"to=<{to}>")
    assert "status=bounced" in line and "dsn=5.7.1" in line
    assert "said: 550 5.7.1 Sender may not post internal notes" in line and "in reply to end of DATA command" in line
    assert test_odoo.posts() == []

    [(mail_from, rcpt_tos, bounce)] = sink.wait(1)  # the null reverse-path of a DSN (RFC 5321 4.5.5)
    assert mail_from == "<>" and rcpt_tos == ["portal.plain@example.com"]
    report = email.message_from_bytes(bounce, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report" and report.get_param("report-type") == "delivery-status"
    status = next(part for part in report.walk() if part.get_content_type() == "message/delivery-status")
    # RFC 3464 section 2.1: the per-message fields, then one group of fields per recipient.
    _per_message, recipient = status.get_payload()

    def field(name: str) -> str:
        return " ".join(str(recipient[name]).split())

    assert field("Final-Recipient") == f"rfc822; {to}"
    assert field("Action") == "failed" and field("Status") == "5.7.1"
    assert field("Diagnostic-Code") == ("smtp; 550 5.7.1 Sender may not post internal notes: "
                                        "portal.plain@example.com is not in the contributor group")


def test_bad_address_is_rejected_in_session_by_recipient_verification(front, test_odoo, dkim_keys):
    # reject_unverified_recipient makes Postfix ask the gateway at RCPT (a probe that stops after
    # RCPT) before it takes the message, so a refused address is refused to the sending client
    # itself, in its SMTP session, and no bounce is ever written.
    gateway, postfix = front(protocol="smtp", settings={
        "smtpd_recipient_restrictions": "reject_unauth_destination, reject_unverified_recipient",
        "unverified_recipient_reject_code": "550",
        "address_verify_map": "",
        "address_verify_poll_delay": "1s",
    })
    mailer = Mailer(gateway, dkim_keys)
    good = mailer.address("note", "project.task", TASK_ID)
    local, _, domain = good.partition("@")
    bad = f"{local[:-4]}{'aaaa' if not local.endswith('aaaa') else 'bbbb'}@{domain}"  # signature changed
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=60) as client:
        client.ehlo("client.example.com")
        assert client.mail(PAULA)[0] == 250
        code, text = client.rcpt(bad)
        assert code == 550, text
        assert b"Recipient address rejected: undeliverable address" in text and b"550 5.1.1" in text
        code, text = client.rcpt(good)
        assert code == 250, text
        raw = mailer.sign(mailer.message("note_from_contributor.eml", good))
        assert client.data(raw)[0] == 250
    # The probe is logged too ("status=deliverable"); the delivery is the line that says sent.
    line = postfix.wait_for_log(f"to=<{good}>", "status=sent")
    assert f"relay=127.0.0.1[127.0.0.1]:{gateway.port}" in line
    assert len(test_odoo.posts()) == 1
    assert f"to=<{bad}>" not in "".join(l for l in postfix.log().splitlines() if "status=bounced" in l)


@pytest.mark.skipif(not opendkim.available(), reason="OpenDKIM is not installed (apt-get install opendkim "
                                                      "opendkim-tools; .ci/run does it)")
def test_mail_signed_by_opendkim_milter_is_verified_and_filed(front, test_odoo):
    with opendkim.OpenDkim("example.com", selector="odkim") as signer, \
            dnsmasq.Dnsmasq({signer.record_name: signer.txt_record}) as dns:
        # Only OpenDKIM's key is published: a message the gateway files was signed by OpenDKIM.
        gateway, postfix = front(protocol="smtp", dns_port=dns.port, settings={
            "smtpd_milters": signer.milter,
            # A milter that fails must hold mail back, not pass it on unsigned.
            "milter_default_action": "tempfail",
        })
        to = Mailer.address("note", "project.task", TASK_ID)
        raw = Mailer.message("note_from_contributor.eml", to, "<signed-by-opendkim@example.com>")
        assert b"DKIM-Signature" not in raw
        assert _submit(postfix, raw, [to]) == {}
        line = postfix.wait_for_log(f"to=<{to}>")
        assert "status=sent" in line and "250 2.0.0 Filed as Odoo message" in line, postfix.log()
    [post] = test_odoo.posts()
    assert post.kwargs["message_id"] == "<signed-by-opendkim@example.com>"
    [row] = _journal(gateway)
    assert row.verdict == "filed" and row.dkim_domain == "example.com"
