"""The models of the test Odoo, with Odoo 18's field names, access lists and portal record rules."""

from __future__ import annotations

import base64
import bisect
import email.utils
import hashlib
import mimetypes
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from gateway.testing.odoo_orm import (
    ACCESS_ADMIN,
    ACCESS_ALL,
    ACCESS_INTERNAL,
    ACCESS_ROWS,
    AccessError,
    Binary,
    Boolean,
    Char,
    Database,
    Datetime,
    Env,
    Field,
    Float,
    Html,
    Integer,
    Many2many,
    Many2one,
    Model,
    One2many,
    Selection,
    Text,
    check_access,
    commercial_partner,
    display_name,
    ensure_one,
    now_string,
    raw_value,
    rpc,
    rule_filter,
)

# Message types that the portal chatter shows (mail.thread website_message_ids).
WEBSITE_MESSAGE_TYPES = ("comment", "email", "email_outgoing", "auto_comment")


def _everyone_reads(write: str = ACCESS_INTERNAL) -> dict[str, str]:
    return {"read": ACCESS_ALL, "write": write, "create": write, "unlink": write}


def _internal_only() -> dict[str, str]:
    return {"read": ACCESS_INTERNAL, "write": ACCESS_INTERNAL, "create": ACCESS_INTERNAL, "unlink": ACCESS_INTERNAL}


def _admin_only() -> dict[str, str]:
    return {"read": ACCESS_ADMIN, "write": ACCESS_ADMIN, "create": ACCESS_ADMIN, "unlink": ACCESS_ADMIN}


# --- mail.thread --------------------------------------------------------------------------------


def followers_of(env: Env, model: str, record_id: int) -> list[int]:
    """mail.followers ids of one document, oldest first."""
    return [
        follower_id
        for follower_id, row in env.db.rows["mail.followers"].items()
        if row.get("res_model") == model and row.get("res_id") == record_id
    ]


def follower_partners(env: Env, model: str, record_id: int) -> list[int]:
    rows = env.db.rows["mail.followers"]
    return [rows[follower_id]["partner_id"] for follower_id in followers_of(env, model, record_id)]


def messages_of(env: Env, model: str, record_id: int, types: tuple[str, ...] | None = None,
                exclude: tuple[str, ...] = ()) -> list[int]:
    """mail.message ids of one document, newest first."""
    rows = env.db.rows["mail.message"]
    found = {
        message_id
        for message_id in env.db.thread_messages.get((model, record_id), ())
        if message_id in rows and rows[message_id].get("model") == model and rows[message_id].get("res_id") == record_id
        and (types is None or rows[message_id].get("message_type") in types)
        and rows[message_id].get("message_type") not in exclude
    }
    return sorted(found, reverse=True)


def _message_holder(env: Env, model: str, message_id: int, exclude: tuple[str, ...] = ()) -> int | None:
    """The document of ``model`` whose messages_of(..., exclude) lists ``message_id``, or None."""
    row = env.db.rows["mail.message"].get(message_id)
    if row is None or row.get("model") != model or not row.get("res_id") or row.get("message_type") in exclude:
        return None
    return row["res_id"]


def first_message_of(env: Env, model: str, record_id: int, exclude: tuple[str, ...] = ()) -> int | None:
    """The oldest mail.message id of one document (what a flat thread hangs from), or None.

    Like Odoo's ``min(id)`` over the indexed (model, res_id) columns, this does not read the whole
    thread: the index lists are kept in ascending order, so the first entry still on the document is
    the answer.
    """
    rows = env.db.rows["mail.message"]
    for message_id in env.db.thread_messages.get((model, record_id), ()):
        row = rows.get(message_id)
        if row is not None and row.get("model") == model and row.get("res_id") == record_id \
                and row.get("message_type") not in exclude:
            return message_id
    return None


def _add_to_thread(env: Env, key: tuple, message_id: int) -> None:
    entries = env.db.thread_messages.setdefault(key, [])
    if not entries or entries[-1] < message_id:
        entries.append(message_id)  # the usual case: a new message is the newest id
    else:
        bisect.insort(entries, message_id)


def _index_message(env: Env, message_id: int, values: dict) -> None:
    row = env.db.rows["mail.message"][message_id]
    if row.get("model") and row.get("res_id"):
        _add_to_thread(env, (row["model"], row["res_id"]), message_id)


def _message_before_write(env: Env, ids: list[int], values: dict) -> dict:
    if "model" in values or "res_id" in values:
        for message_id in ids:
            row = env.db.rows["mail.message"][message_id]
            key = (values.get("model", row.get("model")), values.get("res_id", row.get("res_id")))
            _add_to_thread(env, key, message_id)
    return values


def chatter_fields(model: str) -> dict[str, Field]:
    return {
        "message_ids": Field(
            # mail_thread.py: domain [('message_type', '!=', 'user_notification')], so searches
            # through message_ids (the gateway's "not filed yet" clause) leave those out too.
            "one2many", "Messages", relation="mail.message", inverse_name="res_id",
            compute=lambda env, rid: messages_of(env, model, rid, exclude=("user_notification",)),
            holder=lambda env, mid: _message_holder(env, model, mid, exclude=("user_notification",)),
        ),
        "website_message_ids": Field(
            "one2many", "Website Messages", relation="mail.message", inverse_name="res_id",
            compute=lambda env, rid: messages_of(env, model, rid, WEBSITE_MESSAGE_TYPES),
        ),
        "message_follower_ids": Field(
            "one2many", "Followers", relation="mail.followers", inverse_name="res_id",
            compute=lambda env, rid: followers_of(env, model, rid),
        ),
        "message_partner_ids": Many2many(
            "res.partner", "Followers (Partners)", compute=lambda env, rid: follower_partners(env, model, rid),
        ),
        "message_is_follower": Boolean(
            "Is Follower", compute=lambda env, rid: env.partner_id in follower_partners(env, model, rid),
        ),
    }


