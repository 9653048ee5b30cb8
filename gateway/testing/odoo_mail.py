"""mail.thread of the test Odoo: message_post, followers, notifications and chatters, as ODOO_FACTS.md says."""

from __future__ import annotations

import html
import logging
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import lxml.etree
import lxml.html
import nh3
from markupsafe import Markup

from gateway.testing.odoo_models import (
    WEBSITE_MESSAGE_TYPES,
    _getaddresses,
    document_readable,
    email_normalized,
    first_message_of,
    followers_of,
    format_address,
    message_is_internal,
    messages_of,
    store_attachment_bytes,
)
from gateway.testing.odoo_orm import (
    AccessError,
    Env,
    UserError,
    check_records,
    create_record,
    display_name,
    ensure_one,
    foreign_key_error,
    missing_error,
    raw_value,
    rpc,
)

log = logging.getLogger(__name__)

# The host part of generated Message-IDs; a real Odoo uses socket.gethostname().
MESSAGE_ID_HOST = "testodoo"

# --- Sanitizing ---------------------------------------------------------------------------------
#
# Odoo stores message bodies through tools.mail.html_sanitize (lxml's Cleaner with Odoo's lists);
# this is the same allow-list expressed for nh3. Scripts, styles, event handlers and unknown
# attributes go, "javascript:" links keep an empty href (as the measured server stored them, facts
# b), and style attributes keep only the properties of Odoo's _style_whitelist.

_ALLOWED_TAGS = {
    "a", "abbr", "acronym", "address", "article", "aside", "b", "bdi", "bdo", "big", "blockquote", "br",
    "caption", "center", "cite", "code", "col", "colgroup", "dd", "del", "details", "dfn", "dir", "div", "dl",
    "dt", "em", "figcaption", "figure", "font", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header",
    "hgroup", "hr", "i", "img", "ins", "kbd", "li", "main", "mark", "nav", "ol", "p", "pre", "q", "s", "samp",
    "section", "small", "span", "strike", "strong", "sub", "summary", "sup", "table", "td", "tfoot", "th",
    "thead", "time", "tr", "tt", "u", "ul", "var",
}
# lxml's parser does not invent <tbody>, so Odoo stores tables without one; dropping the tag (its
# content stays) gives the same stored body as the measured server.
_GENERIC_ATTRIBUTES = {
    "class", "style", "title", "id", "dir", "lang", "align", "valign", "width", "height", "border",
    "cellpadding", "cellspacing", "colspan", "rowspan", "color", "face", "size", "name", "alt", "summary",
    "scope", "headers", "span", "start", "type", "cite", "datetime", "data-o-mail-quote",
    "data-o-mail-quote-node", "data-oe-model", "data-oe-id", "data-oe-field", "data-oe-type",
}
_URL_ATTRIBUTES = {"a": {"href", "target", "hreflang"}, "img": {"src"}}
_STYLE_WHITELIST = {
    "font-size", "font-family", "font-weight", "font-style", "background-color", "color", "text-align",
    "line-height", "letter-spacing", "text-transform", "text-decoration", "opacity", "float", "vertical-align",
    "display", "padding", "padding-top", "padding-left", "padding-bottom", "padding-right", "margin",
    "margin-top", "margin-left", "margin-bottom", "margin-right", "white-space", "border", "border-color",
    "border-radius", "border-style", "border-width", "border-top", "border-bottom", "height", "width",
    "max-width", "min-width", "min-height", "border-collapse", "border-spacing", "caption-side", "empty-cells",
    "table-layout",
} | {
    f"border-{position}-{attribute}"
    for position in ("top", "bottom", "left", "right")
    for attribute in ("style", "color", "width", "left-radius", "right-radius")
}
_STYLE_DECLARATION = re.compile(r"""([\w-]+)\s*:\s*((?:[^;"']|"[^";]*"|'[^';]*')+)""")
_SCRIPT_SCHEMES = ("javascript:", "vbscript:", "livescript:")
_BLOCK_TAG = re.compile(
    r"<(?:p|div|table|ul|ol|dl|h[1-6]|blockquote|pre|hr|section|article|header|footer|nav|aside|figure|"
    r"address|details|main|center|hgroup)\b",
    re.IGNORECASE,
)


def _filter_attribute(tag: str, attribute: str, value: str) -> str | None:
    if attribute in ("href", "src"):
        squeezed = re.sub(r"[\x00-\x20]", "", value).lower()
        if squeezed.startswith(_SCRIPT_SCHEMES):
            return ""
        return value
    if attribute == "style":
        kept = {}
        for name, declaration in _STYLE_DECLARATION.findall(value):
            if name.lower() in _STYLE_WHITELIST:
                kept[name.lower()] = declaration
        return "; ".join(f"{name}:{declaration}" for name, declaration in kept.items()) or None
    return value


_ATTRIBUTES = {tag: set(_GENERIC_ATTRIBUTES) | _URL_ATTRIBUTES.get(tag, set()) for tag in _ALLOWED_TAGS}


# Built once: handing nh3.clean this allow-list (73 tags, 2486 tag/attribute pairs) on every call
# cost 0.3 ms of conversions per message_post, more than the sanitizing itself (issue 6).
_CLEANER = nh3.Cleaner(
    tags=_ALLOWED_TAGS,
    clean_content_tags={"script", "style", "title", "noscript", "iframe", "object", "embed", "head"},
    attributes=_ATTRIBUTES,
    attribute_filter=_filter_attribute,
    url_schemes={"http", "https", "mailto", "tel", "ftp", "ftps", "cid", "sms", "javascript", "vbscript"},
    link_rel=None,
    strip_comments=True,
)


