"""Decoding the parts of a message: the charset fallback chain, its defects, files, inline images, forwards."""

from __future__ import annotations

import base64
import codecs
import gzip
import hashlib
import quopri

import pytest

from gateway import observe
from gateway.content import extract_body
from gateway.message import parse
from gateway.refusals import EncryptedMessage, MessageUnparseable, UnknownTransferEncoding

HEAD = b"From: Paula <portal.contrib@example.com>\r\nTo: x@notes.example.com\r\nSubject: s\r\nMessage-ID: <m@x>\r\nMIME-Version: 1.0\r\n"


def _parse(headers: bytes, body: bytes):
    return parse(HEAD + headers + b"\r\n\r\n" + body)


def test_declared_charset_is_used_without_defect():
    message = _parse(b"Content-Type: text/plain; charset=iso-8859-15", "Prix 12 \u20ac".encode("iso-8859-15"))
    assert message.text_plain == "Prix 12 \u20ac" and message.defects == []


def test_wrong_declared_charset_falls_back_and_records_it():
    message = _parse(b"Content-Type: text/plain; charset=utf-8", "d\xe9j\xe0 fait".encode("latin-1"))
    assert message.text_plain == "déjà fait"
    assert "charset-mismatch:utf-8" in message.defects and "charset-fallback:cp1252" in message.defects


def test_undeclared_charset_tries_utf8_then_cp1252():
    assert _parse(b"Content-Type: text/plain", "caf\u00e9".encode()).text_plain == "café"
    message = _parse(b"Content-Type: text/plain", b"85 \x80")
    assert message.text_plain == "85 \u20ac" and "charset-missing" in message.defects


def test_unknown_charset_is_a_defect_and_still_readable():
    message = _parse(b"Content-Type: text/plain; charset=x-made-up", "caf\u00e9".encode())
    assert message.text_plain == "café" and "charset-unknown:x-made-up" in message.defects


def test_iso_2022_jp_declared_or_not_is_readable():
    text = "点検は完了しました。"
    assert _parse(b'Content-Type: text/plain; charset="ISO-2022-JP"', text.encode("iso2022_jp")).text_plain == text
    undeclared = _parse(b"Content-Type: text/plain", text.encode("iso2022_jp"))
    assert undeclared.text_plain == text and "charset-guessed:iso-2022-jp" in undeclared.defects


def test_html_meta_charset_is_used_when_mime_declares_none():
    html = '<html><head><meta charset="windows-1252"></head><body>na\xefve \x93quotes\x94</body></html>'
    message = _parse(b"Content-Type: text/html", html.encode("latin-1"))
    assert "naïve “quotes”" in message.text_html


OUTLOOK_TEXT = "It\u2019s \u201cdone\u201d \u2013 price \u20ac5"


def test_latin1_label_is_read_as_windows_1252_as_browsers_do():
    # Outlook labels its curly quotes, dashes and euro signs iso-8859-1; latin-1 would make them
    # invisible C1 controls ("It\x92s \x93done\x94"), found by an exploratory test.
    import quopri
    message = _parse(b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable",
                     quopri.encodestring(OUTLOOK_TEXT.encode("cp1252")))
    assert message.text_plain.strip() == OUTLOOK_TEXT
    assert message.defects == ["charset-read-as-windows-1252:iso-8859-1"]
    for label in (b"latin1", b'"ISO-8859-1"', b"l1", b"iso88591", b"x-cp1252"):
        assert _parse(b"Content-Type: text/plain; charset=" + label, b"\x93ok\x94").text_plain == "\u201cok\u201d"
    # Real latin-1 text reads the same either way: nothing to record.
    plain = _parse(b"Content-Type: text/plain; charset=iso-8859-1", "d\xe9j\xe0 \xa0fait".encode("latin-1"))
    assert plain.text_plain == "d\xe9j\xe0 \xa0fait" and plain.defects == []


def test_html_labelled_latin1_is_read_as_windows_1252():
    html = "<html><head><meta charset=windows-1252></head><body><p>Price \x80 5 \x96 it\x92s</p></body></html>"
    message = _parse(b"Content-Type: text/html; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit",
                     html.encode("latin-1"))
    assert "Price \u20ac 5 \u2013 it\u2019s" in message.text_html
    meta = _parse(b"Content-Type: text/html", b"<meta charset=iso-8859-1><p>\x93quoted\x94</p>")
    assert "\u201cquoted\u201d" in meta.text_html and "charset-read-as-windows-1252:iso-8859-1" in meta.defects


