"""Charset labels read as mail clients mean them: the WHATWG Encoding Standard's labels and codecs."""

from __future__ import annotations

import codecs
import re

# The label table of the WHATWG Encoding Standard (https://encoding.spec.whatwg.org/#names-and-labels),
# which browsers and most mail clients follow, each encoding with the Python codec that decodes what
# clients write under its labels. A label names a family more than a character set: Windows writes
# GBK as "gb2312", cp932 (with the NEC and IBM extensions: ①, ㈱, 髙) as "shift_jis", cp949 as
# "euc-kr", and Python's codecs of those names reject the extensions, which turned a whole part into
# windows-1252 mojibake (found by a review of real-world charsets). The wider codec decodes everything
# the narrow one does the same way. The `webencodings` package holds the same labels, but maps them
# to the narrow Python codecs, so it would not have fixed this.
#
# Where the gateway departs from the standard, and why:
# - us-ascii is read as ASCII, then UTF-8, then windows-1252 (the fallback chain of gateway.mime):
#   clients label UTF-8 text us-ascii, and windows-1252 would turn it into mojibake.
# - the latin-1 labels keep their own codec name: gateway.mime reads them as windows-1252 and records
#   when that changed the text.
# - "utf-16" without a byte order mark is big-endian (RFC 2781 section 4.3), not little-endian as in
#   browsers; gateway.mime records the guess.
# - ISO-2022-KR and HZ (the standard's "replacement" encoding, which keeps script out of a browser's
#   view of a page) are decoded: the gateway sanitises the HTML after decoding it.
_ENCODINGS: dict[str, str] = {
    "utf-8": "unicode-1-1-utf-8 unicode11utf8 unicode20utf8 utf-8 utf8 x-unicode20utf8",
    "cp866": "866 cp866 csibm866 ibm866",
    "iso8859-2": "csisolatin2 iso-8859-2 iso-ir-101 iso8859-2 iso88592 iso_8859-2 iso_8859-2:1987 l2 latin2",
    "iso8859-3": "csisolatin3 iso-8859-3 iso-ir-109 iso8859-3 iso88593 iso_8859-3 iso_8859-3:1988 l3 latin3",
    "iso8859-4": "csisolatin4 iso-8859-4 iso-ir-110 iso8859-4 iso88594 iso_8859-4 iso_8859-4:1988 l4 latin4",
    "iso8859-5": ("csisolatincyrillic cyrillic iso-8859-5 iso-ir-144 iso8859-5 iso88595 iso_8859-5 "
                  "iso_8859-5:1988"),
    "iso8859-6": ("arabic asmo-708 csiso88596e csiso88596i csisolatinarabic ecma-114 iso-8859-6 iso-8859-6-e "
                  "iso-8859-6-i iso-ir-127 iso8859-6 iso88596 iso_8859-6 iso_8859-6:1987"),
    "iso8859-7": ("csisolatingreek ecma-118 elot_928 greek greek8 iso-8859-7 iso-ir-126 iso8859-7 iso88597 "
                  "iso_8859-7 iso_8859-7:1987 sun_eu_greek"),
    # ISO-8859-8-I (logical order) has the bytes of ISO-8859-8; only the display direction differs.
    "iso8859-8": ("csiso88598e csisolatinhebrew hebrew iso-8859-8 iso-8859-8-e iso-ir-138 iso8859-8 iso88598 "
                  "iso_8859-8 iso_8859-8:1988 visual csiso88598i iso-8859-8-i logical"),
    "iso8859-10": "csisolatin6 iso-8859-10 iso-ir-157 iso8859-10 iso885910 l6 latin6",
    "iso8859-13": "iso-8859-13 iso8859-13 iso885913",
    "iso8859-14": "iso-8859-14 iso8859-14 iso885914",
    "iso8859-15": "csisolatin9 iso-8859-15 iso8859-15 iso885915 iso_8859-15 l9",
    "iso8859-16": "iso-8859-16",
    "koi8-r": "cskoi8r koi koi8 koi8-r koi8_r",
    "koi8-u": "koi8-ru koi8-u",
    "mac-roman": "csmacintosh mac macintosh x-mac-roman",
    "cp874": "dos-874 iso-8859-11 iso8859-11 iso885911 tis-620 windows-874",
    "cp1250": "cp1250 windows-1250 x-cp1250",
    "cp1251": "cp1251 windows-1251 x-cp1251",
    "ascii": "ansi_x3.4-1968 ascii us-ascii",
    "iso8859-1": ("cp819 csisolatin1 ibm819 iso-8859-1 iso-ir-100 iso8859-1 iso88591 iso_8859-1 "
                  "iso_8859-1:1987 l1 latin1"),
    "cp1252": "cp1252 windows-1252 x-cp1252",
    "cp1253": "cp1253 windows-1253 x-cp1253",
    "cp1254": ("cp1254 csisolatin5 iso-8859-9 iso-ir-148 iso8859-9 iso88599 iso_8859-9 iso_8859-9:1989 l5 "
               "latin5 windows-1254 x-cp1254"),
    "cp1255": "cp1255 windows-1255 x-cp1255",
    "cp1256": "cp1256 windows-1256 x-cp1256",
    "cp1257": "cp1257 windows-1257 x-cp1257",
    "cp1258": "cp1258 windows-1258 x-cp1258",
    "mac-cyrillic": "x-mac-cyrillic x-mac-ukrainian",
    "gb18030": "chinese csgb2312 csiso58gb231280 gb2312 gb_2312 gb_2312-80 gbk iso-ir-58 x-gbk gb18030",
    "big5hkscs": "big5 big5-hkscs cn-big5 csbig5 x-x-big5",
    "euc_jp": "cseucpkdfmtjapanese euc-jp x-euc-jp",
    "iso2022_jp": "csiso2022jp iso-2022-jp",
    "cp932": "csshiftjis ms932 ms_kanji shift-jis shift_jis sjis windows-31j x-sjis",
    "cp949": ("cseuckr csksc56011987 euc-kr iso-ir-149 korean ks_c_5601-1987 ks_c_5601-1989 ksc5601 ksc_5601 "
              "windows-949"),
    "iso2022_kr": "csiso2022kr iso-2022-kr",
    "hz": "hz-gb-2312",
    "utf-16-be": "unicodefffe utf-16be",
    "utf-16-le": "unicodefeff utf-16le",
    "utf-16": "csunicode iso-10646-ucs-2 ucs-2 unicode utf-16",
}
_LABELS = {label: codec for codec, labels in _ENCODINGS.items() for label in labels.split()}
# A label outside the table that Python knows (cp936, euc_kr, ...) gets the same wider codec.
_WIDER = {"gb2312": "gb18030", "gbk": "gb18030", "big5": "big5hkscs", "shift_jis": "cp932", "euc_kr": "cp949",
          "tis-620": "cp874", "iso8859-11": "cp874", "iso8859-9": "cp1254"}