def sanitize_html(body: str) -> str:
    """The body as Odoo's html_sanitize would store it."""
    if not body:
        return body
    cleaned = _CLEANER.clean(_as_libxml2_reads(body))
    # html5ever turns a stray "</p>" (after a block that closed the paragraph) into an empty
    # paragraph; libxml2, which Odoo uses, ignores it.
    surplus = cleaned.count("<p></p>") - body.lower().count("<p></p>")
    while surplus > 0 and "<p></p>" in cleaned:
        position = cleaned.rfind("<p></p>")
        cleaned = cleaned[:position] + cleaned[position + len("<p></p>"):]
        surplus -= 1
    return _wrap_leading_text(cleaned).replace("\xa0", "&nbsp;")


def _as_libxml2_reads(body: str) -> str:
    """The body as far as Odoo's parser reads it.

    html_sanitize hands the body to lxml's Cleaner, which parses it with lxml's default HTML parser;
    libxml2 stops reading past 256 levels of nesting without raising, and what lies deeper or after
    is not stored (read from Odoo's and lxml's sources, as the gateway's own parser did before it
    read such HTML whole; measured on the real Odoo 18 on 2026-12-07: a note posted with
    body_is_html kept text 250 <div> deep and the paragraph after it, and lost both at 260 and 300).
    html5ever, which nh3 uses here, reads any depth.
    """
    if body.count("<") < 256:
        return body  # fewer tags than levels: nothing can lie that deep
    parser = lxml.html.HTMLParser()
    try:
        document = lxml.html.document_fromstring(body, parser=parser)
    except (lxml.etree.ParserError, ValueError):
        return body
    if not any(error.type == lxml.etree.ErrorTypes.ERR_RESOURCE_LIMIT for error in parser.error_log):
        return body
    root = document.find("body")
    if root is None:
        return ""
    return html.escape(root.text or "", quote=False) + "".join(
        lxml.html.tostring(child, encoding="unicode") for child in root)


def _wrap_leading_text(cleaned: str) -> str:
    # lxml.html.fromstring puts text that opens a fragment in a <p> (libxml2 does it for text
    # directly in <body>), which is why a plain string body is stored as "<p>...</p>" (facts b).
    stripped = cleaned.lstrip()
    if not stripped or stripped.startswith("<"):
        return cleaned
    block = _BLOCK_TAG.search(cleaned)
    if block is None:
        return f"<p>{cleaned}</p>"
    return f"<p>{cleaned[: block.start()]}</p>{cleaned[block.start():]}"


def html_to_text(body: str) -> str:
    text = re.sub(r"<br\s*/?>|</p>|</div>|</tr>", "\n", body or "", flags=re.IGNORECASE)
    text = re.sub(r"<[^>]+>", "", text)
    return html.unescape(text).strip()


def tracking_message_id(res_id: str) -> str:
    """odoo/tools/mail.py generate_tracking_message_id: <random.time-openerp-<res_id>@host>."""
    random_part = ("%.15f" % random.SystemRandom().random())[2:]
    return "<%s.%.15f-openerp-%s@%s>" % (random_part, time.time(), res_id, MESSAGE_ID_HOST)


# --- Followers ----------------------------------------------------------------------------------


def subscribe(env: Env, model: str, record_id: int, partner_ids: list[int],
              subtype_ids: list[int] | None = None) -> None:
    """Add followers (mail.followers rows), by default on the model's default subtypes."""
    if subtype_ids is None:
        subtype_ids = default_subtypes(env, model)
    existing = {env.db.rows["mail.followers"][fid]["partner_id"]: fid for fid in followers_of(env, model, record_id)}
    for partner_id in partner_ids:
        if partner_id not in env.db.rows["res.partner"]:
            continue
        if partner_id in existing:
            row = env.db.rows["mail.followers"][existing[partner_id]]
            row["subtype_ids"] = list(dict.fromkeys((row.get("subtype_ids") or []) + list(subtype_ids)))
            continue
        create_record(env.sudo(), "mail.followers", {
            "res_model": model, "res_id": record_id, "partner_id": partner_id, "subtype_ids": list(subtype_ids),
        })


def default_subtypes(env: Env, model: str) -> list[int]:
    # Everyone in the measured database followed "Discussions" only (facts c): the default,
    # public subtypes of the model or of every model.
    return [
        sid for sid, row in sorted(env.db.rows["mail.message.subtype"].items())
        if row.get("default", True) and not row.get("internal") and not row.get("hidden")
        and row.get("res_model") in (False, None, "", model)
    ]


def unsubscribe(env: Env, model: str, record_id: int, partner_ids: list[int]) -> None:
    rows = env.db.rows["mail.followers"]
    for follower_id in followers_of(env, model, record_id):
        if rows[follower_id]["partner_id"] in partner_ids:
            rows.pop(follower_id)


@rpc("mail.thread", name="message_subscribe", on_records=True)
def _message_subscribe(env: Env, model: str, ids: list[int], partner_ids: Any = None, subtype_ids: Any = None) -> bool:
    partner_ids = list(partner_ids or [])
    # mail_thread.py message_subscribe: subscribing oneself needs read access, anyone else write.
    operation = "read" if partner_ids == [env.partner_id] else "write"
    check_records(env, model, ids, operation)
    for record_id in ids:
        subscribe(env, model, record_id, partner_ids, list(subtype_ids) if subtype_ids else None)
    return True


@rpc("mail.thread", name="message_unsubscribe", on_records=True)
def _message_unsubscribe(env: Env, model: str, ids: list[int], partner_ids: Any = None) -> bool:
    partner_ids = list(partner_ids or [])
    check_records(env, model, ids, "read" if partner_ids == [env.partner_id] else "write")
    for record_id in ids:
        unsubscribe(env, model, record_id, partner_ids)
    return True


