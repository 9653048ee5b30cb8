"""Decide whether a sender may post this kind of message on this record."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway import access, address, idn, odoorights
from gateway.config import DomainRules
from gateway.context import OdooUser, Target
from gateway.odoo import SOLO, OdooPool, Pending, Rpc, missing_model
from gateway.refusals import (AccessRuleUnsupported, AddressExpired, AddressNotForSender, InternalUserNotAllowed,
                              ModelNotAllowed, ModelUnavailable, NotContributor, OdooUnavailable,
                              PlainAddressNotAccepted, RecordAccessDenied, RecordArchived, RecordHiddenFromGateway,
                              RecordNotFound, RecordOfOtherCompany)

log = logging.getLogger(__name__)


def check_model_allowed(rules: DomainRules, target: Target) -> None:
    """Data only, so it runs at RCPT: a model not opted in is refused before the message is sent."""
    if target.model not in rules.kind_rules(target.kind).models:
        raise ModelNotAllowed(f"{target.kind} on {target.model}")


def check_recipient(rules: DomainRules, target: Target) -> None:
    """Everything RCPT can judge of a recipient before the message is sent (the listener and ``check``)."""
    if target.by_reference:
        # A plain address of a kind this domain allows on no model can never be filed.
        if not rules.kind_rules(target.kind).models:
            raise ModelNotAllowed(f"{target.kind}@{target.domain}")
    else:
        check_model_allowed(rules, target)
    check_address(rules, target)


def check_address(rules: DomainRules, target: Target, *, today: int | None = None) -> None:
    """Data only, so it runs at RCPT too: an address older than the domain allows is refused."""
    if target.by_reference:
        # A plain note@ / reply@ has no issue date either: where dates are required, it would be
        # the one way past the address expiry (any message naming the record in References).
        if rules.require_dated_addresses:
            raise PlainAddressNotAccepted(f"write to the record's own dated {target.kind}+ address "
                                          f"instead of {target.address}")
        return
    if target.issued_day is None:
        if rules.require_dated_addresses:
            raise AddressExpired("addresses without an issue date are no longer accepted")
        return
    today = address.today() if today is None else today
    if rules.address_max_age_days and today - target.issued_day > rules.address_max_age_days:
        raise AddressExpired(f"issued {today - target.issued_day} days ago, "
                             f"the limit is {rules.address_max_age_days}")


def check_address_owner(target: Target, user: OdooUser) -> None:
    """A user-bound address takes mail only from the partner it was minted for."""
    if target.partner_id is not None and target.partner_id != user.partner_id:
        raise AddressNotForSender(f"{user.email} is not partner {target.partner_id}")


def check_poster(odoo: OdooPool, rules: DomainRules, target: Target, user: OdooUser,
                 *, deadline: float | None = None) -> None:
    kind_rules = rules.kind_rules(target.kind)
    if user.internal:
        if not kind_rules.allow_internal_users:
            raise InternalUserNotAllowed("answer in the record's chatter in Odoo")
        return
    if target.kind == "note":
        # Membership is read from Odoo with the user on every message; only the xmlid's id is
        # kept. Before a refusal, that id is read again (at most once a minute): the group may have
        # been deleted and created again by setup-odoo, under a new id (the lifecycle review found
        # every contributor refused until a reload).
        xmlid = rules.note.contributor_group
        if odoo.xmlid(xmlid, deadline=deadline) not in user.group_ids:
            if odoo.xmlid_again(xmlid, deadline=deadline) not in user.group_ids:
                # Which group, for the admin (journal, log, `log --id`): with several alias domains
                # there are several contributor groups (onboarding review). The reply says no more
                # than before: the sender can do nothing with an xmlid.
                raise NotContributor(f"{user.email} is not in the contributor group",
                                     internal=f"contributor_group {xmlid}")


def check_record_access(odoo: OdooPool, target: Target, user: OdooUser, *, rules: DomainRules | None = None,
                        sender_email: str = "", company: int | None = None,
                        deadline: float | None = None, followers: Pending[RecordFollowers] | None = None,
                        unfiled: list[str] | None = None) -> bool:
    """The record access policy of the target's kind; every policy ends in one search of the record.

    With ``unfiled`` (Message-IDs), the search of every policy also asks that none of them is on
    the record's messages, and True means Odoo confirmed both: the post need not search
    mail.message again (issue 6: one round trip less per note).
    The followers policy asks it in its read of the followers, unless that read may come from the
    read cache. False means access is granted but filing was not checked (a cached read, the
    company-bound followers check, or one of the IDs is there: a retry, which the post stage finds).

    ``company``: the company the alias domain is bound to, whose context the searches run in. A
    record of another company is RecordOfOtherCompany only for a sender who may read it, bound to
    no company (as an unbound domain decides): any other sender gets RecordAccessDenied and learns
    nothing of its company (found by a review, where "sale.order 24 is of company 2, not 1"
    answered a portal user about an order he could not read). So RecordOfOtherCompany says that
    the sender may read the record. Whether the record exists, is archived or is hidden from the
    gateway is asked only once access is refused.

    A model this Odoo no longer has (its module uninstalled) is ModelUnavailable, whichever policy
    meets it (model_unavailable).
    """
    try:
        try:
            found = _check_access(odoo, target, user, rules=rules, sender_email=sender_email, company=company,
                                  deadline=deadline, followers=followers, unfiled=unfiled)
        except RecordAccessDenied:
            # Refused in the company's context (odoo-rules runs the sender's rules for it alone): a
            # record of another company that the sender may read elsewhere is said to be so.
            if (company is not None and _other_company(odoo, target, company, deadline=deadline)
                    and _may_read_unbound(odoo, target, user, rules=rules, sender_email=sender_email,
                                          deadline=deadline)):
                check_company(odoo, target, company, deadline=deadline)
            raise
        check_company(odoo, target, company, deadline=deadline)
    except OdooUnavailable as error:
        if missing_model(error) != target.model:
            raise
        raise model_unavailable(odoo, rules, target, error) from None
    return found


# How often the ERROR of a model this Odoo no longer has is repeated while messages to it come.
MODEL_UNAVAILABLE_LOG_SECONDS = 3600.0


def model_unavailable(odoo: OdooPool, rules: DomainRules | None, target: Target,
                      error: OdooUnavailable) -> ModelUnavailable:
    """The refusal of a message to a record of a model Odoo no longer has, with one ERROR an hour for it.

    Found by the lifecycle review: with the module of a listed model uninstalled, Odoo answers every
    call on it UserError "Object x doesn't exist"; odoo-rules, finding no access list, said "no
    access" (550) with no ERROR, and the other policies deferred every message as "Odoo is
    unavailable" (451) until the sender's MTA gave up days later. No retry heals it, and only the
    admin can: install the module again, or take the model out of the rules' models.
    """
    if odoo.first_in(("model-unavailable", target.model), MODEL_UNAVAILABLE_LOG_SECONDS):
        settings = "models"
        if rules is not None:
            kinds = [kind for kind in ("note", "reply") if target.model in rules.kind_rules(kind).models]
            settings = " and ".join(f"[{kind}] models" for kind in kinds or ("note", "reply"))
            settings += f" of {rules.source} (domain {target.domain})"
        log.error("odoo %s: %s is not a model of this Odoo (its module uninstalled?): Odoo refused %s: %s. "
                  "Messages to its records are refused (550 5.1.1); install the module again, or remove %s from "
                  "the %s and reload", odoo.name, target.model, error.call or "a call",
                  " ".join(str(error.odoo_message or "").split()), target.model, settings)
    return ModelUnavailable(target.model)


def _may_read_unbound(odoo: OdooPool, target: Target, user: OdooUser, *, rules: DomainRules | None,
                      sender_email: str, deadline: float | None) -> bool:
    try:
        _check_access(odoo, target, user, rules=rules, sender_email=sender_email, company=None, deadline=deadline)
    except (RecordAccessDenied, AccessRuleUnsupported):
        return False
    return True


def _check_access(odoo: OdooPool, target: Target, user: OdooUser, *, rules: DomainRules | None,
                  sender_email: str, company: int | None, deadline: float | None,
                  followers: Pending[RecordFollowers] | None = None, unfiled: list[str] | None = None) -> bool:
    policy = rules.kind_rules(target.kind).access if rules is not None else "followers"
    context = {"active_test": False}
    if company is not None:
        context["allowed_company_ids"] = [company]
    if policy == "followers" and company is None:
        # The followers were read while the sender was looked up (issue 6), one round trip less;
        # that read also refuses a record that is gone or archived.
        read = followers.result() if followers is not None else read_followers(
            odoo, target, deadline=deadline, unfiled=unfiled)
        if not read.partners & {user.partner_id, user.commercial_partner_id}:
            raise RecordAccessDenied(f"{user.email} does not follow {target.model} {target.res_id}")
        return read.unfiled
    if policy == "followers":
        _check_followers(odoo, target, user, context, deadline)
        return False
    assert rules is not None
    partner_field = rules.kind_rules(target.kind).partner_field
    if policy == "odoo-rules":
        domain = _odoo_rules_domain(odoo, rules, target, user, company, deadline)
    elif policy == "own":
        # The record's customer is the sender's own partner, or a company whose commercial
        # partner the sender's partner is.
        domain = ["|", (partner_field, "=", user.partner_id),
                  (f"{partner_field}.commercial_partner_id", "=", user.partner_id)]
    elif policy == "company":
        domain = [(f"{partner_field}.commercial_partner_id", "=", user.commercial_partner_id)]
    elif policy == "email-domain":
        # Compared as the keys were stored: bücher.example and xn--bcher-kva.example, or a
        # final dot, name one domain (config.DomainRules._normalise_email_domains).
        mail_domain = idn.ascii_domain(sender_email.rpartition("@")[2])
        customer = rules.email_domains.get(mail_domain)
        if customer is None:
            raise RecordAccessDenied(f"{sender_email} on {target.model} {target.res_id}",
                                     internal=f"{mail_domain} is not in email_domains")
        domain = [(f"{partner_field}.commercial_partner_id", "=", customer)]
    else:  # pragma: no cover - the config schema allows no other value
        raise AccessRuleUnsupported(f"policy {policy}")
    if unfiled and _search_unfiled(odoo, target, domain, context, unfiled, deadline):
        return True
    # Not allowed, gone, or one of the Message-IDs is there already (a retry): the plain search
    # tells which, on the rare path.
    try:
        _check_search(odoo, target, user, domain, context, policy, deadline)
    except RecordAccessDenied:
        # Only a refusal pays for telling "no such record" or "archived" from "not yours": an
        # accepted message costs one search (issue 6: few round trips per message).
        _check_exists_and_active(odoo, target, context, deadline)
        raise
    return False


def _search_unfiled(odoo: OdooPool, target: Target, domain: list, context: dict, message_ids: list[str],
                    deadline: float | None) -> bool:
    """The record matches ``domain`` and has no message with any of ``message_ids``: one search.

    ``message_ids`` of a mail.thread record are its messages (Odoo 18 leaves out only
    user_notification ones, which the gateway never files); measured on a real Odoo 18, a message of
    another model with the same res_id does not match. Never cached: a retry comes precisely after
    a first delivery may have filed the message. Messages waiting for a connection at the same time
    share the search (UnfiledSearch).
    """
    return odoo.call_batched(UnfiledSearch(target.model, context),
                             (target.res_id, access.normalize(domain), tuple(message_ids)), deadline=deadline)


class UnfiledSearch:
    """_search_unfiled of several messages on one model in one search (issue 6: reads combined).

    An item is (record id, normalized access domain, Message-IDs); its answer is whether the record
    matches the domain with none of the IDs on it. The items of one record and domain (one sender
    to one record) ask once, with all their IDs: found answers them all; not found answers the only
    item alone, and sends several back to their own search, since one retry among them would make
    the others look filed. Records are ORed, each under its own ``id =`` clause, so a record's match
    never stems from another item's domain; a second domain on a record already asked for (another
    sender) makes its own search.
    """

    def __init__(self, model: str, context: dict) -> None:
        self.model = model
        self.context = dict(context)
        self.key = (model, "search", "unfiled", repr(sorted(self.context.items())))
        self.label = f"{model}.search"

    def run(self, items: list, rpc: Rpc) -> list:
        groups: dict[tuple[int, str], list[int]] = {}
        records: dict[int, tuple[int, str]] = {}
        for index, (res_id, domain, _ids) in enumerate(items):
            group = (res_id, repr(domain))
            if records.setdefault(res_id, group) == group:
                groups.setdefault(group, []).append(index)
        domains = []
        for (res_id, _), members in groups.items():
            ids = sorted({message_id for member in members for message_id in items[member][2]})
            domains.append(access.AND([[("id", "=", res_id)], items[members[0]][1], _unfiled_clause(ids)]))
        found = set(rpc(self.model, "search", [access.OR(domains)],
                        {"limit": len(domains), "context": self.context}))
        answers: list = [SOLO] * len(items)
        for (res_id, _), members in groups.items():
            if res_id in found:
                for member in members:
                    answers[member] = True
            elif len(members) == 1:
                answers[members[0]] = False
        return answers


def _unfiled_clause(message_ids: list[str]) -> list:
    return ["!", ("message_ids.message_id", "in", list(message_ids))]


def check_exists(odoo: OdooPool, target: Target, *, deadline: float | None = None) -> None:
    """RecordNotFound when the record does not exist (archived ones do), RecordHiddenFromGateway when a
    record rule hides it from the integration user (``note-gateway address`` asks it)."""
    _check_exists(odoo, target, {"active_test": False}, deadline)


def _check_exists(odoo: OdooPool, target: Target, context: dict, deadline: float | None) -> None:
    if not odoo.call(target.model, "search", [[("id", "=", target.res_id)]], {"limit": 1},
                     context=context, deadline=deadline):
        _missing_or_hidden(odoo, target, context, deadline,
                           inactive_searched=context.get("active_test", True) is False)


def _check_exists_and_active(odoo: OdooPool, target: Target, context: dict, deadline: float | None) -> None:
    """_check_exists, and RecordArchived for an archived record, asked once access is refused so
    that the refusal says why (found by a review: "no access" for an archived task its sender
    follows). One search when the record is there and active, as before: a search that leaves
    inactive records out finds it (a model without an ``active`` field leaves nothing out)."""
    active = {key: value for key, value in context.items() if key != "active_test"}
    if odoo.call(target.model, "search", [[("id", "=", target.res_id)]], {"limit": 1},
                 context=active, deadline=deadline):
        return
    _check_exists(odoo, target, context, deadline)
    raise RecordArchived(f"{target.model} {target.res_id}")


def _missing_or_hidden(odoo: OdooPool, target: Target, context: dict, deadline: float | None,
                       *, inactive_searched: bool = False) -> None:
    """The search as the integration user found nothing: a record that is gone, or one a record rule
    hides from that user (operator review: an integration user in "Sales / User: Own Documents
    Only" made every note on another salesperson's order a permanent 550 "does not exist").

    One read tells them apart, as a real Odoo 18 answers it: AccessError for one a rule hides;
    for an id that does not exist, MissingError where a record rule applies to the reader, else no
    row at all. It reads ``display_name``: a read of ``id`` alone fetches nothing, and a real Odoo
    18 answered it ``[{'id': 999999}]`` for a task that did not exist, which this function took
    for an archived record (the real-Odoo suite). It runs only here, after a search found nothing,
    so an accepted message pays no extra call (issue 6).

    ``inactive_searched``: the search that found nothing did not leave archived records out, so a
    readable record is not an archived one; else (the followers reads) it is RecordArchived.
    """
    try:
        rows = odoo.call(target.model, "read", [[target.res_id], ["display_name"]], context=context,
                         deadline=deadline)
    except OdooUnavailable as error:
        if error.access_denied:
            login = odoo.connection.login
            # The group per model (odoorights.KNOWN): "Project / User", named here before, does not
            # show a task of a project visible to invited internal users only (onboarding review).
            hint = odoorights.read_hint(login, target.model)
            log.error("odoo %s: %s %s exists but the gateway's Odoo user %s cannot see it: a record rule hides "
                      "it. %s; messages to it are deferred (451) until then",
                      odoo.name, target.model, target.res_id, login, hint[:1].upper() + hint[1:])
            raise RecordHiddenFromGateway(f"{target.model} {target.res_id}") from None
        if error.odoo_error == "odoo.exceptions.MissingError":
            raise RecordNotFound(f"{target.model} {target.res_id}") from None
        raise
    if not rows:
        raise RecordNotFound(f"{target.model} {target.res_id}")
    if not inactive_searched:
        # Readable, yet not found by a search that leaves inactive records out: archived.
        raise RecordArchived(f"{target.model} {target.res_id}")
    # Readable, yet not found even with archived records: gone meanwhile.
    raise RecordNotFound(f"{target.model} {target.res_id}")


def _check_search(odoo: OdooPool, target: Target, user: OdooUser, domain: list, context: dict, policy: str,
                  deadline: float | None) -> None:
    # Cacheable: with read_cache_seconds above 0 the answer for this sender (the domain holds its
    # partner) and record is reused that long, as DESIGN.md allows for record access.
    found = odoo.call(target.model, "search", [[("id", "=", target.res_id)] + list(domain)], {"limit": 1},
                      context=context, deadline=deadline, cacheable=True)
    if not found:
        raise RecordAccessDenied(f"{user.email} on {target.model} {target.res_id}", internal=policy)


def _odoo_rules_domain(odoo: OdooPool, rules: DomainRules, target: Target, user: OdooUser,
                       company: int | None, deadline: float | None) -> list:
    try:
        decision = access.decide(odoo, target.model, user, company=company, ttl=rules.rules_cache_seconds,
                                 deadline=deadline)
    except access.UnsupportedRule as error:
        log.error("odoo-rules on %s for %s: %s; refusing (fail closed)", target.model, user.email, error)
        raise AccessRuleUnsupported(f"{user.email} on {target.model} {target.res_id}", internal=error.rule) from None
    if not decision.acl:
        # No access list for the sender: also what a model Odoo no longer has looks like (its
        # ir.model.access rows went with its module). One fields_get tells (kept a day, so a refusal
        # costs it once), raising OdooUnavailable "Object x doesn't exist" for a missing model.
        access.field_description(odoo, target.model, "id", deadline=deadline)
        raise RecordAccessDenied(f"{user.email} on {target.model} {target.res_id}",
                                 internal=f"odoo-rules: no read access to {target.model} in ir.model.access")
    log.debug("odoo-rules %s for %s: rules %s -> %s", target.model, user.email, decision.rules, decision.domain)
    return decision.domain


def _check_followers(odoo: OdooPool, target: Target, user: OdooUser, context: dict,
                     deadline: float | None) -> None:
    """The ``followers`` policy: the sender's partner, or its commercial partner, follows the record.

    This mirrors the portal read rules of project.task and sale.order (ODOO_FACTS.md h), where
    being a follower is what grants a portal user access.
    """
    rows = odoo.call(target.model, "search_read", [[("id", "=", target.res_id)]],
                     {"fields": ["message_partner_ids"], "limit": 1},
                     context={key: value for key, value in context.items() if key != "active_test"},
                     deadline=deadline)
    if not rows:
        _missing_or_hidden(odoo, target, context, deadline)
    followers = set(rows[0].get("message_partner_ids") or ())
    if not followers & {user.partner_id, user.commercial_partner_id}:
        raise RecordAccessDenied(f"{user.email} does not follow {target.model} {target.res_id}")


@dataclass(frozen=True)
class RecordFollowers:
    """The partners following a record, and whether Odoo confirmed in the same read that none of the
    message's Message-IDs is on the record yet (False: not asked, or one is there)."""

    partners: set[int]
    unfiled: bool = False


def read_followers(odoo: OdooPool, target: Target, *, deadline: float | None = None,
                   unfiled: list[str] | None = None) -> RecordFollowers:
    """The partners following the record, read from Odoo now; RecordNotFound if it is gone, RecordArchived.

    It does not depend on the sender, so it can run while the sender is looked up (issue 6).
    Searching (not reading) by id also leaves archived records out, as Odoo's portal rule for
    tasks requires ``active``. With ``unfiled`` (Message-IDs; the caller holds the message's
    in-flight claim) the read also asks that none of them is on the record, as the other policies'
    record search does; that read is never cached, so with ``read_cache_seconds`` above 0 the
    cacheable plain read is made instead and the post stage searches mail.message.
    """
    if unfiled and odoo.connection.read_cache_seconds == 0:
        rows = odoo.call(target.model, "search_read", [[("id", "=", target.res_id)] + _unfiled_clause(unfiled)],
                         {"fields": ["message_partner_ids"], "limit": 1}, deadline=deadline)
        if rows:
            return RecordFollowers(set(rows[0].get("message_partner_ids") or ()), unfiled=True)
        # Gone, archived, or one of the Message-IDs is there (a retry): the plain read tells.
    rows = odoo.call(target.model, "search_read", [[("id", "=", target.res_id)]],
                     {"fields": ["message_partner_ids"], "limit": 1}, deadline=deadline, cacheable=True)
    if not rows:
        _missing_or_hidden(odoo, target, {"active_test": False}, deadline)
    return RecordFollowers(set(rows[0].get("message_partner_ids") or ()))


def bound_company(odoo: OdooPool, rules: DomainRules, *, deadline: float | None = None) -> int | None:
    """The company an alias domain is bound to, by id or by its mail.alias.domain (Odoo 17+)."""
    if rules.company_id is not None:
        return rules.company_id
    if not rules.company_from_alias_domain:
        return None
    found = odoo.call("mail.alias.domain", "search_read", [[("name", "=", rules.domain)]],
                      {"fields": ["company_ids"], "limit": 1}, deadline=deadline)
    companies = (found[0].get("company_ids") or []) if found else []
    if len(companies) != 1:
        # No alias domain, or one shared by several companies: which company is meant cannot be
        # told, and guessing could post in the wrong company's context.
        raise RecordOfOtherCompany(f"mail.alias.domain {rules.domain} names {len(companies)} companies")
    return int(companies[0])


def check_company(odoo: OdooPool, target: Target, company: int | None, *, deadline: float | None = None) -> None:
    """A record of another company is refused; a record without company (False) is shared, as in Odoo."""
    other = _other_company(odoo, target, company, deadline=deadline)
    if other is not None:
        raise RecordOfOtherCompany(f"{target.model} {target.res_id} is of company {other}, not {company}")


def _other_company(odoo: OdooPool, target: Target, company: int | None, *, deadline: float | None) -> int | None:
    """The record's company if it is another than ``company``; None if it is that one, or none."""
    if company is None:
        return None
    fields = odoo.call(target.model, "fields_get", [["company_id"]], {"attributes": ["type"]}, deadline=deadline)
    if "company_id" not in fields:
        return None
    rows = odoo.call(target.model, "read", [[target.res_id], ["company_id"]], context={"active_test": False},
                     deadline=deadline)
    value = rows[0].get("company_id") if rows else False
    return int(value[0]) if value and int(value[0]) != company else None

