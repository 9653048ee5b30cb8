"""Find the Odoo user behind a verified sender address."""

from __future__ import annotations

from dataclasses import dataclass

from gateway import access, idn
from gateway.context import OdooUser
from gateway.odoo import SOLO, OdooPool, Rpc, escape_like
from gateway.refusals import AmbiguousSender, Refusal, SenderArchived, SenderWithoutEmail, UnknownSender


def _many2one_id(value) -> int:
    return int(value[0]) if value else 0


_USER_FIELDS = ["login", "name", "email", "email_normalized", "active", "share", "partner_id",
                "commercial_partner_id", "company_ids", "company_id"]
# Rows one address may bring: more than one active is refused as ambiguous anyway.
_ROWS_PER_ADDRESS = 10


# Odoo's own mail gateway finds the user of a From address by email_normalized only
# (mail_thread.py _mail_find_user_for_gateway: a follower of the alias's parent record, then any
# user, each searched by ('email_normalized', '=', email_normalize(From))), the partner's email as
# tools.email_normalize(strict=False) reads it: "Paula <paula@example.com>", " paula@example.com "
# and "paula@example.com, p@example.com" are all paula@example.com, and a second address in the list
# is nobody's. The raw email was compared before, and such users were refused as unknown (found by a
# review comparing the gateway with Odoo's).
#
# The login was matched too, from the first version on, so that a user whose partner had no email
# (her login her address) was found. A portal login is set when the user is invited and never follows
# the partner's email: after an administrator changed a contributor's email (she moved company), her
# old address, still her login, went on filing notes as her, where Odoo finds nobody (found by a
# lifecycle review on Odoo 18). The login is still read, in the same search, only to say why such an
# address finds no user (_without_user).
_MATCHED_FIELDS = ("email_normalized",)
_SEARCHED_FIELDS = ("login", "email_normalized")


def _clause(email: str) -> list:
    # The address in each form Odoo may hold it in (A-labels, U-labels), ORed in the one search:
    # users matching across the forms are as ambiguous as users matching one form.
    terms = [(field, "=ilike", escape_like(form)) for form in idn.address_forms(email) for field in _SEARCHED_FIELDS]
    return [*(["|"] * (len(terms) - 1)), *terms]


def _matches(row: dict, forms: tuple[str, ...], fields: tuple[str, ...]) -> bool:
    return any((row.get(field) or "").lower() in forms for field in fields)


def _rows_of(rows: list[dict], email: str) -> list[dict]:
    # The database compared with ILIKE; compare again exactly so that no pattern subtlety can
    # make one person's address match another's.
    forms = idn.address_forms(email)
    return [row for row in rows if _matches(row, forms, _SEARCHED_FIELDS)]


def _without_user(email: str, rows: list[dict]) -> Refusal:
    """The refusal of ``email``, which is no user's normalised email; ``rows`` are the users whose login it is.

    An active user whose partner has no email is told to the sender, who is the one who can ask the
    administrator to set it (the login alone never found a user in Odoo's gateway either). Any
    other login match (the user's email is now another address) is "No Odoo user has this sender
    address", as in Odoo, the user named to the operator only.
    """
    active = [row for row in rows if row.get("active")]
    if any(not row.get("email_normalized") for row in active):
        row = next(row for row in active if not row.get("email_normalized"))
        return SenderWithoutEmail(email, internal=f"user {row['id']} ({row.get('login')}) has no email: "
                                                  "set it to this address in Odoo")
    if active:
        row = active[0]
        return UnknownSender(email, internal=(
            f"it is the login of user {row['id']}, whose email is {row.get('email_normalized')}: the sender's user "
            "is found by email, as in Odoo's mail gateway"))
    return UnknownSender(email)


