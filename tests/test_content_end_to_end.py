"""Content features end to end: per-domain templates, recipients of notes and replies, over signed SMTP."""

from __future__ import annotations

import email
import email.policy
import textwrap

import pytest

from conftest import ALIAS_DOMAIN, Mailer, write_config

from gateway.config import load_config
from gateway.journal import Journal
from gateway.pipeline import Services
from gateway.smtp import ThreadedGateway
from gateway.testing.odoo_demo import (
    JOEL_PARTNER_ID, MARC_PARTNER_ID, PAULA_PARTNER_ID, PETER_PARTNER_ID, PROJECT_ID, SALE_ORDER_ID, TASK_ID,
)
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


def _processed(test_odoo):
    """The replies handed to Odoo's mail gateway, each as the email message Odoo parsed."""
    return [email.message_from_string(call.args[1]) for call in test_odoo.calls
            if call.model_method == "message_process"]


def test_reply_by_a_follower_names_nobody_in_cc_to_odoo(test_odoo, gateway, mailer):
    # Odoo would subscribe every partner it finds for a To/Cc address of a task, portal partners
    # sharing an address included: the message Odoo's mail gateway gets names nobody but its author.
    followers = test_odoo.followers("project.task", TASK_ID)
    reply = _send(mailer, "reply", "project.task", TASK_ID,
                  cc="mark.brown23@example.com, joel.willis63@example.com")
    assert reply.startswith("250 ")
    assert _posts(test_odoo) == []
    [sent] = _processed(test_odoo)
    assert sent["Cc"] is None and sent["To"] is None
    assert test_odoo.followers("project.task", TASK_ID) == followers
    # Marc follows the task, so Odoo notifies him as a follower; Joel (portal) is not added.
    notified = {mail.partner_id for mail in test_odoo.outbox}
    assert JOEL_PARTNER_ID not in notified and {MARC_PARTNER_ID, PETER_PARTNER_ID} <= notified
    with Journal(gateway.services.config.journal_path) as journal:
        [row] = journal.recent(1)
    assert ("recipient-not-notified:mark.brown23@example.com (filed by Odoo's mail gateway, which notifies "
            "followers only)") in row.defects


def test_reply_is_not_emailed_back_to_its_sender(test_odoo, gateway, mailer):
    reply = _send(mailer, "reply", "project.task", TASK_ID)
    assert reply.startswith("250 ")
    filed = int(reply.rsplit(" ", 1)[1])
    message = test_odoo.message(filed)
    assert message["author_id"][0] == PAULA_PARTNER_ID and message["subtype_xmlid"] == "mail.mt_comment"
    assert message["message_type"] == "email" and "Pump checked." in message["body"]
    notified = {mail.partner_id for mail in test_odoo.outbox}
    # The other followers are notified as by any comment; the author is not (issue 3).
    assert PETER_PARTNER_ID in notified and PAULA_PARTNER_ID not in notified


def test_reply_of_an_author_who_does_not_follow_is_posted_without_subscribing_it(test_odoo, gateway, mailer):
    # Odoo's mail gateway would subscribe the author, and a follower of a sale order may read it
    # in the portal (ODOO_FACTS.md c): a reply of an author who does not follow stays a message_post,
    # which does not email it its reply either.
    # Paula may still read the task as a collaborator of its project (Odoo 18's portal rule).
    test_odoo.add_record("project.collaborator", {"project_id": PROJECT_ID, "partner_id": PAULA_PARTNER_ID,
                                                  "limited_access": False})
    test_odoo.remove_follower("project.task", TASK_ID, PAULA_PARTNER_ID)
    before = test_odoo.followers("project.task", TASK_ID)
    assert _send(mailer, "reply", "project.task", TASK_ID).startswith("250 ")
    [filing] = test_odoo.filings()
    assert filing.call.model_method == "message_post" and filing.subtype_xmlid == "mail.mt_comment"
    assert test_odoo.followers("project.task", TASK_ID) == before
    assert PAULA_PARTNER_ID not in {mail.partner_id for mail in test_odoo.outbox}


