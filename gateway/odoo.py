"""A bounded pool of logged-in odoorpc connections, and the one place where Odoo faults are translated."""

from __future__ import annotations

import json
import logging
import math
import queue
import re
import threading
import time
import urllib.error
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Protocol, TypeVar

import odoorpc

from gateway import observe
from gateway.config import OdooConnection, api_key_replacement, endpoint
from gateway.odootransport import KeepAliveHandler, keep_alive_opener
from gateway.refusals import OdooCredentialsRefused, OdooRequestTooLarge, OdooUnavailable

log = logging.getLogger(__name__)
Result = TypeVar("Result")

# Every post passes this context (ODOO_FACTS.md "What these facts demand" item 3): without it the
# integration user follows each record it posts on, and on sale.order every notified partner is
# subscribed and so gains portal read access to the order. no_new_invoice: account.move's
# _message_post_after_hook hands the files of every post by an internal user to the invoice import
# (account_move.py:5931-5989): a contributor's UBL XML rewrote a draft bill or created new ones,
# every other file was deleted after the gateway had answered 250, and on a posted invoice OdooBot
# noted each file. Odoo's portal chatter skips this for non-internal users; other models ignore it.
POST_CONTEXT = {"mail_create_nosubscribe": True, "mail_post_autofollow": False, "no_new_invoice": True}


# Odoo 18 counts failed logins per client address and, after 5 (base.login_cooldown_after), ignores
# every login from that address until 60 s have passed since the last failure (base.login_cooldown_duration;
# res_users.py _assert_can_auth): the corrected key too, and, when Odoo is not in proxy_mode, every web
# user behind the gateway's address. So once Odoo refused the gateway's login or key, the gateway tries
# again only after a little longer than that (operator review: a login and an ERROR per message), and
# answers the messages meanwhile with the same 451 without calling Odoo.
CREDENTIALS_RETRY_SECONDS = 65.0
# How often an xmlid whose cached id refused a sender is read again from Odoo (OdooPool.xmlid_again):
# a contributor group deleted and created again by `note-gateway setup-odoo` has a new id, which a
# running gateway takes at the next refusal; at most once per this many seconds per xmlid, so that
# refusals of non-contributors cost Odoo no call each.
XMLID_RECHECK_SECONDS = 60.0

# Odoo exceptions a retry may heal by itself (a serialization failure, a lock, a lost database
# connection; a record deleted or hidden, which the retry's own checks then refuse for what it is):
# logged as warnings. Any other exception Odoo answers (UserError, ValidationError, a server bug)
# repeats on every retry until someone acts on it: logged as errors.
TRANSIENT_ODOO_ERRORS = ("psycopg2.", "odoo.exceptions.MissingError", "odoo.exceptions.AccessError")

# Odoo exceptions the caller expects and reports in words of its own (expected_refusals): logged
# at DEBUG only, in the calling thread.
_EXPECTED_REFUSALS: ContextVar[frozenset[str]] = ContextVar("expected_odoo_refusals", default=frozenset())


@contextmanager
def expected_refusals(*names: str) -> Iterator[None]:
    """Odoo answering one of these exceptions (``odoo.exceptions.AccessError``, ...) is no news to the
    caller, which says it once, clearly: it is logged at DEBUG, not as a WARNING or ERROR line before
    the caller's own message (onboarding review: check-config --online and doctor printed
    "ERROR gateway.odoo: ... check_object_reference failed: builtins.ValueError: External ID not
    found" and one "ir.rule.search_read failed" warning per model before saying "run note-gateway
    setup-odoo"). Any other exception, and every transport fault, is logged as before."""
    token = _EXPECTED_REFUSALS.set(_EXPECTED_REFUSALS.get() | frozenset(names))
    try:
        yield
    finally:
        _EXPECTED_REFUSALS.reset(token)


# What a batched read answers for an item it could not decide on its own: that item's thread then
# makes its own call, exactly as without batching.
SOLO = object()

Rpc = Callable[[str, str, list, dict], Any]


class ReadBatch(Protocol):
    """A read that several messages waiting for the same kind of answer can make as one call (issue 6).

    ``key`` is what the items of one call must share (model, method, fields, context); ``run`` makes
    exactly one call through ``rpc(model, method, args, kwargs)`` for all ``items`` and answers each
    item in order, or SOLO for an item the merged answer does not decide. A single item is always
    decided. Merging must never let one item's answer depend on another item: security checks ride
    on these reads.
    """

    key: tuple
    label: str

    def run(self, items: list, rpc: Rpc) -> list: ...


@dataclass
class _Forming:
    """The items of a batched read waiting for a connection; closed when the first one gets it."""

    items: list = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    results: list | None = None
    error: BaseException | None = None

    def answer(self, index: int, label: str) -> Any:
        """The answer of item ``index``, or the batch's fault raised afresh in the asking thread."""
        if self.error is not None:
            if isinstance(self.error, OdooUnavailable):
                # With what Odoo answered, which the journal keeps (pipeline._run_stages).
                raise type(self.error)(self.error.detail, explanation=self.error.explanation, fix=self.error.fix,
                                       odoo_error=self.error.odoo_error, odoo_message=self.error.odoo_message,
                                       call=self.error.call)
            raise RuntimeError(f"batched {label} failed") from self.error
        assert self.results is not None
        return self.results[index]


