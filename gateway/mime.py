"""The text parts and files of a MIME message, decoded with a charset fallback chain (issue 3)."""

from __future__ import annotations

import binascii
import codecs
import dataclasses
import html
import email.errors
import email.header
import email.message
import email.parser
import email.policy
import quopri
import re
import unicodedata
import urllib.parse
from dataclasses import dataclass, field

from gateway import charsets
from gateway.refusals import MessageFragment, MessageUnparseable
from gateway.context import Attachment
from gateway.observe import UNPRINTABLE

# After the declared charset, the chain issue 3 asks for: UTF-8 is what nearly every client
# writes today, and cp1252 is what Windows clients write while declaring (or omitting) latin-1.
# cp1252 here is the WHATWG Encoding Standard's windows-1252, which decodes every byte, so the chain
# always ends with readable text.
FALLBACK_CHARSETS = ("utf-8", "cp1252")
# The WHATWG Encoding Standard (what browsers and most mail clients do) reads every latin-1 label
# as windows-1252: Outlook labels its curly quotes, dashes and euro signs iso-8859-1, and latin-1
# would turn those bytes (0x80-0x9F) into invisible C1 controls. gateway.charsets gives the latin-1
# labels the codec name "iso8859-1" so that the journal can say when reading them so changed the text.
_WINDOWS_1252_CODECS = ("cp1252", "iso8859-1")
# Labels that say nothing of a script: text that does not decode under them is read by the chain
# (UTF-8, then windows-1252). Under any other label it is that charset with a few bad bytes.
_SCRIPTLESS_CODECS = ("ascii", "utf-8")
# RFC 2781 section 4.3: UTF-16 without a byte order mark is big-endian (Python's codec, as browsers,
# reads it little-endian); the Unicode Standard (section 3.10, D101) says the same of UTF-32.
_BYTE_ORDER_MARKS = {"utf-16": (codecs.BOM_UTF16_BE, codecs.BOM_UTF16_LE),
                     "utf-32": (codecs.BOM_UTF32_BE, codecs.BOM_UTF32_LE)}
