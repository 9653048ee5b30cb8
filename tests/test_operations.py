"""Operations (issue 5): STARTTLS, metrics and message log lines, log filters, doctor, systemd credentials."""

from __future__ import annotations

import json
import logging
import re
import smtplib
import socket
import sqlite3
import ssl
import time
import urllib.request
import warnings
from datetime import datetime, timedelta, timezone

import pytest

from conftest import ALIAS_DOMAIN, SECRET, Mailer, read_reply, write_config
from docs_snippets import readme_postfix_example

from gateway import cli, observe, odoorights, pipeline
from gateway.config import ConfigError, load_config
from gateway import doctor
from gateway.doctor import Report, check_journal, diagnose
from gateway.journal import SCHEMA_VERSION, Journal, JournalEntry
from gateway.testing.certificates import self_signed
from gateway.testing.configs import fresh_secret
from gateway.testing.dns import DnsServer
from gateway.testing.odoo import TestOdoo
from gateway.testing.odoo_demo import CONTRIBUTOR_GROUP_ID, GATEWAY_UID, PRIVATE_TASK_ID, SALE_ORDER_ID, TASK_ID

PAULA = "portal.contrib@example.com"


def _client_context(certificate) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certificate))
    context.check_hostname = True
    return context


@pytest.fixture
def tls_gateway(tmp_path, start_gateway, dns_server):
    certificate, key = self_signed(tmp_path, "notes.example.com")
    running = start_gateway(dns_server.port, listener_extra=(
        f'tls_certificate = "{certificate}"\ntls_key = "{key}"\nrequire_starttls = true'))
    return running, certificate


def test_starttls_is_required_before_mail(tls_gateway):
    running, _ = tls_gateway
    with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
        client.ehlo("client.example.com")
        assert client.has_extn("starttls")
        code, text = client.mail(PAULA)
        assert code == 530 and b"STARTTLS" in text


def test_note_is_filed_over_starttls_with_tls_12_or_newer(tls_gateway, dkim_keys, test_odoo):
    running, certificate = tls_gateway
    mailer = Mailer(running, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to))
    with smtplib.SMTP("127.0.0.1", running.port, timeout=20) as client:
        client.ehlo("client.example.com")
        client.starttls(context=_client_context(certificate))
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert client.sock.compression() is None
        client.ehlo("client.example.com")
        assert client.mail(PAULA)[0] == 250
        assert client.rcpt(to)[0] == 250
        code, text = client.data(raw)
    assert code == 250 and text.startswith(b"2.0.0 Filed as Odoo message")
    assert len(test_odoo.posts()) == 1


def test_tls_below_1_2_is_refused(tls_gateway):
    running, certificate = tls_gateway
    context = _client_context(certificate)
    with warnings.catch_warnings():
        # Python deprecates these versions, which is the point: the gateway must refuse them.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    # OpenSSL's default security level forbids 1.1 on the client too; level 0 lets the client try.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
        client.ehlo("client.example.com")
        with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionResetError)):
            client.starttls(context=context)


def test_every_command_but_noop_ehlo_starttls_quit_gets_530_5_7_0_before_tls(tls_gateway):
    running, _ = tls_gateway
    with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
        for command in ("HELO client.example.com", f"MAIL FROM:<{PAULA}>", "RCPT TO:<a@notes.example.com>", "DATA",
                        "RSET", "VRFY a", "HELP"):
            assert client.docmd(command) == (530, b"5.7.0 Must issue a STARTTLS command first"), command
        assert client.docmd("NOOP")[0] == 250
        assert client.ehlo("client.example.com")[0] == 250


def test_an_unknown_command_gets_530_5_7_0_before_tls_and_500_after(tls_gateway):
    # RFC 3207 section 4: before TLS every command but NOOP, EHLO, STARTTLS and QUIT is refused with
    # 530. Known commands were, but an unknown one got aiosmtpd's "500 Error: command not recognized".
    running, certificate = tls_gateway
    with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
        assert client.docmd("XYZZY") == (530, b"5.7.0 Must issue a STARTTLS command first")
        assert client.docmd("XYZZY", "plugh") == (530, b"5.7.0 Must issue a STARTTLS command first")
        client.ehlo("client.example.com")
        client.starttls(context=_client_context(certificate))
        client.ehlo("client.example.com")
        assert client.docmd("XYZZY") == (500, b'Error: command "XYZZY" not recognized')
        assert client.mail(PAULA)[0] == 250
    # They still count towards aiosmtpd's limit of unknown commands in a session.
    with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
        for attempt in range(4):
            assert client.docmd(f"XYZZY{attempt}")[0] == 530
        assert client.docmd("XYZZY") == (502, b"5.5.1 Too many unrecognized commands, goodbye.")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()


def test_auth_is_never_offered_and_refused_with_502_5_5_1(tls_gateway):
    # The gateway has no authentication, but after STARTTLS it advertised aiosmtpd's "AUTH LOGIN PLAIN"
    # and answered every attempt 535: a relay configured with credentials for this next hop tried
    # AUTH, failed, and deferred or bounced the mail (RFC 5321 section 4.2.4: a server must not
    # advertise what it answers 502).
    running, certificate = tls_gateway
    with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
        client.ehlo("client.example.com")
        assert not client.has_extn("auth")
        assert client.docmd("AUTH", "PLAIN AHVzZXIAcGFzc3dvcmQ=") == (530, b"5.7.0 Must issue a STARTTLS command first")
        client.starttls(context=_client_context(certificate))
        client.ehlo("client.example.com")
        assert not client.has_extn("auth"), client.esmtp_features
        for mechanism in ("PLAIN AHVzZXIAcGFzc3dvcmQ=", "LOGIN", "CRAM-MD5"):
            assert client.docmd("AUTH", mechanism) == (
                502, b"5.5.1 AUTH not implemented: the gateway takes mail without authentication"), mechanism
        assert b"AUTH" not in client.docmd("HELP")[1]
        assert client.mail(PAULA)[0] == 250


