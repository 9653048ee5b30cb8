"""Framing checks on the raw bytes and parsing of the MIME message with mail-parser."""

from __future__ import annotations

import email
import email.message
import email.headerregistry
import email.parser
import email.policy
import email.utils
import hashlib
import inspect
import logging
import re
import unicodedata

import mailparser
import mailparser.utils
from mailparser.exceptions import MailParserRecursionError

from gateway import mime
from gateway.context import DroppedRecipient, ParsedMessage
from gateway.observe import UNPRINTABLE, printable
from gateway.refusals import BareLineEnding, MessageUnparseable, Refusal

log = logging.getLogger(__name__)

# aiosmtpd 1.4.6 hands bare LF and bare CR to the handler (MAIL_SECURITY.md item 14). They are how
# SMTP smuggling and header-splitting tricks get past one parser and not another, so refuse them.
_HEADER_END = re.compile(rb"\r\n\r\n")


def check_line_endings(raw: bytes) -> None:
    # Every CRLF holds one CR and one LF, so a bare one exists exactly when the counts differ:
    # three counts in C instead of a look-behind search at every byte (issue 6).
    crlf = raw.count(b"\r\n")
    if raw.count(b"\n") != crlf or raw.count(b"\r") != crlf:
        raise BareLineEnding()


def _header_block(raw: bytes) -> bytes:
    match = _HEADER_END.search(raw)
    return raw[: match.start()] if match else raw