def test_utf8_under_a_latin1_or_windows_1252_label_is_read_as_utf8():
    # A mailer's default label over UTF-8 text, and an HTML part whose <meta> says utf-8 under a
    # MIME latin-1 label: read as windows-1252 every accent became two characters ("GrÃ¶ÃŸe").
    for label in (b"iso-8859-1", b"windows-1252"):
        message = _parse(b"Content-Type: text/plain; charset=" + label, TEXT.encode("utf-8"))
        assert message.text_plain == TEXT
        assert message.defects == ["charset-read-as-utf-8:" + label.decode()]
    html = _parse(b"Content-Type: text/html; charset=iso-8859-1",
                  b'<html><head><meta charset="utf-8"></head><body><p>' + TEXT.encode() + b"</p></body></html>")
    assert TEXT in html.text_html
    # Latin-1 text is not valid UTF-8 (an accent is one byte, never followed by a continuation byte).
    latin = _parse(b"Content-Type: text/plain; charset=iso-8859-1", "Gr\xf6\xdfe 6 bar".encode("latin-1"))
    assert latin.text_plain == "Gr\xf6\xdfe 6 bar" and latin.defects == []


def test_windows_1252_never_fails_on_its_five_undefined_bytes():
    # WHATWG's windows-1252 maps 0x81, 0x8D, 0x8F, 0x90, 0x9D to the C1 control of the same number.
    message = _parse(b"Content-Type: text/plain; charset=windows-1252", b"\x80 \x81\x8d\x8f\x90\x9d \x93x\x94")
    assert message.text_plain == "\u20ac \x81\x8d\x8f\x90\x9d \u201cx\u201d"
    assert not [defect for defect in message.defects if defect.startswith("charset-")]
    # The end of the fallback chain too: US-ASCII with 8-bit bytes that are not UTF-8.
    fallback = _parse(b"Content-Type: text/plain; charset=us-ascii", b"\x93x\x94 \x81")
    assert fallback.text_plain == "\u201cx\u201d \x81"
    assert fallback.defects[-2:] == ["charset-mismatch:us-ascii", "charset-fallback:cp1252"]
    # UTF-8 mislabelled US-ASCII is still read as UTF-8.
    assert _parse(b"Content-Type: text/plain; charset=us-ascii", "Caf\u00e9".encode()).text_plain == "Caf\u00e9"


@pytest.mark.parametrize(("label", "text", "written_as"), [
    # Windows writes its wider code page under the narrow label (WHATWG Encoding Standard).
    ("gb2312", "泵P-7已检修 朱镕基 王喆", "gbk"),
    ("x-gbk", "朱镕基", "gbk"),
    ("shift_jis", "ポンプ①号機 ㈱テスト 髙﨑 ～", "cp932"),
    ("x-sjis", "ポンプ①号機", "cp932"),
    ("windows-31j", "ポンプ①号機", "cp932"),
    ("euc-kr", "펌프 점검 똠방각하 쌰", "cp949"),
    ("ks_c_5601-1987", "펌프 점검 똠방각하", "cp949"),
    ("big5", "泵已檢修 碁 銹 裏 墻 恒 粧 嫺 €", "cp950"),
    ("big5", "香港 𨋢 𡃁", "big5hkscs"),
    # Labels Python does not know.
    ("windows-874", "ปั๊ม P-7 ตรวจสอบแล้ว", "cp874"),
    ("tis-620", "ปั๊ม P-7 ตรวจสอบแล้ว", "cp874"),
    ("iso-8859-8-i", "המשאבה P-7 נבדקה", "iso8859-8"),
    ("unicode-1-1-utf-8", "Größe 泵", "utf-8"),
    ("x-mac-cyrillic", "Насос проверен", "mac-cyrillic"),
])
def test_a_label_is_read_as_the_charset_clients_write_under_it(label, text, written_as):
    # Found by a review of real-world charsets: one character outside Python's codec of the label
    # (or a label Python does not know) sent the whole part through windows-1252, into mojibake.
    message = _parse(b"Content-Type: text/plain; charset=" + label.encode(), text.encode(written_as))
    assert message.text_plain == text
    assert not [defect for defect in message.defects if defect.startswith("charset-")]


def _iso_2022_jp_as_outlook_writes_it(text: str) -> bytes:
    """ISO-2022-JP as Windows code page 50221 writes it: JIS X 0208 rows as cp932 has them, the
    NEC-selected IBM kanji (髙 is cp932 0xEEE0) in rows 89-92, half-width katakana after ESC ( I."""
    out, mode = bytearray(), b"\x1b(B"
    for char in text:
        if char.isascii():
            wanted, data = b"\x1b(B", char.encode()
        elif "\uff61" <= char <= "\uff9f":
            wanted, data = b"\x1b(I", bytes([char.encode("cp932")[0] - 0x80])
        else:
            lead, trail = b"\xee\xe0" if char == "髙" else char.encode("cp932")
            row = (lead - 0x81 if lead <= 0x9F else lead - 0xC1) * 2 + 0x21 + (trail >= 0x9F)
            cell = trail - 0x7E if trail >= 0x9F else trail - 0x1F - (trail >= 0x80)
            wanted, data = b"\x1b$B", bytes([row, cell])
        if wanted != mode:
            out += wanted
            mode = wanted
        out += data
    return bytes(out) + (b"\x1b(B" if mode != b"\x1b(B" else b"")


