"""The test Odoo: a JSON-RPC server on loopback that behaves as ODOO_FACTS.md measured and fails on demand."""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import logging
import secrets
import signal
import socket
import ssl
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable
from urllib.parse import urlsplit

from gateway.testing import odoo_demo
from gateway.testing.odoo_demo import (
    ADMIN_PARTNER_ID,
    ADMIN_PASSWORD,
    ADMIN_UID,
    ARCHIVED_EMAIL,
    ARCHIVED_PARTNER_ID,
    ARCHIVED_UID,
    CONTRIBUTOR_GROUP_ID,
    CONTRIBUTOR_GROUP_XMLID,
    CUSTOMER_PARTNER_ID,
    DEMO_API_KEY,
    DEMO_DATABASE,
    GATEWAY_EMAIL,
    GATEWAY_LOGIN,
    GATEWAY_PARTNER_ID,
    GATEWAY_PASSWORD,
    GATEWAY_UID,
    JOEL_EMAIL,
    JOEL_PARTNER_ID,
    JOEL_UID,
    MARC_PARTNER_ID,
    MARC_UID,
    PAULA_EMAIL,
    PAULA_LOGIN,
    PAULA_PARTNER_ID,
    PAULA_PASSWORD,
    PAULA_UID,
    PETER_EMAIL,
    PETER_LOGIN,
    PETER_PARTNER_ID,
    PETER_PASSWORD,
    PETER_UID,
    PRIVATE_TASK_ID,
    PROJECT_ID,
    PUBLIC_UID,
    SALE_ORDER_ID,
    SALE_ORDER_NAME,
    SUBTYPE_COMMENT_ID,
    SUBTYPE_NOTE_ID,
    TASK_ID,
)
from gateway.testing.odoo_mail import OutgoingEmail, format_message, portal_chatter_ids, subscribe, unsubscribe
from gateway.testing.odoo_models import build_database, follower_partners, messages_of, register_api_key, set_xmlid
from gateway.testing.odoo_orm import (
    AccessDenied,
    AccessError,
    Database,
    DatabaseMissing,
    Env,
    SessionExpired,
    UserError,
    as_ids,
    create_record,
    exception_name,
    find_method,
    read_records,
    search_ids,
    sort_ids,
    write_records,
)

__all__ = ["TestOdoo", "Call", "Fault", "OutgoingEmail", "FAIL_MODES", "seed_demo", "main",
    "ADMIN_PARTNER_ID", "ADMIN_PASSWORD", "ADMIN_UID", "ARCHIVED_EMAIL", "ARCHIVED_PARTNER_ID",
    "ARCHIVED_UID", "CONTRIBUTOR_GROUP_ID", "CONTRIBUTOR_GROUP_XMLID", "CUSTOMER_PARTNER_ID", "DEMO_API_KEY",
    "DEMO_DATABASE", "GATEWAY_EMAIL", "GATEWAY_LOGIN", "GATEWAY_PARTNER_ID", "GATEWAY_PASSWORD",
    "GATEWAY_UID", "JOEL_EMAIL", "JOEL_PARTNER_ID", "JOEL_UID", "MARC_PARTNER_ID", "MARC_UID", "PAULA_EMAIL",
    "PAULA_LOGIN", "PAULA_PARTNER_ID", "PAULA_PASSWORD", "PAULA_UID", "PETER_EMAIL", "PETER_LOGIN",
    "PETER_PARTNER_ID", "PETER_PASSWORD", "PETER_UID", "PRIVATE_TASK_ID", "PROJECT_ID", "PUBLIC_UID",
    "SALE_ORDER_ID", "SALE_ORDER_NAME", "SUBTYPE_COMMENT_ID", "SUBTYPE_NOTE_ID", "TASK_ID"]

log = logging.getLogger(__name__)

FAIL_MODES = ("refuse", "hang", "http500", "garbage", "rpc_error", "die_after_post", "die_before_post", "proxy_gave_up")

# werkzeug's InternalServerError page, which is what an Odoo behind no proxy answers on a crash.
_HTTP500_BODY = (
    b"<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n"
    b"<h1>Internal Server Error</h1>\n<p>The server encountered an internal error and was unable to "
    b"complete your request. Either the server is overloaded or there is an error in the application.</p>\n"
)
# What a reverse proxy shows while Odoo restarts: a 200 that is not JSON.
_GARBAGE_BODY = b"<html><head><title>Odoo</title></head><body><p>Service is restarting, please wait.</p></body></html>"
# What a reverse proxy answers itself: its timeout waiting for Odoo, a request body over its limit.
_PROXY_TIMEOUT_BODY = (b"<html><head><title>Gateway timeout</title></head>"
                       b"<body><h1>The origin did not answer in time</h1></body></html>")