def test_lmtp_with_require_starttls_greets_with_lhlo_before_tls(tmp_path, start_gateway, dns_server, dkim_keys,
                                                                 test_odoo):
    # aiosmtpd's require_starttls allowed EHLO but not LHLO: a Postfix lmtp: client got 530 to its greeting.
    certificate, key = self_signed(tmp_path, "notes.example.com")
    running = start_gateway(dns_server.port, listener_extra=(
        f'protocol = "lmtp"\ntls_certificate = "{certificate}"\ntls_key = "{key}"\nrequire_starttls = true'))
    mailer = Mailer(running, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    with smtplib.LMTP("127.0.0.1", running.port, timeout=20) as client:
        assert client.ehlo("client.example.com")[0] == 250  # smtplib's LMTP sends LHLO
        assert client.has_extn("starttls")
        assert client.mail(PAULA) == (530, b"5.7.0 Must issue a STARTTLS command first")
        assert client.docmd("XYZZY") == (530, b"5.7.0 Must issue a STARTTLS command first")
        # EHLO is allowed before TLS, and is no LMTP command: LMTP's own 500 (RFC 2033 section 4.1).
        assert client.docmd("EHLO", "client.example.com") == (500, b'Error: command "EHLO" not recognized')
        assert not client.has_extn("auth")
        client.starttls(context=_client_context(certificate))
        client.ehlo("client.example.com")
        assert not client.has_extn("auth")
        refused = client.sendmail(PAULA, [to], mailer.sign(mailer.message("note_from_contributor.eml", to)))
    assert refused == {}
    assert len(test_odoo.posts()) == 1


def test_commands_pipelined_after_starttls_in_clear_are_discarded(tls_gateway):
    # RFC 3207 section 4.2 and CVE-2024-34083 (aiosmtpd < 1.4.6): a MAIL sent in clear behind STARTTLS,
    # by the client or by someone in the middle, must not run inside the encrypted session.
    running, certificate = tls_gateway
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        stream = sock.makefile("rb")
        read_reply(stream)
        sock.sendall(b"EHLO client.example.com\r\n")
        read_reply(stream)
        sock.sendall(b"STARTTLS\r\nEHLO evil.example.net\r\nMAIL FROM:<injected@example.net>\r\n")
        assert read_reply(stream) == [b"220 Ready to start TLS\r\n"]
        with _client_context(certificate).wrap_socket(sock, server_hostname="notes.example.com") as tls:
            tls_stream = tls.makefile("rb")
            # Run, the injected EHLO and MAIL would have answered first, and opened a transaction.
            tls.sendall(b"NOOP\r\n")
            assert read_reply(tls_stream) == [b"250 OK\r\n"]
            tls.sendall(b"RCPT TO:<note@notes.example.com>\r\n")
            assert read_reply(tls_stream) == [b"503 Error: send HELO first\r\n"]


def test_a_second_starttls_is_refused_and_the_session_goes_on(tls_gateway):
    # aiosmtpd answered it "220 Ready to start TLS" and waited for a handshake inside TLS.
    running, certificate = tls_gateway
    with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
        client.ehlo("client.example.com")
        client.starttls(context=_client_context(certificate))
        client.ehlo("client.example.com")
        assert not client.has_extn("starttls")
        assert client.docmd("STARTTLS") == (503, b"5.5.1 TLS already active")
        assert client.mail(PAULA)[0] == 250


@pytest.mark.parametrize("client_does", ["goes silent", "closes mid-handshake", "sends no TLS"])
def test_a_starttls_handshake_that_never_completes_frees_the_session(tmp_path, start_gateway, dns_server,
                                                                     client_does, caplog):
    # A handshake cut by the idle timer or by the client woke aiosmtpd as if it had succeeded: the
    # session then waited for ever, and kept its place in max_sessions until a restart.
    certificate, key = self_signed(tmp_path, "notes.example.com")
    running = start_gateway(dns_server.port, session_timeout=1, listener_extra=(
        f'tls_certificate = "{certificate}"\ntls_key = "{key}"\nrequire_starttls = true\nmax_sessions = 1'))
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        stream = sock.makefile("rb")
        read_reply(stream)
        sock.sendall(b"EHLO client.example.com\r\nSTARTTLS\r\n")
        read_reply(stream)
        assert read_reply(stream) == [b"220 Ready to start TLS\r\n"]
        if client_does == "closes mid-handshake":
            sock.sendall(bytes.fromhex("16030100"))  # the start of a TLS record, and no more
        elif client_does == "sends no TLS":
            sock.sendall(b"MAIL FROM:<portal.contrib@example.com>\r\n")
        else:
            assert sock.recv(100) == b""  # closed by the server at session_timeout
    ends = time.monotonic() + 10
    while True:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            greeting = sock.recv(200)
        if greeting.startswith(b"220 ") or time.monotonic() > ends:
            break
        assert greeting.startswith(b"421 4.3.2 Too many sessions")
        time.sleep(0.2)
    assert greeting.startswith(b"220 notes.example.com")
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_require_starttls_without_certificate_is_a_config_error(tmp_path, test_odoo):
    path = write_config(tmp_path, test_odoo, 53, listener_extra="require_starttls = true")
    with pytest.raises(ConfigError, match="listener: .*require_starttls needs tls_certificate"):
        load_config(path)


def test_api_key_from_systemd_credential(tmp_path, test_odoo):
    path = write_config(tmp_path, test_odoo, 53)
    text = path.read_text().replace('api_key_file = "odoo-api-key"', 'api_key_credential = "odoo-main"')
    path.write_text(text)
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY is not set"):
        load_config(path, environ={})
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "odoo-main").write_text("key-from-credential\n")
    config = load_config(path, environ={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert config.api_keys["main"] == "key-from-credential"


def test_credentials_directory_option_for_commands_run_by_hand(tmp_path, test_odoo, capsys, monkeypatch):
    from gateway.testing.odoo_demo import DEMO_API_KEY

    # Set, then removed: monkeypatch then restores the variable's absence after the option sets it.
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "unset")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    path = write_config(tmp_path, test_odoo, 53)
    path.write_text(path.read_text().replace('api_key_file = "odoo-api-key"', 'api_key_credential = "odoo-main"'))
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "odoo-main").write_text(DEMO_API_KEY)
    with pytest.raises(SystemExit):
        cli.main(["check-config", "--config", str(path)])
    assert "CREDENTIALS_DIRECTORY is not set" in capsys.readouterr().err
    assert cli.main(["--credentials-directory", str(credentials), "check-config", "--config", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: OK")


def test_address_secrets_from_systemd_credential(tmp_path, test_odoo):
    path = write_config(tmp_path, test_odoo, 53)
    rules = tmp_path / "rules" / "notes.example.com.toml"
    rules.write_text(rules.read_text().replace(f'secrets = ["{SECRET}"]',
                                               'secrets_credential = "address-secrets"'))
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    first, second = fresh_secret(), fresh_secret()
    (credentials / "address-secrets").write_text(f"{first}\n{second}\n")
    config = load_config(path, environ={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert config.secrets["notes.example.com"] == [first.encode(), second.encode()]
    (credentials / "address-secrets").write_text("short\n")
    with pytest.raises(ConfigError, match="line 1 of .*address-secrets: each secret needs at least 22 characters"):
        load_config(path, environ={"CREDENTIALS_DIRECTORY": str(credentials)})


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return observe.REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_metrics_and_one_json_line_per_message(test_odoo, gateway, mailer, caplog):
    filed = {"verdict": "filed", "refusal": "none", "odoo": "main"}
    filed_before = _sample("note_gateway_messages_total", filed)
    refused_before = _sample("note_gateway_messages_total",
                             {"verdict": "refused", "refusal": "RecordAccessDenied", "odoo": "main"})
    post_stage_before = _sample("note_gateway_stage_seconds_count", {"stage": "post"})
    odoo_calls_before = _sample("note_gateway_odoo_call_seconds_count", {"odoo": "main", "outcome": "ok"})

    caplog.set_level(logging.INFO, logger="gateway.messages")
    to = mailer.address("note", "project.task", TASK_ID)
    assert mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to)), to).startswith("250")
    private = mailer.address("note", "project.task", PRIVATE_TASK_ID)
    refused = mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", private)), private)
    assert refused.startswith("550")

    assert _sample("note_gateway_messages_total", filed) == filed_before + 1
    refusal_class = _journal(gateway)[0].refusal_class
    assert refusal_class == "RecordAccessDenied"
    assert _sample("note_gateway_messages_total",
                   {"verdict": "refused", "refusal": refusal_class, "odoo": "main"}) == refused_before + 1
    assert _sample("note_gateway_stage_seconds_count", {"stage": "post"}) == post_stage_before + 1
    assert _sample("note_gateway_odoo_call_seconds_count", {"odoo": "main", "outcome": "ok"}) > odoo_calls_before

    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "gateway.messages"]
    assert [line["verdict"] for line in lines] == ["filed", "refused"]
    filed, refusal = lines
    assert filed["event"] == "message" and filed["from_address"] == PAULA and filed["res_id"] == TASK_ID
    assert filed["smtp_reply"].startswith("250 2.0.0 Filed") and filed["odoo_message_id"] > 0
    assert list(filed["durations"]) == [stage.name for stage in pipeline.STAGES]
    assert refusal["refusal_class"] == refusal_class and refusal["smtp_reply"] == refused
    # The line names the journal row, so `note-gateway log --id N` shows the same message.
    assert refusal["journal_id"] == _journal(gateway)[0].id


def test_metrics_endpoint_serves_prometheus_text():
    server, thread = observe.serve_metrics("127.0.0.1", 0)
    try:
        observe.session_started()
        observe.session_ended()
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert "# TYPE note_gateway_sessions_in_flight gauge" in text
    assert "# TYPE note_gateway_messages_total counter" in text
    assert "note_gateway_stage_seconds_bucket" in text or "# TYPE note_gateway_stage_seconds histogram" in text


def _journal(gateway):
    with Journal(gateway.services.config.journal_path) as journal:
        return journal.recent(50)


