"""A follower's reply+ filed through Odoo 18's own mail gateway (message_process), checked as Odoo's admin (issue 3);
a reply to an internal note, filed as a note (also when it names the note folded inside the msg-id); a reply to a
note of another record, refused; a reply-all naming the note address with a final dot, filed as a note."""

from __future__ import annotations

import base64
import email
import email.utils
import email.policy
import hashlib
import re

import pytest

from serving import folded_msg_id

from .provision import filed_id as _filed_id, new_message_id as _message_id, real_odoo_or_skip
from .provision import assert_a_note_nobody_outside_sees, internal_authors_of, messages_on, note_posted_in_the_backend
from .provision import notifications_for_message, portal_session, reply_quoting, stored_message as _stored
from .provision import WebSession, _create_user, _ref

real_odoo_or_skip()

pytestmark = pytest.mark.real_odoo

PIXEL = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
TEXT_FILE = "line one\r\nline two\nlatin \xe9\r\n".encode("latin-1")


def test_reply_attachments_keep_their_bytes_and_the_inline_image_shows(world, real_gateway):
    task = world.task_id
    payload = bytes(range(256)) * 4
    to = real_gateway.address("reply", "project.task", task)
    message = email.message_from_bytes(
        real_gateway.message(world.contributor.email, to, "Photo and readings.\n",
                             html='<p>Photo: <img src="cid:pixel@note-gateway.test"></p>'),
        policy=email.policy.SMTP)
    message.get_payload()[1].add_related(PIXEL, maintype="image", subtype="png", cid="<pixel@note-gateway.test>",
                                         filename="pixel.png")
    message.add_attachment(payload, maintype="application", subtype="octet-stream", filename="readings.bin")
    message.add_attachment(TEXT_FILE, maintype="text", subtype="plain", filename="log.txt")
    comment = _filed_id(real_gateway.send(real_gateway.sign(message.as_bytes()), to,
                                          mail_from=world.contributor.email))
    stored = _stored(world, "project.task", task, comment)
    rows = world.admin.env["ir.attachment"].read(stored["attachment_ids"],
                                                 ["name", "datas", "res_model", "res_id", "access_token"])
    files = {row["name"]: base64.b64decode(row["datas"]) for row in rows}
    assert files == {"pixel.png": PIXEL, "readings.bin": payload, "log.txt": TEXT_FILE}
    assert {(row["res_model"], row["res_id"]) for row in rows} == {("project.task", task)}
    [(image_id, token)] = re.findall(r'src="/web/image/(\d+)\?access_token=([\w-]+)"', stored["body"])
    [image] = [row for row in rows if row["id"] == int(image_id)]
    assert image["name"] == "pixel.png" and image["access_token"] == token
    print(f"\nreply with files on project.task {task}: message {comment}, attachments "
          f"{ {row['name']: (row['id'], hashlib.sha1(files[row['name']]).hexdigest()[:10]) for row in rows} }, "
          f"inline image -> /web/image/{image_id}")