@dataclass(frozen=True)
class UserRows:
    """The users whose login or normalised email is each of several addresses, read in one search (issue 6);
    find_user takes the sender from the normalised email only, the login says why none was found.

    Items are lowercased addresses; each gets the rows that match it exactly. A read that filled
    its limit may have left some address's rows out, so then every address of several reads alone.
    """

    groups_field: str

    @property
    def key(self) -> tuple:
        return ("res.users", "by-email", self.groups_field)

    label = "res.users.search_read"

    def run(self, items: list[str], rpc: Rpc) -> list:
        emails = sorted(set(items))
        limit = _ROWS_PER_ADDRESS * len(emails)
        rows = rpc("res.users", "search_read", [access.OR([_clause(email) for email in emails])],
                   {"fields": _USER_FIELDS + [self.groups_field], "limit": limit,
                    "context": {"active_test": False}})
        if len(rows) >= limit and len(emails) > 1:
            return [SOLO] * len(items)
        return [_rows_of(rows, email) for email in items]


def login_partners(odoo: OdooPool, email: str, *, deadline: float | None = None) -> frozenset[int]:
    """The partners of the active users whose login is ``email``, whatever their email.

    Not a sender's identity (find_user ignores logins): only for a retry of a post the journal left
    unsettled, which a gateway before 0.2.0 may have made as the user it found by login, authored
    by her partner with her email, not the From (pipeline.retry_of_filed; upgrade review). The
    same read as find_user's, so usually from its batch or the read cache.
    """
    email = email.strip().lower()
    groups_field = odoo.user_group_fields(deadline)[1]
    rows = odoo.call_batched(UserRows(groups_field), email, deadline=deadline, cacheable=True)
    forms = idn.address_forms(email)
    return frozenset(_many2one_id(row.get("partner_id")) for row in rows
                     if row.get("active") and _matches(row, forms, ("login",))) - {0}


def find_user(odoo: OdooPool, email: str, *, deadline: float | None = None) -> OdooUser:
    """The one active user whose normalised partner email is ``email``, compared case-insensitively,
    as Odoo's own mail gateway finds a sender's user (its login does not count: _MATCHED_FIELDS).

    The email is Odoo's email_normalized: the first address of the partner's email, without its
    name or spaces. An address that is only a user's login is refused (_without_user): with the
    reason that the user has no email when she has none, else as no user's. An internationalised
    domain matches in A-labels and in U-labels, however either side wrote it (gateway/idn.py
    address_forms). Two active users of one address are ambiguous
    and refused, where Odoo's gateway would take the first it finds.
    """
    email = email.strip().lower()
    # The field name depends on the server's version, known after the first login: that login
    # is bounded by the message's deadline like every other call.
    groups_field = odoo.user_group_fields(deadline)[1]
    # One read brings everything the later checks need: res.users inherits the partner's fields
    # (email, commercial_partner_id), so no second round trip to res.partner. Senders looked up at
    # the same time while every connection is busy share that read.
    rows = odoo.call_batched(UserRows(groups_field), email, deadline=deadline, cacheable=True)
    forms = idn.address_forms(email)
    users = [row for row in rows if _matches(row, forms, _MATCHED_FIELDS)]
    active = [row for row in users if row.get("active")]
    if not active:
        if users:
            raise SenderArchived(email)
        raise _without_user(email, rows)
    if len(active) > 1:
        raise AmbiguousSender(f"{email} ({len(active)} users)")
    row = active[0]
    partner_id = _many2one_id(row.get("partner_id"))
    return OdooUser(
        uid=int(row["id"]),
        login=row.get("login") or "",
        name=row.get("name") or "",
        email=(row.get("email_normalized") or row.get("email") or "").lower(),
        partner_id=partner_id,
        commercial_partner_id=_many2one_id(row.get("commercial_partner_id")) or partner_id,
        internal=not row.get("share", True),
        group_ids=tuple(int(group) for group in row.get(groups_field) or ()),
        company_ids=tuple(int(company) for company in row.get("company_ids") or ()),
        company_id=_many2one_id(row.get("company_id")),
    )
