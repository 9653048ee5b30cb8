"""The in-memory ORM of the test Odoo: fields, domains, access rules and the generic model methods."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

# --- Exceptions ---------------------------------------------------------------------------------
#
# Each carries the dotted name that Odoo's JSON-RPC error reports in ``data.name``, so that a
# client matching on it (as the gateway does to tell AccessError from AccessDenied) sees the same
# string it would see from a real server. Builtin exceptions (ValueError, TypeError, ...) report
# "builtins.ValueError" and so on, as odoo/http.py serialize_exception does.


class OdooError(Exception):
    odoo_name = "odoo.exceptions.UserError"


class UserError(OdooError):
    pass


class AccessError(UserError):
    odoo_name = "odoo.exceptions.AccessError"


class AccessDenied(UserError):
    odoo_name = "odoo.exceptions.AccessDenied"

    def __init__(self, message: str = "Access Denied") -> None:
        super().__init__(message)


class MissingError(UserError):
    odoo_name = "odoo.exceptions.MissingError"


class ValidationError(UserError):
    odoo_name = "odoo.exceptions.ValidationError"


class DatabaseMissing(OdooError):
    odoo_name = "psycopg2.OperationalError"


class SessionExpired(OdooError):
    odoo_name = "odoo.http.SessionExpiredException"


def exception_name(error: BaseException) -> str:
    explicit = getattr(type(error), "odoo_name", None)
    if explicit:
        return explicit
    return f"{type(error).__module__}.{type(error).__name__}"


# --- Fields and models --------------------------------------------------------------------------

RELATIONAL = ("many2one", "one2many", "many2many")
TEXTUAL = ("char", "text", "html", "selection")


@dataclass
class Field:
    """One field of a model; computed fields get ``compute(env, record_id)`` and may be written
    through ``inverse(env, record_id, value)``."""

    type: str
    string: str = ""
    relation: str | None = None
    inverse_name: str | None = None
    compute: Callable[[Env, int], Any] | None = None
    inverse: Callable[[Env, int, Any], None] | None = None
    default: Any = None
    selection: tuple[tuple[str, str], ...] | None = None
    required: bool = False
    readonly: bool = False
    # A value index, as a real Odoo has on an indexed column: "=" and "in" searches of it look
    # values up instead of reading every row (long benchmarks post thousands of messages).
    index: bool = False
    # For a computed one2many: the record whose field lists a given comodel id (or None), so that
    # "any" searches go from the few matching comodel rows to their holders, as Odoo's SQL does
    # through the inverse column, instead of computing the field of every candidate record.
    holder: Callable[[Env, int], int | None] | None = None
    name: str = ""

    @property
    def relational(self) -> bool:
        return self.type in RELATIONAL

    @property
    def x2many(self) -> bool:
        return self.type in ("one2many", "many2many")

    @property
    def stored(self) -> bool:
        return self.compute is None and self.type != "one2many"

    def empty(self) -> Any:
        return [] if self.x2many else False

    def describe(self) -> dict[str, Any]:
        description: dict[str, Any] = {
            "type": self.type,
            "string": self.string or self.name.replace("_", " ").title(),
            "readonly": self.readonly or (self.compute is not None and self.inverse is None),
            "required": self.required,
            "store": self.stored,
            "searchable": True,
            "sortable": self.stored,
            "name": self.name,
        }
        if self.relation:
            description["relation"] = self.relation
        if self.inverse_name:
            description["relation_field"] = self.inverse_name
        if self.selection is not None:
            description["selection"] = [list(option) for option in self.selection]
        return description


def Char(string: str = "", **options: Any) -> Field:
    return Field("char", string, **options)


def Text(string: str = "", **options: Any) -> Field:
    return Field("text", string, **options)


def Html(string: str = "", **options: Any) -> Field:
    return Field("html", string, **options)


def Boolean(string: str = "", **options: Any) -> Field:
    return Field("boolean", string, **options)


def Integer(string: str = "", **options: Any) -> Field:
    return Field("integer", string, **options)


def Float(string: str = "", **options: Any) -> Field:
    return Field("float", string, **options)


def Datetime(string: str = "", **options: Any) -> Field:
    return Field("datetime", string, **options)


def Binary(string: str = "", **options: Any) -> Field:
    return Field("binary", string, **options)


def Selection(options: tuple[tuple[str, str], ...], string: str = "", **more: Any) -> Field:
    return Field("selection", string, selection=options, **more)


def Many2one(relation: str, string: str = "", **options: Any) -> Field:
    return Field("many2one", string, relation=relation, **options)


def One2many(relation: str, inverse_name: str, string: str = "", **options: Any) -> Field:
    return Field("one2many", string, relation=relation, inverse_name=inverse_name, **options)


def Many2many(relation: str, string: str = "", **options: Any) -> Field:
    return Field("many2many", string, relation=relation, **options)


ACCESS_ALL, ACCESS_INTERNAL, ACCESS_ADMIN, ACCESS_NONE = "all", "internal", "admin", "none"
ACCESS_ROWS = "ir.model.access"


@dataclass
class Model:
    """A model: its fields and the few class attributes of Odoo that change behaviour here."""

    name: str
    description: str
    fields: dict[str, Field]
    order: str = "id"
    rec_name: str | None = "name"
    parent_name: str | None = None
    # Odoo's _inherits: (parent model, many2one field), as res.users delegates to res.partner.
    inherits: tuple[str, str] | None = None
    chatter: bool = False
    # Odoo's _mail_post_access: the access to the record that posting a message needs.
    mail_post_access: str = "write"
    # Who passes the access-control list, per operation; portal and public users are "all" only.
    access: dict[str, str] = field(default_factory=dict)
    # The ir.model.access rows of business groups, group xmlid -> the operations they grant ("r",
    # "w", "c", "u"), for an operation ``access`` gives internal users: an internal user in any of
    # these groups has what they grant, no more (sale.order: "Project / Administrator" reads it, a
    # salesman writes it). An internal user in none of them keeps ``access``: the demo's users stand
    # for users given the rights the real database gives them.
    group_access: dict[str, str] = field(default_factory=dict)
    # Record rules for non-internal users, as a domain built for the calling user.
    share_rule: Callable[[Env], list] | None = None
    # Record rules that bind every caller, internal users too (a group's rule, as sale.order's
    # "Personal Orders"): the domain for the calling user, or None when none applies to it.
    user_rule: Callable[[Env], list | None] | None = None
    # Record rules that a domain cannot express (mail.message): the readable subset of ids.
    share_filter: Callable[[Env, set[int]], set[int]] | None = None
    display: Callable[[Env, int], str] | None = None
    before_create: Callable[[Env, dict], dict] | None = None
    after_create: Callable[[Env, int, dict], None] | None = None
    before_write: Callable[[Env, list[int], dict], dict] | None = None
    before_unlink: Callable[[Env, list[int]], None] | None = None

    def __post_init__(self) -> None:
        base = {
            "id": Integer("ID", readonly=True),
            "display_name": Char("Display Name", compute=self._compute_display_name),
            "create_uid": Many2one("res.users", "Created by", readonly=True),
            "create_date": Datetime("Created on", readonly=True),
            "write_uid": Many2one("res.users", "Last Updated by", readonly=True),
            "write_date": Datetime("Last Updated on", readonly=True),
        }
        for name, value in base.items():
            self.fields.setdefault(name, value)
        for name, value in self.fields.items():
            value.name = name

    def _compute_display_name(self, env: Env, record_id: int) -> str:
        return display_name(env, self.name, record_id)

    @property
    def has_active(self) -> bool:
        return "active" in self.fields


def now_string() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


class Database:
    """All records of one database, behind one lock: every RPC holds it while it reads or writes."""

    def __init__(self, name: str, version: str, models: dict[str, Model]) -> None:
        self.name = name
        self.version = version
        self.major = int(version.split(".")[0])
        self.lock = threading.RLock()
        self.models = models
        self.rows: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in models}
        self.sequences: dict[str, int] = {name: 1 for name in models}
        self.passwords: dict[int, str] = {}
        self.api_keys: dict[int, list[str]] = {}
        # Each key's res.users.apikeys row (its name and expiration_date).
        self.api_key_rows: dict[str, int] = {}
        self.blobs: dict[int, bytes] = {}
        self.outbox: list[Any] = []
        self.sessions: dict[str, int] = {}
        # (model, res_id) -> mail.message ids in ascending order, so that posting stays cheap in
        # long benchmarks; entries of deleted or moved messages are filtered out when read.
        self.thread_messages: dict[tuple[str, int], list[int]] = {}
        # (model, field) -> value -> ids that held it, for fields declared with index=True;
        # like thread_messages, entries whose row has moved on are filtered out when read.
        self.indexes: dict[tuple[str, str], dict[Any, list[int]]] = {}

    @property
    def groups_field(self) -> str:
        # Odoo 19 renamed res.users.groups_id to group_ids (DESIGN.md, ODOO_FACTS.md e).
        return "group_ids" if self.major >= 19 else "groups_id"

    @property
    def group_users_field(self) -> str:
        # The same refactoring renamed the inverse, res.groups.users, to user_ids; unlike the
        # field above, this was not measured on a real Odoo 19.
        return "user_ids" if self.major >= 19 else "users"

    def new_id(self, model: str, wanted: int | None = None) -> int:
        if wanted is not None:
            if wanted in self.rows[model]:
                raise ValueError(f"{model} {wanted} exists already")
            self.sequences[model] = max(self.sequences[model], wanted + 1)
            return wanted
        new = self.sequences[model]
        self.sequences[model] = new + 1
        return new

    def xmlid(self, xmlid: str) -> tuple[str, int] | None:
        """(model, res_id) of an external id, read from the ir.model.data rows, as Odoo's
        _xmlid_lookup reads the table: a row created or written over RPC (as `note-gateway
        setup-odoo` does) counts, and one deleted with its record (unlink_records) is gone. A second
        store of xmlids did neither (found by the lifecycle review)."""
        module, _, name = xmlid.partition(".")
        for row in self.rows["ir.model.data"].values():
            if row.get("module") == module and row.get("name") == name:
                return str(row.get("model") or ""), int(row.get("res_id") or 0)
        return None

    def xmlid_to_id(self, xmlid: str) -> int | None:
        found = self.xmlid(xmlid)
        return found[1] if found else None

    def xmlids(self, model: str, record_id: int) -> list[str]:
        """The external ids of one record."""
        return [f"{row['module']}.{row['name']}" for row in self.rows["ir.model.data"].values()
                if row.get("model") == model and row.get("res_id") == record_id]


class Env:
    """Who is calling and with which context, as Odoo's Environment; ``su`` skips access checks."""

    def __init__(self, db: Database, uid: int, context: dict | None = None, su: bool = False) -> None:
        self.db = db
        self.uid = uid
        self.context = dict(context or {})
        self.su = su

    def sudo(self) -> Env:
        return Env(self.db, self.uid, self.context, su=True)

    def with_context(self, **values: Any) -> Env:
        return Env(self.db, self.uid, {**self.context, **values}, self.su)

    @property
    def user(self) -> dict[str, Any]:
        return self.db.rows["res.users"].get(self.uid) or {}

    @property
    def partner_id(self) -> int:
        return self.user.get("partner_id") or 0

    def in_group(self, xmlid: str, uid: int | None = None) -> bool:
        group_id = self.db.xmlid_to_id(xmlid)
        user = self.db.rows["res.users"].get(self.uid if uid is None else uid) or {}
        return group_id is not None and group_id in (user.get(self.db.groups_field) or [])

    def is_internal(self) -> bool:
        return self.su or self.in_group("base.group_user")

    def is_admin(self) -> bool:
        return self.su or self.uid == 1 or self.in_group("base.group_system")

    def commercial_partner_id(self) -> int:
        return commercial_partner(self.db, self.partner_id)


