"""File the message in Odoo's chatter, once, with the exact call ODOO_FACTS.md demands."""

from __future__ import annotations

import email
import email.errors
import hashlib
import logging
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import getaddresses, parseaddr

from gateway import address, idn
from gateway.context import MessageContext
from gateway.odoo import POST_CONTEXT, OdooPool
from gateway.refusals import OdooUnavailable, ReplyMisattributed

log = logging.getLogger(__name__)

SUBTYPES = {"note": "mail.mt_note", "reply": "mail.mt_comment"}

# custom_values of a reply: a key that is no field of any model. Odoo only uses custom_values to
# create a record when the message cannot go to an existing one (mail_thread.py message_route,
# _routing_check_route); create() then refuses the unknown field (odoo/models.py create, "Invalid
# field"), so a reply never makes a record, even if the record vanished after the checks.
NO_RECORD_CREATION = {"note_gateway_existing_record_only": True}

# author_message_id: <local.model-res_id.from-<digest of the sender's address>@domain>.
AUTHOR_SUFFIX = ".from-"
AUTHOR_DIGEST_LENGTH = 12


@dataclass(frozen=True)
class Filed:
    """What Odoo has on the record under the message's Message-IDs (filed_message_ids).

    ``existing``: the sender's own message, filed by an earlier delivery (a retry). ``taken``: the
    IDs there from another author only; the message is still filed, under an ID not taken.
    ``notes``: for a public reply only, the IDs the sender's own internal messages have there
    when no public one of the sender is (the note delivery of the same message came first); the
    reply is filed under another of its IDs.
    """

    existing: int | None = None
    taken: frozenset[str] = frozenset()
    notes: frozenset[str] = frozenset()


def look_up(odoo: OdooPool, ctx: MessageContext, *, deadline: float | None = None,
            authors: frozenset[int] = frozenset()) -> Filed:
    """Whether this sender's message is already on the record, and which of its IDs others took.

    Odoo stores ``message_id`` but does not make it unique (ODOO_FACTS.md f), so a retried
    delivery would be filed twice unless the gateway looks first. A message with the same
    Message-ID from another author is not this message: anyone can reuse a Message-ID (a portal
    user copying a contributor's, from a Cc), and counting it would swallow the note after a 250.

    For a public reply (``ctx.target.kind`` still "reply" at the post: neither reply-all to a note
    address nor an answer to a note), only the sender's public message is this one. One message
    sent To a reply+ with a Bcc to the note+ of the same record reaches the gateway as two
    deliveries, with one Message-ID; the note delivery, if it came first, filed an internal note,
    and counting that would have answered the reply delivery "Already filed" while no reply was
    public (found by a concurrency review). The reply is then filed under another of its IDs
    (``notes``; filed_message_ids, so a retry finds it). A note delivery counts any message of the
    sender, the public reply too (docs/rules.md).

    ``authors``: more partners whose messages are the sender's (is_own), for a retry of a post the
    journal left unsettled only (pipeline.retry_of_filed).
    """
    # Never cached: a retry comes precisely after the first delivery may have filed the message.
    rows = odoo.call("mail.message", "search_read",
                     [[("message_id", "in", filed_message_ids(ctx)), ("model", "=", ctx.target.model),
                       ("res_id", "=", ctx.target.res_id)]],
                     {"fields": ["message_id", "author_id", "email_from", "is_internal", "subtype_id"],
                      "order": "id"}, deadline=deadline)
    own = [row for row in rows if is_own(ctx, row, authors)]
    others = frozenset(str(row.get("message_id") or "") for row in rows if not is_own(ctx, row, authors))
    if own and ctx.target.kind == "reply":
        public = [row for row in own if not any_internal(odoo, [row], deadline)]
        if not public:
            return Filed(taken=others, notes=frozenset(str(row.get("message_id") or "") for row in own))
        own = public
    if own:
        return Filed(existing=int(own[0]["id"]))
    return Filed(taken=others)


