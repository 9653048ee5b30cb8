"""Route plain note@ / reply@ mail to a record by the Odoo Message-IDs it references, and spot reply-all."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway import access, address, idn, post
from gateway import message as message_mod
from gateway.config import GatewayConfig
from gateway.context import ParsedMessage, Target
from gateway.odoo import OdooPool
from gateway.refusals import NoRecordReferenced, ReferencesNotSigned, ReferencesTooMany

# Odoo's notification Message-IDs: <random.time-openerp-<res_id>-<model>@host>
# (tools.mail.generate_tracking_message_id, ODOO_FACTS.md i). Model names hold no "-".
_ODOO_MESSAGE_ID = re.compile(
    r"-openerp-(?P<res_id>[1-9][0-9]{0,17})-(?P<model>[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*)@[^<>@\s]+>$")
# How many ids of the header it routes by Odoo's mail gateway looks at, the newest (mail_thread.py
# message_route: "msg_references[-32:]"); the gateway looks at the same ones.
MAX_ROUTING_IDS = 32
# The detail of a message whose references lead to no record the sender may post on: unknown to
# Odoo, or of a record the sender may not read (pipeline.said_refusal). One text for both, so that
# the reply tells nothing of records the sender cannot read.
UNROUTED = "it references no message of a record this sender may post on"


def referenced_ids(message: ParsedMessage, unsigned: frozenset[str] = frozenset()) -> list[str]:
    """In-Reply-To first, then References from the most recent (RFC 5322 section 3.6.4), each once:
    whether the message references any message at all (the reply-to-a-note check looks up each).

    ``unsigned``: lowercased names of headers to leave out (VerifiedSender.unsigned_headers).
    """
    ordered = ([] if "in-reply-to" in unsigned else list(message.in_reply_to)) + (
        [] if "references" in unsigned else list(reversed(message.references)))
    return list(dict.fromkeys(ordered))


def routing_ids(message: ParsedMessage, unsigned: frozenset[str] = frozenset()) -> list[str]:
    """The ids a plain note@/reply@ is routed by, oldest first, as Odoo's mail gateway picks them
    (mail_thread.py message_route): those of References if it has any, else of In-Reply-To; an id
    with "reply_to" in it left out (Odoo's ``-openerp-reply_to@`` ids, of messages whose replies
    must not go to their record); the newest MAX_ROUTING_IDS.

    A header the DKIM signature does not cover (``unsigned``) is not used: References left out
    so, In-Reply-To is used if it is covered (Odoo would use References, which anyone holding a
    message the sender signed could have written).
    """
    references = [] if "references" in unsigned else list(message.references)
    chosen = references or ([] if "in-reply-to" in unsigned else list(message.in_reply_to))
    return list(dict.fromkeys(value for value in chosen if "reply_to" not in value))[-MAX_ROUTING_IDS:]


def resolve(odoo: OdooPool, message: ParsedMessage, *, unsigned: frozenset[str] = frozenset(),
            deadline: float | None = None) -> tuple[str, int, str]:
    """(model, res_id, how) of the record the message replies to, or NoRecordReferenced.

    As Odoo's mail gateway routes a reply (mail_thread.py message_route): of the ids routing_ids
    picks, the mail.message Odoo has under one of them with the highest id, if it is of a record,
    gives the record (one search: ``order='id desc', limit=1``). A review found the gateway reading
    In-Reply-To before References, taking the first id that resolved and looking up 20, so a
    reply whose In-Reply-To named a message of the order and whose References ended on the task
    went to the order, where Odoo's own gateway files it on the task.

    Only when Odoo has none of them, the newest id in Odoo's notification form
    (``<…-openerp-<res_id>-<model>@host>``) gives its record: Odoo sends mail under such an ID that
    it does not keep (a template email, not a notification: mail_mail.py unlink deletes its
    mail.message once it is sent), and its own gateway would then route the reply by its alias,
    which a plain note@/reply@ does not have. Anyone can write such an ID; every check of a record
    address applies afterwards, and a refusal tells nothing of a record the sender cannot read
    (pipeline.said_refusal).

    Only where the reply points is decided here: who may post there is decided afterwards by the
    same checks as for a record address. A References or In-Reply-To header that the DKIM
    signature does not cover (``unsigned``, VerifiedSender.unsigned_headers) chooses nothing:
    anyone holding a signed message could have written it, and would choose the record where
    the sender's own words are filed (security review).
    """
    ids = routing_ids(message, unsigned)
    if not ids and referenced_ids(message, unsigned):
        raise NoRecordReferenced(UNROUTED, internal="its only Message-IDs are Odoo's reply_to ones, never routed")
    if not ids:
        left_out = [name for name, values in (("In-Reply-To", message.in_reply_to), ("References", message.references))
                    if values and name.lower() in unsigned]
        if left_out:
            raise ReferencesNotSigned(f"{' and '.join(left_out)} {'are' if len(left_out) > 1 else 'is'} not covered "
                                      "by the DKIM signature, so the record cannot be chosen by them")
        raise NoRecordReferenced("the message has no In-Reply-To or References")
    rows = odoo.call("mail.message", "search_read",
                     [[("message_id", "in", ids), ("model", "!=", False), ("res_id", "!=", 0)]],
                     {"fields": ["message_id", "model", "res_id"], "order": "id desc", "limit": 1},
                     deadline=deadline)
    for row in rows:
        if row.get("model") and row.get("res_id"):
            return str(row["model"]), int(row["res_id"]), f"by mail.message {row['message_id']}"
    for value in reversed(ids):
        match = _ODOO_MESSAGE_ID.search(value)
        if match:
            return match["model"], int(match["res_id"]), f"by Odoo Message-ID {value}"
    raise NoRecordReferenced(UNROUTED, internal=f"none of {len(ids)} referenced Message-IDs is known to Odoo")


@dataclass(frozen=True)
class Parent:
    """The message of the record that a reply answers, as Odoo's mail gateway picks its parent_id."""

    message_id: str  # as the reply references it
    internal: bool  # a note: is_internal, or an internal subtype
    # None for a message of the record the reply is filed on; else (model, res_id) of another record
    # that holds it (one that holds it as a note, if any does).
    elsewhere: tuple[str, int] | None = None
    # The partner who wrote it (of the message marked internal, if one under that ID is, else of the
    # newest), read in the same search: Odoo's mail gateway adds it to the recipients of a reply it
    # files as a note (mail_thread.py:1297-1308); None if it has no author.
    author_id: int | None = None


