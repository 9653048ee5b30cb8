"""Decoding the parts of a message: the charset fallback chain, its defects, files, inline images, forwards."""

from __future__ import annotations

import hashlib

from gateway.message import parse

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


def test_format_flowed_text_is_joined_into_paragraphs():
    body = b"The seal was worn and \r\nhas been replaced.\r\n\r\n> Quoted soft \r\n> break.\r\n-- \r\nPaula\r\n"
    message = _parse(b"Content-Type: text/plain; charset=utf-8; format=flowed", body)
    assert message.text_plain.replace("\r", "").split("\n")[:5] == [
        "The seal was worn and has been replaced.", "", "> Quoted soft break.", "-- ", "Paula"]
    delsp = _parse(b"Content-Type: text/plain; charset=utf-8; format=flowed; delsp=yes", b"Pres \r\nsure\r\n")
    assert delsp.text_plain.startswith("Pressure")