# --- Outgoing email -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OutgoingEmail:
    """One notification email, as the mail sink of the measured server received it."""

    partner_id: int
    email_to: str
    email_from: str
    reply_to: str
    subject: str
    body_html: str
    text: str
    message_id: str
    references: str
    mail_message_id: int
    model: str
    res_id: int
    internal: bool
    headers: dict[str, str] = field(default_factory=dict)


def _x_odoo_objects(env: Env, model: str, record_id: int) -> str:
    # A task names its project first: 'project.project-7, ,project.task-60' (facts i).
    if model == "project.task":
        project_id = env.db.rows["project.task"][record_id].get("project_id")
        if project_id:
            return f"project.project-{project_id}, ,project.task-{record_id}"
    return f"{model}-{record_id}"


def _reply_to(env: Env, model: str, record_id: int, email_from: str) -> str:
    # models.py _notify_get_reply_to: the company's catchall when it has an alias domain,
    # named after the company and the record (a task after its project); else the author.
    row = env.db.rows[model][record_id]
    company_id = row.get("company_id") or 1
    company = env.db.rows["res.company"].get(company_id) or {}
    domain = env.db.rows["mail.alias.domain"].get(company.get("alias_domain_id") or 0)
    if not domain or not domain.get("catchall_alias"):
        return email_from
    label = display_name(env, model, record_id)
    if model == "project.task" and row.get("project_id"):
        label = display_name(env, "project.project", row["project_id"])
    return format_address(f"{company.get('name')} {label}", f"{domain['catchall_alias']}@{domain['name']}")


def _notify(env: Env, model: str, record_id: int, message_id: int, notify_author: bool, keep_mails: bool) -> None:
    """mail_thread.py _notify_thread and mail_followers.py _get_recipient_data, for one message."""
    db = env.db
    message = db.rows["mail.message"][message_id]
    subtype = db.rows["mail.message.subtype"].get(message.get("subtype_id") or 0) or {}
    recipients: list[int] = []
    for follower_id in followers_of(env, model, record_id):
        follower = db.rows["mail.followers"][follower_id]
        partner_id = follower["partner_id"]
        if message.get("subtype_id") not in (follower.get("subtype_ids") or []):
            continue
        # A follower of an internal subtype is notified only if it is an internal user.
        if subtype.get("internal") and raw_value(env, "res.partner", partner_id, "partner_share"):
            continue
        recipients.append(partner_id)
    for partner_id in message.get("partner_ids") or []:
        if partner_id not in recipients:
            recipients.append(partner_id)
    # The calling user's partner is left out, not the author's (mail_thread.py:3836-3842).
    real_author = False
    if not notify_author:
        if env.user.get("active", True):
            real_author = env.partner_id
        else:
            real_author = message.get("author_id")
    internal = bool(subtype.get("internal") or message.get("is_internal"))
    first_id = first_message_of(env, model, record_id)
    first = db.rows["mail.message"][first_id].get("message_id") if first_id is not None else ""
    references = " ".join(dict.fromkeys(value for value in (first, message.get("message_id")) if value))
    subject = message.get("subject") or message.get("record_name") or display_name(env, model, record_id)
    text = html_to_text(message.get("body") or "")
    if internal:
        text = f"Internal communication: {text}\n\n*Internal communication*: Replying will post an internal note."
    headers = {"X-Odoo-Objects": _x_odoo_objects(env, model, record_id)}
    mail_groups: dict[bool, list[int]] = {}
    sudo = env.sudo()
    for partner_id in recipients:
        partner = db.rows["res.partner"].get(partner_id)
        if not partner or partner_id == real_author or not partner.get("active", True):
            continue
        # The partner's internal user decides between email and inbox, else its first user.
        users = sorted(
            (bool(raw_value(env, "res.users", uid, "share")), uid)
            for uid, row in db.rows["res.users"].items()
            if row.get("partner_id") == partner_id and row.get("active", True)
        )
        kind = db.rows["res.users"][users[0][1]].get("notification_type") or "email" if users else "email"
        values = {
            "mail_message_id": message_id, "res_partner_id": partner_id, "notification_type": kind,
            "notification_status": "sent", "is_read": kind == "email",
        }
        if kind == "email" and not partner.get("email"):
            values.update(notification_status="exception", failure_type="mail_email_missing")
        notification_id = create_record(sudo, "mail.notification", values)
        if kind != "email" or not partner.get("email"):
            continue
        shared = bool(raw_value(env, "res.partner", partner_id, "partner_share"))
        mail_groups.setdefault(shared, []).append(notification_id)
        db.outbox.append(OutgoingEmail(
            partner_id=partner_id,
            email_to=format_address(partner.get("name"), partner.get("email")),
            email_from=message.get("email_from") or "",
            reply_to=message.get("reply_to") or "",
            subject=subject,
            body_html=message.get("body") or "",
            text=text,
            message_id=message.get("message_id") or "",
            references=references,
            mail_message_id=message_id,
            model=model,
            res_id=record_id,
            internal=internal,
            headers=dict(headers),
        ))
    if keep_mails:
        # With mail_auto_delete=False the mail.mail rows survive, one per recipient group (facts i).
        for notification_ids in mail_groups.values():
            partner_ids = [db.rows["mail.notification"][nid]["res_partner_id"] for nid in notification_ids]
            mail_id = create_record(sudo, "mail.mail", {
                "mail_message_id": message_id, "message_id": message.get("message_id"), "references": references,
                "headers": repr(headers), "subject": subject, "body_html": message.get("body") or "",
                "email_from": message.get("email_from"), "reply_to": message.get("reply_to"),
                "recipient_ids": partner_ids, "state": "sent", "auto_delete": False, "model": model,
                "res_id": record_id,
            })
            for nid in notification_ids:
                db.rows["mail.notification"][nid]["mail_mail_id"] = mail_id


