"""Recognise automatic mail (auto-replies, bounces, bulk and list mail, our own notices) so it is never filed or answered."""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import email.utils
import re

from gateway import content
from gateway.context import ParsedMessage
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


# RFC 6522's report types that the reason names in words; others are named by their type.
_REPORT_KINDS = {
    "delivery-status": "a delivery report",        # RFC 3464
    "disposition-notification": "a read receipt",  # RFC 8098
    "feedback-report": "an abuse feedback report",  # RFC 5965 (ARF)
}


def _report_reason(headers: email.message.Message) -> str:
    value = headers.get_param("report-type")
    report_type = str(email.utils.collapse_rfc2231_value(value) if value else "").strip().lower()[:40]
    if not report_type:
        return "a report (multipart/report)"
    kind = _REPORT_KINDS.get(report_type, "a report")
    return f"{kind} (multipart/report, report-type={report_type})"


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
    # A mailing list's copy (RFC 2919 List-Id, RFC 2369 List-Post) or a bulk mailing (RFC 2369 /
    # RFC 8058 List-Unsubscribe): only list managers and bulk senders write these fields, and many
    # send no Precedence. A list with List-Id and no Precedence was filed until 2026-12 (found by a
    # review of the gateway behind Postfix).
    for name in ("List-Id", "List-Post", "List-Unsubscribe"):
        if headers.get(name) is not None:
            raise AutomaticMessage(f"list mail ({name})" if name != "List-Unsubscribe" else f"bulk mail ({name})")
    for name in ("X-Autoreply", "X-Autorespond", "X-Auto-Response"):
        if headers.get(name) is not None:
            raise AutomaticMessage(name)
    # A report on another message (RFC 6522) is written by a machine, whatever its envelope says: a
    # read receipt goes out with its reader's own address (Thunderbird's "This is a Return Receipt"),
    # and a relay can send a delivery report with the user's. Only the top-level type is read: a
    # report forwarded as an attachment is a person's message.
    if headers.get_content_type() == "multipart/report":
        raise AutomaticMessage(_report_reason(headers))
    # A null reverse-path is how bounces and other delivery reports are sent (RFC 5321 section 4.5.5).
    if not mail_from.strip().strip("<>"):
        raise AutomaticMessage("empty envelope sender")
    for address in (mail_from, from_address):
        if address and _MACHINE_LOCAL_PART.match(_local_part(address)):
            raise AutomaticMessage(f"sent from a machine address, {_local_part(address)[:40]}")
    if _OUT_OF_OFFICE_SUBJECT.match(subject or ""):
        raise AutomaticMessage("out-of-office subject")


# iTIP (RFC 5546 section 3.2.3): the calendar object of an attendee's answer to an invitation.
_CALENDAR_REPLY = re.compile(rb"^METHOD:REPLY\r?$", re.MULTILINE | re.IGNORECASE)


def check_not_calendar_reply(message: ParsedMessage) -> None:
    """Raise AutomaticMessage for a calendar's answer to an invitation with no text of its sender.

    Outlook's "Accept, send the response now" (and Tentative, Decline) sends a text/calendar part
    with METHOD:REPLY under an "Accepted: <subject>" subject and an empty text part: filed, it was an
    empty note with an .ics file on the record (a MIME review). Nobody wrote anything, so it is
    refused as automatic mail. An answer with a comment, or with another file, is a person's and is
    filed as any message.
    """
    files = message.attachments
    if not files or not all(item.content_type == "text/calendar" and _CALENDAR_REPLY.search(item.payload)
                            for item in files):
        return
    if content.is_readable(content.sanitize_html(content.text_to_html(message.text_plain))):
        return
    if message.text_html.strip() and content.is_readable(content.sanitize_html(message.text_html)):
        return
    raise AutomaticMessage("a calendar reply (METHOD:REPLY) with no text, the answer to an invitation")