_HTTP413_BODY = (b"<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 "
                 b"Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
_NOT_FOUND_BODY = (
    b"<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n"
    b"<p>The requested URL was not found on the server.</p>\n"
)


@dataclass
class Call:
    """One request as the test Odoo received it; ``ended`` stays None while it is being served."""

    route: str
    service: str | None = None
    method: str | None = None
    model: str | None = None
    model_method: str | None = None
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    context: dict = field(default_factory=dict)
    uid: int | None = None
    started: float = 0.0
    ended: float | None = None
    outcome: str = "pending"
    error: str | None = None
    # The bytes of the request body as they came over HTTP.
    size: int = 0

    @property
    def ok(self) -> bool:
        """Answered with a result (not an error, not a fault)."""
        return self.outcome == "ok"

    @property
    def seconds(self) -> float | None:
        return None if self.ended is None else self.ended - self.started


@dataclass(frozen=True)
class Filing:
    """One call that files a message in a record's chatter."""

    model: str
    res_id: int
    subtype_xmlid: str
    call: Call


@dataclass
class Fault:
    """A failure to inject: which mode, for which calls, how many times."""

    mode: str
    model: str | None = None
    method: str | None = None
    remaining: int | None = None
    seconds: float | None = None
    error_name: str = "psycopg2.OperationalError"
    error_message: str = "server closed the connection unexpectedly"
    status: int = 503

    def matches(self, call: Call) -> bool:
        if self.model is not None and call.model != self.model:
            return False
        if self.method is not None and self.method not in (call.model_method, call.method):
            return False
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    test_odoo: TestOdoo

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Clients keep connections alive (issue 6), so closing the listening socket alone would
        # leave "refuse" and stop() unable to cut a client that is already connected.
        self.established: set[socket.socket] = set()
        self.established_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.established_lock:
            self.established.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.established_lock:
            self.established.discard(request)
        super().shutdown_request(request)

    def drop_established(self) -> None:
        with self.established_lock:
            established, self.established = self.established, set()
        for connection in established:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout, a refused hang) is part of the tests, not an error.
        log.debug("request from %s ended with an error", client_address, exc_info=True)


class _Server6(_Server):
    """The same on an IPv6 address (TestOdoo(host="::1"))."""

    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The headers and the body leave in two writes; with Nagle's algorithm the body may wait for
    # the client's delayed ACK of the headers. Benchmarks (issue 6) need the test Odoo to add no
    # delay it was not told to add with ``latency``.
    disable_nagle_algorithm = True
    server_version = "Werkzeug/3.0.1"
    sys_version = "Python/3.11"
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 (the name http.server dispatches to)
        self.server.test_odoo._serve(self, "POST")

    def do_GET(self) -> None:  # noqa: N802
        self.server.test_odoo._serve(self, "GET")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s " + format, self.address_string(), *args)

    def date_time_string(self, timestamp: float | None = None) -> str:
        # The Date header of every answer, as Odoo's clock would stamp it (TestOdoo.clock_offset).
        if timestamp is None:
            timestamp = time.time() + self.server.test_odoo.clock_offset
        return super().date_time_string(timestamp)


class _HttpError(Exception):
    def __init__(self, status: int, body: bytes = _NOT_FOUND_BODY) -> None:
        super().__init__(status)
        self.status, self.body = status, body


class _Reply:
    """A JSON-RPC result with the extra headers a route wants to set (the session cookie)."""

    def __init__(self, result: Any, headers: dict[str, str] | None = None) -> None:
        self.result, self.headers = result, headers or {}