# --- message_post -------------------------------------------------------------------------------

# mail_thread.py _get_notify_valid_parameters: keyword arguments that are not mail.message fields
# must be among these, anything else is refused.
NOTIFY_PARAMETERS = {
    "force_email_company", "force_email_lang", "force_send", "mail_auto_delete", "model_description",
    "notify_author", "resend_existing", "scheduled_date", "send_after_commit", "skip_existing", "subtitles",
}
# sale_order.py:1669-1675: sale.order.message_post forces mail_post_autofollow=True unless the
# context says otherwise, so notified partners become followers (and portal readers, facts c).
AUTOFOLLOW_MODELS = {"sale.order"}
# Values computed by message_post itself that a caller may not pass (mail_thread.py:2117).
FORBIDDEN_PARAMETERS = {"model", "res_id", "subtype"}


def _is_list_of(values: Any, kind: type) -> bool:
    return isinstance(values, (list, tuple)) and all(
        isinstance(value, kind) and not (kind is int and isinstance(value, bool)) for value in values
    )


def _compute_author(env: Env, author_id: Any, email_from: Any) -> tuple[Any, Any]:
    """mail_thread.py _message_compute_author."""
    partners = env.db.rows["res.partner"]
    if author_id is None:
        if email_from:
            wanted = str(email_from).lower()
            found = [pid for pid, row in sorted(partners.items())
                     if row.get("email") and row["email"].lower() in wanted]
            author_id = found[0] if found else False
        else:
            author_id = env.partner_id
            email_from = format_address(partners[author_id].get("name"), partners[author_id].get("email"))
    if email_from is None and author_id:
        if author_id not in partners:
            raise missing_error(env, "res.partner", [author_id])
        email_from = format_address(partners[author_id].get("name"), partners[author_id].get("email"))
    if not email_from and not env.su:
        raise UserError("Unable to send message, please configure the sender's email address.")
    return author_id, email_from


def _message_create_error(env: Env) -> AccessError:
    return AccessError(
        "The requested operation cannot be completed due to security restrictions. Please contact your "
        "system administrator.\n\n(Document type: Message, Operation: create)\n\n"
        f"Records: [], User: {env.uid}"
    )


def _attachments_for_post(env: Env, model: str, record_id: int, attachments: Any,
                          attachment_ids: list[int], body: str) -> tuple[list[int], str | None]:
    """mail_thread.py _process_attachments_for_post (Odoo 18.0 lines 2289-2386).

    Returns the attachment ids and, when an <img src="cid:..."> (or data-filename) of the body
    names one of the posted files, the body with those images pointing at
    /web/image/<id>?access_token=<token>; otherwise None.
    """
    rows = env.db.rows["ir.attachment"]
    body_cids: set[str] = set()
    body_filenames: set[str] = set()
    root = None
    if attachments and body:
        root = lxml.html.fromstring(body)
        for node in root.iter("img"):
            if node.get("src", "").startswith("cid:"):
                body_cids.add(node.get("src").split("cid:")[1])
            elif node.get("data-filename"):
                body_filenames.add(node.get("data-filename"))
    cid_mapping: dict[str, tuple[int, str | bool]] = {}
    name_mapping: dict[str, tuple[int, str | bool]] = {}
    pending = [
        aid for aid in attachment_ids
        if aid in rows and rows[aid].get("res_model") in ("mail.compose.message", "mail.scheduled.message")
        and rows[aid].get("create_uid") == env.uid
    ]
    for aid in pending:
        rows[aid].update(res_model=model, res_id=record_id)
    # Portal and public users may only attach the pending attachments they created themselves.
    linked = [aid for aid in attachment_ids if aid in rows] if env.is_internal() else pending
    for attachment in attachments or []:
        if len(attachment) == 2:
            name, content = attachment
            info: dict = {}
        else:
            name, content, info = attachment
            info = info or {}
        cid = info.get("cid") or False
        if content is None:
            continue
        if isinstance(content, str):
            try:
                content = content.encode(info.get("encoding") or "utf-8")
            except (UnicodeEncodeError, LookupError):
                content = content.encode("utf-8")
        values = {"name": name, "description": name, "type": "binary", "res_model": model, "res_id": record_id}
        token: str | bool = False
        if (cid and cid in body_cids) or (name and name in body_filenames):
            # ir.attachment._generate_access_token
            token = values["access_token"] = str(uuid.uuid4())
        attachment_id = create_record(env.sudo(), "ir.attachment", values)
        store_attachment_bytes(env, attachment_id, bytes(content))
        linked.append(attachment_id)
        if cid:
            cid_mapping[cid] = (attachment_id, token)
        if name:
            name_mapping[name] = (attachment_id, token)
    new_body = None
    if root is not None and (body_cids or body_filenames):
        rewritten = False
        for node in root.iter("img"):
            attachment_id, token = False, False
            if node.get("src", "").startswith("cid:"):
                attachment_id, token = cid_mapping.get(node.get("src").split("cid:")[1], (False, False))
            if (not attachment_id or not token) and node.get("data-filename"):
                attachment_id, token = name_mapping.get(node.get("data-filename"), (False, False))
            if attachment_id and token:
                node.set("src", f"/web/image/{attachment_id}?access_token={token}")
                rewritten = True
        if rewritten:
            # Odoo returns the rewritten body and the Html field sanitizes it when the message is created.
            new_body = sanitize_html(lxml.html.tostring(root, pretty_print=False, encoding="unicode"))
    return linked, new_body