# ISO-2022-JP is 7-bit: without a declared charset it also "decodes" as ASCII, into escape
# sequences. Its escape to JIS X 0208 (RFC 1468 section 3) gives it away.
_ISO_2022_JP_ESCAPES = (b"\x1b$B", b"\x1b$@", b"\x1b(J")
# An HTML part that declares no MIME charset often names one in a <meta> element (HTML Living
# Standard, "determining the character encoding"), which is better than guessing.
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9._:-]+)""", re.IGNORECASE)
_TEXT_TYPES = ("text/plain", "text/html")


@dataclass
class MimeContent:
    """What the walk found: the body text of each type, the files, and what was odd about them."""

    text_plain: list[str] = field(default_factory=list)
    text_html: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    # See ParsedMessage: "S/MIME" or "PGP/MIME" if the message is encrypted; S/MIME opaque-signed.
    encryption: str | None = None
    opaque_signed: bool = False


def _c1_control(error: UnicodeError) -> tuple[str, int]:
    """cp1252 leaves 0x81, 0x8D, 0x8F, 0x90 and 0x9D undefined; WHATWG's windows-1252 decodes each
    to the C1 control of the same number, so decoding never fails."""
    assert isinstance(error, UnicodeDecodeError)
    return "".join(chr(byte) for byte in error.object[error.start:error.end]), error.end


codecs.register_error("note-gateway-windows-1252", _c1_control)


def _decode(payload: bytes, codec: str) -> str:
    if codec == "cp1252":
        return payload.decode("cp1252", "note-gateway-windows-1252")
    return charsets.decode(payload, codec)


def _codec(name: str | None) -> str | None:
    """The Python codec of a charset label (gateway.charsets), or None if it is unknown."""
    return charsets.codec_for(name)


def _utf8_or_none(payload: bytes) -> str | None:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return None


def decode_text(payload: bytes, declared: str | None, content_type: str, defects: list[str]) -> str:
    """Text of a part: the declared charset (read as gateway.charsets reads its label), then UTF-8,
    then windows-1252 (or, under a legacy label, the declared charset with U+FFFD for the bytes that
    do not decode); a fallback is a defect.

    MAIL_SECURITY.md item 19: mail-parser replaces undecodable bytes silently, which garbles the
    note and hides it; here every fallback leaves a trace in the journal.
    """
    codec = _codec(declared)
    label = declared
    if declared and codec is None:
        defects.append(f"charset-unknown:{declared.lower()}")
    if codec is None and any(escape in payload for escape in _ISO_2022_JP_ESCAPES):
        codec = "iso2022_jp"
        defects.append("charset-guessed:iso-2022-jp")
    if codec is None and content_type == "text/html":
        match = _META_CHARSET.search(payload[:4096])
        label = match.group(1).decode("ascii") if match else None
        codec = _codec(label)
    if codec in _WINDOWS_1252_CODECS:
        if not payload.isascii():
            # UTF-8 under a latin-1 or windows-1252 label (a mailer's default label, an HTML part
            # whose <meta> says utf-8): 8-bit latin-1 text almost never forms valid UTF-8 sequences
            # ("Ã©" is what it would take), and read as windows-1252 every accent became two
            # characters (found by a review of real-world charsets).
            text = _utf8_or_none(payload)
            if text is not None:
                defects.append("charset-read-as-utf-8:" + str(label).strip().strip('"').lower())
                return text
        # windows-1252 decodes every byte; the journal says when a latin-1 label was read so and
        # that changed the text (bytes 0x80-0x9F, which latin-1 would make C1 controls).
        text = _decode(payload, "cp1252")
        if codec != "cp1252" and text != payload.decode("latin-1"):
            defects.append("charset-read-as-windows-1252:" + str(label).strip().strip('"').lower())
        return text
    if codec in _BYTE_ORDER_MARKS and not payload.startswith(_BYTE_ORDER_MARKS[codec]):
        defects.append(f"charset-read-as-big-endian:{codec}")
        codec += "-be"
    if codec is not None:
        try:
            return _decode(payload, codec)
        except UnicodeDecodeError:
            defects.append(f"charset-mismatch:{declared or codec}")
    elif not declared and not payload.isascii():
        # RFC 2045 section 5.2: no charset means US-ASCII, so 8-bit bytes are a mistake to repair.
        defects.append("charset-missing")
    if codec is not None and codec not in _SCRIPTLESS_CODECS:
        # Declared wrongly, the text may be UTF-8 (8-bit text that decodes as UTF-8 almost always
        # is); otherwise it is the declared charset with a few bad bytes (a truncated character, an
        # extension no codec knows), and read as windows-1252 the whole part was mojibake (found by
        # a review of real-world charsets). 7-bit text (ISO-2022-JP) would "decode" as UTF-8 into
        # its escape sequences.
        text = None if payload.isascii() else _utf8_or_none(payload)
        if text is not None:
            defects.append("charset-fallback:utf-8")
            return text
        defects.append(f"charset-replaced:{codec}")
        return charsets.decode(payload, codec, "replace")
    for fallback in FALLBACK_CHARSETS:
        try:
            text = _decode(payload, fallback)
        except UnicodeDecodeError:
            continue
        if codec is not None or not payload.isascii():
            defects.append(f"charset-fallback:{fallback}")
        return text
    raise AssertionError("windows-1252 decodes every byte")  # pragma: no cover


def unflow(text: str, *, delete_space: bool = False) -> str:
    """Undo format=flowed (RFC 3676 section 4): a line ending in a space continues on the next.

    Without this, every soft line break of a flowed message would become a <br> in the note.
    The signature separator "-- " is never joined (section 4.3), and quote depth must match for
    lines to join (section 4.5).
    """
    lines = text.split("\n")
    out: list[str] = []
    pending: str | None = None
    pending_depth = 0
    for raw_line in lines:
        line = raw_line.rstrip("\r")
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        if content.startswith(" "):
            content = content[1:]  # space-stuffing (section 4.4)
        if pending is not None and depth != pending_depth:
            out.append(pending)
            pending = None
        flowed = content.endswith(" ") and content != "-- "
        if flowed and delete_space:
            content = content[:-1]
        prefix = "> " * depth if depth else ""
        if pending is None:
            pending, pending_depth = prefix + content, depth
        else:
            pending += content
        if not flowed:
            out.append(pending)
            pending = None
    if pending is not None:
        out.append(pending)
    return "\n".join(out)


# Shown nowhere and never part of a real name: C0 and C1 controls, DEL, and the bidirectional
# formatting characters that make "invoice\u202efdp.vbs" display as "invoicesbv.pdf" - the
# operator's table of them (observe.UNPRINTABLE), which a copy of its own here lacked U+061C.
_NAME_DROPPED = dict.fromkeys(UNPRINTABLE)


def decode_encoded_words(value: str, defects: list[str] | None = None) -> str:
    """The RFC 2047 encoded words in ``value`` decoded, the rest as it is.

    Gmail and Outlook write a file name so, inside the quoted parameter (which RFC 2047 section 5
    does not allow, and Python's compat32 parser leaves as it is). The email package's
    decode_header joins adjacent words of one charset before they are decoded (clients split a long
    name in the middle of a character) and drops the whitespace between two encoded words (section
    6.2); each run is then decoded as a part is, a charset's language suffix (RFC 2231 section 5)
    left out. A value with a word that does not decode is kept as written. ``defects`` gets what
    decoding the runs recorded.
    """
    found: list[str] = [] if defects is None else defects
    try:
        chunks = email.header.decode_header(value)
    except (email.errors.HeaderParseError, ValueError):
        found.append("encoded-word-undecodable")
        return value
    # decode_header hands back the text between encoded words as raw-unicode-escape bytes.
    return "".join(
        chunk if isinstance(chunk, str)
        else decode_text(chunk, charset.partition("*")[0], "", found) if charset
        else chunk.decode("raw-unicode-escape")
        for chunk, charset in chunks)


def _raw_header(part: email.message.Message, name: str) -> str | None:
    """A header of the part, its 8-bit bytes decoded as UTF-8 (RFC 6532) or else windows-1252.

    The email package carries such bytes as surrogate escapes and would hand them back as U+FFFD.
    """
    for key, value in part.raw_items():
        if key.lower() == name:
            value = str(value)
            if any("\udc80" <= char <= "\udcff" for char in value):
                value = decode_text(value.encode("utf-8", "surrogateescape"), None, "", [])
            return value
    return None


_FOLDING = re.compile(r"\r?\n(?=[ \t])")


def unfolded_header(message: email.message.Message, name: str) -> str | None:
    """The first ``name`` header of the message as written, unfolded (RFC 5322 section 2.2.3), or None."""
    value = _raw_header(message, name)
    return None if value is None else _FOLDING.sub("", value)


def header_text(message: email.message.Message, name: str, defects: list[str]) -> str | None:
    """The first ``name`` header of the message as text, or None: unfolded (RFC 5322 section 2.2.3),
    its encoded words decoded as the parts are (charset labels as gateway.charsets reads them), NFC.

    mail-parser decodes an encoded word with Python's codec of its label and, when that fails,
    drops the bytes it cannot read: a gb2312 subject with GBK characters, a shift_jis one with ①
    and an iso-8859-1 one with curly quotes were filed damaged with no defect (found by a review of
    real-world charsets). ``defects`` gets each fallback.
    """
    text = unfolded_header(message, name)
    if text is None:
        return None
    if "=?" in text:
        text = decode_encoded_words(text, defects)
    return unicodedata.normalize("NFC", text).strip()


def _param_text(value: str | tuple) -> str:
    """A parameter value as text: an RFC 2231 one (charset'language'%XX) decoded in its charset."""
    if isinstance(value, tuple):
        charset, _language, text = value
        try:
            data = text.encode("latin-1", "surrogateescape")
        except UnicodeError:
            return str(text)
        return decode_text(data, charset or None, "", [])
    return str(value)


def attachment_name(part: email.message.Message) -> str | None:
    """The file name the sender's client shows, or None: the Content-Disposition filename, else the
    Content-Type name, decoded from RFC 2231, RFC 2047 encoded words and raw 8-bit bytes.

    Every check of a name runs on the decoded one: controls are dropped and the path stripped here,
    and the type deny-list of gateway.attachments sees it, so an encoded ".vbs" is refused as a
    plain one.
    """
    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
        value = _raw_header(part, header)
        if value is None:
            continue
        holder = email.message.Message()
        holder[header] = value
        try:
            found = holder.get_param(param, None, header)
        except (LookupError, UnicodeError, ValueError):
            found = None
        if found:
            name = unicodedata.normalize("NFC", decode_encoded_words(_param_text(found)).translate(_NAME_DROPPED))
            # A name is a label, never a path: keep only its last component. One of dots only
            # ("..", ".": a review found them kept) names nothing: the Content-Type name, else the
            # generated name, is used.
            name = re.split(r"[\\/]", name)[-1].strip()
            if name.strip(". "):
                return name
    return None


def _filename(part: email.message.Message, default_stem: str) -> str:
    name = attachment_name(part)
    if name:
        return name
    extension = {
        "image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp",
        "text/calendar": ".ics", "application/pdf": ".pdf", "text/plain": ".txt", "text/html": ".html",
    }.get(part.get_content_type(), ".bin")
    return default_stem + extension


def _content_id(part: email.message.Message) -> str | None:
    value = part.get("Content-ID")
    return str(value).strip().strip("<>").strip() or None if value else None


# The Content-Transfer-Encodings of RFC 2045 section 6.1, and the uuencode labels the email package
# decodes too.
_TRANSFER_ENCODINGS = frozenset({"7bit", "8bit", "binary", "quoted-printable", "base64",
                                 "x-uuencode", "uuencode", "uue", "x-uue"})
_COMMENT = re.compile(r"\([^()]*\)")
# Misspellings of the identity encodings seen from home-made mailers (a charset written in the
# header's place, a hyphen): the bytes are as sent, as the email package read them before tokens were
# checked; recorded as normalised.
_IDENTITY_ALIASES = {"8-bit": "8bit", "8bits": "8bit", "7-bit": "7bit", "7bits": "7bit",
                     "utf-8": "8bit", "utf8": "8bit", "us-ascii": "7bit", "ascii": "7bit"}


def transfer_encoding(part: email.message.Message) -> str:
    """The part's Content-Transfer-Encoding as its bare token, lowercase; "" if it has none.

    The header is structured (RFC 2045 section 6.1, RFC 822 section 3.1.4): whitespace and comments
    may surround the token, and clients and gateways quote it too ("base64 ", '"base64"',
    "base64 (encoded)"). The email package only lowercases it, reads such a part as not encoded at
    all and filed its base64 text as the note, or a PDF as its base64 (found by a MIME review).
    """
    value = str(part.get("Content-Transfer-Encoding") or "")
    previous = None
    while previous != value:  # nested comments, from the inside out
        previous, value = value, _COMMENT.sub(" ", value)
    token = value.strip().strip('"').strip().lower()
    return _IDENTITY_ALIASES.get(token, token)


def _decodable(part: email.message.Message) -> bool:
    return transfer_encoding(part) in ("", *_TRANSFER_ENCODINGS)


def _payload(part: email.message.Message) -> bytes:
    """The body of a leaf part, its transfer encoding undone (read as transfer_encoding does).

    Decoding defects (broken base64) are recorded on the part, as get_payload(decode=True) does.
    """
    encoding = transfer_encoding(part)
    raw = part.get_payload(decode=True) or b""
    if encoding == str(part.get("Content-Transfer-Encoding") or "").lower() or encoding not in _TRANSFER_ENCODINGS:
        return raw
    # The email package saw an encoding it does not know and handed back the bytes as sent: they
    # are decoded as the email package would, had the header been written plainly.
    holder = email.message.Message()
    holder["Content-Transfer-Encoding"] = encoding
    holder.set_payload(raw.decode("ascii", "surrogateescape"))
    decoded = holder.get_payload(decode=True) or b""
    part.defects.extend(holder.defects)
    return decoded


def _unknown_encoding_part(part: email.message.Message, encoding: str, content: MimeContent) -> None:
    """A part in a transfer encoding the gateway does not know (x-gzip64, a typo): RFC 2045
    section 6.4 says to treat it as application/octet-stream whatever its type says, so it is
    never text. It is filed as the bytes that came, its name ending with the encoding, so that the
    reader sees what the file is (a "report.pdf" holding encoded text looks corrupt); a message with
    nothing else to file is refused (content.extract_body)."""
    token = re.sub(r"[^a-z0-9-]+", "_", encoding)[:40]
    stem = attachment_name(part) or f"attachment-{len(content.attachments) + 1}"
    content.defects.append(f"transfer-encoding-unknown:{token}")
    content.attachments.append(Attachment(filename=f"{stem}.{token}", content_type="application/octet-stream",
                                          payload=part.get_payload(decode=True) or b"", unknown_encoding=token))


def _as_sent(inner: email.message.Message) -> bytes:
    """The body of a message/* part as it was sent, before its transfer encoding is undone.

    The email package reads the body of every message/* part as a message, whatever its
    Content-Transfer-Encoding: base64 text (no colon in it) becomes a message without headers, and
    quoted-printable text one whose headers are still encoded. The lines are put back as they came:
    the header lines as written (continuations included), the blank line if there was one, the body.
    """
    if inner.is_multipart():
        return inner.as_bytes()
    headers = "".join(f"{name}: {value}\r\n" for name, value in inner.raw_items())
    separated = not any(isinstance(defect, email.errors.MissingHeaderBodySeparatorDefect) for defect in inner.defects)
    payload = inner.get_payload()
    text = headers + ("\r\n" if headers and separated else "") + (payload if isinstance(payload, str) else "")
    return text.encode("ascii", "surrogateescape")


# The header block of a forwarded message: up to its first empty line (CRLF or, as a file saved on
# Unix and then encoded has it, LF), and no further than this many bytes.
_INNER_HEADER_END = re.compile(rb"(?:\A|\n)\r?\n")
_INNER_HEADER_BYTES = 256 * 1024


def _headers_of(data: bytes) -> email.message.Message:
    """The header fields of a decoded forwarded message, its body never read.

    The input limits (gateway.inputlimits) saw a base64 or quoted-printable message/rfc822 part as
    opaque text, so the MIME structure inside it is unbounded: parsed whole, a 900 KB message hiding
    800 nested multiparts and 200 000 lines held a thread 12 s, one hiding 200 000 parts took 227 MB,
    and this before the DKIM check (found by a security review). Only the Subject is read, for the
    file name; the message is filed as the bytes it is.
    """
    match = _INNER_HEADER_END.search(data, 0, _INNER_HEADER_BYTES)
    block = data[:match.start()] if match else data[:_INNER_HEADER_BYTES]
    return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)


def _forwarded_message(part: email.message.Message, content: MimeContent) -> None:
    """A message/rfc822 or message/global part becomes one .eml file (issue 3), not text mixed into
    the body.

    RFC 2046 section 5.2.1 allows only 7bit, 8bit or binary for message/rfc822, but clients send it
    base64 or quoted-printable too (as RFC 6532 section 3.5 allows for message/global): such a part
    is decoded, and the decoded message filed (found by a review of real-world MIME shapes; the
    .eml held base64 text).
    """
    inner = part.get_payload()
    inner_message = inner[0] if isinstance(inner, list) and inner else None
    encoding = transfer_encoding(part)
    if inner_message is not None and encoding in ("base64", "quoted-printable"):
        encoded = _as_sent(inner_message)
        try:
            data = binascii.a2b_base64(encoded) if encoding == "base64" else quopri.decodestring(encoded)
        except (binascii.Error, ValueError):
            raise MessageUnparseable(f"forwarded message {attachment_name(part) or ''!r} is not valid {encoding}") from None
        inner_message = _headers_of(data)
    elif inner_message is not None:
        data = inner_message.as_bytes()
    else:
        data = _payload(part)
    subject = decode_encoded_words(str(inner_message.get("Subject") or "")).strip() if inner_message is not None else ""
    stem = re.sub(r"[^\w .,()-]+", "_", subject)[:80].strip(" ._") or "forwarded message"
    name = attachment_name(part) or f"{stem}.eml"
    content.attachments.append(Attachment(filename=name, content_type=part.get_content_type(), payload=data))


def _external_body(part: email.message.Message, content: MimeContent) -> None:
    """A message/external-body part names content stored elsewhere (RFC 2046 section 5.2.3): the
    gateway fetches nothing, and files the reference as written (its access-type, site and name
    are parameters of the part's Content-Type) as a text file."""
    content.attachments.append(Attachment(filename=attachment_name(part) or "external-body.txt",
                                          content_type="text/plain", payload=part.as_bytes()))


def _is_unreferenced_inline_image(part: email.message.Message) -> bool:
    return (part.get_content_maintype() == "image" and _content_id(part) is None
            and (part.get_content_disposition() or "inline") == "inline" and _decodable(part))


def _place_inline_image(part: email.message.Message, content: MimeContent) -> None:
    """Apple Mail splits its HTML around an inline picture in multipart/mixed, with no cid: in the
    HTML; the reader saw the picture there, so an <img> pointing at it takes its place."""
    content_id = f"inline-{len(content.attachments) + 1}@note-gateway.invalid"
    filename = _filename(part, f"image-{len(content.attachments) + 1}")
    content.attachments.append(Attachment(filename=filename, content_type=part.get_content_type(),
                                          payload=_payload(part), content_id=content_id,
                                          inline=True))
    content.text_html.append(f'<img src="cid:{content_id}" alt="{html.escape(filename)}">')


_BASE64_DEFECTS = (email.errors.InvalidBase64CharactersDefect, email.errors.InvalidBase64PaddingDefect,
                   email.errors.InvalidBase64LengthDefect)


# S/MIME (RFC 8551 section 3.2): smime-type says what the CMS structure holds; older clients leave
# it out, and the structure's content type (an OID at its start) says it then.
_SMIME_TYPES = ("application/pkcs7-mime", "application/x-pkcs7-mime")
_CMS_SIGNED_DATA = bytes.fromhex("06092a864886f70d010702")          # 1.2.840.113549.1.7.2
_CMS_ENVELOPED_DATA = bytes.fromhex("06092a864886f70d010703")       # 1.2.840.113549.1.7.3
_CMS_AUTH_ENVELOPED_DATA = bytes.fromhex("060b2a864886f70d0109100117")  # 1.2.840.113549.1.9.16.1.23
# The control part of multipart/signed (RFC 1847 section 2.1) and a public key Thunderbird attaches
# to signed mail: no document of the sender's. The gateway verifies no S/MIME or OpenPGP signature;
# the DKIM signature is what authenticates the sender.
_SIGNATURE_TYPES = ("application/pkcs7-signature", "application/x-pkcs7-signature", "application/pgp-signature")
_KEY_TYPES = ("application/pgp-keys",)
# An inline OpenPGP clear-signed text (RFC 4880 section 7): armour header lines, the text with
# lines starting "-" dash-escaped, then the signature.
_CLEARSIGNED = re.compile(
    r"\A\s*-----BEGIN PGP SIGNED MESSAGE-----[ \t]*\r?\n(?:[^\r\n]+\r?\n)*?[ \t]*\r?\n(?P<text>.*?)\r?\n"
    r"-----BEGIN PGP SIGNATURE-----[ \t]*\r?\n.*?-----END PGP SIGNATURE-----[ \t]*(?:\r?\n|\Z)",
    re.DOTALL)


# RFC 8551 section 3.9: an S/MIME entity may also come as application/octet-stream, told by its file
# name (what a client or gateway that relabels types it does not know sends): .p7m for the
# enveloped or signed data, .p7s for the signature part of multipart/signed.
_SMIME_SUFFIX = ".p7m"
_SMIME_SIGNATURE_SUFFIX = ".p7s"
_SMIME_ENCRYPTED = ("enveloped-data", "authenveloped-data")


def _octet_stream_named(part: email.message.Message, suffix: str) -> bool:
    return (part.get_content_type() == "application/octet-stream"
            and (attachment_name(part) or "").lower().endswith(suffix))


def _is_smime(part: email.message.Message) -> bool:
    return part.get_content_type() in _SMIME_TYPES or _octet_stream_named(part, _SMIME_SUFFIX)


def _is_signature_part(part: email.message.Message, protocol: str) -> bool:
    """The control part of multipart/signed (RFC 1847 section 2.1), by its type or, relabelled
    application/octet-stream, by its .p7s name (a review found smime.p7s so filed as a file)."""
    return (part.get_content_type() in (*_SIGNATURE_TYPES, protocol)
            or _octet_stream_named(part, _SMIME_SIGNATURE_SUFFIX))


def _smime_type(part: email.message.Message, payload: bytes | None = None) -> str:
    declared = str(part.get_param("smime-type") or "").strip().lower()
    if declared:
        return declared
    head = (_payload(part) if payload is None else payload)[:32]
    if _CMS_ENVELOPED_DATA in head:
        return "enveloped-data"
    if _CMS_AUTH_ENVELOPED_DATA in head:
        return "authenveloped-data"
    if _CMS_SIGNED_DATA in head:
        return "signed-data"
    return ""


def unwrap_clearsigned(text: str) -> tuple[str, bool]:
    """The text of an inline OpenPGP clear-signed message without its armour and signature."""
    match = _CLEARSIGNED.match(text)
    if match is None:
        return text, False
    lines = [line[2:] if line.startswith("- ") else line for line in match.group("text").split("\n")]
    return "\n".join(lines) + "\n" + text[match.end():], True


def _encrypted_part(part: email.message.Message, content: MimeContent) -> None:
    """A multipart/encrypted part inside a message (a PGP/MIME mail forwarded as a part, not as
    message/rfc822) is one file: the encrypted entity whole, which the reader's client can open and
    decrypt, rather than its control part and ciphertext as two files."""
    content.attachments.append(Attachment(filename=attachment_name(part) or "encrypted message.eml",
                                          content_type="message/rfc822", payload=part.as_bytes(),
                                          encryption="PGP/MIME"))


# The machine-readable parts of a report (RFC 6522) forwarded inside a person's message, filed as
# text files under these names. The email package reads message/delivery-status as a list of header
# blocks and the other two as a message of headers: walked as parts, they vanished (found by a MIME
# review), and text/rfc822-headers was filed as attachment-1.bin.
_REPORT_PART_NAMES = {
    "message/delivery-status": "delivery-status.txt",
    "message/global-delivery-status": "delivery-status.txt",
    "message/disposition-notification": "disposition-notification.txt",
    "message/global-disposition-notification": "disposition-notification.txt",
    "message/feedback-report": "feedback-report.txt",
    "text/rfc822-headers": "original-headers.txt",
    "message/global-headers": "original-headers.txt",
}


def _report_part(part: email.message.Message, content: MimeContent) -> None:
    if part.is_multipart():
        data = b"".join(_as_sent(block) for block in part.get_payload()).rstrip(b"\r\n") + b"\r\n"
    else:
        data = _payload(part)
    content.attachments.append(Attachment(
        filename=attachment_name(part) or _REPORT_PART_NAMES[part.get_content_type()],
        content_type="text/plain", payload=data))


def _walk(part: email.message.Message, content: MimeContent, *, root: bool = False, signed: bool = False) -> None:
    """Walk one part. ``root``: the part is the message itself (or the signed content of a
    multipart/signed message), the only place where encryption or opaque signing makes the message
    unreadable; elsewhere an encrypted or signed part is a file. ``signed``: the part is inside a
    multipart/signed structure, where a client adds the sender's key on its own."""
    content_type = part.get_content_type()
    if content_type in ("message/rfc822", "message/global"):
        _forwarded_message(part, content)
        return
    if content_type == "message/partial":
        # One fragment of a message split in several (RFC 2046 section 5.2.2): unreadable alone.
        raise MessageFragment()
    if content_type == "message/external-body":
        _external_body(part, content)
        return
    # Only the message itself encrypted (or opaque-signed) is unreadable: an encrypted file attached
    # to a readable text is a file (a review found archive.p7m beside a text refused whole).
    if content_type == "multipart/encrypted":
        if root:
            content.encryption = "PGP/MIME"
        else:
            _encrypted_part(part, content)
        return
    if not part.is_multipart():
        encoding = transfer_encoding(part)
        if encoding not in ("", *_TRANSFER_ENCODINGS):
            _unknown_encoding_part(part, encoding, content)
            return
        if encoding and encoding != str(part.get("Content-Transfer-Encoding") or "").lower():
            # Spaces, quotes or a comment around the token, which the email package does not read.
            content.defects.append(f"transfer-encoding-normalised:{encoding}")
    if root and _is_smime(part):
        smime_type = _smime_type(part)
        if smime_type in _SMIME_ENCRYPTED:
            content.encryption = "S/MIME"
            return
        if smime_type == "signed-data":
            content.opaque_signed = True
            return
    if content_type in _KEY_TYPES and signed:
        # The key Thunderbird adds to signed mail; one a sender attaches to an unsigned message is a file.
        content.defects.append(f"signature-part-dropped:{content_type}")
        return
    if content_type in _REPORT_PART_NAMES:
        _report_part(part, content)
        return
    if part.is_multipart():
        html_before = False
        children = part.get_payload()
        protocol = str(part.get_param("protocol") or "").strip().lower()
        for index, child in enumerate(children):
            if content_type == "multipart/signed" and index > 0 and _is_signature_part(child, protocol):
                content.defects.append(f"signature-part-dropped:{child.get_content_type()}")
                continue
            if html_before and content_type == "multipart/mixed" and _is_unreferenced_inline_image(child):
                _place_inline_image(child, content)
                continue
            # The signed content of multipart/signed is the message as the sender wrote it.
            _walk(child, content, root=root and content_type == "multipart/signed" and index == 0,
                  signed=signed or content_type == "multipart/signed")
            html_before = html_before or child.get_content_type() == "text/html"
        return
    disposition = (part.get_content_disposition() or "").lower()
    payload = _payload(part)
    if content_type in _TEXT_TYPES and disposition != "attachment" and not part.get_filename():
        text = decode_text(payload, part.get_param("charset"), content_type, content.defects)
        if content_type == "text/plain":
            text, unwrapped = unwrap_clearsigned(text)
            if unwrapped:
                content.defects.append("pgp-inline-signature-dropped")
        if content_type == "text/plain" and str(part.get_param("format") or "").lower() == "flowed":
            text = unflow(text, delete_space=str(part.get_param("delsp") or "").lower() == "yes")
        (content.text_html if content_type == "text/html" else content.text_plain).append(text)
        return
    # Everything else is a file: images without a Content-Disposition header too (Apple Mail and
    # Outlook send inline images that way), so they can be shown where their cid: points.
    filename = _filename(part, f"attachment-{len(content.attachments) + 1}")
    if any(isinstance(defect, _BASE64_DEFECTS) for defect in part.defects):
        # The email package decodes broken base64 as best it can; a file filed "byte-exact" from a
        # guess would be a lie, and the same bytes would fail again: a permanent refusal.
        raise MessageUnparseable(f"attachment {filename!r} is not valid base64")
    content_id = _content_id(part)
    content.attachments.append(Attachment(
        filename=filename,
        content_type=content_type,
        payload=payload,
        content_id=content_id,
        # Inline for now if it may be; walk() keeps it so only if the HTML points at it.
        inline=content_id is not None and disposition != "attachment",
        # An S/MIME encrypted file: a message whose only file it is was encrypted (extract_body).
        encryption="S/MIME" if _is_smime(part) and _smime_type(part, payload) in _SMIME_ENCRYPTED else None,
    ))


# A cid: URL (RFC 2392) in the HTML, as a src or anywhere: its Content-ID is URL-encoded.
_CID_URL = re.compile(r"""cid:([^"'\s<>)]+)""", re.IGNORECASE)


def content_id_key(url: str) -> str:
    """The Content-ID a cid: URL (without "cid:") names, as compared with a part's Content-ID lowered:
    URL-decoded (RFC 2392 section 2), angle brackets dropped, in lower case (clients differ in case)."""
    return urllib.parse.unquote(url).strip("<>").lower()


def _referenced_content_ids(html_parts: list[str]) -> set[str]:
    return {content_id_key(html.unescape(match)) for part in html_parts for match in _CID_URL.findall(part)}


_DOCUMENT_FRAME = re.compile(r"<head\b.*?</head\s*>|<!doctype[^>]*>|</?(?:html|body)\b[^>]*>", re.IGNORECASE | re.DOTALL)


def join_html(parts: list[str]) -> str:
    """One HTML body from several parts (Apple Mail splits its HTML around each attached file).

    Each part is a whole document; joined as they are, a parser would keep only the first body.
    """
    if len(parts) <= 1:
        return "".join(parts)
    return "\n".join(_DOCUMENT_FRAME.sub("", part) for part in parts)


def walk(message: email.message.Message) -> MimeContent:
    """Every leaf of the message once; forwarded messages stay whole."""
    content = MimeContent()
    _walk(message, content, root=True)
    # A file is inline only where the text shows it. Gmail gives every file a Content-ID (with
    # Content-Disposition: attachment), and Exchange gives one to a phone's photo: taken for inline
    # images, a file sent with no text was refused as empty (found by a review of real-world MIME
    # shapes).
    referenced = _referenced_content_ids(content.text_html)
    content.attachments = [
        item if not item.inline or (item.content_id or "").lower() in referenced
        else dataclasses.replace(item, inline=False)
        for item in content.attachments]
    return content
