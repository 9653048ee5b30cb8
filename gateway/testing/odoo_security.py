"""ir.rule and ir.model.access of the test Odoo, with rows copied in meaning from a real Odoo 18."""

from __future__ import annotations

from gateway.testing.odoo_orm import (
    ACCESS_ADMIN,
    ACCESS_ROWS,
    Boolean,
    Char,
    Database,
    Env,
    Many2many,
    Many2one,
    Model,
    Text,
    create_record,
)

# The gateway's own group (created by `note-gateway setup-odoo`): read-only access to the record
# rules and access lists it evaluates, and to ir.model, which a search on model_id.model needs.
# It is not given ir.model.data: check_object_reference resolves xmlids without it (ODOO_FACTS.md e).
NOTE_GATEWAY_GROUP_XMLID = "note_gateway.group_note_gateway"
NOTE_GATEWAY_GROUP_NAME = "Note Gateway"
NOTE_GATEWAY_MODELS = ("ir.rule", "ir.model.access", "ir.model")
GATEWAY_READS = ACCESS_ROWS


def _security_access() -> dict[str, str]:
    return {"read": GATEWAY_READS, "write": ACCESS_ADMIN, "create": ACCESS_ADMIN, "unlink": ACCESS_ADMIN}


def rule_model() -> Model:
    fields = {
        "name": Char("Name"),
        "active": Boolean("Active", default=True),
        "model_id": Many2one("ir.model", "Model", required=True),
        "groups": Many2many("res.groups", "Groups"),
        "domain_force": Text("Domain"),
        "perm_read": Boolean("Read", default=True),
        "perm_write": Boolean("Write", default=True),
        "perm_create": Boolean("Create", default=True),
        "perm_unlink": Boolean("Delete", default=True),
        "global": Boolean(
            "Global", compute=lambda env, rid: not env.db.rows["ir.rule"][rid].get("groups")),
    }
    return Model("ir.rule", "Record Rule", fields, order="model_id DESC,id", access=_security_access())


def model_access_model() -> Model:
    fields = {
        "name": Char("Name", required=True),
        "active": Boolean("Active", default=True),
        "model_id": Many2one("ir.model", "Model", required=True),
        "group_id": Many2one("res.groups", "Group"),
        "perm_read": Boolean("Read Access", default=False),
        "perm_write": Boolean("Write Access", default=False),
        "perm_create": Boolean("Create Access", default=False),
        "perm_unlink": Boolean("Delete Access", default=False),
    }
    return Model("ir.model.access", "Model Access", fields, order="model_id,group_id,name,id",
                 access=_security_access())


# Groups the real rules and access lists name, with the ids and xmlids of the measured database.
BUSINESS_GROUPS = (
    (21, "User: Own Documents Only", "sales_team.group_sale_salesman", "Sales"),
    (22, "User: All Documents", "sales_team.group_sale_salesman_all_leads", "Sales"),
    (23, "Administrator", "sales_team.group_sale_manager", "Sales"),
    (36, "User", "project.group_project_user", "Project"),
    (37, "Administrator", "project.group_project_manager", "Project"),
    # Ids of our own: the measured database had no accounting.
    (30, "Invoicing", "account.group_account_invoice", "Accounting"),
    (31, "Show Accounting Features - Readonly", "account.group_account_readonly", None),
    # base_groups.xml: writing contacts; the administrator is in it (odoo_demo.seed_base).
    (32, "Contact Creation", "base.group_partner_manager", "Extra Rights"),
)

# (model, name, domain_force, group xmlid or None for a global rule, perm_read, active): the read
# rules of the models the gateway serves, as `ir.rule` holds them in a real Odoo 18 with project
# and sale_management (ODOO_FACTS.md h; the texts are those of the security XML files).
_FOLLOWER_ONLY_PROJECTS = """[
            '|',
                '&',
                    ('project_id', '!=', False),
                    '|',
                        ('project_id.privacy_visibility', '!=', 'followers'),
                        ('project_id.message_partner_ids', 'in', [user.partner_id.id]),
                '|',
                    ('message_partner_ids', 'in', [user.partner_id.id]),
                    # to subscribe check access to the record, follower is not enough at creation
                    ('user_ids', 'in', user.id)
        ]"""