@rpc("mail.thread", name="message_post", on_records=True)
def message_post(
    env: Env, model: str, ids: list[int], *, body: Any = "", subject: Any = None, message_type: str = "notification",
    email_from: Any = None, author_id: Any = None, parent_id: Any = False, subtype_xmlid: Any = None,
    subtype_id: Any = False, partner_ids: Any = None, attachments: Any = None, attachment_ids: Any = None,
    body_is_html: bool = False, **kwargs: Any,
) -> int:
    """mail_thread.py message_post (Odoo 18.0), returning the new mail.message id."""
    record_id = ensure_one(model, ids)
    db = env.db
    if model in AUTOFOLLOW_MODELS:
        env = env.with_context(mail_post_autofollow=env.context.get("mail_post_autofollow", True))
    conflicting = set(kwargs) & FORBIDDEN_PARAMETERS
    if conflicting:
        raise ValueError(f"Those values are not supported when posting or notifying: {', '.join(sorted(conflicting))}")
    if message_type == "user_notification":
        raise ValueError("Use message_notify to send a notification to an user.")
    if attachments:
        valid = (_is_list_of(attachments, list) or _is_list_of(attachments, tuple)) and all(
            len(attachment) in (2, 3) for attachment in attachments
        )
        if not valid:
            raise ValueError(
                "Posting a message should receive attachments as a list of list or tuples "
                f"(received {attachment_ids!r})"
            )
    if attachment_ids and not _is_list_of(attachment_ids, int):
        raise ValueError(
            f"Posting a message should receive attachments records as a list of IDs (received {attachment_ids!r})"
        )
    if partner_ids and not _is_list_of(partner_ids, int):
        raise ValueError(f"Posting a message should receive partners as a list of IDs (received {partner_ids!r})")
    partner_ids = list(partner_ids or [])
    if any(partner_id not in db.rows["res.partner"] for partner_id in partner_ids):
        # The foreign key of the message's recipients fails, and the whole post is rolled back.
        raise foreign_key_error(env, "mail.message", db.models["mail.message"].fields["partner_ids"])
    attachment_ids = list(attachment_ids or [])
    message_fields = db.models["mail.message"].fields
    message_values = {key: value for key, value in kwargs.items() if key in message_fields}
    notify_values = {key: value for key, value in kwargs.items() if key not in message_values}
    # In Odoo this is raised by _notify_thread once the message exists; the transaction is then
    # rolled back, so nothing is stored either way.
    unknown = set(notify_values) - NOTIFY_PARAMETERS
    if unknown:
        raise ValueError(f"Those values are not supported when posting or notifying: {', '.join(sorted(unknown))}")

    # The message is created as the caller, employees included: the document access of
    # _mail_post_access ('write' unless the model says otherwise), else the caller's partner
    # following the record; and for users who are not employees, no internal comment
    # (mail_message.py _get_forbidden_access, operation 'create'). The parent condition (a caller
    # notified of parent_id) is not modelled: the gateway passes no parent.
    if record_id not in db.rows[model]:
        raise missing_error(env, model, [record_id])
    if not env.su:
        try:
            operation = db.models[model].mail_post_access
            check_records(env, model, [record_id], operation)
        except AccessError:
            followers = {db.rows["mail.followers"][fid]["partner_id"] for fid in followers_of(env, model, record_id)}
            if env.partner_id not in followers:
                raise _message_create_error(env) from None

    author_id, email_from = _compute_author(env, author_id, email_from)
    if subtype_xmlid:
        # _xmlid_to_res_id does not raise: an unknown xmlid falls back to the note subtype below.
        subtype_id = db.xmlid_to_id(subtype_xmlid) or False
    if not subtype_id:
        subtype_id = db.xmlid_to_id("mail.mt_note")
    check_internal = {
        "message_type": message_type, "is_internal": message_values.get("is_internal"), "subtype_id": subtype_id,
    }
    if not env.is_internal() and _would_be_internal(env, check_internal):
        # Raised by the message's creation in Odoo, whose rollback also undoes what came before.
        raise _message_create_error(env)

    if env.context.get("mail_post_autofollow") and partner_ids:
        subscribe(env, model, record_id, partner_ids)

    if isinstance(body, Markup):
        # A Markup body is HTML already (mail_thread.py:2183-2196): what the mail gateway passes.
        stored_body = sanitize_html(str(body))
    elif body_is_html and env.is_internal():
        # Odoo logs this as a WARNING on every such post; at INFO here, so benchmarks stay quiet.
        log.info("Posting HTML message using body_is_html=True, use a Markup object instead (user: %s)", env.uid)
        stored_body = sanitize_html(str(body))
    else:
        # markupsafe.escape, then the Html field's sanitizer: quotes come back unescaped from
        # lxml's serializer, "<", ">" and "&" stay escaped, and the text is wrapped in <p>.
        stored_body = sanitize_html(html.escape(str(body), quote=False))

    values = dict(message_values)
    values.setdefault("email_add_signature", True)
    if not values.get("record_name"):
        values["record_name"] = display_name(env, model, record_id)
    values.update({
        "author_id": author_id or False,
        "email_from": email_from or False,
        "model": model,
        "res_id": record_id,
        "body": stored_body,
        "message_type": message_type,
        "parent_id": _parent_id(env, model, record_id, parent_id),
        "subject": subject or False,
        "subtype_id": subtype_id,
        "partner_ids": partner_ids,
    })
    row = db.rows[model][record_id]
    values.setdefault("record_company_id", row.get("company_id") or 1)
    company = db.rows["res.company"].get(values["record_company_id"]) or {}
    values.setdefault("record_alias_domain_id", company.get("alias_domain_id") or False)
    values.setdefault("reply_to", _reply_to(env, model, record_id, email_from or ""))
    values["attachment_ids"], rewritten_body = _attachments_for_post(
        env, model, record_id, attachments, attachment_ids, stored_body)
    if rewritten_body is not None:
        values["body"] = rewritten_body

    message_id = create_record(env.sudo(), "mail.message", values)

    # The caller follows the document after a manual post, unless told not to (mail_thread.py:2220).
    if not env.context.get("mail_create_nosubscribe") and message_type != "notification":
        follower = False
        if env.user.get("active", True):
            follower = env.partner_id
        elif author_id and db.rows["res.partner"].get(author_id, {}).get("active", True):
            follower = author_id
        if follower:
            subscribe(env, model, record_id, [follower])

    after_hook = POST_AFTER_HOOKS.get(model)
    if after_hook is not None:
        # mail_thread.py:2236: _message_post_after_hook runs before _notify_thread.
        after_hook(env, model, record_id, message_id)

    notify_author = bool(notify_values.get("notify_author") or env.context.get("mail_notify_author"))
    keep_mails = notify_values.get("mail_auto_delete", True) is False
    _notify(env, model, record_id, message_id, notify_author, keep_mails)
    return message_id


