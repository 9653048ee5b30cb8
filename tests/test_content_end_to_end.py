"""Content features end to end: per-domain templates, recipients of notes and replies, over signed SMTP."""

from __future__ import annotations

import textwrap

import pytest

from conftest import ALIAS_DOMAIN, Mailer, write_config

from gateway.config import load_config
from gateway.pipeline import Services
from gateway.smtp import ThreadedGateway
from gateway.testing.odoo_demo import JOEL_PARTNER_ID, MARC_PARTNER_ID, PAULA_PARTNER_ID, PETER_PARTNER_ID, SALE_ORDER_ID, TASK_ID
from gateway.testing.sending import compose

PAULA = "portal.contrib@example.com"


def _posts(test_odoo):
    return [call for call in test_odoo.calls if call.model_method == "message_post"]


def _send(mailer: Mailer, kind: str, model: str, res_id: int, *, cc: str = "", subject: str = "Re: Pump") -> str:
    to = mailer.address(kind, model, res_id)
    raw = compose(PAULA, to, subject, "Pump checked.\n\nOn Mon, Bob wrote:\n> old\n", sender_name="Paula Contributor")
    if cc:
        raw = f"Cc: {cc}\r\n".encode() + raw
    return mailer.send(mailer.sign(raw), to)


def test_alias_domain_templates_override_per_model_with_fallback(tmp_path, test_odoo, dns_server, dkim_keys):
    config_path = write_config(tmp_path, test_odoo, dns_server.port)
    rules_path = tmp_path / "rules" / f"{ALIAS_DOMAIN}.toml"
    rules_path.write_text('templates_dir = "domain-templates"\n' + rules_path.read_text())
    folder = tmp_path / "rules" / "domain-templates" / "note"
    folder.mkdir(parents=True)
    (folder / "project.task.html.j2").write_text(textwrap.dedent("""\
        <p>Site log from {{ sender_name }}: {{ subject }}</p>
        {{ body }}
    """))
    services = Services.build(load_config(config_path))
    server = ThreadedGateway(services).start()
    try:
        mailer = Mailer(type("Running", (), {"port": server.port})(), dkim_keys)
        assert _send(mailer, "note", "project.task", TASK_ID).startswith("250 ")
        assert _send(mailer, "note", "sale.order", SALE_ORDER_ID).startswith("250 ")
    finally:
        server.stop()
        services.close()
    task_post, order_post = _posts(test_odoo)
    assert task_post.kwargs["body"].startswith("<p>Site log from Paula Contributor: Pump</p>")
    assert "Internal note by email from" not in task_post.kwargs["body"]
    # No template of the domain for sale.order: the bundled default.
    assert "Internal note by email from Paula Contributor" in order_post.kwargs["body"]


def test_note_notifies_internal_users_in_cc_with_one_lookup(test_odoo, gateway, mailer):
    reply = _send(mailer, "note", "project.task", TASK_ID,
                  cc="Marc Demo <mark.brown23@example.com>, portal.plain@example.com, stranger@elsewhere.example")
    assert reply.startswith("250 ")
    [post] = _posts(test_odoo)
    assert post.kwargs["partner_ids"] == [MARC_PARTNER_ID]
    assert [mail.partner_id for mail in test_odoo.outbox] == [MARC_PARTNER_ID]
    lookups = [call for call in test_odoo.calls if call.model == "res.users" and call.model_method == "search_read"]
    assert len(lookups) == 2  # the sender's identity, then every To/Cc address at once


def test_reply_adds_internal_cc_and_never_a_portal_cc(test_odoo, gateway, mailer):
    # Joel (portal) does not follow the task: named in Cc of a public reply he is still not added.
    reply = _send(mailer, "reply", "project.task", TASK_ID,
                  cc="mark.brown23@example.com, joel.willis63@example.com")
    assert reply.startswith("250 ")
    [post] = _posts(test_odoo)
    assert post.kwargs["partner_ids"] == [MARC_PARTNER_ID] and post.kwargs["subtype_xmlid"] == "mail.mt_comment"
    notified = {mail.partner_id for mail in test_odoo.outbox}
    assert JOEL_PARTNER_ID not in notified and {MARC_PARTNER_ID, PETER_PARTNER_ID} <= notified


@pytest.mark.xfail(strict=True, reason=(
    "issue 3: Odoo 18 leaves out of a comment's recipients only the calling user's partner "
    "(mail_thread.py _notify_get_recipients, 3834-3846), and over JSON-RPC the caller is the gateway; "
    "no message_post keyword or context key excludes the author. Needs an Odoo-side hook, see docs/content.md."))
def test_reply_is_not_emailed_back_to_its_sender(test_odoo, gateway, mailer):
    assert _send(mailer, "reply", "project.task", TASK_ID).startswith("250 ")
    assert PAULA_PARTNER_ID not in {mail.partner_id for mail in test_odoo.outbox}
