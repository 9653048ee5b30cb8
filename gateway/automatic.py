"""Recognise automatic mail (auto-replies, bounces, bulk and list mail, our own notices) so it is never filed or answered."""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import re

from gateway.refusals import AutomaticMessage, MailLoop

# Every notice the gateway sends carries this header; mail that comes back with it has looped
# (through a forwarder, an auto-reply quoting headers, a misrouted bounce).
LOOP_HEADER = "X-Note-Gateway-Loop"

# Local parts of addresses that only machines send from (RFC 3834 section 5.1 names bounces and
# the like; "noreply" addresses announce that nobody reads replies).
_MACHINE_LOCAL_PART = re.compile(
    r"^(mailer-daemon|postmaster|no[-_.]?reply|do[-_.]?not[-_.]?reply|bounces?|mail-daemon)([+-].*)?$",
    re.IGNORECASE,
)
_AUTOMATIC_PRECEDENCE = frozenset({"bulk", "junk", "list", "auto_reply"})
# Subjects that out-of-office replies set in common languages, for the auto-responders that send
# no Auto-Submitted header (still many, RFC 3834 being only a proposed standard).
_OUT_OF_OFFICE_SUBJECT = re.compile(
    r"^\s*("
    r"out of (the )?office|auto(matic)?[- ]?reply|autoreply|auto[- ]?response|away from (the )?office"
    r"|abwesenheitsnotiz|automatische antwort"                      # de
    r"|r[ée]ponse automatique|absent du bureau|absence du bureau"    # fr
    r"|fuera de la oficina|respuesta autom[áa]tica"                 # es
    r"|fuori sede|risposta automatica|fuori ufficio"                # it
    r"|automatisch antwoord|niet aanwezig|afwezigheidsmelding"      # nl
    r"|resposta autom[áa]tica|fora do escrit[óo]rio"                # pt
    r"|fr[åa]nvaro|automatiskt svar|autosvar|automatisk svar"       # sv, no, da
    r"|poissaolo|automaattinen vastaus|automatyczna odpowied[źz]"   # fi, pl
    r"|автоответ|автоматический ответ|自动回复|自動応答|自動回覆"      # ru, zh, ja
    r")(\b|\s|:|$)",
    re.IGNORECASE,
)


def _local_part(address: str) -> str:
    return address.strip().strip("<>").rpartition("@")[0] if "@" in address else address.strip().strip("<>")


def check_not_automatic(raw: bytes, mail_from: str, from_address: str, subject: str,
                        email_message: email.message.Message | None = None) -> None:
    """Raise MailLoop or AutomaticMessage if the message was sent by a machine rather than a person.

    ``email_message`` is ``raw`` already parsed (compat32): its header fields are the ones the
    header parser would find, so it is read instead of parsing again.
    """
    # Only the header block is needed, and the header parser stops at the first empty line.
    headers = email_message if email_message is not None else (
        email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw))
    if headers.get(LOOP_HEADER) is not None:
        raise MailLoop()
    # RFC 3834 section 5.2: any value other than "no" marks automatic mail.
    auto_submitted = str(headers.get("Auto-Submitted", "") or "").split(";")[0].strip().lower()
    if auto_submitted and auto_submitted != "no":
        raise AutomaticMessage(f"Auto-Submitted: {auto_submitted[:40]}")
    precedence = str(headers.get("Precedence", "") or "").strip().lower()
    if precedence in _AUTOMATIC_PRECEDENCE:
        raise AutomaticMessage(f"Precedence: {precedence}")
    for name in ("X-Autoreply", "X-Autorespond", "X-Auto-Response"):
        if headers.get(name) is not None:
            raise AutomaticMessage(name)
    # A null reverse-path is how bounces and other delivery reports are sent (RFC 5321 section 4.5.5).
    if not mail_from.strip().strip("<>"):
        raise AutomaticMessage("empty envelope sender")
    for address in (mail_from, from_address):
        if address and _MACHINE_LOCAL_PART.match(_local_part(address)):
            raise AutomaticMessage(f"sent from a machine address, {_local_part(address)[:40]}")
    if _OUT_OF_OFFICE_SUBJECT.match(subject or ""):
        raise AutomaticMessage("out-of-office subject")
