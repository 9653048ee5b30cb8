"""What the gateway tells its operators as it runs: one JSON log line per message, and Prometheus metrics."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from gateway.journal import JournalEntry

# The message lines go to their own logger, so an admin can route them (or silence them) apart
# from the gateway's diagnostics; `note-gateway serve` prints them bare, one JSON object a line.
message_log = logging.getLogger("gateway.messages")

# A registry of the gateway's own rather than the process-wide default, so that tests and the
# demo, which build several gateways in one process, never register a metric twice.
REGISTRY = CollectorRegistry()

MESSAGES = Counter(
    "note_gateway_messages",
    "Messages that reached DATA (or were refused at MAIL for their declared SIZE), by verdict, refusal class "
    "and the [odoo.NAME] connection of their alias domain (empty when none was known yet)",
    ["verdict", "refusal", "odoo"], registry=REGISTRY)
# Recipients refused at RCPT: journaled, but no message reached DATA, so not in MESSAGES (whose
# sum stays the messages the gateway was sent); counted here apart (found by a review of what
# operators can see: they were in the journal only, with no metric and no JSON line).
RECIPIENTS_REFUSED = Counter(
    "note_gateway_recipients_refused", "Recipients refused at RCPT, by refusal class and the [odoo.NAME] "
    "connection of their alias domain (empty when the domain is not one the gateway serves)",
    ["refusal", "odoo"], registry=REGISTRY)
STAGE_SECONDS = Histogram(
    "note_gateway_stage_seconds", "Time spent in each pipeline stage", ["stage"], registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
MESSAGE_SECONDS = Histogram(
    "note_gateway_message_seconds", "Time from DATA to the reply, per message", registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
ODOO_SECONDS = Histogram(
    "note_gateway_odoo_call_seconds", "Latency of each Odoo RPC call, by connection and outcome",
    ["odoo", "outcome"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
READ_BATCH = Histogram(
    "note_gateway_odoo_read_batch_size", "Messages answered by one Odoo read, by connection and read "
    "(above 1: messages that waited for a connection together shared it)",
    ["odoo", "read"], registry=REGISTRY, buckets=(1, 2, 4, 8, 16, 32, 64))
# The refusals the listener says to a session as it connects, before any command (421, then it
# closes). Behind Postfix every session comes from 127.0.0.1, so listener.max_sessions_per_ip is
# the limit that binds, and its turn-aways reached neither the journal nor any metric (found by a
# review of what operators can see). A closed list of reasons, each a series from the start (at 0).
SESSION_REFUSALS = ("TooManySessions", "TooManyConnectionsFromPeer", "ShuttingDown")
SESSIONS_REFUSED = Counter(
    "note_gateway_sessions_refused", "SMTP/LMTP sessions turned away as they connected (421), by refusal class",
    ["reason"], registry=REGISTRY)
for _reason in SESSION_REFUSALS:
    SESSIONS_REFUSED.labels(_reason)
# With listener.workers > 1 the supervisor serves the sum over the live workers' files.
SESSIONS = Gauge("note_gateway_sessions_in_flight", "SMTP/LMTP sessions open now", registry=REGISTRY,
                 multiprocess_mode="livesum")

# The index of this worker process when listener.workers > 1, None in a gateway of one process.
worker: int | None = None

# Message-IDs, addresses, file names and parser errors come from strangers; written raw into a log,
# an escape sequence or a backspace in one rewrites what the admin's terminal shows, and a line
# break forges a line (journal review: a Message-ID <a\x1b[31m\x08\x08\x08@b> reached the INFO
# line of gateway.smtp as it was). Control characters are shown escaped, as "\x1b".
CONTROL_CHARACTERS = (*range(0x20), 0x7F, *range(0x80, 0xA0))  # C0, DEL and C1
# The bidirectional formatting characters (Unicode's UAX #9: the marks, embeddings, overrides and
# isolates) move no cursor, but reorder what a terminal or a log viewer shows around them: a file
# name "invoice\u202efdp.vbs" reads "invoicesbv.pdf" (a fuzzing review: they reached the JSON lines
# and `note-gateway log` raw). They are shown escaped with the control characters.
BIDI_CONTROLS = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
# What an operator's view of a stranger's text shows escaped: the one table of the log lines, the
# JSON lines, `note-gateway log` and the refusals' text.
UNPRINTABLE = (*CONTROL_CHARACTERS, *BIDI_CONTROLS)
_ESCAPED = {code: f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" for code in UNPRINTABLE}
# JSON escapes C0 itself; DEL, C1 (0x9b is a terminal's CSI) and the bidirectional controls it
# leaves as they are. Escaped, a JSON reader still reads the same value.
_JSON_ESCAPED = {code: f"\\u{code:04x}" for code in UNPRINTABLE if code >= 0x20}
# A table (note-gateway log) and a refusal's text show each of them as "?".
_MASKED = dict.fromkeys(UNPRINTABLE, "?")


def duration(seconds: float) -> str:
    """A span of time, its sign left out, as a reply or doctor says it: "20 minutes", "3 hours 5 minutes",
    "5 days"; "45 seconds" below half a minute."""
    seconds = abs(seconds)
    minutes = int(round(seconds / 60))
    if minutes < 1:
        return f"{int(seconds)} seconds"
    days, rest = divmod(minutes, 1440)
    hours, minutes = divmod(rest, 60)
    parts = [f"{value} {unit}{'s' if value != 1 else ''}"
             for value, unit in ((days, "day"), (hours, "hour"), (minutes, "minute")) if value]
    return " ".join(parts)


def masked(text: str) -> str:
    """``text`` with each control and bidirectional formatting character (UNPRINTABLE) shown as "?"."""
    return text.translate(_MASKED)


def printable(value: object) -> str:
    """``value`` for a diagnostic log line, its control characters escaped ("\\x1b", "\\u202e")."""
    return str(value).translate(_ESCAPED)


class PrintableFormatter(logging.Formatter):
    """The gateway's diagnostic lines with every control character of their message escaped, whatever
    the call that logged it interpolated; a traceback appended to a line keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).translate(_ESCAPED)