def test_iso_2022_jp_as_outlook_writes_it_is_readable():
    # Outlook's ISO-2022-JP holds the company mark ㈱ and circled digits (NEC row 13), the kanji of
    # names such as 髙﨑 (rows 89-92) and half-width katakana; Python's iso2022_jp rejects them all,
    # and the part was filed as its escape sequences (found by a review of real-world charsets).
    text = "㈱テスト工業 ①シール交換 ②確認 髙﨑 一郎 ｶﾀｶﾅ ～"
    encoded = _iso_2022_jp_as_outlook_writes_it(text)
    message = _parse(b'Content-Type: text/plain; charset="iso-2022-jp"', encoded)
    assert message.text_plain == text and message.defects == []
    # Undeclared, it is still recognised; JIS X 0213 (ESC $ ( Q) under the same label is read too.
    assert _parse(b"Content-Type: text/plain", encoded).text_plain == text
    jis_2004 = "ポンプ①号機を点検しました。".encode("iso2022_jp_2004")
    assert _parse(b"Content-Type: text/plain; charset=iso-2022-jp", jis_2004).text_plain == "ポンプ①号機を点検しました。"


def test_bytes_a_legacy_charset_does_not_decode_are_replaced_in_that_charset():
    # Before, one bad byte sent the whole part to windows-1252: "±ÃÒÑ¼ìÐÞ" for "泵已检修".
    message = _parse(b"Content-Type: text/plain; charset=gb2312", "泵已检修".encode("gbk") + b"\xff" + "完成".encode("gbk"))
    assert message.text_plain == "泵已检修\ufffd完成"
    assert message.defects == ["charset-mismatch:gb2312", "charset-replaced:gb18030"]
    broken = _iso_2022_jp_as_outlook_writes_it("ポンプ点検") + b" \x1b$B%]\x7f\x7f\x1b(B ok"
    message = _parse(b"Content-Type: text/plain; charset=iso-2022-jp", broken)
    assert message.text_plain == "ポンプ点検 ポ\ufffd ok"
    assert message.defects == ["charset-mismatch:iso-2022-jp", "charset-replaced:iso2022_jp"]
    # UTF-8 under a legacy label is still read as UTF-8 ("declared wrongly").
    utf8 = _parse(b"Content-Type: text/plain; charset=shift_jis", "Größe ポンプ".encode())
    assert utf8.text_plain == "Größe ポンプ" and utf8.defects == ["charset-mismatch:shift_jis", "charset-fallback:utf-8"]


def test_utf_16_without_a_byte_order_mark_is_big_endian():
    # RFC 2781 section 4.3; Python's codec read it little-endian, every character swapped (found by
    # a review). The guess is journaled; with a mark, or an explicit utf-16le, nothing is.
    text = "Pump P-7 inspected \u00fc"
    message = _parse(b"Content-Type: text/plain; charset=utf-16", text.encode("utf-16-be"))
    assert message.text_plain == text and message.defects == ["charset-read-as-big-endian:utf-16"]
    for label, data in ((b"utf-16", text.encode("utf-16")), (b"utf-16le", text.encode("utf-16-le")),
                        (b"utf-16", codecs.BOM_UTF16_LE + text.encode("utf-16-le"))):
        message = _parse(b"Content-Type: text/plain; charset=" + label, data)
        assert message.text_plain == text and message.defects == []


def _encoded_word(charset: str, text: str, written_as: str) -> bytes:
    return f"=?{charset}?B?{base64.b64encode(text.encode(written_as)).decode()}?=".encode()


