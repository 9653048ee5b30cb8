"""Provisioning of a throw-away "world" on a real Odoo 18 for the real-Odoo test suite.

The suite runs only when pointed at a real Odoo through four environment variables::

    NOTE_GATEWAY_TEST_ODOO_URL       e.g. http://127.0.0.1:8069
    NOTE_GATEWAY_TEST_ODOO_DB        database name (mail, portal, project and sale_management installed)
    NOTE_GATEWAY_TEST_ODOO_ADMIN     login of an administrator (base.group_system)
    NOTE_GATEWAY_TEST_ODOO_PASSWORD  that administrator's password (or API key)

``provision(env)`` creates, with names unique to the run, everything the gateway needs to be tested
against (ODOO_FACTS.md): the contributor group ``note_gateway.group_portal_note_contributor``, an
internal integration user with an API key, portal users in and out of that group, an archived portal
user, an internal user, a portal project with a task and a sale order followed by the portal users.
``cleanup(world)`` removes all of it again; ``cleanup_stale(env)`` removes what a crashed run left.

Only the standard library and odoorpc are used. Admin work goes through odoorpc (``/jsonrpc``); what
needs a browser-like web session (creating and revoking an API key, a portal user's view of the
chatter) goes through ``/web/...`` JSON routes with a cookie jar.
"""

from __future__ import annotations

import http.cookiejar
import itertools
import json
import os
import secrets
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

import odoorpc

ENV_URL = "NOTE_GATEWAY_TEST_ODOO_URL"
ENV_DB = "NOTE_GATEWAY_TEST_ODOO_DB"
ENV_ADMIN = "NOTE_GATEWAY_TEST_ODOO_ADMIN"
ENV_PASSWORD = "NOTE_GATEWAY_TEST_ODOO_PASSWORD"
ENV_VARS = (ENV_URL, ENV_DB, ENV_ADMIN, ENV_PASSWORD)

GROUP_MODULE = "note_gateway"
GROUP_NAME = "group_portal_note_contributor"
GROUP_XMLID = f"{GROUP_MODULE}.{GROUP_NAME}"
GROUP_LABEL = "Portal Internal Note Contributor (note gateway test)"

# Every login, email and record name made by a run carries "ngw-test-<run id>", so a run's records
# are told apart from the database's own and from concurrent runs, and leftovers can be swept.
TAG_PREFIX = "ngw-test-"
DEFAULT_DOMAIN = "note-gateway.test"  # RFC 2606 reserved: never a real mailbox

# The integration user's groups. base.group_user alone can post on project.task (its
# _mail_post_access is 'read') but not on sale.order: mail.thread's default _mail_post_access is
# 'write', and an employee without Sales rights gets "You are not allowed to modify 'Sales Order'".
# "Sales / User: All Documents" gives write access on every order (the "Own Documents Only" level
# is limited to the orders the user is salesperson of). Pass integration_groups=("base.group_user",)
# for a bare employee.
INTEGRATION_GROUPS = ("base.group_user", "sales_team.group_sale_salesman_all_leads")

# Context for every write done while provisioning: no invitation emails for new users, no tracking
# messages, and the admin does not follow what it creates -- except tasks: project.task.create
# subscribes the creating user whatever the context (project_task.py create), so the admin's
# partner follows the task (as in ODOO_FACTS.md c). world.task_followers / order_followers say who.
QUIET = {"no_reset_password": True, "mail_create_nosubscribe": True, "mail_create_nolog": True,
         "mail_notrack": True, "tracking_disable": True}


class OdooWebError(RuntimeError):
    """An error answered by one of Odoo's ``/web`` JSON routes (``data`` is Odoo's error payload)."""

    def __init__(self, route: str, error: Mapping[str, Any]) -> None:
        data = error.get("data") or {}
        self.route = route
        self.error = dict(error)
        self.name = data.get("name", "")
        self.odoo_message = data.get("message") or error.get("message", "")
        super().__init__(f"{route}: {self.name}: {self.odoo_message}")


# --- where the real Odoo is ---------------------------------------------------------------------