def any_internal(odoo: OdooPool, rows: list[dict], deadline: float | None) -> bool:
    """Whether any of these mail.message rows (with ``is_internal`` and ``subtype_id``) is internal."""
    if any(row.get("is_internal") for row in rows):
        return True
    subtypes = {int(value[0] if isinstance(value, (list, tuple)) else value)
                for value in (row.get("subtype_id") for row in rows) if value}
    if not subtypes:
        return False
    # The ids of Odoo's own Discussions (public) and Note (internal) subtypes, resolved once.
    if odoo.xmlid("mail.mt_note", deadline=deadline) in subtypes:
        return True
    others = subtypes - {odoo.xmlid("mail.mt_comment", deadline=deadline)}
    return bool(others) and bool(odoo.call("mail.message.subtype", "search",
                                           [[("id", "in", sorted(others)), ("internal", "=", True)]],
                                           {"limit": 1}, deadline=deadline, cacheable=True))


def is_own(ctx: MessageContext, row: dict, authors: frozenset[int] = frozenset()) -> bool:
    """Whether a mail.message read from Odoo is the sender's: its author is the sender's partner.

    Or its From is the sender's verified address: Odoo's mail gateway picks the author of a reply
    by that address, among the record's followers first (mail_thread.py _mail_find_partner_from_emails),
    so a reply it filed may carry another partner with the same address (journal ``reply-author:``).
    Only mail that passed this gateway's DKIM check as that address, or that Odoo attributed to
    that address itself, has it. Without the sender's user (an archived or removed one, whose
    retry of a message filed before is looked up: pipeline._answer_retry_of_filed), only the From,
    or an author of ``authors`` (the partner of the user whose login is the From, pipeline.retry_of_filed).
    """
    author = row.get("author_id")
    author_id = int(author[0] if isinstance(author, (list, tuple)) else author) if author else 0
    if author_id and ((ctx.user is not None and author_id == ctx.user.partner_id) or author_id in authors):
        return True
    # In either form of an internationalised domain: Odoo's mail gateway may have stored the From
    # with U-labels that this delivery writes with A-labels, or the other way round (gateway/idn.py).
    address = parseaddr(str(row.get("email_from") or ""))[1].strip()
    return idn.same_mailbox(address, sender_address(ctx))


def sender_address(ctx: MessageContext) -> str:
    """The sender's address: the DKIM-verified From that identified the user."""
    assert ctx.message is not None
    return ctx.sender.email if ctx.sender else ctx.message.from_address


def filed_message_ids(ctx: MessageContext) -> list[str]:
    """Every Message-ID this message may be filed under on its record, in the order they are tried.

    Its own; its record's own (record_message_id), for a reply Odoo's mail gateway filed when the
    original was on another record; its sender's own (author_message_id), when another author's
    message had the original on the record. Known from the sender's verified address, before the
    user is looked up, so the followers read made at the same time can ask for all of them.
    """
    assert ctx.message is not None
    return [ctx.message.message_id, record_message_id(ctx), author_message_id(ctx)]


def _derived(ctx: MessageContext, suffix: str) -> str:
    assert ctx.message is not None
    return derived_message_id(ctx.message.message_id, ctx.target.model, ctx.target.res_id, suffix)


def derived_parts(message_id: str, model: str, res_id: int) -> tuple[str, str]:
    """What every ID derived from ``message_id`` on a record starts and ends with (record_message_id,
    author_message_id): ``<local.model-res_id`` and ``@domain>``."""
    local, _, domain = message_id.strip().strip("<>").rpartition("@")
    if not local:
        local, domain = domain, "note-gateway.invalid"
    return f"<{local}.{model}-{res_id}", f"@{domain}>"


def derived_message_id(message_id: str, model: str, res_id: int, suffix: str = "") -> str:
    """The ID ``message_id`` is filed under on a record when the original cannot be used there."""
    head, tail = derived_parts(message_id, model, res_id)
    return f"{head}{suffix}{tail}"


def record_message_id(ctx: MessageContext) -> str:
    """The Message-ID a reply is filed under when Odoo has the original one on another record.

    Odoo's mail gateway drops a message whose Message-ID it knows anywhere (mail_thread.py:1375),
    but one email sent to two reply addresses is delivered once per address with one Message-ID
    (each recipient its own transaction, MAIL_SECURITY.md item 16): the second record gets its own
    ID, derived so that a retry finds it again.
    """
    return _derived(ctx, "")


def author_message_id(ctx: MessageContext) -> str:
    """The Message-ID a message is filed under when another author's message has its own on the record.

    Derived from the original, the record and the sender's verified address (a digest of it, so
    that no address is spelled out in an ID Odoo copies into its notification emails): a retry by
    the same sender finds it again, and another sender's message never matches it by author anyway.
    """
    digest = hashlib.sha256(sender_address(ctx).strip().lower().encode("utf-8")).hexdigest()[:AUTHOR_DIGEST_LENGTH]
    return _derived(ctx, f"{AUTHOR_SUFFIX}{digest}")


