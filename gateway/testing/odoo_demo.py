"""The records every test Odoo starts with, and the ODOO_FACTS.md world with the measured ids."""

from __future__ import annotations

from gateway.testing.odoo_mail import subscribe
from gateway.testing.odoo_models import register_api_key, set_xmlid
from gateway.testing.odoo_orm import Database, Env, create_record
from gateway.testing.odoo_security import BUSINESS_GROUPS, seed_security, setup_note_gateway

DEMO_DATABASE = "notes"
# The integration user's API key. Odoo keys are 40 hexadecimal characters (res_users.py
# _generate: binascii.hexlify(os.urandom(20))); this one is public and only good for the test Odoo.
DEMO_API_KEY = "5c1d0a7e9b3f48e2a6d4c8b0f2e1a3d5c7b9e0f4"

COMPANY_ID = 1
ADMIN_UID, ADMIN_PARTNER_ID, ADMIN_LOGIN, ADMIN_PASSWORD = 2, 3, "admin", "admin"
PUBLIC_UID, PUBLIC_PARTNER_ID = 4, 4
MARC_UID, MARC_PARTNER_ID, MARC_LOGIN, MARC_PASSWORD = 6, 7, "demo", "demo"
JOEL_UID, JOEL_PARTNER_ID, JOEL_LOGIN, JOEL_PASSWORD = 7, 8, "portal", "portal"
JOEL_EMAIL = "joel.willis63@example.com"
CUSTOMER_PARTNER_ID = 9
PAULA_UID, PAULA_PARTNER_ID, PAULA_PASSWORD = 8, 42, "contrib-pass-18"
PAULA_EMAIL = PAULA_LOGIN = "portal.contrib@example.com"
PETER_UID, PETER_PARTNER_ID, PETER_PASSWORD = 9, 43, "plain-pass-18"
PETER_EMAIL = PETER_LOGIN = "portal.plain@example.com"
GATEWAY_UID, GATEWAY_PARTNER_ID, GATEWAY_LOGIN, GATEWAY_PASSWORD = 10, 44, "gateway", "gateway-pass-18"
GATEWAY_EMAIL = "gateway@notes.localhost"
ARCHIVED_UID, ARCHIVED_PARTNER_ID, ARCHIVED_PASSWORD = 11, 45, "archived-pass-18"
ARCHIVED_EMAIL = ARCHIVED_LOGIN = "archived.contrib@example.com"

GROUP_USER_ID, GROUP_ERP_MANAGER_ID, GROUP_SYSTEM_ID, GROUP_PORTAL_ID, GROUP_PUBLIC_ID = 1, 2, 3, 10, 11
# Both portal users of the measured database had group 44 besides Portal (facts e: 8 -> [10, 52, 44],
# 9 -> [10, 44]); which group it was is not recorded, so it has a name of our own here.
GROUP_PORTAL_EXTRA_ID = 44
CONTRIBUTOR_GROUP_ID = 52
CONTRIBUTOR_GROUP_XMLID = "note_gateway.group_portal_note_contributor"
# The integration user's group made by `note-gateway setup-odoo` (odoo_security.py).
NOTE_GATEWAY_GROUP_ID = 53
SALESMAN_GROUP_ID, PROJECT_USER_GROUP_ID = 21, 36
PARTNER_MANAGER_GROUP_ID = 32  # base.group_partner_manager, "Extra Rights / Contact Creation"

SUBTYPE_COMMENT_ID, SUBTYPE_NOTE_ID, SUBTYPE_ACTIVITIES_ID, SUBTYPE_TASK_NEW_ID = 1, 2, 3, 4

PROJECT_ID = 7
TASK_ID = 60
# A task of the same project that no portal user follows, so no portal user may read it.
PRIVATE_TASK_ID = 42
SALE_ORDER_ID = 23
SALE_ORDER_NAME = "S00023"
TASK_CREATED_MESSAGE_ID = 568


def _partner(env: Env, partner_id: int, name: str, email: str | None, xmlid: str | None = None, **values) -> int:
    created = create_record(env, "res.partner", {"name": name, "email": email or False, "company_id": COMPANY_ID,
                                                 "tz": "Europe/Brussels", **values}, partner_id)
    if xmlid:
        set_xmlid(env.db, xmlid, "res.partner", created)
    return created