def commercial_partner(db: Database, partner_id: int) -> int:
    partners = db.rows["res.partner"]
    seen = set()
    current = partner_id
    while current in partners and current not in seen:
        seen.add(current)
        row = partners[current]
        if row.get("is_company") or not row.get("parent_id"):
            return current
        current = row["parent_id"]
    return partner_id


# --- Values -------------------------------------------------------------------------------------


def raw_value(env: Env, model: str, record_id: int, name: str) -> Any:
    """The value as Odoo stores it: an id (or False) for a many2one, a list of ids for x2many."""
    spec = env.db.models[model].fields[name]
    if name == "id":
        return record_id
    if spec.compute is not None:
        return spec.compute(env, record_id)
    if spec.type == "one2many":
        return [
            other_id
            for other_id, row in env.db.rows[spec.relation].items()
            if row.get(spec.inverse_name) == record_id
        ]
    value = env.db.rows[model][record_id].get(name)
    if value is None:
        return spec.empty()
    return list(value) if spec.x2many else value


def display_name(env: Env, model: str, record_id: int) -> str:
    spec = env.db.models[model]
    if record_id not in env.db.rows[model]:
        return ""
    if spec.display is not None:
        return spec.display(env, record_id)
    if spec.rec_name and spec.rec_name in spec.fields:
        value = raw_value(env, model, record_id, spec.rec_name)
        return value if isinstance(value, str) else ""
    return f"{model},{record_id}"