@dataclass(frozen=True)
class RealOdooEnv:
    """Where the real Odoo is and how to reach it as an administrator."""

    url: str
    db: str
    admin_login: str
    admin_password: str = field(repr=False)
    timeout: float = 120.0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "RealOdooEnv | None":
        """The env named by the ``NOTE_GATEWAY_TEST_ODOO_*`` variables, or None when any is unset."""
        environ = os.environ if environ is None else environ
        values = [environ.get(name, "").strip() for name in ENV_VARS]
        if not all(values):
            return None
        url, db, login, password = values
        return cls(url=url.rstrip("/"), db=db, admin_login=login, admin_password=password)

    def connect_as(self, login: str, secret: str) -> odoorpc.ODOO:
        """An odoorpc connection logged in (``/jsonrpc`` common.login) with a password or API key."""
        parts = urlsplit(self.url)
        https = parts.scheme == "https"
        client = odoorpc.ODOO(parts.hostname, protocol="jsonrpc+ssl" if https else "jsonrpc",
                              port=parts.port or (443 if https else 80), timeout=self.timeout)
        client.login(self.db, login, secret)
        return client

    def connect(self) -> odoorpc.ODOO:
        """An odoorpc connection as the administrator."""
        return self.connect_as(self.admin_login, self.admin_password)

    def web_session(self) -> "WebSession":
        return WebSession(self)


# --- the provisioned world ---------------------------------------------------------------------

@dataclass
class OdooUser:
    """A user made for the run. ``password`` is its password (never an API key)."""

    user_id: int
    partner_id: int
    login: str
    email: str
    name: str
    password: str = field(repr=False)


@dataclass
class IntegrationUser(OdooUser):
    """The internal user the gateway logs in as, with its API key (what the gateway is given)."""

    api_key: str = field(default="", repr=False)
    api_key_id: int | None = None


@dataclass
class RealOdooWorld:
    env: RealOdooEnv
    admin: odoorpc.ODOO = field(repr=False)
    run_id: str
    domain: str
    group_id: int
    group_xmlid: str
    group_created: bool
    integration: IntegrationUser
    contributor: OdooUser        # portal, in the contributor group, follower of task and order
    plain: OdooUser              # portal, not in the group, follower of task and order
    archived: OdooUser           # portal, in the contributor group, archived (active=False)
    internal: OdooUser           # internal user (base.group_user), follows nothing
    customer_partner_id: int     # company customer of the sale order (no user)
    project_id: int
    task_id: int
    sale_order_id: int
    sale_order_name: str
    task_followers: list[int] = field(default_factory=list)   # partner ids, right after provisioning
    order_followers: list[int] = field(default_factory=list)
    tracked: list[tuple[str, int]] = field(default_factory=list)
    cleaned: bool = False

    @property
    def tag(self) -> str:
        return f"{TAG_PREFIX}{self.run_id}"

    @property
    def users(self) -> list[OdooUser]:
        return [self.contributor, self.plain, self.archived, self.internal, self.integration]

    def track(self, model: str, *ids: int) -> None:
        """Have ``cleanup`` also unlink these records (made by a test), before the world's own."""
        self.tracked.extend((model, int(i)) for i in ids)

    def gateway(self) -> odoorpc.ODOO:
        """A fresh odoorpc connection as the integration user, logged in with its API key."""
        return self.env.connect_as(self.integration.login, self.integration.api_key)


# --- web sessions (cookie jar + JSON routes) ---------------------------------------------------