def test_reply_odoo_would_attribute_to_an_older_follower_with_the_same_address_is_posted_as_the_senders(
        world, real_gateway):
    # Odoo takes the author from the record's followers first, oldest first (mail_thread.py
    # _mail_find_partner_from_emails): a contact with Paula's address that followed the task
    # before her won, and the reply was only journaled as another's. The gateway now sees that
    # follower first and posts the reply with message_post, Paula as its author.
    task = world.task_id
    admin = world.admin
    twin = admin.env["res.partner"].with_context(mail_create_nosubscribe=True).create(
        {"name": f"Paula old contact {world.tag}", "email": world.contributor.email})
    world.track("res.partner", twin)
    admin.execute_kw("project.task", "message_unsubscribe", [[task]], {"partner_ids": [world.contributor.partner_id]})
    admin.execute_kw("project.task", "message_subscribe", [[task]], {"partner_ids": [twin]})
    admin.execute_kw("project.task", "message_subscribe", [[task]], {"partner_ids": [world.contributor.partner_id]})
    try:
        message_id = _message_id(world)
        to = real_gateway.address("reply", "project.task", task)
        raw = real_gateway.sign(real_gateway.message(world.contributor.email, to, "Twin check.\n",
                                                     message_id=message_id))
        comment = _filed_id(real_gateway.send(raw, to, mail_from=world.contributor.email))
        assert _stored(world, "project.task", task, comment)["author_id"][0] == world.contributor.partner_id
        [row] = [row for row in real_gateway.journal() if row.message_id == message_id]
        assert any(note.startswith("reply-posted-by-message_post:another follower of the record has the sender's "
                                   "address") and str(twin) in note for note in row.defects)
    finally:
        admin.execute_kw("project.task", "message_unsubscribe", [[task]], {"partner_ids": [twin]})
    print(f"\nolder follower {twin} with the contributor's address: message {comment} posted as the "
          f"contributor's; journal defects {row.defects}")


@pytest.mark.parametrize("name", ["Päula <{internal}>", "Zoë [ACME]", "Renée @ ACME"])
def test_a_reply_is_the_senders_whatever_name_she_gives_herself(world, real_gateway, name):
    # Found by a differential review against Odoo 18: a portal user named "Päula <an internal
    # user's address>" (she may set her name on /my/account) had her reply filed public as the
    # internal user's; "Zoë [ACME]" and "Renée @ ACME" had it filed without an author.
    task, admin = world.task_id, world.admin
    name = name.format(internal=world.internal.email)
    admin.execute_kw("res.partner", "write", [[world.contributor.partner_id], {"name": name}])
    try:
        to = real_gateway.address("reply", "project.task", task)
        raw = real_gateway.sign(real_gateway.message(world.contributor.email, to, "Name check.\n",
                                                     sender_name="Paula"))
        comment = _filed_id(real_gateway.send(raw, to, mail_from=world.contributor.email))
        stored = _stored(world, "project.task", task, comment)
    finally:
        admin.execute_kw("res.partner", "write", [[world.contributor.partner_id], {"name": world.contributor.name}])
    assert stored["author_id"] and stored["author_id"][0] == world.contributor.partner_id
    assert email.utils.getaddresses([stored["email_from"]]) == [(name, world.contributor.email)]
    print(f"\nname {name!r}: message {comment} by {stored['author_id']}, email_from {stored['email_from']!r}")


def test_odoo_reads_a_utf8_from_handed_to_its_mail_gateway(world):
    # The gateway writes the From of a reply in the form Odoo holds the sender's address, as UTF-8
    # when its domain is in U-labels (post.reply_message); Odoo 18 reads it so and finds the
    # partner by it (a U-label From given to the SMTP policy was a 451 forever, an A-label one
    # filed the reply without an author: found by a differential review).
    from gateway import post
    from gateway.context import MessageContext, OdooUser, ParsedMessage, Target

    task, admin = world.task_id, world.admin
    address = f"{world.tag}.paula@b\u00fccher.note-gateway.test"
    partner = admin.env["res.partner"].with_context(mail_create_nosubscribe=True).create(
        {"name": f"Päula <{world.internal.email}> {world.tag}", "email": address})
    world.track("res.partner", partner)
    admin.execute_kw("project.task", "message_subscribe", [[task]], {"partner_ids": [partner]})
    try:
        ascii_address = address.replace("b\u00fccher", "xn--bcher-kva")
        ctx = MessageContext(raw=b"", mail_from=ascii_address, rules=None,  # type: ignore[arg-type]
                             target=Target("reply", "notes.example.com", "project.task", task, "reply+x@notes.example.com"))
        ctx.message = ParsedMessage(message_id=_message_id(world), from_address=ascii_address, from_name="Paula",
                                    subject="Re: Site visit", text_plain="", text_html="")
        ctx.user = OdooUser(uid=0, login=address, name=f"Päula <{world.internal.email}>", email=address,
                            partner_id=partner, commercial_partner_id=partner, internal=False)
        ctx.rendered_body = "<p>UTF-8 From check.</p>"
        ctx.reply_from = (post.reply_from_name(ctx), address)
        admin.execute_kw("mail.thread", "message_process", ["project.task", post.reply_message(ctx, ctx.message.message_id)],
                         {"custom_values": dict(post.NO_RECORD_CREATION), "thread_id": task})
        [stored] = admin.execute_kw("mail.message", "search_read", [[("message_id", "=", ctx.message.message_id)]],
                                    {"fields": ["author_id", "email_from", "model", "res_id"]})
    finally:
        admin.execute_kw("project.task", "message_unsubscribe", [[task]], {"partner_ids": [partner]})
    assert stored["author_id"] and stored["author_id"][0] == partner
    assert (stored["model"], stored["res_id"]) == ("project.task", task)
    print(f"\nUTF-8 From {address}: filed by {stored['author_id']}, email_from {stored['email_from']!r}")