# --- account.move's _message_post_after_hook ------------------------------------------------------

NOT_A_DRAFT = "The invoice is not a draft, it was not updated from the attachment."


def _unlink_attachments(env: Env, attachment_ids: list[int]) -> None:
    """ir.attachment unlink; the rows of mail.message's attachment_ids go with it (ondelete cascade)."""
    for attachment_id in attachment_ids:
        env.db.rows["ir.attachment"].pop(attachment_id, None)
        env.db.blobs.pop(attachment_id, None)
    gone = set(attachment_ids)
    for row in env.db.rows["mail.message"].values():
        if gone & set(row.get("attachment_ids") or ()):
            row["attachment_ids"] = [aid for aid in row["attachment_ids"] if aid not in gone]


def account_move_after_hook(env: Env, model: str, record_id: int, message_id: int) -> None:
    """account_move.py _message_post_after_hook and _check_and_decode_attachment (Odoo 18.0 lines 5931-5989).

    Every post on a move by an internal user (the integration user, or OdooBot for message_process)
    hands the message's files to the invoice import, unless the context has ``no_new_invoice``:
    on a move that is not a draft, OdooBot posts a note saying so; on a draft, what the import
    decodes (a UBL or Factur-X XML, a PDF with one embedded) rewrites the move or creates new ones
    (from_alias), and every file it does not use is deleted, so the message loses it. The test Odoo
    has no decoder: on a draft every file is deleted. Posts by portal users are left alone.
    """
    if env.context.get("no_new_invoice") or not env.is_internal():
        return
    attachment_ids = [aid for aid in env.db.rows["mail.message"][message_id].get("attachment_ids") or []
                      if aid in env.db.rows["ir.attachment"]]
    if not attachment_ids:
        return
    if env.db.rows[model][record_id].get("state") != "draft":
        # self.with_user(SUPERUSER_ID).message_post(...): OdooBot is the author.
        message_post(Env(env.db, 1, env.context, su=True), model, [record_id], body=NOT_A_DRAFT,
                     message_type="comment")
        return
    _unlink_attachments(env, attachment_ids)


POST_AFTER_HOOKS = {"account.move": account_move_after_hook}


# --- message_process (the mail gateway) -----------------------------------------------------------

_QUOTE_TAG = re.compile(r"<blockquote(?![^>]*data-o-mail-quote)", re.IGNORECASE)


# tools/mail.py email_re: what Odoo takes for an address in text, when getaddresses found none.
_EMAIL_IN_TEXT = re.compile(r"([a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,63})")


def email_split_tuples(text: str) -> list[tuple[str, str]]:
    """tools/mail.py email_split_tuples: the (name, address) pairs Odoo reads in a header's text.

    What getaddresses finds with an "@" in its address; if one of them starts with "@", the
    addresses email_re finds in the text instead; a pair without a name whose address holds spaces
    is read again with the spaces as commas (Odoo's repair of 'name email@domain.com').
    """
    if not text:
        return []
    pairs = [(name, address) for name, address in _getaddresses(text) if address and "@" in address]
    if any(address.startswith("@") for _name, address in pairs):
        found = [address for address in _EMAIL_IN_TEXT.findall(text) if address and not address.startswith("@")]
        if found:
            pairs = [("", address) for address in found]
    repaired = []
    for name, address in pairs:
        if not name and " " in address:
            words = [word for _n, word in _getaddresses(address.replace(" ", ",")) if word]
            inside = [word for word in words if "@" in word]
            if inside:
                name, address = " ".join(word for word in words if "@" not in word), inside[-1]
        repaired.append((name, address))
    return repaired


def _odoo_formataddr(name: str, address: str) -> str:
    """tools/mail.py formataddr with its default charset utf-8: the name quoted, the address kept."""
    return format_address(name, address) if name else address


def _find_partner_by_email(env: Env, model: str, record_id: int, address: str) -> int | None:
    """mail_thread.py _mail_find_partner_from_emails for one address: the record's followers
    first, then the partners of users, then any partner (lowest id), compared by the normalized
    address (email_normalize(strict=False) of the text, a partner's email_normalized)."""
    wanted = email_normalized(address)
    if not wanted:
        return None
    partners = env.db.rows["res.partner"]

    def matches(partner_id: int) -> bool:
        row = partners.get(partner_id) or {}
        return email_normalized(row.get("email")) == wanted

    followers = [env.db.rows["mail.followers"][fid]["partner_id"] for fid in followers_of(env, model, record_id)]
    for partner_id in followers:
        if matches(partner_id):
            return partner_id
    for _uid, user in sorted(env.db.rows["res.users"].items()):
        if user.get("partner_id") and matches(user["partner_id"]):
            return user["partner_id"]
    return next((partner_id for partner_id in sorted(partners) if matches(partner_id)), None)