def test_subject_and_from_name_are_decoded_as_the_parts_are():
    # mail-parser decoded an encoded word with Python's codec of its label and dropped what did not
    # decode: "Ѽ F" for a gb2312 (GBK) subject, "Pump  85" for Outlook's latin-1 curly quotes, with
    # no defect (found by a review of real-world charsets).
    for charset, text, written_as in (("gb2312", "泵已检修 朱镕基", "gbk"), ("shift_jis", "ポンプ①号機", "cp932"),
                                      ("windows-874", "ปั๊ม P-7", "cp874"), ("ISO-2022-JP", "㈱テスト 髙﨑", "cp50221")):
        word = (b"=?" + charset.encode() + b"?B?" + base64.b64encode(_iso_2022_jp_as_outlook_writes_it(text)) + b"?="
                if written_as == "cp50221" else _encoded_word(charset, text, written_as))
        message = parse(HEAD.replace(b"Subject: s", b"Subject: Re: " + word).replace(b"From: Paula", b"From: " + word)
                        + b"Content-Type: text/plain\r\n\r\nok\r\n")
        assert (message.subject, message.from_name, message.from_address) == (f"Re: {text}", text,
                                                                              "portal.contrib@example.com")
        assert message.defects == []
    outlook = parse(HEAD.replace(b"Subject: s", b"Subject: =?iso-8859-1?Q?=93Pump=94_=96_85=80?=")
                    + b"Content-Type: text/plain\r\n\r\nok\r\n")
    assert outlook.subject == "\u201cPump\u201d \u2013 85\u20ac"
    assert outlook.defects == ["subject-charset-read-as-windows-1252:iso-8859-1"]
    # A fallback is journaled, named after the header; folded lines are unfolded.
    broken = parse(HEAD.replace(b"Subject: s", b"Subject: =?gb2312?B?" + base64.b64encode("泵".encode("gbk") + b"\xff")
                                + b"?=\r\n next line") + b"Content-Type: text/plain\r\n\r\nok\r\n")
    assert broken.subject == "泵\ufffd next line"
    assert broken.defects == ["subject-charset-mismatch:gb2312", "subject-charset-replaced:gb18030"]


def test_inline_image_without_disposition_is_a_file_with_its_content_id():
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    import base64
    body = (b"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p><img src=\"cid:img1@x\"></p>\r\n"
            b"--b\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\nContent-ID: <img1@x>\r\n\r\n"
            + base64.encodebytes(png).replace(b"\n", b"\r\n") + b"--b--\r\n")
    message = _parse(b'Content-Type: multipart/related; boundary="b"', body)
    [image] = message.attachments
    assert image.content_id == "img1@x" and image.payload == png and image.filename.endswith(".png")
    assert hashlib.sha256(image.payload).digest() == hashlib.sha256(png).digest()