def _run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_log_filters_and_one_decision(test_odoo, gateway, mailer, capsys):
    task = mailer.address("note", "project.task", TASK_ID)
    order = mailer.address("note", "sale.order", SALE_ORDER_ID)
    private = mailer.address("note", "project.task", PRIVATE_TASK_ID)
    for to in (task, order, private):
        mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to)), to)
    config = str(gateway.config_path)

    code, out, _ = _run_cli(capsys, "log", "--config", config, "--record", f"sale.order/{SALE_ORDER_ID}")
    assert code == 0 and f"sale.order/{SALE_ORDER_ID}" in out and "project.task" not in out

    code, out, _ = _run_cli(capsys, "log", "--config", config, "--record", "project.task")
    assert out.count("project.task/") == 2 and "sale.order" not in out

    code, out, _ = _run_cli(capsys, "log", "--config", config, "--verdict", "refused")
    assert len(out.splitlines()) == 2 and f"project.task/{PRIVATE_TASK_ID}" in out  # a header and one row

    code, out, _ = _run_cli(capsys, "log", "--config", config, "--since", "10m", "--sender", PAULA)
    assert len(out.splitlines()) == 4
    code, out, _ = _run_cli(capsys, "log", "--config", config, "--since", "2999-01-01T00:00:00")
    assert out.strip() == "No journal entries."
    code, _, err = _run_cli(capsys, "log", "--config", config, "--since", "yesterday")
    assert code == 2 and "--since" in err

    refused = next(entry for entry in _journal(gateway) if entry.verdict == "refused")
    code, out, _ = _run_cli(capsys, "log", "--config", config, "--id", str(refused.id))
    assert code == 0
    assert f"journal id     {refused.id}" in out
    assert f"verdict        refused ({refused.refusal_class})" in out
    assert f"reply          {refused.smtp_reply}" in out
    # What the reply leaves out for the operator only (review of refusal texts): the access policy.
    assert f"decision       refused RecordAccessDenied: {refused.smtp_reply[10:]} (odoo-rules)" in out
    assert "(odoo-rules)" not in refused.smtp_reply
    # Every stage that ran, in order, with its duration; the last is where the refusal stopped it.
    stage_lines = [line.split()[0] for line in out.split("stages:\n")[1].split("defects:")[0].splitlines()]
    assert stage_lines == list(refused.durations) and stage_lines[-1] == "authorize"
    code, _, err = _run_cli(capsys, "log", "--config", config, "--id", "999999")
    assert code == 1 and "no journal entry 999999" in err


def test_log_finds_the_rows_of_a_message_id_with_or_without_its_brackets(test_odoo, gateway, mailer, capsys):
    # Day-2 review: a contributor's complaint quotes the Message-ID of the mail that did not arrive,
    # and log had no way to find it but to scan every row by eye.
    task = mailer.address("note", "project.task", TASK_ID)
    private = mailer.address("note", "project.task", PRIVATE_TASK_ID)
    for to, message_id in ((task, "<complaint.1@example.com>"), (private, "<complaint.2@example.com>"),
                           (task, "<complaint.3@example.com>")):
        mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to, message_id)), to)
    config = str(gateway.config_path)
    for written in ("<complaint.2@example.com>", "complaint.2@example.com", " <complaint.2@example.com> "):
        code, out, err = _run_cli(capsys, "log", "--config", config, "--message-id", written)
        assert (code, err) == (0, "")
        header, *rows = out.splitlines()
        assert len(rows) == 1 and rows[0].split()[1] == "refused" and rows[0].endswith(" <complaint.2@example.com>")
    # With the other filters, as they combine.
    code, out, _ = _run_cli(capsys, "log", "--config", config, "--message-id", "complaint.2@example.com",
                            "--verdict", "filed")
    assert out.strip() == "No journal entries."
    # Not a prefix or a part of one: the whole msg-id.
    code, out, _ = _run_cli(capsys, "log", "--config", config, "--message-id", "complaint.2@example")
    assert (code, out.strip()) == (0, "No journal entries.")
    for nothing in ("<>", "complaint", "(added by mx.example.com)"):
        code, _, err = _run_cli(capsys, "log", "--config", config, "--message-id", nothing)
        assert code == 2 and err.startswith("note-gateway: --message-id: empty or not a msg-id")


def test_log_reads_a_message_id_as_the_gateway_stored_it(test_odoo, gateway, mailer, capsys):
    # Shape review: --message-id stripped brackets and spaces its own way while the gateway files a
    # message under message.own_message_id (whitespace inside <...> deleted, a relay's comment
    # dropped), so the header copied from the message - folded, with a comment, "< id >" - found no row.
    task = mailer.address("note", "project.task", TASK_ID)
    folded = "<1733.1-openerp-\r\n 60-project.task@erp.example.com> (added by mx.example.com)"
    mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", task, folded)), task)
    stored = "<1733.1-openerp-60-project.task@erp.example.com>"
    with Journal(gateway.services.config.journal_path) as journal:
        # A row of a journal written before own_message_id, which kept a header without brackets as it was.
        journal.record(JournalEntry(verdict="refused", received_at=time.time(), message_id="legacy.1@example.com"))
    config = str(gateway.config_path)
    for written in (stored, stored.strip("<>"), folded, "<1733.1-openerp- 60-project.task@erp.example.com>",
                    "<1733.1-openerp-60-project.task@erp.example.com> (added by mx.example.com)",
                    "< 1733.1-openerp-60-project.task@erp.example.com >"):
        code, out, err = _run_cli(capsys, "log", "--config", config, "--message-id", written)
        assert (code, err) == (0, "")
        header, *rows = out.splitlines()
        assert len(rows) == 1 and rows[0].split()[1] == "filed" and rows[0].endswith(f" {stored}"), written
    for written in ("<legacy.1@example.com>", "legacy.1@example.com (sent by a script)"):
        code, out, err = _run_cli(capsys, "log", "--config", config, "--message-id", written)
        header, *rows = out.splitlines()
        assert (code, err, len(rows)) == (0, "", 1) and rows[0].endswith(" legacy.1@example.com")


def test_prune_journal_deletes_only_rows_nothing_reads_any_more_while_the_gateway_serves(gateway, mailer, capsys):
    # Crash review 2: nothing ever deleted journal rows, and no doc said how to keep its size in check.
    import time

    task = mailer.address("note", "project.task", TASK_ID)
    mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", task, "<kept@example.com>")), task)
    old, recent = time.time() - 40 * 86400, time.time() - 60
    path = gateway.services.config.journal_path
    with Journal(path) as journal:
        journal.record(JournalEntry(verdict="filed", received_at=old, message_id="<old@example.com>"))
        journal._connection.execute("INSERT INTO notices VALUES ('a@example.com', 'NotContributor', '2026-01-01', ?)",
                                    (old,))
        journal.mark_unsettled("<old@example.com>", "project.task", TASK_ID, PAULA, since=old)
        journal.mark_unsettled("<recent@example.com>", "project.task", TASK_ID, PAULA, since=recent)
        journal.begin(received_at=old, message_id="<open@example.com>", peer="127.0.0.1", mail_from=PAULA,
                      rcpt=task, from_address=PAULA, kind="note", model="project.task", res_id=TASK_ID)
    config = str(gateway.config_path)

    code, _, err = _run_cli(capsys, "prune-journal", "--config", config, "--keep-days", "0")
    assert code == 2
    assert "--keep-days 0 is shorter than the journal rows still in use: the rate-limit window of 120 minutes " \
           "needs --keep-days 1 or more" in err
    code, out, _ = _run_cli(capsys, "prune-journal", "--config", config, "--keep-days", "30")
    assert code == 0
    assert out.strip() == "deleted rows older than 30 days: messages 1, notices 1, unsettled_posts 1"
    with Journal(path) as journal:
        assert [entry.message_id for entry in journal.recent(10)] == ["<kept@example.com>"]
        assert journal.open_receipts() == 1
        assert journal.unsettled_since("<recent@example.com>", "project.task", TASK_ID, PAULA) == recent
    # The running gateway goes on writing to the same file.
    reply = mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", task, "<after@example.com>")), task)
    assert reply.startswith("250 2.0.0 Filed"), reply
    assert [entry.message_id for entry in _journal(gateway)] == ["<after@example.com>", "<kept@example.com>"]


