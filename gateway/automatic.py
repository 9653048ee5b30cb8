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
# Subjects of out-of-office replies, for the auto-responders that send no Auto-Submitted header
# (still many, RFC 3834 being only a proposed standard). Gmail's vacation responder, Zimbra, Sieve
# vacation (RFC 5230) and Postfix/Unix vacation programs do send Auto-Submitted or Precedence, and
# are refused by those; the subject is the last resort, for Outlook/Exchange and Lotus Notes.
#
# The subject is matched only in the forms responders write, never on a word a person could start a
# sentence with ("Out of office hours call-out", "Niet aanwezig bij afspraak", "Autoreply module
# configured", "Fuori sede: intervento completato" were refused until 2026-12, found by exploratory
# testing):
# - a responder's own prefix ("Automatic reply", "Abwesenheitsnotiz", "Réponse automatique",
#   optionally qualified as Outlook 2003 did: "Out of Office AutoReply", "Réponse automatique
#   d'absence du bureau"), then ":", a dash or the end of the subject: Outlook/Exchange put it in
#   front of the original subject ("Automatic reply: Pump P-7");
# - Exchange's English "Out of Office" prefix, the same way;
# - Lotus Notes' "AUTO: Jane Doe is out of the office (returning ...)";
# - an absence phrase that is the whole subject ("Out of office", "Fuori sede", "Niet aanwezig."),
#   which is what a responder sends when its user typed only that. "Fuori sede: ..." followed by
#   anything is a person writing.
_AUTO_REPLY_PREFIX = (
    r"auto(?:matic)?[- ]?reply|autoreply|auto[- ]?response|automatic[- ]response|autoresponder"
    r"|out[- ]of[- ]office(?:[- ]auto[- ]?reply)?"                             # en (Exchange, Notes)
    r"|abwesenheitsnotiz|automatische antwort(?: bei abwesenheit)?"          # de
    r"|r[ée]ponse automatique(?: d'absence du bureau)?"                     # fr
    r"|respuesta autom[áa]tica(?: de fuera de la oficina)?"                 # es
    r"|risposta automatica(?: fuori sede| di fuori sede)?"                  # it
    r"|automatisch antwoord(?: bij afwezigheid)?|afwezigheidsmelding"       # nl
    r"|resposta autom[áa]tica"                                              # pt
    r"|automatiskt svar|autosvar|automatisk svar|automatisk besked"         # sv, no, da
    r"|automaattinen vastaus|automatyczna odpowied[źz]"                     # fi, pl
    r"|automatick[áa] odpov[ěe][ďd]|otomatik yan[ıi]t"                      # cs, tr
    r"|автоответ|автоматический ответ|自动回复|自动答复|自動応答|自動回覆|자동 회신"  # ru, zh, ja, ko
)
_ABSENCE_PHRASE = (
    r"out of (?:the )?office|away from (?:the )?office|on vacation|on holiday"
    r"|abwesend|nicht im b[üu]ro|au[ßs]er haus"                            # de
    r"|absent(?:e)? du bureau|absence du bureau"                           # fr
    r"|fuera de la oficina|ausente"                                        # es
    r"|fuori sede|fuori ufficio"                                           # it
    r"|niet aanwezig|afwezig"                                              # nl
    r"|fora do escrit[óo]rio"                                              # pt
    r"|fr[åa]nvaro|ikke til stede|poissaolo|poza biurem"                   # sv, da/no, fi, pl
    r"|вне офиса|不在"                                                      # ru, ja
)
_OUT_OF_OFFICE_SUBJECT = re.compile(
    rf"^\s*(?:"
    rf"(?:{_AUTO_REPLY_PREFIX})\s*(?:[:：]|[-–—](?:\s|$)|$)"
    rf"|auto\s*:.*\b(?:is out of (?:the )?office|ist (?:au[ßs]er haus|nicht im b[üu]ro|abwesend))\b"
    rf"|(?:{_ABSENCE_PHRASE})\s*[.!]*\s*$"
    rf")",
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