def _answer(real_gateway, sender: str, to: str, parent: str, quoted: str, references: list[str] | None = None) -> bytes:
    """A plain Reply to ``parent`` as a mail client writes it: In-Reply-To, References, the parent quoted."""
    raw = real_gateway.message(sender, to, f"The pump runs again.\n\nOn Monday, someone wrote:\n> {quoted}\n",
                               subject="Re: Site visit", message_id=_message_id(real_gateway.world))
    folded = "\r\n ".join(references or [parent])
    return real_gateway.sign(f"In-Reply-To: {parent}\r\nReferences: {folded}\r\n".encode() + raw)


@pytest.mark.parametrize("parent", ["gateway note", "backend note"])
def test_a_reply_to_an_internal_note_is_filed_as_a_note_the_portal_never_sees(world, real_gateway, parent):
    # Found by a design review: such a reply was filed publicly, its quote carrying the note's text
    # to the portal followers. Odoo's own mail gateway files a reply to an internal message as a note.
    task = world.task_id
    secret = f"Margin on this job is 40% ({world.tag}, {parent})"
    if parent == "gateway note":
        note_to = real_gateway.address("note", "project.task", task)
        note_id = _message_id(world)
        _filed_id(real_gateway.send(real_gateway.sign(real_gateway.message(world.contributor.email, note_to, secret,
                                                                           message_id=note_id)),
                                    note_to, mail_from=world.contributor.email))
    else:
        note_id = note_posted_in_the_backend(world, secret)
        assert f"-openerp-{task}-project.task@" in note_id
    to = real_gateway.address("reply", "project.task", task)
    filed = _filed_id(real_gateway.send(_answer(real_gateway, world.contributor.email, to, note_id, secret), to,
                                        mail_from=world.contributor.email))
    stored = _stored(world, "project.task", task, filed)
    assert stored["subtype_id"][0] == world.admin.execute("ir.model.data", "check_object_reference", "mail", "mt_note")[1]
    assert "The pump runs again." in stored["body"]
    # Only the internal author of the note (the admin, for the backend note) is notified; never the portal.
    notified = [row["res_partner_id"][0] for row in notifications_for_message(world, filed)]
    assert notified == internal_authors_of(world, note_id) == ([] if parent == "gateway note"
                                                               else [world.admin.env.user.partner_id.id])
    for user in (world.plain, world.contributor):
        session = portal_session(world, user.login, user.password)
        assert session.can_read("project.task", task)
        seen = session.chatter("project.task", task)
        assert filed not in [message["id"] for message in seen]
        assert not any(world.tag in str(message.get("body") or "") and "40%" in str(message.get("body") or "")
                       for message in seen)
    [row] = [row for row in real_gateway.journal() if row.odoo_message_id == filed]
    assert row.kind == "note" and f"answers internal message {note_id}" in row.decision
    print(f"\nreply to a {parent} ({note_id}) on project.task {task}: note {filed}, notified {notified}, "
          f"not in the portal chatter")


