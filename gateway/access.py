"""The odoo-rules policy: Odoo's own read rules and access lists, evaluated for the sender."""

from __future__ import annotations

import ast
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

from gateway.context import OdooUser
from gateway.odoo import OdooPool, waited
from gateway.refusals import OdooUnavailable

log = logging.getLogger(__name__)

# The names Odoo's ir.rule._eval_context offers that this evaluator supports. `time` is left out on
# purpose: it is only useful through calls (time.strftime), and no call is ever evaluated here.
SUPPORTED_NAMES = ("user", "company_ids", "company_id")
_MAX_CHAIN = 6  # user.partner_id.commercial_partner_id.id is 3; a longer chain is suspicious.


class UnsupportedRule(Exception):
    """A domain_force this evaluator will not evaluate; the message is refused, never guessed."""

    def __init__(self, rule: str, reason: str) -> None:
        self.rule, self.reason = rule, reason
        super().__init__(f"record rule {rule!r}: {reason}")


@dataclass(frozen=True)
class Rule:
    id: int
    name: str
    domain_force: str
    group_ids: frozenset[int]

    @property
    def is_global(self) -> bool:
        return not self.group_ids


@dataclass(frozen=True)
class _Records:
    """A recordset as the evaluator sees one: a model and ids, whose fields are read from Odoo."""

    model: str
    ids: tuple[int, ...]


# --- Parsing: only literals, lists, tuples, the supported names and attribute chains ---------------


def _check_node(node: ast.AST, rule: str, depth: int = 0) -> None:
    if isinstance(node, ast.Expression):
        return _check_node(node.body, rule)
    if isinstance(node, (ast.List, ast.Tuple)):
        for element in node.elts:
            _check_node(element, rule)
        return
    if isinstance(node, ast.Constant):
        if node.value is not None and not isinstance(node.value, (str, int, float, bool)):
            raise UnsupportedRule(rule, f"constant of type {type(node.value).__name__}")
        return
    if isinstance(node, ast.Name):
        if node.id not in SUPPORTED_NAMES:
            raise UnsupportedRule(rule, f"name {node.id!r} is not supported")
        return
    if isinstance(node, ast.Attribute):
        if depth >= _MAX_CHAIN:
            raise UnsupportedRule(rule, "attribute chain too long")
        if node.attr.startswith("_"):
            raise UnsupportedRule(rule, f"private attribute {node.attr!r}")
        if not isinstance(node.value, (ast.Attribute, ast.Name)):
            raise UnsupportedRule(rule, "attribute of something other than a name")
        if isinstance(node.value, ast.Name) and node.value.id != "user":
            raise UnsupportedRule(rule, f"attribute of {node.value.id!r}")
        return _check_node(node.value, rule, depth + 1)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        # company_ids + [False], in the multi-company rules of project (ODOO_FACTS.md h).
        _check_node(node.left, rule)
        _check_node(node.right, rule)
        return
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return _check_node(node.operand, rule)
    raise UnsupportedRule(rule, f"{type(node).__name__} is not supported")


@functools.lru_cache(maxsize=512)
def parse_domain(text: str, rule: str = "?") -> ast.Expression:
    """Parse a domain_force and check every node, or raise UnsupportedRule naming the rule.

    Kept per text: a rule's text changes rarely and every message evaluates it again (the tree is
    only read, never changed; its evaluation with the sender's values is never kept).
    """
    try:
        tree = ast.parse(text.strip() or "[]", mode="eval")
    except SyntaxError as error:
        raise UnsupportedRule(rule, f"not a Python expression: {error.msg}") from None
    _check_node(tree, rule)
    return tree


# --- Evaluation -----------------------------------------------------------------------------------