# What prune-journal says after a rules file it cannot read (cli.command_prune_journal).
PRUNE_REFUSED = ("; nothing deleted, as the running gateway may still count rows older than --keep-days for the "
                 "rate limits there: correct it, or pass --ignore-unreadable-rules to prune without checking their "
                 "windows")


def test_log_and_prune_journal_work_through_a_broken_rules_file_and_without_the_credentials(gateway, mailer, capsys,
                                                                                           monkeypatch):
    # Day-2 review: both read the whole configuration, so a TOML typo in any rules file (which a
    # reload refuses while the gateway goes on serving) or a secret only systemd hands over ("run
    # under systemd with LoadCredential=...") stopped them with exit 2: the journal could not be
    # read during the very incident it would explain. They read the journal's path and the names
    # and windows they need, and say what they could not read.
    task = mailer.address("note", "project.task", TASK_ID)
    reply = mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", task, "<incident@example.com>")), task)
    assert reply.startswith("250 2.0.0 Filed"), reply
    config = str(gateway.config_path)
    folder = gateway.config_path.parent
    rules = folder / "rules" / f"{ALIAS_DOMAIN}.toml"
    broken = folder / "rules" / "other.example.com.toml"
    broken.write_text('domain = "other.example.com"\nodoo = "main"\n[note\nmodels = ["project.task"]\n')

    code, out, err = _run_cli(capsys, "log", "--config", config)
    assert code == 0 and "<incident@example.com>" in out, err
    [warning] = err.splitlines()
    assert warning.startswith(f"note-gateway: warning: {broken}: not valid TOML: ")
    assert warning.endswith("; the journal's rows are listed all the same")
    # Reading is lenient, deleting is not: prune-journal refuses, naming the file, unless the admin
    # passes the override (test_prune_journal_refuses_while_a_rules_file_cannot_be_read).
    code, out, err = _run_cli(capsys, "prune-journal", "--config", config, "--keep-days", "30")
    assert (code, out) == (2, "")
    [refusal] = err.splitlines()
    assert refusal.startswith(f"note-gateway: {broken}: not valid TOML: ")
    assert refusal.endswith(PRUNE_REFUSED)
    code, out, err = _run_cli(capsys, "prune-journal", "--config", config, "--keep-days", "30",
                              "--ignore-unreadable-rules")
    assert code == 0 and out.startswith("deleted rows older than 30 days: messages 0"), err
    [warning] = err.splitlines()
    assert warning.startswith(f"note-gateway: warning: {broken}: not valid TOML: ")
    assert warning.endswith("; the rate-limit windows there are not checked against --keep-days")
    # The readable rules file's window is still checked.
    code, _, err = _run_cli(capsys, "prune-journal", "--config", config, "--keep-days", "0",
                            "--ignore-unreadable-rules")
    assert code == 2 and "the rate-limit window of 120 minutes needs --keep-days 1 or more" in err
    broken.unlink()

    # The secrets and the API key as the systemd unit hands them over, read by the gateway's user only.
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    rules.write_text(re.sub(r"(?m)^secrets = .*$", 'secrets_credential = "address-secrets"', rules.read_text()))
    gateway.config_path.write_text(gateway.config_path.read_text().replace(
        'api_key_file = "odoo-api-key"', 'api_key_credential = "odoo-main"'))
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY is not set"):
        load_config(config, environ={})
    code, out, err = _run_cli(capsys, "log", "--config", config, "--limit", "5")
    assert (code, err) == (0, "") and "<incident@example.com>" in out
    code, out, err = _run_cli(capsys, "prune-journal", "--config", config, "--keep-days", "30")
    assert (code, err) == (0, "") and out.startswith("deleted rows older than 30 days: ")
    # A credentials folder the admin may not read is no obstacle either: nothing in it is read.
    code, out, err = _run_cli(capsys, "--credentials-directory", str(folder / "no-such-folder"), "log", "--config",
                              config)
    assert (code, err) == (0, "") and "<incident@example.com>" in out


def test_prune_journal_refuses_while_a_rules_file_cannot_be_read(start_gateway, dns_server, dkim_keys, capsys):
    # Found by a behaviour review: with a rules file it could not read (a typo the running gateway
    # refused to reload), prune-journal only warned and checked --keep-days against the other
    # files' windows, deleting rows the running gateway, with its last good copy of that file and
    # its 3-day window, still counted: the sender's rate limit was reset. It refuses now (exit 2,
    # the file and the override named), and deletes them only when the admin says so.
    gateway = start_gateway(dns_server.port, rules_extra="[rate_limit]\nper_sender = 1\nwindow_minutes = 4320\n")
    mailer = Mailer(gateway, dkim_keys)
    task = mailer.address("note", "project.task", TASK_ID)
    reply = mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", task, "<monday@example.com>")), task)
    assert reply.startswith("250 2.0.0 Filed"), reply
    path = gateway.services.config.journal_path
    with Journal(path) as journal:
        journal._connection.execute("UPDATE messages SET received_at = ?", (time.time() - 2 * 86400,))
    rules = gateway.config_path.parent / "rules" / f"{ALIAS_DOMAIN}.toml"
    rules.write_text(rules.read_text().replace("[rate_limit]", "[rate_limit"))
    config = str(gateway.config_path)

    code, out, err = _run_cli(capsys, "prune-journal", "--config", config, "--keep-days", "1")
    assert (code, out) == (2, "")
    [refusal] = err.splitlines()
    assert refusal.startswith(f"note-gateway: {rules}: not valid TOML: ")
    assert refusal.endswith(PRUNE_REFUSED)
    # The row is kept, and the running gateway still counts it.
    reply = mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", task, "<tuesday@example.com>")), task)
    assert reply == "450 4.7.1 Too many messages from this sender, try again later: 1 in 4320 minutes"

    # The admin's explicit choice: the window of that file is not checked, and the row goes.
    code, out, err = _run_cli(capsys, "prune-journal", "--config", config, "--keep-days", "1",
                              "--ignore-unreadable-rules")
    assert code == 0 and out.strip() == "deleted rows older than 1 days: messages 1, notices 0, unsettled_posts 0", err
    [warning] = err.splitlines()
    assert warning.startswith(f"note-gateway: warning: {rules}: not valid TOML: ")
    assert warning.endswith("; the rate-limit windows there are not checked against --keep-days")
    reply = mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", task, "<tuesday@example.com>")), task)
    assert reply.startswith("250 2.0.0 Filed"), reply


def _report_text(report) -> str:
    return "\n".join(report.lines)


def test_doctor_passes_on_a_healthy_gateway(tmp_path, test_odoo, dns_server, capsys):
    certificate, key = self_signed(tmp_path, "notes.example.com", days=90)
    path = write_config(tmp_path, test_odoo, dns_server.port,
                        listener_extra=f'tls_certificate = "{certificate}"\ntls_key = "{key}"')
    code, out, _ = _run_cli(capsys, "doctor", "--config", str(path))
    assert code == 0, out
    assert f"ok    odoo main: logged in to {test_odoo.url} database {test_odoo.database} as gateway, Odoo 18" in out
    # The checks of check-config --online, shared (operator review: doctor ran fewer of them).
    assert ("ok    odoo main: notes.example.com: contributor group note_gateway.group_portal_note_contributor is "
            "res.groups 52") in out
    assert "ok    odoo main: notes.example.com: project.task has a chatter and is readable" in out
    assert "ok    odoo main: notes.example.com: sale.order has a chatter and is readable" in out
    assert "ok    odoo main: notes.example.com: project.task: 6 read rules, 6 evaluable" in out
    assert "ok    resolver: 127.0.0.1:" in out
    assert "ok    odoo main: the gateway's clock agrees with Odoo's within " in out
    assert "ok    journal:" in out and "ok    tls:" in out and " days)" in out
    assert out.rstrip().endswith("everything looks right")


CLOCK_FIX = ("      fix: synchronise the clocks with NTP: on the gateway's host `timedatectl set-ntp true` "
             "(systemd-timesyncd) or chrony, and `timedatectl timesync-status` to see it work; if Odoo's host is "
             "the one that is wrong, there (docs/operations.md, \"Time\")")


