"""File the message in Odoo's chatter, once, with the exact call ODOO_FACTS.md demands."""

from __future__ import annotations

import email
import logging
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formataddr

from gateway.context import MessageContext
from gateway.odoo import POST_CONTEXT, OdooPool
from gateway.refusals import OdooUnavailable

log = logging.getLogger(__name__)

SUBTYPES = {"note": "mail.mt_note", "reply": "mail.mt_comment"}

# custom_values of a reply: a key that is no field of any model. Odoo only uses custom_values to
# create a record when the message cannot go to an existing one (mail_thread.py message_route,
# _routing_check_route); create() then refuses the unknown field (odoo/models.py create, "Invalid
# field"), so a reply never makes a record, even if the record vanished after the checks.
NO_RECORD_CREATION = {"note_gateway_existing_record_only": True}


def find_existing(odoo: OdooPool, ctx: MessageContext, *, deadline: float | None = None) -> int | None:
    """The id of a message already filed from this Message-ID on this record.

    Odoo stores ``message_id`` but does not make it unique (ODOO_FACTS.md f), so a retried
    delivery would be filed twice unless the gateway looks first.
    """
    # Never cached: a retry comes precisely after the first delivery may have filed the message.
    found = odoo.call("mail.message", "search",
                      [[("message_id", "in", filed_message_ids(ctx)), ("model", "=", ctx.target.model),
                        ("res_id", "=", ctx.target.res_id)]],
                      {"limit": 1}, deadline=deadline)
    return int(found[0]) if found else None


def filed_message_ids(ctx: MessageContext) -> list[str]:
    """The Message-IDs this message is filed under: its own, and for a reply its record's own."""
    assert ctx.message is not None
    # A reply may have been filed under its record's own Message-ID (record_message_id).
    ids = [ctx.message.message_id]
    if ctx.target.kind == "reply":
        ids.append(record_message_id(ctx))
    return ids


def record_message_id(ctx: MessageContext) -> str:
    """The Message-ID a reply is filed under when Odoo has the original one on another record.

    Odoo's mail gateway drops a message whose Message-ID it knows anywhere (mail_thread.py:1375),
    but one email sent to two reply addresses is delivered once per address with one Message-ID
    (each recipient its own transaction, MAIL_SECURITY.md item 16): the second record gets its own
    ID, derived so that a retry finds it again.
    """
    assert ctx.message is not None
    local, _, domain = ctx.message.message_id.strip().strip("<>").rpartition("@")
    if not local:
        local, domain = domain, "note-gateway.invalid"
    return f"<{local}.{ctx.target.model}-{ctx.target.res_id}@{domain}>"


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


def message_id_survives(message_id: str) -> bool:
    """Whether Odoo's parser reads this Message-ID back unchanged from the message file_reply builds.

    The retry check and the search for the filed message rely on it. An ID with spaces or 8-bit
    characters (RFC 5322 section 3.6.4 allows neither) would come back folded, encoded or cut.
    """
    probe = EmailMessage(policy=SMTP)
    try:
        probe["Message-ID"] = message_id
        raw = probe.as_bytes()
        raw.decode("ascii")
    except Exception:  # noqa: BLE001 (the header parser raises IndexError too on some IDs, "<[x]@x>")
        return False
    parsed = email.message_from_bytes(raw, policy=SMTP)
    return str(parsed.get("Message-Id") or "").strip() == message_id


def files_through_mail_gateway(odoo: OdooPool, ctx: MessageContext, *, deadline: float | None = None) -> bool:
    """Whether a reply goes to Odoo's mail gateway (file_reply) rather than message_post.

    Only if the sender's partner follows the record now: only then would message_post email it its
    own reply. A reply of an author who does not follow is posted with message_post, which neither
    emails nor subscribes it, whereas Odoo's mail gateway subscribes the author of what it files
    (mail_thread.py:2220-2235), and on sale.order a follower gains portal read access (ODOO_FACTS.md
    c): the followers are read fresh, never from a cache. And only if the Message-ID reaches Odoo
    unchanged; otherwise the journal says why the author may get a copy.
    """
    assert ctx.user is not None and ctx.message is not None
    if not _author_follows(odoo, ctx, deadline=deadline):
        return False
    if not message_id_survives(ctx.message.message_id) or not message_id_survives(record_message_id(ctx)):
        ctx.journal_notes.append(f"reply-posted-by-message_post:Message-ID {ctx.message.message_id!r} "
                                 "cannot pass Odoo's mail gateway unchanged")
        return False
    return True


def _author_follows(odoo: OdooPool, ctx: MessageContext, *, deadline: float | None = None) -> bool:
    assert ctx.user is not None
    if ctx.followers is not None and odoo.connection.read_cache_seconds == 0:
        try:
            return ctx.user.partner_id in ctx.followers.result().partners
        except Exception:  # noqa: BLE001 (the authorize stage saw this read succeed; read again)
            pass
    return bool(odoo.call(ctx.target.model, "search_count",
                          [[("id", "=", ctx.target.res_id), ("message_partner_ids", "in", [ctx.user.partner_id])]],
                          deadline=deadline))