class _Evaluator:
    """Evaluates checked expressions for one user; reads from Odoo are never cached across messages."""

    def __init__(self, odoo: OdooPool, names: dict[str, Any], deadline: float | None) -> None:
        self.odoo = odoo
        self.names = names
        self.deadline = deadline
        self._read_cache: dict[tuple[str, int, str], Any] = {}

    def seed(self, model: str, record_id: int, name: str, value: Any) -> None:
        """A value already read from Odoo for this message, so the evaluator need not read it again."""
        if record_id:
            self._read_cache[(model, record_id, name)] = value

    def field(self, model: str, name: str, rule: str) -> dict:
        return field_description(self.odoo, model, name, rule, deadline=self.deadline)

    def attribute(self, records: _Records, name: str, rule: str) -> Any:
        if name == "id":
            if len(records.ids) > 1:
                raise UnsupportedRule(rule, f".id of several {records.model} records")
            return records.ids[0] if records.ids else False
        if name == "ids":
            return list(records.ids)
        if len(records.ids) != 1:
            raise UnsupportedRule(rule, f".{name} of {len(records.ids)} {records.model} records")
        description = self.field(records.model, name, rule)
        key = (records.model, records.ids[0], name)
        if key not in self._read_cache:
            rows = self.odoo.call(records.model, "read", [list(records.ids), [name]],
                                  context={"active_test": False}, deadline=self.deadline)
            self._read_cache[key] = rows[0].get(name) if rows else False
        value = self._read_cache[key]
        kind = description.get("type")
        if kind == "many2one":
            return _Records(description["relation"], (int(value[0]),) if value else ())
        if kind in ("one2many", "many2many"):
            return _Records(description["relation"], tuple(int(item) for item in value or ()))
        return value

    def evaluate(self, node: ast.AST, rule: str) -> Any:
        if isinstance(node, ast.Expression):
            return self.evaluate(node.body, rule)
        if isinstance(node, ast.List):
            return [self.evaluate(element, rule) for element in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(self.evaluate(element, rule) for element in node.elts)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return self.names[node.id]
        if isinstance(node, ast.Attribute):
            base = self.evaluate(node.value, rule)
            if not isinstance(base, _Records):
                raise UnsupportedRule(rule, f"attribute {node.attr!r} of a plain value")
            return self.attribute(base, node.attr, rule)
        if isinstance(node, ast.BinOp):
            left, right = self.evaluate(node.left, rule), self.evaluate(node.right, rule)
            if not (isinstance(left, list) and isinstance(right, list)):
                raise UnsupportedRule(rule, "+ of something other than two lists")
            return left + right
        if isinstance(node, ast.UnaryOp):
            value = self.evaluate(node.operand, rule)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise UnsupportedRule(rule, "- of something other than a number")
            return -value
        raise UnsupportedRule(rule, f"{type(node).__name__} is not supported")


def _plain(value: Any, rule: str) -> Any:
    """A domain with only JSON values: a recordset left in a leaf is refused, not converted by guess."""
    if isinstance(value, _Records):
        raise UnsupportedRule(rule, f"a {value.model} record used as a value (write .id or .ids)")
    if isinstance(value, (list, tuple)):
        return [_plain(item, rule) for item in value]
    return value


# --- Domains: normalize and combine as odoo.osv.expression does ---------------------------------

TRUE_DOMAIN: list = [[1, "=", 1]]
FALSE_DOMAIN: list = [[0, "=", 1]]


def _is_leaf(token: Any) -> bool:
    return isinstance(token, (list, tuple)) and len(token) == 3


def normalize(domain: Any, rule: str = "?") -> list:
    """Prefix notation with the implicit '&' made explicit; an empty domain is TRUE."""
    if not isinstance(domain, (list, tuple)):
        raise UnsupportedRule(rule, "the domain is not a list")
    if not domain:
        return list(TRUE_DOMAIN)
    result: list = []
    expected = 1
    for token in domain:
        if expected == 0:
            result[0:0] = ["&"]
            expected = 1
        if token in ("&", "|"):
            expected += 1
        elif token == "!":
            pass
        elif _is_leaf(token):
            expected -= 1
            token = list(token)
        else:
            raise UnsupportedRule(rule, f"invalid domain element {token!r}")
        result.append(token)
    if expected != 0:
        raise UnsupportedRule(rule, "the domain is not well formed")
    return result


def _combine(operator: str, unit: list, zero: list, domains: list[list]) -> list:
    # expression.combine: skip the neutral domain, stop at the absorbing one.
    result: list = []
    count = 0
    for domain in domains:
        if domain == unit:
            continue
        if domain == zero:
            return list(zero)
        result += domain
        count += 1
    if not count:
        return list(unit)
    return [operator] * (count - 1) + result


def AND(domains: list[list]) -> list:  # noqa: N802 (Odoo's name)
    return _combine("&", TRUE_DOMAIN, FALSE_DOMAIN, domains)


def OR(domains: list[list]) -> list:  # noqa: N802 (Odoo's name)
    return _combine("|", FALSE_DOMAIN, TRUE_DOMAIN, domains)


# --- Rules and access lists from Odoo, cached briefly --------------------------------------------


def _cached(odoo: OdooPool, key: tuple, ttl: float, load, deadline: float | None = None) -> Any:
    # Rules and access lists change rarely and are the same for every sender; the sender's own
    # values (groups, partner, companies) are never cached (issue 7).
    cache = odoo.security_cache

    def fresh() -> tuple[float, Any] | None:
        hit = cache.get(key)
        return hit if hit is not None and ttl > 0 and time.monotonic() - hit[0] < ttl else None

    hit = fresh()
    if hit is not None:
        return hit[1]
    if ttl <= 0:
        return load()  # The cache is off: read on every message, nothing to share or keep.
    # When the entry expires under load, every message in flight misses at once: one loads it,
    # the others wait for that read instead of sending the same one (issue 6: few round trips).
    lock = odoo.loading(key)
    started = time.monotonic()
    wait = -1 if deadline is None else max(0.0, deadline - started)
    acquired = lock.acquire(timeout=wait)
    waited(time.monotonic() - started)  # Another message's read of it: time on Odoo (odoo_seconds).
    if not acquired:
        raise OdooUnavailable("the message deadline passed before Odoo answered")
    try:
        hit = fresh()
        if hit is not None:
            return hit[1]
        value = load()
        cache[key] = (time.monotonic(), value)
        return value
    finally:
        lock.release()


def field_description(odoo: OdooPool, model: str, name: str, rule: str = "?", *,
                      deadline: float | None = None) -> dict:
    def load() -> dict:
        found = odoo.call(model, "fields_get", [[name]], {"attributes": ["type", "relation"]}, deadline=deadline)
        return found.get(name) or {}

    # Field types never change under a running gateway; a day is as good as forever.
    description = _cached(odoo, ("field", model, name), 86400.0, load, deadline)
    if not description:
        raise UnsupportedRule(rule, f"{model} has no field {name!r}")
    return description


def read_rules(odoo: OdooPool, model: str, *, ttl: float, deadline: float | None = None) -> list[Rule]:
    """The active read rules of a model, global and per group (ir.rule._get_rules with mode read)."""
    def load() -> list[Rule]:
        rows = odoo.call("ir.rule", "search_read", [[("model_id.model", "=", model), ("perm_read", "=", True)]],
                         {"fields": ["name", "domain_force", "groups"], "order": "id"}, deadline=deadline)
        return [Rule(int(row["id"]), row.get("name") or f"ir.rule {row['id']}", row.get("domain_force") or "",
                     frozenset(int(group) for group in row.get("groups") or ())) for row in rows]

    return _cached(odoo, ("rules", model), ttl, load, deadline)


def read_access_groups(odoo: OdooPool, model: str, *, ttl: float, deadline: float | None = None) -> set[int | None]:
    """The groups whose ir.model.access grants read on a model; None stands for an ACL without group."""
    def load() -> set[int | None]:
        rows = odoo.call("ir.model.access", "search_read",
                         [[("model_id.model", "=", model), ("perm_read", "=", True)]],
                         {"fields": ["group_id"]}, deadline=deadline)
        return {int(row["group_id"][0]) if row.get("group_id") else None for row in rows}

    return _cached(odoo, ("access", model), ttl, load, deadline)


# --- The decision ----------------------------------------------------------------------------------


@dataclass
class Decision:
    """What odoo-rules found: whether the model ACL passed and the domain the record had to match."""

    acl: bool
    domain: list
    rules: list[str]


def user_companies(odoo: OdooPool, user: OdooUser, company: int | None, *,
                   deadline: float | None = None) -> tuple[list[int], int]:
    """company_ids and company_id as Odoo's env.companies / env.company would give them.

    Without allowed_company_ids Odoo uses all the user's companies; with a company bound to the
    alias domain, the context is that company alone, which Odoo only accepts if the user has it.
    """
    if user.company_ids is not None:
        # Read with the user by identify-sender on this very message.
        company_ids = list(user.company_ids)
        main = user.company_id or (company_ids[0] if company_ids else 0)
    else:
        rows = odoo.call("res.users", "read", [[user.uid], ["company_ids", "company_id"]],
                         context={"active_test": False}, deadline=deadline)
        row = rows[0] if rows else {}
        company_ids = [int(value) for value in row.get("company_ids") or ()]
        main = int(row["company_id"][0]) if row.get("company_id") else (company_ids[0] if company_ids else 0)
    if company is None:
        return company_ids, main
    if company not in company_ids:
        return [], 0
    return [company], company


def decide(odoo: OdooPool, model: str, user: OdooUser, *, company: int | None = None, ttl: float = 60.0,
           deadline: float | None = None) -> Decision:
    """Build the read domain Odoo would apply for ``user`` on ``model`` (ir.rule._compute_domain)."""
    groups = set(user.group_ids)
    access = read_access_groups(odoo, model, ttl=ttl, deadline=deadline)
    acl = None in access or bool(access & groups)
    company_ids, company_id = user_companies(odoo, user, company, deadline=deadline)
    names = {"user": _Records("res.users", (user.uid,)), "company_ids": company_ids, "company_id": company_id}
    evaluator = _Evaluator(odoo, names, deadline)
    # What identify-sender read of the user on this message answers the usual attribute chains
    # (user.partner_id.commercial_partner_id.id, user.commercial_partner_id.id) without a read
    # each: the values are this message's, never another's (issue 6: few round trips).
    evaluator.seed("res.users", user.uid, "partner_id", [user.partner_id, ""])
    evaluator.seed("res.users", user.uid, "commercial_partner_id", [user.commercial_partner_id, ""])
    evaluator.seed("res.partner", user.partner_id, "commercial_partner_id", [user.commercial_partner_id, ""])
    global_domains: list[list] = []
    group_domains: list[list] = []
    used: list[str] = []
    for rule in read_rules(odoo, model, ttl=ttl, deadline=deadline):
        if not (rule.is_global or rule.group_ids & groups):
            continue
        tree = parse_domain(rule.domain_force, rule.name)
        domain = normalize(_plain(evaluator.evaluate(tree, rule.name), rule.name), rule.name)
        (global_domains if rule.is_global else group_domains).append(domain)
        used.append(rule.name)
    if not group_domains:
        return Decision(acl, AND(global_domains), used)
    return Decision(acl, AND(global_domains + [OR(group_domains)]), used)
