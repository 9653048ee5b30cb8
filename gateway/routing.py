"""Route plain note@ / reply@ mail to a record by the Odoo Message-IDs it references, and spot reply-all."""

from __future__ import annotations

import re

from gateway import address
from gateway.config import GatewayConfig
from gateway.context import ParsedMessage, Target
from gateway.odoo import OdooPool
from gateway.refusals import NoRecordReferenced, Refusal

# Odoo's notification Message-IDs: <random.time-openerp-<res_id>-<model>@host>
# (tools.mail.generate_tracking_message_id, ODOO_FACTS.md i). Model names hold no "-".
_ODOO_MESSAGE_ID = re.compile(
    r"-openerp-(?P<res_id>[1-9][0-9]{0,17})-(?P<model>[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*)@[^<>@\s]+>$")
# How many referenced ids are looked up in mail.message at most: References of a long thread keep
# growing, and the most recent ones are the ones that matter.
_MAX_LOOKUPS = 20


def referenced_ids(message: ParsedMessage) -> list[str]:
    """In-Reply-To first, then References from the most recent (RFC 5322 section 3.6.4), each once."""
    ordered = list(message.in_reply_to) + list(reversed(message.references))
    return list(dict.fromkeys(ordered))


def resolve(odoo: OdooPool, message: ParsedMessage, *, deadline: float | None = None) -> tuple[str, int, str]:
    """(model, res_id, how) of the record the message replies to, or NoRecordReferenced.

    Only where the reply points is decided here: who may post there is decided afterwards by the
    same checks as for a record address, so a forged References header gains nothing.
    """
    ids = referenced_ids(message)
    if not ids:
        raise NoRecordReferenced("the message has no In-Reply-To or References")
    others = [value for value in ids if not _ODOO_MESSAGE_ID.search(value)][:_MAX_LOOKUPS]
    stored: dict[str, tuple[str, int]] = {}
    if others:
        rows = odoo.call("mail.message", "search_read",
                         [[("message_id", "in", others), ("model", "!=", False), ("res_id", "!=", 0)]],
                         {"fields": ["message_id", "model", "res_id"], "order": "id desc"}, deadline=deadline)
        for row in rows:
            if row.get("model") and row.get("res_id"):
                stored.setdefault(row["message_id"], (row["model"], int(row["res_id"])))
    for value in ids:
        match = _ODOO_MESSAGE_ID.search(value)
        if match:
            return match["model"], int(match["res_id"]), f"by Odoo Message-ID {value}"
        if value in stored:
            model, res_id = stored[value]
            return model, res_id, f"by mail.message {value}"
    raise NoRecordReferenced(f"none of {len(ids)} referenced Message-IDs is known to Odoo")


def note_address_in_headers(message: ParsedMessage, target: Target, config: GatewayConfig) -> str | None:
    """A note address of the same record (same Odoo) named in To or Cc of a reply delivery, if any.

    Reply-all to a note+ and a reply+ address reaches the gateway as two deliveries, possibly in
    separate transactions and in either order (issue 7). Each delivery sees the same headers, so
    the reply+ delivery can tell that the sender also addressed a note, and is then filed as a
    note: the Message-ID check makes the second delivery a duplicate of the first, whichever comes
    first, and nothing is ever public. A plain note@ of a domain on the same Odoo counts as the
    same record: it would be routed by the same References.
    """
    odoo_name = config.domains[target.domain].odoo
    for value in list(message.to) + list(message.cc):
        try:
            other = address.parse_recipient(value, config.secrets)
        except Refusal:
            continue
        if other.kind != "note" or config.domains[other.domain].odoo != odoo_name:
            continue
        if other.by_reference or (other.model, other.res_id) == (target.model, target.res_id):
            return other.address
    return None