def _user(env: Env, uid: int, partner_id: int, login: str, password: str | None, groups: list[int],
          xmlid: str | None = None, active: bool = True) -> int:
    values = {"login": login, "partner_id": partner_id, env.db.groups_field: groups, "active": active}
    if password:
        values["password"] = password
    created = create_record(env, "res.users", values, uid)
    if xmlid:
        set_xmlid(env.db, xmlid, "res.users", created)
    return created


def _group(env: Env, group_id: int, name: str, xmlid: str, category: str | None = None, share: bool = False) -> int:
    created = create_record(env, "res.groups", {"name": name, "category_name": category or False, "share": share},
                            group_id)
    set_xmlid(env.db, xmlid, "res.groups", created)
    return created


def seed_base(db: Database) -> None:
    """What a fresh database with mail, portal, project and sale holds before any demo data."""
    env = Env(db, 1, su=True)
    _group(env, GROUP_USER_ID, "Internal User", "base.group_user", "User types")
    _group(env, GROUP_ERP_MANAGER_ID, "Access Rights", "base.group_erp_manager", "Administration")
    _group(env, GROUP_SYSTEM_ID, "Settings", "base.group_system", "Administration")
    _group(env, GROUP_PORTAL_ID, "Portal", "base.group_portal", "User types", share=True)
    _group(env, GROUP_PUBLIC_ID, "Public", "base.group_public", "User types", share=True)

    for group_id, name, xmlid, category in BUSINESS_GROUPS:
        _group(env, group_id, name, xmlid, category)

    create_record(env, "res.company", {"name": "YourCompany"}, COMPANY_ID)
    set_xmlid(db, "base.main_company", "res.company", COMPANY_ID)
    _partner(env, 1, "YourCompany", "info@yourcompany.com", "base.main_partner", is_company=True)
    db.rows["res.company"][COMPANY_ID]["partner_id"] = 1
    _partner(env, 2, "OdooBot", "odoobot@example.com", "base.partner_root")
    _user(env, 1, 2, "__system__", None, [GROUP_USER_ID, GROUP_SYSTEM_ID], "base.user_root", active=False)
    _partner(env, ADMIN_PARTNER_ID, "Mitchell Admin", "admin@yourcompany.example.com", "base.partner_admin")
    _user(env, ADMIN_UID, ADMIN_PARTNER_ID, ADMIN_LOGIN, ADMIN_PASSWORD,
          [GROUP_USER_ID, GROUP_ERP_MANAGER_ID, GROUP_SYSTEM_ID, PARTNER_MANAGER_GROUP_ID], "base.user_admin")
    _partner(env, PUBLIC_PARTNER_ID, "Public user", None, "base.public_partner", active=False)
    _user(env, PUBLIC_UID, PUBLIC_PARTNER_ID, "public", None, [GROUP_PUBLIC_ID], "base.public_user", active=False)

    subtypes = [
        (SUBTYPE_COMMENT_ID, "Discussions", "mail.mt_comment", False, True, 0, False),
        (SUBTYPE_NOTE_ID, "Note", "mail.mt_note", True, False, 100, False),
        (SUBTYPE_ACTIVITIES_ID, "Activities", "mail.mt_activities", True, False, 90, False),
        (SUBTYPE_TASK_NEW_ID, "Task Created", "project.mt_task_new", False, False, 1, "project.task"),
    ]
    for subtype_id, name, xmlid, internal, default, sequence, model in subtypes:
        create_record(env, "mail.message.subtype", {"name": name, "internal": internal, "default": default,
                                                    "sequence": sequence, "res_model": model}, subtype_id)
        set_xmlid(db, xmlid, "mail.message.subtype", subtype_id)
    seed_security(db)