def test_doctor_fails_a_clock_that_disagrees_with_odoos(tmp_path, test_odoo, dns_server, capsys):
    # Day-2 operations review: with the gateway's clock 20 minutes slow every freshly signed note
    # was refused ("signature is dated in the future"), and doctor said everything looked right.
    # Odoo's clock, by the Date header of its answer, is the one at hand to compare with.
    path = write_config(tmp_path, test_odoo, dns_server.port)
    test_odoo.clock_offset = 1200  # Odoo 20 minutes ahead: the gateway's clock 20 minutes behind.
    report = diagnose(str(path))
    assert report.problems == 1, _report_text(report)
    assert ("FAIL  odoo main: the gateway's clock is 20 minutes behind Odoo's: DKIM signatures made now are dated "
            "ahead of the gateway's clock, and once that is more than 15 minutes every message is deferred "
            "(451 4.7.0) until the clocks agree; more than 9 hours 50 minutes ahead, every message is refused "
            "(550 5.7.1) and bounces\n" + CLOCK_FIX) in _report_text(report)
    test_odoo.clock_offset = -300
    text = _report_text(diagnose(str(path)))
    assert ("FAIL  odoo main: the gateway's clock is 5 minutes ahead of Odoo's: the dates of DKIM signatures (t=, x=), "
            "of dated addresses and of the API keys' expiry are read by a clock that runs ahead: signatures look "
            "older than they are and expire early\n" + CLOCK_FIX) in text
    # In the words of the 451 reply it foretells (observe.duration), not "3.1 hours" (shape review).
    test_odoo.clock_offset = 3 * 3600 + 300
    text = _report_text(diagnose(str(path)))
    assert "FAIL  odoo main: the gateway's clock is 3 hours 5 minutes behind Odoo's: " in text
    # A minute apart is within what doctor lets pass (CLOCK_SKEW_FAIL_SECONDS).
    test_odoo.clock_offset = 60
    text = _report_text(diagnose(str(path)))
    assert "ok    odoo main: the gateway's clock agrees with Odoo's within 6" in text
    code, out, _ = _run_cli(capsys, "doctor", "--config", str(path))
    assert code == 0, out


def test_doctor_names_each_problem_and_what_to_fix(tmp_path, test_odoo, capsys):
    # No DNS server on this port, a model Odoo does not have, a group that does not exist,
    # and an expired certificate.
    certificate, key = self_signed(tmp_path, "notes.example.com", days=10,
                                   not_before=datetime.now(timezone.utc) - timedelta(days=40))
    path = write_config(tmp_path, test_odoo, 9, listener_extra=f'tls_certificate = "{certificate}"\ntls_key = "{key}"')
    rules = tmp_path / "rules" / "notes.example.com.toml"
    rules.write_text(rules.read_text()
                     .replace('models = ["project.task", "sale.order"]\ncontributor_group',
                              'models = ["project.task", "crm.nothing"]\ncontributor_group', 1)
                     .replace("note_gateway.group_portal_note_contributor", "note_gateway.group_missing"))
    path.write_text(path.read_text().replace("timeout = 3", "timeout = 0.5"))
    report = diagnose(str(path))
    text = _report_text(report)
    assert "FAIL  resolver: 127.0.0.1:9 nameservers: " in text
    assert (f"FAIL  odoo main: {rules}: note.contributor_group: note_gateway.group_missing not "
            "found in Odoo or not readable by gateway\n      fix: run note-gateway setup-odoo") in text
    assert (f"FAIL  odoo main: {rules}: models: crm.nothing does not exist in Odoo\n"
            "      fix: install the module of crm.nothing, or remove it from the rules' models") in text
    assert "ok    odoo main: notes.example.com: project.task has a chatter and is readable" in text
    assert "FAIL  tls:" in text and "expired on" in text
    assert report.problems == 4
    assert text.count("      fix: ") == 4

    code, out, _ = _run_cli(capsys, "doctor", "--config", str(path))
    assert code == 1 and out.rstrip().endswith("4 problem(s), 0 warning(s)")


def _journal_report(path, now=time.time) -> str:
    report = Report()
    check_journal(type("Config", (), {"journal_path": path})(), report, now=now)
    return _report_text(report)


def test_doctor_fails_a_journal_whose_file_system_is_full(tmp_path, monkeypatch):
    # A review: with the journal's tmpfs full every message got "451 ... database or disk is full",
    # and doctor said "ok journal: ... is writable ... everything looks right".
    path = tmp_path / "journal.sqlite3"
    with Journal(path) as journal:
        journal.record(JournalEntry(verdict="filed"))
    usage = type("Usage", (), {"free": 3 * 1024 * 1024})
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda folder: usage)
    assert _journal_report(path) == (f"FAIL  journal: {tmp_path} has 3.0 MiB free: every message is deferred (451) "
                                     "until there is room\n      fix: free space on that file system")
    usage.free = 100 * 1024 * 1024
    text = _journal_report(path)
    assert text.startswith(f"WARN  journal: {tmp_path} has 100.0 MiB free\n") and "ok    journal:" in text


def test_doctor_fails_a_damaged_journal_and_says_how_to_keep_its_receipts(tmp_path):
    # A review overwrote an index page while serving: every message got "451 ... database disk image
    # is malformed", and doctor, which read one row through another index, said it was writable.
    path = tmp_path / "journal.sqlite3"
    with Journal(path) as journal:
        for index in range(200):
            journal.record(JournalEntry(verdict="filed", from_address=f"sender{index}@example.com"))
    import sqlite3
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        [root] = connection.execute("SELECT rootpage FROM sqlite_master WHERE name = 'messages_sender'").fetchone()
    with open(path, "r+b") as file:
        file.seek((root - 1) * page_size)
        file.write(b"\xff" * page_size)
    text = _journal_report(path)
    assert text.startswith(f"FAIL  journal: {path} is damaged: "), text
    assert "sqlite3 journal.sqlite3 .recover" in text and "drops its receipts and unsettled posts" in text


def test_doctor_tells_a_journal_of_a_newer_gateway_from_a_damaged_one(tmp_path):
    # Day-2 operations review of upgrades: a journal a newer gateway migrated, read by an older
    # one after a downgrade, got "stop the gateway, then sqlite3 journal.sqlite3 .recover ...",
    # which cannot make it older.
    path = tmp_path / "journal.sqlite3"
    with Journal(path) as journal:
        journal.record(JournalEntry(verdict="filed", received_at=time.time()))
    with sqlite3.connect(path) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    text = _journal_report(path)
    assert text == (f"FAIL  journal: journal {path} has schema version {SCHEMA_VERSION + 1}, newer than the "
                    f"{SCHEMA_VERSION} this gateway knows; was it written by a newer gateway?\n"
                    "      fix: a newer gateway migrated it, and migrations have no step back: install that version "
                    "(or a newer one) again, or stop the gateway and put back the journal's backup taken before the "
                    "upgrade (docs/operations.md, \"Upgrading\")")


def test_doctor_reports_the_journal_size_and_warns_when_nobody_prunes_it(tmp_path):
    path = tmp_path / "journal.sqlite3"
    with Journal(path) as journal:
        journal.record(JournalEntry(verdict="filed", received_at=time.time() - 30 * 86400))
    text = _journal_report(path)
    assert text.startswith(f"ok    journal: {path} is writable, ") and text.endswith(", its oldest row 30 days old")
    text = _journal_report(path, now=lambda: time.time() + 100 * 86400)
    assert text.startswith(f"WARN  journal: {path} is writable, ") and ", its oldest row 130 days old\n" in text
    assert text.endswith("fix: prune it daily from a timer: note-gateway prune-journal --keep-days 90 (docs/operations.md)")


def test_doctor_reports_a_rejected_api_key(tmp_path, test_odoo, dns_server):
    path = write_config(tmp_path, test_odoo, dns_server.port)
    (tmp_path / "odoo-api-key").write_text("not-the-key\n")
    text = _report_text(diagnose(str(path)))
    # Operator review, item 11: the key refused is said so, with the database and the login.
    assert (f"FAIL  odoo main: cannot log in: Odoo at {test_odoo.url} refused the credentials of login gateway on "
            "database notes (Wrong login ID or password): a configuration problem, not an outage\n"
            "      fix: check that the API key (api_key_file odoo-api-key) is a current key of the Odoo user "
            "gateway (Preferences > Account Security > New API Key) and that the user is active") in text