def active_filter(env: Env, model: str, ids: list[int]) -> list[int]:
    """x2many values read without archived records, as Odoo reads them unless active_test is off."""
    spec = env.db.models[model]
    if not spec.has_active or not env.context.get("active_test", True):
        return ids
    rows = env.db.rows[model]
    return [record_id for record_id in ids if record_id in rows and rows[record_id].get("active", True)]


def read_value(env: Env, model: str, record_id: int, spec: Field, load: str | None) -> Any:
    value = raw_value(env, model, record_id, spec.name)
    if spec.type == "many2one":
        if not value or value not in env.db.rows[spec.relation]:
            return False
        if load == "_classic_read":
            return [value, display_name(env, spec.relation, value)]
        return value
    if spec.x2many:
        return active_filter(env, spec.relation, value)
    if value is None:
        return False
    return value


# --- Domains ------------------------------------------------------------------------------------

OPERATORS = (
    "=", "!=", "<=", "<", ">", ">=", "=?", "=like", "=ilike", "like", "not like", "ilike",
    "not ilike", "in", "not in", "child_of", "parent_of", "any", "not any", "not =like", "not =ilike",
)
NEGATIONS = {
    "!=": "=", "not in": "in", "not like": "like", "not ilike": "ilike", "not =like": "=like",
    "not =ilike": "=ilike", "not any": "any",
}
TRUE_LEAF, FALSE_LEAF = (1, "=", 1), (0, "=", 1)


def _is_leaf(token: Any) -> bool:
    return isinstance(token, (list, tuple)) and len(token) == 3


def normalize_domain(domain: Any) -> list:
    """Prefix notation with the implicit '&' made explicit, as odoo.osv.expression does."""
    if not domain:
        return []
    if not isinstance(domain, (list, tuple)):
        raise ValueError(f"Invalid domain {domain!r}")
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
        else:
            raise ValueError(f"Invalid leaf {token!r}")
        result.append(tuple(token) if _is_leaf(token) else token)
    if expected != 0:
        raise ValueError(f"Domain {list(domain)} is syntactically not correct.")
    return result


def _check_leaves(env: Env, model: str, domain: list) -> None:
    # Odoo validates every leaf before it evaluates any (expression.py _anyfy_leaves), so an
    # invalid field is reported even when an earlier branch of an '|' would have matched.
    fields = env.db.models[model].fields
    for token in domain:
        if not _is_leaf(token) or token in (TRUE_LEAF, FALSE_LEAF):
            continue
        left, operator, right = token
        if not isinstance(left, str):
            raise ValueError(f"Invalid leaf {token}")
        if str(operator).lower() not in OPERATORS and operator not in ("<>", "=="):
            raise ValueError(f"Invalid leaf {token}")
        path = left.split(".", 1)
        found = fields.get(path[0])
        if found is None:
            raise ValueError(f"Invalid field {model}.{path[0]} in leaf {token}")
        if len(path) > 1:
            if not found.relational:
                raise ValueError(f"Invalid field {model}.{left} in leaf {token}")
            _check_leaves(env, found.relation, [(path[1], operator, right)])
        elif str(operator).lower() in ("any", "not any"):
            if not found.relational:
                raise ValueError(f"Invalid leaf {token}")
            _check_leaves(env, found.relation, normalize_domain(right))


def search_ids(env: Env, model: str, domain: Any, active_test: bool | None = None) -> set[int]:
    """The ids of ``model`` matching ``domain``, before record rules; all rows, unordered."""
    domain = normalize_domain(domain)
    _check_leaves(env, model, domain)
    if active_test is None:
        active_test = bool(env.context.get("active_test", True))
    spec = env.db.models[model]
    if active_test and spec.has_active and not any(_is_leaf(t) and t[0] == "active" for t in domain):
        domain = (["&"] if domain else []) + [("active", "=", True)] + domain
    universe = set(env.db.rows[model])
    if not domain:
        return universe
    result, position = _evaluate(env, model, domain, 0, universe)
    return result


def _evaluate(env: Env, model: str, domain: list, position: int, universe: set[int]) -> tuple[set[int], int]:
    token = domain[position]
    if token == "!":
        inner, position = _evaluate(env, model, domain, position + 1, universe)
        return universe - inner, position
    if token == "&":
        # Every evaluation answers within its universe, so the right side only needs to read the
        # rows the left side kept (as a database filters the rows an index found first).
        left, position = _evaluate(env, model, domain, position + 1, universe)
        return _evaluate(env, model, domain, position, left)
    if token == "|":
        left, position = _evaluate(env, model, domain, position + 1, universe)
        right, position = _evaluate(env, model, domain, position, universe)
        return left | right, position
    return _evaluate_leaf(env, model, token, universe), position + 1


