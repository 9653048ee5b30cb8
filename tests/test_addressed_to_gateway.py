"""A signed message is filed only if its To or Cc names the gateway: mail sent to someone else, replayed, is refused."""

from __future__ import annotations

import textwrap

import pytest

from conftest import ALIAS_DOMAIN, Mailer, write_config

from gateway import address
from gateway.config import load_config
from gateway.testing.configs import fresh_secret
from gateway.journal import Journal
from gateway.pipeline import Services
from gateway.smtp import ThreadedGateway
from gateway.testing.odoo_demo import TASK_ID
from gateway.testing.sending import compose

PAULA = "portal.contrib@example.com"
BOB = "bob@partner.example"  # who received Paula's mail, and sends it on
COLLEAGUE = "colleague@example.com"
NOT_ADDRESSED = ("550 5.7.1 The message is not addressed to the gateway: its To and Cc name no address of "
                 f"{ALIAS_DOMAIN}; a Bcc copy, or a message sent to someone else, is not filed: write the gateway "
                 "address in To or Cc")
BCC_NOTES = "[sender]\naccept_bcc_notes = true\n"


def _journal(gateway):
    with Journal(gateway.services.config.journal_path) as journal:
        return journal.recent(50)


def _mail(mailer: Mailer, to: str, *, cc: str | None = None, subject: str = "Between us") -> bytes:
    raw = compose(PAULA, to, subject, "Our margin on this job is 40%, don't tell the customer.\n")
    return mailer.sign((f"Cc: {cc}\r\n".encode() if cc else b"") + raw)


@pytest.mark.parametrize("kind", ["reply", "note"])
def test_a_signed_mail_to_someone_else_replayed_to_a_record_address_is_refused_before_odoo(
        test_odoo, gateway, mailer, kind):
    # Found by a security review: Bob sent Paula's signed mail to him on, unchanged, to the reply+
    # address of a task he saw in a Cc; it was filed publicly under her name and emailed to the
    # task's followers, customers included (to a note+ address: as her internal note).
    private = _mail(mailer, BOB)
    test_odoo.clear_calls()
    reply = mailer.send(private, mailer.address(kind, "project.task", TASK_ID), mail_from=BOB)
    assert reply == NOT_ADDRESSED
    assert test_odoo.filings() == [] and test_odoo.outbox == []
    # Refused before identify-sender: not one call to Odoo.
    assert test_odoo.calls == []
    [row] = _journal(gateway)
    assert (row.verdict, row.refusal_class, row.smtp_reply) == ("refused", "NotAddressedToGateway", NOT_ADDRESSED)
    assert row.mail_from == BOB and row.from_address == PAULA


@pytest.mark.parametrize("scenario", ["note_from_contributor.eml", "note_from_unknown_user.eml",
                                      "note_from_archived_user.eml", "note_from_non_member.eml"])
@pytest.mark.parametrize("rcpt", [f"note@{ALIAS_DOMAIN}", f"reply@{ALIAS_DOMAIN}"])
def test_a_replay_to_a_plain_address_tells_nothing_of_the_authors_account(test_odoo, gateway, mailer, scenario,
                                                                          rcpt):
    # The replay to note@ was refused by identify-sender, before the route stage: "No Odoo user
    # has this sender address", "... is archived", or else "No record found", which told whoever
    # held a signed message whether its author had an account, and whether it was archived.
    test_odoo.clear_calls()
    reply = mailer.send(mailer.sign(mailer.message(scenario, BOB)), rcpt, mail_from=BOB)
    assert reply == NOT_ADDRESSED
    assert test_odoo.calls == []


def test_a_cc_naming_the_gateway_added_after_the_signature_does_not_count(test_odoo, gateway, mailer):
    # dkimpy (and OpenDKIM) sign the To and Cc a message has: Paula's mail had no Cc, so h= names
    # none, and a Cc added by Bob passes the signature. A signer that covers To covers every
    # recipient field present when it signed, so that Cc was added afterwards.
    to = mailer.address("reply", "project.task", TASK_ID)
    private = _mail(mailer, BOB)
    test_odoo.clear_calls()
    reply = mailer.send(f"Cc: {to}\r\n".encode() + private, to, mail_from=BOB)
    # The same as a signer with a fixed h= that names To and never Cc (Broadcom Email
    # Security.cloud): its user is told the one thing that works, the address in To.
    assert reply == (
        "550 5.7.1 The message is not addressed to the gateway: only its Cc, which the DKIM signature does "
        f"not cover, names an address of {ALIAS_DOMAIN} (a header added after signing, or a mail system that "
        "signs To only): write the gateway address in To")
    assert test_odoo.calls == []


