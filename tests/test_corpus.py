"""The corpus: messages shaped like real clients' mail, signed and sent end to end, each with its expected note."""

from __future__ import annotations

import email.utils
import hashlib
import html
import json
import re
import uuid
from pathlib import Path

import pytest

from conftest import Mailer

from gateway.journal import Journal
from gateway.testing.odoo_demo import PAULA_PARTNER_ID, TASK_ID

CORPUS = Path(__file__).parent / "data" / "corpus"
SCENARIOS = sorted(path.name.removesuffix(".eml") for path in CORPUS.glob("*.eml"))
_IMAGE_SOURCE = re.compile(r'src="/web/image/(\d+)\?access_token=([^"]+)"')


def test_corpus_is_large_enough_and_every_message_has_its_expectation():
    assert len(SCENARIOS) >= 30
    for name in SCENARIOS:
        assert (CORPUS / f"{name}.expected.json").is_file(), name


def _message(name: str, to: str) -> bytes:
    """The .eml with its placeholders filled in, at the byte level: some messages are not UTF-8."""
    raw = (CORPUS / f"{name}.eml").read_bytes()
    values = {b"$TO": to, b"$DATE": email.utils.formatdate(), b"$MESSAGE_ID": f"<{uuid.uuid4().hex}@example.com>"}
    for placeholder, value in values.items():
        raw = raw.replace(placeholder, value.encode("ascii"))
    # Mail travels with CRLF line ends (RFC 5321 section 2.3.8), whatever a checkout did to the file.
    return re.sub(rb"\r?\n", b"\r\n", raw)


def _text(fragment: str) -> str:
    """HTML as the reader sees its characters: entities resolved, so expectations stay plain text."""
    return html.unescape(fragment)


@pytest.mark.parametrize("name", SCENARIOS)
def test_corpus_message(name, test_odoo, start_gateway, dns_server, dkim_keys):
    expected = json.loads((CORPUS / f"{name}.expected.json").read_text(encoding="utf-8"))
    gateway = start_gateway(dns_server.port, rules_extra=expected.get("rules_extra", ""))
    mailer = Mailer(gateway, dkim_keys)
    target = {"kind": "note", "model": "project.task", "res_id": TASK_ID, **expected.get("target", {})}
    to = mailer.address(target["kind"], target["model"], target["res_id"])
    reply = mailer.send(mailer.sign(_message(name, to)), to)

    with Journal(gateway.services.config.journal_path) as journal:
        [row] = journal.recent(5)
    for defect in expected.get("defects", []):
        assert defect in row.defects, (defect, row.defects)

    assert reply.startswith(expected.get("reply", "250 2.0.0 Filed as Odoo message ")), reply
    if not reply.startswith("250"):
        assert [call for call in test_odoo.calls if call.model_method == "message_post"] == []
        return

    message_id = int(reply.rsplit(" ", 1)[1])
    stored = test_odoo.message(message_id)
    body = stored["body"]
    kept, _, trimmed = body.partition("<details>")
    kept, trimmed = _text(kept), _text(trimmed)

    assert "by email from Paula Contributor" in body
    if "subject" in expected:
        assert f"<strong>{html.escape(expected['subject'], quote=False)}</strong>" in body
    for text in expected.get("kept_contains", []):
        assert text in kept, text
    for text in expected.get("kept_excludes", []):
        assert text not in kept, text
    for text in expected.get("trimmed_contains", []):
        assert text in trimmed, text
    for text in expected.get("note_contains", []):
        assert text in _text(body), text
    for text in expected.get("nowhere", []):
        assert text not in _text(body), text
    if expected.get("no_details"):
        assert "<details>" not in body
    if expected.get("trimmed_contains"):
        assert "<summary>" in body  # collapsed, with a heading the reader can open

    attachment_ids = sorted(stored.get("attachment_ids") or [])
    files = {test_odoo.record("ir.attachment", aid, ["name"])["name"]: test_odoo.attachment_bytes(aid)
             for aid in attachment_ids}
    wanted = expected.get("attachments", [])
    assert sorted(files) == sorted(item["name"] for item in wanted)
    for item in wanted:
        if "sha256" in item:
            assert hashlib.sha256(files[item["name"]]).hexdigest() == item["sha256"], item["name"]
        if "contains" in item:
            assert item["contains"].encode() in files[item["name"]]
    for attachment_id in attachment_ids:
        record = test_odoo.record("ir.attachment", attachment_id, ["res_model", "res_id"])
        assert (record["res_model"], record["res_id"]) == (target["model"], target["res_id"])

    images = _IMAGE_SOURCE.findall(body)
    assert len(images) == expected.get("inline_images", 0)
    for attachment_id, token in images:
        assert int(attachment_id) in attachment_ids
        assert test_odoo.record("ir.attachment", int(attachment_id), ["access_token"])["access_token"] == token

    [filing] = test_odoo.filings()
    if target["kind"] == "note":
        assert filing.call.kwargs["partner_ids"] == expected.get("partner_ids", [])
        # A note is never emailed to anyone but the internal users the sender named.
        assert sorted(mail.partner_id for mail in test_odoo.outbox) == expected.get("outbox_partner_ids", [])
        assert message_id not in test_odoo.portal_chatter_ids("project.task", TASK_ID, partner_id=PAULA_PARTNER_ID)
    else:
        assert message_id in test_odoo.portal_chatter_ids(target["model"], target["res_id"], partner_id=PAULA_PARTNER_ID)