class WebSession:
    """A browser-like session on Odoo's ``/web`` JSON routes (cookie ``session_id`` kept in a jar)."""

    _ids = itertools.count(1)

    def __init__(self, env: RealOdooEnv) -> None:
        self.env = env
        self.jar = http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.uid: int | None = None
        self.info: dict[str, Any] = {}

    def json(self, route: str, params: Mapping[str, Any]) -> Any:
        payload = {"jsonrpc": "2.0", "method": "call", "id": next(self._ids), "params": dict(params)}
        request = urllib.request.Request(
            self.env.url + route, data=json.dumps(payload).encode(), method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with self._opener.open(request, timeout=self.env.timeout) as response:
                answer = json.loads(response.read().decode())
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")[:500]
            raise OdooWebError(route, {"message": f"HTTP {exc.code}: {body}"}) from None
        if answer.get("error"):
            raise OdooWebError(route, answer["error"])
        return answer.get("result")

    def authenticate(self, login: str, password: str) -> int:
        """``/web/session/authenticate`` with a password (API keys are refused here: facts a)."""
        self.info = self.json("/web/session/authenticate",
                              {"db": self.env.db, "login": login, "password": password}) or {}
        uid = self.info.get("uid")
        if not uid:
            raise OdooWebError("/web/session/authenticate", {"message": f"no uid for {login!r}"})
        self.uid = uid
        return uid

    def call_kw(self, model: str, method: str, args: list | None = None,
                kwargs: Mapping[str, Any] | None = None) -> Any:
        return self.json(f"/web/dataset/call_kw/{model}/{method}",
                         {"model": model, "method": method, "args": args or [], "kwargs": dict(kwargs or {})})

    def call_button(self, model: str, method: str, ids: list[int]) -> Any:
        return self.json(f"/web/dataset/call_button/{model}/{method}",
                         {"model": model, "method": method, "args": [ids], "kwargs": {}})

    def call_checked(self, model: str, method: str, ids: list[int], password: str) -> Any:
        """A ``@check_identity`` button: answer the password wizard if Odoo asks for it."""
        action = self.call_button(model, method, ids)
        if isinstance(action, dict) and action.get("res_model") == "res.users.identitycheck":
            wizard = action["res_id"]
            self.call_kw("res.users.identitycheck", "web_save", [[wizard], {"password": password}],
                         {"specification": {}})
            action = self.call_button("res.users.identitycheck", "run_check", [wizard])
        return action

    def chatter(self, model: str, res_id: int, limit: int = 100) -> list[dict[str, Any]]:
        """What the portal chatter shows: ``/mail/chatter_fetch`` (facts d), newest first.

        Each dict is Odoo's portal message format; it has at least ``id`` and ``body``.
        """
        result = self.json("/mail/chatter_fetch",
                           {"thread_model": model, "thread_id": res_id, "limit": limit}) or {}
        return list((result.get("data") or {}).get("mail.message") or [])

    def chatter_ids(self, model: str, res_id: int, limit: int = 100) -> list[int]:
        return [message["id"] for message in self.chatter(model, res_id, limit)]

    def can_read(self, model: str, res_id: int) -> bool:
        """Whether this session's user can see the record at all (record rules applied)."""
        try:
            return bool(self.call_kw(model, "search", [[("id", "=", res_id)]]))
        except OdooWebError:
            return False


def portal_session(world: RealOdooWorld, login: str, password: str) -> WebSession:
    """A logged-in web session of a (portal) user: ``session.chatter(model, res_id)`` is what it sees."""
    session = world.env.web_session()
    session.authenticate(login, password)
    return session


def portal_chatter(world: RealOdooWorld, user: OdooUser, model: str, res_id: int,
                   limit: int = 100) -> list[dict[str, Any]]:
    """Shortcut: log ``user`` in and return its chatter of the record (dicts with ``id``, ``body``)."""
    return portal_session(world, user.login, user.password).chatter(model, res_id, limit)


# --- admin-side reads --------------------------------------------------------------------------

MESSAGE_FIELDS = ["id", "body", "message_type", "subtype_id", "is_internal", "author_id", "email_from",
                  "message_id", "partner_ids", "attachment_ids", "reply_to", "model", "res_id", "date"]
NOTIFICATION_FIELDS = ["id", "mail_message_id", "res_partner_id", "notification_type",
                       "notification_status", "is_read", "failure_type", "mail_mail_id"]


def messages_on(world: RealOdooWorld, model: str, res_id: int) -> list[dict[str, Any]]:
    """Every mail.message of a record as the admin sees it, oldest first (notes included)."""
    return world.admin.env["mail.message"].search_read(
        [("model", "=", model), ("res_id", "=", res_id)], MESSAGE_FIELDS, order="id asc")


def new_message_id(world: RealOdooWorld) -> str:
    """A Message-ID unique to the run, in its mail domain."""
    return f"<{uuid.uuid4().hex}.{world.tag}@{world.domain}>"


def filed_id(reply: str) -> int:
    """The mail.message id of a gateway's "250 2.0.0 Filed as Odoo message N" reply."""
    assert reply.startswith("250 2.0.0 Filed as Odoo message "), reply
    return int(reply.rsplit(" ", 1)[1])


def stored_message(world: RealOdooWorld, model: str, res_id: int, message_id: int) -> dict[str, Any]:
    """One message of a record, as messages_on reads it."""
    [row] = [m for m in messages_on(world, model, res_id) if m["id"] == message_id]
    return row


def notifications_for_message(world: RealOdooWorld, message_id: int) -> list[dict[str, Any]]:
    """The mail.notification rows of a message (one per notified partner = one outgoing email)."""
    return world.admin.env["mail.notification"].search_read(
        [("mail_message_id", "=", message_id)], NOTIFICATION_FIELDS, order="id asc")


def note_posted_in_the_backend(world: RealOdooWorld, text: str) -> str:
    """An internal note an employee logs in the task's chatter; Odoo gives it its own Message-ID (facts i)."""
    note = world.admin.execute_kw("project.task", "message_post", [[world.task_id]],
                                  {"body": text, "message_type": "comment", "subtype_xmlid": "mail.mt_note",
                                   # The admin does not become a follower (facts c).
                                   "context": {"mail_create_nosubscribe": True}})
    note = note[0] if isinstance(note, list) else note
    return stored_message(world, "project.task", world.task_id, note)["message_id"]


def reply_quoting(world: RealOdooWorld, real_gateway: Any, headers: str, quoted: str) -> int:
    """The contributor's reply+ to the task, ``headers`` (In-Reply-To, References) above it and ``quoted``
    in its quote, filed: its mail.message id."""
    to = real_gateway.address("reply", "project.task", world.task_id)
    raw = real_gateway.message(world.contributor.email, to,
                               f"The pump runs again.\n\nOn Monday, someone wrote:\n> {quoted}\n",
                               subject="Re: Site visit", message_id=new_message_id(world))
    return filed_id(real_gateway.send(real_gateway.sign(headers.encode() + raw), to, mail_from=world.contributor.email))


def internal_authors_of(world: RealOdooWorld, note_id: str) -> list[int]:
    """The partner of the task's message ``note_id`` if an active internal user wrote it (the backend
    notes of note_posted_in_the_backend are the admin's), else nothing: whom the gateway notifies of a
    reply it files as a note because it answers that one (mail_thread.py:1297-1308 notifies the author)."""
    rows = world.admin.env["mail.message"].search_read(
        [("message_id", "=", note_id), ("model", "=", "project.task"), ("res_id", "=", world.task_id)],
        ["author_id"], order="create_date desc, id desc", limit=1)
    author = rows[0]["author_id"][0] if rows and rows[0]["author_id"] else None
    if author is None or not world.admin.env["res.users"].search([("partner_id", "=", author), ("share", "=", False)]):
        return []
    return [author]


def assert_a_note_nobody_outside_sees(world: RealOdooWorld, real_gateway: Any, filed: int, note_id: str) -> None:
    """The reply ``filed`` on the task is a note answering ``note_id``: in no portal chatter, and
    notified only to the internal author of that note, if it has one."""
    stored = stored_message(world, "project.task", world.task_id, filed)
    assert stored["subtype_id"][0] == _ref(world.admin, "mail.mt_note")
    notified = [row["res_partner_id"][0] for row in notifications_for_message(world, filed)]
    assert notified == internal_authors_of(world, note_id)
    for user in (world.plain, world.contributor):
        session = portal_session(world, user.login, user.password)
        assert filed not in session.chatter_ids("project.task", world.task_id)
    [row] = [row for row in real_gateway.journal() if row.odoo_message_id == filed]
    assert row.kind == "note" and f"answers internal message {note_id}" in row.decision


def followers_of(world: RealOdooWorld, model: str, res_id: int) -> list[int]:
    """Partner ids following a record."""
    rows = world.admin.env["mail.followers"].search_read(
        [("res_model", "=", model), ("res_id", "=", res_id)], ["partner_id"])
    return sorted(row["partner_id"][0] for row in rows if row["partner_id"])


# --- provisioning ------------------------------------------------------------------------------

def _new_run_id() -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def _password() -> str:
    return "Pw-" + secrets.token_urlsafe(18)


def _call(admin: odoorpc.ODOO, model: str, method: str, ids: list[int],
          context: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
    """A record method over /jsonrpc (odoorpc's browse() would first read every field)."""
    return admin.execute_kw(model, method, [list(ids)], {**kwargs, "context": {**QUIET, **(context or {})}})


def _ref(admin: odoorpc.ODOO, xmlid: str) -> int:
    module, name = xmlid.split(".", 1)
    return admin.execute("ir.model.data", "check_object_reference", module, name)[1]


def _ensure_group(admin: odoorpc.ODOO) -> tuple[int, bool]:
    """The contributor group behind ``note_gateway.group_portal_note_contributor``: reused when it
    exists (another run, or the real module's), created with its ir.model.data row otherwise.
    A row pointing at a deleted group is repaired."""
    Data = admin.env["ir.model.data"]
    Groups = admin.env["res.groups"]
    rows = Data.search_read([("module", "=", GROUP_MODULE), ("name", "=", GROUP_NAME)], ["model", "res_id"])
    if rows and rows[0]["model"] == "res.groups" and Groups.search([("id", "=", rows[0]["res_id"])]):
        return rows[0]["res_id"], False
    group_id = Groups.create({"name": GROUP_LABEL,
                              "comment": "Made by the note gateway's real-Odoo tests; removed by their cleanup."})
    if rows:
        Data.write([rows[0]["id"]], {"model": "res.groups", "res_id": group_id})
    else:
        Data.create({"module": GROUP_MODULE, "name": GROUP_NAME, "model": "res.groups",
                     "res_id": group_id, "noupdate": True})
    return group_id, True


def _create_user(admin: odoorpc.ODOO, *, name: str, login: str, group_ids: list[int],
                 active: bool = True, **extra: Any) -> OdooUser:
    password = _password()
    Users = admin.env["res.users"].with_context(**QUIET)
    user_id = Users.create({"name": name, "login": login, "email": login, "password": password,
                            "groups_id": [(6, 0, group_ids)], **extra})
    if not active:
        Users.write([user_id], {"active": False})
    partner_id = admin.env["res.users"].with_context(active_test=False).read([user_id], ["partner_id"])[0]["partner_id"][0]
    return OdooUser(user_id=user_id, partner_id=partner_id, login=login, email=login, name=name, password=password)


def create_api_key(env: RealOdooEnv, login: str, password: str, name: str,
                   duration: str = "90") -> tuple[str, int | None]:
    """Create an API key for an internal user through a web session, as the web client does
    (facts a: the wizard's ``make_key`` refuses ``/jsonrpc``). Returns (key, res.users.apikeys id).

    Non-admin internal users may not ask for more than 90 days."""
    session = WebSession(env)
    uid = session.authenticate(login, password)
    saved = session.call_kw("res.users.apikeys.description", "web_save",
                            [[], {"name": name, "duration": duration}], {"specification": {}})
    action = session.call_checked("res.users.apikeys.description", "make_key", [saved[0]["id"]], password)
    key = ((action or {}).get("context") or {}).get("default_key")
    if not key:
        raise OdooWebError("make_key", {"message": f"no key in the answer: {action!r}"})
    keys = session.call_kw("res.users.apikeys", "search_read",
                           [[("user_id", "=", uid), ("name", "=", name)], ["id"]])
    return key, (keys[-1]["id"] if keys else None)


def revoke_api_key(env: RealOdooEnv, login: str, password: str, key_id: int) -> None:
    """Remove an API key as its owner (``res.users.apikeys.remove`` is behind the identity check)."""
    session = WebSession(env)
    session.authenticate(login, password)
    session.call_checked("res.users.apikeys", "remove", [key_id], password)


def provision(env: RealOdooEnv, *, domain: str = DEFAULT_DOMAIN, run_id: str | None = None,
              integration_groups: tuple[str, ...] = INTEGRATION_GROUPS) -> RealOdooWorld:
    """Create a fresh world (see the module docstring). On failure, what was made is removed again.

    Logins and emails are ``<role>.ngw-test-<run id>@<domain>``; ``integration_groups`` are the
    xmlids of the integration user's groups (see INTEGRATION_GROUPS)."""
    admin = env.connect()
    run_id = run_id or _new_run_id()
    tag = f"{TAG_PREFIX}{run_id}"
    made: list[tuple[str, int]] = []  # for the rollback if provisioning fails half-way
    integration: IntegrationUser | None = None
    group_id, group_created = _ensure_group(admin)
    try:
        group_user = _ref(admin, "base.group_user")
        group_portal = _ref(admin, "base.group_portal")

        def user(role: str, name: str, groups: list[int], **kw: Any) -> OdooUser:
            u = _create_user(admin, name=f"{name} {tag}", login=f"{role}.{tag}@{domain}", group_ids=groups, **kw)
            made.extend([("res.users", u.user_id), ("res.partner", u.partner_id)])
            return u

        base = user("gateway", "Email Gateway", [_ref(admin, xmlid) for xmlid in integration_groups])
        integration = IntegrationUser(**vars(base))
        integration.api_key, integration.api_key_id = create_api_key(
            env, integration.login, integration.password, f"note gateway test {tag}")
        contributor = user("contrib", "Paula Contributor", [group_portal, group_id])
        plain = user("plain", "Peter Plain", [group_portal])
        archived = user("archived", "Arthur Archived", [group_portal, group_id], active=False)
        internal = user("internal", "Marc Internal", [group_user])

        Partner = admin.env["res.partner"].with_context(**QUIET)
        customer_id = Partner.create({"name": f"Customer {tag}", "email": f"customer.{tag}@{domain}",
                                      "is_company": True})
        made.append(("res.partner", customer_id))

        Project = admin.env["project.project"].with_context(**QUIET)
        project_id = Project.create({"name": f"Gateway Project {tag}", "privacy_visibility": "portal"})
        made.append(("project.project", project_id))
        Task = admin.env["project.task"].with_context(**QUIET)
        task_id = Task.create({"name": f"Gateway Task {tag}", "project_id": project_id, "user_ids": [(6, 0, [])]})
        made.append(("project.task", task_id))
        _call(admin, "project.task", "message_subscribe", [task_id],
              partner_ids=[contributor.partner_id, plain.partner_id])

        Order = admin.env["sale.order"].with_context(**QUIET)
        order_vals: dict[str, Any] = {"partner_id": customer_id, "client_order_ref": tag}
        products = admin.env["product.product"].search([("sale_ok", "=", True), ("type", "=", "consu")], limit=1)
        if products:
            order_vals["order_line"] = [(0, 0, {"product_id": products[0], "product_uom_qty": 1})]
        order_id = Order.create(order_vals)
        made.append(("sale.order", order_id))
        _call(admin, "sale.order", "message_subscribe", [order_id],
              partner_ids=[contributor.partner_id, plain.partner_id])
        order_name = Order.read([order_id], ["name"])[0]["name"]
        world = RealOdooWorld(
            env=env, admin=admin, run_id=run_id, domain=domain, group_id=group_id, group_xmlid=GROUP_XMLID,
            group_created=group_created, integration=integration, contributor=contributor, plain=plain,
            archived=archived, internal=internal, customer_partner_id=customer_id, project_id=project_id,
            task_id=task_id, sale_order_id=order_id, sale_order_name=order_name)
        world.task_followers = followers_of(world, "project.task", task_id)
        world.order_followers = followers_of(world, "sale.order", order_id)
    except BaseException:
        _rollback(env, admin, made, integration, group_id)
        raise
    return world


# --- cleanup -----------------------------------------------------------------------------------

def _unlink_or_archive(admin: odoorpc.ODOO, model: str, ids: list[int], problems: list[str]) -> None:
    Model = admin.env[model].with_context(active_test=False, **QUIET)
    ids = Model.search([("id", "in", list(ids))]) if ids else []
    for record_id in ids:
        try:
            if model == "sale.order":
                state = Model.read([record_id], ["state"])[0]["state"]
                if state not in ("draft", "cancel"):
                    _call(admin, model, "action_cancel", [record_id], {"disable_cancel_warning": True})
            Model.unlink([record_id])
        except Exception as exc:  # noqa: BLE001 - fall back to archiving, report if that fails too
            try:
                if "active" in Model.fields_get(["active"]):
                    Model.write([record_id], {"active": False})
                else:
                    problems.append(f"{model} {record_id}: {exc}")
            except Exception as exc2:  # noqa: BLE001
                problems.append(f"{model} {record_id}: {exc}; archiving: {exc2}")


def _drop_group(admin: odoorpc.ODOO, group_id: int, problems: list[str]) -> None:
    """Remove the contributor group once no user (active or not) is in it any more, if the tests
    made it (its name is GROUP_LABEL): the last run to clean up removes it, whichever made it."""
    Groups = admin.env["res.groups"]
    rows = Groups.search_read([("id", "=", group_id)], ["name"])
    if not rows or rows[0]["name"] != GROUP_LABEL:
        return  # gone already, or the real module's group
    if admin.env["res.users"].with_context(active_test=False).search([("groups_id", "in", [group_id])]):
        return  # a concurrent run still uses it; its cleanup removes it
    Data = admin.env["ir.model.data"]
    try:
        data_ids = Data.search([("model", "=", "res.groups"), ("res_id", "=", group_id)])
        if data_ids:
            Data.unlink(data_ids)
        Groups.unlink([group_id])
    except Exception as exc:  # noqa: BLE001
        problems.append(f"res.groups {group_id}: {exc}")


def _rollback(env: RealOdooEnv, admin: odoorpc.ODOO, made: list[tuple[str, int]],
              integration: IntegrationUser | None, group_id: int) -> list[str]:
    problems: list[str] = []
    if integration is not None and integration.api_key_id:
        try:
            revoke_api_key(env, integration.login, integration.password, integration.api_key_id)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"api key {integration.api_key_id}: {exc}")
    order = ["sale.order", "project.task", "project.project", "res.users", "res.partner"]
    for model in order:
        _unlink_or_archive(admin, model, [i for m, i in made if m == model], problems)
    others = [(m, i) for m, i in made if m not in order]
    for model, record_id in others:
        _unlink_or_archive(admin, model, [record_id], problems)
    _drop_group(admin, group_id, problems)
    return problems


def cleanup(world: RealOdooWorld) -> list[str]:
    """Remove everything ``provision`` made (and what was ``track``-ed): the API key is revoked,
    records are unlinked (archived when Odoo refuses), the group is dropped when no user is left
    in it. Returns the problems met (empty when the database is clean again).
    Calling it twice is harmless."""
    if world.cleaned:
        return []
    admin = world.env.connect()  # a fresh connection: the world's may have been used for anything
    problems: list[str] = []
    for model, record_id in reversed(world.tracked):
        _unlink_or_archive(admin, model, [record_id], problems)
    made: list[tuple[str, int]] = [("sale.order", world.sale_order_id), ("project.task", world.task_id),
                                   ("project.project", world.project_id)]
    # tasks added to the project by a test
    made += [("project.task", t) for t in admin.env["project.task"].with_context(active_test=False).search(
        [("project_id", "=", world.project_id)])]
    for user in world.users:
        made += [("res.users", user.user_id), ("res.partner", user.partner_id)]
    made.append(("res.partner", world.customer_partner_id))
    problems += _rollback(world.env, admin, made, world.integration, world.group_id)
    world.cleaned = True
    return problems


def cleanup_stale(env: RealOdooEnv, *, domain: str = DEFAULT_DOMAIN, older_than: float = 3600.0) -> list[str]:
    """Remove what runs that never cleaned up left behind: records tagged ``ngw-test-<run id>``
    whose run started more than ``older_than`` seconds ago (younger ones may belong to a
    concurrent run). Keys of users that end up archived stay in the table but cannot log in."""
    admin = env.connect()
    cutoff = time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() - older_than))

    def stale(text: str) -> bool:
        start = text.find(TAG_PREFIX)
        return start >= 0 and text[start + len(TAG_PREFIX):][:14] < cutoff

    problems: list[str] = []

    def find(model: str, fname: str, pattern: str) -> list[int]:
        Model = admin.env[model].with_context(active_test=False)
        rows = Model.search_read([(fname, "=like", pattern)], [fname])
        return [row["id"] for row in rows if stale(row[fname] or "")]

    orders = find("sale.order", "client_order_ref", f"{TAG_PREFIX}%")
    projects = find("project.project", "name", f"%{TAG_PREFIX}%")
    tasks = find("project.task", "name", f"%{TAG_PREFIX}%")
    tasks += admin.env["project.task"].with_context(active_test=False).search([("project_id", "in", projects)]) if projects else []
    users = find("res.users", "login", f"%{TAG_PREFIX}%@{domain}")
    partners = find("res.partner", "email", f"%{TAG_PREFIX}%@{domain}")
    for model, ids in (("sale.order", orders), ("project.task", sorted(set(tasks))),
                       ("project.project", projects), ("res.users", users), ("res.partner", partners)):
        _unlink_or_archive(admin, model, ids, problems)
    rows = admin.env["ir.model.data"].search_read([("module", "=", GROUP_MODULE), ("name", "=", GROUP_NAME)], ["res_id"])
    if rows:
        _drop_group(admin, rows[0]["res_id"], problems)
    return problems


SKIP_REASON = ("real-Odoo suite skipped: set " + ", ".join(ENV_VARS) + " to point it at a real Odoo 18 "
               "(URL, database, administrator login and password)")


def real_odoo_or_skip() -> RealOdooEnv:
    """The real Odoo named by the environment, or a skip of the calling module with the reason."""
    import pytest

    env = RealOdooEnv.from_environ()
    if env is None:
        pytest.skip(SKIP_REASON, allow_module_level=True)
    return env