def posting_message_id(ctx: MessageContext, taken: frozenset[str] | set[str] = frozenset(),
                       notes: frozenset[str] | set[str] = frozenset()) -> str:
    """The Message-ID message_post files under: the message's own, unless another author's message
    has it on the record (``taken``, from look_up); then the sender's own derived ID. message_post
    does not refuse a Message-ID Odoo has (ODOO_FACTS.md f); the retry check needs it distinct.

    ``notes`` (a public reply, look_up): the IDs the sender's own note of this message has on the
    record; the reply takes the first of filed_message_ids that neither the note nor another
    author has (the record's derived ID when the note has the message's own)."""
    assert ctx.message is not None
    if notes:
        chosen = public_message_id(ctx, taken, notes)
        _note_note_first(ctx, chosen)
        return chosen
    if ctx.message.message_id not in taken:
        return ctx.message.message_id
    derived = author_message_id(ctx)
    _note_taken(ctx, derived)
    return derived


def public_message_id(ctx: MessageContext, taken: frozenset[str] | set[str], notes: frozenset[str] | set[str]) -> str:
    """The ID a public reply is filed under when the sender's note of the same message has ``notes`` on the record.

    Deterministic and one of filed_message_ids, so that a retry of the reply finds it (look_up).
    A note is filed under the message's own ID or author_message_id (posting_message_id), never
    under record_message_id, which is therefore free of the note whatever else holds the others.
    """
    free = [message_id for message_id in filed_message_ids(ctx) if message_id not in notes]
    return next((message_id for message_id in free if message_id not in taken),
                free[0] if free else record_message_id(ctx))


def _note_note_first(ctx: MessageContext, filed_as: str) -> None:
    """The journal's note that the message's note delivery came first, and under which ID the public reply went."""
    assert ctx.message is not None
    ctx.journal_notes.append(f"note-filed-first:{ctx.message.message_id} is on the record as the sender's internal "
                             f"note (its note delivery came first); the public reply is filed as {filed_as}")


def _note_taken(ctx: MessageContext, filed_as: str) -> None:
    """The journal's note that the message's own ID was another author's on the record."""
    assert ctx.message is not None
    ctx.journal_notes.append(f"message-id-taken:{ctx.message.message_id} is on the record from another author; "
                             f"filed as {filed_as}")


def note_reply_to(ctx: MessageContext, secrets: dict[str, list[bytes]]) -> str:
    """Where answers to a note's notification emails go: the record's own note address at the gateway.

    Not the address the note came in on as such: that one may be bound to its author (only the
    author could answer) or a plain note@. Minted with the domain's signing secret, bound to no
    partner, and dated today where the domain dates its addresses (address_max_age_days,
    require_dated_addresses), as `note-gateway address` mints them. An internal user's answer is
    then filed by the gateway as his own note, with every check of a note and recipients it
    chooses itself (internal users only); the portal author of the note is not notified.
    """
    return address.mint(secrets[ctx.target.domain][0], ctx.target.domain, "note", ctx.target.model,
                        ctx.target.res_id, issued_day=address.today() if ctx.rules.dates_addresses else None)


