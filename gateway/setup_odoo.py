"""`note-gateway setup-odoo`: the contributor groups and the gateway's own least-privilege group, idempotently."""

from __future__ import annotations

import ast
import re
from typing import Any, Iterable, Mapping

from gateway.config import DEFAULT_CONTRIBUTOR_GROUP
from gateway.odoo import user_group_fields

NOTE_GATEWAY_GROUP = "note_gateway.group_note_gateway"
NOTE_GATEWAY_GROUP_NAME = "Note Gateway"
# What the gateway reads besides business records (issue 7): the record rules and access lists it
# evaluates for the odoo-rules policy, and ir.model, which its searches on model_id.model go
# through. ir.model.data is left out: check_object_reference resolves xmlids without it
# (ODOO_FACTS.md e), and the gateway never needs to list external ids.
READ_MODELS = ("ir.rule", "ir.model.access", "ir.model")
# The name the README and the module this gateway complements give the group (an admin looks for
# it by this name). Earlier versions created it as "Portal note contributors": a group found by its
# xmlid under a former name is renamed, never duplicated; a name an admin chose is left alone.
CONTRIBUTOR_GROUP_NAME = "Portal Internal Note Contributor"
FORMER_CONTRIBUTOR_GROUP_NAMES = ("Portal note contributors",)
# Path operators whose value is a domain on the field's comodel (Odoo 17+).
SUBDOMAIN_OPERATORS = ("any", "not any")


def contributor_group_name(xmlid: str, domains: Iterable[str] = ()) -> str:
    """The name setup-odoo gives the contributor group ``xmlid`` of the alias domains ``domains``.

    The default xmlid keeps the documented name. Any other gets the alias domains that name it, or
    else its xmlid, after that name: every contributor group was created as "Portal Internal Note
    Contributor", and two alias domains with groups of their own left two groups of one name, which
    the admin is told to find by name (onboarding review, repro 07_two_contributor_groups.sh).
    """
    if xmlid == DEFAULT_CONTRIBUTOR_GROUP:
        return CONTRIBUTOR_GROUP_NAME
    return f"{CONTRIBUTOR_GROUP_NAME} ({', '.join(sorted(set(domains))) or xmlid})"


def _leaves(node: ast.AST):
    """(field path, operator, value node) of each leaf of a parsed domain, nested '+' lists included."""
    if isinstance(node, ast.Expression):
        yield from _leaves(node.body)
    elif isinstance(node, ast.BinOp):
        yield from _leaves(node.left)
        yield from _leaves(node.right)
    elif isinstance(node, (ast.List, ast.Tuple)):
        for element in node.elts:
            if (isinstance(element, (ast.List, ast.Tuple)) and len(element.elts) == 3
                    and all(isinstance(part, ast.Constant) and isinstance(part.value, str)
                            for part in element.elts[:2])):
                yield element.elts[0].value, element.elts[1].value, element.elts[2]


def groups_field(version: Any) -> str:
    match = re.search(r"\d+", str(version))
    return user_group_fields(int(match.group()) if match else 0)[0]


def all_groups_field(version: Any) -> str:
    match = re.search(r"\d+", str(version))
    return user_group_fields(int(match.group()) if match else 0)[1]


def _created_id(value: Any) -> int:
    return int(value[0] if isinstance(value, list) else value)


