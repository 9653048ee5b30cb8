"""The main end-to-end scenarios against a real Odoo 18, checked as its admin and from its portal."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib

import pytest

from .conftest import RealGateway, closed_port, start_real_gateway
from .provision import filed_id as _filed_id, new_message_id as _message_id, stored_message as _stored
from .provision import (followers_of, messages_on, notifications_for_message, OdooWebError, portal_session, QUIET,
                        real_odoo_or_skip)

real_odoo_or_skip()

pytestmark = pytest.mark.real_odoo

NOTE_TEXT = ("Inspected pump P-7 on site: the seal is worn, replacement needed within two weeks.\n"
             "Customer's contact was not told yet; please handle the quote internally.\n")
HTML_TEXT = "The valve is fine. Margin is thin, keep it internal.\n"
HTML_BODY = ("<html><head><style>p{color:red}</style><script>alert('x')</script></head>"
             "<body><p onclick=\"steal()\">The valve is <b>fine</b>.</p>"
             "<p>Margin is thin, keep it <a href=\"javascript:alert(1)\">internal</a>.</p></body></html>")


def _subtype_id(world, xmlid: str) -> int:
    module, name = xmlid.split(".")
    return world.admin.execute("ir.model.data", "check_object_reference", module, name)[1]


def _with_message_id(world, message_id: str) -> list[int]:
    """Every mail.message carrying this Message-ID, on any record (the admin sees them all)."""
    return world.admin.env["mail.message"].search([("message_id", "=", message_id)])


def _mails_of(world, message_id: int) -> list[int]:
    """Outgoing mail.mail rows of a message (sent ones are auto-deleted, so notifications are the proof)."""
    return world.admin.env["mail.mail"].with_context(active_test=False).search([("mail_message_id", "=", message_id)])


def _last_message_id(world, model: str, res_id: int) -> int:
    return max([m["id"] for m in messages_on(world, model, res_id)], default=0)


def _portal_sees(world, user, model: str, res_id: int) -> list[int]:
    session = portal_session(world, user.login, user.password)
    # The portal user can open the record at all: an empty chatter would otherwise prove nothing.
    assert session.can_read(model, res_id)
    return session.chatter_ids(model, res_id)


def _assert_real_html(body: str) -> None:
    """Real HTML, not the escaped text Odoo stores without body_is_html (ODOO_FACTS.md b): the
    template's tags arrive as tags. (The sender's "<address>" is rightly text, escaped.)"""
    assert body.startswith("<p>") and "<strong>Site visit</strong>" in body
    assert "&lt;p&gt;" not in body and "&lt;strong&gt;" not in body and "&lt;em&gt;" not in body


def _assert_internal_note(world, gateway: RealGateway, model: str, res_id: int, odoo_id: int, message_id: str,
                          followers_before: list[int]) -> dict:
    stored = _stored(world, model, res_id, odoo_id)
    assert stored["subtype_id"][0] == _subtype_id(world, "mail.mt_note")
    assert stored["message_type"] == "comment"
    assert stored["author_id"][0] == world.contributor.partner_id
    assert stored["message_id"] == message_id
    _assert_real_html(stored["body"])
    assert stored["partner_ids"] == []
    # Autofollow off: nobody became a follower, the integration user least of all.
    assert followers_of(world, model, res_id) == followers_before
    assert world.integration.partner_id not in followers_of(world, model, res_id)
    # No email went out: Odoo makes one mail.notification per notified partner (ODOO_FACTS.md c).
    assert notifications_for_message(world, odoo_id) == []
    assert _mails_of(world, odoo_id) == []
    # Invisible from the portal side, for the contributor who wrote it as for the other portal follower.
    for user in (world.contributor, world.plain):
        assert odoo_id not in _portal_sees(world, user, model, res_id)
    [row] = [row for row in gateway.journal() if row.message_id == message_id]
    assert (row.verdict, row.dkim_domain, row.odoo_message_id) == ("filed", world.domain, odoo_id)
    return stored


def test_note_from_contributor_on_task_is_an_internal_log_note(world, real_gateway):
    task = world.task_id
    message_id = _message_id(world)
    to = real_gateway.address("note", "project.task", task)
    body = NOTE_TEXT + "Details: https://example.com/reports/p7\n"
    raw = real_gateway.sign(real_gateway.message(world.contributor.email, to, body,
                                                 sender_name="Paula Contributor", message_id=message_id))
    reply = real_gateway.send(raw, to, mail_from=world.contributor.email, label="note on task")
    odoo_id = _filed_id(reply)
    stored = _assert_internal_note(world, real_gateway, "project.task", task, odoo_id, message_id,
                                   world.task_followers)
    assert "the seal is worn" in stored["body"]
    assert 'href="https://example.com/reports/p7"' in stored["body"]
    print(f"\nnote on project.task {task}: {reply!r} in {real_gateway.timings['note on task']:.3f} s; "
          f"subtype {stored['subtype_id']}, author {stored['author_id']}, is_internal {stored['is_internal']}, "
          f"notifications 0, followers {followers_of(world, 'project.task', task)}")


def test_html_note_on_sale_order_is_sanitized_internal_and_follows_nobody(world, real_gateway):
    order = world.sale_order_id
    message_id = _message_id(world)
    to = real_gateway.address("note", "sale.order", order)
    raw = real_gateway.sign(real_gateway.message(world.contributor.email, to, HTML_TEXT, html=HTML_BODY,
                                                 message_id=message_id))
    reply = real_gateway.send(raw, to, mail_from=world.contributor.email, label="note on sale order")
    odoo_id = _filed_id(reply)
    # sale.order forces mail_post_autofollow=True unless told otherwise (ODOO_FACTS.md c): the
    # followers are exactly those of before the post.
    stored = _assert_internal_note(world, real_gateway, "sale.order", order, odoo_id, message_id, world.order_followers)
    assert "<b>fine</b>" in stored["body"]
    for dangerous in ("<script", "onclick", "javascript:", "<style", "color:red"):
        assert dangerous not in stored["body"]
    print(f"\nnote on sale.order {order} ({world.sale_order_name}): {reply!r} in "
          f"{real_gateway.timings['note on sale order']:.3f} s; body {stored['body'][:160]!r}...; "
          f"followers {followers_of(world, 'sale.order', order)}")


def test_reply_is_a_public_comment_that_portal_users_see_and_a_note_beside_it_they_do_not(world, real_gateway):
    task = world.task_id
    reply_id, note_id = _message_id(world), _message_id(world)
    reply_to = real_gateway.address("reply", "project.task", task)
    note_to = real_gateway.address("note", "project.task", task)
    raw = real_gateway.sign(real_gateway.message(world.contributor.email, reply_to,
                                                 "Public answer: the pump ships on Monday.\n",
                                                 sender_name="Paula Contributor", message_id=reply_id))
    comment = _filed_id(real_gateway.send(raw, reply_to, mail_from=world.contributor.email, label="reply on task"))
    raw = real_gateway.sign(real_gateway.message(world.contributor.email, note_to, "Internal: the margin is thin.\n",
                                                 sender_name="Paula Contributor", message_id=note_id))
    note = _filed_id(real_gateway.send(raw, note_to, mail_from=world.contributor.email))

    stored = _stored(world, "project.task", task, comment)
    assert stored["subtype_id"][0] == _subtype_id(world, "mail.mt_comment")
    assert stored["author_id"][0] == world.contributor.partner_id and stored["message_id"] == reply_id
    assert "<p>Public answer: the pump ships on Monday.</p>" in stored["body"]
    _assert_real_html(stored["body"])
    for user in (world.plain, world.contributor):
        seen = _portal_sees(world, user, "project.task", task)
        assert comment in seen and note not in seen
    # A public comment is emailed to every other follower of the record (the customer side
    # included) and to nobody else: not to its author (issue 3; filed through Odoo's mail gateway,
    # which posts as the archived OdooBot), not to the integration user, which did not become a
    # follower either.
    notified = sorted(n["res_partner_id"][0] for n in notifications_for_message(world, comment))
    others = set(world.task_followers) - {world.contributor.partner_id}
    assert set(notified) == others and world.plain.partner_id in others
    assert stored["message_type"] == "email"
    assert world.integration.partner_id not in notified
    assert followers_of(world, "project.task", task) == world.task_followers
    assert notifications_for_message(world, note) == []
    print(f"\nreply on project.task {task}: message {comment} in {real_gateway.timings['reply on task']:.3f} s, "
          f"subtype {stored['subtype_id']}; notified partners {notified} "
          f"(contributor/author {world.contributor.partner_id}, plain {world.plain.partner_id}); "
          f"note {note} beside it: 0 notifications; portal chatter of plain: "
          f"{_portal_sees(world, world.plain, 'project.task', task)}")


def test_one_reply_to_task_and_order_is_filed_on_both_with_its_file_byte_exact(world, real_gateway):
    # One email to two reply addresses: two transactions, one Message-ID, which Odoo's mail gateway
    # files only once (mail_thread.py:1375); the order gets an ID of its own.
    message_id = _message_id(world)
    task_to = real_gateway.address("reply", "project.task", world.task_id)
    order_to = real_gateway.address("reply", "sale.order", world.sale_order_id)
    message = email.message_from_bytes(real_gateway.message(
        world.contributor.email, f"{task_to}, {order_to}", "Delivery note attached.\n",
        sender_name="Paula Contributor", message_id=message_id), policy=email.policy.SMTP)
    payload = bytes(range(256)) * 16
    message.add_attachment(payload, maintype="application", subtype="octet-stream", filename="delivery.bin")
    raw = real_gateway.sign(message.as_bytes())
    on_task = _filed_id(real_gateway.send(raw, task_to, mail_from=world.contributor.email))
    on_order = _filed_id(real_gateway.send(raw, order_to, mail_from=world.contributor.email))
    task_row = _stored(world, "project.task", world.task_id, on_task)
    order_row = _stored(world, "sale.order", world.sale_order_id, on_order)
    assert task_row["message_id"] == message_id and order_row["message_id"] != message_id
    for row in (task_row, order_row):
        [attachment] = world.admin.env["ir.attachment"].read(row["attachment_ids"], ["name", "datas"])
        assert attachment["name"] == "delivery.bin"
        assert base64.b64decode(attachment["datas"]) == payload
        notified = {n["res_partner_id"][0] for n in notifications_for_message(world, row["id"])}
        assert world.contributor.partner_id not in notified and notified
    assert followers_of(world, "sale.order", world.sale_order_id) == world.order_followers
    # A retry of the second delivery is recognised.
    assert real_gateway.send(raw, order_to, mail_from=world.contributor.email).startswith(
        f"250 2.0.0 Already filed as Odoo message {on_order}")


@pytest.mark.parametrize("who, expected", [
    ("plain", "550 5.7.1 Sender may not post internal notes"),
    ("archived", "550 5.7.1 The Odoo user of this sender is archived"),
    ("unknown", "550 5.7.1 No Odoo user has this sender address"),
])
def test_sender_not_allowed_to_post_notes_is_refused(world, real_gateway, who, expected):
    sender = f"stranger.{world.tag}@{world.domain}" if who == "unknown" else getattr(world, who).email
    task = world.task_id
    before = _last_message_id(world, "project.task", task)
    to = real_gateway.address("note", "project.task", task)
    raw = real_gateway.sign(real_gateway.message(sender, to, NOTE_TEXT))
    reply = real_gateway.send(raw, to, mail_from=sender, label=f"refused {who}")
    assert reply.startswith(expected), reply
    assert _last_message_id(world, "project.task", task) == before
    print(f"\n{who} sender {sender}: {reply!r} in {real_gateway.timings[f'refused {who}']:.3f} s")


def test_contributor_who_does_not_follow_the_record_is_refused(world, real_gateway):
    Task = world.admin.env["project.task"].with_context(**QUIET)
    other = Task.create({"name": f"Unfollowed Task {world.tag}", "project_id": world.project_id,
                         "user_ids": [(6, 0, [])]})
    world.track("project.task", other)
    assert world.contributor.partner_id not in followers_of(world, "project.task", other)
    to = real_gateway.address("note", "project.task", other)
    raw = real_gateway.sign(real_gateway.message(world.contributor.email, to, NOTE_TEXT))
    reply = real_gateway.send(raw, to, mail_from=world.contributor.email, label="refused non-follower")
    assert reply.startswith("550 5.7.1 Sender has no access to this record"), reply
    assert _last_message_id(world, "project.task", other) == 0
    print(f"\nnon-follower on project.task {other}: {reply!r}")


def test_unsigned_note_is_refused(world, real_gateway):
    task = world.task_id
    before = _last_message_id(world, "project.task", task)
    to = real_gateway.address("note", "project.task", task)
    reply = real_gateway.send(real_gateway.message(world.contributor.email, to, NOTE_TEXT), to,
                              mail_from=world.contributor.email, label="refused unsigned")
    assert reply.startswith("550 5.7.1 Sender not authenticated") and "no DKIM signature" in reply, reply
    assert _last_message_id(world, "project.task", task) == before
    print(f"\nunsigned: {reply!r}")


def test_signature_of_another_domain_is_refused(world, real_gateway):
    task = world.task_id
    before = _last_message_id(world, "project.task", task)
    to = real_gateway.address("note", "project.task", task)
    raw = real_gateway.sign(real_gateway.message(world.contributor.email, to, NOTE_TEXT), domain="evil.example")
    reply = real_gateway.send(raw, to, mail_from=world.contributor.email)
    assert reply.startswith("550 5.7.1") and "does not align" in reply, reply
    assert _last_message_id(world, "project.task", task) == before
    print(f"\nsigned by evil.example: {reply!r}")


def test_same_message_id_twice_is_filed_once(world, real_gateway):
    message_id = _message_id(world)
    to = real_gateway.address("note", "sale.order", world.sale_order_id)
    raw = real_gateway.sign(real_gateway.message(world.contributor.email, to, NOTE_TEXT, message_id=message_id))
    first = _filed_id(real_gateway.send(raw, to, mail_from=world.contributor.email))
    second = real_gateway.send(raw, to, mail_from=world.contributor.email, label="duplicate")
    assert second == f"250 2.0.0 Already filed as Odoo message {first}"
    assert _with_message_id(world, message_id) == [first]
    print(f"\nsame Message-ID twice: message {first}, second reply {second!r} in "
          f"{real_gateway.timings['duplicate']:.3f} s; messages with that Message-ID: {[first]}")


@pytest.mark.parametrize("first", ["plain reply", "contributor note"])
def test_a_message_id_another_sender_filed_on_the_record_swallows_nothing(world, real_gateway, first):
    # Found by a security review: Peter (portal, no contributor) replies with the Message-ID of
    # Paula's note; only a message of the same author under that ID is "already filed".
    task, message_id = world.task_id, _message_id(world)
    reply_to, note_to = (real_gateway.address(kind, "project.task", task) for kind in ("reply", "note"))
    sends = {
        "plain reply": (real_gateway.sign(real_gateway.message(
            world.plain.email, reply_to, "Peter's public answer.\n", message_id=message_id)), reply_to, world.plain),
        "contributor note": (real_gateway.sign(real_gateway.message(
            world.contributor.email, note_to, "Paula's internal finding.\n", message_id=message_id)), note_to,
            world.contributor),
    }
    order = [first] + [name for name in sends if name != first]
    filed = {}
    for name in order:
        raw, to, sender = sends[name]
        filed[name] = _filed_id(real_gateway.send(raw, to, mail_from=sender.email))
    note = _stored(world, "project.task", task, filed["contributor note"])
    reply = _stored(world, "project.task", task, filed["plain reply"])
    assert note["author_id"][0] == world.contributor.partner_id and "internal finding" in note["body"]
    assert note["subtype_id"][0] == _subtype_id(world, "mail.mt_note")
    assert reply["author_id"][0] == world.plain.partner_id and "public answer" in reply["body"]
    assert reply["subtype_id"][0] == _subtype_id(world, "mail.mt_comment")
    # The first keeps the original ID; the second is filed under one derived from it (gateway/post.py):
    # a reply by Odoo's mail gateway under its record's own, a note under its sender's own.
    local, _, domain = message_id.strip("<>").rpartition("@")
    digest = hashlib.sha256(world.contributor.email.lower().encode()).hexdigest()[:12]
    first_id, second_id = (note, reply) if first == "contributor note" else (reply, note)
    assert first_id["message_id"] == message_id
    assert second_id["message_id"] == (f"<{local}.project.task-{task}@{domain}>" if first == "contributor note"
                                       else f"<{local}.project.task-{task}.from-{digest}@{domain}>")
    assert _portal_sees(world, world.plain, "project.task", task).count(filed["contributor note"]) == 0
    assert filed["plain reply"] in _portal_sees(world, world.plain, "project.task", task)
    # Each sender's retry is recognised as its own message, nothing is filed a third time.
    for name in order:
        raw, to, sender = sends[name]
        assert real_gateway.send(raw, to, mail_from=sender.email) == f"250 2.0.0 Already filed as Odoo message {filed[name]}"
    assert sorted(m["id"] for m in messages_on(world, "project.task", task)
                  if m["message_id"] in (first_id["message_id"], second_id["message_id"])) == sorted(filed.values())
    print(f"\n{first} first, same Message-ID: note {filed['contributor note']} ({note['message_id']}), "
          f"reply {filed['plain reply']} ({reply['message_id']}); retries answered Already filed")


def test_odoo_unreachable_defers_with_451_and_the_retry_is_filed_once(world, real_gateway, tmp_path, signing_dns):
    down = start_real_gateway(tmp_path, world, real_gateway.keys, signing_dns.port,
                              odoo_url=f"http://127.0.0.1:{closed_port()}", odoo_timeout=5)
    try:
        message_id = _message_id(world)
        to = down.address("note", "project.task", world.task_id)
        raw = down.sign(down.message(world.contributor.email, to, NOTE_TEXT, message_id=message_id))
        deferred = down.send(raw, to, mail_from=world.contributor.email, label="odoo down")
    finally:
        down.server.stop()
        down.services.close()
    assert deferred.startswith("451 4.3.0 Odoo is unavailable"), deferred
    assert _with_message_id(world, message_id) == []
    # The sending MTA retries later, when Odoo is back (here: the gateway pointed at it).
    odoo_id = _filed_id(real_gateway.send(raw, to, mail_from=world.contributor.email))
    assert _with_message_id(world, message_id) == [odoo_id]
    print(f"\nOdoo unreachable: {deferred!r} in {down.timings['odoo down']:.3f} s; retry filed as {odoo_id}")


def test_non_member_may_still_file_a_public_reply(world, real_gateway):
    task = world.task_id
    to = real_gateway.address("reply", "project.task", task)
    raw = real_gateway.sign(real_gateway.message(world.plain.email, to, "Thanks, Monday suits us.\n"))
    comment = _filed_id(real_gateway.send(raw, to, mail_from=world.plain.email, label="reply by non-member"))
    stored = _stored(world, "project.task", task, comment)
    assert stored["subtype_id"][0] == _subtype_id(world, "mail.mt_comment")
    assert stored["author_id"][0] == world.plain.partner_id
    assert comment in _portal_sees(world, world.contributor, "project.task", task)
    print(f"\nnon-member reply on project.task {task}: message {comment} by partner {stored['author_id']}")


def test_record_that_does_not_exist_is_refused(world, real_gateway):
    Task = world.admin.env["project.task"].with_context(active_test=False)
    missing = Task.search([], order="id desc", limit=1)[0] + 100000
    to = real_gateway.address("note", "project.task", missing)
    raw = real_gateway.sign(real_gateway.message(world.contributor.email, to, NOTE_TEXT))
    reply = real_gateway.send(raw, to, mail_from=world.contributor.email)
    assert reply.startswith("550 5.1.1 The record of this address does not exist"), reply
    print(f"\nproject.task {missing} (no such record): {reply!r}")


def test_attachment_of_a_note_keeps_its_bytes_and_stays_internal(world, real_gateway):
    task = world.task_id
    payload = bytes(range(256)) * 4
    to = real_gateway.address("note", "project.task", task)
    message = email.message_from_bytes(
        real_gateway.message(world.contributor.email, to, "Measurements attached.\n"), policy=email.policy.SMTP)
    message.add_attachment(payload, maintype="application", subtype="octet-stream", filename="readings.bin")
    note = _filed_id(real_gateway.send(real_gateway.sign(message.as_bytes()), to, mail_from=world.contributor.email,
                                       label="note with attachment"))
    [attachment_id] = _stored(world, "project.task", task, note)["attachment_ids"]
    [attachment] = world.admin.env["ir.attachment"].read([attachment_id], ["name", "res_model", "res_id", "checksum",
                                                                          "file_size"])
    assert (attachment["name"], attachment["res_model"], attachment["res_id"]) == ("readings.bin", "project.task", task)
    assert attachment["checksum"] == hashlib.sha1(payload).hexdigest() and attachment["file_size"] == len(payload)
    assert notifications_for_message(world, note) == []
    for user in (world.contributor, world.plain):
        session = portal_session(world, user.login, user.password)
        assert note not in session.chatter_ids("project.task", task)
        with pytest.raises(OdooWebError, match="AccessError"):
            session.call_kw("ir.attachment", "read", [[attachment_id], ["name"]])
    print(f"\nnote with attachment on project.task {task}: message {note}, ir.attachment {attachment_id} "
          f"({attachment['file_size']} bytes, sha1 equal), unreadable by both portal users")


def test_an_integration_user_that_may_read_orders_but_not_write_them_is_warned_of_and_defers(world, real_gateway):
    # Operator review: a "Project / Administrator" integration user reads sale.order but may not
    # write it, so Odoo refuses its message_post (Document type: Message, Operation: create); the
    # checks said all was well and every note was "Odoo is unavailable". Now has_access warns, the
    # note gets the configuration 451, nothing is posted, and the retry after the fix is filed.
    from gateway import checks
    from gateway.odoo import OdooPool

    ref = world.admin.env.ref
    sales = [ref("sales_team.group_sale_salesman_all_leads").id, ref("sales_team.group_sale_salesman").id]
    project_admin = ref("project.group_project_manager").id
    users = world.admin.env["res.users"]
    config = real_gateway.services.config
    [(name, connection)] = config.gateway.odoo.items()
    [domain] = config.domains
    pool = OdooPool(name, connection, config.api_keys[name])
    order = world.sale_order_id
    to = real_gateway.address("note", "sale.order", order)
    raw = real_gateway.sign(real_gateway.message(world.contributor.email, to, NOTE_TEXT, message_id=_message_id(world)))
    before = [row["id"] for row in messages_on(world, "sale.order", order)]
    try:
        users.browse(world.integration.user_id).write({"groups_id": [(3, group) for group in sales]
                                                       + [(4, project_admin)]})
        found = checks.Findings()
        checks.check_connection(config, name, pool, found)
        assert [str(warning) for warning in found.warnings if "sale.order" in str(warning)] == [
            f"{domain}: sale.order: {world.integration.login} may read sale.order but not write it, and Odoo "
            "lets only users who may write a record post on it unless the model lets readers post: notes to a "
            "sale.order, and replies from senders who do not follow it, would be deferred (451); replies from "
            "followers are filed by Odoo's mail gateway (give "
            f"{world.integration.login} write access to sale.order (sale.order: Sales / User: All Documents))"]
        assert not found.errors
        reply = real_gateway.send(raw, to, mail_from=world.contributor.email)
        assert reply == ("451 4.3.0 The gateway's Odoo user may not post on this record, an administrator must "
                         f"correct it: sale.order {order}")
        assert [row["id"] for row in messages_on(world, "sale.order", order)] == before
        # As the warning says: a reply of a follower (the contributor follows the order) goes
        # through Odoo's mail gateway, which posts as OdooBot, and is filed all the same.
        reply_to = real_gateway.address("reply", "sale.order", order)
        follower_reply = real_gateway.sign(real_gateway.message(world.contributor.email, reply_to, "Reply.\n",
                                                                message_id=_message_id(world)))
        _filed_id(real_gateway.send(follower_reply, reply_to, mail_from=world.contributor.email))
    finally:
        users.browse(world.integration.user_id).write({"groups_id": [(3, project_admin), (4, sales[0])]})
        pool.close()
    # Odoo answered the refused post, so the retry is posted at once (no unsettled post).
    _filed_id(real_gateway.send(raw, to, mail_from=world.contributor.email))
