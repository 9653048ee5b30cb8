"""What a real Odoo 18 shows of the lines the gateway files: none of the sender's own is hidden as a quote.

Odoo's html_normalize marks, in the text of an element, a line starting with ">" and what follows a "--" line
(odoo/tools/mail.py tag_quote) with data-o-mail-quote, and the chatter shows those only behind "Read More". A
review of silent content loss found a controller log in a <pre> filed whole and half hidden so.
"""

from __future__ import annotations

import pytest

from .provision import filed_id as _filed_id, new_message_id as _message_id, real_odoo_or_skip
from .provision import stored_message as _stored

real_odoo_or_skip()

pytestmark = pytest.mark.real_odoo

LOG = "> show status\npump1 running 4.2 bar\n> show alarms\nnone\n--\nend of log\n"


def _note(world, real_gateway, text: str, html: str | None = None) -> str:
    task = world.task_id
    to = real_gateway.address("note", "project.task", task)
    raw = real_gateway.sign(real_gateway.message(world.contributor.email, to, text, html=html,
                                                 sender_name="Paula Contributor", message_id=_message_id(world)))
    odoo_id = _filed_id(real_gateway.send(raw, to, mail_from=world.contributor.email))
    return _stored(world, "project.task", task, odoo_id)["body"]


def test_a_log_in_a_pre_block_is_stored_with_no_line_marked_as_quote(world, real_gateway):
    html = ("<html><body><div>Controller log:</div><pre>" + LOG.replace(">", "&gt;") + "</pre>"
            "<div>Looks fine.</div></body></html>")
    body = _note(world, real_gateway, "Controller log:\n\n" + LOG + "\nLooks fine.\n", html)
    assert "data-o-mail-quote" not in body, body
    for line in ("&gt; show status", "&gt; show alarms", "end of log", "Looks fine."):
        assert line in body
    print(f"\nlog in a <pre> stored as {body!r}")


def test_a_plain_text_note_with_a_dashes_line_is_stored_with_nothing_marked_as_quote(world, real_gateway):
    # The "--" line starts a paragraph "--<br>...": Odoo hid it as an HTML signature, and everything
    # after it in the same element, even inside the gateway's own collapsed block.
    body = _note(world, real_gateway, "Checklist:\n\n--\n1. pump ok\n2. valve replaced\n\nDone, leaving site.\n")
    assert "data-o-mail-quote" not in body, body
    assert "valve replaced" in body and "Done, leaving site." in body
    print(f"\nplain text with a dashes line stored as {body!r}")