def _evaluate_leaf(env: Env, model: str, leaf: tuple, universe: set[int]) -> set[int]:
    if leaf == TRUE_LEAF:
        return set(universe)
    if leaf == FALSE_LEAF:
        return set()
    left, operator, right = leaf
    operator = {"<>": "!=", "==": "="}.get(operator, str(operator).lower())
    path = left.split(".", 1)
    spec = env.db.models[model].fields[path[0]]
    if len(path) > 1:
        return _evaluate_leaf(env, model, (path[0], "any", [(path[1], operator, right)]), universe)
    if operator == "=?":
        if right is None or right is False:
            return set(universe)
        operator = "="
    if operator in NEGATIONS:
        return universe - _evaluate_leaf(env, model, (left, NEGATIONS[operator], right), universe)
    if operator == "any":
        # A many2one is followed into archived records; an x2many only into active ones
        # (expression.py: many2one comodels get active_test=False).
        comodel = spec.relation
        # Odoo searches the comodel as the caller (its _search checks the access list); record
        # rules themselves are applied as superuser, which env.su stands for here.
        if not env.su:
            check_access(env, comodel, "read")
        matching = search_ids(env, comodel, right, active_test=False if spec.type == "many2one" else None)
        if spec.holder is not None:
            holders = {spec.holder(env, related) for related in active_filter(env, comodel, sorted(matching))}
            return universe & holders
        return {rid for rid in universe if set(_related_ids(env, model, rid, spec)) & matching}
    if operator in ("child_of", "parent_of"):
        comodel = model if spec.name == "id" else spec.relation
        if comodel is None:
            raise ValueError(f"Invalid leaf {leaf}")
        related = _hierarchy(env, comodel, right, operator, leaf)
        return _evaluate_leaf(env, model, (left, "in", sorted(related)), universe)
    if spec.relational or spec.name == "id":
        return {rid for rid in universe if _match_relational(env, model, rid, spec, operator, right)}
    indexed = _indexed_ids(env, model, spec, operator, right, universe)
    if indexed is not None:
        return indexed
    return {rid for rid in universe if _match_value(spec, raw_value(env, model, rid, spec.name), operator, right)}


def _related_ids(env: Env, model: str, record_id: int, spec: Field) -> list[int]:
    value = raw_value(env, model, record_id, spec.name)
    if spec.name == "id":
        return [record_id]
    if spec.type == "many2one":
        return [value] if value else []
    if spec.type == "one2many":
        # A one2many is searched through its comodel, which leaves archived records out.
        return active_filter(env, spec.relation, list(value))
    return list(value)


def _hierarchy(env: Env, model: str, right: Any, operator: str, leaf: tuple) -> set[int]:
    parent_name = env.db.models[model].parent_name
    if parent_name is None:
        raise ValueError(f"Invalid parent field: {model} has no parent in leaf {leaf}")
    if _is_names(right):
        names = [right] if isinstance(right, str) else list(right)
        start = {rid for name in names for rid in _name_matches(env, model, "ilike", name)}
    elif isinstance(right, int) and not isinstance(right, bool):
        start = {right} if right else set()
    elif isinstance(right, (list, tuple)):
        start = {value for value in right if value}
    else:
        start = set()
    rows = env.db.rows[model]
    found: set[int] = set()
    pending = [rid for rid in start if rid in rows]
    while pending:
        current = pending.pop()
        if current in found:
            continue
        found.add(current)
        if operator == "child_of":
            pending.extend(rid for rid, row in rows.items() if row.get(parent_name) == current)
        else:
            parent = rows[current].get(parent_name)
            if parent:
                pending.append(parent)
    return found


def _is_names(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, str) for v in value)
    )


def _name_matches(env: Env, model: str, operator: str, value: Any) -> set[int]:
    return {
        rid for rid in env.db.rows[model] if _match_value(Char(), display_name(env, model, rid), operator, value)
    }


def _match_relational(env: Env, model: str, record_id: int, spec: Field, operator: str, right: Any) -> bool:
    related = _related_ids(env, model, record_id, spec)
    comodel = model if spec.name == "id" else spec.relation
    if _is_names(right) and operator in ("=", "in", "like", "ilike", "=like", "=ilike"):
        # A name instead of ids: Odoo searches the display name of the comodel.
        values = [right] if isinstance(right, str) else list(right)
        matching = set()
        for value in values:
            matching |= _name_matches(env, comodel, "=" if operator == "in" else operator, value)
        return bool(set(related) & matching)
    if operator == "=":
        if right is False or right is None:
            return not related
        return right in related
    if operator == "in":
        if not isinstance(right, (list, tuple)):
            right = [right]
        wanted = {value for value in right if value}
        return bool(set(related) & wanted) or (not related and any(v is False or v is None for v in right))
    if operator in ("<", ">", "<=", ">="):
        return any(_match_value(Integer(), value, operator, right) for value in related)
    return any(_match_value(Integer(), value, operator, right) for value in related)


def _like_pattern(pattern: str, wrap: bool) -> re.Pattern:
    # SQL LIKE: '%' is any run, '_' any one character, and a backslash makes the next character
    # literal (PostgreSQL's default ESCAPE); Odoo passes the value through unchanged.
    if wrap:
        pattern = f"%{pattern}%"
    parts = []
    characters = iter(pattern)
    for character in characters:
        if character == "\\":
            parts.append(re.escape(next(characters, "")))
        elif character == "%":
            parts.append(".*")
        elif character == "_":
            parts.append(".")
        else:
            parts.append(re.escape(character))
    return re.compile("".join(parts), re.DOTALL)


