"""Bounds on hostile input (NUL bytes, huge or unreadable headers, 8-bit junk, MIME bombs), checked before the full parse."""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import re

from gateway.config import InputLimits
from gateway.refusals import HeaderMalformed, HeaderNotUtf8, HeaderTooLarge, NestedTooDeep, NulByte, TooManyParts

_HEADER_END = re.compile(rb"\r\n\r\n")
# A header field starts at a line that does not begin with white space (RFC 5322 section 2.2.3).
_FIELD_START = re.compile(rb"(?:^|\r\n)[^ \t\r\n]")
# A continuation line (one that begins with white space) before the first header field: it
# continues no field. mbox "From " lines before it are skipped by dkimpy and the email package
# alike, so they start no field either.
_ORPHAN_CONTINUATION = re.compile(rb"(?:From [^\r\n]*\r\n)*[ \t]")
_ENCAPSULATED = re.compile(rb"message/(?:rfc822|global)", re.IGNORECASE)
_BOUNDARY = re.compile(rb'boundary\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))', re.IGNORECASE)


def check_input(raw: bytes, limits: InputLimits) -> email.message.Message | None:
    """Refuse a message whose shape would cost the parser far more than its size suggests.

    Returns the message parsed by the email package (compat32, as mail-parser parses it) when the
    MIME structure had to be parsed to be bounded, only ever after the cheap checks on the raw
    bytes passed; the parse stage then uses it rather than parsing the same bytes again.
    """
    # RFC 5322 section 2.3 forbids NUL anywhere; C-based consumers downstream truncate at it,
    # so what the gateway checks and what they see would differ.
    if b"\x00" in raw:
        raise NulByte()
    match = _HEADER_END.search(raw, 0, limits.max_header_bytes + 4)
    if match is None and len(raw) > limits.max_header_bytes:
        raise HeaderTooLarge(f"more than {limits.max_header_bytes} bytes")
    header = raw[: match.start()] if match else raw
    if _ORPHAN_CONTINUATION.match(header):
        # RFC 5322 section 2.2.3: folding continues a field. The email package drops such a line
        # (FirstHeaderLineIsContinuationDefect) and dkimpy's parser fails on it with an IndexError,
        # so no signature over it can be checked; the same bytes fail the same way on every retry.
        raise HeaderMalformed("a continuation line (beginning with white space) comes before any header field")
    fields = len(_FIELD_START.findall(header))
    if fields > limits.max_header_fields:
        raise HeaderTooLarge(f"{fields} header fields, at most {limits.max_header_fields}")
    try:
        # RFC 6532 allows UTF-8 in headers; anything else 8-bit has no defined meaning and would be
        # read differently by the DKIM verifier, the parser and Odoo.
        header.decode("utf-8")
    except UnicodeDecodeError as error:
        raise HeaderNotUtf8(f"at byte {error.start}") from None
    return _check_mime_structure(raw, limits)


def _check_mime_structure(raw: bytes, limits: InputLimits) -> email.message.Message | None:
    # A cheap bound first: every part needs a boundary line, so a message with few boundary
    # parameters cannot be deep, and counting delimiter lines bounds the parts without parsing.
    boundaries = {first or second for first, second in _BOUNDARY.findall(raw)}
    # message/rfc822 parts nest without any boundary (RFC 2046 section 5.2.1).
    encapsulated = len(_ENCAPSULATED.findall(raw))
    if not boundaries and not encapsulated:
        return None
    # Each encapsulated message is a part, and may nest inside the one before it: bounding their
    # number bounds the depth the parser below must recurse through.
    if encapsulated > limits.max_mime_parts:
        raise TooManyParts(f"{encapsulated} encapsulated messages, at most {limits.max_mime_parts}")
    if len(boundaries) > limits.max_mime_depth * 4 + limits.max_mime_parts:
        raise TooManyParts(f"{len(boundaries)} multipart boundaries")
    delimiters = sum(raw.count(b"\r\n--" + boundary) for boundary in boundaries)
    if delimiters > 2 * limits.max_mime_parts + 2 * len(boundaries):
        raise TooManyParts(f"about {delimiters // 2} parts, at most {limits.max_mime_parts}")
    try:
        message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    except RecursionError:
        raise NestedTooDeep() from None
    # Walked with an explicit stack: a recursive walk is what a deep message is built to break.
    parts, pending = 0, [(message, 1)]
    while pending:
        part, depth = pending.pop()
        parts += 1
        if depth > limits.max_mime_depth:
            raise NestedTooDeep(f"more than {limits.max_mime_depth} levels")
        if parts > limits.max_mime_parts:
            raise TooManyParts(f"more than {limits.max_mime_parts} parts")
        payload = part.get_payload() if part.is_multipart() else None
        if isinstance(payload, list):
            pending.extend((child, depth + 1) for child in payload)
    return message
