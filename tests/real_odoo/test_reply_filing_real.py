"""A follower's reply+ filed through Odoo 18's own mail gateway (message_process), checked as Odoo's admin (issue 3)."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import re

import pytest

from .provision import filed_id as _filed_id, new_message_id as _message_id, real_odoo_or_skip
from .provision import stored_message as _stored

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


def test_reply_attributed_by_odoo_to_an_older_follower_with_the_same_address_is_journaled(world, real_gateway):
    # Odoo takes the author from the record's followers first, oldest first (mail_thread.py
    # _mail_find_partner_from_emails): a contact with Paula's address that followed the task
    # before her wins. The reply is filed, and the journal names both partners.
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
        assert _stored(world, "project.task", task, comment)["author_id"][0] == twin
        [row] = [row for row in real_gateway.journal() if row.message_id == message_id]
        assert f"reply-author:{twin} instead of partner {world.contributor.partner_id}" in row.defects
    finally:
        admin.execute_kw("project.task", "message_unsubscribe", [[task]], {"partner_ids": [twin]})
    print(f"\nolder follower {twin} with the contributor's address: message {comment} attributed to it; "
          f"journal defects {row.defects}")
