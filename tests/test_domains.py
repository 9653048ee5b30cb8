"""Several alias domains in one gateway, each on its own Odoo, and domains bound to a company."""

from __future__ import annotations

import textwrap

import pytest

from conftest import ALIAS_DOMAIN, SECRET, SELECTOR, write_config

from gateway import address
from gateway.config import load_config
from gateway.journal import Journal
from gateway.pipeline import Services
from gateway.smtp import ThreadedGateway
from gateway.testing.dkim import sign
from gateway.testing.odoo import TestOdoo
from gateway.testing.odoo_demo import DEMO_API_KEY, GATEWAY_UID, PAULA_EMAIL, PAULA_PARTNER_ID, SALE_ORDER_ID, TASK_ID
from gateway.testing.sending import compose, deliver

SECOND_DOMAIN = "notes.second.example"
SECOND_SECRET = "second-domain-secret-0123456789"


@pytest.fixture
def second_odoo():
    with TestOdoo.with_demo_data(database="second") as odoo:
        yield odoo


def _start(config_path):
    services = Services.build(load_config(config_path))
    return services, ThreadedGateway(services).start()


@pytest.fixture
def two_odoo_gateway(tmp_path, test_odoo, second_odoo, dns_server):
    config_path = write_config(tmp_path, test_odoo, dns_server.port)
    (tmp_path / "second-key").write_text(DEMO_API_KEY)
    with (tmp_path / "gateway.toml").open("a") as gateway_file:
        gateway_file.write(textwrap.dedent(f"""
            [odoo.second]
            url = "{second_odoo.url}"
            database = "second"
            login = "gateway"
            api_key_file = "second-key"
            timeout = 5
        """))
    (tmp_path / "rules" / f"{SECOND_DOMAIN}.toml").write_text(textwrap.dedent(f"""
        domain = "{SECOND_DOMAIN}"
        odoo = "second"
        secrets = ["{SECOND_SECRET}"]
        [note]
        models = ["project.task"]
    """))
    services, server = _start(config_path)
    yield server
    server.stop()
    services.close()


def _send(gateway, dkim_keys, to, sender=PAULA_EMAIL, message_id=None):
    raw = compose(sender, to, "Pump", "The seal is worn.", message_id=message_id)
    return deliver(sign(raw, dkim_keys["example.com"], "example.com", SELECTOR), to, port=gateway.port,
                   mail_from=sender)


def test_each_alias_domain_posts_to_its_own_odoo(test_odoo, second_odoo, two_odoo_gateway, dkim_keys):
    first = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "project.task", TASK_ID)
    second = address.mint(SECOND_SECRET.encode(), SECOND_DOMAIN, "note", "project.task", TASK_ID)
    assert _send(two_odoo_gateway, dkim_keys, first, message_id="<one@example.com>").startswith("250 ")
    assert _send(two_odoo_gateway, dkim_keys, second, message_id="<two@example.com>").startswith("250 ")
    assert [post.kwargs["message_id"] for post in test_odoo.posts()] == ["<one@example.com>"]
    assert [post.kwargs["message_id"] for post in second_odoo.posts()] == ["<two@example.com>"]
    # The second domain allows notes on tasks only, and its token is signed with its own secret.
    order = address.mint(SECOND_SECRET.encode(), SECOND_DOMAIN, "note", "sale.order", SALE_ORDER_ID)
    assert _send(two_odoo_gateway, dkim_keys, order).startswith("550 5.7.1 Posting by email is not enabled")
    forged = address.mint(SECRET.encode(), SECOND_DOMAIN, "note", "project.task", TASK_ID)
    assert _send(two_odoo_gateway, dkim_keys, forged).startswith("550 5.1.1 No such gateway address")