def message_id_from_content(raw: bytes, from_address: str, subject: str, date: str) -> str:
    """A stable Message-ID for a message that has none, so a retry is still recognised.

    Trace headers (Received, DKIM-Signature added by a relay) differ between two deliveries of the
    same message, so only what the author wrote is hashed: From, Date, Subject and the body.
    """
    match = _HEADER_END.search(raw)
    body = raw[match.end():] if match else b""
    digest = hashlib.sha256()
    for part in (from_address.encode(), date.encode(), subject.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return f"<{digest.hexdigest()[:40]}@derived.note-gateway.invalid>"


# A msg-id is printable text (RFC 5322 section 3.6.4; RFC 6532 adds UTF-8, not control characters):
# one with a control character is no msg-id, and a message whose Message-ID holds one is filed
# under a derived ID, as one without (journal review: "<a\x1b[31m\x08\x08\x08@b>" reached the log
# raw; Odoo and a reply's References would have kept it so).
_MESSAGE_ID = re.compile(r"<[^<>\s\x00-\x1f\x7f-\x9f]{1,500}>")
# Some mail clients fold a long header inside a msg-id ("<...-openerp-\r\n 60-project.task@host>").
# Odoo's mail gateway reads every "<...>" of References and In-Reply-To with the CR, LF, TAB and
# spaces inside it deleted (mail_thread.py message_route: tools.mail.mail_header_msgid_re, then
# "Unfold" buggy references), and so does the gateway, before the checks of _MESSAGE_ID (found by a
# review: "<abc @def>" was dropped, and a reply naming an internal note so was filed publicly, the
# note in its quote, where Odoo itself would file it as a note).
_BRACKETED = re.compile(r"<[^<>]+>")
_INSIDE_FOLDING = re.compile(r"[\r\n\t ]+")


def _unfolded_msg_ids(text: str) -> list[str]:
    """Every ``<...>`` of ``text``, the whitespace inside it deleted, that is then a msg-id."""
    found = []
    for match in _BRACKETED.finditer(text):
        candidate = _INSIDE_FOLDING.sub("", match.group())
        if _MESSAGE_ID.fullmatch(candidate):
            found.append(candidate)
    return found


# How many msg-ids of one In-Reply-To or References header are kept: the first (the thread's root,
# RFC 5322 section 3.6.4) and the newest. The reply-to-a-note check looks each one up, so a longer
# header cannot make it cheaper to hide the root (routing.reply_parent refuses a reply it cannot
# decide because of ids left out); Odoo's own mail gateway looks at every one.
MAX_MESSAGE_IDS = 100


def all_message_ids(raw: bytes, header: str, email_message: email.message.Message | None = None) -> list[str]:
    """The msg-ids of a header, in order (RFC 5322 section 3.6.4); anything else in it is ignored.

    Every one (parse keeps MAX_MESSAGE_IDS of them: bounded_message_ids). ``email_message`` is
    ``raw`` already parsed by ``parse_email``: its header fields are the ones the header parser finds
    in the header block, so it is read instead of parsing again.
    """
    parsed = email_message if email_message is not None else (
        email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(_header_block(raw)))
    found: list[str] = []
    for value in decoded_header_values(parsed, header):
        found += _unfolded_msg_ids(value)
    return found


# Message-ID, In-Reply-To and References are read as Odoo's mail gateway reads the last two
# (mail_thread.py message_parse: email.message_from_bytes(policy=SMTP), where they are unstructured
# headers, then tools.mail.decode_message_header): UTF-8 header bytes (RFC 6532; other 8-bit bytes
# are refused before) decoded as UTF-8, RFC 2047 encoded words decoded (a byte that is not of the
# word's charset as U+FFFD), the CRLF of folding removed. Found by a review: the compat32 value the
# gateway read turned "<note.1@bücher.example>" into U+FFFD pairs and never decoded
# "=?us-ascii?q?=3Cnote.1=40example.com=3E?=", while the note's own Message-ID (mail-parser) was
# decoded, so a reply naming the note so did not find it and was filed publicly, the note in its
# quote, where Odoo files it as a note. Every header here is read as unstructured, the Message-ID
# too: the note's own ID and a reply's reference to it are one reading, whatever the spelling.
_DECODING = email.policy.SMTP.clone(header_factory=email.headerregistry.HeaderRegistry(use_default_map=False))
_LINE_BREAKS = re.compile(r"[\r\n]")


def decoded_header_values(email_message: email.message.Message, header: str) -> list[str]:
    """Every ``header`` field of ``email_message`` (parsed with compat32), decoded as Odoo reads it.

    A value of ASCII without "=?" is what the header parser makes of it, its CR and LF left out:
    the parser (about 5 seconds a megabyte) reads only the values it can change.
    """
    wanted = header.lower()
    values = []
    for name, value in email_message.raw_items():
        if name.lower() != wanted:
            continue
        value = str(value)
        if value.isascii() and "=?" not in value:
            values.append(_LINE_BREAKS.sub("", value))
            continue
        try:
            values.append(str(_DECODING.header_fetch_parse(name, value)))
        except Exception:  # noqa: BLE001 (the header parser is lenient; never lose a field to it)
            values.append(_LINE_BREAKS.sub("", value).encode("ascii", "surrogateescape").decode("utf-8", "replace"))
    return values


def bounded_message_ids(found: list[str]) -> list[str]:
    """The first of ``found`` and the newest, MAX_MESSAGE_IDS in all. Found by a review: only the
    newest 100 were kept, and the reply+ check looked at 20 of them, so a reply whose References
    began with an internal note (the thread's root) followed by 20 ids Odoo never saw was filed
    publicly, the note in its quote."""
    if len(found) <= MAX_MESSAGE_IDS:
        return found
    return found[:1] + found[-(MAX_MESSAGE_IDS - 1):]


# A comment of RFC 5322 section 3.2.2 without nested ones, as a relay appends to a Message-ID.
_COMMENT = re.compile(r"\([^()]*\)")
_BARE_MESSAGE_ID = re.compile(r"[^<>\s()@\x00-\x1f\x7f-\x9f]+@[^<>\s()@\x00-\x1f\x7f-\x9f]+")


def own_message_id(value: str) -> str:
    """The single msg-id of a Message-ID header, as In-Reply-To and References are read (all_message_ids).

    The gateway files a message under this one value, checks for duplicates and derives its other
    IDs from it, and a reply that names the message must find it in Odoo: a value stored with a
    comment (``<id@domain> (added by mx.example.com)``), without angle brackets or with the CRLF of a
    folded header in it never equals the ``<id@domain>`` of a reply's In-Reply-To, and the reply to
    an internal note was then filed publicly with the note in its quote. The first ``<...>`` token
    is the msg-id, the whitespace inside it deleted as for a reply's References (_unfolded_msg_ids:
    a Message-ID folded inside its msg-id is the one a reply names unfolded, and a retry folded
    otherwise is the same message); a bare ``id@domain`` (comments aside) gets its angle brackets.
    "" when there is none: the message is then filed under a derived ID, as one without a Message-ID.
    ``value`` is the header decoded as a reply's are (decoded_header_values: UTF-8, encoded words).
    """
    found = _unfolded_msg_ids(value)
    if found:
        return found[0]
    words = " ".join(value.split())
    bare = _COMMENT.sub(" ", words).strip()
    if _BARE_MESSAGE_ID.fullmatch(bare) and _MESSAGE_ID.fullmatch(f"<{bare}>"):
        return f"<{bare}>"
    return ""


def _addresses(first: list | None, email_message: email.message.Message, header: str) -> list[tuple[str, str]]:
    """Every (display name, address) of every ``header`` field, a quoted local part written plainly.

    mail-parser hands back the first field of each name only (``first``, already parsed), and a
    second To or Cc (RFC 5322 allows one, clients and scripts send two) would hide its addresses
    from the reply-all check: a reply delivery naming the record's note address there would be
    filed publicly. Any later field is read by the same parser. ``"note+x"@d`` and ``note+x@d`` are
    one mailbox (RFC 5321 section 4.1.2).
    """
    pairs = list(first or [])
    for value in (email_message.get_all(header) or [])[1:]:
        pairs += mailparser.utils.get_addresses(value, decode_names=True)
    return [(name or "", _unquoted_local_part(address)) for name, address in pairs if address]


# The standard library's address parser, told strict=False where it has the parameter: Python
# 3.11.10, 3.12.6 and later default to strict=True, which reads a whole field as [("", "")] when
# its addresses are not its commas plus one (`"Two, Paula" <p@example.com>, note+...@d.` would be
# nothing). Its reading only ever finds more note addresses for the reply-all check (fail closed),
# never anyone to notify or list, so the lenient reading, which finds what the strict one finds
# and more, is the one wanted.
_LENIENT = {"strict": False} if "strict" in inspect.signature(email.utils.getaddresses).parameters else {}
RECIPIENT_HEADERS = ("to", "cc")


def _other_reading(text: str) -> tuple[str, ...]:
    """The addresses (``local@domain``, neither empty) the standard library's parser reads in ``text``,
    each once, a quoted local part written plainly; none when it cannot read ``text`` at all."""
    try:
        pairs = email.utils.getaddresses([text], **_LENIENT)
    except Exception:  # noqa: BLE001 (nested comments exhaust its recursion: the text is then unread)
        return ()
    found: list[str] = []
    for _, value in pairs:
        value = _unquoted_local_part(str(value).strip())
        local, at, domain = value.rpartition("@")
        if at and local and domain and value not in found:
            found.append(value)
    return tuple(found)


def _read_otherwise(email_message: email.message.Message, address_defects: list[dict],
                    read: list[str]) -> tuple[list[str], list[DroppedRecipient]]:
    """(other_readings, dropped_recipients) of ParsedMessage: what To and Cc say beyond ``read``.

    mail-parser drops a To/Cc item it finds ambiguous, with a diagnostic (``address_header_defects``)
    and no address: ``note+...@notes.example.com.`` and ``<note+...@notes.example.com.>``, whose
    final dot an MTA strips before delivering (RFC 5321 forbids it, Postfix accepts it), were no
    address at all, and a reply-all whose Cc so named its record's note address was filed publicly
    on the reply+ delivery while the note+ delivery was refused (found by a lifecycle review). The
    standard library's parser reads them. Every field is read by it too, so that an item
    mail-parser reads otherwise, or drops without saying so, is still seen.
    """
    seen = {address.lower() for address in read}
    others: list[str] = []

    def keep(addresses: tuple[str, ...]) -> None:
        for address in addresses:
            if address.lower() not in seen:
                seen.add(address.lower())
                others.append(address)

    for name, value in email_message.raw_items():
        if name.lower() in RECIPIENT_HEADERS:
            keep(_other_reading(_LINE_BREAKS.sub("", str(value))))
    dropped: list[DroppedRecipient] = []
    for defect in address_defects:
        if str(defect.get("header", "")).lower() not in RECIPIENT_HEADERS or defect.get("recovered"):
            continue
        text = " ".join(str(defect.get("raw") or "").split())
        if text:
            dropped.append(DroppedRecipient(text, _other_reading(text)))
            keep(dropped[-1].addresses)
    return others, dropped


# Control characters and bidirectional formatting characters of a display name (observe.UNPRINTABLE)
# are dropped: it is shown in a note (external_recipients), where they would hide or reorder text.
_NAME_DROPPED = dict.fromkeys(UNPRINTABLE)


def _recipient_names(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """The display name of each address, by the address lowercased: the first non-empty one, on one line."""
    names: dict[str, str] = {}
    for name, address in pairs:
        name = " ".join(str(name).translate(_NAME_DROPPED).split())
        if name and name.lower() != address.lower():
            names.setdefault(address.strip().lower(), name)
    return names


def _unquoted_local_part(address: str) -> str:
    local, at, domain = address.rpartition("@")
    if at and len(local) >= 2 and local[0] == local[-1] == '"':
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
        return f"{local}@{domain}"
    return address


def _header_text(email_message: email.message.Message, name: str, defects: list[str]) -> str | None:
    """A header decoded by gateway.mime, not by mail-parser (which drops what it cannot decode);
    each fallback is a defect named after the header ("subject-charset-mismatch:gb2312")."""
    found: list[str] = []
    text = mime.header_text(email_message, name, found)
    defects += [f"{name}-{defect}" for defect in found]
    return text


def _display_name(email_message: email.message.Message, parsed_name: str, address: str, defects: list[str]) -> str:
    """The From display name, its encoded words decoded by gateway.mime as the Subject's are.

    mail-parser's name stands when the header has no encoded word, or when the email package's
    reading of it finds another mailbox than mail-parser's. An encoded word inside quotes, which
    RFC 2047 section 5 does not allow and clients write, is decoded, as Thunderbird and the email
    package's default policy do.
    """
    raw = mime.unfolded_header(email_message, "from")
    if raw is None or "=?" not in raw:
        return parsed_name
    pairs = email.utils.getaddresses([raw])
    if len(pairs) != 1 or _unquoted_local_part(pairs[0][1]).lower() != _unquoted_local_part(address or "").lower():
        return parsed_name
    found: list[str] = []
    name = unicodedata.normalize("NFC", " ".join(mime.decode_encoded_words(pairs[0][0], found).split()))
    defects += [f"from-name-{defect}" for defect in found]
    return name


def parse_email(raw: bytes) -> email.message.Message:
    """The message as mail-parser's parse_from_bytes parses it (compat32), or MessageUnparseable."""
    try:
        try:
            return email.message_from_bytes(raw)
        except RecursionError as error:
            # mail-parser's parse_from_bytes reports a message nested too deep for the parser so.
            raise MailParserRecursionError("Message nesting too deep to parse") from error
    except Exception as error:  # mail-parser raises many types, none of which a retry can heal.
        log.info("unparseable message: %s: %s", type(error).__name__, printable(error))
        raise MessageUnparseable(type(error).__name__) from None


def parse(raw: bytes, email_message: email.message.Message | None = None) -> ParsedMessage:
    """Parse the message or raise MessageUnparseable (the same bytes would fail again: 554).

    ``email_message`` is ``raw`` already parsed by ``parse_email``; without it, it is parsed here.
    """
    if email_message is None:
        email_message = parse_email(raw)
    try:
        try:
            # What mailparser.parse_from_bytes does, on the message the other stages read too.
            mail = mailparser.MailParser(email_message)
        except RecursionError as error:
            raise MailParserRecursionError(str(error)) from error
        # mail-parser builds the headers dict anew on every read of the property: read it once.
        headers = mail.headers
        # RFC 5322 section 3.6 allows one of each; with two, the DKIM signer, the MUA and Odoo may
        # each read another one (mail-parser hands back a list), so the message is refused.
        for name, value in (("Subject", mail.subject), ("Message-ID", mail.message_id),
                            ("Date", headers.get("Date") if isinstance(headers, dict) else None)):
            if isinstance(value, list):
                raise MessageUnparseable(f"more than one {name} header")
        # RFC 2045 (and RFC 2183 for Content-Disposition) allows one of each at the top level.
        # With two, the email package reads the first and a DKIM signature covers the last, and
        # a signer that leaves the field out of h= (Gmail does not sign Content-Type) covers
        # neither: one added above it would decide what the body is (security review).
        for name in ("Content-Type", "MIME-Version", "Content-Transfer-Encoding", "Content-Disposition"):
            if len(email_message.get_all(name) or ()) > 1:
                raise MessageUnparseable(f"more than one {name} header")
        from_list = mail.from_ or []
        # The Message-ID decoded as In-Reply-To and References are (decoded_header_values): a reply
        # naming this message in any spelling of the same ID finds it, and a retry so spelled is it.
        message_id = own_message_id(next(iter(decoded_header_values(email_message, "Message-ID")), ""))
        # A retry of a message without a Message-ID must derive the ID it had before the gateway
        # decoded the Subject itself, so the ID is still derived from mail-parser's reading.
        subject_for_id = mail.subject or ""
        header_defects: list[str] = []
        subject = _header_text(email_message, "subject", header_defects) or ""
        # The parts are decoded by gateway.mime rather than taken from mail-parser, which drops
        # charset errors silently and mixes forwarded messages into the body (issue 3).
        parts = mime.walk(mail.message)
        text_plain = "\n".join(parts.text_plain)
        text_html = mime.join_html(parts.text_html)
        to_pairs = _addresses(mail.to, email_message, "To")
        cc_pairs = _addresses(mail.cc, email_message, "Cc")
        to = [address for _, address in to_pairs]
        cc = [address for _, address in cc_pairs]
        recipient_names = _recipient_names(to_pairs + cc_pairs)
        other_readings, dropped_recipients = _read_otherwise(
            email_message, list(mail.address_header_defects or ()), to + cc)
        attachments = parts.attachments
        # mail-parser's CharsetDecodeDefect is of its own reading of the parts, which the gateway
        # does not use: gateway.mime records its own (a gb2312 part it read whole was journaled so).
        defects = (sorted(str(category) for category in (mail.defects_categories or ())
                          if category != "CharsetDecodeDefect") + header_defects + parts.defects)
        from_name, from_address = from_list[0] if from_list else ("", "")
        from_name = _display_name(email_message, from_name, from_address, defects)
        date_header = headers.get("Date", "") if isinstance(headers, dict) else ""
    except Refusal:  # MessageUnparseable, MessageFragment: refused with their own reply
        raise
    except Exception as error:  # mail-parser raises many types, none of which a retry can heal.
        log.info("unparseable message: %s: %s", type(error).__name__, printable(error))
        raise MessageUnparseable(type(error).__name__) from None

    in_reply_to = all_message_ids(raw, "In-Reply-To", email_message)
    references = all_message_ids(raw, "References", email_message)
    derived = False
    if not message_id:
        message_id = message_id_from_content(raw, from_address, subject_for_id, str(date_header))
        derived = True
    return ParsedMessage(
        message_id=message_id,
        from_address=(from_address or "").lower(),
        from_name=from_name or "",
        subject=subject,
        text_plain=text_plain,
        text_html=text_html,
        to=to,
        cc=cc,
        recipient_names=recipient_names,
        other_readings=other_readings,
        dropped_recipients=dropped_recipients,
        in_reply_to=bounded_message_ids(in_reply_to),
        references=bounded_message_ids(references),
        message_ids_left_out=sum(max(0, len(ids) - MAX_MESSAGE_IDS) for ids in (in_reply_to, references)),
        attachments=attachments,
        defects=defects,
        message_id_derived=derived,
        encryption=parts.encryption,
        opaque_signed=parts.opaque_signed,
    )