def test_doctor_reports_a_stopped_odoo_as_unreachable(tmp_path, test_odoo, dns_server):
    # Operator review, item 11: it said "URLError logging in to Odoo" and pointed at the API key.
    path = write_config(tmp_path, test_odoo, dns_server.port)
    url = test_odoo.url
    test_odoo.stop()
    text = _report_text(diagnose(str(path)))
    assert (f"FAIL  odoo main: cannot log in: cannot reach Odoo at {url}: ConnectionRefusedError: [Errno 111] "
            "Connection refused\n"
            "      fix: check url, that Odoo is running, and that this host can reach it (network, firewall, proxy)"
            ) in text
    assert "API key" not in text


def test_doctor_warns_of_a_certificate_near_its_end(tmp_path, test_odoo, dns_server):
    certificate, key = self_signed(tmp_path, "notes.example.com", days=10)
    path = write_config(tmp_path, test_odoo, dns_server.port,
                        listener_extra=f'tls_certificate = "{certificate}"\ntls_key = "{key}"')
    report = diagnose(str(path))
    assert report.problems == 0 and report.warnings == 1
    assert "WARN  tls:" in _report_text(report) and "in 10 days" in _report_text(report)


def test_doctor_names_an_empty_host_as_every_interface(tmp_path, test_odoo, dns_server):
    # It said "no certificate, yet the listener is on " with a blank (operator review); host = ""
    # listens on 0.0.0.0 and :: at once, and the warning says so.
    path = write_config(tmp_path, test_odoo, dns_server.port)
    path.write_text(path.read_text().replace('host = "127.0.0.1"', 'host = ""', 1))
    report = diagnose(str(path))
    assert report.problems == 0 and report.warnings == 1
    assert ("WARN  tls: no certificate, yet the listener is on every interface (0.0.0.0 and ::)\n"
            "      fix: set [listener] tls_certificate, tls_key and require_starttls when it faces the internet"
            ) in _report_text(report)


def test_doctor_runs_the_online_checks_of_check_config(tmp_path, dns_server, capsys):
    # Operator review: before setup-odoo, doctor said "everything looks right" while every message
    # was deferred (451, Odoo refused ir.model.access.search_read); check-config --online knew.
    with TestOdoo.with_demo_data(note_gateway_setup=False) as fresh:
        path = write_config(tmp_path, fresh, dns_server.port)
        report = diagnose(str(path))
        code, out, _ = _run_cli(capsys, "check-config", "--online", "--config", str(path))
    text = _report_text(report)
    needed = "access: odoo-rules needs read access to ir.rule, ir.model.access and ir.model"
    assert f"FAIL  odoo main: {tmp_path / 'rules' / 'notes.example.com.toml'}: {needed}\n" \
           "      fix: run note-gateway setup-odoo" in text
    assert report.problems == 1 and "everything looks right" not in text
    # Said once, not once per model (project.task and sale.order both use odoo-rules).
    assert text.count(needed) == 1
    assert code == 1 and out.count(needed) == 1 and f"{needed} (run note-gateway setup-odoo)" in out


SENDER_EMAIL_FIX = ("      fix: set the user's email to the address they send from (Settings > Users & Companies > "
                    "Users, or the email of the user's contact)")


def test_doctor_and_check_config_warn_of_senders_found_by_their_login_no_more(tmp_path, test_odoo, dns_server,
                                                                             capsys):
    # Upgrade review: since the sender's user is found by email only (identity._MATCHED_FIELDS, as
    # Odoo's mail gateway), a contributor whose login is the address she mails from while her email
    # is another one, or who has no email, was refused 550 after the upgrade, while doctor and
    # check-config --online said "everything looks right". They name such users, with the fix.
    path = write_config(tmp_path, test_odoo, dns_server.port)
    (tmp_path / "odoo-api-key").chmod(0o600)
    report = diagnose(str(path))
    assert report.warnings == 0 and ("ok    odoo main: the active contributors and internal users have an email, "
                                     "their login's address where it is one") in _report_text(report)
    moved = test_odoo.add_partner("Lea Moved", "Lea.Moved@example.com")
    lea = test_odoo.add_user("lea@example.com", partner_id=moved, groups=[CONTRIBUTOR_GROUP_ID])
    nora = test_odoo.add_user("nora@example.com", partner_id=test_odoo.add_partner("Nora None", None),
                              groups=[CONTRIBUTOR_GROUP_ID])
    nils = test_odoo.add_user("nils", partner_id=test_odoo.add_partner("Nils Login", None), groups=[CONTRIBUTOR_GROUP_ID])
    ivan = test_odoo.add_user("ivan.old@example.com", partner_id=test_odoo.add_partner("Ivan", "ivan@example.com"),
                              internal=True)
    # Not senders whose mail the upgrade refuses: a portal user outside the contributor group, an
    # archived contributor, a contributor whose login is her email written in capitals.
    test_odoo.add_user("pia@example.com", partner_id=test_odoo.add_partner("Pia", "pia.new@example.com"))
    test_odoo.add_user("arno@example.com", partner_id=test_odoo.add_partner("Arno", "arno.new@example.com"),
                       groups=[CONTRIBUTOR_GROUP_ID], active=False)
    test_odoo.add_user("Cleo@Example.com", partner_id=test_odoo.add_partner("Cleo", "cleo@example.com"),
                       groups=[CONTRIBUTOR_GROUP_ID])
    searches = lambda: sum(call.model_method == "search_read" and call.model == "res.users"  # noqa: E731
                           for call in test_odoo.calls)
    calls = searches()
    report = diagnose(str(path))
    text = _report_text(report)
    assert searches() == calls + 1, "one search of res.users"
    assert report.problems == 0 and report.warnings == 4, text
    assert (f"WARN  odoo main: internal user Ivan (user {ivan}, login ivan.old@example.com) has the email "
            "ivan@example.com: mail from ivan.old@example.com is refused (550 5.7.1 No Odoo user has this sender "
            "address), the sender's user being found by email only, as in Odoo's mail gateway\n"
            + SENDER_EMAIL_FIX) in text
    assert (f"WARN  odoo main: contributor Lea Moved (user {lea}, login lea@example.com) has the email "
            "lea.moved@example.com: mail from lea@example.com is refused (550 5.7.1 No Odoo user has this sender "
            "address), ") in text
    assert (f"WARN  odoo main: contributor Nils Login (user {nils}, login nils) has no email: none of the user's "
            "mail can be filed\n" + SENDER_EMAIL_FIX) in text
    assert (f"WARN  odoo main: contributor Nora None (user {nora}, login nora@example.com) has no email: mail from "
            "nora@example.com is refused (550 5.7.1, the user has no email)\n" + SENDER_EMAIL_FIX) in text
    assert "Pia" not in text and "Arno" not in text and "Cleo" not in text
    code, out, _ = _run_cli(capsys, "check-config", "--online", "--config", str(path))
    assert code == 0 and out.count("warning: odoo.main: ") == 4, out
    assert (f"warning: odoo.main: contributor Lea Moved (user {lea}, login lea@example.com) has the email "
            "lea.moved@example.com: ") in out and "(set the user's email to the address they send from" in out
    # Internal users count only where the rules let them write.
    rules = tmp_path / "rules" / "notes.example.com.toml"
    rules.write_text(rules.read_text().replace("[note]\n", "[note]\nallow_internal_users = false\n", 1)
                     .replace("[reply]\n", "[reply]\nallow_internal_users = false\n", 1))
    text = _report_text(diagnose(str(path)))
    assert "Ivan" not in text and "Lea Moved" in text
    # Ten are named, the others counted.
    for index in range(10):
        test_odoo.add_user(f"c{index:02}@example.com", partner_id=test_odoo.add_partner(f"C{index}", None),
                           groups=[CONTRIBUTOR_GROUP_ID])
    report = diagnose(str(path))
    text = _report_text(report)
    assert report.warnings == 11 and text.count("has no email:") == 10 and "Lea Moved" not in text, text
    assert "WARN  odoo main: 3 more contributors as above, not named here\n" + SENDER_EMAIL_FIX in text