def reply_message(ctx: MessageContext, message_id: str) -> str:
    """The message Odoo's mail gateway files for a reply+: only what the gateway decided to file.

    From is the identified user, so Odoo attributes the message to its partner; the body is the
    rendered reply; the files are those the attachment rules let through, inline images keeping
    their Content-ID. No To, References or In-Reply-To: Odoo would route by them (to an alias, or
    to the record of a referenced message) before the record the address names. No Cc either, not
    even the internal users the choose-recipients stage kept: project.task's message_update
    subscribes every partner Odoo finds for a To/Cc address (project_task.py:1669), and another
    partner with such an address, a portal one, would gain access to the record.
    """
    assert ctx.message is not None and ctx.user is not None and ctx.rendered_body is not None
    message = EmailMessage(policy=SMTP)
    # The DKIM-verified address is the one the identity stage matched; a name is one line.
    sender = ctx.sender.email if ctx.sender else ctx.message.from_address
    message["From"] = formataddr((" ".join((ctx.user.name or ctx.message.from_name or "").split()), sender))
    message["Message-ID"] = message_id
    message.set_content(ctx.rendered_body, subtype="html", charset="utf-8", cte="base64")
    files = ctx.message.attachments if ctx.attachments is None else ctx.attachments
    for item in files or []:
        # application/octet-stream in base64 whatever the file: Odoo decodes a text/* part with its
        # charset (a Latin-1 byte became U+FFFD on Odoo 18), and guesses the type from name and bytes.
        options = {"cid": f"<{item.content_id}>", "disposition": "inline"} if item.content_id else {}
        message.add_attachment(item.payload, maintype="application", subtype="octet-stream",
                               filename=item.filename, **options)
    return message.as_string()


def file_reply(odoo: OdooPool, ctx: MessageContext, *, deadline: float | None = None) -> tuple[int, bool]:
    """File a reply+ as Odoo's own mail gateway files an incoming email: (message id, duplicate).

    message_post as the integration user would email the author its own reply: Odoo leaves out of
    the recipients only the calling user's partner when that user is active (ODOO_FACTS.md c,
    mail_thread.py:3833-3846). mail.thread.message_process posts as the archived OdooBot "to have
    a priviledged archived user so real_author_id is correctly computed" (mail_thread.py:1294-1297),
    so the author is left out and every other follower gets Odoo's standard notification. It posts
    as superuser: the gateway's own checks, all run before this stage, are the only gate.
    """
    assert ctx.message is not None and ctx.user is not None
    context = {}
    if ctx.company_id is not None:
        context["allowed_company_ids"] = [ctx.company_id]
    for address in ctx.notify_emails:
        # They had the sender's own email; Odoo notifies them of the reply if they follow the record.
        ctx.journal_notes.append(f"recipient-not-notified:{address} (filed by Odoo's mail gateway, "
                                 "which notifies followers only)")
    found: list = []
    thread = None
    for message_id in (ctx.message.message_id, record_message_id(ctx)):
        thread = odoo.call("mail.thread", "message_process", [ctx.target.model, reply_message(ctx, message_id)],
                           {"custom_values": dict(NO_RECORD_CREATION), "thread_id": ctx.target.res_id},
                           context=context, deadline=deadline)
        # False: Odoo knows the Message-ID already (mail_thread.py:1375): filed on this record by a
        # delivery in between, or on another record, and then the second ID is tried. None: a loop
        # rule dropped it (mail_thread.py:1381).
        found = odoo.call("mail.message", "search_read",
                          [[("message_id", "=", message_id), ("model", "=", ctx.target.model),
                            ("res_id", "=", ctx.target.res_id)]],
                          {"fields": ["author_id"], "limit": 1, "order": "id desc"}, deadline=deadline)
        if found or thread is not False:
            break
    if not found:
        # Not filed, and Odoo said why only in its log: defer, so the sender's MTA retries and the
        # message is not lost; an admin finds the reason in Odoo's log.
        log.warning("odoo: message_process returned %r for %s on %s,%s and filed nothing", thread,
                    ctx.message.message_id, ctx.target.model, ctx.target.res_id)
        raise OdooUnavailable("Odoo's mail gateway did not file the reply")
    author = found[0].get("author_id")
    author_id = int(author[0]) if author else 0
    if author_id != ctx.user.partner_id:
        # Odoo picks the author by the From address among the record's followers first
        # (mail_thread.py _mail_find_partner_from_emails): another partner with the same email.
        ctx.journal_notes.append(f"reply-author:{author_id} instead of partner {ctx.user.partner_id}")
        log.warning("odoo: reply %s attributed to partner %s, not the sender's partner %s",
                    ctx.message.message_id, author_id, ctx.user.partner_id)
    # Filed by this call unless Odoo said it had the message already (a delivery in between).
    return int(found[0]["id"]), thread is False