class _Slots:
    """The pool's connections as counted slots, where a patient borrower lets the others go first.

    A batched read is patient: the longer it waits, the more messages share it, while a post that
    waits only delays its message. Patient borrowers cannot starve: the other calls come from
    messages that already passed their reads, and a gateway has a bounded number of messages.
    """

    def __init__(self, size: int) -> None:
        self._free = size
        self._lock = threading.Lock()
        self._urgent = threading.Condition(self._lock)
        self._patient = threading.Condition(self._lock)
        self._urgent_waiting = 0
        self._patient_waiting = 0

    @property
    def waiting(self) -> tuple[int, int]:
        """(other, patient) borrowers waiting for a slot now."""
        with self._lock:
            return self._urgent_waiting, self._patient_waiting

    def acquire(self, timeout: float, *, patient: bool = False) -> bool:
        end = time.monotonic() + timeout
        with self._lock:
            if patient:
                self._patient_waiting += 1
            else:
                self._urgent_waiting += 1
            try:
                # Checked before the clock: a waiter woken for a free slot takes it even if it woke late.
                while self._free == 0 or (patient and self._urgent_waiting):
                    remaining = end - time.monotonic()
                    if remaining <= 0:
                        return False
                    (self._patient if patient else self._urgent).wait(remaining)
                self._free -= 1
                return True
            finally:
                if patient:
                    self._patient_waiting -= 1
                else:
                    self._urgent_waiting -= 1
                    if not self._urgent_waiting and self._free:
                        self._patient.notify(self._free)

    def release(self) -> None:
        with self._lock:
            self._free += 1
            (self._urgent if self._urgent_waiting else self._patient).notify()


def odoo_error_name(error: odoorpc.error.RPCError) -> str | None:
    """The server exception of an RPC error, e.g. ``odoo.exceptions.MissingError``, when Odoo sent one."""
    info = error.info if isinstance(error.info, dict) else None
    return (info.get("data") or {}).get("name") if info else None


_MISSING_MODEL = re.compile(r"\AObject (\S+) doesn't exist\Z")


def missing_model(error: OdooUnavailable) -> str | None:
    """The model a call failed on because this Odoo does not have it, if so: Odoo 18 answers any call on
    a model whose module is not installed with UserError "Object crm.lead doesn't exist"
    (odoo/service/model.py; measured on a real Odoo 18, lifecycle review)."""
    if error.odoo_error != "odoo.exceptions.UserError":
        return None
    found = _MISSING_MODEL.match(" ".join(str(error.odoo_message or "").split()))
    return found.group(1) if found else None


def credentials_refused(error: BaseException) -> bool:
    """Whether Odoo answered and refused the gateway's login or API key, rather than failing.

    common.login answers False for a wrong login or key, an archived user or a login cooldown
    (odoo/service/common.py exp_authenticate), which odoorpc turns into an RPCError of its own
    carrying no server answer; an object call whose key was revoked since the login fails with
    odoo.exceptions.AccessDenied (ODOO_FACTS.md a). Record rules and access lists refuse with
    AccessError, never AccessDenied, so those stay what they are.
    """
    if not isinstance(error, odoorpc.error.RPCError):
        return False
    info = error.info if isinstance(error.info, dict) else None
    if info is None:
        return str(error) == "Wrong login ID or password"
    return (info.get("data") or {}).get("name") == "odoo.exceptions.AccessDenied"


def database_missing(error: BaseException) -> bool:
    """Whether Odoo answered that the database of the call does not exist (dropped or renamed).

    Odoo 18 opens the registry of the named database before anything else, and PostgreSQL refuses
    the connection: psycopg2.OperationalError 'connection to server ... failed: FATAL:  database
    "notes" does not exist' (measured on a real Odoo 18, common.login to an unknown database).
    """
    if not isinstance(error, odoorpc.error.RPCError):
        return False
    return odoo_error_name(error) == "psycopg2.OperationalError" and bool(
        re.search(r'database ".*" does not exist', str(error)))


def transport_fault(url: str, error: BaseException) -> str:
    """A fault on the way to Odoo in an admin's words, e.g. ``cannot reach Odoo at URL:
    ConnectionRefusedError: [Errno 111] Connection refused``."""
    if isinstance(error, urllib.error.HTTPError):
        return f"Odoo at {url} answered HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        return f"cannot reach Odoo at {url}: " + (
            f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else f"URLError: {reason}")
    if isinstance(error, OSError):  # A timeout or a reset, raised as itself.
        return f"cannot reach Odoo at {url}: {type(error).__name__}: {error}"
    return f"Odoo at {url} did not answer as JSON-RPC: {type(error).__name__}: {error}"