def post_message(odoo: OdooPool, ctx: MessageContext, *, message_id: str | None = None,
                 reply_to: str | None = None, deadline: float | None = None) -> int:
    """message_post the note (or reply) under ``message_id``, by default the message's own.

    ``reply_to``: the Reply-To of the message and of every notification email Odoo sends of it
    (a mail.message field, stored as given: mail_thread.py message_post keeps it in msg_values and
    computes one only when it is missing, line 2209; mail.mail inherits it from the message). A
    note gets the record's own note address (note_reply_to): Odoo's default is the catchall, or
    without one the author's own address (ODOO_FACTS.md i), and an internal user answering the
    notification would then write straight to the portal author, or through the catchall, which
    files an answer to a note as a note that notifies the note's author (mail_thread.py:1297-1308).
    """
    assert ctx.message is not None and ctx.user is not None and ctx.rendered_body is not None
    kwargs = {
        "body": ctx.rendered_body,
        # Without body_is_html Odoo stores the HTML escaped; it is honoured because the
        # integration user is internal (ODOO_FACTS.md b). Odoo sanitizes again on its side.
        "body_is_html": True,
        "message_type": "comment",
        "subtype_xmlid": SUBTYPES[ctx.target.kind],
        "author_id": ctx.user.partner_id,
        "message_id": message_id or ctx.message.message_id,
        # A note notifies whoever is in partner_ids by email, portal partners included
        # (ODOO_FACTS.md c): only internal partners, chosen by an earlier stage, ever go here.
        "partner_ids": list(ctx.notify_partner_ids),
    }
    if reply_to:
        kwargs["reply_to"] = reply_to
    files = ctx.message.attachments if ctx.attachments is None else ctx.attachments
    if files:
        # Binary content travels as a latin-1 string that Odoo encodes back to the same bytes
        # (ODOO_FACTS.md g); the attachments are linked to the record. The transport sends it as
        # UTF-8 JSON, about 2.05x a compressed file's size (odootransport.compact_json): Odoo's
        # message_post takes no base64 here (a str is encoded with info's codec, a text codec). An inline image carries
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
    result = _write(odoo, ctx, ctx.target.model, "message_post", [[ctx.target.res_id]], kwargs,
                    context=context, deadline=deadline)
    return int(result[0] if isinstance(result, list) else result)


def _write(odoo: OdooPool, ctx: MessageContext, model: str, method: str, args: list, kwargs: dict, *,
           context: dict, deadline: float | None) -> object:
    """A call that files the message; if Odoo may still be running it when it fails, ctx says so."""
    try:
        return odoo.call(model, method, args, kwargs, context=context, deadline=deadline)
    except OdooUnavailable as error:
        ctx.post_unsettled = ctx.post_unsettled or error.unsettled
        raise


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
    if not all(message_id_survives(message_id) for message_id in filed_message_ids(ctx)):
        ctx.journal_notes.append(f"reply-posted-by-message_post:Message-ID {ctx.message.message_id!r} "
                                 "cannot pass Odoo's mail gateway unchanged")
        return False
    author_address = mail_gateway_address(odoo, ctx, deadline=deadline)
    if author_address is None:
        return False
    name = reply_from_name(ctx)
    if _reply_from_reads_as(name, author_address):
        ctx.reply_from = (name, author_address)
    elif _reply_from_reads_as("", author_address):
        ctx.reply_from = ("", author_address)
        ctx.journal_notes.append(f"reply-from-without-name:Odoo's mail gateway would read the sender's name "
                                 f"{name!r} as other than one mailbox {author_address}; From is the bare address")
    else:
        ctx.journal_notes.append(f"reply-posted-by-message_post:Odoo's mail gateway would not read the From "
                                 f"{author_address!r} as that one mailbox")
        return False
    return True


# Partners one sender address may bring (res.partner.search_read in mail_gateway_address): more are
# not told apart; the reply is then posted with message_post.
SAME_ADDRESS_ROWS = 20


def odoo_normalized(address: str) -> str:
    """An address as Odoo 18 normalizes one (tools/mail.py _normalize_email, res.partner.email_normalized):
    the domain lowercased as written (A-labels and U-labels are two strings to it), the local part
    lowercased only when it is ASCII."""
    local, at, domain = address.strip().rpartition("@")
    return (local.lower() if local.isascii() else local) + at + domain.lower()


def _normalized_forms(address: str) -> list[str]:
    """``address`` normalized as Odoo does, with its domain in each form Odoo may hold (gateway/idn.py)."""
    local, at, domain = address.strip().rpartition("@")
    if not at:
        return [odoo_normalized(address)]
    forms = [domain, idn.ascii_domain(domain)]
    forms.append(idn.unicode_domain(forms[1]) or forms[1])
    return list(dict.fromkeys(odoo_normalized(f"{local}@{form}") for form in forms))