def _match_value(spec: Field, value: Any, operator: str, right: Any) -> bool:
    empty = value is None or value is False or (spec.type in TEXTUAL and value == "")
    if spec.type == "boolean":
        value = bool(value)
        empty = False
        if operator in ("=", "in"):
            wanted = right if isinstance(right, (list, tuple)) else [right]
            return value in [bool(v) for v in wanted]
    if operator == "=":
        if right is False or right is None:
            return empty
        return not empty and value == right
    if operator == "in":
        wanted = right if isinstance(right, (list, tuple)) else [right]
        if empty:
            return any(v is False or v is None for v in wanted)
        return value in [v for v in wanted if v is not False and v is not None]
    if operator in ("like", "ilike", "=like", "=ilike"):
        if empty or right is False or right is None:
            return False
        right, subject = str(right), str(value)
        if operator in ("ilike", "=ilike"):
            # PostgreSQL's ILIKE lowercases both sides and compares what is left (like.c): "Ü"
            # matches "ü", but "ſ" does not match "s" nor "ı" "i", as Python's re.IGNORECASE would
            # have them. Odoo passes the operator to the database unchanged (its unaccent option,
            # which would also make "ü" match "u", is off by default).
            right, subject = right.lower(), subject.lower()
        return _like_pattern(right, wrap=operator in ("like", "ilike")).fullmatch(subject) is not None
    if operator in ("<", ">", "<=", ">="):
        if empty or right is False or right is None:
            return False
        try:
            if operator == "<":
                return value < right
            if operator == ">":
                return value > right
            if operator == "<=":
                return value <= right
            return value >= right
        except TypeError:
            return False
    raise ValueError(f"Invalid operator {operator!r}")


# --- Ordering -----------------------------------------------------------------------------------

_ORDER_PART = re.compile(r"^\s*\"?(\w+)\"?(?:\s+(asc|desc))?(?:\s+nulls\s+(first|last))?\s*$", re.IGNORECASE)


def sort_ids(env: Env, model: str, ids: set[int] | list[int], order: str | None) -> list[int]:
    spec = env.db.models[model]
    order = order or spec.order
    keys: list[tuple[str, bool]] = []
    for part in order.split(","):
        if not part.strip():
            continue
        match = _ORDER_PART.match(part)
        if not match or match.group(1) not in spec.fields:
            raise ValueError(f'Invalid "order" specified ({order}). A valid "order" specification is a '
                             f"comma-separated list of valid field names (optionally followed by asc/desc "
                             f"for the direction)")
        keys.append((match.group(1), (match.group(2) or "asc").lower() == "desc"))
    result = sorted(ids)
    # Stable sorts from the last key to the first give the combined order.
    for name, descending in reversed(keys):
        field_spec = spec.fields[name]

        def key(record_id: int, name: str = name, field_spec: Field = field_spec) -> tuple:
            value = raw_value(env, model, record_id, name)
            if field_spec.type == "many2one":
                value = display_name(env, field_spec.relation, value) if value else None
            elif field_spec.x2many:
                value = None
            if value is None or value is False and field_spec.type != "boolean":
                return (1, "")
            if isinstance(value, str):
                return (0, value.lower())
            return (0, value)

        nulls = [rid for rid in result if key(rid)[0] == 1]
        present = [rid for rid in result if key(rid)[0] == 0]
        present.sort(key=lambda rid: key(rid)[1], reverse=descending)
        # PostgreSQL puts NULLs last in ascending order and first in descending order.
        result = nulls + present if descending else present + nulls
    return result


# --- Access control -----------------------------------------------------------------------------

_OPERATION_WORDS = {
    "read": "You are not allowed to access '{kind}' ({model}) records.",
    "write": "You are not allowed to modify '{kind}' ({model}) records.",
    "create": "You are not allowed to create '{kind}' ({model}) records.",
    "unlink": "You are not allowed to delete '{kind}' ({model}) records.",
}
_GROUP_LABELS = {ACCESS_INTERNAL: "User types / Internal User", ACCESS_ADMIN: "Administration / Access Rights"}


def check_access(env: Env, model: str, operation: str) -> None:
    """The access-control list (ir.model.access) check, with Odoo's wording."""
    if env.su:
        return
    spec = env.db.models[model]
    needed = spec.access.get(operation, ACCESS_INTERNAL)
    allowed = (
        needed == ACCESS_ALL
        or (needed == ACCESS_INTERNAL and env.is_internal())
        or (needed == ACCESS_ADMIN and env.is_admin())
        # Technical models the gateway reads: Access Rights, or a group given access by an
        # ir.model.access row (as `note-gateway setup-odoo` creates for the gateway's group).
        or (needed == ACCESS_ROWS and (env.is_admin() or env.in_group("base.group_erp_manager")
                                       or _granted_by_rows(env, model, operation)))
    )
    held = [perms for xmlid, perms in spec.group_access.items() if env.in_group(xmlid)]
    if allowed and needed == ACCESS_INTERNAL and held:
        allowed = any(operation[0] in perms for perms in held)
        if not allowed:
            groups = "\n".join(f"\t- {_group_label(env, xmlid)}" for xmlid, perms in spec.group_access.items()
                               if operation[0] in perms)
            header = _OPERATION_WORDS[operation].format(kind=spec.description, model=model)
            raise AccessError(f"{header}\n\nThis operation is allowed for the following groups:\n{groups}\n\n"
                              "Contact your administrator to request access if necessary.")
    if allowed:
        return
    header = _OPERATION_WORDS[operation].format(kind=spec.description, model=model)
    if needed == ACCESS_NONE:
        groups = "No group currently allows this operation."
    elif needed == ACCESS_ROWS:
        groups = f"This operation is allowed for the following groups:\n\t- {_GROUP_LABELS[ACCESS_ADMIN]}"
    else:
        groups = f"This operation is allowed for the following groups:\n\t- {_GROUP_LABELS[needed]}"
    raise AccessError(f"{header}\n\n{groups}\n\nContact your administrator to request access if necessary.")