# labels() looks its child up under a lock on every call, some twenty times per message; the
# label values come from finite sets (verdicts, refusal classes, stage names, configured Odoo
# connections) and a child lives as long as its metric, so each is looked up once (issue 6).
@functools.cache
def _messages(verdict: str, refusal: str, odoo: str) -> Counter:
    return MESSAGES.labels(verdict, refusal, odoo)


@functools.cache
def _stage_seconds(stage: str) -> Histogram:
    return STAGE_SECONDS.labels(stage)


@functools.cache
def _odoo_seconds(odoo: str, outcome: str) -> Histogram:
    return ODOO_SECONDS.labels(odoo, outcome)


def message_answered(verdict: str, refusal: str, odoo: str, seconds: float | None) -> None:
    """Count a message as its reply goes out: its verdict and its time from DATA to the reply (None: none)."""
    # By Odoo too, so that deferred messages (OdooUnavailable) name the Odoo that fails; Odoo
    # connections are few, so the series stay few (verdicts x refusal classes x connections).
    _messages(verdict, refusal or "none", odoo).inc()
    if seconds is not None:
        MESSAGE_SECONDS.observe(seconds)


def message_done(entry: JournalEntry, *, timed: bool = True, already_counted: bool = False) -> None:
    """Count a finished message and log its line; called after the journal has (or has not) kept it.

    ``timed`` is False for a message refused at MAIL for its declared SIZE: it never reached DATA,
    so it has no time from DATA to the reply. ``already_counted``: the message was counted when
    its reply went out before its row was written (the listener's last-resort reply, smtp.py):
    only its stages' durations and its line are left to do.
    """
    if not already_counted:
        message_answered(entry.verdict, entry.refusal_class, entry.odoo, entry.total_seconds if timed else None)
    for stage, seconds in entry.durations.items():
        _stage_seconds(stage).observe(seconds)
    if message_log.isEnabledFor(logging.INFO):
        # The journal's own fields, so a log line and `note-gateway log --id N` tell the same story.
        message_log.info(json.dumps(log_fields(entry), ensure_ascii=False, sort_keys=False).translate(_JSON_ESCAPED))


def recipient_refused(entry: JournalEntry) -> None:
    """Count a recipient refused at RCPT and log its line (event "refused-recipient"), after its journal row."""
    RECIPIENTS_REFUSED.labels(entry.refusal_class, entry.odoo).inc()
    if message_log.isEnabledFor(logging.INFO):
        fields = {**log_fields(entry), "event": "refused-recipient"}
        message_log.info(json.dumps(fields, ensure_ascii=False, sort_keys=False).translate(_JSON_ESCAPED))


def log_fields(entry: JournalEntry) -> dict:
    # A shallow copy: dataclasses.asdict deep-copies every value, a tenth of this function's time
    # for fields that are only read here (issue 6: CPU per note).
    fields = {field.name: getattr(entry, field.name) for field in dataclasses.fields(entry)}
    fields["journal_id"] = fields.pop("id")
    fields["defects"] = list(entry.defects)
    fields["durations"] = {stage: round(seconds, 6) for stage, seconds in entry.durations.items()}
    if worker is not None:
        # Which of the workers filed it: the journal row is the same whichever did.
        fields["worker"] = worker
    return {"event": "message", **fields}


def odoo_call(odoo: str, seconds: float, ok: bool) -> None:
    _odoo_seconds(odoo, "ok" if ok else "error").observe(seconds)


@functools.cache
def _read_batch(odoo: str, read: str) -> Histogram:
    return READ_BATCH.labels(odoo, read)