def mail_gateway_address(odoo: OdooPool, ctx: MessageContext, *, deadline: float | None = None) -> str | None:
    """The address the From handed to Odoo's mail gateway carries: the sender's partner's
    email_normalized, if Odoo's mail gateway finds that partner, and only that one, by it; else None,
    and the journal says why (the reply is then posted with message_post, with the sender as author).

    Odoo picks the author of what its gateway files by the From's normalized address, among the
    record's followers first (mail_thread.py _mail_find_partner_from_emails, a string compare of
    email_normalized): the address goes in the form Odoo holds it, whichever form of an
    internationalised domain the sender's mail used ("paula@bücher.example" on the partner and
    paula@xn--bcher-kva.example in the From filed the reply without an author; found by a
    differential review against Odoo 18). A partner's email that is not the verified sender's
    address is not written in its place; another follower with that address would be picked in
    the sender's stead (measured: the oldest follower).
    """
    assert ctx.user is not None
    sender, partner_id = sender_address(ctx), ctx.user.partner_id
    rows = odoo.call("res.partner", "search_read",
                     [["|", ("id", "=", partner_id), ("email_normalized", "in", _normalized_forms(sender))]],
                     {"fields": ["email_normalized"], "limit": SAME_ADDRESS_ROWS, "context": {"active_test": False}},
                     deadline=deadline)
    own = next((row for row in rows if int(row["id"]) == partner_id), None)
    normalized = str((own or {}).get("email_normalized") or "")
    if not normalized or not idn.same_mailbox(normalized, sender):
        ctx.journal_notes.append(f"reply-posted-by-message_post:the email of partner {partner_id} in Odoo is not "
                                 f"the sender's address {sender}, by which Odoo's mail gateway finds the author")
        return None
    if len(rows) >= SAME_ADDRESS_ROWS:
        ctx.journal_notes.append(f"reply-posted-by-message_post:{len(rows)} or more partners have the sender's "
                                 f"address {sender}; Odoo's mail gateway could pick another as author")
        return None
    others = sorted(int(row["id"]) for row in rows
                    if int(row["id"]) != partner_id and row.get("email_normalized") == normalized)
    if others and odoo.call(ctx.target.model, "search_count",
                            [[("id", "=", ctx.target.res_id), ("message_partner_ids", "in", others)]],
                            deadline=deadline):
        ctx.journal_notes.append(f"reply-posted-by-message_post:another follower of the record has the sender's "
                                 f"address {sender} (one of partners {', '.join(map(str, others))}); Odoo's mail "
                                 "gateway could pick it as author")
        return None
    return normalized


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


# The longest line of the message handed to Odoo's mail gateway (RFC 5322 section 2.1.1).
REPLY_LINE_LENGTH = 998


def reply_from_name(ctx: MessageContext) -> str:
    """The name in the From of a reply handed to Odoo's mail gateway: the identified user's, one line."""
    assert ctx.user is not None and ctx.message is not None
    return " ".join((ctx.user.name or ctx.message.from_name or "").split())


def odoo_reads_from(raw: str) -> list[tuple[str, str]]:
    """The (name, address) pairs in the From of ``raw`` as Odoo's mail gateway comes to read them.

    message_process parses the bytes with the SMTP policy, message_parse joins every From header,
    decoded, with commas and reads the pairs getaddresses finds in it (mail_thread.py:1705-1709,
    tools/mail.py email_split_tuples). Odoo then drops the pairs without "@" and repairs some; a
    From read here as exactly one pair, with an "@" and a name or no space, is read so by Odoo too.
    """
    parsed = email.message_from_bytes(raw.encode("utf-8"), policy=SMTP)
    return getaddresses([",".join(str(value) for value in parsed.get_all("From", []) if value)])


def _reply_from_reads_as(name: str, author_address: str) -> bool:
    """Whether Odoo's mail gateway reads the From built of ``name`` and ``author_address`` as that one mailbox."""
    try:
        raw = _reply_headers(name, author_address).as_string()
    except (email.errors.MessageError, ValueError, IndexError, TypeError, UnicodeError):
        return False  # the header classes refuse some values
    return _reads_as(raw, author_address)


def _reads_as(raw: str, author_address: str) -> bool:
    """Whether Odoo's mail gateway reads the From of ``raw`` as exactly the one mailbox ``author_address``."""
    pairs = odoo_reads_from(raw)
    if len(pairs) != 1:
        return False
    read_name, read_address = pairs[0]
    return ("@" in read_address and (bool(read_name) or " " not in read_address)
            and odoo_normalized(read_address) == odoo_normalized(author_address))