def _group_label(env: Env, xmlid: str) -> str:
    group_id = env.db.xmlid_to_id(xmlid)
    return display_name(env.sudo(), "res.groups", group_id) if group_id else xmlid


def has_access(env: Env, model: str, ids: list[int], operation: str) -> bool:
    """models.py has_access (Odoo 18): the access list, then the record rules on ``ids``; never raises."""
    if env.su:
        return True
    try:
        check_access(env, model, operation)
    except AccessError:
        return False
    present = {record_id for record_id in ids if record_id in env.db.rows[model]}
    return not (present - rule_filter(env, model, present))


def _granted_by_rows(env: Env, model: str, operation: str) -> bool:
    models = env.db.rows.get("ir.model", {})
    groups = set(env.user.get(env.db.groups_field) or [])
    for row in env.db.rows.get("ir.model.access", {}).values():
        if not row.get("active", True) or not row.get(f"perm_{operation}"):
            continue
        if (models.get(row.get("model_id")) or {}).get("model") != model:
            continue
        if not row.get("group_id") or row["group_id"] in groups:
            return True
    return False


def rule_filter(env: Env, model: str, ids: set[int]) -> set[int]:
    """The subset of ``ids`` that the record rules let the caller read."""
    if env.su:
        return ids
    spec = env.db.models[model]
    if spec.user_rule is not None:
        domain = spec.user_rule(env)
        if domain is not None:
            ids = ids & search_ids(env.sudo(), model, domain, active_test=False)
    if env.is_internal():
        return ids
    if spec.share_filter is not None:
        ids = spec.share_filter(env, ids)
    if spec.share_rule is not None:
        ids = ids & search_ids(env.sudo(), model, spec.share_rule(env), active_test=False)
    return ids


def _rules_apply(env: Env, model: str) -> bool:
    """Whether a record rule applies to the caller on ``model`` (rule_filter would filter)."""
    if env.su:
        return False
    spec = env.db.models[model]
    if spec.user_rule is not None and spec.user_rule(env) is not None:
        return True
    return not env.is_internal() and (spec.share_filter is not None or spec.share_rule is not None)


def rule_error(env: Env, model: str, operation: str) -> AccessError:
    spec = env.db.models[model]
    name = display_name(env, "res.users", env.uid)
    return AccessError(
        "Uh-oh! Looks like you have stumbled upon some top-secret records.\n\n"
        f"Sorry, {name} (id={env.uid}) doesn't have '{operation}' access to:\n"
        f"- {spec.description} ({model})\n\n"
        "If you really, really need access, perhaps you can win over your friendly administrator "
        "with a batch of freshly baked cookies."
    )


def missing_error(env: Env, model: str, ids: list[int]) -> MissingError:
    return MissingError(
        "Record does not exist or has been deleted.\n"
        f"(Record: {model}({', '.join(str(i) for i in ids)},), User: {env.uid})"
    )


def check_records(env: Env, model: str, ids: list[int], operation: str = "read") -> None:
    """Missing records raise MissingError, forbidden ones AccessError, as Odoo's check_access."""
    rows = env.db.rows[model]
    missing = [record_id for record_id in ids if record_id not in rows]
    if missing:
        raise missing_error(env, model, missing)
    check_access(env, model, operation)
    if set(ids) - rule_filter(env, model, set(ids)):
        raise rule_error(env, model, operation)


# --- Method registry ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    function: Callable[..., Any]
    # Record methods receive the ids (the first positional argument over RPC), model methods not.
    on_records: bool


METHODS: dict[str, dict[str, Method]] = {}


def rpc(models: str | tuple[str, ...] = "*", name: str | None = None, on_records: bool = False):
    """Register a function as a public method of the given models ('*' for every model)."""

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        for model in (models,) if isinstance(models, str) else models:
            METHODS.setdefault(model, {})[name or function.__name__] = Method(function, on_records)
        return function

    return register


def find_method(env: Env, model: str, name: str) -> Method | None:
    specific = METHODS.get(model, {}).get(name)
    if specific is not None:
        return specific
    if env.db.models[model].chatter:
        chatter = METHODS.get("mail.thread", {}).get(name)
        if chatter is not None:
            return chatter
    return METHODS.get("*", {}).get(name)


def as_ids(value: Any) -> list[int]:
    if value is False or value is None:
        return []
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    raise ValueError(f"Invalid record ids: {value!r}")


def ensure_one(model: str, ids: list[int]) -> int:
    if len(ids) != 1:
        raise ValueError(f"Expected singleton: {model}({', '.join(str(i) for i in ids)}{',' if len(ids) == 1 else ''})")
    return ids[0]


# --- Generic methods ----------------------------------------------------------------------------


def search_records(
    env: Env, model: str, domain: Any, offset: int = 0, limit: int | None = None, order: str | None = None
) -> list[int]:
    check_access(env, model, "read")
    matching = rule_filter(env, model, search_ids(env, model, domain or []))
    ordered = sort_ids(env, model, matching, order)
    ordered = ordered[offset or 0:]
    return ordered[:limit] if limit else ordered


@rpc(name="search")
def _search(env: Env, model: str, domain: Any, offset: int = 0, limit: int | None = None,
            order: str | None = None) -> list[int]:
    return search_records(env, model, domain, offset, limit, order)


@rpc(name="search_count")
def _search_count(env: Env, model: str, domain: Any, limit: int | None = None) -> int:
    return len(search_records(env, model, domain, limit=limit))