# --- res.partner --------------------------------------------------------------------------------


def _partner_display(env: Env, partner_id: int) -> str:
    row = env.db.rows["res.partner"][partner_id]
    name = row.get("name") or ""
    parent_id = row.get("parent_id")
    if parent_id and not row.get("is_company") and parent_id in env.db.rows["res.partner"]:
        parent_name = env.db.rows["res.partner"][parent_id].get("name") or ""
        return f"{parent_name}, {name}" if name else parent_name
    return name


def format_address(name: str | None, email: str | None) -> str:
    """Odoo's tools.formataddr as email_formatted uses it: the name always quoted."""
    if not email:
        return ""
    if not name:
        return email
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}" <{email}>'


# tools/mail.py email_re: the addresses Odoo falls back to when getaddresses read one without local part.
_ODOO_EMAIL = re.compile(r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,63}")


def _getaddresses(text: str) -> list[tuple[str, str]]:
    # Odoo 18 turns off the strict parsing that newer Pythons added to getaddresses (tools/mail.py).
    if getattr(email.utils, "supports_strict_parsing", False):
        return email.utils.getaddresses([text], strict=False)
    return email.utils.getaddresses([text])


def email_normalized(text: Any) -> str | bool:
    """tools.email_normalize(text, strict=False) as mail.thread.blacklist stores it in email_normalized.

    The first address getaddresses finds in ``text`` (tools.email_split_tuples: a name, spaces and
    further addresses are dropped; "name user@host" without brackets is read as a name and an
    address), its local part lowercased when ASCII, its domain lowercased (no IDNA encoding);
    False when ``text`` holds no address with an "@".
    """
    if not text:
        return False
    pairs = [(name, address) for name, address in _getaddresses(str(text)) if address and "@" in address]
    if any(address.startswith("@") for _name, address in pairs):
        # A domain without its local part: Odoo takes the addresses its regular expression finds.
        found = [address for address in _ODOO_EMAIL.findall(str(text)) if not address.startswith("@")]
        pairs = [("", address) for address in found] or pairs
    if not pairs:
        return False
    name, first = pairs[0]
    if not name and " " in first:
        # getaddresses left "name user@host" whole, as an address with no name: read again with
        # the spaces as separators, the last part with an "@" is the address.
        parts = [address for _name, address in _getaddresses(first.replace(" ", ",")) if address and "@" in address]
        first = parts[-1] if parts else first
    local, at, domain = first.rpartition("@")
    return (local.lower() if local.isascii() else local) + at + domain.lower()


def _partner_email_formatted(env: Env, partner_id: int) -> str:
    row = env.db.rows["res.partner"][partner_id]
    return format_address(row.get("name"), row.get("email"))


def _partner_share(env: Env, partner_id: int) -> bool:
    # A partner is "shared" (a customer or portal user) unless one of its active users is internal.
    users = [
        uid for uid, row in env.db.rows["res.users"].items()
        if row.get("partner_id") == partner_id and row.get("active", True)
    ]
    return not any(env.in_group("base.group_user", uid) for uid in users)


def partner_model() -> Model:
    fields = {
        "name": Char("Name"),
        "complete_name": Char("Complete Name", compute=_partner_display),
        "email": Char("Email"),
        "email_normalized": Char(
            "Normalized Email",
            compute=lambda env, rid: email_normalized(env.db.rows["res.partner"][rid].get("email")),
        ),
        "email_formatted": Char("Formatted Email", compute=_partner_email_formatted),
        "phone": Char("Phone"),
        "function": Char("Job Position"),
        "parent_id": Many2one("res.partner", "Related Company"),
        "child_ids": One2many("res.partner", "parent_id", "Contact"),
        "commercial_partner_id": Many2one(
            "res.partner", "Commercial Entity", compute=lambda env, rid: commercial_partner(env.db, rid),
        ),
        "is_company": Boolean("Is a Company", default=False),
        "type": Selection((("contact", "Contact"), ("invoice", "Invoice Address"), ("delivery", "Delivery Address"),
                           ("other", "Other Address")), "Address Type", default="contact"),
        "active": Boolean("Active", default=True),
        "company_id": Many2one("res.company", "Company"),
        "user_ids": One2many("res.users", "partner_id", "Users"),
        "partner_share": Boolean("Share Partner", compute=_partner_share),
        "lang": Char("Language", default="en_US"),
        "tz": Char("Timezone"),
        "comment": Html("Notes"),
        **chatter_fields("res.partner"),
    }
    return Model(
        "res.partner", "Contact", fields, order="name, id desc", parent_name="parent_id", chatter=True,
        display=_partner_display, access=_everyone_reads(),
        # base/security/ir.model.access.csv: employees read contacts, "Extra Rights / Contact
        # Creation" writes them, so only its members may post on one (mail.thread's
        # _mail_post_access = 'write'; measured on a real Odoo 18, onboarding review).
        group_access={"base.group_user": "r", "base.group_partner_manager": "rwcu"},
    )


# --- res.users ----------------------------------------------------------------------------------

# Fields res.users defines itself; every other res.partner field is reached through partner_id,
# as Odoo's _inherits = {'res.partner': 'partner_id'} does.
_USER_OWN_FIELDS = {
    "login", "password", "active", "partner_id", "company_id", "company_ids", "share",
    "notification_type", "signature", "login_date", "groups_id", "group_ids",
}


def _delegated(name: str, spec: Field) -> Field:
    def compute(env: Env, uid: int) -> Any:
        partner_id = env.db.rows["res.users"][uid].get("partner_id")
        if not partner_id or partner_id not in env.db.rows["res.partner"]:
            return spec.empty()
        return raw_value(env, "res.partner", partner_id, name)

    def inverse(env: Env, uid: int, value: Any) -> None:
        from gateway.testing.odoo_orm import _assign

        partner_id = env.db.rows["res.users"][uid].get("partner_id")
        if partner_id:
            _assign(env, "res.partner", partner_id, name, value)

    return Field(
        spec.type, spec.string, relation=spec.relation, compute=compute,
        inverse=None if spec.compute is not None else inverse, selection=spec.selection,
    )