def reply_parent(odoo: OdooPool, message: ParsedMessage, model: str, res_id: int, *,
                 deadline: float | None = None) -> Parent | None:
    """The message the reply answers, or None if it references none Odoo has.

    Odoo's mail gateway takes as parent the message of In-Reply-To, else the most recently created
    message of any id of References, and files a reply to an internal one as an internal note
    (mail_thread.py _get_parent_message: ``order='create_date DESC, id DESC', limit=1``;
    _message_parse_extract_from_parent). So does the gateway, looking up every id of In-Reply-To
    and References in one search (found by a review: it looked at the 20 most recent, and a reply
    whose References began with an internal note followed by 20 ids Odoo never saw was filed
    publicly, quoting the note). A message counts when it is of the record the reply is filed
    on, under its own ID or one the gateway derived from it there (post.record_message_id,
    post.author_message_id: a note whose ID another author's message had on the record is filed
    under the sender's own), or, under its own ID, of any other record (``elsewhere``: Odoo's
    catchall finds the parent across records, and a reply to a note of another record must not be
    filed publicly here). Message-IDs are not unique (ODOO_FACTS.md f): the parent is internal if
    any of its messages there is (on this record if it has one, else on any other). Messages of
    records the gateway's own Odoo user cannot read are not found. The subtypes other than
    Discussions and Note are asked only when the parent has one (a tracking message), in one
    search more. The parent's author is read in the same search (Parent.author_id).

    A message whose headers held more ids than were kept (message.MAX_MESSAGE_IDS: the first and
    the newest) is refused (ReferencesTooMany) unless In-Reply-To or a kept id answers an internal
    note: a left-out id could be the newest message Odoo has, and a note.
    """
    in_reply_to = list(dict.fromkeys(message.in_reply_to))
    ids = list(dict.fromkeys(in_reply_to + list(message.references)))
    if not ids:
        return None
    exact: dict[str, str] = {}
    patterns = []
    for value in ids:
        exact.setdefault(value, value)
        exact.setdefault(post.derived_message_id(value, model, res_id), value)
        head, tail = post.derived_parts(value, model, res_id)
        patterns.append(_like_literal(head + post.AUTHOR_SUFFIX) + "_" * post.AUTHOR_DIGEST_LENGTH + _like_literal(tail))
    leaves = [[("message_id", "in", list(exact))]] + [[("message_id", "=like", pattern)] for pattern in patterns]
    here = access.AND([[("model", "=", model)], [("res_id", "=", res_id)], access.OR(leaves)])
    # Any other record's message under the very ID referenced (a note of another record quoted
    # into a reply to this one).
    there = access.AND([[("message_id", "in", ids)], [("model", "!=", False)], [("res_id", "!=", 0)]])
    rows = odoo.call("mail.message", "search_read", [access.OR([here, there])],
                     {"fields": ["message_id", "is_internal", "subtype_id", "model", "res_id", "author_id"],
                      "order": "create_date desc, id desc"}, deadline=deadline)
    found: dict[str, list[dict]] = {}
    others: dict[str, list[dict]] = {}
    newest: list[str] = []  # the referenced ids, their most recently created message first
    for row in rows:
        stored = str(row.get("message_id") or "")
        referenced = None
        if row.get("model") == model and int(row.get("res_id") or 0) == res_id:
            referenced = _referenced_by(stored, ids, exact, model, res_id)
            if referenced is not None:
                found.setdefault(referenced, []).append(row)
        elif row.get("model") and row.get("res_id") and stored in ids:
            referenced = stored
            others.setdefault(stored, []).append(row)
        if referenced is not None and referenced not in newest:
            newest.append(referenced)
    parent = (next((value for value in newest if value in in_reply_to), None)
              or next(iter(newest), None))
    by_in_reply_to = parent is not None and parent in in_reply_to
    result: Parent | None = None
    if parent in found:
        rows = found[parent]
        holder = next((row for row in rows if row.get("is_internal")), rows[0])
        result = Parent(parent, post.any_internal(odoo, rows, deadline), author_id=_id_of(holder.get("author_id")))
    elif parent is not None:
        rows = others[parent]
        holder = next((row for row in rows if row.get("is_internal")), rows[0])
        result = Parent(parent, post.any_internal(odoo, rows, deadline), (str(holder["model"]), int(holder["res_id"])),
                        author_id=_id_of(holder.get("author_id")))
    if message.message_ids_left_out and not by_in_reply_to and (result is None or not result.internal):
        raise ReferencesTooMany(
            f"{message.message_ids_left_out} of its In-Reply-To and References were not looked up (at most "
            f"{message_mod.MAX_MESSAGE_IDS} of each, the first and the newest)",
            internal=f"parent {'none found' if result is None else result.message_id} among the ids looked up")
    return result