def codec_for(name: str | None) -> str | None:
    """The Python codec for a MIME charset label, or None if neither the standard nor Python knows it."""
    if not name:
        return None
    label = name.strip().strip('"').strip().lower()
    codec = _LABELS.get(label)
    if codec is not None:
        return codec
    try:
        codec = codecs.lookup(label).name
    except LookupError:
        return None
    return _WIDER.get(codec, codec)


# ISO-2022-JP as Windows writes it (code pages 50220-50222, what Outlook sends): the JIS X 0208
# escape also carries the NEC special characters of row 13 (①, ㈱, №) and the NEC-selected IBM
# kanji of rows 89-92 (髙, 﨑), which are the rows of cp932; half-width katakana come after ESC ( I
# or between SO and SI. Python's iso2022_jp rejects them all, and its iso2022_jp_2004 would read
# rows 89-92 as other kanji. Each pair is moved to its Shift_JIS position and read as cp932.
_ISO_2022_JP_SHIFT = re.compile(rb"(\x1b\(B|\x1b\(J|\x1b\(I|\x1b\$@|\x1b\$B|\x0e|\x0f)")
_ASCII, _KATAKANA, _JIS_X_0208 = "ascii", "katakana", "jis-x-0208"
_MODES = {b"\x1b(B": _ASCII, b"\x1b(J": _ASCII, b"\x1b(I": _KATAKANA, b"\x1b$@": _JIS_X_0208, b"\x1b$B": _JIS_X_0208}


def _error(chunk: bytes, start: int, end: int, reason: str) -> UnicodeDecodeError:
    return UnicodeDecodeError("iso-2022-jp", chunk, start, end, reason)


def _jis_x_0208(chunk: bytes, errors: str) -> str:
    """JIS X 0208 row-cell pairs, each moved to its Shift_JIS bytes (JIS X 0208 annex 1) and read as cp932."""
    out: list[str] = []
    shift_jis = bytearray()
    for index in range(0, len(chunk), 2):
        row, cell = chunk[index], chunk[index + 1] if index + 1 < len(chunk) else 0
        if 0x21 <= row <= 0x7E and 0x21 <= cell <= 0x7E:
            shift_jis.append(((row - 0x21) >> 1) + (0x81 if row <= 0x5E else 0xC1))
            shift_jis.append(cell + (0x1F + (cell >= 0x60) if row & 1 else 0x7E))
            continue
        if errors == "strict":
            raise _error(chunk, index, min(index + 2, len(chunk)), "not a JIS X 0208 character")
        out.append(bytes(shift_jis).decode("cp932", errors) + "\ufffd")
        shift_jis.clear()
    return "".join(out) + bytes(shift_jis).decode("cp932", errors)