def _set_password(env: Env, uid: int, value: Any) -> None:
    if value:
        env.db.passwords[uid] = value


def _user_before_create(env: Env, values: dict) -> dict:
    spec = env.db.models["res.users"]
    partner_values = {name: values.pop(name) for name in list(values) if name not in _USER_OWN_FIELDS
                      and spec.fields[name].compute is not None and name in env.db.models["res.partner"].fields}
    if not values.get("partner_id"):
        from gateway.testing.odoo_orm import create_record

        partner_values.setdefault("name", values.get("login"))
        partner_values.setdefault("company_id", values.get("company_id") or 1)
        values["partner_id"] = create_record(env.sudo(), "res.partner", partner_values)
    return values


def _user_display(env: Env, uid: int) -> str:
    partner_id = env.db.rows["res.users"][uid].get("partner_id")
    return _partner_display(env, partner_id) if partner_id in env.db.rows["res.partner"] else ""


def users_model(db: Database, partner: Model) -> Model:
    groups_field = db.groups_field
    fields: dict[str, Field] = {
        "login": Char("Login", required=True),
        "password": Char("Password", compute=lambda env, rid: "", inverse=_set_password),
        "active": Boolean("Active", default=True),
        "partner_id": Many2one("res.partner", "Related Partner", required=False),
        "company_id": Many2one("res.company", "Company", default=1),
        "company_ids": Many2many("res.company", "Companies", default=[1]),
        groups_field: Many2many("res.groups", "Groups"),
        **({"all_group_ids": Many2many(
            "res.groups", "All Groups",
            # The test Odoo has no implied groups, so every group of a user is an assigned one.
            compute=lambda env, rid: list(env.db.rows["res.users"][rid].get(groups_field) or []))}
           if db.major >= 19 else {}),
        "share": Boolean(
            "Share User", compute=lambda env, rid: not env.in_group("base.group_user", rid),
        ),
        "notification_type": Selection((("email", "Handle by Emails"), ("inbox", "Handle in Odoo")),
                                       "Notification", default="email"),
        "signature": Html("Email Signature"),
        "login_date": Datetime("Latest authentication"),
    }
    base_names = {"id", "display_name", "create_uid", "create_date", "write_uid", "write_date"}
    for name, spec in partner.fields.items():
        if name not in fields and name not in base_names:
            fields[name] = _delegated(name, spec)
    return Model(
        "res.users", "User", fields, order="name, login", inherits=("res.partner", "partner_id"),
        display=_user_display, before_create=_user_before_create,
        access={"read": ACCESS_ALL, "write": ACCESS_ADMIN, "create": ACCESS_ADMIN, "unlink": ACCESS_ADMIN},
    )


def has_group(env: Env, uid: int, xmlid: str) -> bool:
    group_id = env.db.xmlid_to_id(xmlid)
    row = env.db.rows["res.users"].get(uid) or {}
    return group_id is not None and group_id in (row.get(env.db.groups_field) or [])


def _check_has_group_caller(env: Env, uid: int) -> None:
    # res_users.py has_group: only internal users may ask about someone else, "this prevents RPC
    # calls from non-internal users to retrieve information about other users".
    if not (env.su or uid == env.uid or env.is_internal()):
        raise AccessError("You can ony call user.has_group() with your current user.")


@rpc("res.users", name="has_group", on_records=True)
def _has_group(env: Env, model: str, ids: list[int], group_ext_id: str) -> bool:
    uid = ensure_one(model, ids)
    _check_has_group_caller(env, uid)
    return has_group(env, uid, group_ext_id)


@rpc("res.users", name="has_groups", on_records=True)
def _has_groups(env: Env, model: str, ids: list[int], group_spec: str) -> bool:
    uid = ensure_one(model, ids)
    _check_has_group_caller(env, uid)
    positives, negatives = [], []
    for item in (part.strip() for part in group_spec.split(",")):
        if item.startswith("!"):
            negatives.append(item[1:])
        elif item:
            positives.append(item)
    if any(has_group(env, uid, xmlid) for xmlid in negatives):
        return False
    return any(has_group(env, uid, xmlid) for xmlid in positives) if positives else True


@rpc("res.users", name="context_get")
def _context_get(env: Env, model: str) -> dict:
    partner_id = env.partner_id
    partner = env.db.rows["res.partner"].get(partner_id) or {}
    return {"lang": partner.get("lang") or "en_US", "tz": partner.get("tz") or False}


# --- res.groups, res.company --------------------------------------------------------------------


def groups_model(db: Database) -> Model:
    groups_field = db.groups_field

    def members(env: Env, group_id: int) -> list[int]:
        return [uid for uid, row in env.db.rows["res.users"].items() if group_id in (row.get(groups_field) or [])]

    def set_members(env: Env, group_id: int, value: Any) -> None:
        from gateway.testing.odoo_orm import _x2many_commands

        spec = env.db.models["res.groups"].fields[db.group_users_field]
        wanted = set(_x2many_commands(env, spec, members(env, group_id), value, ("res.groups", group_id)))
        for uid, row in env.db.rows["res.users"].items():
            current = list(row.get(groups_field) or [])
            if uid in wanted and group_id not in current:
                row[groups_field] = current + [group_id]
            elif uid not in wanted and group_id in current:
                current.remove(group_id)
                row[groups_field] = current

    def full_name(env: Env, group_id: int) -> str:
        row = env.db.rows["res.groups"][group_id]
        category = row.get("category_name")
        return f"{category} / {row.get('name')}" if category else row.get("name") or ""

    fields = {
        "name": Char("Name", required=True),
        "full_name": Char("Group Name", compute=full_name),
        "category_name": Char("Application"),
        db.group_users_field: Many2many("res.users", "Users", compute=members, inverse=set_members),
        "comment": Text("Comment"),
        "share": Boolean("Share Group", default=False),
    }
    return Model("res.groups", "Access Groups", fields, order="name", display=full_name,
                 access=_everyone_reads(write=ACCESS_ADMIN))


