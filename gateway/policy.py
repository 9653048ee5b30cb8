"""Decide whether a sender may post this kind of message on this record."""

from __future__ import annotations

from concurrent.futures import Future

from gateway.config import DomainRules
from gateway.context import OdooUser, Target
from gateway.odoo import OdooPool
from gateway.refusals import ModelNotAllowed, NotContributor, RecordAccessDenied, RecordNotFound


def check_model_allowed(rules: DomainRules, target: Target) -> None:
    """Data only, so it runs at RCPT: a model not opted in is refused before the message is sent."""
    if target.model not in rules.kind_rules(target.kind).models:
        raise ModelNotAllowed(f"{target.kind} on {target.model}")


def check_poster(odoo: OdooPool, rules: DomainRules, target: Target, user: OdooUser,
                 *, deadline: float | None = None) -> None:
    kind_rules = rules.kind_rules(target.kind)
    if user.internal:
        if not kind_rules.allow_internal_users:
            raise NotContributor("internal users may not post here by email")
        return
    if target.kind == "note":
        # Membership is read from Odoo with the user on every message; only the xmlid's id is
        # cached, as ids do not change.
        group_id = odoo.xmlid(rules.note.contributor_group, deadline=deadline)
        if group_id not in user.group_ids:
            raise NotContributor(f"{user.email} is not in the contributor group")


def check_record_access(odoo: OdooPool, target: Target, user: OdooUser, *, deadline: float | None = None,
                        followers: Future[set[int]] | None = None) -> None:
    """The ``followers`` policy: the sender's partner, or its commercial partner, follows the record.

    This mirrors the portal read rules of project.task and sale.order (ODOO_FACTS.md h), where
    being a follower is what grants a portal user access. ``followers`` is the same read started
    earlier (``read_followers`` on the pool, issue 6); without it the record is read here.
    """
    partners = followers.result() if followers is not None else read_followers(odoo, target, deadline=deadline)
    if not partners & {user.partner_id, user.commercial_partner_id}:
        raise RecordAccessDenied(f"{user.email} does not follow {target.model} {target.res_id}")


def read_followers(odoo: OdooPool, target: Target, *, deadline: float | None = None) -> set[int]:
    """The partners following the record, read from Odoo now; RecordNotFound if it is gone or archived.

    It does not depend on the sender, so it can run while the sender is looked up. Searching (not
    reading) by id also leaves archived records out, as Odoo's portal rule for tasks requires
    ``active``.
    """
    rows = odoo.call(target.model, "search_read", [[("id", "=", target.res_id)]],
                     {"fields": ["message_partner_ids"], "limit": 1}, deadline=deadline, cacheable=True)
    if not rows:
        raise RecordNotFound(f"{target.model} {target.res_id}")
    return set(rows[0].get("message_partner_ids") or ())
