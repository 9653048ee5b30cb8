"""Find the Odoo user behind a verified sender address."""

from __future__ import annotations

from gateway.context import OdooUser
from gateway.odoo import OdooPool, escape_like
from gateway.refusals import AmbiguousSender, SenderArchived, UnknownSender


def _many2one_id(value) -> int:
    return int(value[0]) if value else 0


def find_user(odoo: OdooPool, email: str, *, deadline: float | None = None) -> OdooUser:
    """The one active user whose login or partner email is ``email``, compared case-insensitively."""
    email = email.strip().lower()
    pattern = escape_like(email)
    # The field name depends on the server's version, known after the first login: that login
    # is bounded by the message's deadline like every other call.
    groups_field = odoo.user_group_fields(deadline)[1]
    # One read brings everything the later checks need: res.users inherits the partner's fields
    # (email, commercial_partner_id), so no second round trip to res.partner.
    rows = odoo.call(
        "res.users",
        "search_read",
        [["|", ("login", "=ilike", pattern), ("email", "=ilike", pattern)]],
        {"fields": ["login", "name", "email", "active", "share", "partner_id", "commercial_partner_id",
                    "company_ids", "company_id", groups_field],
         "limit": 10},
        context={"active_test": False},
        deadline=deadline,
        cacheable=True,
    )
    # The database compared with ILIKE; compare again exactly so that no pattern subtlety can
    # make one person's address match another's.
    rows = [row for row in rows
            if (row.get("login") or "").lower() == email or (row.get("email") or "").lower() == email]
    active = [row for row in rows if row.get("active")]
    if not active:
        if rows:
            raise SenderArchived(email)
        raise UnknownSender(email)
    if len(active) > 1:
        raise AmbiguousSender(f"{email} ({len(active)} users)")
    row = active[0]
    partner_id = _many2one_id(row.get("partner_id"))
    return OdooUser(
        uid=int(row["id"]),
        login=row.get("login") or "",
        name=row.get("name") or "",
        email=(row.get("email") or "").lower(),
        partner_id=partner_id,
        commercial_partner_id=_many2one_id(row.get("commercial_partner_id")) or partner_id,
        internal=not row.get("share", True),
        group_ids=tuple(int(group) for group in row.get(groups_field) or ()),
        company_ids=tuple(int(company) for company in row.get("company_ids") or ()),
        company_id=_many2one_id(row.get("company_id")),
    )
