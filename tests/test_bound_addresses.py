"""User-bound and dated addresses end to end: only their partner may write, and they expire."""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

from conftest import ALIAS_DOMAIN, SECRET, Mailer, write_config

from gateway import address, checks
from gateway.config import load_config
from gateway.pipeline import Services
from gateway.smtp import ThreadedGateway
from gateway.testing.odoo_demo import PAULA_PARTNER_ID, PETER_EMAIL, TASK_ID
from gateway.testing.sending import compose


def _mint(kind="reply", **options):
    return address.mint(SECRET.encode(), ALIAS_DOMAIN, kind, "project.task", TASK_ID, **options)


def test_bound_address_accepts_only_its_partner(test_odoo, gateway, mailer):
    to = _mint(partner_id=PAULA_PARTNER_ID)
    assert mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to)), to).startswith("250 ")
    # Peter follows the task and could reply to its plain reply+ address, but not to Paula's.
    peter = mailer.sign(mailer.message("note_from_non_member.eml", to))
    assert mailer.send(peter, to, mail_from=PETER_EMAIL).startswith(
        "550 5.7.1 This gateway address was issued to another person")
    assert len(test_odoo.filings()) == 1


@contextmanager
def _gateway_with(tmp_path, test_odoo, dns_server, dkim_keys, rules_prefix: str):
    folder = tmp_path / rules_prefix.split()[0]
    config_path = write_config(folder, test_odoo, dns_server.port)
    rules_path = folder / "rules" / f"{ALIAS_DOMAIN}.toml"
    rules_path.write_text(rules_prefix + "\n" + rules_path.read_text())
    services = Services.build(load_config(config_path))
    try:
        with ThreadedGateway(services) as server:
            yield Mailer(SimpleNamespace(port=server.port, services=services), dkim_keys)
    finally:
        services.close()


def test_dated_address_expires_after_the_domains_max_age(test_odoo, tmp_path, dns_server, dkim_keys):
    with _gateway_with(tmp_path, test_odoo, dns_server, dkim_keys, "address_max_age_days = 30") as mailer:
        today = address.today()
        fresh, stale, undated = _mint(issued_day=today - 5), _mint(issued_day=today - 31), _mint()
        assert mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", fresh)), fresh).startswith("250 ")
        # Refused at RCPT: the message is never sent.
        assert mailer.send(b"unused", stale).startswith(
            "550 5.1.1 This gateway address has expired, ask for a new one: issued 31 days ago, the limit is 30")
        # Undated (old-format) addresses keep working unless the domain requires dates.
        assert mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", undated)),
                           undated).startswith("250 ")
    assert len(test_odoo.filings()) == 2


def test_domain_may_require_dated_addresses(test_odoo, tmp_path, dns_server, dkim_keys):
    with _gateway_with(tmp_path, test_odoo, dns_server, dkim_keys, "require_dated_addresses = true") as mailer:
        assert mailer.send(b"unused", _mint()).startswith(
            "550 5.1.1 This gateway address has expired, ask for a new one: addresses without an issue date")
        dated = _mint(issued_day=address.today())
        assert mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", dated)), dated).startswith("250 ")


def test_required_dates_refuse_plain_addresses_too(test_odoo, tmp_path, dns_server, dkim_keys):
    # A plain note@ / reply@ carries no issue date: with a genuine Odoo notification in References
    # it used to be filed while the record's own undated note+ address was refused.
    comment = test_odoo.add_record("mail.message", {"model": "project.task", "res_id": TASK_ID,
                                                    "message_type": "comment", "subtype_id": 1,
                                                    "body": "<p>Hello</p>", "author_id": 3})
    notification = test_odoo.record("mail.message", comment, ["message_id"])["message_id"]
    with _gateway_with(tmp_path, test_odoo, dns_server, dkim_keys, "require_dated_addresses = true") as mailer:
        for kind in ("note", "reply"):
            plain = f"{kind}@{ALIAS_DOMAIN}"
            raw = mailer.sign(b"References: " + notification.encode() + b"\r\n" + compose(
                "portal.contrib@example.com", plain, "Re: Gateway acceptance task", "Seal replaced, all good."))
            expected = (f"550 5.1.1 This alias domain accepts only dated record addresses: write to the record's "
                        f"own dated {kind}+ address instead of {plain}")
            # Refused at RCPT, before the message is sent; `note-gateway check` says the same.
            assert mailer.send(raw, plain) == expected
            assert checks.dry_run(mailer.gateway.services, plain, raw) == ([("rcpt", f"REFUSED {expected}")], False)
        dated = _mint(issued_day=address.today())
        assert mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", dated)), dated).startswith("250 ")
    assert len(test_odoo.filings()) == 1