def test_a_note_address_of_the_same_record_on_another_odoo_leaves_a_reply_public(test_odoo, second_odoo,
                                                                                   two_odoo_gateway, dkim_keys):
    # Found by a mutation audit: reply-all turns a reply into a note only for a note address of the
    # same record, and task 60 of the second domain is another Odoo's task 60, not this one. Nor
    # does a plain note@ of a domain on another Odoo count.
    reply_to = address.mint(SECRET.encode(), ALIAS_DOMAIN, "reply", "project.task", TASK_ID)
    other_note = address.mint(SECOND_SECRET.encode(), SECOND_DOMAIN, "note", "project.task", TASK_ID)
    for number, cc in enumerate((other_note, f"note@{SECOND_DOMAIN}")):
        raw = b"Cc: " + cc.encode() + b"\r\n" + compose(PAULA_EMAIL, reply_to, "Re: Pump", "Seal replaced.",
                                                          message_id=f"<public-{number}@example.com>")
        reply = deliver(sign(raw, dkim_keys["example.com"], "example.com", SELECTOR), reply_to,
                        port=two_odoo_gateway.port, mail_from=PAULA_EMAIL)
        assert reply.startswith("250 2.0.0 Filed as Odoo message "), reply
    assert [filing.subtype_xmlid for filing in test_odoo.filings()] == ["mail.mt_comment", "mail.mt_comment"]
    assert second_odoo.filings() == []


@pytest.fixture
def two_connections_gateway(tmp_path, test_odoo, dns_server):
    """The second alias domain on a second [odoo.*] connection to the SAME database (one integration
    user per company, say: docs/rules.md)."""
    config_path = write_config(tmp_path, test_odoo, dns_server.port)
    with (tmp_path / "gateway.toml").open("a") as gateway_file:
        gateway_file.write(textwrap.dedent(f"""
            [odoo.other_company]
            url = "{test_odoo.url}/"
            database = "{test_odoo.database}"
            login = "gateway"
            api_key_file = "odoo-api-key"
            timeout = 5
        """))
    (tmp_path / "rules" / f"{SECOND_DOMAIN}.toml").write_text(textwrap.dedent(f"""
        domain = "{SECOND_DOMAIN}"
        odoo = "other_company"
        secrets = ["{SECOND_SECRET}"]
        [note]
        models = ["project.task"]
    """))
    services, server = _start(config_path)
    yield server
    server.stop()
    services.close()


def test_a_note_address_of_another_connection_to_the_same_database_keeps_a_reply_internal(
        tmp_path, test_odoo, two_connections_gateway, dkim_keys):
    # Found by the multi-Odoo review: "the same Odoo" was the same connection NAME, so a reply+ of
    # the first domain with a note+ of the second (another connection, same database, same task)
    # in Cc was filed PUBLIC, and the note+ delivery then answered "Already filed": the internal
    # text public, no note. The same URL and database are one Odoo, whatever the connections' names.
    reply_to = address.mint(SECRET.encode(), ALIAS_DOMAIN, "reply", "project.task", TASK_ID)
    note_to = address.mint(SECOND_SECRET.encode(), SECOND_DOMAIN, "note", "project.task", TASK_ID)
    raw = sign(compose(PAULA_EMAIL, f"{reply_to}, {note_to}", "Re: Pump", "INTERNAL: margin is 40%",
                       message_id="<both@example.com>"), dkim_keys["example.com"], "example.com", SELECTOR)
    first = deliver(raw, reply_to, port=two_connections_gateway.port, mail_from=PAULA_EMAIL)
    assert first.startswith("250 2.0.0 Filed as Odoo message "), first
    second = deliver(raw, note_to, port=two_connections_gateway.port, mail_from=PAULA_EMAIL)
    assert second == first.replace("Filed", "Already filed"), second
    assert [filing.subtype_xmlid for filing in test_odoo.filings()] == ["mail.mt_note"]
    with Journal(tmp_path / "journal.sqlite3", read_only=True) as journal:
        assert [entry.decision for entry in journal.recent(2)[::-1]] == [
            f"reply-all with {note_to}: filed as a note, never public", ""]


def test_one_odoo_down_does_not_stop_the_other(test_odoo, second_odoo, two_odoo_gateway, dkim_keys):
    second_odoo.fail("refuse")
    first = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "project.task", TASK_ID)
    second = address.mint(SECOND_SECRET.encode(), SECOND_DOMAIN, "note", "project.task", TASK_ID)
    assert _send(two_odoo_gateway, dkim_keys, second).startswith("451 ")
    assert _send(two_odoo_gateway, dkim_keys, first).startswith("250 ")


# --- Company binding ---------------------------------------------------------------------------