def test_one_reply_sent_to_two_records_is_filed_on_both(test_odoo, gateway, mailer):
    # Each recipient is its own SMTP transaction with the same Message-ID; Odoo's mail gateway
    # drops a Message-ID it knows anywhere, so the second record gets an ID of its own.
    task, order = mailer.address("reply", "project.task", TASK_ID), mailer.address("reply", "sale.order", SALE_ORDER_ID)
    raw = mailer.sign(compose(PAULA, f"{task}, {order}", "Both", "Same answer for both.", sender_name="Paula Contributor",
                              message_id="<both@example.com>"))
    first, second = mailer.send(raw, task), mailer.send(raw, order)
    assert first.startswith("250 2.0.0 Filed") and second.startswith("250 2.0.0 Filed")
    assert test_odoo.message(int(first.rsplit(" ", 1)[1]))["message_id"] == "<both@example.com>"
    assert test_odoo.message(int(second.rsplit(" ", 1)[1]))["message_id"] == "<both.sale.order-23@example.com>"
    # A retry of either is recognised, under the ID it was filed with.
    assert mailer.send(raw, order).startswith("250 2.0.0 Already filed as Odoo message " + second.rsplit(" ", 1)[1])
    assert mailer.send(raw, task).startswith("250 2.0.0 Already filed as Odoo message " + first.rsplit(" ", 1)[1])


def test_reply_attachments_reach_odoo_byte_exact(test_odoo, gateway, mailer):
    to = mailer.address("reply", "project.task", TASK_ID)
    payload = bytes(range(256)) * 40
    message = email.message_from_bytes(compose(PAULA, to, "Photo", "The reading, attached.",
                                               sender_name="Paula Contributor"), policy=email.policy.SMTP)
    message.add_attachment(payload, maintype="application", subtype="octet-stream", filename="reading.bin")
    raw = mailer.sign(message.as_bytes())
    reply = mailer.send(raw, to)
    assert reply.startswith("250 ")
    message = test_odoo.message(int(reply.rsplit(" ", 1)[1]))
    [attachment_id] = message["attachment_ids"]
    assert test_odoo.attachment_bytes(attachment_id) == payload
    assert test_odoo.record("ir.attachment", attachment_id, ["name", "res_model", "res_id"]) | {"id": 0} == {
        "id": 0, "name": "reading.bin", "res_model": "project.task", "res_id": TASK_ID}


def test_reply_to_a_record_deleted_while_it_is_filed_is_deferred_then_refused(test_odoo, gateway, mailer):
    # Ported from the reply-author branch: the task is deleted after the gateway authorized the
    # sender, while Odoo's mail gateway is about to file the reply. Odoo answers MissingError
    # (measured on Odoo 18), the reply is deferred, no record is created from the mail, and the
    # retry is refused at the record check.
    import threading
    import time

    to = mailer.address("reply", "project.task", TASK_ID)
    raw = mailer.sign(compose(PAULA, to, "Re: Pump", "Pump checked.", sender_name="Paula Contributor"))
    tasks_before = test_odoo.search("project.task", [], active_test=False)
    test_odoo.fail("hang", method="message_process", seconds=10)
    replies: list[str] = []
    sender = threading.Thread(target=lambda: replies.append(mailer.send(raw, to)))
    sender.start()
    deadline = time.monotonic() + 10
    while not [call for call in test_odoo.calls if call.model_method == "message_process"]:
        assert time.monotonic() < deadline, "message_process was never called"
        time.sleep(0.02)
    with test_odoo.db.lock:
        test_odoo.db.rows["project.task"].pop(TASK_ID)
    test_odoo.heal()
    sender.join(timeout=30)
    assert replies and replies[0].startswith("451 4.3.0 Odoo is unavailable"), replies
    assert test_odoo.search("project.task", [], active_test=False) == [t for t in tasks_before if t != TASK_ID]
    assert mailer.send(raw, to).startswith("550 5.1.1 The record of this address does not exist")