def _id_of(value: object) -> int | None:
    """The id of a many2one as search_read gives it ([id, name], or False)."""
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _like_literal(text: str) -> str:
    """``text`` matched literally by =like (PostgreSQL's LIKE escapes with a backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _referenced_by(stored: str, ids: list[str], exact: dict[str, str], model: str, res_id: int) -> str | None:
    if stored in exact:
        return exact[stored]
    for value in ids:
        head, tail = post.derived_parts(value, model, res_id)
        head += post.AUTHOR_SUFFIX
        if (stored.startswith(head) and stored.endswith(tail)
                and len(stored) == len(head) + post.AUTHOR_DIGEST_LENGTH + len(tail)):
            return value
    return None


def note_addresses(message: ParsedMessage, target: Target, config: GatewayConfig) -> tuple[str | None, str | None]:
    """(same, other): the first note address of ``target``'s record and the first other note
    address named in To or Cc of a reply delivery, each None if there is none. To and Cc are read
    once for both; every note address counts whether or not its signature verifies
    (address.read_unverified).

    ``same``, a note address of the same record (same Odoo): reply-all to a note+ and a reply+
    address reaches the gateway as two deliveries, possibly in separate transactions and in either
    order (issue 7). Each delivery sees the same headers, so the reply+ delivery can tell that the
    sender also addressed a note, and is then filed as a note: the Message-ID check makes the
    second delivery a duplicate of the first, whichever comes first, and nothing is ever public. A
    plain note@ of a domain on the same Odoo counts as the same record: it would be routed by the
    same References. The same Odoo is the same URL and database (config.odoo_identity), whatever
    the [odoo.NAME] connections are called: two connections to one database (one integration user
    per company) reach the same record, and a note address of the other one's domain must keep
    this reply internal just as well (review of multi-Odoo setups: it was filed public, its note a
    duplicate).

    ``other``, a note address that is not one of its record: any note address of any alias domain
    of the gateway, of another record, of the same record id on another Odoo, a plain note@ of a
    domain on another Odoo, a note+ whose record cannot be read. The message was meant, at least in
    part, as an internal note elsewhere, and filed here as a reply its text would be public (found
    by a review: one email To a task's reply+ and Cc a sale order's note+ was a note on the order
    and public on the task). pipeline refuses the reply (AlsoAddressedToNote).
    """
    odoo = config.odoo_identity(target.domain)
    same: str | None = None
    other_record: str | None = None
    # What the standard library's parser reads beyond mail-parser counts too (message._read_otherwise):
    # "note+...@notes.example.com." is the note address an MTA delivers it as.
    for value in list(message.to) + list(message.cc) + list(message.other_readings):
        # Its signature unchecked: a note address that no longer verifies (a rotated secret, a
        # mistyped token) was still meant as a note, and its own delivery is refused at RCPT
        # (found by a review: it was skipped, and the reply filed publicly).
        other = address.read_unverified(value, config.secrets)
        if other is None or other.kind != "note":
            continue
        if config.odoo_identity(other.domain) == odoo and (
                other.by_reference or (other.model, other.res_id) == (target.model, target.res_id)):
            same = same or other.address
        else:
            other_record = other_record or other.address
    return same, other_record


# A note address's local part in text that could not be read as addresses: "note+" or "note@" not
# inside a longer word, once quotes, backslashes and white space are left out ("note+x"@d, note +x@d).
_NOTE_LOOKING = re.compile(r"(?<![a-z0-9._+-])note[+@]")
_NOT_ADDRESS_TEXT = re.compile(r'[\s"\\]+')


def unreadable_note_recipient(message: ParsedMessage, config: GatewayConfig) -> str | None:
    """The first To/Cc item that no parser reads as an address of the gateway and that may be a note
    address: it holds a note address's local part or names an alias domain. None if there is none.

    mail-parser drops a To/Cc item it finds ambiguous, and the standard library's parser reads what
    it can of it (message._read_otherwise); an item neither reads as an address at an alias domain
    (``note+x@@notes.example.com``, ``note+x(@notes.example.com``, ``<note+x@[notes.example.com>``)
    may still be delivered to a note address by a lenient MTA, or be what the sender meant as one.
    A reply naming one is refused (pipeline: UnreadableRecipient), never filed publicly: fail closed
    (found by a lifecycle review: such items were not seen at all, and the final-dot form of the
    record's own note address made a reply-all public).
    """
    domains = set(config.secrets)
    named = domains | {form for form in (idn.unicode_domain(domain) for domain in domains) if form}
    for item in message.dropped_recipients:
        if any(address.read_unverified(value, config.secrets) is not None for value in item.addresses):
            continue  # read as an address of the gateway: note_addresses judges it
        text = _NOT_ADDRESS_TEXT.sub("", item.text).lower()
        if _NOTE_LOOKING.search(text) or any(domain in text for domain in named):
            return item.text
    return None