def test_a_reply_to_an_employees_note_notifies_him_never_a_portal_author(world, real_gateway):
    # Found by a review against Odoo 18: a contributor's reply+ answering Ed's backend note was filed
    # as a note with no recipients, and Ed, who follows the task for Discussions only (the default),
    # was never told; Odoo's catchall, given the same email, adds the parent's author to the
    # recipients (mail_thread.py:1297-1308). The gateway does so for an active internal user only.
    admin, task = world.admin, world.task_id
    ed = _create_user(admin, name=f"Ed Employee {world.tag}", login=f"ed.{world.tag}@{world.domain}",
                      group_ids=[_ref(admin, "base.group_user")], notification_type="email")
    world.track("res.partner", ed.partner_id)
    world.track("res.users", ed.user_id)
    admin.execute_kw("project.task", "message_subscribe", [[task]], {"partner_ids": [ed.partner_id]})
    session = WebSession(world.env)
    session.authenticate(ed.login, ed.password)
    posted = session.call_kw("project.task", "message_post", [[task]], {
        "body": f"EDNOTE margin 40% {world.tag}", "message_type": "comment", "subtype_xmlid": "mail.mt_note"})
    ed_note = _stored(world, "project.task", task, posted[0] if isinstance(posted, list) else posted)["message_id"]
    # A note whose author is the portal user Peter (who follows the task): never told of a note.
    portal_note = admin.execute_kw("project.task", "message_post", [[task]], {
        "body": f"PORTALNOTE {world.tag}", "message_type": "comment", "subtype_xmlid": "mail.mt_note",
        "author_id": world.plain.partner_id, "context": {"mail_create_nosubscribe": True}})
    portal_note = _stored(world, "project.task", task,
                          portal_note[0] if isinstance(portal_note, list) else portal_note)["message_id"]
    to = real_gateway.address("reply", "project.task", task)
    notified = {}
    for name, note_id in (("ed", ed_note), ("portal", portal_note)):
        filed = _filed_id(real_gateway.send(_answer(real_gateway, world.contributor.email, to, note_id, "margin"), to,
                                            mail_from=world.contributor.email))
        stored = _stored(world, "project.task", task, filed)
        assert stored["subtype_id"][0] == _ref(admin, "mail.mt_note")
        notified[name] = [(row["res_partner_id"][0], row["notification_type"])
                          for row in notifications_for_message(world, filed)]
    assert notified == {"ed": [(ed.partner_id, "email")], "portal": []}
    print(f"\nreply+ answering Ed's note {ed_note}: notified {notified['ed']}; answering Peter's: none")


def test_a_reply_whose_references_begin_with_a_note_is_a_note_however_long_they_are(world, real_gateway):
    # Found by a review: a note, the thread's root, then 20 ids Odoo never saw (the thread went on
    # by direct email), In-Reply-To the last of them: the gateway looked up the 20 most recent ids
    # only and filed the reply publicly, the note in its quote. Odoo's own gateway looks up every
    # References id and takes the most recently created message it has: the note.
    task = world.task_id
    secret = f"Margin on this job is 40% ({world.tag}, long references)"
    note_to = real_gateway.address("note", "project.task", task)
    note_id = _message_id(world)
    _filed_id(real_gateway.send(real_gateway.sign(real_gateway.message(world.contributor.email, note_to, secret,
                                                                       message_id=note_id)),
                                note_to, mail_from=world.contributor.email))
    later = [_message_id(world) for _ in range(20)]
    [odoos_parent] = world.admin.env["mail.message"].search_read(
        [("message_id", "in", [note_id, *later])], ["message_id"], order="create_date DESC, id DESC", limit=1)
    assert odoos_parent["message_id"] == note_id
    to = real_gateway.address("reply", "project.task", task)
    filed = _filed_id(real_gateway.send(_answer(real_gateway, world.contributor.email, to, later[-1], secret,
                                                references=[note_id, *later]),
                                        to, mail_from=world.contributor.email))
    stored = _stored(world, "project.task", task, filed)
    assert stored["subtype_id"][0] == world.admin.execute("ir.model.data", "check_object_reference", "mail", "mt_note")[1]
    assert notifications_for_message(world, filed) == []
    session = portal_session(world, world.plain.login, world.plain.password)
    assert filed not in session.chatter_ids("project.task", task)
    print(f"\nreply+ with References = note {note_id} + 20 unknown ids on project.task {task}: note {filed}")