class TestOdoo:
    """The test Odoo server. ``TestOdoo.with_demo_data()`` holds the ODOO_FACTS.md world.

    Every request is recorded in ``calls``; ``fail()`` (or ``fail_mode``) makes requests fail,
    ``latency`` slows them down, and the data helpers (``add_user``, ``add_record`` ...) prepare
    the records a test needs without going through RPC.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, database: str = odoo_demo.DEMO_DATABASE,
                 version: str = "18.0") -> None:
        if int(version.split(".")[0]) < 17:
            raise ValueError("the test Odoo speaks for Odoo 17.0 and later")
        self._host = host
        self._port = port
        self._version = version
        self.db: Database = build_database(database, version)
        odoo_demo.seed_base(self.db)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._started = False
        self._state_lock = threading.Lock()
        self._listener_lock = threading.Lock()
        self._calls: list[Call] = []
        self._fault: Fault | None = None
        self._hanging: list[threading.Event] = []
        self._latency: dict[Any, float] = {}
        # A reverse proxy's request body limit in front of this Odoo (nginx client_max_body_size):
        # a larger request is answered 413 with nginx's page and never reaches Odoo. None: no limit.
        self.body_limit: int | None = None
        # Seconds this Odoo's clock runs ahead of the host's (negative: behind), as the Date header of
        # its answers shows it: `doctor` compares the gateway's clock with it.
        self.clock_offset = 0.0
        self._tls: ssl.SSLContext | None = None
        # Odoo's login cooldown (res_users.py _assert_can_auth): failed logins are counted per client
        # address; once there are login_cooldown_after of them (ir.config_parameter
        # base.login_cooldown_after, 5; 0 turns it off), every login from that address within
        # login_cooldown_duration seconds of the last failure (base.login_cooldown_duration, 60) is
        # refused, the right password or key too, and not counted; a successful login clears the count.
        self.login_cooldown_after = 5
        self.login_cooldown_duration = 60.0
        self._login_failures: dict[str, tuple[int, float]] = {}

    @classmethod
    def with_demo_data(cls, *, note_gateway_setup: bool = True, **options: Any) -> TestOdoo:
        """The ODOO_FACTS.md world; by default as after `note-gateway setup-odoo` (odoo_security.py)."""
        odoo = cls(**options)
        seed_demo(odoo, note_gateway_setup)
        return odoo

    # --- Lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        with self._state_lock:
            self._started = True
        self._apply_listener()

    def stop(self) -> None:
        with self._state_lock:
            self._started = False
            self._fault = None
        self.release()
        self._apply_listener()

    def __enter__(self) -> TestOdoo:
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def _apply_listener(self) -> None:
        # Listening or not follows from two facts only (started, and not refusing), so that
        # concurrent fail()/heal()/stop() calls cannot leave a stray socket open or closed.
        with self._listener_lock:
            with self._state_lock:
                listen = self._started and not (self._fault is not None and self._fault.mode == "refuse")
            if listen and self._server is None:
                self._open()
            elif not listen and self._server is not None:
                self._close()

    def use_tls(self, certificate: Any, key: Any) -> None:
        """Serve HTTPS with this certificate and key (PEM files) from now on, as an Odoo behind a TLS
        proxy; ``url`` says https://. Connections open now are closed."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(certificate), str(key))
        with self._listener_lock:
            self._tls = context
            if self._server is not None:
                self._close()
                self._open()

    def _open(self) -> None:
        server = (_Server6 if ":" in self._host else _Server)((self._host, self._port), _Handler)
        if self._tls is not None:
            # A client that refuses the certificate fails the handshake in accept(): socketserver
            # drops that connection (an OSError) and goes on serving.
            server.socket = self._tls.wrap_socket(server.socket, server_side=True)
        server.test_odoo = self
        self._port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  name=f"test-odoo-{self._port}", daemon=True)
        thread.start()
        self._server, self._thread = server, thread

    def _close(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.drop_established()
        if thread is not None:
            thread.join(timeout=5)

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def open_connections(self) -> int:
        """Client connections open right now (a client that keeps them alive holds one between calls)."""
        server = self._server
        if server is None:
            return 0
        with server.established_lock:
            return len(server.established)

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{'https' if self._tls is not None else 'http'}://{host}:{self._port}"

    @property
    def database(self) -> str:
        return self.db.name

    @property
    def version(self) -> str:
        return self._version

    @property
    def version_info(self) -> dict[str, Any]:
        major, minor = (int(part) for part in (self._version.split(".") + ["0"])[:2])
        return {
            "server_version": self._version,
            "server_version_info": [major, minor, 0, "final", 0, ""],
            "server_serie": self._version,
            "protocol_version": 1,
        }

    # --- Faults and latency ---------------------------------------------------------------------

    @property
    def fail_mode(self) -> str | None:
        fault = self._fault
        return fault.mode if fault else None

    @fail_mode.setter
    def fail_mode(self, mode: str | None) -> None:
        self.fail(mode)

    @property
    def fault(self) -> Fault | None:
        return self._fault

    def fail(self, mode: str | None, *, model: str | None = None, method: str | None = None,
             times: int | None = None, seconds: float | None = None, error_name: str | None = None,
             error_message: str | None = None, status: int | None = None) -> None:
        """Make requests fail from now on; ``None`` heals.

        ``model``/``method`` restrict the fault to matching calls (``method`` is the model method
        for object calls, else the service method, e.g. "login"); ``times`` limits it to the next
        N matching calls. "hang" waits until ``release()``/``heal()`` or ``seconds``, then answers;
        "die_after_post" lets message_post store its message, then drops the connection without
        an answer; "die_before_post" drops it without running the call, nothing stored (Odoo killing
        a worker at limit_time_real rolls its transaction back), after ``seconds`` if given;
        "refuse" closes the listening socket (healing reopens it on the same port);
        "proxy_gave_up" is a reverse proxy's own timeout: the client gets HTTP ``status`` (503 by
        default: Azure Front Door; 504 nginx, 524 Cloudflare, 408) with an HTML page at once, while
        Odoo goes on with the call, after ``seconds`` (or ``release()``), and stores what it files.
        """
        if mode is None:
            self.heal()
            return
        if mode not in FAIL_MODES:
            raise ValueError(f"fail mode must be one of {', '.join(FAIL_MODES)} or None")
        if mode == "refuse" and (model or method or times):
            raise ValueError("a refused connection cannot be told apart by model, method or count")
        if mode in ("die_after_post", "die_before_post") and method is None:
            method = "message_post"
        fault = Fault(mode, model, method, times, seconds)
        if error_name:
            fault.error_name = error_name
        if error_message:
            fault.error_message = error_message
        if status:
            fault.status = status
        with self._state_lock:
            previous = self._fault
            self._fault = fault
        if previous is not None and previous.mode == "hang" and mode != "hang":
            self.release()
        self._apply_listener()

    def heal(self) -> None:
        """Stop failing: release hung requests and reopen a refused port."""
        with self._state_lock:
            self._fault = None
        self.release()
        self._apply_listener()

    def release(self) -> None:
        """Let the requests hanging now go on; new requests still hang until ``heal()``."""
        with self._state_lock:
            hanging, self._hanging = self._hanging, []
        for event in hanging:
            event.set()

    @property
    def latency(self) -> dict[Any, float]:
        """Seconds each request sleeps before it is served (in its own thread, outside the
        database lock), looked up by (model, method), then by method name ("message_post",
        "login", "version_info"), then "*"; e.g. ``{"message_post": 0.025, "*": 0.010}``."""
        return dict(self._latency)

    @latency.setter
    def latency(self, value: dict[Any, float] | None) -> None:
        self._latency = dict(value or {})

    def _take_fault(self, call: Call) -> Fault | None:
        with self._state_lock:
            fault = self._fault
            if fault is None or fault.mode == "refuse" or not fault.matches(call):
                return None
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._fault = None
            return fault

    def _delay_for(self, call: Call) -> float:
        latency = self._latency
        keys = [(call.model, call.model_method)] if call.model else []
        keys += [key for key in (call.model_method, call.method) if key] + ["*"]
        for key in keys:
            if key in latency:
                return latency[key]
        return 0.0

    # --- Call log -------------------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        with self._state_lock:
            return list(self._calls)

    def posts(self) -> list[Call]:
        """The message_post calls, oldest first."""
        return [call for call in self.calls if call.model_method == "message_post"]

    def filings(self) -> list[Filing]:
        """The calls that filed (or tried to file) a message, oldest first: message_post, as the
        gateway files notes, and mail.thread.message_process, as it files replies."""
        found = []
        for call in self.calls:
            if call.model_method == "message_post":
                res_id = call.args[0][0] if call.args and call.args[0] else 0
                found.append(Filing(call.model or "", res_id, call.kwargs.get("subtype_xmlid") or "", call))
            elif call.model_method == "message_process":
                # Odoo's mail gateway files an incoming email as a Discussions comment.
                found.append(Filing(call.args[0], call.kwargs.get("thread_id") or 0, "mail.mt_comment", call))
        return found

    def clear_calls(self) -> None:
        with self._state_lock:
            self._calls.clear()

    @property
    def outbox(self) -> list[OutgoingEmail]:
        """The notification emails sent so far (Odoo sends them before message_post returns)."""
        with self.db.lock:
            return list(self.db.outbox)

    def clear_outbox(self) -> None:
        with self.db.lock:
            self.db.outbox.clear()

    # --- Data helpers (no RPC, no access checks) ------------------------------------------------

    def _env(self, uid: int = 1) -> Env:
        return Env(self.db, uid, su=True)

    def add_partner(self, name: str, email: str | None = None, *, parent_id: int | None = None,
                    is_company: bool = False, id: int | None = None, **values: Any) -> int:  # noqa: A002
        with self.db.lock:
            values = {"name": name, "email": email or False, "parent_id": parent_id or False,
                      "is_company": is_company, "company_id": 1, **values}
            return create_record(self._env(), "res.partner", values, id)

    def add_user(self, login: str, name: str | None = None, email: str | None = None, *, internal: bool = False,
                 password: str | None = None, api_key: str | None = None, groups: Iterable[int | str] = (),
                 active: bool = True, partner_id: int | None = None, id: int | None = None,  # noqa: A002
                 notification_type: str = "email") -> int:
        """A user of its own partner (or of ``partner_id``): portal unless ``internal``; ``groups``
        are ids or xmlids added to base.group_user or base.group_portal."""
        with self.db.lock:
            base_group = "base.group_user" if internal else "base.group_portal"
            group_ids = [self._group_id(base_group)] + [self._group_id(group) for group in groups]
            if partner_id is None:
                partner_id = self.add_partner(name or login, email or (login if "@" in login else None))
            values = {"login": login, "partner_id": partner_id, self.db.groups_field: list(dict.fromkeys(group_ids)),
                      "active": active, "notification_type": notification_type}
            if password:
                values["password"] = password
            uid = create_record(self._env(), "res.users", values, id)
            if api_key:
                register_api_key(self.db, uid, api_key)
            return uid

    def add_api_key(self, uid: int, key: str | None = None, *, name: str = "note gateway",
                    expiration_date: str | bool | None = None) -> str:
        """A new key of ``uid``: by default it expires in 90 days, as a non-admin's key in Odoo 18;
        ``expiration_date`` ("YYYY-MM-DD HH:MM:SS" UTC, or False for none) sets its end."""
        key = key or secrets.token_hex(20)
        with self.db.lock:
            register_api_key(self.db, uid, key, name=name, expiration_date=expiration_date)
        return key

    def revoke_api_key(self, uid: int, key: str) -> None:
        """Remove a key, as its user or an admin does in Preferences > Account Security."""
        with self.db.lock:
            self.db.api_keys[uid].remove(key)
            row = self.db.api_key_rows.pop(key, None)
            if row is not None:
                self.db.rows["res.users.apikeys"].pop(row, None)

    def add_group(self, name: str, xmlid: str | None = None, *, id: int | None = None,  # noqa: A002
                  category: str | None = None) -> int:
        with self.db.lock:
            group_id = create_record(self._env(), "res.groups", {"name": name, "category_name": category or False}, id)
            if xmlid:
                set_xmlid(self.db, xmlid, "res.groups", group_id)
            return group_id

    def _group_id(self, group: int | str) -> int:
        if isinstance(group, int):
            return group
        found = self.db.xmlid_to_id(group)
        if found is None:
            raise ValueError(f"External ID not found in the system: {group}")
        return found

    def set_group(self, uid: int, group: int | str, member: bool = True) -> None:
        with self.db.lock:
            group_id = self._group_id(group)
            row = self.db.rows["res.users"][uid]
            current = list(row.get(self.db.groups_field) or [])
            if member and group_id not in current:
                current.append(group_id)
            elif not member and group_id in current:
                current.remove(group_id)
            row[self.db.groups_field] = current

    def set_xmlid(self, xmlid: str, model: str, record_id: int) -> None:
        with self.db.lock:
            set_xmlid(self.db, xmlid, model, record_id)

    def add_record(self, model: str, values: dict[str, Any] | None = None, *, id: int | None = None,  # noqa: A002
                   followers: Iterable[int] = (), xmlid: str | None = None, **more: Any) -> int:
        with self.db.lock:
            record_id = create_record(self._env(), model, {**(values or {}), **more}, id)
            if followers:
                subscribe(self._env(), model, record_id, list(followers))
            if xmlid:
                set_xmlid(self.db, xmlid, model, record_id)
            return record_id

    def write(self, model: str, record_id: int, values: dict[str, Any]) -> None:
        with self.db.lock:
            write_records(self._env().with_context(active_test=False), model, [record_id], values)

    def archive(self, model: str, record_id: int) -> None:
        self.write(model, record_id, {"active": False})

    def add_follower(self, model: str, res_id: int, partner_id: int,
                     subtypes: Iterable[int | str] | None = None) -> int:
        """Subscribe a partner (by default to the model's default subtypes, "Discussions");
        returns the mail.followers id."""
        with self.db.lock:
            subtype_ids = None if subtypes is None else [self._xmlid_or_id(s) for s in subtypes]
            subscribe(self._env(), model, res_id, [partner_id], subtype_ids)
            rows = self.db.rows["mail.followers"]
            return next(fid for fid, row in rows.items() if row["res_model"] == model and row["res_id"] == res_id
                        and row["partner_id"] == partner_id)

    def remove_follower(self, model: str, res_id: int, partner_id: int) -> None:
        with self.db.lock:
            unsubscribe(self._env(), model, res_id, [partner_id])

    def _xmlid_or_id(self, value: int | str) -> int:
        return value if isinstance(value, int) else self._group_id(value)

    def record(self, model: str, record_id: int, fields: list[str] | None = None) -> dict[str, Any]:
        """One record as ``read`` returns it to an administrator."""
        with self.db.lock:
            return read_records(self._env().with_context(active_test=False), model, [record_id], fields)[0]

    def search(self, model: str, domain: list | None = None, *, active_test: bool = True) -> list[int]:
        with self.db.lock:
            env = self._env()
            return sort_ids(env, model, search_ids(env, model, domain or [], active_test=active_test), None)

    def followers(self, model: str, res_id: int) -> list[int]:
        """The partner ids following a record, in subscription order."""
        with self.db.lock:
            return follower_partners(self._env(), model, res_id)

    def messages(self, model: str, res_id: int) -> list[dict[str, Any]]:
        """Every message of a record, newest first, as read by an administrator."""
        with self.db.lock:
            ids = messages_of(self._env(), model, res_id)
            return read_records(self._env(), "mail.message", ids) if ids else []

    def message(self, message_id: int) -> dict[str, Any]:
        """One mail.message as read by an administrator, with its subtype's xmlid added."""
        with self.db.lock:
            values = read_records(self._env(), "mail.message", [message_id])[0]
            subtype_id = values["subtype_id"][0] if values["subtype_id"] else None
            values["subtype_xmlid"] = next(iter(self.db.xmlids("mail.message.subtype", subtype_id)), False)
            return values

    def notifications(self, message_id: int) -> list[dict[str, Any]]:
        with self.db.lock:
            env = self._env()
            ids = sort_ids(env, "mail.notification",
                           search_ids(env, "mail.notification", [("mail_message_id", "=", message_id)]), None)
            return read_records(env, "mail.notification", ids) if ids else []

    def attachment_bytes(self, attachment_id: int) -> bytes:
        with self.db.lock:
            return self.db.blobs.get(attachment_id, b"")

    def internal_chatter(self, model: str, res_id: int) -> list[dict[str, Any]]:
        """All messages of a record as the backend chatter shows them to an employee."""
        with self.db.lock:
            env = self._env()
            return [format_message(env, message_id) for message_id in messages_of(env, model, res_id)]

    def portal_chatter(self, model: str, res_id: int, partner_id: int) -> list[dict[str, Any]]:
        """What the portal page of a record shows to the portal user of ``partner_id`` (what
        /mail/chatter_fetch answers it, facts d): Discussions comments only, never internal, and
        only on a record its record rules let it read or messages it authored or received."""
        with self.db.lock:
            return [format_message(self._env(), message_id)
                    for message_id in self.portal_chatter_ids(model, res_id, partner_id)]

    def portal_chatter_ids(self, model: str, res_id: int, partner_id: int) -> list[int]:
        """The ids of ``portal_chatter``, newest first."""
        with self.db.lock:
            users = sorted(uid for uid, row in self.db.rows["res.users"].items() if row.get("partner_id") == partner_id)
            env = Env(self.db, users[0] if users else PUBLIC_UID)
            return portal_chatter_ids(env, model, res_id, partner_id=partner_id)

    # --- Serving --------------------------------------------------------------------------------

    def _serve(self, handler: _Handler, verb: str) -> None:
        started = time.time()
        path = urlsplit(handler.path).path
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        call = Call(route=path, started=started, size=len(raw))
        if verb == "GET":
            self._record(call)
            if path == "/web/health":
                call.outcome, call.ended = "ok", time.time()
                self._send(handler, 200, b'{"status": "pass"}', "application/json")
            else:
                call.outcome, call.ended = "not found", time.time()
                self._send(handler, 404, _NOT_FOUND_BODY, "text/html; charset=utf-8")
            return
        if self.body_limit is not None and len(raw) > self.body_limit:
            self._record(call)
            call.outcome, call.ended = "too large", time.time()
            self._send(handler, 413, _HTTP413_BODY, "text/html")
            return
        try:
            # As Odoo reads a JSON-RPC body (odoo/http.py get_json_data): werkzeug's
            # get_data(as_text=True), UTF-8 with errors replaced, then json.loads of that text.
            payload = json.loads(raw.decode("utf-8", "replace") if raw else "{}")
            if not isinstance(payload, dict):
                raise ValueError("not an object")
        except ValueError:
            self._record(call)
            call.outcome, call.ended = "bad request", time.time()
            self._send(handler, 400, b"<p>Invalid JSON data</p>", "text/html; charset=utf-8")
            return
        request_id = payload.get("id")
        params = payload.get("params") or {}
        self._describe(call, path, params)
        self._record(call)
        fault = self._take_fault(call)
        delay = self._delay_for(call)
        if delay:
            time.sleep(delay)
        if fault is not None and fault.mode == "hang":
            self._hang(fault)
        if fault is not None and fault.mode == "die_before_post":
            if fault.seconds:
                self._hang(fault)
            call.outcome, call.ended = "die_before_post", time.time()
            self._drop_connection(handler)
            return
        if fault is not None and fault.mode in ("http500", "garbage", "rpc_error"):
            call.outcome, call.ended = fault.mode, time.time()
            if fault.mode == "http500":
                self._send(handler, 500, _HTTP500_BODY, "text/html; charset=utf-8")
            elif fault.mode == "garbage":
                self._send(handler, 200, _GARBAGE_BODY, "text/html; charset=utf-8")
            else:
                error = {"code": 200, "message": "Odoo Server Error", "data": {
                    "name": fault.error_name, "debug": f"Traceback (most recent call last):\n{fault.error_name}: "
                    f"{fault.error_message}\n", "message": fault.error_message, "arguments": [fault.error_message],
                    "context": {}}}
                self._send_json(handler, {"jsonrpc": "2.0", "id": request_id, "error": error})
            call.error = fault.error_name if fault.mode == "rpc_error" else None
            return
        gave_up = fault is not None and fault.mode == "proxy_gave_up"
        if gave_up:
            assert fault is not None
            self._send(handler, fault.status, _PROXY_TIMEOUT_BODY, "text/html")
            handler.close_connection = True
            self._hang(fault)
        headers: dict[str, str] = {}
        try:
            reply = self._dispatch(handler, path, params, call)
            if isinstance(reply, _Reply):
                headers = reply.headers
                reply = reply.result
            response: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "result": reply}
            call.outcome = "ok"
        except _HttpError as error:
            call.outcome, call.ended = "not found", time.time()
            self._send(handler, error.status, error.body, "text/html; charset=utf-8")
            return
        except Exception as error:  # noqa: BLE001 (every server error becomes a JSON-RPC error, as in Odoo)
            call.outcome, call.error = "error", exception_name(error)
            response = {"jsonrpc": "2.0", "id": request_id, "error": self._error_payload(error)}
        if gave_up:
            call.ended = time.time()  # Served; its answer went nowhere: the proxy had answered already.
            return
        if fault is not None and fault.mode == "die_after_post":
            # The message is stored; the answer never leaves, as when Odoo dies mid-request.
            call.outcome, call.ended = "die_after_post", time.time()
            self._drop_connection(handler)
            return
        call.ended = time.time()
        self._send_json(handler, response, headers)

    @staticmethod
    def _drop_connection(handler: _Handler) -> None:
        handler.close_connection = True
        try:
            handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _hang(self, fault: Fault) -> None:
        event = threading.Event()
        with self._state_lock:
            self._hanging.append(event)
        event.wait(fault.seconds)
        with self._state_lock:
            if event in self._hanging:
                self._hanging.remove(event)

    def _record(self, call: Call) -> None:
        with self._state_lock:
            self._calls.append(call)

    @staticmethod
    def _describe(call: Call, path: str, params: dict) -> None:
        if path == "/jsonrpc":
            call.service, call.method = params.get("service"), params.get("method")
            args = params.get("args") or []
            call.args = list(args) if isinstance(args, list) else [args]
            if call.service == "object" and len(call.args) >= 5:
                uid = call.args[1]
                call.uid = uid if isinstance(uid, int) else None
                call.model, call.model_method = call.args[3], call.args[4]
                if call.method == "execute_kw":
                    call.args = list(call.args[5]) if len(call.args) > 5 and isinstance(call.args[5], list) else []
                    kwargs = params["args"][6] if len(params["args"]) > 6 else {}
                    call.kwargs = dict(kwargs) if isinstance(kwargs, dict) else {}
                else:
                    call.args = call.args[5:]
                call.context = dict(call.kwargs.get("context") or {})
            elif call.service == "common" and len(call.args) >= 2:
                # Never keep the secret of a login in the log.
                call.args = call.args[:2] + ["********"] + call.args[3:]
        elif path.startswith("/web/dataset/call_kw"):
            call.service, call.method = "web", "call_kw"
            call.model, call.model_method = params.get("model"), params.get("method")
            call.args = list(params.get("args") or [])
            call.kwargs = dict(params.get("kwargs") or {})
            call.context = dict(call.kwargs.get("context") or {})
        else:
            call.service, call.method = "web", path.rstrip("/").rsplit("/", 1)[-1]
            call.kwargs = {key: value for key, value in params.items() if key != "password"}

    def _dispatch(self, handler: _Handler, path: str, params: dict, call: Call) -> Any:
        if path == "/web/webclient/version_info":
            return self.version_info
        if path == "/jsonrpc":
            return self._dispatch_rpc(params.get("service"), params.get("method"), params.get("args") or [],
                                      source=handler.client_address[0])
        if path == "/web/session/authenticate":
            return self._session_authenticate(params, source=handler.client_address[0])
        session_uid = self._session_uid(handler)
        if path == "/web/session/get_session_info":
            if session_uid is None:
                raise SessionExpired("Session expired")
            return self._session_info(session_uid)
        if path == "/web/session/destroy":
            self._session_uid(handler, destroy=True)
            return None
        if path.startswith("/web/dataset/call_kw"):
            if session_uid is None:
                raise SessionExpired("Session expired")
            call.uid = session_uid
            kwargs = dict(params.get("kwargs") or {})
            return self.call_method(session_uid, params.get("model"), params.get("method"),
                                    list(params.get("args") or []), kwargs)
        if path == "/mail/chatter_fetch":
            uid = session_uid if session_uid is not None else PUBLIC_UID
            call.uid = uid
            with self.db.lock:
                env = Env(self.db, uid)
                if params.get("thread_model") not in self.db.models:
                    raise KeyError(params.get("thread_model"))
                ids = portal_chatter_ids(env, params["thread_model"], int(params.get("thread_id") or 0),
                                         limit=int(params.get("limit") or 10))
                messages = [format_message(env.sudo(), message_id) for message_id in ids]
            return {"data": {"mail.message": messages}, "messages": ids}
        raise _HttpError(404)

    # --- /jsonrpc services ----------------------------------------------------------------------

    def _dispatch_rpc(self, service: Any, method: Any, args: list, *, source: str | None = None) -> Any:
        # odoo/http.py dispatch_rpc: an unknown service is a KeyError.
        if service == "common":
            return self._common(method, args, source)
        if service == "db":
            return self._db_service(method, args)
        if service == "object":
            return self._object(method, args, source)
        raise KeyError(service)

    def _common(self, method: Any, args: list, source: str | None = None) -> Any:
        if method == "version":
            return self.version_info
        if method == "about":
            return "See http://openerp.com"
        if method in ("login", "authenticate"):
            database, login, password = args[0], args[1], args[2]
            self._check_database(database)
            # odoo/service/common.py exp_authenticate: a failed login answers False, not an error.
            try:
                return self.authenticate(login, password, interactive=False, source=source)
            except AccessDenied:
                return False
        raise Exception(f"Method not found: {method}")

    def _db_service(self, method: Any, args: list) -> Any:
        if method == "list":
            return [self.db.name]
        if method == "server_version":
            return self._version
        if method == "db_exist":
            return bool(args) and args[0] == self.db.name
        if method in ("create_database", "drop", "dump", "restore", "duplicate_database", "rename",
                      "change_admin_password"):
            raise AccessDenied()
        raise KeyError(f"exp_{method}")

    def _object(self, method: Any, args: list, source: str | None = None) -> Any:
        database, uid, password = args[0], int(args[1]), args[2]
        self._check_database(database)
        self.check_credentials(uid, password, source=source)
        if method == "execute":
            model, name, rest, kwargs = args[3], args[4], list(args[5:]), {}
        elif method == "execute_kw":
            model, name = args[3], args[4]
            rest = list(args[5]) if len(args) > 5 and args[5] else []
            kwargs = dict(args[6]) if len(args) > 6 and args[6] else {}
        else:
            raise NameError(f"Method not available {method}")
        return self.call_method(uid, model, name, rest, kwargs)

    def _check_database(self, database: Any) -> None:
        if database != self.db.name:
            raise DatabaseMissing(
                f'connection to server at "localhost" (127.0.0.1), port 5432 failed: FATAL:  database '
                f'"{database}" does not exist\n'
            )

    def authenticate(self, login: str, password: str, *, interactive: bool, source: str | None = None) -> int:
        """res.users authenticate: the password, or, outside web sessions, an API key (facts a).

        ``source``: the client's address, for the login cooldown (None: no request, no cooldown).
        """
        with self.db.lock:
            self._assert_can_auth(source)
            users = sorted(uid for uid, row in self.db.rows["res.users"].items()
                           if row.get("login") == login and row.get("active", True))
            if not users or not password or not self._credentials_match(users[0], password, interactive):
                self._login_failed(source)
                raise AccessDenied()
            uid = users[0]
            if source is not None:
                self._login_failures.pop(source, None)
            self.db.rows["res.users"][uid]["login_date"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
            return uid

    def _assert_can_auth(self, source: str | None) -> None:
        """res_users.py _assert_can_auth and _on_login_cooldown: refuse a login from an address on cooldown."""
        if source is None or not self.login_cooldown_after:
            return
        failures, previous = self._login_failures.get(source, (0, 0.0))
        if failures >= self.login_cooldown_after and time.monotonic() - previous < self.login_cooldown_duration:
            log.warning("Login attempt ignored for %s: %d failures since last success", source, failures)
            raise AccessDenied("Too many login failures, please wait a bit before trying again.")

    def _login_failed(self, source: str | None) -> None:
        if source is not None:
            failures, _ = self._login_failures.get(source, (0, 0.0))
            self._login_failures[source] = (failures + 1, time.monotonic())

    def _credentials_match(self, uid: int, password: Any, interactive: bool) -> bool:
        if not isinstance(password, str) or not password:
            return False
        if self.db.passwords.get(uid) == password:
            return True
        # res_users.py _check_credentials accepts API keys only when the login is not interactive.
        # An expired key is refused as a wrong one (res_users.py _check_credentials: expiration_date > now).
        return not interactive and any(secrets.compare_digest(password, key) and not self._expired(key)
                                       for key in self.db.api_keys.get(uid, []))

    def _expired(self, key: str) -> bool:
        row = self.db.rows["res.users.apikeys"].get(self.db.api_key_rows.get(key, 0)) or {}
        ends = row.get("expiration_date")
        return bool(ends) and ends <= time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())

    def check_credentials(self, uid: int, password: Any, *, source: str | None = None) -> None:
        """res.users check of an object call. Odoo caches a successful check (ormcache on uid and
        key), so credentials that match pass without the login cooldown; a failed one is counted
        as a failed login, and refused unchecked while the address is on cooldown."""
        with self.db.lock:
            row = self.db.rows["res.users"].get(uid)
            if not row or not row.get("active", True) or not self._credentials_match(uid, password, False):
                self._assert_can_auth(source)
                self._login_failed(source)
                raise AccessDenied()

    def call_method(self, uid: int, model: Any, name: Any, args: list, kwargs: dict) -> Any:
        """odoo/service/model.py execute_kw and odoo/api.py call_kw, as user ``uid``."""
        if not isinstance(name, str) or name.startswith("_"):
            raise AccessError(f"Private methods (such as {name}) cannot be called remotely.")
        with self.db.lock:
            if model not in self.db.models:
                raise UserError(f"Object {model} doesn't exist")
            kwargs = dict(kwargs)
            context = kwargs.pop("context", None) or {}
            env = Env(self.db, uid, context)
            # odoo/api.py Environment.companies: a company outside the user's companies in
            # allowed_company_ids is refused before anything runs.
            allowed = context.get("allowed_company_ids")
            if allowed and set(allowed) - set(env.user.get("company_ids") or []):
                raise AccessError("Access to unauthorized or invalid companies.")
            method = find_method(env, model, name)
            if method is None:
                raise AttributeError(f"The method '{name}' does not exist on the model '{model}'")
            if method.on_records:
                if not args:
                    raise IndexError("list index out of range")
                arguments = (env, model, as_ids(args[0]), *args[1:])
            else:
                arguments = (env, model, *args)
            try:
                _signature(method.function).bind(*arguments, **kwargs)
            except TypeError as error:
                # Name the method as the caller knows it, not the function that implements it.
                raise TypeError(f"{name}() {error}") from None
            return method.function(*arguments, **kwargs)

    # --- Web sessions (portal pages) ------------------------------------------------------------

    def _session_authenticate(self, params: dict, *, source: str | None = None) -> _Reply:
        self._check_database(params.get("db"))
        uid = self.authenticate(params.get("login"), params.get("password"), interactive=True, source=source)
        token = secrets.token_urlsafe(32)
        with self.db.lock:
            self.db.sessions[token] = uid
        return _Reply(self._session_info(uid),
                      {"Set-Cookie": f"session_id={token}; Path=/; HttpOnly; SameSite=Lax"})

    def _session_uid(self, handler: _Handler, destroy: bool = False) -> int | None:
        cookie = SimpleCookie()
        try:
            cookie.load(handler.headers.get("Cookie") or "")
        except Exception:  # noqa: BLE001 (a malformed cookie is no session)
            return None
        morsel = cookie.get("session_id")
        if morsel is None:
            return None
        with self.db.lock:
            if destroy:
                return self.db.sessions.pop(morsel.value, None)
            return self.db.sessions.get(morsel.value)

    def _session_info(self, uid: int) -> dict[str, Any]:
        with self.db.lock:
            env = Env(self.db, uid)
            context = find_method(env, "res.users", "context_get").function(env, "res.users")
            partner_id = env.partner_id
            name = self.db.rows["res.partner"].get(partner_id, {}).get("name")
            return {
                "uid": uid, "is_system": env.in_group("base.group_system"),
                "is_admin": env.in_group("base.group_erp_manager"),
                "is_internal_user": env.is_internal(), "user_context": {**context, "uid": uid}, "db": self.db.name,
                "server_version": self._version, "server_version_info": self.version_info["server_version_info"],
                "name": name, "username": self.db.rows["res.users"][uid].get("login"), "partner_id": partner_id,
                "partner_display_name": name, "company_id": self.db.rows["res.users"][uid].get("company_id"),
            }

    # --- Responses ------------------------------------------------------------------------------

    @staticmethod
    def _error_payload(error: BaseException) -> dict[str, Any]:
        # odoo/http.py serialize_exception and JsonRPCDispatcher.handle_error.
        data = {
            "name": exception_name(error),
            "debug": "".join(traceback.format_exception(error)),
            "message": str(error) if not isinstance(error, KeyError) else repr(error.args[0]) if error.args else "",
            "arguments": [arg if isinstance(arg, (str, int, float, bool, type(None))) else str(arg)
                          for arg in error.args],
            "context": {},
        }
        if isinstance(error, SessionExpired):
            return {"code": 100, "message": "Odoo Session Expired", "data": data}
        return {"code": 200, "message": "Odoo Server Error", "data": data}

    def _send_json(self, handler: _Handler, payload: dict, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload, default=str).encode()
        self._send(handler, 200, body, "application/json", headers)

    @staticmethod
    def _send(handler: _Handler, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:
            # The client went away (it timed out on a hang); nothing is left to tell it.
            handler.close_connection = True


@functools.cache
def _signature(function: Any) -> inspect.Signature:
    return inspect.signature(function)


def seed_demo(odoo: TestOdoo, note_gateway_setup: bool = True) -> TestOdoo:
    """Add the ODOO_FACTS.md world (users 6-11, group 52, project 7, tasks 60 and 42, S00023)."""
    with odoo.db.lock:
        odoo_demo.seed_demo(odoo.db, note_gateway_setup)
    return odoo


def parse_latency(text: str) -> dict[Any, float]:
    """``message_post=0.025,*=0.010`` (or ``project.task:message_post=0.03``) as ``TestOdoo.latency``."""
    latency: dict[Any, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, equals, seconds = item.partition("=")
        if not equals:
            raise argparse.ArgumentTypeError(f"{item!r} is not METHOD=SECONDS")
        try:
            value = float(seconds)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{seconds!r} is not a number of seconds") from None
        model, colon, method = key.strip().rpartition(":")
        latency[(model, method) if colon else method] = value
    return latency


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.testing.odoo",
                                     description="Run the test Odoo (JSON-RPC) until interrupted.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8069)
    parser.add_argument("--database", default=odoo_demo.DEMO_DATABASE)
    parser.add_argument("--version", default="18.0", help="the Odoo version to behave as: 17.0, 18.0 or 19.0")
    parser.add_argument("--demo", action="store_true", help="load the ODOO_FACTS.md demo records")
    parser.add_argument("--latency", type=parse_latency, default={}, metavar="METHOD=SECONDS,...",
                        help="seconds each call sleeps before it is served, e.g. message_post=0.025,*=0.010 "
                             "(see TestOdoo.latency); for benchmarks that need Odoo's measured latency")
    options = parser.parse_args(argv)
    odoo = TestOdoo(host=options.host, port=options.port, database=options.database, version=options.version)
    odoo.latency = options.latency
    if options.demo:
        seed_demo(odoo)
    odoo.start()
    print(f"Test Odoo {options.version} at {odoo.url}, database {odoo.database!r}", flush=True)
    if options.demo:
        print(f"  integration user: login {GATEWAY_LOGIN!r}, API key {DEMO_API_KEY}", flush=True)
        print(f"  administrator:    login 'admin', password {ADMIN_PASSWORD!r}", flush=True)
    else:
        print(f"  administrator: login 'admin', password {ADMIN_PASSWORD!r}", flush=True)
    stopping = threading.Event()
    # SIGTERM (systemd, a supervising test) stops it as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    try:
        stopping.wait()
    except KeyboardInterrupt:
        pass
    finally:
        odoo.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