def _reply_headers(name: str, author_address: str) -> EmailMessage:
    # The name is one display-name, quoted or encoded whole by the header class: formataddr left
    # the specials of a non-ASCII name bare once the policy refolded it, and Odoo read
    # "Päula <mark.brown23@example.com>" as another mailbox and filed the reply as that user's
    # (found by a differential review against Odoo 18). A non-ASCII address is written as UTF-8
    # (RFC 6532): the SMTP policy cannot write it (UnicodeEncodeError, a 451 forever), and Odoo 18
    # reads an 8-bit From given to message_process as UTF-8 (measured).
    # Lines up to RFC 5322's limit: folded in two encoded-words, a long name came back from Python's
    # parser with a space where the fold was ("...@no te-gateway.test", measured on Odoo 18); the
    # message goes to Odoo by RPC, never over SMTP.
    policy = SMTP if author_address.isascii() else SMTPUTF8
    message = EmailMessage(policy=policy.clone(max_line_length=REPLY_LINE_LENGTH))
    message["From"] = Address(display_name=name, addr_spec=author_address)
    return message


def reply_message(ctx: MessageContext, message_id: str) -> str:
    """The message Odoo's mail gateway files for a reply+: only what the gateway decided to file.

    From is the identified user (ctx.reply_from, chosen by files_through_mail_gateway: the sender's
    partner's address as Odoo holds it, the name only if Odoo reads the whole as that one mailbox),
    so Odoo attributes the message to its partner; the body is the
    rendered reply; the files are those the attachment rules let through, inline images keeping
    their Content-ID. No To, References or In-Reply-To: Odoo would route by them (to an alias, or
    to the record of a referenced message) before the record the address names; so Odoo cannot
    tell a reply to an internal note, which the reply-all-as-note stage has made a note already
    (routing.reply_parent) and never comes here. No Cc either, not
    even the internal users the choose-recipients stage kept: project.task's message_update
    subscribes every partner Odoo finds for a To/Cc address (project_task.py:1669), and another
    partner with such an address, a portal one, would gain access to the record.
    """
    assert ctx.message is not None and ctx.user is not None and ctx.rendered_body is not None
    if ctx.reply_from is None:
        author_address = odoo_normalized(sender_address(ctx))
        name = reply_from_name(ctx)
        ctx.reply_from = (name if _reply_from_reads_as(name, author_address) else "", author_address)
    name, author_address = ctx.reply_from
    message = _reply_headers(name, author_address)
    message["Message-ID"] = message_id
    message.set_content(ctx.rendered_body, subtype="html", charset="utf-8", cte="base64")
    files = ctx.message.attachments if ctx.attachments is None else ctx.attachments
    for item in files or []:
        # application/octet-stream in base64 whatever the file: Odoo decodes a text/* part with its
        # charset (a Latin-1 byte became U+FFFD on Odoo 18), and guesses the type from name and bytes.
        options = {"cid": f"<{item.content_id}>", "disposition": "inline"} if item.content_id else {}
        message.add_attachment(item.payload, maintype="application", subtype="octet-stream",
                               filename=item.filename, **options)
    raw = message.as_string()
    if not _reads_as(raw, author_address):
        # files_through_mail_gateway checked this From; never hand over one Odoo reads otherwise.
        raise ValueError(f"Odoo's mail gateway would not read the From of {author_address!r} as that one mailbox")
    return raw


