"""A keep-alive HTTP transport for odoorpc: one persistent connection per pooled Odoo client (issue 6)."""

from __future__ import annotations

import http.client
import json
import select
import ssl
import urllib.request
from http.cookiejar import CookieJar
from typing import Any


class KeepAliveHandler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """Sends every request of one odoorpc client over one kept-alive HTTP/1.1 connection.

    odoorpc's default urllib opener sends ``Connection: close`` and so pays a TCP connect (and a
    thread start on Odoo's side) per call; a note costs four calls (issue 6). An instance serves
    one pooled client, which the pool lends to one thread at a time, so it needs no lock.

    A request is sent again only when it certainly never reached Odoo: the kept-alive socket was
    found closed before sending, or sending itself failed (the server cannot act on a request it
    did not receive whole). A failure while waiting for the answer is ambiguous (Odoo may have
    filed the note and died before answering) and is raised, never retried: a doubled note is
    worse than a 451.

    ``sent`` and ``answered`` tell the pool which of the two a failed call was: ``sent`` once the
    last request went out whole, ``answered`` once the status line of its answer came back. A
    failure in between (a timeout, a connection lost while waiting) may leave Odoo running the
    request; gateway/post.py records such a post as unsettled.
    """

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        urllib.request.HTTPHandler.__init__(self)
        # ``context``: the TLS context of an https:// Odoo (odoo.<name>.ca_file); None, the system's.
        urllib.request.HTTPSHandler.__init__(self, context=context)
        self._connection: http.client.HTTPConnection | None = None
        self._key: tuple | None = None
        self.sent = self.answered = False
        # The size in bytes of the last request's body, as sent (a 413's log names it).
        self.request_size = 0

    def http_open(self, request: urllib.request.Request) -> Any:
        return self._open(http.client.HTTPConnection, request, {})

    def https_open(self, request: urllib.request.Request) -> Any:
        return self._open(http.client.HTTPSConnection, request, {"context": self._context})

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _open(self, connection_class: type, request: urllib.request.Request, extra: dict) -> Any:
        host = request.host
        if not host:
            raise urllib.request.URLError("no host given")
        key = (connection_class, host)
        if self._key != key:
            self.close()
        headers = dict(request.unredirected_hdrs)
        headers.update({name: value for name, value in request.headers.items() if name not in headers})
        headers["Connection"] = "keep-alive"
        headers = {name.title(): value for name, value in headers.items()}
        body = request.data
        if isinstance(body, bytes) and headers.get("Content-Type", "").startswith("application/json"):
            body = compact_json(body)
            headers["Content-Length"] = str(len(body))
        self.request_size = len(body) if isinstance(body, bytes) else 0
        self.sent = self.answered = False
        for attempt in (1, 2):
            reused = self._connection is not None and self._connection.sock is not None
            if reused and self._closed_by_peer():
                # Odoo (or a proxy) closed the idle connection: nothing was sent on it yet.
                self.close()
                reused = False
            if self._connection is None:
                self._connection = connection_class(host, timeout=request.timeout, **extra)
                self._key = key
            connection = self._connection
            # The pool sets a per-call timeout bounded by the message's deadline (gateway/odoo.py):
            # it must apply to a reused socket too, or a hung Odoo would hold the message forever.
            connection.timeout = request.timeout
            if connection.sock is not None:
                connection.sock.settimeout(request.timeout)
            try:
                connection.request(request.get_method(), request.selector, body, headers)
            except (ConnectionError, http.client.HTTPException) as error:
                self.close()
                if reused and attempt == 1:
                    continue  # Not received whole, so not processed: safe to send again once.
                raise urllib.request.URLError(error) from error
            except OSError as error:
                self.close()
                raise urllib.request.URLError(error) from error
            self.sent = True
            try:
                response = connection.getresponse()
            except BaseException:
                # Ambiguous: the request went out. Never re-send (see the class docstring).
                self.close()
                raise
            self.answered = True
            if response.will_close:
                # The server ends the connection after this answer (real Odoo 18 run directly
                # answers "Connection: close"); the next call opens a fresh one.
                self._connection = None
            response.url = request.get_full_url()
            response.msg = response.reason
            return response
        raise AssertionError("unreachable")

    def _closed_by_peer(self) -> bool:
        sock = self._connection.sock if self._connection is not None else None
        if sock is None:
            return True
        try:
            # An idle kept-alive socket is readable only when the peer closed it (or sent bytes
            # nobody asked for); either way it cannot carry the next request.
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)


def compact_json(body: bytes) -> bytes:
    """A JSON request body as UTF-8 instead of odoorpc's ASCII ``\\u00XX`` escapes: the same JSON value.

    odoorpc sends ``json.dumps(data)``, which writes every character above 0x7F as a 6-byte escape.
    The files of a note travel as latin-1 strings (gateway/post.py), so each byte from 0x80 of a
    compressed file (a photo, a PDF) cost 6 bytes: a 300 KiB JPEG made a 1.25 MB message_post,
    which nginx's default 1 MB body limit refused with HTTP 413 (found by a review of Odoo-side
    faults). As UTF-8 such a byte costs 2, and a whole compressed file about 2.05 times its size;
    control bytes stay escaped, as JSON demands. Odoo reads the body as UTF-8 (odoo/http.py
    get_json_data, werkzeug's get_data(as_text=True)), so it decodes the very same value.
    A body that is not JSON, or whose text UTF-8 cannot carry (a lone surrogate), goes as it was.
    """
    if b"\\u" not in body:
        return body  # No escape to shrink.
    try:
        return json.dumps(json.loads(body), ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError, RecursionError):
        return body


def tls_context(ca_file: str | None) -> ssl.SSLContext | None:
    """The TLS context of an https:// Odoo that trusts only the CA certificates in ``ca_file``
    (odoo.<name>.ca_file), with the host name checked; None (the system's CAs) without one."""
    if not ca_file:
        return None
    return ssl.create_default_context(cafile=ca_file)


def keep_alive_opener(ca_file: str | None = None) -> tuple[urllib.request.OpenerDirector, KeepAliveHandler]:
    """An opener for ``odoorpc.ODOO(opener=...)`` with cookies (as odoorpc's own) over one kept-alive
    connection; ``ca_file`` as in tls_context()."""
    handler = KeepAliveHandler(tls_context(ca_file))
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()), handler), handler
