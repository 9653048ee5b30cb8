"""Which Odoo group gives the integration user what it needs on each model the gateway knows.

One table for every hint that names a group: the ERROR of a record hidden from the integration
user (policy.py), the ERROR of a post Odoo refused (pipeline.py) and the warning of `doctor` and
`check-config --online` (checks.py). Each row was measured on a real Odoo 18 (project,
sale_management and account installed): an internal user in the group alone, searching a record it
neither follows nor is assigned to, then posting a note on it with ``message_post``
(docs/operations.md, "The Odoo side").

- project.task: "Project / User" does not lift the rule "employees: follow required for
  follower-only projects" (project_security.xml task_visibility_rule; its own rule for project
  users, ir_rule_private_task, leaves such projects out). Only "Project / Administrator"
  (project_manager_all_project_tasks_rule) reads a task of a project visible to invited internal
  users only. project.task lets readers post (_mail_post_access = 'read').
- sale.order: "Sales / User: All Documents" reads and writes every order; "Own Documents Only"
  sees the orders of which it is the salesperson; "Project / Administrator" reads orders (sale_project)
  and may not write them, so it may not post on them (mail.thread's _mail_post_access = 'write').
- res.partner: every internal user reads every contact of its companies; writing, and so posting,
  needs "Extra Rights / Contact Creation" (base.group_partner_manager; the user form shows Extra
  Rights in developer mode only).
- account.move: "Invoicing / Invoicing" (account.group_account_invoice) reads every journal entry;
  "Sales / User: All Documents" only customer invoices and credit notes. account.move lets readers
  post (_mail_post_access = 'read').

A model not in the table gets a hint that names no group: the write hints named the sale.order
group for every model, res.partner included (onboarding review).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelRights:
    # The group, as Odoo's user form names it, that lets the integration user read every record.
    read: str
    # The group that lets it write the model, which Odoo demands to post on it; None where the model
    # lets whoever reads a record post on it (_mail_post_access = 'read').
    write: str | None


KNOWN: dict[str, ModelRights] = {
    "project.task": ModelRights(read="Project / Administrator; Project / User does not see the tasks of projects "
                                     "visible to invited internal users only", write=None),
    "sale.order": ModelRights(read="Sales / User: All Documents", write="Sales / User: All Documents"),
    "res.partner": ModelRights(read="every internal user reads the contacts of its companies: add the contact's "
                                    "company to its companies", write="Extra Rights / Contact Creation"),
    "account.move": ModelRights(read="Invoicing / Invoicing", write=None),
}


def lets_readers_post(model: str) -> bool:
    """Whether Odoo lets a user who may read a record of ``model`` post on it (known models only:
    _mail_post_access cannot be read over RPC)."""
    rights = KNOWN.get(model)
    return rights is not None and rights.write is None


def read_hint(login: str, model: str) -> str:
    """What gives ``login`` read access to every ``model`` record."""
    rights = KNOWN.get(model)
    if rights is None:
        return (f"give {login} read access to every {model} record (a group of the app of {model} whose record "
                "rules show it every record) and every company of those records")
    return f"give {login} read access to every {model} record ({model}: {rights.read})"


def post_hint(login: str, model: str) -> str:
    """What lets ``login`` post on ``model``: write access, or read access where readers may post."""
    rights = KNOWN.get(model)
    if rights is None:
        return (f"give {login} write access to {model} (a group of the app of {model} that may modify its "
                "records), unless the model lets readers post")
    if rights.write is None:
        return f"{read_hint(login, model)}, which is all {model} needs to post on it"
    return f"give {login} write access to {model} ({model}: {rights.write})"
