"""A reply+ naming an internal note in UTF-8 or as an RFC 2047 encoded word, filed as a note on a real Odoo 18.

A module of its own: each scenario sends two messages from the contributor, and the gateway's per-sender rate limit
(20 in 120 minutes, Odoo's own loop guard) leaves no room for them in test_reply_filing_real.py's world.
"""

from __future__ import annotations

import pytest

from .provision import assert_a_note_nobody_outside_sees, filed_id as _filed_id, new_message_id as _message_id
from .provision import note_posted_in_the_backend, real_odoo_or_skip, reply_quoting, stored_message as _stored

real_odoo_or_skip()

pytestmark = pytest.mark.real_odoo


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
        note_id = note_posted_in_the_backend(world, secret)
    written = note_id if spelling.endswith("in UTF-8") else _encoded_word(note_id)
    headers = (f"In-Reply-To: {written}\r\n" if where == "In-Reply-To"
               else f"References: <older.{world.tag}@{world.domain}> {written}\r\n")
    filed = reply_quoting(world, real_gateway, headers, secret)
    assert_a_note_nobody_outside_sees(world, real_gateway, filed, note_id)
    print(f"\nreply+ naming {note_id} ({spelling}, {where}) on project.task {task}: note {filed}")