@pytest.fixture
def bound_gateway(tmp_path, test_odoo, dns_server):
    def start(binding: str):
        folder = tmp_path / f"g{len(started)}"
        config_path = write_config(folder, test_odoo, dns_server.port, rules_extra="")
        rules_path = folder / "rules" / f"{ALIAS_DOMAIN}.toml"
        rules_path.write_text(binding + "\n" + rules_path.read_text())
        services, server = _start(config_path)
        started.append((services, server))
        return server

    started: list = []
    yield start
    for services, server in started:
        server.stop()
        services.close()


@pytest.fixture
def two_companies(test_odoo):
    other = test_odoo.add_record("res.company", {"name": "Other Company"})
    test_odoo.write("res.users", GATEWAY_UID, {"company_ids": [1, other]})
    # Paula belongs to both companies, so only the binding can keep her out of the other one.
    test_odoo.write("res.users", 8, {"company_ids": [1, other]})
    foreign = test_odoo.add_record("sale.order", {"name": "S-OTHER", "partner_id": 9, "company_id": other},
                                   followers=[PAULA_PARTNER_ID])
    return other, foreign


def test_company_from_the_alias_domain_refuses_other_company_records(test_odoo, bound_gateway, two_companies,
                                                                     dkim_keys):
    other, foreign = two_companies
    alias_domain = test_odoo.add_record("mail.alias.domain", {"name": ALIAS_DOMAIN})
    test_odoo.write("res.company", 1, {"alias_domain_id": alias_domain})
    gateway = bound_gateway("company_from_alias_domain = true")
    ours = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "sale.order", SALE_ORDER_ID)
    theirs = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "sale.order", foreign)
    assert _send(gateway, dkim_keys, ours).startswith("250 ")
    assert _send(gateway, dkim_keys, theirs).startswith(
        f"550 5.7.1 The record belongs to a company this address does not serve: sale.order {foreign} is of "
        f"company {other}, not 1")
    [post] = test_odoo.posts()
    assert post.context["allowed_company_ids"] == [1] and post.args == [[SALE_ORDER_ID]]


def test_unbound_domain_lets_odoo_rules_decide_across_the_users_companies(test_odoo, bound_gateway, two_companies,
                                                                          dkim_keys):
    other, foreign = two_companies
    gateway = bound_gateway("")
    theirs = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "sale.order", foreign)
    assert _send(gateway, dkim_keys, theirs).startswith("250 ")
    assert "allowed_company_ids" not in test_odoo.posts()[0].context


def test_binding_by_alias_domain_without_one_in_odoo_refuses(test_odoo, bound_gateway, dkim_keys):
    gateway = bound_gateway("company_from_alias_domain = true")
    to = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "sale.order", SALE_ORDER_ID)
    assert _send(gateway, dkim_keys, to).startswith("550 5.7.1 The record belongs to a company this address does "
                                                    f"not serve: mail.alias.domain {ALIAS_DOMAIN} names 0 companies")
    assert test_odoo.posts() == []


def test_binding_by_an_alias_domain_of_two_companies_refuses(test_odoo, bound_gateway, two_companies, dkim_keys):
    # Found by a mutation audit: an alias domain shared by several companies names no one company,
    # and taking the first could post in the wrong company's context.
    other, _ = two_companies
    alias_domain = test_odoo.add_record("mail.alias.domain", {"name": ALIAS_DOMAIN})
    test_odoo.write("res.company", 1, {"alias_domain_id": alias_domain})
    test_odoo.write("res.company", other, {"alias_domain_id": alias_domain})
    gateway = bound_gateway("company_from_alias_domain = true")
    to = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "sale.order", SALE_ORDER_ID)
    assert _send(gateway, dkim_keys, to) == ("550 5.7.1 The record belongs to a company this address does not "
                                             f"serve: mail.alias.domain {ALIAS_DOMAIN} names 2 companies")
    assert test_odoo.posts() == []


def test_bound_company_the_sender_does_not_belong_to_is_refused(test_odoo, bound_gateway, two_companies, dkim_keys):
    other, foreign = two_companies
    test_odoo.write("res.users", 8, {"company_ids": [1]})
    gateway = bound_gateway(f"company_id = {other}")
    theirs = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "sale.order", foreign)
    # Odoo would not let Paula work in the other company: the rules see no company at all.
    assert _send(gateway, dkim_keys, theirs).startswith("550 5.7.1 Sender has no access to this record")