@pytest.mark.parametrize("where", ["References", "In-Reply-To", "both", "Message-ID of the note"])
def test_a_reply_naming_a_note_folded_inside_its_msg_id_is_a_note(world, real_gateway, where):
    # Found by a review: a References or In-Reply-To folded inside the msg-id
    # ("<...-openerp-\r\n 60-project.task@host>") was dropped, and the reply filed publicly, the note
    # in its quote; Odoo's mail gateway deletes that white space (mail_thread.py message_route). A
    # note whose own Message-ID came folded was filed under a derived ID, which a reply naming it
    # unfolded did not find.
    task = world.task_id
    secret = f"Margin on this job is 40% ({world.tag}, folded {where})"
    if where == "Message-ID of the note":
        note_to = real_gateway.address("note", "project.task", task)
        note_id = _message_id(world)
        raw = real_gateway.message(world.contributor.email, note_to, secret, message_id=note_id)
        folded_raw = raw.replace(f"Message-ID: {note_id}".encode(), f"Message-ID: {folded_msg_id(note_id)}".encode())
        assert folded_raw != raw
        note = _filed_id(real_gateway.send(real_gateway.sign(folded_raw), note_to, mail_from=world.contributor.email))
        assert _stored(world, "project.task", task, note)["message_id"] == note_id
        in_reply_to, references = note_id, note_id
    else:
        note_id = note_posted_in_the_backend(world, secret)
        assert f"-openerp-{task}-project.task@" in note_id
        in_reply_to = folded_msg_id(note_id) if where in ("In-Reply-To", "both") else None
        references = folded_msg_id(note_id) if where in ("References", "both") else None
    headers = (f"In-Reply-To: {in_reply_to}\r\n" if in_reply_to else "") + (
        f"References: <older.{world.tag}@{world.domain}> {references}\r\n" if references else "")
    filed = reply_quoting(world, real_gateway, headers, secret)
    assert_a_note_nobody_outside_sees(world, real_gateway, filed, note_id)
    print(f"\nreply+ naming {note_id} folded ({where}) on project.task {task}: note {filed}")


def test_a_non_contributor_answering_an_internal_note_is_refused(world, real_gateway):
    task = world.task_id
    secret = f"Margin on this job is 40% ({world.tag}, refused)"
    note_id = note_posted_in_the_backend(world, secret)
    before = max(row["id"] for row in messages_on(world, "project.task", task))
    to = real_gateway.address("reply", "project.task", task)
    reply = real_gateway.send(_answer(real_gateway, world.plain.email, to, note_id, secret), to,
                              mail_from=world.plain.email)
    assert reply.startswith("550 5.7.1 Sender may not post internal notes: ") and "answers an internal note" in reply
    assert max(row["id"] for row in messages_on(world, "project.task", task)) == before
    print(f"\nnon-contributor's reply to a note on project.task {task}: {reply!r}")


def _post_on_the_order(world, text: str, subtype_xmlid: str) -> str:
    """A message an employee posts on the sale order in the backend; its Odoo Message-ID."""
    posted = world.admin.execute_kw("sale.order", "message_post", [[world.sale_order_id]],
                                    {"body": text, "message_type": "comment", "subtype_xmlid": subtype_xmlid,
                                     "context": {"mail_create_nosubscribe": True}})
    posted = posted[0] if isinstance(posted, list) else posted
    return _stored(world, "sale.order", world.sale_order_id, posted)["message_id"]


