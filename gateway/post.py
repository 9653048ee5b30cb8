"""File the message in Odoo's chatter, once, with the exact call ODOO_FACTS.md demands."""

from __future__ import annotations

from gateway.context import MessageContext
from gateway.odoo import POST_CONTEXT, OdooPool

SUBTYPES = {"note": "mail.mt_note", "reply": "mail.mt_comment"}


def find_existing(odoo: OdooPool, ctx: MessageContext, *, deadline: float | None = None) -> int | None:
    """The id of a message already filed from this Message-ID on this record.

    Odoo stores ``message_id`` but does not make it unique (ODOO_FACTS.md f), so a retried
    delivery would be filed twice unless the gateway looks first.
    """
    assert ctx.message is not None
    # Never cached: a retry comes precisely after the first delivery may have filed the message.
    found = odoo.call("mail.message", "search",
                      [[("message_id", "=", ctx.message.message_id), ("model", "=", ctx.target.model),
                        ("res_id", "=", ctx.target.res_id)]],
                      {"limit": 1}, deadline=deadline)
    return int(found[0]) if found else None


def post_message(odoo: OdooPool, ctx: MessageContext, *, deadline: float | None = None) -> int:
    assert ctx.message is not None and ctx.user is not None and ctx.rendered_body is not None
    kwargs = {
        "body": ctx.rendered_body,
        # Without body_is_html Odoo stores the HTML escaped; it is honoured because the
        # integration user is internal (ODOO_FACTS.md b). Odoo sanitizes again on its side.
        "body_is_html": True,
        "message_type": "comment",
        "subtype_xmlid": SUBTYPES[ctx.target.kind],
        "author_id": ctx.user.partner_id,
        "message_id": ctx.message.message_id,
        # A note notifies whoever is in partner_ids by email, portal partners included
        # (ODOO_FACTS.md c): only internal partners, chosen by an earlier stage, ever go here.
        "partner_ids": list(ctx.notify_partner_ids),
    }
    files = ctx.message.attachments if ctx.attachments is None else ctx.attachments
    if files:
        # Binary content travels as a latin-1 string that Odoo encodes back to the same bytes
        # (ODOO_FACTS.md g); the attachments are linked to the record. An inline image carries
        # its Content-ID: message_post then points the body's <img src="cid:..."> at the new
        # attachment, /web/image/<id>?access_token=..., as Odoo's own mail gateway relies on
        # (Odoo 18 mail_thread.py _process_attachments_for_post).
        kwargs["attachments"] = [
            [item.filename, item.payload.decode("latin-1"),
             {"encoding": "latin-1", **({"cid": item.content_id} if item.content_id else {})}]
            for item in files
        ]
    context = dict(POST_CONTEXT)
    if ctx.company_id is not None:
        # The post runs in the company the alias domain serves (issue 7).
        context["allowed_company_ids"] = [ctx.company_id]
    result = odoo.call(ctx.target.model, "message_post", [[ctx.target.res_id]], kwargs,
                       context=context, deadline=deadline)
    return int(result[0] if isinstance(result, list) else result)