def test_doctor_fails_a_resolver_that_answers_nxdomain_for_every_name(tmp_path, test_odoo):
    # Operator review: NXDOMAIN for the probe name passed, while such a resolver calls every
    # sender's DKIM key missing: a permanent 550 for all mail.
    with DnsServer() as nothing:
        path = write_config(tmp_path, test_odoo, nothing.port)
        report = diagnose(str(path))
    text = _report_text(report)
    assert (f"FAIL  resolver: 127.0.0.1:{nothing.port} nameservers answer NXDOMAIN for . and com., names that "
            "always exist: they would call every sender's DKIM key missing (550)\n"
            "      fix: make [resolver] nameservers point at a working recursive resolver that resolves internet "
            "names") in text
    assert report.problems == 1
    # The same server once it knows a name under com., as the closed test network's dnsmasq does.
    with DnsServer({"selector._domainkey.example.com": "v=DKIM1; p=x"}) as some:
        path.write_text(path.read_text().replace(f"port = {nothing.port}", f"port = {some.port}"))
        text = _report_text(diagnose(str(path)))
    assert f"ok    resolver: 127.0.0.1:{some.port} nameservers answered for" in text and "and found . in" in text


def test_doctor_says_how_long_a_key_lookup_may_take_with_several_nameservers(tmp_path, test_odoo):
    # DNS review: [resolver] timeout bounded the whole lookup while each nameserver's try took up to
    # 2 s, so a third nameserver was never asked behind two silent ones. A lookup now gives each one
    # its try before the last gets the timeout; doctor says how long that makes it.
    with DnsServer({"selector._domainkey.example.com": "v=DKIM1; p=x"}) as some:
        path = write_config(tmp_path, test_odoo, some.port,
                            resolver={"nameservers": ["127.0.0.1", "127.0.0.1", "127.0.0.1"], "timeout": 4.0})
        text = _report_text(diagnose(str(path)))
    assert f"ok    resolver: 127.0.0.1:{some.port}, 127.0.0.1:{some.port}, 127.0.0.1:{some.port} nameservers " \
           "answered for" in text
    assert "; a key lookup may take 8 s: each of the 3 nameservers in turn, the last with [resolver] timeout 4 s\n" in text
    # One nameserver: its timeout, nothing to add.
    path.write_text(path.read_text().replace('"127.0.0.1", "127.0.0.1", "127.0.0.1"', '"127.0.0.1"'))
    with DnsServer({"selector._domainkey.example.com": "v=DKIM1; p=x"}) as some:
        path.write_text(re.sub(r"port = \d+\n(timeout)", f"port = {some.port}\n\\1", path.read_text()))
        text = _report_text(diagnose(str(path)))
    assert "ok    resolver: " in text and "a key lookup may take" not in text

@pytest.mark.parametrize("fault, what, fix", [
    ("refuse", "answered REFUSED", "let this host query the nameserver: add it to its access control"),
    ("servfail", "answered SERVFAIL", "the nameserver cannot resolve (SERVFAIL): check its upstream servers"),
    ("truncate", "truncated its answer over UDP, and TCP failed: EOFError: EOF",
     "a DKIM key too large for UDP needs DNS over TCP: allow TCP port 53 from this host to the nameserver"),
    ("drop", "did not answer", "make [resolver] nameservers point at a working recursive resolver reachable from "
                               "this host"),
])
def test_doctor_says_what_the_nameserver_did_and_the_fix_for_it(tmp_path, test_odoo, fault, what, fix):
    # DNS review: doctor said "no nameserver answered for ..." and "fix: ... reachable from this host"
    # when the resolver's access control refused this host, or when it answered SERVFAIL.
    with DnsServer() as broken:
        getattr(broken, fault)(f"note-gateway-doctor._domainkey.{ALIAS_DOMAIN}")
        path = write_config(tmp_path, test_odoo, broken.port, resolver={"timeout": 0.5})
        report = diagnose(str(path))
    text = _report_text(report)
    assert f"FAIL  resolver: 127.0.0.1:{broken.port} nameservers: " in text
    assert f"(127.0.0.1:{broken.port} {what})\n      fix: {fix}" in text
    assert report.problems == 1 and text.count("      fix: ") == 1

def _expire_demo_key(test_odoo, days: float) -> str:
    ends = datetime.now(timezone.utc) + timedelta(days=days)
    [row] = test_odoo.search("res.users.apikeys", [("user_id", "=", GATEWAY_UID)])
    test_odoo.write("res.users.apikeys", row, {"expiration_date": ends.strftime("%Y-%m-%d %H:%M:%S")})
    return ends.strftime("%Y-%m-%d %H:%M UTC")


def test_doctor_warns_before_the_api_key_expires(tmp_path, test_odoo, dns_server, capsys):
    # Operator review: a non-admin's key lasts at most 90 days in Odoo 18, and nothing warned
    # before every message got 451. The user reads its own keys' expiration_date.
    path = write_config(tmp_path, test_odoo, dns_server.port)
    text = _report_text(diagnose(str(path)))
    assert "ok    odoo main: gateway's API keys are valid until at least " in text and "(90 days)" in text
    stamp = _expire_demo_key(test_odoo, 10.5)
    report = diagnose(str(path))
    assert report.problems == 0 and report.warnings == 1
    assert (f'WARN  odoo main: the API key "note gateway" of gateway expires on {stamp}, in 10 days; '
            "then every message is deferred (451) until a new key is in place\n"
            "      fix: make a new key for gateway (Preferences > Account Security > New API Key), put it in the key "
            "file, systemctl reload note-gateway, then delete the old key") in _report_text(report)
    (tmp_path / "odoo-api-key").chmod(0o600)
    code, out, _ = _run_cli(capsys, "check-config", "--online", "--config", str(path))
    assert code == 0 and f'warning: odoo.main: the API key "note gateway" of gateway expires on {stamp}' in out


WRITE_WARNING = ("WARN  odoo main: notes.example.com: sale.order: gateway may read sale.order but not write it, and "
                 "Odoo lets only users who may write a record post on it unless the model lets readers post: notes "
                 "to a sale.order, and replies from senders who do not follow it, would be deferred (451); replies "
                 "from followers are filed by Odoo's mail gateway\n"
                 "      fix: give gateway write access to sale.order (sale.order: Sales / User: All Documents)")


@pytest.mark.parametrize("version", ["17.0", "18.0", "19.0"])
def test_doctor_warns_when_the_gateway_may_read_a_model_but_not_post_on_it(tmp_path, dns_server, capsys, version):
    # Operator review: an integration user in "Project / Administrator" reads sale.order but may not
    # write it; check-config --online and doctor said all was well, and every note to an order was
    # then deferred. A warning, not an error: a model may let readers post (project.task does).
    # Odoo 18 and 19 answer has_access, Odoo 17 check_access_rights.
    with TestOdoo.with_demo_data(version=version) as odoo:
        path = write_config(tmp_path, odoo, dns_server.port)
        (tmp_path / "odoo-api-key").chmod(0o600)
        assert diagnose(str(path)).warnings == 0
        odoo.set_group(GATEWAY_UID, "project.group_project_manager")
        report = diagnose(str(path))
        assert report.problems == 0 and report.warnings == 1
        assert WRITE_WARNING in _report_text(report)
        assert "project.task: gateway may read" not in _report_text(report)
        code, out, _ = _run_cli(capsys, "check-config", "--online", "--config", str(path))
        assert code == 0 and ("warning: notes.example.com: sale.order: gateway may read sale.order but "
                              "not write it") in out
        odoo.set_group(GATEWAY_UID, "sales_team.group_sale_salesman_all_leads")
        assert diagnose(str(path)).warnings == 0