def company_model() -> Model:
    fields = {
        "name": Char("Company Name", required=True),
        "partner_id": Many2one("res.partner", "Partner"),
        "email": Char(
            "Email",
            compute=lambda env, rid: (env.db.rows["res.partner"].get(env.db.rows["res.company"][rid].get("partner_id"))
                                      or {}).get("email") or False,
        ),
        "alias_domain_id": Many2one("mail.alias.domain", "Email Domain"),
        "parent_id": Many2one("res.company", "Parent Company"),
    }
    return Model("res.company", "Companies", fields, order="name", parent_name="parent_id",
                 access=_everyone_reads(write=ACCESS_ADMIN))


# --- ir.model.data, ir.model --------------------------------------------------------------------


def model_data_model() -> Model:
    fields = {
        "name": Char("External Identifier", required=True),
        "module": Char("Module", required=True),
        "model": Char("Model Name", required=True),
        "res_id": Integer("Record ID"),
        "complete_name": Char(
            "Complete ID",
            compute=lambda env, rid: "{module}.{name}".format(**env.db.rows["ir.model.data"][rid]),
        ),
        "noupdate": Boolean("Non Updatable", default=False),
    }
    return Model("ir.model.data", "Model Data", fields, order="module, model, name",
                 rec_name="complete_name", access=_admin_only())


def set_xmlid(db: Database, xmlid: str, model: str, record_id: int) -> None:
    module, name = xmlid.split(".", 1)
    rows = db.rows["ir.model.data"]
    for row in rows.values():
        if row["module"] == module and row["name"] == name:
            row.update(model=model, res_id=record_id)
            break
    else:
        rows[db.new_id("ir.model.data")] = {"module": module, "name": name, "model": model, "res_id": record_id}


@rpc("ir.model.data", name="check_object_reference")
def _check_object_reference(env: Env, model: str, module: str, xml_id: str,
                            raise_on_access_error: bool = False) -> list:
    xmlid = f"{module}.{xml_id}"
    found = env.db.xmlid(xmlid)
    if found is None or found[1] not in env.db.rows[found[0]]:
        raise ValueError(f"External ID not found in the system: {xmlid}")
    target_model, record_id = found
    # ir_model.py check_object_reference: the record must be readable by the caller; this
    # search is what decides, so a portal user gets (model, False) for a record it cannot see.
    try:
        check_access(env, target_model, "read")
        readable = bool(rule_filter(env, target_model, {record_id}))
    except AccessError:
        readable = False
    if readable:
        return [target_model, record_id]
    if raise_on_access_error:
        raise AccessError(f'Not enough access rights on the external ID "{module}.{xml_id}"')
    return [target_model, False]


def ir_model_model() -> Model:
    fields = {"model": Char("Model", required=True), "name": Char("Model Description", required=True)}
    # Read by the gateway's own group too: its searches on ir.rule and ir.model.access go through
    # model_id.model (odoo_security.py).
    from gateway.testing.odoo_security import GATEWAY_READS

    return Model("ir.model", "Models", fields, order="model",
                 access={**_admin_only(), "read": GATEWAY_READS})


# --- Mail models --------------------------------------------------------------------------------


def subtype_model() -> Model:
    fields = {
        "name": Char("Message Type", required=True),
        "description": Text("Description"),
        "internal": Boolean("Internal Only", default=False),
        "res_model": Char("Model"),
        "default": Boolean("Default", default=True),
        "hidden": Boolean("Hidden", default=False),
        "sequence": Integer("Sequence", default=1),
        "parent_id": Many2one("mail.message.subtype", "Parent"),
    }
    return Model("mail.message.subtype", "Message subtypes", fields, order="sequence, id",
                 access=_everyone_reads(write=ACCESS_ADMIN))


def followers_model() -> Model:
    def partner_value(name: str):
        def compute(env: Env, follower_id: int) -> Any:
            partner_id = env.db.rows["mail.followers"][follower_id].get("partner_id")
            return (env.db.rows["res.partner"].get(partner_id) or {}).get(name, False)
        return compute

    fields = {
        "res_model": Char("Related Document Model Name", required=True),
        "res_id": Integer("Related Document ID"),
        "partner_id": Many2one("res.partner", "Related Partner", required=True),
        "subtype_ids": Many2many("mail.message.subtype", "Subtype"),
        "name": Char("Name", compute=partner_value("name")),
        "email": Char("Email", compute=partner_value("email")),
        "is_active": Boolean("Is Active", compute=partner_value("active")),
    }
    return Model(
        "mail.followers", "Document Followers", fields, rec_name="name",
        display=lambda env, rid: display_name(env, "res.partner", env.db.rows["mail.followers"][rid]["partner_id"]),
        access=_internal_only(),
    )


def document_readable(env: Env, model: str | None, record_id: int | None) -> bool:
    """Whether the caller may read a document, by the access list and the record rules."""
    if not model or not record_id or model not in env.db.models or record_id not in env.db.rows[model]:
        return False
    try:
        check_access(env, model, "read")
    except AccessError:
        return False
    return bool(rule_filter(env, model, {record_id}))


def message_is_internal(env: Env, message_id: int) -> bool:
    """mail_message.py _get_forbidden_access: a comment that is internal, or whose subtype is
    missing or internal, is hidden from users who are not employees."""
    row = env.db.rows["mail.message"][message_id]
    if row.get("message_type") != "comment":
        return False
    subtype = env.db.rows["mail.message.subtype"].get(row.get("subtype_id") or 0)
    return bool(row.get("is_internal") or subtype is None or subtype.get("internal"))


