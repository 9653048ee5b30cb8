"""What `check-config --online` and `check` report: each Odoo as the gateway sees it, and one message's whole decision."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from gateway import access, address, idn, odoorights, pipeline, policy, post, senderauth
from gateway.config import GatewayConfig, api_key_replacement
from gateway.context import MessageContext
from gateway.odoo import OdooPool, expected_refusals
from gateway.refusals import MessageTookTooLong, OdooUnavailable, Refusal
from gateway.setup_odoo import Setup

# Groups the integration user must not need (issue 7): their rights would let a compromised
# gateway key change Odoo's security.
TOO_MUCH = {"base.group_system": "Settings", "base.group_erp_manager": "Access Rights"}
# An Odoo API key (here) or the listener's TLS certificate (doctor.py) this close to its end gets a
# warning: enough for a renewal that failed once to be noticed and fixed by hand. One number for
# both, as docs/operations.md promises.
EXPIRY_WARNING_DAYS = 21
# What Odoo answers for the conditions these checks look for and report in their own words (a
# right setup-odoo has not given yet, a missing group or model): logged at DEBUG only, so that
# check-config --online and doctor say each once (odoo.expected_refusals). Any other exception Odoo
# answers, and a transport fault, is still logged as the gateway logs it.
NO_RIGHT = "odoo.exceptions.AccessError"
NO_SUCH_XMLID = "builtins.ValueError"  # check_object_reference: "External ID not found in the system"
NO_SUCH_MODEL = "odoo.exceptions.UserError"  # "Object helpdesk.ticket doesn't exist"


@dataclass(frozen=True)
class Finding:
    """A problem found in Odoo, and what fixes it (doctor prints the fix on its own line)."""

    text: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.text} ({self.fix})" if self.fix else self.text


@dataclass
class Findings:
    lines: list[str] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    errors: list[Finding] = field(default_factory=list)

    def error(self, text: str, fix: str = "") -> None:
        # Said once: several models or kinds can run into the same missing right (operator review:
        # "odoo-rules needs read access ..." was printed once per model).
        if Finding(text, fix) not in self.errors:
            self.errors.append(Finding(text, fix))

    def warn(self, text: str, fix: str = "") -> None:
        if Finding(text, fix) not in self.warnings:
            self.warnings.append(Finding(text, fix))


def check_online(config: GatewayConfig, pools: dict[str, OdooPool], *, now: float | None = None) -> Findings:
    """`check-config --online`: log in to each Odoo, then check_connection."""
    found = Findings()
    for name, pool in pools.items():
        connection = config.gateway.odoo[name]
        try:
            version = pool.version()
        except OdooUnavailable as error:
            found.error(f"odoo.{name}: cannot log in: {error.explanation}" + (f"; {error.fix}" if error.fix else ""))
            continue
        found.lines.append(f"odoo.{name}: logged in to {connection.url} database {connection.database} as "
                           f"{connection.login}, Odoo {version}, groups field {pool.groups_field}")
        check_connection(config, name, pool, found, now=now)
    return found


def check_connection(config: GatewayConfig, name: str, pool: OdooPool, found: Findings, *,
                     now: float | None = None) -> None:
    """Everything checked of one Odoo once logged in; `check-config --online` and `doctor` both run it."""
    connection = config.gateway.odoo[name]
    try:
        uids = pool.call("res.users", "search", [[("login", "=", connection.login)]])
        for xmlid, label in TOO_MUCH.items():
            if uids and pool.call("res.users", "has_group", [uids[:1], xmlid]):
                found.warn(f"odoo.{name}: {connection.login} is in {label} ({xmlid}): more rights than "
                           "the gateway needs", "run setup-odoo and remove it from that group")
    except OdooUnavailable as error:
        found.error(f"odoo.{name}: cannot read the user {connection.login}: {error.explanation}")
        return
    if uids:
        _check_api_key(name, pool, uids[0], found, time.time() if now is None else now)
    for domain, rules in sorted(config.domains.items()):
        if rules.odoo == name:
            _check_domain(pool, domain, rules, found)
    _check_sender_emails(config, name, pool, found)


# Users named one by one by _check_sender_emails; the others are counted.
NAMED_SENDERS = 10
SENDER_EMAIL_FIX = ("set the user's email to the address they send from (Settings > Users & Companies > Users, "
                    "or the email of the user's contact)")


def _check_sender_emails(config: GatewayConfig, name: str, pool: OdooPool, found: Findings) -> None:
    """Senders the gateway finds by their login no more: since 0.2.0 (identity._MATCHED_FIELDS) a
    sender's user is the one whose normalised email is the From address, as in Odoo's own mail
    gateway. An active contributor (or an internal user, where the rules let them write) whose login
    is the address she mails from while her email is another one, or who has no email, had her mail
    filed until the upgrade, and is refused 550 after it; check-config --online and doctor said
    "everything looks right" (upgrade review). One search of res.users.
    """
    groups, internal = set(), False
    for domain, rules in config.domains.items():
        if rules.odoo != name:
            continue
        if rules.note.models:
            try:
                with expected_refusals(NO_SUCH_XMLID, NO_RIGHT):  # Said by _check_domain already.
                    groups.add(pool.xmlid(rules.note.contributor_group))
            except OdooUnavailable:
                pass
        internal = internal or any(rules.kind_rules(kind).models and rules.kind_rules(kind).allow_internal_users
                                   for kind in ("note", "reply"))
    # Searched by the stored field that assigns groups (all_group_ids of Odoo 19 is computed), as
    # setup-odoo and the admin assign the contributor group; each row's groups read whole.
    senders = ([[(pool.groups_field, "in", sorted(groups))]] if groups else []) + (
        [[("share", "=", False)]] if internal else [])
    if not senders:
        return
    domain = access.AND([[("active", "=", True)], access.OR(senders),
                         ["|", ("login", "like", "@"), ("email_normalized", "=", False)]])
    try:
        with expected_refusals(NO_RIGHT):
            rows = pool.call("res.users", "search_read", [domain],
                             {"fields": ["login", "name", "email_normalized", "share", pool.all_groups_field],
                              "order": "login"})
    except OdooUnavailable as error:
        found.warn(f"odoo.{name}: cannot read the users who send mail to the gateway: {error.explanation}")
        return
    who = "contributors" + (" and internal users" if internal else "")
    refused = []
    for row in rows:
        login = (row.get("login") or "").strip()
        email = (row.get("email_normalized") or "").lower()
        contributor = bool(groups & set(row.get(pool.all_groups_field) or ()))
        kind = "contributor" if contributor and row.get("share") else "internal user"
        user = f"{kind} {row.get('name') or login} (user {row['id']}, login {login})"
        if "@" in login and email and email not in idn.address_forms(login):
            refused.append(f"{user} has the email {email}: mail from {login} is refused (550 5.7.1 No Odoo user "
                           "has this sender address), the sender's user being found by email only, as in Odoo's "
                           "mail gateway")
        elif not email and ("@" in login or contributor):
            said = f"mail from {login} is refused (550 5.7.1, the user has no email)" if "@" in login else (
                "none of the user's mail can be filed")
            refused.append(f"{user} has no email: {said}")
    if not refused:
        found.lines.append(f"odoo.{name}: the active {who} have an email, their login's address where it is one")
        return
    for text in refused[:NAMED_SENDERS]:
        found.warn(f"odoo.{name}: {text}", SENDER_EMAIL_FIX)
    if len(refused) > NAMED_SENDERS:
        found.warn(f"odoo.{name}: {len(refused) - NAMED_SENDERS} more {who} as above, not named here",
                   SENDER_EMAIL_FIX)


def _check_api_key(name: str, pool: OdooPool, uid: int, found: Findings, now: float) -> None:
    """A key of the integration user that expires soon (Odoo 18 gives non-admin keys at most 90 days).

    Odoo does not tell which of the user's keys this login used (only a hash of it is stored), so
    each key that has not expired yet counts: once the new key is in place, deleting the old one
    ends the warning.
    """
    login = pool.connection.login
    try:
        with expected_refusals(NO_RIGHT, NO_SUCH_XMLID):  # An Odoo without expiration_date: ValueError.
            keys = pool.call("res.users.apikeys", "search_read", [[("user_id", "=", uid)]],
                             {"fields": ["name", "expiration_date"]})
    except OdooUnavailable:
        # An Odoo without expiration_date (before 17) or that does not let the user read its keys.
        found.lines.append(f"odoo.{name}: the expiry of {login}'s API keys cannot be read")
        return
    soonest = None
    for key in keys:
        if not key.get("expiration_date"):
            continue
        ends = datetime.strptime(key["expiration_date"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
        days = (ends.timestamp() - now) / 86400
        if days < 0:
            continue  # Not the key in use: this login succeeded. Odoo removes it soon.
        stamp = ends.strftime("%Y-%m-%d %H:%M UTC")
        if days < EXPIRY_WARNING_DAYS:
            found.warn(f"odoo.{name}: the API key \"{key.get('name') or ''}\" of {login} expires on {stamp}, "
                       f"in {days:.0f} days; then every message is deferred (451) until a new key is in place",
                       f"make a new key for {login} (Preferences > Account Security > New API Key), "
                       f"{api_key_replacement(pool.connection)}, then delete the old key")
        elif soonest is None or ends < soonest[0]:
            soonest = (ends, days)
    if soonest is not None:
        found.lines.append(f"odoo.{name}: {login}'s API keys are valid until at least "
                           f"{soonest[0].strftime('%Y-%m-%d %H:%M UTC')} ({soonest[1]:.0f} days)")


def _check_domain(pool: OdooPool, domain: str, rules, found: Findings) -> None:
    where = f"{rules.source}"
    login = pool.connection.login
    try:
        with expected_refusals(NO_SUCH_XMLID, NO_RIGHT):
            group_id = pool.xmlid(rules.note.contributor_group)
        found.lines.append(f"{domain}: contributor group {rules.note.contributor_group} is res.groups {group_id}")
    except OdooUnavailable:
        found.error(f"{where}: note.contributor_group: {rules.note.contributor_group} not found in Odoo or not "
                    f"readable by {login}", "run note-gateway setup-odoo")
    models = sorted(set(rules.note.models) | set(rules.reply.models))
    for model in models:
        try:
            with expected_refusals(NO_SUCH_MODEL, NO_RIGHT):
                fields = pool.call(model, "fields_get", [["message_ids", "company_id"]], {"attributes": ["type"]})
        except OdooUnavailable:
            found.error(f"{where}: models: {model} does not exist in Odoo",
                        f"install the module of {model}, or remove it from the rules' models")
            continue
        if "message_ids" not in fields:
            found.error(f"{where}: models: {model} has no chatter (not a mail.thread)")
            continue
        try:
            # A count that matches nothing: it proves that the integration user may read the
            # model, without reading any record.
            with expected_refusals(NO_RIGHT):
                pool.call(model, "search_count", [[["id", "=", 0]]])
        except OdooUnavailable:
            found.error(f"{where}: models: {login} may not read {model}",
                        f"give {login} read access to {model}, or remove it from the rules' models")
            continue
        found.lines.append(f"{domain}: {model} has a chatter and is readable")
        _check_may_post(pool, domain, model, found)
        for kind in ("note", "reply"):
            kind_rules = rules.kind_rules(kind)
            if model in kind_rules.models and kind_rules.access in ("own", "company", "email-domain"):
                described = pool.call(model, "fields_get", [[kind_rules.partner_field]], {"attributes": ["relation"]})
                if (described.get(kind_rules.partner_field) or {}).get("relation") != "res.partner":
                    found.error(f"{where}: {kind}.partner_field: {model}.{kind_rules.partner_field} is not "
                                "a many2one to res.partner")
        kinds = [kind for kind in ("note", "reply") if model in rules.kind_rules(kind).models
                 and rules.kind_rules(kind).access == "odoo-rules"]
        if kinds:
            _check_rules(pool, domain, where, model, found)
    try:
        company = policy.bound_company(pool, rules)
        if company is not None:
            found.lines.append(f"{domain}: bound to res.company {company}")
    except Refusal as refusal:
        found.error(f"{where}: company_from_alias_domain: {refusal.text}")


def _check_may_post(pool: OdooPool, domain: str, model: str, found: Findings) -> None:
    """Whether the integration user may write ``model``, which Odoo demands to post on it.

    Odoo creates the posted message as the caller and lets it do so with the model's
    _mail_post_access on the record, 'write' unless the model says otherwise (mail_thread.py,
    mail_message.py _get_forbidden_access); project.task says 'read'. That attribute cannot be read
    over RPC, so a user without write access is a warning, not an error (operator review: a
    "Project / Administrator" reads sale.order, the checks said all was well, and every note to an
    order was deferred by Odoo's AccessError). Odoo 18 has has_access and deprecates
    check_access_rights (a DeprecationWarning in Odoo's log); Odoo 17 has only check_access_rights.
    """
    login = pool.connection.login
    if odoorights.lets_readers_post(model):
        # Known to ask only for read access (project.task, account.move): no write check, and no
        # warning that would send the admin after a right the gateway does not need.
        return
    try:
        with expected_refusals(NO_RIGHT):
            if pool.version() >= 18:
                may_write = pool.call(model, "has_access", [[], "write"])
            else:
                may_write = pool.call(model, "check_access_rights", ["write"], {"raise_exception": False})
    except OdooUnavailable as error:
        found.warn(f"{domain}: {model}: cannot ask Odoo whether {login} may write it: {error.explanation}")
        return
    if not may_write:
        # A reply of a follower goes through Odoo's mail gateway (post.file_reply), which posts as
        # OdooBot and is filed; every other post is the integration user's message_post.
        found.warn(f"{domain}: {model}: {login} may read {model} but not write it, and Odoo lets only users who "
                   f"may write a record post on it unless the model lets readers post: notes to a {model}, and "
                   f"replies from senders who do not follow it, would be deferred (451); replies from followers "
                   f"are filed by Odoo's mail gateway",
                   odoorights.post_hint(login, model))


def _check_rules(pool: OdooPool, domain: str, where: str, model: str, found: Findings) -> None:
    try:
        with expected_refusals(NO_RIGHT):  # Before setup-odoo: said once below, not once per model.
            rules = access.read_rules(pool, model, ttl=0)
            access.read_access_groups(pool, model, ttl=0)
    except OdooUnavailable:
        found.error(f"{where}: access: odoo-rules needs read access to ir.rule, ir.model.access and ir.model",
                    "run note-gateway setup-odoo")
        return
    # The access search runs as the integration user, so it must read every model the rules go
    # through (setup-odoo grants them; gateway/setup_odoo.py Setup.run).
    walker = Setup(_PoolClient(pool), pool.version())
    try:
        with expected_refusals(NO_RIGHT):
            reached = sorted(walker.rule_models([model]))
    except OdooUnavailable:
        reached = []
        found.error(f"{where}: access: cannot follow the fields of {model}'s record rules")
    for other in reached:
        try:
            with expected_refusals(NO_RIGHT):
                pool.call(other, "search", [[]], {"limit": 1})
        except OdooUnavailable:
            found.error(f"{where}: access: the record rules of {model} go through {other}, which "
                        f"{pool.connection.login} cannot read: every search would fail", "run note-gateway setup-odoo")
    unsupported = 0
    for rule in rules:
        try:
            access.parse_domain(rule.domain_force, rule.name)
        except access.UnsupportedRule as error:
            unsupported += 1
            found.warn(f"{domain}: {model}: {error}: senders it applies to will be refused")
    found.lines.append(f"{domain}: {model}: {len(rules)} read rules, {len(rules) - unsupported} evaluable")


class _PoolClient:
    """odoorpc's execute_kw over an OdooPool, for the setup-odoo walker run as the integration user."""

    def __init__(self, pool: OdooPool) -> None:
        self.pool = pool

    def execute_kw(self, model: str, method: str, args: list, kwargs: dict) -> object:
        kwargs = dict(kwargs)
        context = kwargs.pop("context", None)
        return self.pool.call(model, method, args, kwargs, context=context)


# --- check: one message, every stage, nothing posted ---------------------------------------------


def _describe(stage: str, ctx: MessageContext) -> str:
    if stage == "authenticate-sender" and ctx.sender:
        return f"{ctx.sender.email}, DKIM d={ctx.sender.dkim_domain} s={ctx.sender.selector}"
    if stage == "identify-sender" and ctx.user:
        role = "internal user" if ctx.user.internal else "portal user"
        return f"{role} {ctx.user.login} (uid {ctx.user.uid}, partner {ctx.user.partner_id})"
    if stage == "routed-rate-limit" and not ctx.target.by_reference:
        return "nothing to do (a record address: checked at rate-limit)"
    if stage in ("route", "reply-all-as-note"):
        return ctx.decision or "nothing to do"
    if stage == "authorize":
        rules = ctx.rules.kind_rules(ctx.target.kind)
        company = f", company {ctx.company_id}" if ctx.company_id else ""
        return f"{ctx.target.kind} on {ctx.target.model} {ctx.target.res_id}, policy {rules.access}{company}"
    if stage == "parse" and ctx.message:
        return f"Message-ID {ctx.message.message_id}"
    if stage == "render" and ctx.rendered_body is not None:
        return f"{len(ctx.rendered_body)} characters of HTML"
    return ""


def _refused(ctx: MessageContext, refusal: Refusal) -> str:
    """A refusal as the operator reads it: the reply, what only the journal keeps, and the reply the
    sender is told instead if another (pipeline.said_refusal)."""
    said = pipeline.said_refusal(ctx, refusal)
    text = f"REFUSED {refusal.smtp_reply()}" + (f" ({refusal.internal})" if refusal.internal else "")
    return text + (f"; the sender is told: {said.smtp_reply()}" if said is not refusal else "")


def dry_run(services: pipeline.Services, rcpt: str, raw: bytes,
            mail_from: str | None = None) -> tuple[list[tuple[str, str]], bool]:
    """Each stage's verdict for this message to this recipient, and whether it would be filed.

    ``mail_from`` is the envelope sender; by default the message's From address, which is what
    a contributor's mail system sends as MAIL FROM.
    """
    config = services.config
    verdicts: list[tuple[str, str]] = []
    try:
        target = address.parse_recipient(rcpt, config.secrets)
        rules = config.domains[target.domain]
        policy.check_recipient(rules, target)
    except Refusal as refusal:
        return [("rcpt", f"REFUSED {refusal.smtp_reply()}")], False
    verdicts.append(("rcpt", "ok: " + (f"plain {target.kind}@ address, routed by References" if target.by_reference
                                       else f"{target.kind} on {target.model} {target.res_id}")))
    if mail_from is None:
        try:
            mail_from = senderauth.read_from_address(raw)
        except Refusal:
            mail_from = ""
    ctx = MessageContext(raw=raw, mail_from=mail_from, target=target, rules=rules,
                         odoo_identity=config.odoo_identity(target.domain))
    deadline = time.monotonic() + config.gateway.listener.message_deadline
    for stage in pipeline.STAGES:
        if stage.name == "post":
            break
        if stage.name == "record-receipt":
            # A dry run files nothing, so it leaves no receipt in the journal either.
            verdicts.append((stage.name, "skipped: nothing is filed"))
            continue
        try:
            stage.run(ctx, services, deadline)
        except MessageTookTooLong as refusal:
            refusal = refusal if refusal.detail else stage.too_slow_refusal()
            verdicts.append((stage.name, _refused(ctx, refusal)))
            return verdicts, False
        except Refusal as refusal:
            verdicts.append((stage.name, _refused(ctx, refusal)))
            return verdicts, False
        except Exception as error:  # noqa: BLE001 (as pipeline._run_stages: the listener defers it)
            verdicts.append((stage.name, _refused(ctx, pipeline.stage_fault(stage.name, error, ctx, services))))
            return verdicts, False
        detail = _describe(stage.name, ctx)
        verdicts.append((stage.name, "ok" + (f": {detail}" if detail else "")))
    odoo = services.odoo[ctx.rules.odoo]
    try:
        filed = post.look_up(odoo, ctx, deadline=deadline)
    except Refusal as refusal:
        verdicts.append(("post", f"REFUSED {refusal.smtp_reply()}"))
        return verdicts, False
    except Exception as error:  # noqa: BLE001
        verdicts.append(("post", _refused(ctx, pipeline.stage_fault("post", error, ctx, services))))
        return verdicts, False
    assert ctx.user is not None and ctx.message is not None
    if filed.existing is not None:
        verdicts.append(("post", f"would not post: already filed as Odoo message {filed.existing}"))
        return verdicts, True
    # An earlier delivery's post that got no answer (the journal's unsettled_posts), while Odoo
    # may still be running it: a delivery now would be deferred rather than posted.
    since = services.journal.unsettled_since(*pipeline.unsettled_key(ctx))
    refusal = pipeline.unsettled_refusal(odoo, since) if since is not None else None
    if refusal is not None:
        verdicts.append(("post", f"REFUSED {refusal.smtp_reply()}"))
        return verdicts, False
    # Another author's message has its Message-ID on the record: it is filed under its own. A
    # public reply whose note delivery came first is filed under another of its IDs.
    if filed.notes:
        derived = f" under Message-ID {post.public_message_id(ctx, filed.taken, filed.notes)}"
    elif ctx.message.message_id in filed.taken:
        derived = f" under Message-ID {post.author_message_id(ctx)}"
    else:
        derived = ""
    verdicts.append(("post", f"would post with subtype {post.SUBTYPES[ctx.target.kind]} on {ctx.target.model} "
                             f"{ctx.target.res_id} as partner {ctx.user.partner_id}{derived} (nothing posted)"))
    return verdicts, True