@pytest.mark.parametrize("parent", ["gateway note", "backend note"])
def test_a_reply_to_a_note_of_another_record_is_refused_and_never_public(world, real_gateway, parent):
    # Found by a review: the parent was looked for on the reply's own record only, so an answer to
    # a note of the order sent to the task's reply+ address was filed publicly on the task, the
    # order's note in its quote. Odoo's catchall finds the parent on any record.
    task, order = world.task_id, world.sale_order_id
    secret = f"Margin on this order is 40% ({world.tag}, cross {parent})"
    if parent == "gateway note":
        note_to = real_gateway.address("note", "sale.order", order)
        note_id = _message_id(world)
        _filed_id(real_gateway.send(real_gateway.sign(real_gateway.message(world.contributor.email, note_to, secret,
                                                                           message_id=note_id)),
                                    note_to, mail_from=world.contributor.email))
    else:
        note_id = _post_on_the_order(world, secret, "mail.mt_note")
        assert f"-openerp-{order}-sale.order@" in note_id
    before = max((row["id"] for row in messages_on(world, "project.task", task)), default=0)
    to = real_gateway.address("reply", "project.task", task)
    reply = real_gateway.send(_answer(real_gateway, world.contributor.email, to, note_id, secret), to,
                              mail_from=world.contributor.email)
    assert reply == ("550 5.7.1 The message answers an internal note of another record: send it to that "
                     "record's note address")
    assert max((row["id"] for row in messages_on(world, "project.task", task)), default=0) == before
    for user in (world.plain, world.contributor):
        session = portal_session(world, user.login, user.password)
        for model, res_id in (("project.task", task), ("sale.order", order)):
            assert not any(world.tag in str(message.get("body") or "") and "40%" in str(message.get("body") or "")
                           for message in session.chatter(model, res_id))
    row = real_gateway.journal()[0]  # the newest
    assert row.verdict == "refused"
    assert row.decision == f"answers internal message {note_id} of sale.order,{order}: refused"
    print(f"\nreply+ of project.task {task} answering a {parent} of sale.order {order} ({note_id}): {reply!r}")


def test_a_reply_to_a_public_message_of_another_record_stays_public(world, real_gateway):
    task, order = world.task_id, world.sale_order_id
    text = f"The order ships on Monday ({world.tag}, cross public)"
    public_id = _post_on_the_order(world, text, "mail.mt_comment")
    to = real_gateway.address("reply", "project.task", task)
    filed = _filed_id(real_gateway.send(_answer(real_gateway, world.contributor.email, to, public_id, text), to,
                                        mail_from=world.contributor.email))
    stored = _stored(world, "project.task", task, filed)
    assert stored["subtype_id"][0] == world.admin.execute("ir.model.data", "check_object_reference", "mail",
                                                          "mt_comment")[1]
    session = portal_session(world, world.plain.login, world.plain.password)
    assert filed in [message["id"] for message in session.chatter("project.task", task)]
    print(f"\nreply+ of project.task {task} answering a public message of sale.order {order}: public message {filed}")


