"""Whom Odoo notifies of a filed message: internal users named in To/Cc, and the internal author of the note a
reply answers; never portal users or customers."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway import idn
from gateway.context import MessageContext
from gateway.odoo import OdooPool, escape_like

# A message with hundreds of addresses is a mailing, not a note to colleagues; the lookup stays
# one bounded call.
MAX_LOOKED_UP = 50


@dataclass
class Recipients:
    partner_ids: list[int] = field(default_factory=list)
    # The email of each partner in partner_ids, in the same order: a reply hands them to Odoo as
    # Cc of the message it files (gateway/post.py file_reply).
    emails: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    # The addresses dropped, without the reason: not internal users, or not looked up (too many).
    not_notified: list[str] = field(default_factory=list)


def candidate_addresses(ctx: MessageContext, own_domains: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """To and Cc, lowercased, once each, without the gateway's own addresses and the sender.

    An address written once with A-labels and once with U-labels is one address (gateway/idn.py).
    """
    assert ctx.message is not None
    own_domains = {ctx.target.domain, *own_domains}
    sender = ctx.sender.email.lower() if ctx.sender else ctx.message.from_address
    found: list[str] = []
    # Every form of every address kept: a later address in any form of one of them is the same
    # mailbox. Each address's forms are computed once (comparing each pair computed them again, and
    # a To of thousands of addresses took minutes: a review of this session's merges).
    seen: set[str] = set()
    for value in [*ctx.message.to, *ctx.message.cc]:
        address = value.strip().lower()
        if not address or "@" not in address or address in seen:
            continue
        forms = idn.address_forms(address)
        if sender in forms:
            continue
        # The alias domains are held in A-labels (config.alias_domain).
        if idn.ascii_domain(address.rsplit("@", 1)[1]) in own_domains:
            continue
        found.append(address)
        seen.update(forms)
    return found


def choose(odoo: OdooPool, ctx: MessageContext, *, own_domains: set[str] | frozenset[str] = frozenset(),
           to_cc: bool = True, parent_author: int | None = None, deadline: float | None = None) -> Recipients:
    """Partners of the active internal users (share = False) among To/Cc (unless ``to_cc`` is False),
    and ``parent_author`` if it is one, in one Odoo call.

    A partner in partner_ids of a note is emailed the note, portal partners included
    (ODOO_FACTS.md c and "What these facts demand" item 4), so every other address is dropped
    and recorded. ``parent_author``: the author of the internal note a reply answers, which the
    reply is filed as a note because of. Odoo's own mail gateway adds it to the recipients of such a
    reply, whoever it is (mail_thread.py:1297-1308: "parent message author is added in recipients
    to ensure they are notified of a private answer"); the gateway adds it only if it is the partner
    of an active internal user, looked up in the same search as To/Cc (found by a review: an
    employee whose backend note a contributor answered by a reply+ was never told of the answer).
    A portal or customer author is left out, as is the sender.
    """
    addresses = candidate_addresses(ctx, own_domains) if to_cc else []
    result = Recipients(dropped=[f"{address} (too many recipients)" for address in addresses[MAX_LOOKED_UP:]],
                        not_notified=addresses[MAX_LOOKED_UP:])
    addresses = addresses[:MAX_LOOKED_UP]
    author = ctx.user.partner_id if ctx.user else 0
    if parent_author == author:
        parent_author = None
    if not addresses and not parent_author:
        return result
    # Each address in every form Odoo may hold it in (A-labels, U-labels), all in the one call,
    # by login or normalised email (the sender, an author, is found by the normalised email only,
    # gateway/identity.py; notifying an internal user decides no author): an internal user whose
    # email is "Marc <marc@example.com>" is marc@example.com to Odoo.
    forms = {address: idn.address_forms(address) for address in addresses}
    terms: list = []
    for address in addresses:
        for form in forms[address]:
            pattern = escape_like(form)
            terms += [("login", "=ilike", pattern), ("email_normalized", "=ilike", pattern)]
    if parent_author:
        # res.users searches only active users (active_test): an archived one is not notified.
        terms.append(("partner_id", "=", parent_author))
    domain = [("share", "=", False), *(["|"] * (len(terms) - 1)), *terms]
    rows = odoo.call("res.users", "search_read", [domain], {"fields": ["login", "email_normalized", "partner_id"]},
                     deadline=deadline)
    internal: dict[str, int] = {}
    emails: dict[int, str] = {}
    for row in rows:
        partner = row.get("partner_id")
        if not partner:
            continue
        if int(partner[0]) == parent_author:
            emails.setdefault(parent_author, row.get("email_normalized") or row.get("login") or "")
        # The database compared with ILIKE; only an exact match, in one of the forms, names a user.
        for value in (row.get("login"), row.get("email_normalized")):
            for address in addresses:
                if value and value.lower() in forms[address]:
                    internal.setdefault(address, int(partner[0]))
                    emails.setdefault(int(partner[0]), row.get("email_normalized") or value)
    for address in addresses:
        partner_id = internal.get(address)
        if partner_id is None:
            result.dropped.append(f"{address} (not an internal user)")
            result.not_notified.append(address)
        elif partner_id != author and partner_id not in result.partner_ids:
            result.partner_ids.append(partner_id)
            result.emails.append(emails[partner_id])
    if parent_author and parent_author in emails and parent_author not in result.partner_ids:
        result.partner_ids.append(parent_author)
        result.emails.append(emails[parent_author])
    return result


# What a note says of the people its email went to (external_recipients) is one line of the
# gateway's own framing: at most this many, then "and N more"; each name and address cut to a length
# a line can show.
MAX_SHOWN = 20
MAX_SHOWN_NAME = 64
MAX_SHOWN_ADDRESS = 254  # RFC 5321 section 4.5.3.1.3: a path holds at most 256 octets, <> included


def shown(ctx: MessageContext, addresses: list[str]) -> list[str]:
    """Each address as the sender's email named it, "Name <address>", else the address alone: only
    those of a To or Cc field the DKIM signature covers, the first MAX_SHOWN, then "and N more".

    A To or Cc that h= leaves out (VerifiedSender.unsigned_headers: Microsoft 365 signs neither)
    could have been written by whoever holds the signed message, and the line is the gateway's own
    words in an internal note: an added `Cc: "Approved by the CFO, pay invoice 123 today" <x@...>`
    was shown there (found by a review of this session's merges). Such a field may still have an
    internal user notified (docs/content.md "Notifications"), never put text in the note. A name is
    shown only for an address no uncovered field names, since the name kept is the first non-empty
    one of either field (message.recipient_names).
    """
    assert ctx.message is not None
    unsigned = ctx.sender.unsigned_headers if ctx.sender else frozenset()
    covered: set[str] = set()
    uncovered: set[str] = set()
    for name, values in (("to", ctx.message.to), ("cc", ctx.message.cc)):
        for value in values:
            (uncovered if name in unsigned else covered).update(idn.address_forms(value))
    names = ctx.message.recipient_names
    listed = []
    for address in addresses:
        if address not in covered:
            continue
        name = names.get(address) if address not in uncovered else None
        text = _cut(address, MAX_SHOWN_ADDRESS)
        listed.append(f"{_cut(name, MAX_SHOWN_NAME)} <{text}>" if name else text)
    if len(listed) > MAX_SHOWN:
        listed = listed[:MAX_SHOWN] + [f"and {len(listed) - MAX_SHOWN} more"]
    return listed


def _cut(text: str, length: int) -> str:
    return text if len(text) <= length else text[:length - 1] + "…"