@rpc("mail.thread", name="message_process")
def message_process(env: Env, _model: str, thread_model: str, message: Any, custom_values: Any = None, save_original: bool = False,
                    strip_attachments: bool = False, thread_id: Any = None) -> Any:
    """mail_thread.py message_process (Odoo 18.0 lines 1332-1390) for what the gateway sends: a
    message for an existing record (``thread_id``), without aliases to route by.

    A message whose References (or, without them, In-Reply-To) names a message Odoo has is filed on
    that message's record, not on ``thread_id`` (message_route, lines 1107-1115 and 1139-1160), as a
    reply to it (message_parse's parent, lines 1755-1769 and 1808-1830: a note if the parent is
    one). The gateway hands over neither header (post.reply_message); a gateway that did would see
    its reply filed on another record here as on Odoo 18. Not modelled: an alias of another model
    named in To/Cc, which makes Odoo take it as a forward (line 1139-1156; the gateway sends no To).

    As measured on a real Odoo 18: a known Message-ID returns False and files nothing; a missing
    record raises MissingError (from the author lookup among its followers), before any record
    creation; the message is posted as the archived OdooBot (mail_thread.py:1294-1297) with the
    author found from From, message_type 'email' and subtype Discussions, so the author is left
    out of the notification; the body's HTML is kept (blockquotes marked as quotes); files become
    attachments of the record; partners in To/Cc are stored on the message after the post, not
    notified, and on project.task subscribed first (project_task.py message_update).
    """
    import email
    import email.policy
    from email.utils import getaddresses

    db = env.db
    if isinstance(message, str):
        message = message.encode("utf-8")
    parsed = email.message_from_bytes(bytes(message), policy=email.policy.SMTP)
    message_id = (parsed.get("Message-Id") or "").strip()
    if message_id and any(row.get("message_id") == message_id for row in db.rows["mail.message"].values()):
        log.info("Ignored mail with Message-Id %s: found duplicated Message-Id during processing", message_id)
        return False
    if thread_model not in db.models or not db.models[thread_model].chatter:
        raise ValueError(f"Undeliverable mail with Message-Id {message_id}, model {thread_model} "
                         "does not accept incoming emails")
    record_id = int(thread_id or 0)
    parent = _parent_of_incoming(db, parsed)
    # message_parse's is_internal, passed to message_post with the rest of the parsed values.
    parsed_values = {"is_internal": parent["is_internal"]} if parent is not None else {}
    is_internal = bool(parent and parent["is_internal"])
    replied = _replied_message(db, parsed)
    if replied is not None and replied.get("model") in db.models and replied.get("res_id"):
        # A direct reply: routed to the replied message's record (_routing_check_route with
        # raise_exception=False). A record that is gone falls back on creating one from
        # custom_values, which create() refuses for a key that is no field (post.NO_RECORD_CREATION).
        thread_model, record_id = replied["model"], int(replied["res_id"])
        if record_id not in db.rows.get(thread_model, {}):
            unknown = [key for key in custom_values or {} if key not in db.models[thread_model].fields]
            if unknown:
                raise ValueError(f"Invalid field {unknown[0]!r} on model {thread_model!r}")
            raise NotImplementedError("the test Odoo creates no record from an incoming email")
    else:
        # The fallback route (line 1224): the parent found by message_parse is dropped, what it
        # made of is_internal is kept.
        parent = None
    if record_id not in db.rows[thread_model]:
        raise missing_error(env, thread_model, [record_id])
    check_records(env, thread_model, [record_id], "read")
    # message_parse (mail_thread.py:1705-1709): every From header, decoded and joined with commas;
    # the first pair Odoo reads in it, formatted again, or the text itself when it reads none. The
    # author is found by that text's first address (_routing_check_route, lines 855-864).
    email_from = ",".join(str(value) for value in parsed.get_all("From", []) if value)
    from_pairs = email_split_tuples(email_from)
    if from_pairs:
        email_from = _odoo_formataddr(*from_pairs[0])
    author_id = _find_partner_by_email(env, thread_model, record_id, email_from)
    body, files = "", []
    for part in parsed.walk():
        if part.is_multipart():
            continue
        filename = part.get_filename()
        if filename or part.get_content_disposition() == "attachment":
            info = {}
            if part.get("Content-ID"):
                info["cid"] = str(part["Content-ID"]).strip().strip("<>")
            content = part.get_payload(decode=True) or b""
            if part.get_content_maintype() == "text":
                # Odoo 18 reads a text/* file with its charset (us-ascii by default) and stores the
                # text as UTF-8: measured, a Latin-1 byte came back as U+FFFD.
                charset = part.get_content_charset() or "us-ascii"
                try:
                    content = content.decode(charset, errors="replace").encode("utf-8")
                except LookupError:
                    content = content.decode("utf-8", errors="replace").encode("utf-8")
            files.append([filename or "attachment", content, info])
        elif part.get_content_type() == "text/html" and not body:
            body = part.get_content()
        elif part.get_content_type() == "text/plain" and not body:
            body = "<p>" + html.escape(part.get_content()).replace("\n", "<br>") + "</p>"
    body = _QUOTE_TAG.sub('<blockquote data-o-mail-quote-node="1" data-o-mail-quote="1"', body)
    addresses = [address for _name, address in getaddresses([str(parsed.get("To") or ""), str(parsed.get("Cc") or "")])
                 if address]
    copied = [partner_id for partner_id in (_find_partner_by_email(env, thread_model, record_id, address)
                                            for address in addresses) if partner_id]
    root = Env(db, 1, {**env.context, "from_alias": True, "mail_create_nosubscribe": not author_id}, su=True)
    if thread_model == "project.task" and copied:
        subscribe(root, thread_model, record_id, copied)
    # _message_route_process (lines 1301-1310): a reply to an internal note is a note, and the note's
    # author is a recipient of it.
    partner_ids = [parent["author_id"]] if is_internal and parent is not None and parent["author_id"] else []
    new_message = message_post(
        root, thread_model, [record_id], body=Markup(body), message_type="email",
        subtype_xmlid="mail.mt_note" if is_internal else "mail.mt_comment", parent_id=parent["id"] if parent else False,
        partner_ids=partner_ids, author_id=author_id or False, email_from=email_from, **parsed_values,
        subject=str(parsed.get("Subject") or "") or None,
        attachments=[] if strip_attachments else files, message_id=message_id or tracking_message_id(str(record_id)))
    if copied:
        db.rows["mail.message"][new_message]["partner_ids"] = list(dict.fromkeys(copied))
    return record_id


