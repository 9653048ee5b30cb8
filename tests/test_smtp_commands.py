"""Any SMTP or LMTP command line gets a reply with a meaning, never an exception's text, and the session goes on."""

from __future__ import annotations

import re
import socket

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import read_reply

# Commands that take a path, and the others (whose argument is noise).
PATH_VERBS = st.sampled_from([b"MAIL FROM:", b"RCPT TO:", b"mail from:", b"MAIL FROM: ", b"VRFY ", b"EXPN "])
VERBS = st.sampled_from([b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"RSET", b"NOOP", b"VRFY", b"EXPN", b"HELP",
                         b"MAIL", b"RCPT", b"DATA ", b"STARTTLS ", b"ehlo", b"mail from:", b"XYZZY", b""])
PATHS = st.sampled_from([b"<portal.contrib@example.com>", b"<>", b'<"a b"@example.com>', b"<@relay:a@b>", b"<a@[1.2.3.4]>",
                         b"a@b", b"<a@b", b'"', b"a@", b"<=?utf-8?q?x?=@b>", b"<p\xc3\xa2ula@example.com>",
                         b"<note+project.task-60-x@notes.example.com>"])
PARAMS = st.sampled_from([b"", b" SIZE=5120", b" SIZE=abc", b" SIZE=", b" SIZE=99999999999999999999", b" BODY=8BITMIME",
                          b" BODY=BINARYMIME", b" SMTPUTF8", b" SMTPUTF8=x", b" AUTH=<>", b" X=Y=Z", b" =", b" NOTIFY=NEVER",
                          b" (comment)", b"\t", b" \xff\xfe"])
NOISE = st.binary(max_size=40).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b""))
LINES = st.one_of(st.builds(lambda verb, path, params: verb + path + params, PATH_VERBS, PATHS, PARAMS),
                  st.builds(bytes.__add__, VERBS, NOISE))
_EXCEPTION_TEXT = re.compile(rb"^\d{3}[ -]Error: \(")
_GOODBYE = (b"421 ", b"502 5.5.1 Too many unrecognized commands")


@pytest.fixture(params=["smtp", "lmtp"])
def listener(request, start_gateway, dns_server):
    """The listener in each protocol, with the greeting it expects (Postfix delivers over LMTP too)."""
    if request.param == "lmtp":
        return start_gateway(dns_server.port, listener_extra='protocol = "lmtp"'), b"LHLO client.example.com"
    return start_gateway(dns_server.port), b"EHLO client.example.com"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(greet=st.booleans(), commands=st.lists(LINES, min_size=1, max_size=8))
@example(greet=False, commands=[b"QUIT"])
@example(greet=True, commands=[b"NOOP", b"quit "])
def test_any_command_line_gets_a_meaningful_reply_and_the_session_goes_on(listener, greet, commands):
    gateway, greeting = listener
    # Without a greeting most commands stop at "503 send HELO first"; with one they reach their parsing.
    commands = [greeting] * greet + commands
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as connection:
        stream = connection.makefile("rb")
        assert read_reply(stream)[-1].startswith(b"220 ")
        for command in commands:
            connection.sendall(command + b"\r\n")
            reply = b"".join(read_reply(stream))
            assert not _EXCEPTION_TEXT.match(reply), (command, reply)
            assert reply[:1] in (b"2", b"4", b"5"), (command, reply)
            if reply.startswith(_GOODBYE):
                # aiosmtpd ends a session after five unknown commands or too many of one: said, then closed.
                assert stream.readline() == b"", reply
                return
            if reply.startswith(b"221 "):
                # The noise spelled QUIT (hypothesis found b"QUIT"): the one command that ends the
                # session, said, then closed.
                assert command.strip().upper() == b"QUIT" and stream.readline() == b"", (command, reply)
                return
        connection.sendall(b"NOOP\r\n")
        assert read_reply(stream)[-1].startswith(b"250 "), commands
        connection.sendall(b"QUIT\r\n")
        assert read_reply(stream)[-1].startswith(b"221 ")