_PORTAL_TASK = """[
            ('project_id.privacy_visibility', '=', 'portal'),
            ('active', '=', True),
            '|',
                ('message_partner_ids', 'child_of', [user.partner_id.commercial_partner_id.id]),
                ('project_id.collaborator_ids', 'any', [
                    ('partner_id', '=', user.partner_id.id),
                    ('limited_access', '=', False),
                ]),
        ]"""
RULES = (
    ("project.project", "Project: multi-company", "[('company_id', 'in', company_ids + [False])]", None, True, True),
    ("project.project", "Project: project manager: see all", "[(1, '=', 1)]", "project.group_project_manager",
     True, True),
    ("project.project", "Project: employees: following required for follower-only projects",
     "['|', ('privacy_visibility', '!=', 'followers'), ('message_partner_ids', 'in', [user.partner_id.id])]",
     "base.group_user", True, True),
    ("project.project", "Project: portal users: portal and following",
     "['&', ('privacy_visibility', '=', 'portal'), "
     "('message_partner_ids', 'child_of', [user.partner_id.commercial_partner_id.id])]",
     "base.group_portal", True, True),
    ("project.task", "Project/Task: multi-company", "[('company_id', 'in', company_ids + [False])]", None, True, True),
    ("project.task", "Project/Task: employees: follow required for follower-only projects", _FOLLOWER_ONLY_PROJECTS,
     "base.group_user", True, True),
    ("project.task", "Project/Task: project manager: see all tasks linked to a project or its own tasks",
     "['|', ('project_id', '!=', False), ('user_ids', 'in', user.id)]", "project.group_project_manager", True, True),
    ("project.task", "Project: See private tasks",
     "[('project_id.privacy_visibility', '!=', 'followers'), '|', '|', ('project_id', '!=', False), "
     "('parent_id', '!=', False), ('user_ids', 'in', user.id)]", "project.group_project_user", True, True),
    ("project.task", "Project/Task: portal users: can only see a task if he's a collaborator of the project and a "
     "follower of the task", _PORTAL_TASK, "base.group_portal", True, True),
    # Inactive in a fresh database (project_security.xml:228): must not count.
    ("project.task", "Project/Task: portal users: portal user can edit with project sharing feature", _PORTAL_TASK,
     "base.group_portal", False, False),
    ("project.task", "Project/Task: employees: Full access to own private task only",
     "[('project_id', '=', False), ('user_ids', 'in', user.id), ('parent_id', '=', False)]", "base.group_user",
     True, True),
    ("sale.order", "Sales Order multi-company", "[('company_id', 'in', company_ids)]", None, True, True),
    ("sale.order", "Portal Personal Quotations/Sales Orders",
     "[('message_partner_ids','child_of',[user.commercial_partner_id.id])]", "base.group_portal", True, True),
    ("sale.order", "Personal Orders", "['|',('user_id','=',user.id),('user_id','=',False)]",
     "sales_team.group_sale_salesman", True, True),
    ("sale.order", "All Orders", "[(1,'=',1)]", "sales_team.group_sale_salesman_all_leads", True, True),
    # account/security/account_security.xml (Odoo 18), the read rules of account.move.
    ("account.move", "Account Entry", "[('company_id', 'in', company_ids)]", None, True, True),
    ("account.move", "All Journal Entries", "[(1, '=', 1)]", "account.group_account_invoice", True, True),
    ("account.move", "Portal Personal Account Invoices",
     "[('state', 'not in', ('cancel', 'draft')), ('move_type', 'in', ('out_invoice', 'out_refund', 'in_invoice', "
     "'in_refund')), ('message_partner_ids','child_of',[user.commercial_partner_id.id])]", "base.group_portal",
     True, True),
    ("account.move", "Readonly Move", "[(1, '=', 1)]", "account.group_account_readonly", True, True),
)

