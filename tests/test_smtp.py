"""The listener itself: LMTP mode, the session cap, and unexpected errors that must defer, never crash."""

from __future__ import annotations

import smtplib
import socket

import pytest

from conftest import Mailer

from gateway import pipeline
from gateway.testing.odoo_demo import TASK_ID


def test_lmtp_listener_files_a_note(test_odoo, start_gateway, dns_server, dkim_keys):
    gateway = start_gateway(dns_server.port, listener_extra='protocol = "lmtp"')
    mailer = Mailer(gateway, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to))
    with smtplib.LMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.ehlo("client.example.com")  # smtplib's LMTP speaks LHLO here
        refused = client.sendmail("portal.contrib@example.com", [to], raw)
    assert refused == {}
    [post] = test_odoo.posts()
    assert post.kwargs["subtype_xmlid"] == "mail.mt_note"


@pytest.mark.parametrize("protocol", ["smtp", "lmtp"])
def test_without_tls_auth_is_not_offered_and_an_unknown_command_gets_500(start_gateway, dns_server, protocol):
    # AUTH got aiosmtpd's "538 5.7.11 Encryption required", as if it would work over TLS; it never
    # does (no authentication in the gateway). Without require_starttls, an unknown command keeps its 500.
    gateway = start_gateway(dns_server.port, listener_extra=f'protocol = "{protocol}"')
    client_class = smtplib.LMTP if protocol == "lmtp" else smtplib.SMTP
    with client_class("127.0.0.1", gateway.port, timeout=10) as client:
        assert client.ehlo("client.example.com")[0] == 250  # LHLO over LMTP
        assert not client.has_extn("auth")
        assert client.docmd("AUTH", "LOGIN") == (
            502, b"5.5.1 AUTH not implemented: the gateway takes mail without authentication")
        assert client.docmd("XYZZY") == (500, b'Error: command "XYZZY" not recognized')
        assert client.mail("portal.contrib@example.com")[0] == 250


def test_sessions_over_the_cap_get_421_and_others_keep_working(test_odoo, start_gateway, dns_server, dkim_keys):
    gateway = start_gateway(dns_server.port, listener_extra="max_sessions = 2")
    held = [smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) for _ in range(2)]
    try:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as extra:
            greeting = extra.recv(200)
        assert greeting.startswith(b"421 4.3.2 Too many sessions")
    finally:
        for client in held:
            client.quit()
    # Once sessions end, the listener takes new ones again.
    mailer = Mailer(gateway, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    assert mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to)), to).startswith("250 ")


def test_a_bug_in_a_stage_defers_the_message_and_the_server_keeps_serving(test_odoo, gateway, mailer, monkeypatch):
    broken = pipeline.Stage("render", "broken on purpose", lambda ctx, services, deadline: 1 / 0)
    stages = tuple(broken if stage.name == "render" else stage for stage in pipeline.STAGES)
    monkeypatch.setattr(pipeline, "STAGES", stages)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to))
    assert mailer.send(raw, to).startswith("451 4.3.0 Internal error, try again later: stage render")
    assert test_odoo.posts() == []
    monkeypatch.undo()
    assert mailer.send(raw, to).startswith("250 2.0.0 Filed")