def _message_share_filter(env: Env, ids: set[int]) -> set[int]:
    # mail.message access for a portal user: never an internal message; otherwise its author, a
    # recipient, a notified partner, or a reader of the document.
    visible = set()
    partner_id = env.partner_id
    notified = {
        row.get("mail_message_id")
        for row in env.db.rows["mail.notification"].values()
        if row.get("res_partner_id") == partner_id
    }
    for message_id in ids:
        row = env.db.rows["mail.message"][message_id]
        if message_is_internal(env, message_id):
            continue
        if (
            row.get("author_id") == partner_id
            or partner_id in (row.get("partner_ids") or [])
            or message_id in notified
            or document_readable(env, row.get("model"), row.get("res_id"))
        ):
            visible.add(message_id)
    return visible


def _message_before_create(env: Env, values: dict) -> dict:
    from gateway.testing.odoo_mail import tracking_message_id

    values.setdefault("date", now_string())
    if "author_id" not in values:
        values["author_id"] = env.partner_id or False
    if "email_from" not in values and values.get("author_id"):
        values["email_from"] = _partner_email_formatted(env, values["author_id"])
    if not values.get("message_id"):
        if values.get("reply_to_force_new"):
            values["message_id"] = tracking_message_id("reply_to")
        elif values.get("model") and values.get("res_id"):
            values["message_id"] = tracking_message_id(f"{values['res_id']}-{values['model']}")
        else:
            values["message_id"] = tracking_message_id("private")
    return values


def _message_preview(env: Env, message_id: int) -> str:
    from gateway.testing.odoo_mail import html_to_text

    return html_to_text(env.db.rows["mail.message"][message_id].get("body") or "")[:190]


def message_model() -> Model:
    notification_rows = lambda env, mid: [  # noqa: E731
        nid for nid, row in env.db.rows["mail.notification"].items() if row.get("mail_message_id") == mid
    ]
    fields = {
        "subject": Char("Subject"),
        "date": Datetime("Date"),
        "body": Html("Contents", default=""),
        "preview": Char("Preview", compute=_message_preview),
        "attachment_ids": Many2many("ir.attachment", "Attachments"),
        "parent_id": Many2one("mail.message", "Parent Message"),
        "child_ids": One2many("mail.message", "parent_id", "Child Messages"),
        "model": Char("Related Document Model"),
        "res_id": Integer("Related Document ID"),
        "record_name": Char("Message Record Name"),
        "record_alias_domain_id": Many2one("mail.alias.domain", "Alias Domain"),
        "record_company_id": Many2one("res.company", "Company"),
        "message_type": Selection(
            (("email", "Incoming Email"), ("comment", "Comment"), ("email_outgoing", "Outgoing Email"),
             ("notification", "System notification"), ("auto_comment", "Automated Targeted Notification"),
             ("user_notification", "User Specific Notification")),
            "Type", default="comment", required=True,
        ),
        "subtype_id": Many2one("mail.message.subtype", "Subtype"),
        "is_internal": Boolean("Employee Only", default=False),
        "partner_ids": Many2many("res.partner", "Recipients"),
        "notified_partner_ids": Many2many(
            "res.partner", "Partners with Need Action",
            compute=lambda env, mid: [env.db.rows["mail.notification"][nid]["res_partner_id"]
                                      for nid in notification_rows(env, mid)],
        ),
        "notification_ids": Field("one2many", "Notifications", relation="mail.notification",
                                  inverse_name="mail_message_id", compute=notification_rows),
        "needaction": Boolean(
            "Need Action",
            compute=lambda env, mid: any(
                env.db.rows["mail.notification"][nid]["res_partner_id"] == env.partner_id
                and not env.db.rows["mail.notification"][nid].get("is_read")
                for nid in notification_rows(env, mid)
            ),
        ),
        "starred_partner_ids": Many2many("res.partner", "Favorited By"),
        "pinned_at": Datetime("Pinned"),
        "email_from": Char("From"),
        "author_id": Many2one("res.partner", "Author"),
        "incoming_email_cc": Char("Cc"),
        "incoming_email_to": Char("To"),
        "outgoing_email_to": Char("To (outgoing)"),
        "email_layout_xmlid": Char("Layout"),
        "email_add_signature": Boolean("Add signature", default=True),
        "message_id": Char("Message-Id", index=True),
        "reply_to": Char("Reply-To"),
        "reply_to_force_new": Boolean("No threading for answers", default=False),
        "mail_ids": One2many("mail.mail", "mail_message_id", "Mails"),
        "has_error": Boolean(
            "Has error",
            compute=lambda env, mid: any(env.db.rows["mail.notification"][nid].get("notification_status")
                                         in ("exception", "bounce") for nid in notification_rows(env, mid)),
        ),
    }
    return Model(
        "mail.message", "Message", fields, order="id desc", rec_name="record_name",
        display=lambda env, mid: env.db.rows["mail.message"][mid].get("subject")
        or env.db.rows["mail.message"][mid].get("record_name") or "",
        share_filter=_message_share_filter, before_create=_message_before_create, after_create=_index_message,
        before_write=_message_before_write,
        access={"read": ACCESS_ALL, "write": ACCESS_INTERNAL, "create": ACCESS_INTERNAL, "unlink": ACCESS_INTERNAL},
    )