# (model, name, group xmlid, read, write, create, unlink): the model access lists of the measured
# database for the same models; account.move's from account/security/ir.model.access.csv (Odoo 18),
# its manager row left out (the test Odoo has no implied groups, and no accounting beyond the chatter).
ACCESS = (
    ("project.project", "project.project on partners", "base.group_user", True, False, False, False),
    ("project.project", "project_portal", "base.group_portal", True, False, False, False),
    ("project.project", "project.project", "project.group_project_user", True, False, False, False),
    ("project.project", "project.project", "project.group_project_manager", True, True, True, True),
    ("project.collaborator", "project.collaborator.manager", "project.group_project_manager", True, True, True, True),
    ("project.collaborator", "project.collaborator.portal", "base.group_portal", True, False, False, False),
    ("project.collaborator", "project.collaborator.user", "project.group_project_user", True, False, False, False),
    ("project.task", "project.task on partners", "base.group_user", True, False, False, False),
    ("project.task", "task_portal", "base.group_portal", True, False, False, False),
    ("project.task", "project.task", "project.group_project_user", True, True, True, True),
    ("sale.order", "sale.order.portal", "base.group_portal", True, False, False, False),
    ("sale.order", "sale.order", "sales_team.group_sale_salesman", True, True, True, False),
    ("sale.order", "sale.order.manager", "sales_team.group_sale_manager", True, True, True, True),
    ("sale.order", "sale.order.project.manager", "project.group_project_manager", True, False, False, False),
    ("account.move", "account.move readonly", "account.group_account_readonly", True, False, False, False),
    ("account.move", "account.move", "account.group_account_invoice", True, True, True, True),
    ("account.move", "account.move.portal", "base.group_portal", True, False, False, False),
)


def _model_id(db: Database, model: str) -> int:
    return next(rid for rid, row in db.rows["ir.model"].items() if row["model"] == model)


def seed_security(db: Database) -> None:
    """The rules and access lists above; groups must exist already."""
    env = Env(db, 1, su=True)
    for model, name, domain, group, perm_read, active in RULES:
        groups = [db.xmlid_to_id(group)] if group else []
        create_record(env, "ir.rule", {"name": name, "model_id": _model_id(db, model), "domain_force": domain,
                                       "groups": groups, "perm_read": perm_read, "active": active})
    for model, name, group, read, write, create, unlink in ACCESS:
        create_record(env, "ir.model.access", {
            "name": name, "model_id": _model_id(db, model), "group_id": db.xmlid_to_id(group),
            "perm_read": read, "perm_write": write, "perm_create": create, "perm_unlink": unlink})


def setup_note_gateway(db: Database, group_id: int, gateway_uid: int) -> None:
    """What `note-gateway setup-odoo` leaves behind: the group, its read access, the integration user in it."""
    from gateway.testing.odoo_models import set_xmlid

    env = Env(db, 1, su=True)
    create_record(env, "res.groups", {"name": NOTE_GATEWAY_GROUP_NAME, "category_name": "Note Gateway"}, group_id)
    set_xmlid(db, NOTE_GATEWAY_GROUP_XMLID, "res.groups", group_id)
    # project.collaborator too: the portal task rule goes through it, and setup-odoo grants it to
    # an integration user that is not a Project user (gateway/setup_odoo.py Setup.run).
    for model in (*NOTE_GATEWAY_MODELS, "project.collaborator"):
        create_record(env, "ir.model.access", {"name": f"note_gateway read {model}", "model_id": _model_id(db, model),
                                               "group_id": group_id, "perm_read": True})
    users = db.rows["res.users"][gateway_uid]
    users[db.groups_field] = list(dict.fromkeys([*(users.get(db.groups_field) or []), group_id]))