def read_records(env: Env, model: str, ids: list[int], fields: Any = None,
                 load: str | None = "_classic_read") -> list[dict]:
    spec = env.db.models[model]
    if fields:
        names = [name for name in fields if name != "id"]
        for name in names:
            if name not in spec.fields:
                raise ValueError(f"Invalid field {name!r} on model {model!r}")
    else:
        names = [name for name in spec.fields if name != "id"]
    rows = env.db.rows[model]
    if any(record_id not in rows for record_id in ids) and not _rules_apply(env, model):
        # Odoo 18 looks for missing ids only in its record-rule check (check_access: MissingError).
        # Where no rule applies to the reader, a read of "id" alone fetches nothing and answers
        # the ids as asked, and any other field leaves the missing ones out, measured on a real
        # Odoo 18: read([999999], ["id"]) == [{"id": 999999}], read([999999], ["display_name"]) == [].
        check_access(env, model, "read")
        if not names:
            return [{"id": record_id} for record_id in dict.fromkeys(ids)]
        ids = [record_id for record_id in ids if record_id in rows]
    check_records(env, model, ids, "read")
    result = []
    for record_id in dict.fromkeys(ids):
        values = {"id": record_id}
        for name in names:
            values[name] = read_value(env, model, record_id, spec.fields[name], load)
        result.append(values)
    return result


@rpc(name="read", on_records=True)
def _read(env: Env, model: str, ids: list[int], fields: Any = None, load: str | None = "_classic_read") -> list[dict]:
    return read_records(env, model, ids, fields, load)


@rpc(name="search_read")
def _search_read(
    env: Env, model: str, domain: Any = None, fields: Any = None, offset: int = 0, limit: int | None = None,
    order: str | None = None, load: str | None = "_classic_read",
) -> list[dict]:
    ids = search_records(env, model, domain or [], offset, limit, order)
    return read_records(env, model, ids, fields, load) if ids else []


@rpc(name="exists", on_records=True)
def _exists(env: Env, model: str, ids: list[int]) -> list[int]:
    return [record_id for record_id in ids if record_id in env.db.rows[model]]


@rpc(name="fields_get")
def _fields_get(env: Env, model: str, allfields: Any = None, attributes: Any = None) -> dict:
    spec = env.db.models[model]
    result = {}
    for name, value in spec.fields.items():
        if allfields and name not in allfields:
            continue
        described = value.describe()
        if attributes:
            described = {key: val for key, val in described.items() if key in attributes}
        result[name] = described
    return result


@rpc(name="default_get")
def _default_get(env: Env, model: str, fields_list: Any) -> dict:
    spec = env.db.models[model]
    result = {}
    for name in fields_list or []:
        value = spec.fields.get(name)
        if value is not None and value.default is not None:
            result[name] = value.default(env) if callable(value.default) else value.default
    return result


@rpc(name="name_search")
def _name_search(env: Env, model: str, name: str = "", args: Any = None, operator: str = "ilike",
                 limit: int = 100) -> list:
    check_access(env, model, "read")
    ids = rule_filter(env, model, search_ids(env, model, args or []))
    if name:
        ids &= _name_matches(env, model, operator, name)
    ordered = sort_ids(env, model, ids, None)[: limit or None]
    return [[record_id, display_name(env, model, record_id)] for record_id in ordered]


def _x2many_commands(env: Env, spec: Field, current: list[int], commands: Any, owner: tuple[str, int]) -> list[int]:
    """Apply Odoo's x2many commands (or a plain list of ids) to the current ids."""
    if commands is False or commands is None:
        return []
    if commands and all(isinstance(c, int) and not isinstance(c, bool) for c in commands):
        return list(dict.fromkeys(commands))
    result = list(current)
    for command in commands or []:
        code = command[0]
        if code == 0:
            values = dict(command[2])
            if spec.type == "one2many":
                values[spec.inverse_name] = owner[1]
            result.append(create_record(env, spec.relation, values))
        elif code == 1:
            write_records(env, spec.relation, [command[1]], command[2])
        elif code in (2, 3):
            if command[1] in result:
                result.remove(command[1])
            if code == 2:
                unlink_records(env, spec.relation, [command[1]])
        elif code == 4:
            if command[1] not in result:
                result.append(command[1])
        elif code == 5:
            result = []
        elif code == 6:
            result = list(dict.fromkeys(command[2]))
        else:
            raise ValueError(f"Invalid x2many command {command!r}")
    return result


def _assign(env: Env, model: str, record_id: int, name: str, value: Any) -> None:
    spec = env.db.models[model].fields.get(name)
    if spec is None:
        raise ValueError(f"Invalid field {name!r} on model {model!r}")
    if spec.compute is not None:
        if spec.inverse is not None:
            spec.inverse(env, record_id, value)
        return
    if spec.type == "one2many":
        current = raw_value(env, model, record_id, name)
        wanted = _x2many_commands(env, spec, current, value, (model, record_id))
        rows = env.db.rows[spec.relation]
        for other in set(current) - set(wanted):
            if other in rows:
                rows[other][spec.inverse_name] = False
        for other in wanted:
            if other in rows:
                rows[other][spec.inverse_name] = record_id
        return
    row = env.db.rows[model][record_id]
    if spec.type == "many2many":
        wanted = _x2many_commands(env, spec, row.get(name) or [], value, (model, record_id))
        if any(other not in env.db.rows[spec.relation] for other in wanted):
            raise foreign_key_error(env, model, spec)
        row[name] = wanted
    elif spec.type == "many2one":
        if isinstance(value, (list, tuple)):
            value = value[0] if value else False
        if value and value not in env.db.rows[spec.relation]:
            raise foreign_key_error(env, model, spec)
        row[name] = value or False
    else:
        row[name] = value
        if spec.index and isinstance(value, (str, int)):
            env.db.indexes.setdefault((model, name), {}).setdefault(value, []).append(record_id)


def _indexed_ids(env: Env, model: str, spec: Field, operator: str, right: Any, universe: set[int]) -> set[int] | None:
    """The rows of ``universe`` whose indexed ``spec`` is one of the values, or None to scan."""
    if not spec.index or spec.compute is not None or operator not in ("=", "in"):
        return None
    values = right if operator == "in" and isinstance(right, (list, tuple)) else [right]
    if not values or not all(isinstance(value, (str, int)) and not isinstance(value, bool) and value != ""
                             for value in values):
        return None  # False/None/"" mean "not set", which only a scan answers
    rows = env.db.rows[model]
    index = env.db.indexes.get((model, spec.name), {})
    return {
        record_id
        for value in values for record_id in index.get(value, ())
        if record_id in universe and rows[record_id].get(spec.name) == value
    }