def test_an_internal_answer_to_a_notes_notification_never_reaches_the_portal_author(world, real_gateway):
    # Found by a security review: without a catchall Odoo 18 gives a notification the author's
    # address as Reply-To (facts i), so an internal colleague in Cc of a contributor's note
    # answered the contributor directly; with one, Odoo's mail gateway files the answer as a note
    # and adds the note's author to its recipients (mail_thread.py:1297-1308). The gateway now
    # posts a note with the record's note address as reply_to; the answer comes back to it and is
    # filed as the colleague's own note, notifying nobody the gateway did not choose.
    task = world.task_id
    admin = world.admin
    # The world's followers policy: the colleague answering must follow the task, as a team member does.
    admin.execute_kw("project.task", "message_subscribe", [[task]], {"partner_ids": [world.internal.partner_id]})
    try:
        note_to = real_gateway.address("note", "project.task", task)
        raw = real_gateway.message(world.contributor.email, note_to, f"Pump checked {world.tag}.",
                                   message_id=_message_id(world))
        raw = raw.replace(b"\r\nSubject:", f"\r\nCc: {world.internal.email}\r\nSubject:".encode(), 1)
        note = _filed_id(real_gateway.send(real_gateway.sign(raw), note_to, mail_from=world.contributor.email))
        [stored] = admin.env["mail.message"].read([note], ["reply_to", "author_id", "message_id"])
        assert stored["author_id"][0] == world.contributor.partner_id
        assert email.utils.parseaddr(stored["reply_to"])[1] == note_to
        notified = notifications_for_message(world, note)
        assert [row["res_partner_id"][0] for row in notified] == [world.internal.partner_id]

        answer = real_gateway.message(world.internal.email, note_to, f"INTERNAL ANSWER {world.tag}: no discount.",
                                      subject="Re: Site visit", sender_name="Marc Internal")
        answer = (f"In-Reply-To: {stored['message_id']}\r\nReferences: {stored['message_id']}\r\n".encode()
                  + answer)
        filed = _filed_id(real_gateway.send(real_gateway.sign(answer), note_to, mail_from=world.internal.email))
        row = _stored(world, "project.task", task, filed)
        assert row["author_id"][0] == world.internal.partner_id
        assert row["subtype_id"][0] == admin.execute("ir.model.data", "check_object_reference", "mail", "mt_note")[1]
        assert notifications_for_message(world, filed) == []
        contributor = portal_session(world, world.contributor.login, world.contributor.password)
        assert filed not in contributor.chatter_ids("project.task", task) and note not in contributor.chatter_ids(
            "project.task", task)
        print(f"\nnote {note} reply_to {stored['reply_to']!r}; internal answer filed as note {filed}, notified nobody")
    finally:
        admin.execute_kw("project.task", "message_unsubscribe", [[task]], {"partner_ids": [world.internal.partner_id]})


@pytest.mark.parametrize("cc", ["{note}.", "Task note <{note}.>"], ids=["bare", "angle brackets"])
def test_a_reply_all_naming_the_note_address_with_a_final_dot_is_a_note_the_portal_never_sees(
        world, real_gateway, cc):
    # Found by a lifecycle review: mail-parser read "note+...@notes.example.com." as no address, so
    # the reply+ delivery of such a reply-all was filed publicly (mail.mt_comment, 250 Filed on Odoo
    # 18) while the note+ delivery, written with the dot, was refused at RCPT.
    task = world.task_id
    note = real_gateway.address("note", "project.task", task)
    to = real_gateway.address("reply", "project.task", task)
    secret = f"Internal: the customer broke the seal himself ({world.tag}, final dot)"
    raw = real_gateway.message(world.contributor.email, to, secret, subject="Re: Site visit",
                               message_id=_message_id(world))
    raw = f"Cc: {cc.format(note=note)}\r\n".encode() + raw
    filed = _filed_id(real_gateway.send(real_gateway.sign(raw), to, mail_from=world.contributor.email))
    stored = _stored(world, "project.task", task, filed)
    assert stored["subtype_id"][0] == world.admin.execute("ir.model.data", "check_object_reference", "mail", "mt_note")[1]
    assert notifications_for_message(world, filed) == []
    for user in (world.plain, world.contributor):
        session = portal_session(world, user.login, user.password)
        assert filed not in session.chatter_ids("project.task", task)
    [row] = [row for row in real_gateway.journal() if row.odoo_message_id == filed]
    assert (row.kind, row.decision) == ("note", f"reply-all with {note}: filed as a note, never public")
    print(f"\nreply-all with Cc {cc!r} on project.task {task}: note {filed}, not in the portal chatter")
