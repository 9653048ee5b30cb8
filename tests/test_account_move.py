"""Notes and replies to an invoice or bill (account.move): the files stay on the message, Odoo's
invoice import never sees them.

account.move._message_post_after_hook hands the files of every post made by an internal user to
the invoice import unless the context says ``no_new_invoice`` (account_move.py:5931-5989): on a
draft it rewrote the bill from a contributor's UBL XML and deleted every other file after the
gateway had answered 250; on a posted invoice OdooBot added a note to each post with a file (found
by a review on a real Odoo 18). The test Odoo emulates the hook (odoo_mail.account_move_after_hook).
"""

from __future__ import annotations

import email
import email.policy

import pytest

from conftest import Mailer

from gateway.testing.odoo_demo import CUSTOMER_PARTNER_ID, GATEWAY_UID, PAULA_PARTNER_ID
from gateway.testing.odoo_mail import NOT_A_DRAFT
from gateway.testing.sending import compose

PAULA = "portal.contrib@example.com"
MODELS = ("project.task", "sale.order", "account.move")
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
UBL = b'<?xml version="1.0"?><Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2">' \
      b"<cbc:ID>RV-0001</cbc:ID></Invoice>"
MOVE_FIELDS = ["name", "move_type", "state", "partner_id", "ref", "amount_total"]


@pytest.fixture
def mailer(test_odoo, start_gateway, dns_server, dkim_keys):
    """A gateway that serves account.move: whoever configures it gives the integration user
    Invoicing rights, as the review did; Paula follows the bills she writes to."""
    test_odoo.set_group(GATEWAY_UID, "account.group_account_invoice")
    return Mailer(start_gateway(dns_server.port, models=MODELS, access="followers"), dkim_keys)


def _move(test_odoo, state: str) -> int:
    return test_odoo.add_record("account.move", {"move_type": "in_invoice", "state": state, "ref": "BILL-7",
                                                 "partner_id": CUSTOMER_PARTNER_ID, "amount_total": 120.0},
                                followers=[PAULA_PARTNER_ID])


def _send(mailer, kind: str, move_id: int, files) -> str:
    to = mailer.address(kind, "account.move", move_id)
    message = email.message_from_bytes(compose(PAULA, to, "Site visit", "Photo and supplier file attached.",
                                               sender_name="Paula Contributor"), policy=email.policy.SMTP)
    for name, payload in files:
        message.add_attachment(payload, maintype="application", subtype="octet-stream", filename=name)
    return mailer.send(mailer.sign(message.as_bytes()), to)


def _filed(test_odoo, reply: str) -> dict:
    assert reply.startswith("250 2.0.0 Filed as Odoo message "), reply
    return test_odoo.message(int(reply.rsplit(" ", 1)[1]))


@pytest.mark.parametrize("kind", ["note", "reply"])
def test_files_on_a_draft_bill_stay_on_the_message_and_the_bill_is_untouched(test_odoo, mailer, kind):
    bill = _move(test_odoo, "draft")
    before = test_odoo.record("account.move", bill, MOVE_FIELDS)
    message = _filed(test_odoo, _send(mailer, kind, bill, [("site-photo.png", PNG), ("invoice.xml", UBL)]))
    # Without no_new_invoice the import deleted both files (it decodes neither here), after the 250.
    assert sorted(test_odoo.record("ir.attachment", aid, ["name"])["name"] for aid in message["attachment_ids"]) \
        == ["invoice.xml", "site-photo.png"]
    assert {test_odoo.attachment_bytes(aid) for aid in message["attachment_ids"]} == {PNG, UBL}
    assert test_odoo.record("account.move", bill, MOVE_FIELDS) == before
    [post] = [call for call in test_odoo.calls if call.model_method in ("message_post", "message_process")]
    assert post.context["no_new_invoice"] is True


def test_a_file_on_a_posted_invoice_adds_no_odoobot_note(test_odoo, mailer):
    bill = _move(test_odoo, "posted")
    message = _filed(test_odoo, _send(mailer, "note", bill, [("site-photo.png", PNG)]))
    assert len(message["attachment_ids"]) == 1
    bodies = [row["body"] for row in test_odoo.messages("account.move", bill)]
    assert not any(NOT_A_DRAFT in body for body in bodies), bodies
