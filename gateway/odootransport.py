"""A keep-alive HTTP transport for odoorpc: one persistent connection per pooled Odoo client (issue 6)."""

from __future__ import annotations

import http.client
import select
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

    def __init__(self) -> None:
        urllib.request.HTTPHandler.__init__(self)
        urllib.request.HTTPSHandler.__init__(self)
        self._connection: http.client.HTTPConnection | None = None
        self._key: tuple | None = None
        self.sent = self.answered = False

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
                connection.request(request.get_method(), request.selector, request.data, headers)
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


def keep_alive_opener() -> tuple[urllib.request.OpenerDirector, KeepAliveHandler]:
    """An opener for ``odoorpc.ODOO(opener=...)`` with cookies (as odoorpc's own) over one kept-alive connection."""
    handler = KeepAliveHandler()
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()), handler), handler