def read_batch(odoo: str, read: str, messages: int) -> None:
    _read_batch(odoo, read).observe(messages)


def session_started() -> None:
    SESSIONS.inc()


def session_ended() -> None:
    SESSIONS.dec()


def session_refused(reason: str) -> None:
    """Count a session turned away at connect; ``reason`` is one of SESSION_REFUSALS."""
    if reason not in SESSION_REFUSALS:
        raise ValueError(f"not a refusal of a session at connect: {reason!r}")
    SESSIONS_REFUSED.labels(reason).inc()


def serve_metrics(host: str, port: int):
    """Serve /metrics over HTTP on a thread of its own; returns the server and its thread."""
    return start_http_server(port, addr=host, registry=REGISTRY)


class _Bare(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


def bare_message_lines(stream=None) -> None:
    """Print message lines as bare JSON objects (journald adds the time and the unit itself)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_Bare())
    message_log.addHandler(handler)
    message_log.setLevel(logging.INFO)
    message_log.propagate = False


class _HandledHeaderDecodeFailure(logging.Filter):
    """mail-parser logs "Failed decoding header part: <header>" at ERROR, once per read of the
    header (five times per message), for a header with a broken encoded word (=?utf-8?B?broken!!?=).
    It keeps the header as written and the gateway files the message: that is no error to wake an
    admin's alerting for. Such a record becomes DEBUG, shown only when debugging (--verbose); every
    other record of mail-parser is left as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and str(record.msg).startswith("Failed decoding header part"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            # The logger let it through as an ERROR; as a DEBUG record it goes on only if DEBUG is on.
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


HANDLED_LIBRARY_ERRORS = _HandledHeaderDecodeFailure()


def downgrade_handled_library_errors() -> None:
    """Part of the logging setup of every command: the filter above on mail-parser's logger."""
    logging.getLogger("mailparser.utils").addFilter(HANDLED_LIBRARY_ERRORS)


# odoorpc logs every JSON-RPC request and its answer at DEBUG (odoorpc/rpc/jsonrpclib.py). It hides
# a parameter named "password" only, while from Odoo 10 on the API key is a positional item of
# "args": [db, login, key] of common.login and [db, uid, key, model, method, ...] of every
# execute_kw. `serve --verbose` wrote the key about twenty times per message, and the note's text
# with each message_post (found by a review of the logs). Never below INFO, whatever the root logger
# says: each Odoo call is timed by the gateway's own DEBUG line instead (odoo.OdooPool._session).
QUIET_LIBRARY_LOGGERS = ("odoorpc",)

# The commands whose lines aiosmtpd's log may show (aiosmtpd's smtp_* and lmtp's LHLO).
_SMTP_COMMANDS = frozenset({"HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY",
                            "EXPN", "HELP", "STARTTLS", "AUTH"})
# aiosmtpd 1.4.6 (smtp.py): each line of DATA at DEBUG, i.e. the message itself; each command line
# at DEBUG and again at INFO.
_DATA_LINE = "DATA readline: %s"
_COMMAND_LINES = {"_handle_client readline: %r": 0, "%r >> %r": 1}  # the line's index in record.args


class _WithoutMessageContent(logging.Filter):
    """aiosmtpd's log lines (logger mail.log, shown with --verbose) without what a sender wrote.

    Dropped: "DATA readline", one record per line of the message. Reworded: a command line whose
    first word is no SMTP command (a line of a message sent without waiting for the reply to DATA,
    or the credentials a client sends after its AUTH got 502) shows only its length; an AUTH line
    shows its mechanism but not its credentials (aiosmtpd hides them only when "AUTH" is written in
    capitals). The replies, MAIL FROM and RCPT TO, and the connections stay as aiosmtpd logs them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _DATA_LINE:
            return False
        index = _COMMAND_LINES.get(record.msg) if isinstance(record.msg, str) else None
        if index is not None and isinstance(record.args, tuple) and len(record.args) > index:
            line = record.args[index]
            if isinstance(line, bytes):
                args = list(record.args)
                args[index] = _shown_command(line)
                record.args = tuple(args)
        return True


def _shown_command(line: bytes) -> bytes:
    words = line.split(None, 2)
    verb = words[0].upper() if words else b""
    if verb.decode("ascii", "replace") not in _SMTP_COMMANDS:
        return b"<%d bytes withheld: not an SMTP command>" % len(line)
    if verb == b"AUTH" and len(words) > 2:
        return b" ".join(words[:2]) + b" <withheld>"
    return line


WITHOUT_MESSAGE_CONTENT = _WithoutMessageContent()


def keep_secrets_out_of_logs() -> None:
    """Part of the logging setup of every command: no API key, credential or message text in the log, even with --verbose."""
    for name in QUIET_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger().getEffectiveLevel()))
    logging.getLogger("mail.log").addFilter(WITHOUT_MESSAGE_CONTENT)
