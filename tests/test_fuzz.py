"""Fuzzing the parse-and-decide path: whatever the bytes, a permanent refusal or a parsed message, never a crash."""

from __future__ import annotations

import re
from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import content
from gateway.config import DomainRules, GatewayFile
from gateway.context import MessageContext, Target
from gateway.pipeline import STAGES
from gateway.refusals import Refusal

# The stages that run before anything leaves the gateway (DNS, Odoo): these see hostile bytes first.
LOCAL_STAGES = [stage for stage in STAGES if stage.name in ("framing", "input-limits", "parse", "refuse-automatic")]
SERVICES = SimpleNamespace(config=SimpleNamespace(gateway=GatewayFile(odoo={})))
RULES = DomainRules(domain="notes.example.com", odoo="main")
TARGET = Target("note", "notes.example.com", "project.task", 60, "note+project.task-60-x@notes.example.com")

_BARE_LINE_ENDING = re.compile(rb"\r\n|\r|\n")
HEADER_NAMES = st.sampled_from([
    b"From", b"To", b"Subject", b"Message-ID", b"Date", b"Content-Type", b"Content-Transfer-Encoding",
    b"MIME-Version", b"Auto-Submitted", b"Precedence", b"X-Autoreply", b"DKIM-Signature", b"Content-Disposition",
    b"X-Note-Gateway-Loop", b"Received",
])
HEADER_VALUES = st.one_of(
    st.sampled_from([b"Paula <portal.contrib@example.com>", b"multipart/mixed; boundary=\"b\"", b"base64",
                     b"text/html; charset=\"utf-8\"", b"quoted-printable", b"=?utf-8?b?w6k=?=", b"auto-replied",
                     b"bulk", b"<id@example.com>", b"text/plain; charset=unknown-8bit", b"attachment; filename=a.bin"]),
    st.binary(max_size=80),
    st.text(max_size=60).map(lambda text: text.encode("utf-8", "surrogatepass")),
)
LINE_ENDINGS = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\n."])
BODY_CHUNKS = st.one_of(
    st.sampled_from([b"--b\r\n", b"--b--\r\n", b"Content-Type: text/plain\r\n\r\n", b"SGVsbG8=\r\n", b"!!!not*base64\r\n",
                     b"<p onclick=x>hi<script>alert(1)</script></p>\r\n", b"=C3=A9=\r\n", b"> quoted\r\n", b"-- \r\n"]),
    st.binary(max_size=120),
)


@st.composite
def messages(draw) -> bytes:
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES, LINE_ENDINGS), max_size=12))
    raw = b"".join(name + b": " + value + ending for name, value, ending in headers)
    raw += draw(st.sampled_from([b"\r\n", b"", b"\n"]))
    raw += b"".join(draw(st.lists(BODY_CHUNKS, max_size=15)))
    if draw(st.booleans()):
        # Half the cases get clean framing, so the parser and the later checks see them too
        # instead of all stopping at the bare-LF check.
        raw = _BARE_LINE_ENDING.sub(b"\r\n", raw.replace(b"\x00", b""))
    return raw


def _decide(raw: bytes, mail_from: str) -> MessageContext:
    ctx = MessageContext(raw=raw, mail_from=mail_from, target=TARGET, rules=RULES)
    for stage in LOCAL_STAGES:
        stage.run(ctx, SERVICES, float("inf"))
    assert ctx.message is not None
    ctx.body_html = content.extract_body(ctx.message)
    return ctx


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(raw=messages(), mail_from=st.sampled_from(["portal.contrib@example.com", "", "MAILER-DAEMON@example.com"]))
def test_any_bytes_are_parsed_or_refused_for_good(raw, mail_from):
    try:
        ctx = _decide(raw, mail_from)
    except Refusal as refusal:
        # The same bytes fail the same way again: a 4xx here would make the sender retry forever.
        assert not refusal.transient, refusal.smtp_reply()
        reply = refusal.smtp_reply()
        assert "\r" not in reply and "\n" not in reply
        return
    assert ctx.message is not None and ctx.message.message_id
    assert "\x00" not in ctx.message.subject