class Setup:
    """The steps, run as an Odoo administrator through any object with odoorpc's ``execute_kw``."""

    def __init__(self, client: Any, version: Any) -> None:
        self.client = client
        self.groups_field = groups_field(version)
        self.all_groups_field = all_groups_field(version)
        self.report: list[str] = []

    def call(self, model: str, method: str, args: list, kwargs: dict | None = None) -> Any:
        return self.client.execute_kw(model, method, args, kwargs or {})

    def group(self, xmlid: str, name: str, former_names: tuple[str, ...] = ()) -> int:
        module, _, local = xmlid.partition(".")
        rows = self.call("ir.model.data", "search_read",
                         [[("module", "=", module), ("name", "=", local), ("model", "=", "res.groups")]],
                         {"fields": ["res_id"]})
        found = rows and self.call("res.groups", "search_read", [[("id", "=", rows[0]["res_id"])]],
                                   {"fields": ["name"]})
        if found:
            group_id = int(rows[0]["res_id"])
            self.report.append(f"found group {xmlid} (id {group_id})")
            if found[0].get("name") in former_names:
                self.call("res.groups", "write", [[group_id], {"name": name}])
                self.report.append(f"renamed group {xmlid} (id {group_id}) from \"{found[0]['name']}\" to \"{name}\"")
            return group_id
        group_id = _created_id(self.call("res.groups", "create", [{"name": name}]))
        if rows:
            # The external id outlived its group: point it at the new one.
            self.call("ir.model.data", "write", [[rows[0]["id"]], {"res_id": group_id}])
        else:
            self.call("ir.model.data", "create", [{"module": module, "name": local, "model": "res.groups",
                                                   "res_id": group_id, "noupdate": True}])
        self.report.append(f"created group {xmlid} (id {group_id}) \"{name}\"")
        return group_id

    def read_access(self, group_id: int, model: str) -> None:
        model_ids = self.call("ir.model", "search", [[("model", "=", model)]])
        if not model_ids:
            raise LookupError(f"model {model} does not exist in this Odoo")
        existing = self.call("ir.model.access", "search_read",
                             [[("model_id", "=", model_ids[0]), ("group_id", "=", group_id)]],
                             {"fields": ["perm_read", "perm_write", "perm_create", "perm_unlink"]})
        if existing:
            row = existing[0]
            if not row["perm_read"] or row["perm_write"] or row["perm_create"] or row["perm_unlink"]:
                # Read only, whatever someone changed by hand: the gateway never writes these.
                self.call("ir.model.access", "write", [[row["id"]], {"perm_read": True, "perm_write": False,
                                                                      "perm_create": False, "perm_unlink": False}])
                self.report.append(f"reset access on {model} to read only (ir.model.access {row['id']})")
            else:
                self.report.append(f"found read access on {model} (ir.model.access {row['id']})")
            return
        access_id = _created_id(self.call("ir.model.access", "create", [{
            "name": f"note_gateway read {model}", "model_id": model_ids[0], "group_id": group_id,
            "perm_read": True, "perm_write": False, "perm_create": False, "perm_unlink": False}]))
        self.report.append(f"created read access on {model} (ir.model.access {access_id})")

    def member(self, login: str, group_id: int, xmlid: str) -> None:
        users = self.call("res.users", "search_read", [[("login", "=", login)]],
                          {"fields": [self.groups_field], "context": {"active_test": False}})
        if not users:
            raise LookupError(f"no Odoo user with login {login!r} (the integration user of the gateway file)")
        user = users[0]
        if group_id in (user.get(self.groups_field) or []):
            self.report.append(f"found {login} in {xmlid}")
            return
        self.call("res.users", "write", [[user["id"]], {self.groups_field: [(4, group_id)]}])
        self.report.append(f"added {login} (uid {user['id']}) to {xmlid}")

    def reached_models(self, model: str, node: ast.AST, found: set[str]) -> None:
        """The models a rule domain on ``model`` goes through (``project_id.collaborator_ids`` ...)."""
        for path, operator, value in _leaves(node):
            current = model
            for name in path.split("."):
                described = self.call(current, "fields_get", [[name]], {"attributes": ["relation"]})
                relation = (described.get(name) or {}).get("relation")
                if not relation:
                    break
                current = relation
                found.add(current)
            else:
                if operator in SUBDOMAIN_OPERATORS:
                    self.reached_models(current, value, found)

    def rule_models(self, models: list[str]) -> set[str]:
        found: set[str] = set()
        for model in models:
            rules = self.call("ir.rule", "search_read", [[("model_id.model", "=", model), ("perm_read", "=", True)]],
                              {"fields": ["domain_force"]})
            for rule in rules:
                try:
                    tree = ast.parse((rule.get("domain_force") or "[]").strip(), mode="eval")
                except SyntaxError:
                    continue  # the gateway refuses such a rule anyway (fail closed)
                self.reached_models(model, tree, found)
        return found - set(models)

    def readable_without(self, logins: list[str], model: str, group_id: int) -> bool:
        """Every integration user reads ``model`` through a group other than the gateway's own."""
        granted = {row["group_id"][0] if row.get("group_id") else None for row in self.call(
            "ir.model.access", "search_read", [[("model_id.model", "=", model), ("perm_read", "=", True)]],
            {"fields": ["group_id"]})} - {group_id}
        if None in granted:
            return True
        users = self.call("res.users", "search_read", [[("login", "in", logins)]],
                          {"fields": [self.all_groups_field], "context": {"active_test": False}})
        return len(users) == len(logins) and all(granted & set(user.get(self.all_groups_field) or ())
                                                 for user in users)

    def run(self, contributor_groups: Mapping[str, Iterable[str]], integration_logins: list[str],
            rule_models: list[str] = ()) -> list[str]:
        """``contributor_groups``: each xmlid with the alias domains that name it."""
        for xmlid, domains in sorted(contributor_groups.items()):
            name = contributor_group_name(xmlid, domains)
            # A group of another xmlid that an earlier version named as the default one is renamed
            # too, so that the names tell the groups apart; a name an admin chose is kept.
            former = FORMER_CONTRIBUTOR_GROUP_NAMES + ((CONTRIBUTOR_GROUP_NAME,) if name != CONTRIBUTOR_GROUP_NAME
                                                       else ())
            reported = len(self.report)
            self.group(xmlid, name, former)
            if self.report[reported].startswith("created group"):
                # A group deleted and created again has a new id; a running gateway takes it at the
                # next note it would refuse as "not in the contributor group" (OdooPool.xmlid_again).
                self.report.append(f"add the contributors to {xmlid} in Odoo; a running gateway takes its new id "
                                   "at the next note it would refuse as not in the contributor group (read again "
                                   "at most once a minute), a reload at once")
        gateway_group = self.group(NOTE_GATEWAY_GROUP, NOTE_GATEWAY_GROUP_NAME)
        for model in READ_MODELS:
            self.read_access(gateway_group, model)
        # The access search runs as the integration user, while Odoo applies a record rule's domain
        # as superuser (BaseModel._apply_ir_rules). A rule that goes through a model the integration
        # user may not read (Odoo 18's portal task rule: project_id.collaborator_ids, readable by
        # Project users and portal users only) makes every search fail. Read access to such models
        # is granted to the gateway's group, read only as for the rules themselves.
        for model in sorted(self.rule_models(list(rule_models))):
            if not self.readable_without(integration_logins, model, gateway_group):
                self.read_access(gateway_group, model)
        for login in integration_logins:
            self.member(login, gateway_group, NOTE_GATEWAY_GROUP)
        return self.report
