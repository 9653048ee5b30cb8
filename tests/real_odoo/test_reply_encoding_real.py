"""A reply+ naming an internal note in UTF-8 or as an RFC 2047 encoded word, filed as a note on a real Odoo 18.

A module of its own: each scenario sends two messages from the contributor, and the gateway's per-sender rate limit
(20 in 120 minutes, Odoo's own loop guard) leaves no room for them in test_reply_filing_real.py's world.
"""

from __future__ import annotations

import pytest

from .provision import filed_id as _filed_id, new_message_id as _message_id, real_odoo_or_skip
from .provision import notifications_for_message, portal_session, stored_message as _stored

real_odoo_or_skip()

pytestmark = pytest.mark.real_odoo


def _note_posted_in_the_backend(world, text: str) -> str:
    """An internal note an employee logs in the chatter; Odoo gives it its own Message-ID (facts i)."""
    note = world.admin.execute_kw("project.task", "message_post", [[world.task_id]],
                                  {"body": text, "message_type": "comment", "subtype_xmlid": "mail.mt_note",
                                   "context": {"mail_create_nosubscribe": True}})
    note = note[0] if isinstance(note, list) else note
    return _stored(world, "project.task", world.task_id, note)["message_id"]


def _encoded_word(text: str) -> str:
    """``text`` as one RFC 2047 q encoded word, every byte but letters and digits encoded."""
    return "=?utf-8?q?" + "".join(chr(byte) if chr(byte).isascii() and chr(byte).isalnum() else f"={byte:02X}"
                                  for byte in text.encode()) + "?="


@pytest.mark.parametrize("where", ["References", "In-Reply-To"])
@pytest.mark.parametrize("spelling", ["UTF-8 note named in UTF-8", "UTF-8 note named in an encoded word",
                                      "backend note named in an encoded word"])
def test_a_reply_naming_a_note_in_utf8_or_an_encoded_word_is_a_note(world, real_gateway, spelling, where):
    # Found by a differential review against Odoo 18: the gateway read In-Reply-To and References
    # as compat32 text (UTF-8 bytes as U+FFFD, encoded words not decoded) and filed the reply
    # publicly, the note in its quote; Odoo's message_parse decodes both and files it as a note.
    task = world.task_id
    secret = f"Margin on this job is 40% ({world.tag}, {spelling}, {where})"
    if spelling.startswith("UTF-8 note"):
        note_to = real_gateway.address("note", "project.task", task)
        placeholder = _message_id(world)
        note_id = placeholder.replace("@", "@b\u00fccher.", 1)
        raw = real_gateway.message(world.contributor.email, note_to, secret, message_id=placeholder)
        raw = raw.replace(placeholder.encode(), note_id.encode())
        note = _filed_id(real_gateway.send(real_gateway.sign(raw), note_to, mail_from=world.contributor.email))
        assert _stored(world, "project.task", task, note)["message_id"] == note_id
    else:
        note_id = _note_posted_in_the_backend(world, secret)
    written = note_id if spelling.endswith("in UTF-8") else _encoded_word(note_id)
    to = real_gateway.address("reply", "project.task", task)
    raw = real_gateway.message(world.contributor.email, to,
                               f"The pump runs again.\n\nOn Monday, someone wrote:\n> {secret}\n",
                               subject="Re: Site visit", message_id=_message_id(world))
    headers = (f"In-Reply-To: {written}\r\n" if where == "In-Reply-To"
               else f"References: <older.{world.tag}@{world.domain}> {written}\r\n")
    filed = _filed_id(real_gateway.send(real_gateway.sign(headers.encode() + raw), to,
                                        mail_from=world.contributor.email))
    stored = _stored(world, "project.task", task, filed)
    assert stored["subtype_id"][0] == world.admin.execute("ir.model.data", "check_object_reference", "mail", "mt_note")[1]
    assert notifications_for_message(world, filed) == []
    for user in (world.plain, world.contributor):
        session = portal_session(world, user.login, user.password)
        assert filed not in session.chatter_ids("project.task", task)
    [row] = [row for row in real_gateway.journal() if row.odoo_message_id == filed]
    assert row.kind == "note" and f"answers internal message {note_id}" in row.decision
    print(f"\nreply+ naming {note_id} ({spelling}, {where}) on project.task {task}: note {filed}, 0 notifications")