def notification_model() -> Model:
    fields = {
        "mail_message_id": Many2one("mail.message", "Message", required=True),
        "res_partner_id": Many2one("res.partner", "Recipient"),
        "author_id": Many2one(
            "res.partner", "Author",
            compute=lambda env, nid: (env.db.rows["mail.message"].get(
                env.db.rows["mail.notification"][nid]["mail_message_id"]) or {}).get("author_id") or False,
        ),
        "notification_type": Selection((("inbox", "Inbox"), ("email", "Email")), "Notification Type",
                                       default="inbox", required=True),
        "notification_status": Selection(
            (("ready", "Ready to Send"), ("process", "Processing"), ("pending", "Sent"), ("sent", "Delivered"),
             ("bounce", "Bounced"), ("exception", "Exception"), ("canceled", "Cancelled")),
            "Status", default="ready",
        ),
        "is_read": Boolean("Is Read", default=False),
        "read_date": Datetime("Read Date"),
        "failure_type": Selection((("unknown", "Unknown error"), ("mail_email_invalid", "Invalid email address"),
                                   ("mail_email_missing", "Missing email address")), "Failure type"),
        "failure_reason": Text("Failure reason"),
        "mail_mail_id": Many2one("mail.mail", "Mail"),
    }
    return Model("mail.notification", "Message Notifications", fields, rec_name=None,
                 access={"read": ACCESS_INTERNAL, "write": ACCESS_ADMIN, "create": ACCESS_ADMIN,
                         "unlink": ACCESS_ADMIN})


def mail_mail_model() -> Model:
    fields = {
        "mail_message_id": Many2one("mail.message", "Message", required=True),
        "message_id": Char("Message-Id"),
        "references": Text("References"),
        "headers": Text("Headers"),
        "subject": Char("Subject"),
        "body_html": Html("Rich-text Contents"),
        "email_from": Char("From"),
        "reply_to": Char("Reply-To"),
        "email_to": Text("To"),
        "recipient_ids": Many2many("res.partner", "To (Partners)"),
        "state": Selection((("outgoing", "Outgoing"), ("sent", "Sent"), ("received", "Received"),
                            ("exception", "Delivery Failed"), ("cancel", "Cancelled")), "Status", default="outgoing"),
        "auto_delete": Boolean("Auto Delete", default=True),
        "model": Char("Related Document Model"),
        "res_id": Integer("Related Document ID"),
    }
    return Model("mail.mail", "Outgoing Mails", fields, rec_name="subject", order="id desc", access=_admin_only())


def alias_domain_model() -> Model:
    def email(alias_field: str):
        def compute(env: Env, rid: int) -> Any:
            row = env.db.rows["mail.alias.domain"][rid]
            return f"{row.get(alias_field)}@{row.get('name')}" if row.get(alias_field) else False
        return compute

    fields = {
        "name": Char("Name", required=True),
        "bounce_alias": Char("Bounce Alias", required=True, default="bounce"),
        "bounce_email": Char("Bounce Email", compute=email("bounce_alias")),
        "catchall_alias": Char("Catchall Alias", required=True, default="catchall"),
        "catchall_email": Char("Catchall Email", compute=email("catchall_alias")),
        "default_from": Char("Default From Alias", default="notifications"),
        "default_from_email": Char("Default From", compute=email("default_from")),
        "company_ids": One2many("res.company", "alias_domain_id", "Companies"),
        "sequence": Integer("Sequence", default=10),
    }
    return Model("mail.alias.domain", "Email Domain", fields, order="sequence ASC, id ASC",
                 access=_everyone_reads(write=ACCESS_ADMIN) | {"read": ACCESS_INTERNAL})


# --- ir.attachment ------------------------------------------------------------------------------


def guess_mimetype(name: str | None, content: bytes) -> str:
    guessed = mimetypes.guess_type(name or "")[0]
    if guessed:
        return guessed
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return "application/octet-stream"
    return "text/plain"


def store_attachment_bytes(env: Env, attachment_id: int, content: bytes) -> None:
    row = env.db.rows["ir.attachment"][attachment_id]
    env.db.blobs[attachment_id] = content
    row["checksum"] = hashlib.sha1(content).hexdigest()
    row["file_size"] = len(content)
    if not row.get("mimetype"):
        row["mimetype"] = guess_mimetype(row.get("name"), content)


def _set_datas(env: Env, attachment_id: int, value: Any) -> None:
    if value is False or value is None:
        content = b""
    else:
        content = base64.b64decode(value.encode() if isinstance(value, str) else value)
    store_attachment_bytes(env, attachment_id, content)


def attachment_model() -> Model:
    fields = {
        "name": Char("Name", required=True),
        "description": Text("Description"),
        "datas": Binary(
            "File Content (base64)",
            compute=lambda env, rid: base64.b64encode(env.db.blobs.get(rid, b"")).decode() if rid in env.db.blobs
            else False,
            inverse=_set_datas,
        ),
        "res_model": Char("Resource Model"),
        "res_id": Integer("Resource ID"),
        "res_field": Char("Resource Field"),
        "type": Selection((("url", "URL"), ("binary", "File")), "Type", default="binary"),
        "url": Char("Url"),
        "mimetype": Char("Mime Type"),
        "checksum": Char("Checksum/SHA1", readonly=True),
        "file_size": Integer("File Size", readonly=True),
        "access_token": Char("Access Token"),
        "public": Boolean("Is public document", default=False),
        "company_id": Many2one("res.company", "Company"),
    }
    return Model("ir.attachment", "Attachment", fields, order="id desc", access=_internal_only())


# --- Business documents -------------------------------------------------------------------------


def _portal_project_rule(env: Env) -> list:
    # project_security.xml:187 project.project_project_rule_portal.
    return ["&", ("privacy_visibility", "=", "portal"),
            ("message_partner_ids", "child_of", [env.commercial_partner_id()])]


def _portal_task_rule(env: Env) -> list:
    # project_security.xml:208 project.project_task_rule_portal (ir.rule 143 in the measured db).
    return [
        ("project_id.privacy_visibility", "=", "portal"),
        ("active", "=", True),
        "|",
        ("message_partner_ids", "child_of", [env.commercial_partner_id()]),
        ("project_id.collaborator_ids", "any", [("partner_id", "=", env.partner_id), ("limited_access", "=", False)]),
    ]