def file_reply(odoo: OdooPool, ctx: MessageContext, *, taken: frozenset[str] | set[str] = frozenset(),
               notes: frozenset[str] | set[str] = frozenset(), deadline: float | None = None) -> tuple[int, bool]:
    """File a reply+ as Odoo's own mail gateway files an incoming email: (message id, duplicate).

    message_post as the integration user would email the author its own reply: Odoo leaves out of
    the recipients only the calling user's partner when that user is active (ODOO_FACTS.md c,
    mail_thread.py:3833-3846). mail.thread.message_process posts as the archived OdooBot "to have
    a priviledged archived user so real_author_id is correctly computed" (mail_thread.py:1294-1297),
    so the author is left out and every other follower gets Odoo's standard notification. It posts
    as superuser: the gateway's own checks, all run before this stage, are the only gate.

    ``taken``: the Message-IDs another author's message has on the record (look_up); Odoo would
    drop them, so they are not tried. ``notes``: those the sender's own note of this message has
    there (look_up, the note delivery came first); not tried either, and the reply is filed under
    the next (public_message_id says which in the journal).
    """
    assert ctx.message is not None and ctx.user is not None
    # Odoo's mail gateway posts as OdooBot, an internal user: without no_new_invoice account.move
    # would import the reply's files as invoices (from_alias: new bills too) and delete the rest
    # (POST_CONTEXT). Its own subscription contexts are set by message_process itself.
    context: dict = {"no_new_invoice": POST_CONTEXT["no_new_invoice"]}
    if ctx.company_id is not None:
        context["allowed_company_ids"] = [ctx.company_id]
    for address in ctx.notify_emails:
        # They had the sender's own email; Odoo notifies them of the reply if they follow the record.
        ctx.journal_notes.append(f"recipient-not-notified:{address} (filed by Odoo's mail gateway, "
                                 "which notifies followers only)")
    found: list = []
    thread: object = False  # as if Odoo knew every ID, when another author has them all on the record
    for message_id in filed_message_ids(ctx):
        if message_id in taken or message_id in notes:
            continue
        thread = _write(odoo, ctx, "mail.thread", "message_process", [ctx.target.model, reply_message(ctx, message_id)],
                        {"custom_values": dict(NO_RECORD_CREATION), "thread_id": ctx.target.res_id},
                        context=context, deadline=deadline)
        # False: Odoo knows the Message-ID already (mail_thread.py:1375): filed on this record by a
        # delivery in between, or there from another author, or on another record; then the next
        # ID is tried. None: a loop rule dropped it (mail_thread.py:1381).
        found = odoo.call("mail.message", "search_read",
                          [[("message_id", "=", message_id), ("model", "=", ctx.target.model),
                            ("res_id", "=", ctx.target.res_id)]],
                          {"fields": ["author_id", "email_from"], "order": "id desc"}, deadline=deadline)
        if thread is False:
            # Only the sender's own message is this one; another author's is not (look_up).
            found = [row for row in found if is_own(ctx, row)]
        if found or thread is not False:
            break
    if found and thread is not False and message_id != ctx.message.message_id and ctx.message.message_id in taken:
        _note_taken(ctx, message_id)
    if found and thread is not False and notes:
        _note_note_first(ctx, message_id)
    if not found and thread is False:
        # Odoo knows every ID this reply may be filed under, none of them as the sender's: posted
        # with message_post, which files it whatever Odoo knows (ODOO_FACTS.md f); the author may
        # get a copy, and the journal says why.
        ctx.journal_notes.append(f"reply-posted-by-message_post:Odoo's mail gateway knows every Message-ID of "
                                 f"{ctx.message.message_id!r}, none of them from this sender")
        if notes:
            message_id = public_message_id(ctx, taken, notes)
            _note_note_first(ctx, message_id)
        else:
            message_id = author_message_id(ctx)
        return post_message(odoo, ctx, message_id=message_id, deadline=deadline), False
    if not found:
        # Not filed, and Odoo said why only in its log: defer, so the sender's MTA retries and the
        # message is not lost; an admin finds the reason in Odoo's log.
        log.warning("odoo: message_process returned %r for %s on %s,%s and filed nothing", thread,
                    ctx.message.message_id, ctx.target.model, ctx.target.res_id)
        raise OdooUnavailable("Odoo's mail gateway did not file the reply")
    author = found[0].get("author_id")
    author_id = int(author[0]) if author else 0
    filed_id = int(found[0]["id"])
    if author_id != ctx.user.partner_id:
        # Odoo picks the author by the From address among the record's followers first
        # (mail_thread.py _mail_find_partner_from_emails); files_through_mail_gateway made sure that
        # only the sender's partner has it, so another partner here came in between (a follower
        # with the sender's address added meanwhile) or from a change to Odoo's gateway.
        ctx.journal_notes.append(f"reply-author:{author_id} instead of partner {ctx.user.partner_id}")
        log.error("odoo: reply %s filed as message %s on %s,%s is attributed to partner %s, not the sender's "
                  "partner %s: correct its author in Odoo (it is public); the sender is told it is filed and "
                  "must not be sent again", ctx.message.message_id, filed_id, ctx.target.model,
                  ctx.target.res_id, author_id or "none", ctx.user.partner_id)
        if thread is not False:
            # Filed by this call, once: a 250 would hide the wrong author, a 4xx would only be
            # retried into "Already filed" (is_own knows the reply by its From). The message stays
            # filed, under its id in the journal.
            ctx.odoo_message_id = filed_id
            raise ReplyMisattributed(f"Odoo message {filed_id}")
    # Filed by this call unless Odoo said it had the message already (a delivery in between).
    return filed_id, thread is False