# tools/mail.py mail_header_msgid_re.
_MESSAGE_ID_IN_HEADER = re.compile(r"<[^<>]+>")


def _replied_message(db: Any, parsed: Any) -> dict | None:
    """message_route's replying_to_msg (lines 1107-1115): the newest message named by References,
    or by In-Reply-To when there are no References, as a row with its id; None if none is known."""
    thread_references = str(parsed.get("References") or "") or str(parsed.get("In-Reply-To") or "").strip()
    references = [re.sub(r"[\r\n\t ]+", "", ref) for ref in _MESSAGE_ID_IN_HEADER.findall(thread_references)
                  if "reply_to" not in ref][-32:]
    found = [mid for mid, row in db.rows["mail.message"].items() if references and row.get("message_id") in references]
    return {**db.rows["mail.message"][max(found)], "id": max(found)} if found else None


def _parent_of_incoming(db: Any, parsed: Any) -> dict | None:
    """message_parse's parent (_get_parent_message, lines 1808-1830, and
    _message_parse_extract_from_parent): the newest message of the In-Reply-To, else of any of the
    References; whether it is internal (an internal subtype, not an auto_comment) and its author."""
    messages = db.rows["mail.message"]
    in_reply_to = str(parsed.get("In-Reply-To") or "").strip()
    found = [mid for mid, row in messages.items() if in_reply_to and row.get("message_id") == in_reply_to]
    if not found:
        references = [ref.strip() for ref in _MESSAGE_ID_IN_HEADER.findall(str(parsed.get("References") or ""))]
        found = [mid for mid, row in messages.items() if references and row.get("message_id") in references]
    if not found:
        return None
    row = messages[max(found)]
    subtype = db.rows["mail.message.subtype"].get(row.get("subtype_id") or 0) or {}
    return {"id": max(found), "author_id": row.get("author_id") or False,
            "is_internal": bool(subtype.get("internal")) and row.get("message_type") != "auto_comment"}


def _would_be_internal(env: Env, values: dict) -> bool:
    if values["message_type"] != "comment":
        return False
    subtype = env.db.rows["mail.message.subtype"].get(values["subtype_id"] or 0)
    return bool(values.get("is_internal") or subtype is None or subtype.get("internal"))


def _parent_id(env: Env, model: str, record_id: int, parent_id: Any) -> Any:
    # mail.thread has _mail_flat_thread: a message without a parent hangs from the first one.
    if parent_id:
        return parent_id
    first = first_message_of(env, model, record_id, exclude=("user_notification",))
    return first if first is not None else False


# --- Chatters -----------------------------------------------------------------------------------


def format_message(env: Env, message_id: int) -> dict[str, Any]:
    row = env.db.rows["mail.message"][message_id]
    subtype_id = row.get("subtype_id")
    author_id = row.get("author_id")
    attachments = env.db.rows["ir.attachment"]
    return {
        "id": message_id,
        "body": row.get("body") or "",
        "date": row.get("date"),
        "message_type": row.get("message_type"),
        "subtype_id": [subtype_id, display_name(env, "mail.message.subtype", subtype_id)] if subtype_id else False,
        "is_internal": bool(row.get("is_internal")),
        "author_id": [author_id, display_name(env, "res.partner", author_id)] if author_id else False,
        "email_from": row.get("email_from") or False,
        "model": row.get("model"),
        "res_id": row.get("res_id"),
        "partner_ids": list(row.get("partner_ids") or []),
        "message_id": row.get("message_id"),
        "attachment_ids": [
            {"id": aid, "name": attachments[aid].get("name"), "mimetype": attachments[aid].get("mimetype"),
             "access_token": attachments[aid].get("access_token") or False}
            for aid in row.get("attachment_ids") or [] if aid in attachments
        ],
    }


def portal_chatter_ids(env: Env, model: str, record_id: int, limit: int | None = None,
                       partner_id: int | None = None) -> list[int]:
    """What /mail/chatter_fetch returns to the calling (portal) user: comments of the Discussions
    subtype with a body or attachments, that mail.message's access rules let it read (facts d).
    ``partner_id`` stands for a partner without a user of its own (the caller is then public)."""
    comment_subtype = env.db.xmlid_to_id("mail.mt_comment")
    if partner_id is None:
        partner_id = env.partner_id
    found = []
    for message_id in messages_of(env, model, record_id, WEBSITE_MESSAGE_TYPES):
        row = env.db.rows["mail.message"][message_id]
        if row.get("subtype_id") != comment_subtype:
            continue
        if not (row.get("body") or row.get("attachment_ids")):
            continue
        if not env.is_internal() and message_is_internal(env, message_id):
            continue
        if not env.is_internal():
            notified = any(
                n.get("mail_message_id") == message_id and n.get("res_partner_id") == partner_id
                for n in env.db.rows["mail.notification"].values()
            )
            if not (
                row.get("author_id") == partner_id or partner_id in (row.get("partner_ids") or []) or notified
                or document_readable(env, model, record_id)
            ):
                continue
        found.append(message_id)
    return found[:limit] if limit else found