def _portal_sale_order_rule(env: Env) -> list:
    # sale/security/ir_rules.xml:24 sale.sale_order_rule_portal (ir.rule 168 in the measured db).
    return [("message_partner_ids", "child_of", [env.commercial_partner_id()])]


PRIVACY_VISIBILITY = (
    ("followers", "Invited internal users (private)"),
    ("invited_users", "Invited internal and portal users"),
    ("employees", "All internal users"),
    ("portal", "Invited portal users and all internal users (public)"),
)


def project_model() -> Model:
    fields = {
        "name": Char("Name", required=True),
        "active": Boolean("Active", default=True),
        "privacy_visibility": Selection(PRIVACY_VISIBILITY, "Visibility", default="portal", required=True),
        "partner_id": Many2one("res.partner", "Customer"),
        "company_id": Many2one("res.company", "Company", default=1),
        "user_id": Many2one("res.users", "Project Manager"),
        "collaborator_ids": One2many("project.collaborator", "project_id", "Collaborators"),
        "task_ids": One2many("project.task", "project_id", "Tasks"),
        "description": Html("Description"),
        **chatter_fields("project.project"),
    }
    # project.project keeps mail.thread's _mail_post_access = 'write', and only Project
    # administrators may write it (project/security/ir.model.access.csv): employees and Project
    # users read it, so they may not post on it (measured on Odoo 18: a bare employee's
    # has_access('write') is False and its message_post an AccessError, Document type: Message).
    return Model("project.project", "Project", fields, order="name, id", chatter=True,
                 share_rule=_portal_project_rule, access=_everyone_reads(),
                 group_access={"base.group_user": "r", "project.group_project_user": "r",
                               "project.group_project_manager": "rwcu"})


def collaborator_model() -> Model:
    fields = {
        "project_id": Many2one("project.project", "Project Shared", required=True),
        "partner_id": Many2one("res.partner", "Collaborator", required=True),
        "limited_access": Boolean("Limited Access", default=False),
    }
    return Model("project.collaborator", "Collaborators in project shared", fields, rec_name=None,
                 display=lambda env, rid: display_name(env, "res.partner",
                                                       env.db.rows["project.collaborator"][rid]["partner_id"]),
                 # Read by its ir.model.access rows only, as in Odoo 18: Project users and managers
                 # and portal users, not every employee (odoo_security.ACCESS).
                 access={**_internal_only(), "read": ACCESS_ROWS})


def task_model() -> Model:
    fields = {
        "name": Char("Title", required=True),
        "active": Boolean("Active", default=True),
        "project_id": Many2one("project.project", "Project"),
        "partner_id": Many2one("res.partner", "Customer"),
        "company_id": Many2one("res.company", "Company", default=1),
        "user_ids": Many2many("res.users", "Assignees"),
        "description": Html("Description"),
        "priority": Selection((("0", "Low priority"), ("1", "High priority")), "Priority", default="0"),
        # Named by the real record rules of project.task (odoo_security.py).
        "parent_id": Many2one("project.task", "Parent Task"),
        **chatter_fields("project.task"),
    }
    # project_task.py: _mail_post_access = 'read', so a portal user who can read a task may comment.
    return Model("project.task", "Task", fields, order="priority desc, id desc", chatter=True,
                 mail_post_access="read", share_rule=_portal_task_rule, user_rule=_employee_task_rule,
                 access=_everyone_reads())


def _employee_task_rule(env: Env) -> list | None:
    """project_security.xml, the read rules of project.task for internal users, ORed as Odoo ORs the
    rules of the groups a user is in (odoo_security.RULES has their texts): an employee reads a task
    of a project visible to invited internal users only ("followers") when it follows the project
    or the task, or is assigned; a Project / User is no better off there ("See private tasks" leaves
    such projects out); a Project / Administrator reads every task with a project. Measured on a real
    Odoo 18 (onboarding review: the gateway advised "Project / User", which did not help).

    The administrator is left alone: in a real database it is a Project / Administrator, which the
    test Odoo's admin user is not made.
    """
    if not env.in_group("base.group_user") or env.is_admin():
        return None
    uid, partner = env.uid, env.partner_id
    followers_only = ["|", "&", ("project_id", "!=", False),
                      "|", ("project_id.privacy_visibility", "!=", "followers"),
                      ("project_id.message_partner_ids", "in", [partner]),
                      "|", ("message_partner_ids", "in", [partner]), ("user_ids", "in", uid)]
    own_private = ["&", "&", ("project_id", "=", False), ("user_ids", "in", uid), ("parent_id", "=", False)]
    rules = [followers_only, own_private]
    if env.in_group("project.group_project_manager"):
        rules.append(["|", ("project_id", "!=", False), ("user_ids", "in", uid)])
    if env.in_group("project.group_project_user"):
        rules.append(["&", ("project_id.privacy_visibility", "!=", "followers"),
                      "|", "|", ("project_id", "!=", False), ("parent_id", "!=", False), ("user_ids", "in", uid)])
    return ["|"] * (len(rules) - 1) + [leaf for rule in rules for leaf in rule]


def _personal_orders_rule(env: Env) -> list | None:
    # sale/security/ir_rules.xml "Personal Orders" of sales_team.group_sale_salesman ("Own Documents
    # Only"), ORed with "All Orders" of group_sale_salesman_all_leads, which the managers have too.
    if not env.in_group("sales_team.group_sale_salesman") or any(
            env.in_group(xmlid) for xmlid in ("sales_team.group_sale_salesman_all_leads",
                                              "sales_team.group_sale_manager")):
        return None
    return ["|", ("user_id", "=", env.uid), ("user_id", "=", False)]