def seed_demo(db: Database, note_gateway_setup: bool = True) -> None:
    """The world of ODOO_FACTS.md, with its ids: users, groups, project 7, tasks 60 and 42, S00023."""
    env = Env(db, 1, su=True)
    _partner(env, MARC_PARTNER_ID, "Marc Demo", "mark.brown23@example.com", "base.partner_demo")
    # Marc is a project user and a salesman, as the demo user of the measured database.
    _user(env, MARC_UID, MARC_PARTNER_ID, MARC_LOGIN, MARC_PASSWORD,
          [GROUP_USER_ID, PROJECT_USER_GROUP_ID, SALESMAN_GROUP_ID], "base.user_demo")
    _partner(env, JOEL_PARTNER_ID, "Joel Willis", JOEL_EMAIL, "base.partner_demo_portal")
    _user(env, JOEL_UID, JOEL_PARTNER_ID, JOEL_LOGIN, JOEL_PASSWORD, [GROUP_PORTAL_ID], "base.demo_user0")
    _partner(env, CUSTOMER_PARTNER_ID, "Deco Addict", "deco_addict@yourcompany.example.com", "base.res_partner_2",
             is_company=True)

    _group(env, GROUP_PORTAL_EXTRA_ID, "Portal Extra (test)", "note_gateway_test.group_portal_extra", "Extra Rights",
           share=True)
    _group(env, CONTRIBUTOR_GROUP_ID, "Portal Internal Note Contributor", CONTRIBUTOR_GROUP_XMLID, "Note Gateway", share=True)

    _partner(env, PAULA_PARTNER_ID, "Paula Contributor", PAULA_EMAIL)
    _user(env, PAULA_UID, PAULA_PARTNER_ID, PAULA_LOGIN, PAULA_PASSWORD,
          [GROUP_PORTAL_ID, CONTRIBUTOR_GROUP_ID, GROUP_PORTAL_EXTRA_ID])
    _partner(env, PETER_PARTNER_ID, "Peter Plain", PETER_EMAIL)
    _user(env, PETER_UID, PETER_PARTNER_ID, PETER_LOGIN, PETER_PASSWORD, [GROUP_PORTAL_ID, GROUP_PORTAL_EXTRA_ID])
    _partner(env, GATEWAY_PARTNER_ID, "Email Gateway", GATEWAY_EMAIL)
    _user(env, GATEWAY_UID, GATEWAY_PARTNER_ID, GATEWAY_LOGIN, GATEWAY_PASSWORD, [GROUP_USER_ID])
    if note_gateway_setup:
        # The database as after `note-gateway setup-odoo`: the integration user is in the gateway's group.
        setup_note_gateway(db, NOTE_GATEWAY_GROUP_ID, GATEWAY_UID)
    register_api_key(db, GATEWAY_UID, DEMO_API_KEY)
    _partner(env, ARCHIVED_PARTNER_ID, "Archie Former", ARCHIVED_EMAIL)
    _user(env, ARCHIVED_UID, ARCHIVED_PARTNER_ID, ARCHIVED_LOGIN, ARCHIVED_PASSWORD,
          [GROUP_PORTAL_ID, CONTRIBUTOR_GROUP_ID, GROUP_PORTAL_EXTRA_ID], active=False)

    create_record(env, "project.project", {"name": "Gateway Acceptance Project", "privacy_visibility": "portal",
                                           "user_id": ADMIN_UID}, PROJECT_ID)
    subscribe(env, "project.project", PROJECT_ID, [ADMIN_PARTNER_ID, PAULA_PARTNER_ID, PETER_PARTNER_ID])
    create_record(env, "project.task", {"name": "Gateway acceptance task", "project_id": PROJECT_ID,
                                        "user_ids": [ADMIN_UID]}, TASK_ID)
    # Facts c: the followers of task 60, in this order, all on "Discussions" only.
    subscribe(env, "project.task", TASK_ID, [PAULA_PARTNER_ID, PETER_PARTNER_ID, MARC_PARTNER_ID, ADMIN_PARTNER_ID])
    create_record(env, "mail.message", {
        "model": "project.task", "res_id": TASK_ID, "message_type": "notification",
        "subtype_id": SUBTYPE_TASK_NEW_ID, "body": "", "author_id": ADMIN_PARTNER_ID,
        "record_name": "Gateway acceptance task", "record_company_id": COMPANY_ID,
    }, TASK_CREATED_MESSAGE_ID)
    create_record(env, "project.task", {"name": "Internal follow-up", "project_id": PROJECT_ID,
                                        "user_ids": [ADMIN_UID]}, PRIVATE_TASK_ID)
    subscribe(env, "project.task", PRIVATE_TASK_ID, [ADMIN_PARTNER_ID])

    create_record(env, "sale.order", {"name": SALE_ORDER_NAME, "partner_id": CUSTOMER_PARTNER_ID,
                                      "user_id": ADMIN_UID, "state": "sale", "amount_total": 1250.0}, SALE_ORDER_ID)
    subscribe(env, "sale.order", SALE_ORDER_ID, [ADMIN_PARTNER_ID, PAULA_PARTNER_ID, PETER_PARTNER_ID])
    # New records get ids after those of the measured database.
    db.sequences["mail.message"] = max(db.sequences["mail.message"], 602)
    db.sequences["ir.attachment"] = max(db.sequences["ir.attachment"], 812)