def _katakana(chunk: bytes, errors: str) -> str:
    """JIS X 0201 katakana: the byte plus 0x80 is its Shift_JIS (and cp932) byte."""
    for index, byte in enumerate(chunk):
        if not 0x21 <= byte <= 0x5F and errors == "strict":
            raise _error(chunk, index, index + 1, "not a JIS X 0201 katakana")
    return "".join(bytes([byte + 0x80]).decode("cp932") if 0x21 <= byte <= 0x5F else "\ufffd" for byte in chunk)


def _ascii(chunk: bytes, errors: str) -> str:
    """ASCII, where an escape sequence of another character set (JIS X 0212, JIS X 0213) is an error."""
    escape = chunk.find(b"\x1b")
    if escape >= 0 and errors == "strict":
        raise _error(chunk, escape, escape + 1, "escape sequence of an unsupported character set")
    return chunk.decode("ascii", errors).replace("\x1b", "\ufffd")


def _decode_windows_iso_2022_jp(data: bytes, errors: str) -> str:
    out: list[str] = []
    mode, shifted, offset = _ASCII, False, 0
    for index, chunk in enumerate(_ISO_2022_JP_SHIFT.split(data)):
        if index % 2:
            if chunk in (b"\x0e", b"\x0f"):
                shifted = chunk == b"\x0e"
            else:
                mode, shifted = _MODES[chunk], False
        elif chunk:
            reader = _katakana if shifted or mode == _KATAKANA else _jis_x_0208 if mode == _JIS_X_0208 else _ascii
            try:
                out.append(reader(chunk, errors))
            except UnicodeDecodeError as error:
                raise UnicodeDecodeError("iso-2022-jp", data, offset + error.start, offset + error.end,
                                         error.reason) from None
        offset += len(chunk)
    return "".join(out)


# Where clients write one of two extensions under one label, the next codec is tried when one does
# not decode: Big5 with HKSCS or with Microsoft's euro sign (cp950), Shift_JIS and EUC-JP of JIS X
# 0213, ISO-2022-JP of Windows, of JIS X 0213 (ESC $ ( Q) or with JIS X 0212 (ESC $ ( D).
_ALTERNATIVES = {
    "big5hkscs": ("cp950",),
    "cp932": ("shift_jis_2004",),
    "euc_jp": ("euc_jis_2004",),
    "iso2022_jp": ("windows-iso-2022-jp", "iso2022_jp_2004", "iso2022_jp_2"),
}
_REPLACING = {"iso2022_jp": "windows-iso-2022-jp"}


def _decode_one(payload: bytes, codec: str, errors: str) -> str:
    if codec == "windows-iso-2022-jp":
        return _decode_windows_iso_2022_jp(payload, errors)
    return payload.decode(codec, errors)


# Python's UTF-7 codec decodes "+2AA-" to a lone surrogate, which no later step can encode: nh3
# (the sanitizer) raised UnicodeEncodeError on a plain-text part, a 451 on every retry, and libxml2
# stopped reading an HTML part there, the text after it lost without an error (found after a
# fuzzing review). It stands for a character that was written, as U+FFFD does for a byte a
# charset does not decode.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_lone_surrogates(text: str) -> str:
    return _LONE_SURROGATE.sub("\ufffd", text) if _LONE_SURROGATE.search(text) else text


def decode(payload: bytes, codec: str, errors: str = "strict") -> str:
    """``payload`` in ``codec`` (from codec_for), or in the first of its alternatives that decodes it.

    Strict: UnicodeDecodeError if none does. Otherwise ``errors`` applies to the reading clients
    use most: for ISO-2022-JP, Windows'. A lone surrogate (UTF-7) is U+FFFD.
    """
    if errors != "strict":
        return _without_lone_surrogates(_decode_one(payload, _REPLACING.get(codec, codec), errors))
    try:
        return _without_lone_surrogates(payload.decode(codec))
    except UnicodeDecodeError as error:
        first = error
    for alternative in _ALTERNATIVES.get(codec, ()):
        try:
            return _without_lone_surrogates(_decode_one(payload, alternative, "strict"))
        except UnicodeDecodeError:
            continue
    raise first