def test_a_note_to_its_address_and_a_reply_all_are_filed(test_odoo, gateway, mailer):
    note = mailer.address("note", "project.task", TASK_ID)
    reply = mailer.address("reply", "project.task", TASK_ID)
    assert mailer.send(_mail(mailer, note, subject="To"), note).startswith("250 2.0.0 Filed")
    # The gateway in Cc of a message to a colleague: what reply-all to a notification gives.
    assert mailer.send(_mail(mailer, COLLEAGUE, cc=note, subject="Cc note"), note).startswith("250 2.0.0 Filed")
    assert mailer.send(_mail(mailer, COLLEAGUE, cc=f"Team <{reply}>", subject="Cc reply"),
                       reply).startswith("250 2.0.0 Filed")
    assert [filing.subtype_xmlid for filing in test_odoo.filings()] == ["mail.mt_note", "mail.mt_note",
                                                                        "mail.mt_comment"]


def test_a_signer_that_covers_no_recipient_field_is_read_as_it_is(test_odoo, gateway, mailer):
    # Microsoft 365 signs neither To nor Cc: they are read all the same, or no such contributor
    # could file anything (the residual risk is in docs/rules.md "Not addressed to the gateway").
    note = mailer.address("note", "project.task", TASK_ID)
    office = ["From", "Date", "Subject", "Message-ID", "Content-Type", "MIME-Version"]
    raw = compose(PAULA, note, "From Outlook", "Checked the pump.\n")
    assert mailer.send(mailer.sign(raw, include_headers=office), note).startswith("250 2.0.0 Filed")
    private = mailer.sign(compose(PAULA, BOB, "Between us", "Not for the gateway.\n"), include_headers=office)
    assert mailer.send(private, note, mail_from=BOB) == NOT_ADDRESSED


def test_a_bcc_note_is_refused_unless_the_rules_accept_bcc_notes(test_odoo, start_gateway, dns_server, dkim_keys):
    note = start_gateway(dns_server.port)
    mailer = Mailer(note, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    bcc_note = _mail(mailer, COLLEAGUE, subject="Bcc")
    assert mailer.send(bcc_note, to) == NOT_ADDRESSED
    accepting = Mailer(start_gateway(dns_server.port, rules_extra=BCC_NOTES), dkim_keys)
    assert accepting.send(bcc_note, to).startswith("250 2.0.0 Filed")
    [filing] = test_odoo.filings()
    assert (filing.res_id, filing.subtype_xmlid) == (TASK_ID, "mail.mt_note")


@pytest.mark.parametrize("rcpt", ["reply+", f"reply@{ALIAS_DOMAIN}"])
def test_a_bcc_reply_is_refused_even_where_the_rules_accept_bcc_notes(test_odoo, start_gateway, dns_server,
                                                                       dkim_keys, rcpt):
    # Public: whoever received Paula's mail could otherwise post it to the record's customers.
    mailer = Mailer(start_gateway(dns_server.port, rules_extra=BCC_NOTES), dkim_keys)
    to = mailer.address("reply", "project.task", TASK_ID) if rcpt == "reply+" else rcpt
    test_odoo.clear_calls()
    assert mailer.send(_mail(mailer, COLLEAGUE, subject="Bcc reply"), to) == NOT_ADDRESSED
    assert test_odoo.calls == []


def test_an_internationalised_alias_domain_counts_in_either_form(tmp_path, test_odoo, dns_server, dkim_keys):
    # The alias domains are held in A-labels; a mail program may write the To in U-labels (RFC 6532).
    idn_domain = "xn--notizen-bcher-4ob.example"
    secret = fresh_secret()
    config_path = write_config(tmp_path, test_odoo, dns_server.port)
    (tmp_path / "rules" / "idn.toml").write_text(textwrap.dedent(f"""
        domain = "notizen-bücher.example"
        odoo = "main"
        secrets = ["{secret}"]
        [note]
        models = ["project.task"]
        contributor_group = "note_gateway.group_portal_note_contributor"
    """))
    assert "notizen-bücher.example".encode("idna").decode() == idn_domain
    services = Services.build(load_config(config_path))
    server = ThreadedGateway(services).start()
    try:
        mailer = Mailer(server, dkim_keys)
        to = address.mint(secret.encode(), idn_domain, "note", "project.task", TASK_ID)
        unicode_to = to.replace(idn_domain, "notizen-bücher.example")
        raw = compose(PAULA, COLLEAGUE, "IDN", "Written to the domain in U-labels.\n")
        raw = raw.replace(f"To: {COLLEAGUE}".encode(), f"To: {unicode_to}".encode("utf-8"))
        assert mailer.send(mailer.sign(raw), to).startswith("250 2.0.0 Filed")
    finally:
        server.stop()
        services.close()
