"""A portal contributor's note and reply+ with files to a draft vendor bill on a real Odoo 18: the
files stay on the message and the bill is untouched (no_new_invoice, gateway/odoo.py POST_CONTEXT).

Without that context account.move._message_post_after_hook ran the invoice import on them: a UBL
XML rewrote the bill, a reply with two created a new journal entry, and every file the import
did not use was deleted after the gateway had answered 250 (found by a review on Odoo 18).
Skipped when the database has no accounting (module `account`).
"""

from __future__ import annotations

import base64
import email
import email.policy

import pytest

from .conftest import start_real_gateway
from .provision import QUIET, filed_id, real_odoo_or_skip, stored_message

real_odoo_or_skip()

pytestmark = pytest.mark.real_odoo

MODELS = ("project.task", "sale.order", "account.move")
PIXEL = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
BILL_FIELDS = ["state", "move_type", "partner_id", "ref", "invoice_date", "invoice_line_ids", "amount_total"]


def _ubl(number: str, supplier: str, amount: str) -> bytes:
    """A small UBL 2.1 invoice, enough for Odoo's UBL import (account_edi_ubl_cii) to read it."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"
         xmlns:cac="urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
         xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2">
  <cbc:UBLVersionID>2.1</cbc:UBLVersionID>
  <cbc:ID>{number}</cbc:ID>
  <cbc:IssueDate>2024-03-01</cbc:IssueDate>
  <cbc:InvoiceTypeCode>380</cbc:InvoiceTypeCode>
  <cbc:DocumentCurrencyCode>EUR</cbc:DocumentCurrencyCode>
  <cac:AccountingSupplierParty><cac:Party>
    <cac:PartyName><cbc:Name>{supplier}</cbc:Name></cac:PartyName>
    <cac:PartyLegalEntity><cbc:RegistrationName>{supplier}</cbc:RegistrationName></cac:PartyLegalEntity>
  </cac:Party></cac:AccountingSupplierParty>
  <cac:LegalMonetaryTotal>
    <cbc:LineExtensionAmount currencyID="EUR">{amount}</cbc:LineExtensionAmount>
    <cbc:PayableAmount currencyID="EUR">{amount}</cbc:PayableAmount>
  </cac:LegalMonetaryTotal>
  <cac:InvoiceLine>
    <cbc:ID>1</cbc:ID>
    <cbc:InvoicedQuantity unitCode="C62">1</cbc:InvoicedQuantity>
    <cbc:LineExtensionAmount currencyID="EUR">{amount}</cbc:LineExtensionAmount>
    <cac:Item><cbc:Name>Pump overhaul</cbc:Name></cac:Item>
    <cac:Price><cbc:PriceAmount currencyID="EUR">{amount}</cbc:PriceAmount></cac:Price>
  </cac:InvoiceLine>
</Invoice>
""".encode()


@pytest.fixture(scope="module")
def bill_gateway(world, signing_keys, signing_dns, tmp_path_factory):
    """A gateway serving account.move, its integration user an Invoicing user (account.move is
    readable by accounting groups only)."""
    admin = world.admin
    if not admin.env["ir.module.module"].search_count([("name", "=", "account"), ("state", "=", "installed")]):
        pytest.skip("the real Odoo has no accounting (module account not installed)")
    invoicing = admin.env["ir.model.data"].check_object_reference("account", "group_account_invoice")[1]
    users = admin.env["res.users"].with_context(**QUIET)
    users.browse(world.integration.user_id).write({"groups_id": [(4, invoicing)]})
    gateway = start_real_gateway(tmp_path_factory.mktemp("bill-gateway"), world, signing_keys, signing_dns.port,
                                 models=MODELS)
    try:
        yield gateway
    finally:
        gateway.server.stop()
        gateway.services.close()
        users.browse(world.integration.user_id).write({"groups_id": [(3, invoicing)]})


def _draft_bill(world) -> int:
    admin = world.admin
    bill = admin.env["account.move"].with_context(**QUIET).create({
        "move_type": "in_invoice", "partner_id": world.customer_partner_id, "ref": f"bill {world.tag}"})
    world.track("account.move", bill)
    admin.execute_kw("account.move", "message_subscribe", [[bill]],
                     {"partner_ids": [world.contributor.partner_id], "context": QUIET})
    return bill


def _send(world, gateway, kind: str, bill: int, files: list[tuple[str, bytes, str]]) -> str:
    to = gateway.address(kind, "account.move", bill)
    message = email.message_from_bytes(gateway.message(world.contributor.email, to, "Supplier papers attached.\n"),
                                       policy=email.policy.SMTP)
    for name, payload, mimetype in files:
        maintype, subtype = mimetype.split("/")
        message.add_attachment(payload, maintype=maintype, subtype=subtype, filename=name)
    return gateway.send(gateway.sign(message.as_bytes()), to, mail_from=world.contributor.email)


@pytest.mark.parametrize("kind, xml_count", [("note", 1), ("reply", 2)])
def test_files_sent_to_a_draft_bill_stay_on_the_message_and_leave_the_bill_alone(world, bill_gateway, kind,
                                                                                 xml_count):
    admin = world.admin
    bill = _draft_bill(world)
    before = admin.env["account.move"].read([bill], BILL_FIELDS)[0]
    [last_move] = admin.env["account.move"].search([], order="id desc", limit=1)
    files = [(f"bill-{n}.xml", _ubl(f"NGW-{world.run_id}-{kind}-{n}", f"Supplier {world.tag}", f"{n}99.00"),
              "application/xml") for n in range(1, xml_count + 1)]
    files.append(("site-photo.png", PIXEL, "image/png"))
    message_id = filed_id(_send(world, bill_gateway, kind, bill, files))
    new_moves = admin.env["account.move"].search([("id", ">", last_move)])
    world.track("account.move", *new_moves)  # removed at the end if the import did make some
    stored = stored_message(world, "account.move", bill, message_id)
    rows = admin.env["ir.attachment"].read(stored["attachment_ids"], ["name", "datas", "res_model", "res_id"])
    assert {row["name"]: base64.b64decode(row["datas"]) for row in rows} == {name: data for name, data, _ in files}
    assert {(row["res_model"], row["res_id"]) for row in rows} == {("account.move", bill)}
    assert admin.env["account.move"].read([bill], BILL_FIELDS)[0] == before
    assert new_moves == []
    # Nor did OdooBot say anything about the files ("The invoice already contains lines...").
    authors = {row["author_id"][0] for row in admin.env["mail.message"].search_read(
        [("model", "=", "account.move"), ("res_id", "=", bill), ("id", ">", message_id)], ["author_id"])}
    assert admin.env["ir.model.data"].check_object_reference("base", "partner_root")[1] not in authors
    print(f"\n{kind} with {[name for name, _, _ in files]} to draft bill {bill}: message {message_id}, "
          f"attachments {stored['attachment_ids']}, bill unchanged, no new journal entry")