def test_the_write_hint_names_the_group_of_the_model_it_is_about(tmp_path, dns_server, capsys):
    # Onboarding review: with res.partner in the note models, check-config --online and doctor said
    # "give gateway write access to res.partner (for sale.order: Sales / User: All Documents)"; on a
    # real Odoo 18, "Extra Rights / Contact Creation" is what lets an employee post on a contact.
    # A model that lets readers post (project.task, account.move) gets no write warning at all.
    with TestOdoo.with_demo_data() as odoo:
        path = write_config(tmp_path, odoo, dns_server.port, models=("project.task", "res.partner", "account.move"))
        (tmp_path / "odoo-api-key").chmod(0o600)
        odoo.set_group(GATEWAY_UID, "account.group_account_readonly")
        report = diagnose(str(path))
        text = _report_text(report)
        assert report.problems == 0 and report.warnings == 1, text
        assert ("WARN  odoo main: notes.example.com: res.partner: gateway may read res.partner but not write it"
                in text)
        assert ("      fix: give gateway write access to res.partner (res.partner: Extra Rights / Contact Creation)"
                in text)
        assert "Sales / User" not in text
        code, out, _ = _run_cli(capsys, "check-config", "--online", "--config", str(path))
        assert code == 0 and "(give gateway write access to res.partner (res.partner: Extra Rights / Contact " \
            "Creation))" in out and "Sales / User" not in out
        odoo.set_group(GATEWAY_UID, "base.group_partner_manager")
        assert diagnose(str(path)).warnings == 0


def test_the_write_hint_of_a_model_no_table_knows_names_no_group():
    # The hint names no group it cannot vouch for (the sale.order group was named for every model).
    assert odoorights.post_hint("gateway", "helpdesk.ticket") == (
        "give gateway write access to helpdesk.ticket (a group of the app of helpdesk.ticket that may modify "
        "its records), unless the model lets readers post")
    assert odoorights.post_hint("gateway", "project.task").startswith(
        "give gateway read access to every project.task record (project.task: Project / Administrator")


def test_the_test_odoo_refuses_an_expired_api_key(tmp_path, test_odoo, dns_server):
    # As Odoo 18's _check_credentials (expiration_date > now): the key of the warning above stops working.
    path = write_config(tmp_path, test_odoo, dns_server.port)
    _expire_demo_key(test_odoo, -1)
    text = _report_text(diagnose(str(path)))
    assert "FAIL  odoo main: cannot log in: " in text and "refused the credentials of login gateway" in text


def test_doctor_reports_a_config_error(tmp_path):
    (tmp_path / "gateway.toml").write_text("[listener]\nport = 'x'\n")
    report = diagnose(str(tmp_path / "gateway.toml"))
    assert report.problems == 1 and "FAIL  config:" in report.lines[0]


def test_log_without_a_journal_says_so(tmp_path, test_odoo, capsys):
    path = write_config(tmp_path, test_odoo, 53)
    code, _, err = _run_cli(capsys, "log", "--config", str(path))
    assert code == 1 and "journal.sqlite3 cannot be opened" in err


def test_reload_swaps_the_services_of_a_running_listener(tmp_path, test_odoo, gateway, mailer, dns_server):
    from gateway.pipeline import Services

    other = write_config(tmp_path / "other", test_odoo, dns_server.port)
    rules = tmp_path / "other" / "rules" / "notes.example.com.toml"
    rules.rename(rules.with_name("other.example.com.toml"))
    renamed = rules.with_name("other.example.com.toml")
    renamed.write_text(renamed.read_text().replace('domain = "notes.example.com"', 'domain = "other.example.com"'))
    new_services = Services.build(load_config(other))
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to))
    old = None
    try:
        with smtplib.SMTP("127.0.0.1", gateway.port, timeout=20) as client:
            client.ehlo("client.example.com")
            assert client.mail(PAULA)[0] == 250
            assert client.rcpt(to)[0] == 250
            # The reload lands between RCPT and DATA and drops the session's alias domain.
            old = gateway.server.server.reload(new_services)
            code, text = client.data(raw)
        assert old is gateway.services
        assert (code, text) == (451, b"4.3.0 Internal error, try again later: the configuration changed during this session")
        # Journaled, as every message that reaches DATA is (it was not).
        row = new_services.journal.recent(1)[0]
        assert (row.verdict, row.refusal_class, row.rcpt, row.domain) == ("deferred", "InternalError", to, ALIAS_DOMAIN)
        # New sessions are judged by the new configuration: the old domain is no longer served.
        with smtplib.SMTP("127.0.0.1", gateway.port, timeout=20) as client:
            client.ehlo("client.example.com")
            client.mail(PAULA)
            assert client.rcpt(to)[0] == 550
    finally:
        if old is not None:
            gateway.server.server.reload(old)
        new_services.close()
    assert test_odoo.posts() == []


def test_mail_parser_failure_to_decode_a_header_the_gateway_handles_is_no_error(test_odoo, gateway, mailer,
                                                                                 capsys, caplog):
    # Found by an exploratory test: a subject with a broken encoded word was filed, and mail-parser
    # logged five "ERROR mailparser.utils: Failed decoding header part" lines for it, enough to
    # wake an admin's alerting. The logging setup of every command makes them DEBUG.
    assert _run_cli(capsys, "check-config", "--config", str(gateway.config_path))[0] == 0
    to = mailer.address("note", "project.task", TASK_ID)
    raw = (f"From: Paula Contributor <{PAULA}>\r\nTo: {to}\r\nSubject: =?utf-8?B?broken!!?= =?unknown-cs?Q?abc?=\r\n"
           f"Date: Mon, 07 Dec 2026 10:00:00 +0000\r\nMessage-ID: <broken-ew-{{n}}@example.com>\r\n"
           "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPump checked.\r\n")
    parser_log = logging.getLogger("mailparser.utils")
    try:
        caplog.set_level(logging.INFO)
        assert mailer.send(mailer.sign(raw.replace("{n}", "1").encode()), to).startswith("250 ")
        assert [record for record in caplog.records if record.name.startswith("mailparser")] == []
        # With --verbose they are there, as DEBUG; every other record of mail-parser is unchanged.
        caplog.clear()
        caplog.set_level(logging.DEBUG, logger="mailparser.utils")
        assert mailer.send(mailer.sign(raw.replace("{n}", "2").encode()), to).startswith("250 ")
        parser_log.error("Failed to get epilogue part. Check raw mail.")
        levels = {(record.levelname, record.getMessage()[:27]) for record in caplog.records
                  if record.name == "mailparser.utils" and record.getMessage().startswith("Failed")}
        assert levels == {("DEBUG", "Failed decoding header part"), ("ERROR", "Failed to get epilogue part")}
    finally:
        parser_log.removeFilter(observe.HANDLED_LIBRARY_ERRORS)


def test_readme_postfix_example_is_sized_for_the_gateway_it_filters_through():
    # The README's setup was after-queue (Postfix queued, then relayed over LMTP), which turned every
    # refusal into a bounce to a possibly forged sender (a review of the gateway behind Postfix); it
    # is now a before-queue proxy filter. Its numbers must fit the gateway's defaults:
    # tests/test_postfix.py runs this very configuration.
    from gateway.config import ListenerConfig

    example = readme_postfix_example()
    listener = ListenerConfig(**example.listener)
    assert example.main_cf["relay_domains"] == "notes.example.com"
    # Nothing is queued for the alias domain: no transport, the smtpd hands it to the gateway.
    assert example.transports == {}
    assert example.smtpd[:2] == ["smtp", "inet"] and example.smtpd[-1] == "smtpd"
    assert example.smtpd_options["smtpd_proxy_filter"] == f"127.0.0.1:{listener.port}"
    assert listener.protocol == "smtp"
    # No more smtpd processes than the gateway takes sessions from one address (Postfix's).
    assert int(example.smtpd[6]) <= listener.max_sessions_per_ip <= listener.max_sessions
    # Postfix waits for the reply to DATA longer than the gateway may take to give it (the
    # message's deadline, then 5 s of margin in GatewayHandler._process) ...
    assert int(example.smtpd_options["smtpd_proxy_timeout"].rstrip("s")) > listener.message_deadline + 5
    # ... and drops an idle client before the gateway drops the idle proxy connection.
    assert int(example.smtpd_options["smtpd_timeout"].rstrip("s")) < listener.session_timeout
    # Oversize mail reaches the gateway, whose 552 names its limit and is journaled.
    assert int(example.main_cf["message_size_limit"]) >= listener.max_message_size