def answered_by_odoo(error: urllib.error.HTTPError) -> bool:
    """Whether an HTTP error status came with a JSON-RPC answer, which only Odoo writes (a proxy's
    own error page is HTML or empty): then Odoo answered and is done with the call."""
    try:
        body = error.read(65536) if error.fp is not None else b""
        answer = json.loads(body)
    except Exception:  # noqa: BLE001 (no body, a lost connection, not JSON: not Odoo's answer)
        return False
    return isinstance(answer, dict) and answer.get("jsonrpc") == "2.0" and ("result" in answer or "error" in answer)


class _DeadlineOpener:
    """odoorpc's URL opener for a login: each request's timeout is at most the time left before ``deadline``.

    odoorpc sends the three requests of a login with the one timeout given to it; a message's
    deadline must bound each of them (docs/reliability.md). ``deadline`` None: odoorpc's timeout as is.
    """

    def __init__(self, opener: Any, deadline: float | None) -> None:
        self._opener = opener
        self.deadline = deadline

    def open(self, request: Any, data: Any = None, **options: Any) -> Any:
        if self.deadline is not None:
            timeout = options.get("timeout")
            options["timeout"] = time_left(self.deadline, timeout if isinstance(timeout, (int, float)) else None)
        return self._opener.open(request, data, **options)


def time_left(deadline: float, timeout: float | None = None) -> float:
    """The time a request may take: what is left before ``deadline``, at most ``timeout``; none left
    is OdooUnavailable. No call may outlive the message's deadline (issue 4): otherwise a few slow
    calls in a row, each within its own timeout, keep the client waiting past it."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise OdooUnavailable("the message deadline passed before Odoo answered")
    return remaining if timeout is None else min(timeout, remaining)


def user_group_fields(major: int) -> tuple[str, str]:
    """(field to assign groups, field holding every group including implied ones) of res.users.

    The one place that knows the names per Odoo version (issue 7). In 17 and 18, ``groups_id`` is
    both: Odoo stores implied groups in it (ODOO_FACTS.md e). Odoo 19 renamed it ``group_ids``
    and keeps implied groups in ``all_group_ids``; membership and record-rule checks need those,
    or a rule of an implied group would be missed. The 19 names were not measured on a real 19.
    """
    if major >= 19:
        return "group_ids", "all_group_ids"
    return "groups_id", "groups_id"


# --- The time a message waits on Odoo --------------------------------------------------------------
# The journal's odoo_seconds (benchmark 4, "latency added", subtracts it from the reply time): the
# time the message's thread spends in the pool's RPC sessions (waiting for a pooled connection,
# logging one in, the calls themselves), waiting for a batched read another message makes, and
# waiting for a read started alongside (submit). The gateway's own CPU between and around the calls
# is not in it. A thread counts only between start_waiting() and stop_waiting() (pipeline.process):
# the pool's background threads never do, so a read that runs alongside counts once, as the wait
# of the thread that needs its answer.
_waits = threading.local()


def start_waiting() -> None:
    """Count, from now on, the time this thread waits on Odoo."""
    _waits.seconds = 0.0


def stop_waiting() -> float:
    """The time this thread waited on Odoo since start_waiting(); counting stops."""
    seconds = getattr(_waits, "seconds", None)
    _waits.seconds = None
    return seconds or 0.0


def waited(seconds: float) -> None:
    """Add ``seconds`` that this thread waited on Odoo, if it counts (start_waiting)."""
    if getattr(_waits, "seconds", None) is not None:
        _waits.seconds += seconds


class Pending(Generic[Result]):
    """A read started on another pooled connection (OdooPool.submit); ``result()`` waits for it, and
    that wait, not the read's own time on its thread, is what the caller counts as waiting on Odoo."""

    __slots__ = ("_future",)

    def __init__(self, future: Future[Result]) -> None:
        self._future = future

    def result(self) -> Result:
        if self._future.done():
            return self._future.result()
        started = time.monotonic()
        try:
            return self._future.result()
        finally:
            waited(time.monotonic() - started)