def sale_order_model() -> Model:
    fields = {
        "name": Char("Order Reference", required=True, default="New"),
        "partner_id": Many2one("res.partner", "Customer", required=True),
        "company_id": Many2one("res.company", "Company", default=1),
        "user_id": Many2one("res.users", "Salesperson"),
        "state": Selection((("draft", "Quotation"), ("sent", "Quotation Sent"), ("sale", "Sales Order"),
                            ("cancel", "Cancelled")), "Status", default="draft"),
        "date_order": Datetime("Order Date", default=lambda env: now_string()),
        "amount_total": Float("Total", default=0.0),
        **chatter_fields("sale.order"),
    }
    return Model("sale.order", "Sales Order", fields, order="date_order desc, id desc", chatter=True,
                 share_rule=_portal_sale_order_rule, user_rule=_personal_orders_rule, access=_everyone_reads(),
                 # sale/security/ir.model.access.csv, and sale_project's read-only line for project
                 # managers: a "Project / Administrator" reads orders but may not write them, so
                 # it may not post on them either (mail_thread.py _mail_post_access = 'write').
                 group_access={"sales_team.group_sale_salesman": "rwc",
                               "sales_team.group_sale_salesman_all_leads": "rwc",
                               "sales_team.group_sale_manager": "rwcu", "project.group_project_manager": "r"})


def _portal_invoice_rule(env: Env) -> list:
    # account/security/account_security.xml:256 account.account_invoice_rule_portal.
    return [("state", "not in", ("cancel", "draft")),
            ("move_type", "in", ("out_invoice", "out_refund", "in_invoice", "in_refund")),
            ("message_partner_ids", "child_of", [env.commercial_partner_id()])]


MOVE_TYPES = (
    ("entry", "Journal Entry"), ("out_invoice", "Customer Invoice"), ("out_refund", "Customer Credit Note"),
    ("in_invoice", "Vendor Bill"), ("in_refund", "Vendor Credit Note"), ("out_receipt", "Sales Receipt"),
    ("in_receipt", "Purchase Receipt"),
)


def account_move_model() -> Model:
    """account.move, only as far as its chatter goes (the test Odoo has no accounting).

    Two things of the real one matter to the gateway: _mail_post_access = 'read' (account_move.py:84),
    so whoever reads a move may post on it; and its _message_post_after_hook, which treats the files of
    every post as invoices to import (odoo_mail.py account_move_after_hook). Access follows the real
    ir.model.access rows (odoo_security.ACCESS): Invoicing users write, read-only and portal users
    read, an employee without an accounting group has no access at all.
    """
    fields = {
        "name": Char("Number", default="/"),
        "move_type": Selection(MOVE_TYPES, "Type", default="entry", required=True),
        "state": Selection((("draft", "Draft"), ("posted", "Posted"), ("cancel", "Cancelled")), "Status",
                           default="draft", required=True),
        "partner_id": Many2one("res.partner", "Partner"),
        "ref": Char("Reference"),
        "company_id": Many2one("res.company", "Company", default=1),
        "amount_total": Float("Total", default=0.0),
        **chatter_fields("account.move"),
    }
    rows = {operation: ACCESS_ROWS for operation in ("read", "write", "create", "unlink")}
    return Model("account.move", "Journal Entry", fields, order="name desc, id desc", chatter=True,
                 mail_post_access="read", share_rule=_portal_invoice_rule, access=rows)


def _own_keys_rule(env: Env) -> list | None:
    # base/security/base_security.xml: users read (and delete) their own keys; the Settings group
    # sees every user's, to revoke them.
    return None if env.is_admin() else [("user_id", "=", env.uid)]


def api_keys_model() -> Model:
    """res.users.apikeys as a real Odoo 18 describes it (fields_get measured): the key itself is not a field."""
    fields = {
        "name": Char("Description", readonly=True),
        "user_id": Many2one("res.users", "User", readonly=True),
        "scope": Char("Scope", readonly=True),
        "expiration_date": Datetime("Expiration Date", readonly=True),
    }
    # ir.model.access: read for base.group_user and base.group_portal; created only by the key wizard.
    return Model("res.users.apikeys", "Users API Keys", fields, user_rule=_own_keys_rule,
                 access={"read": ACCESS_ALL, "write": ACCESS_ADMIN, "create": ACCESS_ADMIN, "unlink": ACCESS_INTERNAL})


def register_api_key(db: Database, uid: int, key: str, *, name: str = "note gateway",
                     expiration_date: str | bool | None = None) -> int:
    """A key and its res.users.apikeys row; by default it expires in 90 days, the most Odoo 18 gives
    a non-admin user's key (ODOO_FACTS.md a)."""
    if expiration_date is None:
        expiration_date = (datetime.now(timezone.utc) + timedelta(days=90)).strftime("%Y-%m-%d %H:%M:%S")
    from gateway.testing.odoo_orm import create_record

    row = create_record(Env(db, 1, su=True), "res.users.apikeys",
                        {"name": name, "user_id": uid, "scope": False, "expiration_date": expiration_date})
    db.api_keys.setdefault(uid, []).append(key)
    db.api_key_rows[key] = row
    return row


def build_database(name: str, version: str) -> Database:
    from gateway.testing.odoo_security import model_access_model, rule_model

    db = Database(name, version, {})
    partner = partner_model()
    models = [
        partner, users_model(db, partner), groups_model(db), company_model(), model_data_model(), ir_model_model(),
        subtype_model(), followers_model(), message_model(), notification_model(), mail_mail_model(),
        alias_domain_model(), attachment_model(), project_model(), collaborator_model(), task_model(),
        sale_order_model(), account_move_model(), rule_model(), model_access_model(), api_keys_model(),
        # The abstract model whose public methods are called without records, as message_process.
        Model("mail.thread", "Email Thread", {}, rec_name=None),
    ]
    db.models = {model.name: model for model in models}
    db.rows = {model.name: {} for model in models}
    db.sequences = {model.name: 1 for model in models}
    for model in models:
        db.rows["ir.model"][db.new_id("ir.model")] = {"model": model.name, "name": model.description}
    return db