def test_forwarded_message_is_one_eml_file_and_not_part_of_the_body():
    inner = b"From: a@b.example\r\nSubject: Slot confirmed\r\n\r\nReference SLOT-77\r\n"
    body = (b"--b\r\nContent-Type: text/plain\r\n\r\nFYI\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"--b--\r\n")
    message = _parse(b'Content-Type: multipart/mixed; boundary="b"', body)
    assert message.text_plain.strip() == "FYI"
    [forwarded] = message.attachments
    assert forwarded.filename == "Slot confirmed.eml" and forwarded.content_type == "message/rfc822"
    assert b"Reference SLOT-77" in forwarded.payload


def test_attachment_name_is_never_a_path():
    body = (b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename=\"..\\\\..\\\\evil.bin\"\r\n\r\nx\r\n--b--\r\n")
    [attachment] = _parse(b'Content-Type: multipart/mixed; boundary="b"', body).attachments
    assert attachment.filename == "evil.bin"


def _file_named(file_headers: bytes):
    body = (b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\n" + file_headers
            + b"\r\n\r\nx\r\n--b--\r\n")
    [attachment] = _parse(b'Content-Type: multipart/mixed; boundary="b"', body).attachments
    return attachment.filename


def test_attachment_names_are_decoded_as_clients_write_them():
    # Found by an exploratory test: Gmail's and Outlook's RFC 2047 names were filed literally
    # ("=?UTF-8?B?...?="), raw UTF-8 ones as U+FFFD.
    gmail = b'UmFwcG9ydCBkw6l0YWlsbMOpLnBkZg=='
    assert _file_named(b'Content-Type: application/pdf; name="=?UTF-8?B?' + gmail + b'?="\r\n'
                       b'Content-Disposition: attachment; filename="=?UTF-8?B?' + gmail + b'?="') == "Rapport détaillé.pdf"
    # Only a Content-Type name, in Q encoding, lower-case charset and a language (RFC 2231 section 5).
    assert _file_named(b'Content-Type: application/pdf; name="=?iso-8859-1*fr?Q?r=E9sum=E9_=80.pdf?="') == "résumé €.pdf"
    # Outlook folds a long name into several words, splitting a character between two of them.
    split = "Größenübersicht Prüfstand.xlsx".encode()
    words = [split[:3], split[3:16], split[16:]]
    folded = b"\r\n ".join(b"=?utf-8?B?" + base64.b64encode(word) + b"?=" for word in words)
    assert _file_named(b'Content-Type: application/octet-stream\r\nContent-Disposition: attachment;\r\n'
                       b' filename="' + folded + b'"') == "Größenübersicht Prüfstand.xlsx"
    # Raw 8-bit names (RFC 6532 UTF-8, or a legacy charset) in the part header.
    assert _file_named('Content-Type: application/pdf; name="Über café.pdf"'.encode()) == "Über café.pdf"
    assert _file_named('Content-Disposition: attachment; filename="Gr\xfc\xdfe.pdf"'.encode("latin-1")) == "Grüße.pdf"
    # RFC 2231 as before, its latin-1 label read as windows-1252.
    assert _file_named(b"Content-Disposition: attachment; filename*=iso-8859-1''%93Q3%94.pdf") == "\u201cQ3\u201d.pdf"
    assert _file_named(b"Content-Disposition: attachment; filename*=utf-8''%D0%9F%D1%80%D0%B0%D0%B9%D1%81.pdf") == "Прайс.pdf"
    # Text that only looks like an encoded word stays as written.
    assert _file_named(b'Content-Disposition: attachment; filename="=?utf-8?B?not base64!?=.txt"') == "=?utf-8?B?not base64!?=.txt"
    # macOS writes decomposed letters; the name is NFC like every other.
    assert _file_named('Content-Disposition: attachment; filename="U\u0308ber.pdf"'.encode()) == "\u00dcber.pdf"


def test_every_name_check_sees_the_decoded_name():
    # A path or a control character hidden in an encoded word is stripped like a plain one.
    path = base64.b64encode(b"..\\..\\evil.bin")
    assert _file_named(b'Content-Disposition: attachment; filename="=?utf-8?B?' + path + b'?="') == "evil.bin"
    assert _file_named(b'Content-Disposition: attachment; filename="=?utf-8?Q?a/b=2Fc.bin?="') == "c.bin"
    # Controls and bidirectional overrides ("invoice\u202efdp.vbs" shows as "invoicesbv.pdf") go.
    assert _file_named(b'Content-Disposition: attachment; filename="=?utf-8?Q?in=0D=0Avoice=E2=80=AEfdp.vbs=00?="') == \
        "invoicefdp.vbs"
    assert _file_named("Content-Disposition: attachment; filename=\"re\u202eport.vbs\"".encode()) == "report.vbs"
    # Every bidirectional formatting character the operator's views escape (observe.UNPRINTABLE),
    # the Arabic letter mark too: a copy of the table here lacked it (shape review).
    for code in observe.BIDI_CONTROLS:
        assert _file_named(f"Content-Disposition: attachment; filename=\"re{chr(code)}port.pdf\"".encode()) == \
            "report.pdf", hex(code)


def test_forwarded_message_keeps_its_encoded_name():
    inner = b"From: a@b.example\r\nSubject: x\r\n\r\nbody\r\n"
    body = (b"--b\r\nContent-Type: text/plain\r\n\r\nFYI\r\n--b\r\nContent-Type: message/rfc822; "
            b'name="=?utf-8?Q?R=C3=A9ponse.eml?="\r\n\r\n' + inner + b"--b--\r\n")
    [forwarded] = _parse(b'Content-Type: multipart/mixed; boundary="b"', body).attachments
    assert forwarded.filename == "Réponse.eml"


def test_format_flowed_text_is_joined_into_paragraphs():
    body = b"The seal was worn and \r\nhas been replaced.\r\n\r\n> Quoted soft \r\n> break.\r\n-- \r\nPaula\r\n"
    message = _parse(b"Content-Type: text/plain; charset=utf-8; format=flowed", body)
    assert message.text_plain.replace("\r", "").split("\n")[:5] == [
        "The seal was worn and has been replaced.", "", "> Quoted soft break.", "-- ", "Paula"]
    delsp = _parse(b"Content-Type: text/plain; charset=utf-8; format=flowed; delsp=yes", b"Pres \r\nsure\r\n")
    assert delsp.text_plain.startswith("Pressure")


def _mixed(*parts: bytes):
    body = b"".join(b"--b\r\n" + part + b"\r\n" for part in parts) + b"--b--\r\n"
    return _parse(b'Content-Type: multipart/mixed; boundary="b"', body)


def test_a_file_is_inline_only_where_the_html_shows_it():
    # Gmail gives every file a Content-ID; Exchange gives one to a phone's photo. Only an image
    # that is not an attachment and whose cid: the HTML points at is inline (mime2 review).
    message = _mixed(
        b'Content-Type: text/html\r\n\r\n<p><img src="cid:logo%40x"></p>',
        b"Content-Type: image/png\r\nContent-ID: <logo@x>\r\n\r\npng",
        b"Content-Type: image/png\r\nContent-ID: <photo@x>\r\n\r\npng",
        b'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="r.pdf"\r\n'
        b"Content-ID: <f_lx1abc0>\r\n\r\n%PDF",
        b'Content-Type: image/png\r\nContent-Disposition: attachment; filename="shown.png"\r\n'
        b"Content-ID: <shown@x>\r\n\r\npng",
    )
    assert [(item.content_id, item.inline) for item in message.attachments] == [
        ("logo@x", True), ("photo@x", False), ("f_lx1abc0", False), ("shown@x", False)]


def test_only_the_control_part_of_multipart_signed_is_dropped():
    # A detached signature the sender attaches to a file of theirs is a file; the signature part of
    # multipart/signed is not, nor is the OpenPGP key Thunderbird adds inside a signed message.
    signed = _parse(b'Content-Type: multipart/signed; protocol="application/pgp-signature"; boundary="s"',
                    b"--s\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n"
                    b"--m\r\nContent-Type: text/plain\r\n\r\nSigned text\r\n--m\r\n"
                    b'Content-Type: application/pgp-keys; name="OpenPGP_0x59F7240FF7AE7667.asc"\r\n\r\nkey\r\n'
                    b"--m--\r\n--s\r\n"
                    b"Content-Type: application/pgp-signature\r\n\r\nsig\r\n--s--\r\n")
    assert signed.text_plain.strip() == "Signed text" and signed.attachments == []
    assert "signature-part-dropped:application/pgp-signature" in signed.defects
    assert "signature-part-dropped:application/pgp-keys" in signed.defects
    # A key attached to an unsigned message was attached on purpose ("please import my key"): a
    # file (today's review: it was dropped; this test said so until then).
    mixed = _mixed(b"Content-Type: text/plain\r\n\r\nThe release and its signature.",
                   b'Content-Type: application/pgp-signature; name="release.tar.gz.sig"\r\n\r\nsig',
                   b'Content-Type: application/pgp-keys; name="OpenPGP_0x59F7240FF7AE7667.asc"\r\n\r\nkey')
    assert [item.filename for item in mixed.attachments] == ["release.tar.gz.sig", "OpenPGP_0x59F7240FF7AE7667.asc"]
    assert not any(defect.startswith("signature-part-dropped") for defect in mixed.defects)


def test_an_attached_signed_p7m_file_is_filed_and_only_a_signed_message_refused():
    # An Italian e-invoice (fattura.xml.p7m) is an opaque-signed file attached to a message: filed.
    # Only a message that is itself opaque-signed cannot be read.
    signed_data = bytes.fromhex("3082000006092a864886f70d010702a0")
    attached = _mixed(b"Content-Type: text/plain\r\n\r\nInvoice attached.",
                      b'Content-Type: application/pkcs7-mime; name="IT01_1.xml.p7m"\r\n'
                      b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(signed_data))
    assert [item.filename for item in attached.attachments] == ["IT01_1.xml.p7m"] and not attached.opaque_signed
    whole = _parse(b'Content-Type: application/x-pkcs7-mime; name="smime.p7m"\r\nContent-Transfer-Encoding: base64',
                   base64.b64encode(signed_data))
    assert whole.opaque_signed and whole.encryption is None


def test_only_the_message_itself_encrypted_is_encrypted():
    # An encrypted part beside a readable text is a file; the message is encrypted only where the
    # encrypted part is the message, or the signed content of multipart/signed (today's review).
    enveloped = bytes.fromhex("3082000006092a864886f70d010703a0")
    smime_file = (b'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="archive.p7m"\r\n'
                  b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(enveloped))
    pgp_part = (b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary=e\r\n\r\n'
                b"--e\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
                b"--e\r\nContent-Type: application/octet-stream\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n"
                b"hQEMA\r\n-----END PGP MESSAGE-----\r\n--e--")
    attached = _mixed(b"Content-Type: text/plain\r\n\r\nThe archive and the report, as they came.", smime_file, pgp_part)
    assert attached.encryption is None
    assert [(item.filename, item.content_type) for item in attached.attachments] == [
        ("archive.p7m", "application/pkcs7-mime"), ("encrypted message.eml", "message/rfc822")]
    assert b"-----BEGIN PGP MESSAGE-----" in attached.attachments[1].payload
    assert b"application/pgp-encrypted" in attached.attachments[1].payload
    whole = _parse(b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary=e',
                   pgp_part.split(b"\r\n\r\n", 1)[1])
    assert whole.encryption == "PGP/MIME" and whole.attachments == []
    signed = _parse(b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; boundary="s"',
                    b"--s\r\n" + smime_file + b"\r\n--s\r\nContent-Type: application/pkcs7-signature\r\n\r\nsig\r\n--s--\r\n")
    assert signed.encryption == "S/MIME"


TEXT = "Pump P-7 inspected \u2013 Gr\u00f6\u00dfe 6 bar, 85 \u20ac."


def test_transfer_encoding_with_spaces_quotes_or_a_comment_is_decoded():
    # The email package only lowercases the header: "base64 " was read as no encoding, and the
    # note showed the base64 text (a MIME review).
    encoded = {"base64": base64.b64encode(TEXT.encode()), "quoted-printable": quopri.encodestring(TEXT.encode())}
    for written, token in ((b"base64 ", "base64"), (b'"base64"', "base64"), (b"base64 (encoded)", "base64"),
                           (b" Base64\t(a (nested) comment) ", "base64"), (b"quoted-printable ", "quoted-printable")):
        message = _parse(b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: " + written,
                         encoded[token])
        assert message.text_plain.strip() == TEXT, written
        assert message.defects == [f"transfer-encoding-normalised:{token}"], written
    pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n%%EOF\n"
    attached = _mixed(b"Content-Type: text/plain\r\n\r\nReport attached.",
                      b'Content-Type: application/pdf; name="report.pdf"\r\nContent-Transfer-Encoding: base64 \r\n\r\n'
                      + base64.b64encode(pdf))
    [report] = attached.attachments
    assert (report.filename, report.payload) == ("report.pdf", pdf)
    # Identity encodings misspelled, or a charset in the header's place: the bytes as sent, as before.
    for written, token in ((b"8-bit", "8bit"), (b"UTF-8", "8bit"), (b"7bits", "7bit")):
        message = _parse(b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: " + written,
                         TEXT.encode())
        assert message.text_plain.strip() == TEXT, written
        assert message.defects == [f"transfer-encoding-normalised:{token}"], written
    # Written plainly, in any case: nothing to record.
    assert _parse(b"Content-Type: text/plain\r\nContent-Transfer-Encoding: BASE64", base64.b64encode(b"ok")).defects == []


def test_broken_base64_behind_a_normalised_encoding_is_still_refused():
    with pytest.raises(MessageUnparseable, match="not valid base64"):
        _mixed(b"Content-Type: text/plain\r\n\r\nReport attached.",
               b'Content-Type: application/pdf; name="report.pdf"\r\nContent-Transfer-Encoding: "base64"\r\n\r\n'
               + base64.b64encode(b"%PDF-1.4 12345")[:-3])


def test_a_part_in_an_unknown_transfer_encoding_is_never_text():
    # RFC 2045 section 6.4: application/octet-stream, whatever its type says. It was filed as the
    # note's text (a MIME review).
    encoded = base64.b64encode(gzip.compress(TEXT.encode()))
    alone = _parse(b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: x-gzip64", encoded)
    assert alone.text_plain == "" and alone.defects == ["transfer-encoding-unknown:x-gzip64"]
    [file] = alone.attachments
    assert (file.filename, file.content_type, file.payload) == ("attachment-1.x-gzip64", "application/octet-stream", encoded)
    with pytest.raises(UnknownTransferEncoding) as refused:
        extract_body(alone)
    assert refused.value.smtp_reply() == (
        "554 5.6.0 The message is in a Content-Transfer-Encoding the gateway cannot decode, send it as plain text: x-gzip64")
    beside = _mixed(b"Content-Type: text/plain\r\n\r\nReport attached.",
                    b'Content-Type: application/pdf; name="report.pdf"\r\nContent-Transfer-Encoding: X-GZIP64 (zipped)\r\n\r\n'
                    + encoded)
    assert [(item.filename, item.content_type) for item in beside.attachments] == [("report.pdf.x-gzip64", "application/octet-stream")]
    assert "Report attached." in extract_body(beside)


def test_smime_labelled_octet_stream_is_smime():
    # RFC 8551 section 3.9: application/octet-stream named *.p7m is the S/MIME entity, *.p7s the
    # signature of multipart/signed. Both were filed as files (a MIME review).
    enveloped = bytes.fromhex("3082000006092a864886f70d010703a0")
    signed_data = bytes.fromhex("3082000006092a864886f70d010702a0")
    for data, encryption, opaque in ((enveloped, "S/MIME", False), (signed_data, None, True)):
        whole = _parse(b'Content-Type: application/octet-stream; name="smime.p7m"\r\nContent-Transfer-Encoding: base64\r\n'
                       b'Content-Disposition: attachment; filename="smime.p7m"', base64.b64encode(data))
        assert (whole.encryption, whole.opaque_signed, whole.attachments) == (encryption, opaque, [])
    # An opaque file of another name at the root, or a .p7m beside a text, is a file as before.
    other = _parse(b'Content-Type: application/octet-stream; name="backup.bin"\r\nContent-Transfer-Encoding: base64',
                   base64.b64encode(enveloped))
    assert other.encryption is None and [item.filename for item in other.attachments] == ["backup.bin"]
    signed = _parse(b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; boundary="s"',
                    b"--s\r\nContent-Type: text/plain\r\n\r\nSigned text\r\n--s\r\n"
                    b'Content-Type: application/octet-stream; name="smime.p7s"\r\n\r\nsig\r\n--s--\r\n')
    assert signed.text_plain.strip() == "Signed text" and signed.attachments == []
    assert "signature-part-dropped:application/octet-stream" in signed.defects


def test_encrypted_mail_with_a_footer_added_on_the_way_is_encrypted():
    # An outbound gateway's disclaimer beside the encrypted entity: it was filed as the footer and
    # the ciphertext file (a MIME review). An encrypted file beside a text of the sender's is a file.
    enveloped = bytes.fromhex("3082000006092a864886f70d010703a0")
    footer = b"Content-Type: text/plain\r\n\r\n-- \r\nThis email was scanned by ExampleCorp Mail Security."
    smime = b'Content-Type: application/pkcs7-mime; name="smime.p7m"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
    relabelled = b'Content-Type: application/octet-stream; name="smime.p7m"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
    pgp = (b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary=e\r\n\r\n'
           b"--e\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
           b"--e\r\nContent-Type: application/octet-stream\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n--e--")
    for entity, scheme in ((smime + base64.b64encode(enveloped), "S/MIME"),
                           (relabelled + base64.b64encode(enveloped), "S/MIME"), (pgp, "PGP/MIME")):
        with pytest.raises(EncryptedMessage) as refused:
            extract_body(_mixed(entity, footer))
        assert refused.value.detail == scheme
        assert "Here is the archive" in extract_body(_mixed(b"Content-Type: text/plain\r\n\r\nHere is the archive.", entity))
    # An opaque-signed file on its own (an e-invoice) is still the document the sender meant to file.
    signed_data = bytes.fromhex("3082000006092a864886f70d010702a0")
    invoice = _mixed(footer, b'Content-Type: application/pkcs7-mime; name="IT01_1.xml.p7m"\r\n'
                             b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(signed_data))
    assert "ExampleCorp" in extract_body(invoice)


def test_report_parts_forwarded_in_a_message_are_text_files():
    # compat32 reads message/delivery-status as header blocks and the others as a message of
    # headers: walked as parts they vanished, and text/rfc822-headers was attachment-1.bin.
    report = (b'Content-Type: multipart/report; report-type=delivery-status; boundary="R"\r\n\r\n'
              b"--R\r\nContent-Type: text/plain\r\n\r\nDelivery to customer@example.org failed.\r\n"
              b"--R\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.com\r\n\r\n"
              b"Final-Recipient: rfc822; customer@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
              b"--R\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: Paula <portal.contrib@example.com>\r\nSubject: Pump P-7\r\n"
              b"--R--")
    message = _mixed(b"Content-Type: text/plain\r\n\r\nThe customer address bounced.", report,
                     b"Content-Type: message/disposition-notification\r\n\r\nReporting-UA: pc.example.com; Foomail\r\n"
                     b"Disposition: manual-action/MDN-sent-manually; displayed\r\n",
                     b"Content-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nVersion: 1\r\n")
    files = {item.filename: item for item in message.attachments}
    assert sorted(files) == ["delivery-status.txt", "disposition-notification.txt", "feedback-report.txt",
                             "original-headers.txt"]
    assert all(item.content_type == "text/plain" for item in files.values())
    assert files["delivery-status.txt"].payload == (
        b"Reporting-MTA: dns; mx.example.com\r\n\r\n"
        b"Final-Recipient: rfc822; customer@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n")
    assert b"Disposition: manual-action/MDN-sent-manually; displayed" in files["disposition-notification.txt"].payload
    assert b"Feedback-Type: abuse" in files["feedback-report.txt"].payload
    assert files["original-headers.txt"].payload.startswith(b"From: Paula <portal.contrib@example.com>\r\nSubject: Pump P-7")
    assert "Reporting-MTA" not in message.text_plain and "Feedback-Type" not in message.text_plain


def test_a_name_of_dots_only_is_no_name():
    # ".." and "." were kept as file names (a MIME review).
    assert _file_named(b'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="../../.."') == "attachment-1.pdf"
    assert _file_named(b'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="."') == "attachment-1.pdf"
    assert _file_named(b'Content-Type: application/pdf; name="report.pdf"\r\nContent-Disposition: attachment; filename=".."') == "report.pdf"
    assert _file_named(b'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="..report.pdf"') == "..report.pdf"