class OdooPool:
    """Logged-in connections to one Odoo database, lent to one thread at a time.

    Logging in costs ~0.4 s on Odoo's side (ODOO_FACTS.md k), so connections are kept and reused.
    A connection that saw a transport or RPC fault is dropped rather than returned: the next
    borrower logs in afresh, which is how the gateway reconnects after Odoo restarts.
    """

    def __init__(self, name: str, connection: OdooConnection, api_key: str) -> None:
        self.name = name
        self.connection = connection
        self._api_key = api_key
        self._idle: queue.LifoQueue[odoorpc.ODOO] = queue.LifoQueue()
        # Each client's kept-alive HTTP connection, closed when the client is dropped or the pool
        # closes (a reload closes the old pool) rather than whenever the garbage collector runs.
        self._transports: dict[int, KeepAliveHandler] = {}
        self._slots = _Slots(connection.pool_size)
        self._lock = threading.Lock()
        self._version: int | None = None
        self._xmlids: dict[str, int] = {}
        # When each thing said or done once in a while (first_in) was last, time.monotonic(): an
        # ERROR logged once an hour, an xmlid read again after a refusal (xmlid_again).
        self._said: dict[tuple, float] = {}
        # Record rules, access lists and field types, with the time they were read (gateway/access.py).
        self.security_cache: dict[tuple, tuple[float, object]] = {}
        self._read_cache: dict[tuple, tuple[float, Any]] = {}
        # One lock per security_cache key: concurrent misses load it once (access._cached).
        self._loading: dict[tuple, threading.Lock] = {}
        # Batched reads waiting for a connection, by ReadBatch.key (call_batched).
        self._forming: dict[tuple, _Forming] = {}
        # Runs the reads of a message that do not wait on each other side by side, each on its own
        # pooled connection (issue 6); as many threads as connections, since a read needs one.
        self._background = ThreadPoolExecutor(max_workers=connection.pool_size, thread_name_prefix=f"odoo-{name}")
        # The login or key Odoo refused last (_credentials_refused), and when: for
        # CREDENTIALS_RETRY_SECONDS from then no borrower calls Odoo with it; the messages deferred
        # since the last ERROR, told apart by their deadline; whether a borrower is trying the
        # credentials again now. A reload builds a new pool, which tries at once.
        self._refused: OdooCredentialsRefused | None = None
        self._refused_at = 0.0
        self._refused_deferred: set[object] = set()
        self._retrying = False

    # --- connections ---------------------------------------------------------------------------

    def _connect(self, deadline: float | None = None) -> odoorpc.ODOO:
        host, protocol, port = endpoint(self.connection.url)
        # One kept-alive HTTP connection per pooled client instead of a connect per call (issue 6).
        opener, transport = keep_alive_opener(self.connection.ca_file)
        # Logging in is part of the message's time too (issue 4: the per-message deadline), and takes
        # three requests (version_info, common.login, context_get): each gets the time left, not
        # one timeout computed before the first (review: 3.8 s each under a 6 s deadline answered
        # after 11 s, from the listener's fallback).
        login_opener = _DeadlineOpener(opener, deadline)
        try:
            client = odoorpc.ODOO(host, protocol=protocol, port=port, timeout=self.connection.timeout,
                                  opener=login_opener)
            # odoorpc logs in through /jsonrpc common.login, which accepts an API key
            # (ODOO_FACTS.md a); the key is never a user's password.
            client.login(self.connection.database, self.connection.login, self._api_key)
        except BaseException as error:
            transport.close()
            if credentials_refused(error):
                raise self._credentials_refused(error) from None
            if database_missing(error):
                raise self._database_missing(error) from None
            raise
        # From here on, each call's timeout is set by _session (client.config["timeout"]).
        login_opener.deadline = None
        with self._lock:
            self._transports[id(client)] = transport
        if self._version is None:
            # "18.0", "saas~17.4", "19.0+e": the first number is the major version.
            match = re.search(r"\d+", str(client.version))
            self._version = int(match.group()) if match else 0
        return client

    @contextmanager
    def _borrow(self, deadline: float | None, *, patient: bool = False) -> Iterator[odoorpc.ODOO]:
        # Raises the refusal while Odoo's refusal of the credentials holds; True for the one
        # borrower that tries them again once CREDENTIALS_RETRY_SECONDS passed. What that try told:
        # "accepted", "refused" (_credentials_refused takes it from there), or None (a transport
        # fault, the deadline: the next borrower tries).
        retrying, told = self._credentials_hold(deadline), None
        wait = self.connection.timeout if deadline is None else max(0.0, deadline - time.monotonic())
        # A bounded pool: when Odoo is slow, messages wait here (and get a 451 at their deadline)
        # instead of piling up threads and connections on Odoo.
        if not self._slots.acquire(wait, patient=patient):
            if retrying:
                self._credentials_tried(None)
            raise OdooUnavailable(f"all {self.connection.pool_size} Odoo connections are busy")
        client = None
        try:
            try:
                client = self._idle.get_nowait()
            except queue.Empty:
                client = self._connect(deadline)
                told = "accepted"
            yield client
            told = "accepted"
        except BaseException as error:
            if client is not None:
                self._drop(client)  # Possibly broken: never lend it again.
            client = None
            if isinstance(error, OdooCredentialsRefused):
                told = "refused"  # By the login (_connect).
            elif isinstance(error, odoorpc.error.RPCError):
                # Odoo answered the call: AccessDenied refuses the key, anything else accepted it.
                told = "refused" if credentials_refused(error) else "accepted"
            raise
        finally:
            if client is not None:
                self._idle.put(client)
            self._slots.release()
            if retrying:
                self._credentials_tried(told)

    def call(self, model: str, method: str, args: list | None = None, kwargs: dict | None = None,
             *, context: dict | None = None, deadline: float | None = None, cacheable: bool = False) -> Any:
        """Run ``model.method(*args, **kwargs)`` in Odoo; every fault becomes OdooUnavailable (451).

        A ``cacheable`` read is answered from the last identical read if it is younger than the
        connection's ``read_cache_seconds`` (0, the default: never). Callers must not change the result.
        """
        kwargs = dict(kwargs or {})
        kwargs["context"] = {**(context or {})}
        cache_key = (model, method, repr(args), repr(sorted(kwargs.items()))) if cacheable else None
        hit = self._cache_get(cache_key)
        if hit is not None:
            return hit[0]
        result = self._call(model, method, args, kwargs, deadline)
        self._cache_put(cache_key, result)
        return result

    def call_batched(self, batch: ReadBatch, item: Any, *, deadline: float | None = None,
                     cacheable: bool = False) -> Any:
        """``batch.run([item])``'s answer, made together with the same reads of other messages
        that wait for a connection at the same time (issue 6: reads combined).

        With a free connection the read goes at once, alone: batching never delays a message.
        When every connection is busy, the first message to ask waits for one, and the messages
        that ask the same kind of read meanwhile join it: one call answers them all when a
        connection frees. Every answer comes from a call made after its message asked, so a batched
        check is as fresh as its own call would be (DESIGN.md: validated on every message). A
        fault answers every message of the batch with OdooUnavailable, as its own call would.
        ``cacheable`` as in call(), per item.
        """
        cache_key = (batch.key, repr(item)) if cacheable else None
        hit = self._cache_get(cache_key)
        if hit is not None:
            return hit[0]
        with self._lock:
            forming = self._forming.get(batch.key)
            leader = forming is None
            if leader:
                forming = self._forming[batch.key] = _Forming()
            index = len(forming.items)
            forming.items.append(item)
        if leader:
            self._lead(batch, forming, deadline)
        else:
            started = time.monotonic()
            wait = None if deadline is None else max(0.0, deadline - started)
            answered = forming.done.wait(wait)
            waited(time.monotonic() - started)
            if not answered:
                raise OdooUnavailable("the message deadline passed before Odoo answered")
        result = forming.answer(index, batch.label)
        if result is SOLO:
            # The merged answer did not decide this one (a rare path: a refusal, a retry): its own call.
            single = _Forming(items=[item])
            self._lead(batch, single, deadline)
            result = single.answer(0, batch.label)
        self._cache_put(cache_key, result)
        return result

    def loading(self, key: tuple) -> threading.Lock:
        """The lock held while ``security_cache[key]`` is loaded, so that concurrent misses load it once."""
        with self._lock:
            return self._loading.setdefault(key, threading.Lock())

    def waiting_reads(self) -> int:
        """Messages whose batched read waits for a connection now (call_batched)."""
        with self._lock:
            return sum(len(forming.items) for forming in self._forming.values())

    def _lead(self, batch: ReadBatch, forming: _Forming, deadline: float | None) -> None:
        """Wait for a connection, close the batch, make its one call and answer every item."""

        def work(rpc: Rpc) -> list:
            with self._lock:
                # From here on, a message asking the same read starts the next batch.
                if self._forming.get(batch.key) is forming:
                    del self._forming[batch.key]
            items = list(forming.items)
            observe.read_batch(self.name, batch.label, len(items))
            results = batch.run(items, rpc)
            if len(results) != len(items) or (len(items) == 1 and results[0] is SOLO):
                raise RuntimeError(f"{batch.label}: {len(results)} answers for {len(items)} items")
            return results

        try:
            # Patient: while the posts of messages already checked go first, more messages join
            # this read, and each of them then needs one call less (issue 6).
            forming.results = self._session(batch.label, deadline, work, patient=True)
        except BaseException as error:
            forming.error = error
        finally:
            with self._lock:
                if self._forming.get(batch.key) is forming:  # Failed before it got a connection.
                    del self._forming[batch.key]
            forming.done.set()

    def _cache_get(self, key: tuple | None) -> tuple[Any] | None:
        if key is None or self.connection.read_cache_seconds <= 0:
            return None
        cached = self._read_cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return (cached[1],)
        return None

    def _cache_put(self, key: tuple | None, result: Any) -> None:
        ttl = self.connection.read_cache_seconds
        if key is None or ttl <= 0:
            return
        now = time.monotonic()
        with self._lock:
            if len(self._read_cache) > 10000:
                # Bounded: expired entries go first, and a flood of senders cannot grow it forever.
                self._read_cache = {k: v for k, v in self._read_cache.items() if v[0] > now}
                if len(self._read_cache) > 10000:
                    self._read_cache.clear()
            self._read_cache[key] = (now + ttl, result)

    def _call(self, model: str, method: str, args: list | None, kwargs: dict, deadline: float | None) -> Any:
        return self._session(f"{model}.{method}", deadline, lambda rpc: rpc(model, method, args or [], kwargs))

    def _session(self, label: str, deadline: float | None, work: Callable[[Rpc], Result],
                 *, patient: bool = False) -> Result:
        """``work(rpc)`` on a borrowed connection, ``rpc`` bounded by the deadline; faults become OdooUnavailable.

        A ``patient`` session (a batched read) lets every other waiting call have a free connection first.
        """
        started, ok = time.monotonic(), False
        transport: KeepAliveHandler | None = None
        try:
            with self._borrow(deadline, patient=patient) as client:
                with self._lock:
                    transport = self._transports.get(id(client))
                if transport is not None:
                    transport.sent = transport.answered = False
                client.config["timeout"] = (self.connection.timeout if deadline is None
                                            else time_left(deadline, self.connection.timeout))
                result = work(client.execute_kw)
                ok = True
                return result
        except OdooUnavailable:
            raise
        except odoorpc.error.RPCError as error:
            if credentials_refused(error):
                # The key was revoked or expired since this connection logged in.
                raise self._credentials_refused(error) from None
            if database_missing(error):
                # The database was dropped or renamed since this connection logged in.
                raise self._database_missing(error, label) from None
            # An RPC error here is Odoo refusing or failing a call the gateway believes valid
            # (rights changed, a module missing, a server bug). A retry may heal it and an
            # admin must look, so it defers rather than bounces. Odoo's own exception name goes
            # with the refusal, into the journal row (pipeline._run_stages).
            name = odoo_error_name(error)
            refusal = OdooUnavailable(f"Odoo refused {label}", odoo_error=name, odoo_message=str(error), call=label)
            transient = name is None or name.startswith(TRANSIENT_ODOO_ERRORS)
            # UserError, ValidationError, a server bug: every retry fails the same way until
            # someone acts, which "Odoo is unavailable" at WARNING did not say (review of Odoo faults).
            # A model this Odoo does not have is a WARNING here: the record access check that meets
            # it refuses the message for good and says what to change in one ERROR, not one a message
            # (policy.model_unavailable).
            level = logging.WARNING if transient or missing_model(refusal) else logging.ERROR
            if name in _EXPECTED_REFUSALS.get():
                level = logging.DEBUG  # The caller reports it (expected_refusals).
            log.log(level, "odoo %s: %s failed: %s%s", self.name, label, "" if transient else f"{name}: ", error)
            raise refusal from None
        except Exception as error:  # Transport: refused, reset, timeout, HTTP 5xx, not JSON.
            if isinstance(error, urllib.error.HTTPError) and error.code == 413:
                raise self._too_large(label, transport, error) from None
            log.warning("odoo %s: %s: %s: %s", self.name, label, type(error).__name__, error)
            # Failed after the request went out whole and before an answer came back (a timeout,
            # a connection lost while waiting): Odoo may have run it, or may still be running it.
            # So may it behind a proxy that answered with an HTTP error of its own: Odoo answers
            # every call with HTTP 200 and JSON-RPC, errors included, so any other status is the
            # proxy's, and proxies answer their own timeouts with 504 (nginx), 503 (Azure Front
            # Door), 524 (Cloudflare), 408 or 502, while Odoo goes on with the request (a 503 or
            # 524 counted as settled and a quick retry filed the note twice, found by a review of
            # Odoo-side faults). A request that never left, or that Odoo answered, even with
            # garbage in a 200 or with a JSON-RPC error, is settled: Odoo is done with it, and a
            # search tells whether it was filed. A 413 is settled: the request was refused whole.
            unsettled = transport is not None and transport.sent and (
                not transport.answered or (isinstance(error, urllib.error.HTTPError) and not answered_by_odoo(error)))
            raise OdooUnavailable(f"{type(error).__name__} talking to Odoo", unsettled=unsettled) from None
        finally:
            elapsed = time.monotonic() - started
            # In place of odoorpc's own DEBUG lines, which carry the API key (observe.QUIET_LIBRARY_LOGGERS).
            log.debug("odoo %s: %s %s in %.3f s", self.name, label, "answered" if ok else "failed", elapsed)
            observe.odoo_call(self.name, elapsed, ok)
            waited(elapsed)

    def _too_large(self, label: str, transport: KeepAliveHandler | None,
                   error: urllib.error.HTTPError) -> OdooRequestTooLarge:
        """The refusal of a call refused as too large (HTTP 413) by the web server in front of Odoo, logged as an error.

        nginx refuses a body over its client_max_body_size (1 MB by default) before Odoo sees it,
        Odoo itself one over 128 MiB (odoo/http.py DEFAULT_MAX_CONTENT_LENGTH). Every retry of the
        message meets the same limit until an administrator raises it: not an outage, so the reply
        does not say "unavailable" and the log says what to change (a review of Odoo-side faults
        found notes with a photo deferred for days as "Odoo is unavailable", logged as a warning).
        """
        size = f"{transport.request_size} bytes" if transport is not None and transport.request_size else "unknown size"
        refusal = OdooRequestTooLarge(
            f"HTTP 413 for a request of {size}", call=label,
            explanation=f"the web server in front of Odoo at {self.connection.url} refused the {label} request "
                        f"of {size} as too large (HTTP {error.code} {error.reason})",
            fix="raise the request body limit of the reverse proxy in front of Odoo above that size (nginx: "
                "client_max_body_size; docs/operations.md, \"Odoo behind a reverse proxy\"); Odoo itself takes "
                "up to 128 MiB. The message waits in the sender's queue (451) and is filed at a retry after that")
        log.error("odoo %s: %s; %s", self.name, refusal.explanation, refusal.fix)
        return refusal

    def submit(self, function: Callable[..., Result], *args: Any, **kwargs: Any) -> Pending[Result]:
        """Start ``function`` (a read through this pool) now; its result or refusal comes from ``.result()``."""
        return Pending(self._background.submit(function, *args, **kwargs))

    def version(self, deadline: float | None = None) -> int:
        """The server's major version, read at the first login; faults become OdooUnavailable as in call()."""
        if self._version is None:
            started = time.monotonic()
            try:
                with self._borrow(deadline):
                    pass
            except OdooUnavailable:
                raise  # The credentials refused (_connect), or the deadline.
            except odoorpc.error.RPCError as error:
                # Odoo answered the login with an error: a database that does not exist, a server fault.
                refusal = OdooUnavailable(
                    "RPCError logging in to Odoo",
                    explanation=f"Odoo at {self.connection.url} failed the login of {self.connection.login} on "
                                f"database {self.connection.database}: {error}",
                    fix="check url and database, and Odoo's own log")
                log.warning("odoo %s: %s", self.name, refusal.explanation)
                raise refusal from None
            except Exception as error:  # Transport: refused, reset, timeout, HTTP 5xx, not JSON.
                refusal = OdooUnavailable(
                    f"{type(error).__name__} logging in to Odoo",
                    explanation=transport_fault(self.connection.url, error),
                    fix="check url, that Odoo is running, and that this host can reach it (network, firewall, proxy)")
                log.warning("odoo %s: %s", self.name, refusal.explanation)
                raise refusal from None
            finally:
                waited(time.monotonic() - started)  # The first login.
        return self._version or 0

    def _credentials_refused(self, error: BaseException) -> OdooCredentialsRefused:
        """The refusal for a login or key Odoo refused, logged with what the admin must fix."""
        connection = self.connection
        source = (f"api_key_credential {connection.api_key_credential}" if connection.api_key_credential
                  else f"api_key_env {connection.api_key_env}" if connection.api_key_env
                  else f"api_key_file {connection.api_key_file}")
        refusal = OdooCredentialsRefused(
            "Odoo refused the gateway's login",
            explanation=f"Odoo at {connection.url} refused the credentials of login {connection.login} on database "
                        f"{connection.database} ({error}): a configuration problem, not an outage",
            fix=f"check that the API key ({source}) is a current key of the Odoo user {connection.login} "
                "(Preferences > Account Security > New API Key) and that the user is active; a new key: "
                + api_key_replacement(connection))
        with self._lock:
            # Logged once per CREDENTIALS_RETRY_SECONDS: at the first refusal, and when the try
            # after the pause is refused again; not for calls that were under way at the first one.
            first, again = self._refused is None, self._retrying
            deferred = len(self._refused_deferred)
            if first or again:
                self._refused_deferred = set()
            self._refused, self._refused_at = refusal, time.monotonic()
            self._retrying = False
        # An error, not a warning: no mail is filed until an admin acts; the senders' mail servers
        # keep it meanwhile (451).
        if first:
            log.error("odoo %s: %s; %s. Until then messages are deferred (451) without calling Odoo, which is "
                      "tried again every %.0f s (after 5 failed logins from one address, Odoo ignores every login "
                      "from it for 60 s)", self.name, refusal.explanation, refusal.fix, CREDENTIALS_RETRY_SECONDS)
        elif again:
            log.error("odoo %s: %s; %s. Still refused when tried again, after %d message(s) deferred (451) "
                      "without calling Odoo; next try in %.0f s", self.name, refusal.explanation, refusal.fix,
                      deferred, CREDENTIALS_RETRY_SECONDS)
        return refusal

    def _credentials_hold(self, deadline: float | None) -> bool:
        """Raise the refusal of the credentials while it holds; True if this borrower is to try them again."""
        if self._refused is None:
            return False
        with self._lock:
            refusal = self._refused
            if refusal is None:
                return False
            if self._retrying or time.monotonic() - self._refused_at < CREDENTIALS_RETRY_SECONDS:
                # One message's reads share its deadline: counted once.
                self._refused_deferred.add(deadline if deadline is not None else object())
                raise OdooCredentialsRefused(refusal.detail, explanation=refusal.explanation, fix=refusal.fix)
            self._retrying = True
            return True

    def _credentials_tried(self, told: str | None) -> None:
        """The end of the try of refused credentials: accepted, refused, or (None) undecided."""
        with self._lock:
            if not self._retrying:
                return  # Refused (_credentials_refused), which set the next pause.
            if told == "refused":
                return  # _session's RPCError branch calls _credentials_refused next.
            self._retrying = False
            if told is None:
                self._refused_at = -math.inf  # The try told nothing (Odoo down, the deadline): the next borrower tries.
                return
            deferred = len(self._refused_deferred)
            self._refused, self._refused_deferred = None, set()
        log.warning("odoo %s: Odoo accepts the gateway's login again; %d message(s) were deferred (451) meanwhile",
                    self.name, deferred)

    def _database_missing(self, error: BaseException, call: str = "common.login") -> OdooUnavailable:
        """The refusal for a database Odoo does not have, logged with the setting that names it."""
        connection = self.connection
        refusal = OdooUnavailable(
            "Odoo does not have the gateway's database",
            explanation=f"Odoo at {connection.url} has no database {connection.database} (odoo.{self.name}.database): "
                        f"{' '.join(str(error).split())}",
            fix=f"set odoo.{self.name}.database to the database's current name (renamed or dropped?), then reload",
            odoo_error=odoo_error_name(error), odoo_message=str(error), call=call)
        # An error: no mail is filed until an admin acts; the senders' mail servers keep it (451).
        log.error("odoo %s: %s; %s", self.name, refusal.explanation, refusal.fix)
        return refusal

    def user_group_fields(self, deadline: float | None = None) -> tuple[str, str]:
        """user_group_fields() of this server's version, logging in within ``deadline`` if needed."""
        return user_group_fields(self.version(deadline))

    @property
    def groups_field(self) -> str:
        """The res.users field that assigns groups (see user_group_fields)."""
        # version() logs in first when no connection has yet told the version: a name chosen
        # before that would be the 17/18 one whatever the server.
        return user_group_fields(self.version())[0]

    @property
    def all_groups_field(self) -> str:
        """The res.users field with every group of a user, implied ones included."""
        return user_group_fields(self.version())[1]

    def first_in(self, key: tuple, seconds: float) -> bool:
        """True at most once per ``seconds`` for ``key``: for an ERROR logged once, not on every message,
        or an Odoo call made once in a while (xmlid_again)."""
        now = time.monotonic()
        with self._lock:
            last = self._said.get(key)
            if last is not None and now - last < seconds:
                return False
            self._said[key] = now
            return True

    def xmlid(self, xmlid: str, deadline: float | None = None) -> int:
        """The database id of an xmlid, resolved at its first use and kept: one call per gateway, not per message.

        An id can change under a running gateway (a contributor group deleted and created again by
        `note-gateway setup-odoo`, whose ir.model.data row then names the new group): a caller whose
        check failed on the kept id asks xmlid_again before it refuses.
        """
        found = self._xmlids.get(xmlid)
        if found is None:
            found = self._resolve(xmlid, deadline)
        return found

    def xmlid_again(self, xmlid: str, deadline: float | None = None) -> int | None:
        """The id of an xmlid read again from Odoo, or None when it was read again less than
        XMLID_RECHECK_SECONDS ago (the kept id stands).

        Found by the lifecycle review: the contributor group's id was kept forever, and after the
        admin deleted the group and setup-odoo created it again, every contributor was refused
        "not in the contributor group" (550) until a reload. Called only on that refusal's path, so
        an accepted note costs nothing; at most once a minute, so a flood of non-contributors costs
        one call a minute. An xmlid Odoo no longer has (the group deleted, setup-odoo not run yet)
        raises OdooUnavailable (451: the message waits for the admin, as at a start) and is not
        kept, so that the next message resolves it again.
        """
        if not self.first_in(("xmlid-again", xmlid), XMLID_RECHECK_SECONDS):
            return None
        before = self._xmlids.get(xmlid)
        found = self._resolve(xmlid, deadline)
        if before is not None and found != before:
            log.warning("odoo %s: %s is now id %d, was %d (deleted and created again?); messages use the new id",
                        self.name, xmlid, found, before)
        return found

    def _resolve(self, xmlid: str, deadline: float | None) -> int:
        module, _, name = xmlid.partition(".")
        try:
            # check_object_reference needs no Access Rights, unlike reading ir.model.data
            # (ODOO_FACTS.md e).
            _, record_id = self.call("ir.model.data", "check_object_reference", [module, name], deadline=deadline)
        except OdooUnavailable:
            with self._lock:
                self._xmlids.pop(xmlid, None)
            raise
        with self._lock:
            self._xmlids[xmlid] = int(record_id)
        return int(record_id)

    def _drop(self, client: odoorpc.ODOO) -> None:
        with self._lock:
            transport = self._transports.pop(id(client), None)
        if transport is not None:
            transport.close()

    def close(self) -> None:
        self._background.shutdown(wait=False, cancel_futures=True)
        while True:
            try:
                self._drop(self._idle.get_nowait())
            except queue.Empty:
                return


def escape_like(value: str) -> str:
    """Escape the wildcards of an SQL LIKE pattern, for Odoo's =ilike operator."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
