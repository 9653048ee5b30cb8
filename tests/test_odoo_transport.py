"""The keep-alive transport of the Odoo pool: reuse, safe re-sending, and timeouts (issue 6)."""

from __future__ import annotations

import io
import json
import logging
import socket
import socketserver
import threading
import time
import urllib.error
import urllib.request

import pytest

from gateway.odootransport import keep_alive_opener


class _Server(socketserver.ThreadingTCPServer):
    """A tiny HTTP/1.1 server whose behaviour per request number is scripted by the test."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, script: dict[int, str]) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        with self.server.lock:
            self.server.connections += 1
        while True:
            line = self.rfile.readline()
            if not line:
                return
            length = 0
            while (header := self.rfile.readline()) not in (b"\r\n", b""):
                name, _, value = header.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            body = self.rfile.read(length)
            with self.server.lock:
                self.server.requests.append(body)
                number = len(self.server.requests)
            action = self.server.script.get(number, "answer")
            if action == "drop":  # Read the request, never answer: as Odoo dying mid-request.
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if action == "hang":
                time.sleep(3)
                return
            reply = json.dumps({"jsonrpc": "2.0", "id": 1, "result": number}).encode()
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(reply)).encode() + b"\r\n\r\n" + reply)
            self.wfile.flush()
            if action == "answer-then-close":  # An idle keep-alive timeout on the server's side.
                self.connection.shutdown(socket.SHUT_RDWR)
                return


@pytest.fixture
def scripted():
    servers = []

    def start(script: dict[int, str]) -> _Server:
        server = _Server(script)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _post(opener: urllib.request.OpenerDirector, server: _Server, body: bytes, timeout: float = 2.0) -> int:
    url = f"http://127.0.0.1:{server.server_address[1]}/jsonrpc"
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    return json.load(opener.open(request, timeout=timeout))["result"]


def test_calls_share_one_connection(scripted):
    server = scripted({})
    opener, _ = keep_alive_opener()
    assert [_post(opener, server, b"%d" % n) for n in range(5)] == [1, 2, 3, 4, 5]
    assert server.connections == 1


def test_a_connection_the_server_closed_while_idle_is_replaced_without_losing_the_request(scripted):
    server = scripted({1: "answer-then-close"})
    opener, _ = keep_alive_opener()
    assert _post(opener, server, b"first") == 1
    time.sleep(0.1)  # Let the close reach the client.
    assert _post(opener, server, b"second") == 2
    assert server.requests == [b"first", b"second"]
    assert server.connections == 2


def test_a_request_that_reached_the_server_is_never_sent_twice(scripted):
    # The second request is read and then the connection dies without an answer: Odoo may have
    # filed the note, so the transport must fail rather than send message_post again.
    server = scripted({2: "drop"})
    opener, _ = keep_alive_opener()
    assert _post(opener, server, b"first") == 1
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        _post(opener, server, b"message_post")
    time.sleep(0.1)
    assert server.requests == [b"first", b"message_post"]


def test_the_timeout_bounds_a_call_on_a_reused_connection(scripted):
    server = scripted({2: "hang"})
    opener, _ = keep_alive_opener()
    assert _post(opener, server, b"first", timeout=5) == 1
    started = time.monotonic()
    with pytest.raises((urllib.error.URLError, TimeoutError, OSError)):
        _post(opener, server, b"second", timeout=0.3)
    assert time.monotonic() - started < 1.5
    assert server.requests == [b"first", b"second"]


# --- The pool closes the connections it keeps ------------------------------------------------------


def _until(condition, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_the_pool_closes_its_kept_connections_when_a_client_is_dropped_and_when_it_closes(test_odoo):
    from gateway.config import OdooConnection
    from gateway.odoo import OdooPool
    from gateway.refusals import OdooUnavailable
    from gateway.testing.odoo_demo import DEMO_API_KEY

    connection = OdooConnection(url=test_odoo.url, database=test_odoo.database, login="gateway",
                                api_key_env="UNUSED", timeout=5)
    pool = OdooPool("main", connection, DEMO_API_KEY)
    try:
        pool.call("res.partner", "search", [[]], {"limit": 1})
        assert _until(lambda: test_odoo.open_connections == 1)
        # A call that fails drops its client, and the client's connection with it.
        test_odoo.fail("rpc_error", times=1)
        with pytest.raises(OdooUnavailable):
            pool.call("res.partner", "search", [[]], {"limit": 1})
        assert _until(lambda: test_odoo.open_connections == 0)
        pool.call("res.partner", "search", [[]], {"limit": 1})
        assert _until(lambda: test_odoo.open_connections == 1)
    finally:
        pool.close()
    # Closing the pool (as a reload closes the old one) closes the idle client's connection.
    assert _until(lambda: test_odoo.open_connections == 0)


# --- Which failures leave Odoo perhaps still running the call --------------------------------------


def test_the_transport_tells_a_request_sent_and_unanswered_from_one_never_sent(scripted):
    server = scripted({2: "drop", 3: "hang"})
    opener, transport = keep_alive_opener()
    assert _post(opener, server, b"first") == 1
    assert (transport.sent, transport.answered) == (True, True)
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        _post(opener, server, b"dropped")
    assert (transport.sent, transport.answered) == (True, False)
    with pytest.raises((urllib.error.URLError, TimeoutError, OSError)):
        _post(opener, server, b"hung", timeout=0.3)
    assert (transport.sent, transport.answered) == (True, False)
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    transport.close()
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        opener.open(urllib.request.Request(f"http://127.0.0.1:{port}/jsonrpc", data=b"refused"), timeout=1)
    assert (transport.sent, transport.answered) == (False, False)


@pytest.mark.parametrize("fault, unsettled", [
    ("hang", True), ("die_after_post", True), ("die_before_post", True), ("proxy_gave_up", True),
    # An HTML 500 is no answer of Odoo's, which answers every call with HTTP 200 and JSON-RPC: it may
    # be a proxy's, with Odoo still running the call (it counted as settled before the review of
    # Odoo-side faults).
    ("http500", True),
    ("rpc_error", False), ("garbage", False), ("refuse", False),
])
def test_the_pool_says_which_failed_calls_odoo_may_still_be_running(test_odoo, fault, unsettled):
    from gateway.config import OdooConnection
    from gateway.odoo import OdooPool
    from gateway.refusals import OdooUnavailable
    from gateway.testing.odoo_demo import DEMO_API_KEY, TASK_ID

    connection = OdooConnection(url=test_odoo.url, database=test_odoo.database, login="gateway",
                                api_key_env="UNUSED", timeout=0.5)
    pool = OdooPool("main", connection, DEMO_API_KEY)
    try:
        pool.call("res.partner", "search", [[]], {"limit": 1})  # logged in: the fault meets the post itself
        if fault == "refuse":
            test_odoo.fail("refuse")
        else:
            test_odoo.fail(fault, method="message_post", times=1, seconds=3)
        with pytest.raises(OdooUnavailable) as caught:
            pool.call("project.task", "message_post", [[TASK_ID]], {"body": "x", "message_type": "comment",
                                                                   "subtype_xmlid": "mail.mt_note"})
        assert caught.value.unsettled is unsettled, caught.value.detail
    finally:
        test_odoo.heal()
        pool.close()


ODOO_JSON_RPC_ERROR = b'{"jsonrpc": "2.0", "id": 1, "error": {"code": 200, "message": "Odoo Server Error"}}'


@pytest.mark.parametrize("status, body, unsettled", [
    (502, b"", True), (504, b"<html>504 Gateway Time-out</html>", True),
    # Azure Front Door (classic) answers its timeout 503, Cloudflare 524; a proxy may answer 408 or
    # 500 too. Both 503 and 500 counted as settled before a review of Odoo-side faults, and a quick
    # retry filed the note twice.
    (503, b"<html>Service Unavailable</html>", True), (524, b"", True), (408, b"", True), (500, b"<html></html>", True),
    # Odoo's own JSON-RPC answer, whatever the status: Odoo answered, it is done with the call.
    (500, ODOO_JSON_RPC_ERROR, False), (503, ODOO_JSON_RPC_ERROR, False),
])
def test_a_proxy_that_gave_up_on_odoo_leaves_the_call_unsettled(status, body, unsettled):
    # nginx answers 504 when Odoo takes longer than proxy_read_timeout (60 s by default, below
    # Odoo's limit_time_real): Odoo goes on with the request as if the gateway had timed out itself.
    from gateway.config import OdooConnection
    from gateway.odoo import OdooPool
    from gateway.odootransport import KeepAliveHandler
    from gateway.refusals import OdooUnavailable

    transport = KeepAliveHandler()

    class Client:
        config: dict = {}

        def execute_kw(self, model, method, args, kwargs):
            transport.sent = transport.answered = True  # as the transport leaves them after an answer
            raise urllib.error.HTTPError("http://odoo/jsonrpc", status, "from the proxy", {}, io.BytesIO(body))

    connection = OdooConnection(url="http://127.0.0.1:9", database="db", login="gateway", api_key_env="UNUSED")
    pool = OdooPool("main", connection, "key")
    client = Client()
    pool._idle.put(client)
    pool._transports[id(client)] = transport
    try:
        with pytest.raises(OdooUnavailable) as caught:
            pool.call("project.task", "message_post", [[1]], {})
        assert caught.value.unsettled is unsettled
        assert caught.value.detail == "HTTPError talking to Odoo"
    finally:
        pool.close()


def test_a_request_the_proxy_refused_as_too_large_is_settled_and_named(caplog):
    from gateway.config import OdooConnection
    from gateway.odoo import OdooPool
    from gateway.odootransport import KeepAliveHandler
    from gateway.refusals import OdooRequestTooLarge

    transport = KeepAliveHandler()

    class Client:
        config: dict = {}

        def execute_kw(self, model, method, args, kwargs):
            transport.sent = transport.answered = True
            transport.request_size = 1251568
            raise urllib.error.HTTPError("http://odoo/jsonrpc", 413, "Request Entity Too Large", {},
                                         io.BytesIO(b"<html>413 Request Entity Too Large</html>"))

    connection = OdooConnection(url="http://127.0.0.1:9", database="db", login="gateway", api_key_env="UNUSED")
    pool = OdooPool("main", connection, "key")
    client = Client()
    pool._idle.put(client)
    pool._transports[id(client)] = transport
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.odoo"), pytest.raises(OdooRequestTooLarge) as caught:
            pool.call("project.task", "message_post", [[1]], {})
    finally:
        pool.close()
    # Refused whole, before Odoo: nothing is running, the retry after the fix posts at once.
    assert caught.value.unsettled is False
    assert caught.value.smtp_reply() == ("451 4.3.0 The web server in front of Odoo refused this message as too "
                                         "large, an administrator must raise its limit: HTTP 413 for a request of "
                                         "1251568 bytes")
    [record] = caplog.records
    assert record.levelname == "ERROR"
    assert "refused the project.task.message_post request of 1251568 bytes as too large" in record.getMessage()
    assert "client_max_body_size" in record.getMessage()


# --- What goes over the wire -----------------------------------------------------------------------


def test_json_bodies_go_as_utf_8_not_as_ascii_escapes(scripted):
    # A file travels as a latin-1 string (gateway/post.py); odoorpc's ASCII JSON wrote each byte from
    # 0x80 as a 6-byte \u00XX escape (a review of Odoo-side faults: 4.07x a photo's size).
    server = scripted({})
    opener, transport = keep_alive_opener()
    payload = bytes(range(256)) * 4
    value = {"params": {"args": [payload.decode("latin-1"), "Pumpenprüfung ✓"], "n": 1.5}}
    sent = json.dumps(value).encode()  # as odoorpc sends it
    assert _post(opener, server, sent) == 1
    [received] = server.requests
    assert json.loads(received.decode("utf-8")) == value  # the same JSON value, as Odoo reads it
    assert transport.request_size == len(received) <= 2.1 * len(payload) + 60
    assert json.loads(received)["params"]["args"][0].encode("latin-1") == payload


def test_ca_file_trusts_a_private_ca_for_an_https_odoo(tmp_path, test_odoo, caplog):
    # A review of Odoo-side faults: only the system's CA store was trusted for an https:// Odoo.
    from gateway.config import OdooConnection
    from gateway.odoo import OdooPool
    from gateway.refusals import OdooUnavailable
    from gateway.testing.certificates import self_signed
    from gateway.testing.odoo_demo import DEMO_API_KEY

    certificate, key = self_signed(tmp_path, "odoo.internal")
    test_odoo.use_tls(certificate, key)
    assert test_odoo.url.startswith("https://")
    trusting = OdooPool("main", OdooConnection(url=test_odoo.url, database=test_odoo.database, login="gateway",
                                               api_key_env="UNUSED", timeout=5, ca_file=str(certificate)),
                        DEMO_API_KEY)
    untrusting = OdooPool("main", OdooConnection(url=test_odoo.url, database=test_odoo.database, login="gateway",
                                                 api_key_env="UNUSED", timeout=5), DEMO_API_KEY)
    try:
        assert trusting.call("res.partner", "search", [[]], {"limit": 1})
        with caplog.at_level(logging.WARNING, logger="gateway.odoo"), pytest.raises(OdooUnavailable):
            untrusting.call("res.partner", "search", [[]], {"limit": 1})
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    finally:
        trusting.close()
        untrusting.close()