def foreign_key_error(env: Env, model: str, spec: Field) -> ValidationError:
    # What PostgreSQL's foreign key check becomes in odoo/service/model.py _as_validation_error.
    table = model.replace(".", "_")
    return ValidationError(
        "The operation cannot be completed: another model requires the record being deleted. If possible, "
        f"archive it instead.\n\nModel: {env.db.models[model].description} ({model})\n"
        f"Constraint: {table}_{spec.name}_fkey\n"
    )


def create_record(env: Env, model: str, values: dict, wanted_id: int | None = None) -> int:
    spec = env.db.models[model]
    check_access(env, model, "create")
    values = dict(values)
    for name in values:
        if name not in spec.fields:
            raise ValueError(f"Invalid field {name!r} on model {model!r}")
    if spec.before_create is not None:
        values = spec.before_create(env, values)
    for name, value in spec.fields.items():
        if name not in values and value.default is not None:
            values[name] = value.default(env) if callable(value.default) else value.default
    for name, value in spec.fields.items():
        if value.required and not values.get(name):
            raise ValidationError(
                "The operation cannot be completed:\n- Create/update: a mandatory field is not set.\n"
                "- Delete: another model requires the record being deleted. If possible, archive it instead.\n\n"
                f"Model: {spec.description} ({model})\nField: {value.string or name} ({name})\n"
            )
    record_id = env.db.new_id(model, wanted_id)
    now = now_string()
    env.db.rows[model][record_id] = {
        "create_uid": env.uid, "create_date": now, "write_uid": env.uid, "write_date": now,
    }
    later = {}
    for name, value in values.items():
        if spec.fields[name].type == "one2many" or spec.fields[name].compute is not None:
            later[name] = value
        else:
            _assign(env, model, record_id, name, value)
    for name, value in later.items():
        _assign(env, model, record_id, name, value)
    if spec.after_create is not None:
        spec.after_create(env, record_id, values)
    return record_id


@rpc(name="check_access_rights")
def _check_access_rights(env: Env, model: str, operation: str, raise_exception: bool = True) -> bool:
    # models.py check_access_rights: Odoo 17, and 18 where it is deprecated (a DeprecationWarning
    # in Odoo's log) in favour of has_access.
    if operation not in _OPERATION_WORDS:
        raise ValueError(f"Invalid access mode {operation!r}")
    if raise_exception:
        check_access(env, model, operation)
        return True
    return has_access(env, model, [], operation)


@rpc(name="has_access", on_records=True)
def _has_access(env: Env, model: str, ids: list[int], operation: str) -> bool:
    # Odoo 18 and later only (models.py has_access); Odoo 17 has no such method.
    if env.db.major < 18:
        raise AttributeError(f"The method 'has_access' does not exist on the model '{model}'")
    if operation not in _OPERATION_WORDS:
        raise ValueError(f"Invalid access mode {operation!r}")
    return has_access(env, model, ids, operation)


@rpc(name="create")
def _create(env: Env, model: str, vals_list: Any) -> Any:
    if isinstance(vals_list, dict):
        return create_record(env, model, vals_list)
    if not isinstance(vals_list, list):
        raise TypeError(f"create() expects a dict or a list of dicts, got {type(vals_list).__name__}")
    return [create_record(env, model, values) for values in vals_list]


def write_records(env: Env, model: str, ids: list[int], values: dict) -> bool:
    spec = env.db.models[model]
    check_records(env, model, ids, "write")
    for name in values:
        if name not in spec.fields:
            raise ValueError(f"Invalid field {name!r} on model {model!r}")
    if spec.before_write is not None:
        values = spec.before_write(env, ids, dict(values))
    now = now_string()
    for record_id in ids:
        for name, value in values.items():
            _assign(env, model, record_id, name, value)
        env.db.rows[model][record_id].update(write_uid=env.uid, write_date=now)
    return True


@rpc(name="write", on_records=True)
def _write(env: Env, model: str, ids: list[int], vals: dict) -> bool:
    return write_records(env, model, ids, vals)


def unlink_records(env: Env, model: str, ids: list[int]) -> bool:
    spec = env.db.models[model]
    ids = [record_id for record_id in ids if record_id in env.db.rows[model]]
    check_records(env, model, ids, "unlink")
    if spec.before_unlink is not None:
        spec.before_unlink(env, ids)
    for record_id in ids:
        env.db.rows[model].pop(record_id, None)
    # Their external ids go with them (models.py unlink deletes the ir.model.data rows of the records).
    data = env.db.rows["ir.model.data"]
    for data_id in [i for i, row in data.items() if row.get("model") == model and row.get("res_id") in ids]:
        data.pop(data_id)
    if spec.chatter:
        # Deleting a document deletes its followers and its messages (mail.thread unlink).
        for other, link in (("mail.followers", "res_model"), ("mail.message", "model")):
            rows = env.db.rows[other]
            for other_id in [i for i, row in rows.items() if row.get(link) == model and row.get("res_id") in ids]:
                rows.pop(other_id)
    return True


@rpc(name="unlink", on_records=True)
def _unlink(env: Env, model: str, ids: list[int]) -> bool:
    return unlink_records(env, model, ids)


@rpc(name="action_archive", on_records=True)
def _action_archive(env: Env, model: str, ids: list[int]) -> bool:
    return write_records(env, model, ids, {"active": False})


@rpc(name="action_unarchive", on_records=True)
def _action_unarchive(env: Env, model: str, ids: list[int]) -> bool:
    return write_records(env.with_context(active_test=False), model, ids, {"active": True})
