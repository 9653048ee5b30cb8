"""End to end: signed mail over loopback SMTP, keys from a real DNS server, posts checked in the test Odoo."""

from __future__ import annotations

import hashlib
import re
import smtplib
import time

import pytest

from conftest import ALIAS_DOMAIN, SECRET, SELECTOR, Mailer

from gateway import address
from gateway.config import load_config
from gateway.journal import Journal
from gateway.pipeline import Services
from gateway.resolver import CACHED_KEY_NOTE, CACHED_MISS_NOTE
from gateway.testing.dkim import generate_ed25519_key, shared_rsa_key, sign
from gateway.testing.dns import DnsServer, silent_nameservers
from gateway.testing.odoo_demo import (ARCHIVED_EMAIL, CONTRIBUTOR_GROUP_ID, MARC_PARTNER_ID, PAULA_PARTNER_ID,
                                       PAULA_UID, PETER_EMAIL, PETER_PARTNER_ID, PRIVATE_TASK_ID, PROJECT_ID,
                                       SALE_ORDER_ID, TASK_ID)
from gateway.testing.sending import compose

PAULA = "portal.contrib@example.com"


def _posts(test_odoo):
    return [call for call in test_odoo.calls if call.model_method == "message_post"]


def _filed_ids(local, model, res_id, sender=PAULA):
    """The Message-IDs a message <local@example.com> may be filed under on a record (gateway/post.py):
    its own, its record's own, and its sender's own (a digest of the sender's address)."""
    digest = hashlib.sha256(sender.encode()).hexdigest()[:12]
    return [f"<{local}@example.com>", f"<{local}.{model}-{res_id}@example.com>",
            f"<{local}.{model}-{res_id}.from-{digest}@example.com>"]


def _journal(gateway):
    with Journal(gateway.services.config.journal_path) as journal:
        return journal.recent(50)


def test_note_from_contributor_is_filed_as_internal_log_note(test_odoo, gateway, mailer):
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<pump-p7@example.com>"))
    reply = mailer.send(raw, to)
    assert reply.startswith("250 2.0.0 Filed as Odoo message ")

    [post] = _posts(test_odoo)
    assert post.model == "project.task" and post.args == [[TASK_ID]]
    assert post.kwargs["subtype_xmlid"] == "mail.mt_note"
    assert post.kwargs["message_type"] == "comment"
    assert post.kwargs["body_is_html"] is True
    assert post.kwargs["author_id"] == PAULA_PARTNER_ID
    assert post.kwargs["message_id"] == "<pump-p7@example.com>"
    assert post.kwargs["partner_ids"] == []
    assert post.context["mail_create_nosubscribe"] is True and post.context["mail_post_autofollow"] is False

    message_id = int(reply.rsplit(" ", 1)[1])
    stored = test_odoo.message(message_id)
    assert stored["subtype_xmlid"] == "mail.mt_note"
    assert "the seal is worn" in stored["body"] and "&lt;p&gt;" not in stored["body"]
    assert 'href="https://example.com/reports/p7"' in stored["body"]
    assert "Paula Contributor" in stored["body"]  # the template says who sent it by email

    # Never visible or sent to customers: not in the portal chatter, no email went out.
    assert message_id not in test_odoo.portal_chatter_ids("project.task", TASK_ID, partner_id=PAULA_PARTNER_ID)
    assert test_odoo.outbox == []
    # The gateway did not subscribe itself to the record.
    assert test_odoo.followers("project.task", TASK_ID) == [42, 43, 7, 3]

    [row] = _journal(gateway)
    assert (row.verdict, row.dkim_domain, row.odoo_message_id, row.res_id) == ("filed", "example.com", message_id, TASK_ID)
    assert row.message_id == "<pump-p7@example.com>" and row.from_address == PAULA


def test_html_body_is_kept_but_sanitized(test_odoo, gateway, mailer):
    to = mailer.address("note", "sale.order", SALE_ORDER_ID)
    reply = mailer.send(mailer.sign(mailer.message("note_html_from_contributor.eml", to)), to)
    assert reply.startswith("250 ")
    [post] = _posts(test_odoo)
    body = post.kwargs["body"]
    assert "<b>fine</b>" in body
    for dangerous in ("<script", "onclick", "javascript:", "<style", "color:red"):
        assert dangerous not in body
    # sale.order forces autofollow unless told not to; the gateway tells it not to.
    assert post.context["mail_post_autofollow"] is False
    assert test_odoo.followers("sale.order", SALE_ORDER_ID) == [3, 42, 43]


def test_reply_is_filed_as_public_comment(test_odoo, gateway, mailer):
    to = mailer.address("reply", "project.task", TASK_ID)
    reply = mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to)), to)
    assert reply.startswith("250 ")
    [filing] = test_odoo.filings()
    assert filing.call.model_method == "message_process" and filing.subtype_xmlid == "mail.mt_comment"
    message_id = int(reply.rsplit(" ", 1)[1])
    assert test_odoo.message(message_id)["subtype_xmlid"] == "mail.mt_comment"
    assert message_id in test_odoo.portal_chatter_ids("project.task", TASK_ID, partner_id=PAULA_PARTNER_ID)


def test_a_public_reply_names_its_sender_without_the_address(test_odoo, gateway, mailer):
    # Found by a review: the reply's first line was "Message by email from Paula Contributor
    # <portal.contrib@example.com>", shown to every customer following the record, in the portal and
    # in Odoo's notification emails; Odoo's portal shows an author's name only. A note keeps it.
    reply_to, note_to = (mailer.address(kind, "project.task", TASK_ID) for kind in ("reply", "note"))
    raw = compose(PAULA, reply_to, "Pump", "Seal replaced.", sender_name="Paula Contributor")
    reply = int(mailer.send(mailer.sign(raw), reply_to).rsplit(" ", 1)[1])
    body = test_odoo.message(reply)["body"]
    assert "<p><em>Message by email from Paula Contributor</em></p>" in body
    assert PAULA not in body
    [shown] = [row for row in test_odoo.portal_chatter("project.task", TASK_ID, PETER_PARTNER_ID) if row["id"] == reply]
    assert PAULA not in shown["body"]
    raw = compose(PAULA, note_to, "Pump", "Seal worn.", sender_name="Paula Contributor")
    note = int(mailer.send(mailer.sign(raw), note_to).rsplit(" ", 1)[1])
    assert f"Internal note by email from Paula Contributor &lt;{PAULA}&gt;" in test_odoo.message(note)["body"]


def test_a_reply_names_the_senders_odoo_user_whatever_the_from_display_name(test_odoo, gateway, mailer):
    # Found by a behaviour review: docs/content.md said a reply begins "Message by email from Name (or
    # `Message by email` when From has no display name)", but the name is the sender's Odoo user's
    # (pipeline: sender_name = ctx.user.name or ctx.message.from_name). The docs now say so, with
    # the two cases sent here.
    from pathlib import Path

    content = " ".join((Path(__file__).parent.parent / "docs" / "content.md").read_text().split())
    assert ('`From: "P. C." <address>`, or a From with no display name at all, still gives `Message by email '
            'from Paula Contributor` when that is the user\'s name') in content
    reply_to = mailer.address("reply", "project.task", TASK_ID)
    for display_name in ("P. C.", ""):
        raw = compose(PAULA, reply_to, "Pump", "Seal replaced.",
                      sender_name=display_name)
        reply = mailer.send(mailer.sign(raw), reply_to)
        assert reply.startswith("250 2.0.0 Filed"), reply
        body = test_odoo.message(int(reply.rsplit(" ", 1)[1]))["body"]
        assert body.startswith("<p><em>Message by email from Paula Contributor</em></p>"), body
        assert "P. C." not in body


@pytest.mark.parametrize("scenario, sender, expected", [
    ("note_from_non_member.eml", "portal.plain@example.com", "550 5.7.1 Sender may not post internal notes"),
    ("note_from_unknown_user.eml", "stranger@example.com", "550 5.7.1 No Odoo user has this sender address"),
    ("note_from_archived_user.eml", ARCHIVED_EMAIL, "550 5.7.1 The Odoo user of this sender is archived"),
])
def test_sender_not_allowed_to_post_notes_is_refused(test_odoo, gateway, mailer, scenario, sender, expected):
    to = mailer.address("note", "project.task", TASK_ID)
    reply = mailer.send(mailer.sign(mailer.message(scenario, to)), to, mail_from=sender)
    assert reply.startswith(expected)
    assert _posts(test_odoo) == []
    [row] = _journal(gateway)
    assert row.verdict == "refused" and row.smtp_reply == reply


def test_two_active_users_with_the_senders_address_are_refused(test_odoo, gateway, mailer):
    # Found by a mutation audit: nothing showed that the gateway refuses to guess which of two
    # Odoo users wrote, and filing as the first one found could give one user's note to another.
    test_odoo.add_user("paula.again", "Paula Again", email=PAULA, internal=True)
    to = mailer.address("note", "project.task", TASK_ID)
    reply = mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to)), to)
    assert reply == f"550 5.7.1 Several Odoo users have this sender address: {PAULA} (2 users)"
    assert _posts(test_odoo) == []
    [row] = _journal(gateway)
    assert (row.verdict, row.refusal_class) == ("refused", "AmbiguousSender")


def test_internal_user_is_refused_where_the_rules_do_not_allow_internal_users(test_odoo, start_gateway, dns_server,
                                                                                dkim_keys):
    # Found by a mutation audit: allow_internal_users = false was tested nowhere. Marc is an
    # internal user who may read the task; by default his note is filed.
    marc = "mark.brown23@example.com"
    note = compose(marc, Mailer.address("note", "project.task", TASK_ID), "Pump", "Seal worn.", sender_name="Marc")
    strict = Mailer(start_gateway(dns_server.port, note={"allow_internal_users": False}), dkim_keys)
    to = strict.address("note", "project.task", TASK_ID)
    assert strict.send(strict.sign(note), to, mail_from=marc) == (
        "550 5.7.1 Internal users may not post here by email: answer in the record's chatter in Odoo")
    assert _posts(test_odoo) == []
    default = Mailer(start_gateway(dns_server.port), dkim_keys)
    assert default.send(default.sign(note), to, mail_from=marc).startswith("250 2.0.0 Filed")
    [post] = _posts(test_odoo)
    assert post.kwargs["author_id"] == MARC_PARTNER_ID


def test_non_member_may_still_file_a_public_reply(test_odoo, gateway, mailer):
    to = mailer.address("reply", "project.task", TASK_ID)
    reply = mailer.send(mailer.sign(mailer.message("note_from_non_member.eml", to)), to)
    assert reply.startswith("250 ")
    assert test_odoo.message(int(reply.rsplit(" ", 1)[1]))["subtype_xmlid"] == "mail.mt_comment"


def test_contributor_who_does_not_follow_the_record_is_refused(test_odoo, gateway, mailer):
    to = mailer.address("note", "project.task", PRIVATE_TASK_ID)
    reply = mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to)), to)
    assert reply.startswith("550 5.7.1 Sender has no access to this record")
    assert _posts(test_odoo) == []


def test_record_that_does_not_exist_is_refused(test_odoo, gateway, mailer):
    to = mailer.address("note", "project.task", 999999)
    reply = mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to)), to)
    assert reply.startswith("550 5.1.1 The record of this address does not exist")


@pytest.fixture
def followers_gateway(start_gateway, dns_server, dkim_keys) -> Mailer:
    """A gateway whose rules use the followers policy, the one whose record read can start early."""
    return Mailer(start_gateway(dns_server.port, access="followers"), dkim_keys)


def test_followers_are_read_while_the_sender_is_looked_up(test_odoo, followers_gateway):
    mailer = followers_gateway
    # Issue 6: the record's followers do not depend on the sender, so the two reads overlap
    # in time instead of costing two round trips one after the other.
    test_odoo.latency = {"search_read": 0.3, "*": 0.0}
    to = mailer.address("note", "project.task", TASK_ID)
    reply = mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to)), to)
    assert reply.startswith("250 ")
    [user_read] = [call for call in test_odoo.calls if call.model == "res.users" and call.model_method == "search_read"]
    [record_read] = [call for call in test_odoo.calls
                     if call.model == "project.task" and call.model_method == "search_read"]
    assert record_read.started < user_read.ended and user_read.started < record_read.ended


def test_unknown_sender_is_refused_as_such_even_on_a_missing_record(test_odoo, followers_gateway):
    mailer = followers_gateway
    # Both reads run at once; the refusal is still the one of the first stage in STAGES order.
    to = mailer.address("note", "project.task", 999999)
    raw = mailer.sign(mailer.message("note_from_unknown_user.eml", to))
    reply = mailer.send(raw, to, mail_from="stranger@example.com")
    assert reply.startswith("550 5.7.1 No Odoo user has this sender address")


def _reads(test_odoo, model):
    return [call for call in test_odoo.calls if call.model == model and call.model_method == "search_read"]


def test_by_default_every_message_is_checked_in_odoo(test_odoo, followers_gateway):
    mailer = followers_gateway
    to = mailer.address("note", "project.task", TASK_ID)
    for _ in range(2):
        assert mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to)), to).startswith("250 ")
    assert len(_reads(test_odoo, "res.users")) == 2 and len(_reads(test_odoo, "project.task")) == 2
    # The contributor leaves the group: the very next message is refused.
    test_odoo.set_group(PAULA_UID, CONTRIBUTOR_GROUP_ID, member=False)
    reply = mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to)), to)
    assert reply.startswith("550 5.7.1 Sender may not post internal notes")


def test_read_cache_reuses_user_and_followers_but_never_the_duplicate_check(test_odoo, start_gateway, dns_server,
                                                                            dkim_keys):
    mailer = Mailer(start_gateway(dns_server.port, read_cache_seconds=60, access="followers"), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    for _ in range(3):
        assert mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to)), to).startswith("250 ")
    assert len(_reads(test_odoo, "res.users")) == 1 and len(_reads(test_odoo, "project.task")) == 1
    # The duplicate check reads who filed what (a Message-ID of another author is not a duplicate).
    assert len(_reads(test_odoo, "mail.message")) == 3 and len(_posts(test_odoo)) == 3


def test_one_message_to_the_note_addresses_of_two_tasks_is_filed_on_both(test_odoo, start_gateway, dns_server,
                                                                         dkim_keys):
    # Found by a mutation audit: with a read cache the followers read cannot ask whether the message
    # is on the record, so every delivery searches mail.message (post.look_up), and nothing showed
    # that search is made on the delivery's own record: on the model alone, the second task's copy
    # would be answered "Already filed" with the first task's note, and never filed.
    mailer = Mailer(start_gateway(dns_server.port, read_cache_seconds=60, access="followers"), dkim_keys)
    second = test_odoo.add_record("project.task", {"name": "Second pump", "project_id": PROJECT_ID},
                                  followers=[PAULA_PARTNER_ID])
    first_to, second_to = (mailer.address("note", "project.task", res_id) for res_id in (TASK_ID, second))
    raw = mailer.sign(mailer.message("note_from_contributor.eml", first_to, "<both-tasks@example.com>"))
    for to in (first_to, second_to):
        assert mailer.send(raw, to).startswith("250 2.0.0 Filed as Odoo message ")
    assert mailer.send(raw, second_to).startswith("250 2.0.0 Already filed as Odoo message ")
    assert [(post.args, post.kwargs["message_id"]) for post in _posts(test_odoo)] == [
        ([[TASK_ID]], "<both-tasks@example.com>"), ([[second]], "<both-tasks@example.com>")]


# --- Sender authentication: forged, unsigned, unaligned ------------------------------------------


def test_forged_from_without_signature_is_refused(test_odoo, gateway, mailer):
    to = mailer.address("note", "project.task", TASK_ID)
    reply = mailer.send(mailer.message("note_from_contributor.eml", to), to)
    assert reply.startswith("550 5.7.1 Sender not authenticated") and "no DKIM signature" in reply
    assert _posts(test_odoo) == []


def test_from_folded_over_two_lines_is_authenticated_and_filed(test_odoo, gateway, mailer):
    # Found by a mutation audit: a long display name pushes the address to a continuation line
    # (RFC 5322 section 2.2.3), and no test showed that the From read is the unfolded field.
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.message("note_from_contributor.eml", to).replace(
        b"From: Paula Contributor <portal.contrib@example.com>",
        b"From: Paula Contributor of Site Inspections and Maintenance\r\n <Portal.Contrib@example.com>")
    assert b"\r\n <Portal.Contrib@example.com>" in raw
    reply = mailer.send(mailer.sign(raw), to)
    assert reply.startswith("250 2.0.0 Filed as Odoo message "), reply
    [post] = _posts(test_odoo)
    assert post.kwargs["author_id"] == PAULA_PARTNER_ID
    [row] = _journal(gateway)
    assert row.from_address == PAULA


def test_signature_of_another_domain_is_refused(test_odoo, gateway, mailer):
    to = mailer.address("note", "project.task", TASK_ID)
    reply = mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to), domain="evil.example"), to)
    assert reply.startswith("550 5.7.1") and "does not align" in reply
    assert _posts(test_odoo) == []


def test_length_limited_signature_with_appended_text_is_refused(test_odoo, gateway, mailer):
    to = mailer.address("note", "project.task", TASK_ID)
    signed = mailer.sign(mailer.message("note_from_contributor.eml", to), length=True)
    reply = mailer.send(signed + b"Appended by an attacker: wire the money to me.\r\n", to)
    assert reply.startswith("550 5.7.1") and "l=" in reply
    assert _posts(test_odoo) == []


def test_signature_that_does_not_cover_from_is_refused(test_odoo, gateway, mailer):
    to = mailer.address("note", "project.task", TASK_ID)
    signed = mailer.sign(mailer.message("note_from_contributor.eml", to), include_headers=[b"to", b"subject", b"date"])
    reply = mailer.send(signed, to)
    assert reply.startswith("550 5.7.1") and "From is not signed" in reply


def test_two_from_headers_are_refused(test_odoo, gateway, mailer):
    to = mailer.address("note", "project.task", TASK_ID)
    reply = mailer.send(mailer.sign(mailer.message("two_from_headers.eml", to)), to)
    assert reply.startswith("550 5.7.1 The message must have exactly one From header")
    assert _posts(test_odoo) == []


@pytest.mark.parametrize("from_header, detail", [
    ("g:; portal.contrib@example.com", "From cannot be parsed"),  # a group, then a mailbox
    ("Paula Contributor www.<portal.contrib@example.com>", "From cannot be parsed"),  # a period before "<"
    ("portal.contrib@example.com, g:;", "From uses group syntax"),  # a mailbox, then a group
])
def test_from_the_email_package_fails_on_is_refused_for_good(test_odoo, gateway, mailer, from_header, detail):
    # Found by a fuzzing review: the email package's parser raised an AttributeError of its own
    # ('Group' object has no attribute 'local_part'), which the gateway did not expect: 451 on every
    # retry, the message lost once the sender gave up. Such a From is refused for good.
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.message("note_from_contributor.eml", to).replace(
        b"From: Paula Contributor <portal.contrib@example.com>", b"From: " + from_header.encode())
    reply = mailer.send(mailer.sign(raw), to)
    assert reply.startswith(f"550 5.7.1 The message must have exactly one From header with one address: {detail}"), reply
    assert _posts(test_odoo) == []


def test_from_with_an_internationalised_address_is_refused_as_such(test_odoo, gateway, mailer):
    # Found by a review: the reply said "must have exactly one From header with one address: From is
    # malformed: local-part contains non-ASCII characters)", the email package's defect text with its
    # stray parenthesis, for a message with exactly one From.
    to = mailer.address("note", "project.task", TASK_ID)
    reply = mailer.send(mailer.sign(mailer.message("from_internationalised_address.eml", to)), to)
    assert reply == ("550 5.6.7 Internationalised sender addresses are not supported, senders are matched by "
                     "ASCII addresses: the From address has a non-ASCII local part")
    assert _posts(test_odoo) == []


def test_rsa_sha1_signature_is_refused(test_odoo, gateway, mailer):
    to = mailer.address("note", "project.task", TASK_ID)
    reply = mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to), algorithm=b"rsa-sha1"), to)
    assert reply.startswith("550 5.7.1") and "rsa-sha1" in reply


def test_note_signed_with_ed25519_only_is_filed(test_odoo, start_gateway, dkim_keys):
    # docs/operations.md says ed25519-sha256 (RFC 8463) is accepted, but a default install refused
    # it ("ed25519-sha256 needs PyNaCl, which is not installed"): dkimpy verifies ed25519 with
    # PyNaCl, which was not among the dependencies (found by a review of the test suite, whose
    # ed25519 test was skipped without PyNaCl).
    ed_key = generate_ed25519_key()
    with DnsServer({ed_key.record_name("ed", "example.com"): ed_key.txt_record}) as dns:
        mailer = Mailer(start_gateway(dns.port), dkim_keys)
        to = mailer.address("note", "project.task", TASK_ID)
        raw = sign(mailer.message("note_from_contributor.eml", to, "<ed25519-only@example.com>"), ed_key,
                   "example.com", "ed")
        assert raw.count(b"DKIM-Signature:") == 1 and b"a=ed25519-sha256" in raw
        reply = mailer.send(raw, to)
        assert reply.startswith("250 2.0.0 Filed as Odoo message "), reply
    [post] = _posts(test_odoo)
    assert post.kwargs["message_id"] == "<ed25519-only@example.com>" and post.args == [[TASK_ID]]
    [row] = _journal(mailer.gateway)
    assert (row.verdict, row.dkim_domain, row.odoo_message_id) == ("filed", "example.com", int(reply.rsplit(" ", 1)[1]))


def test_old_signature_is_refused_by_default(test_odoo, gateway, mailer):
    # A captured signed note replayed two years later (found by a security review: with
    # max_signature_age_days 0 by default it was filed again).
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to), timestamp=int(time.time()) - 2 * 365 * 86400)
    reply = mailer.send(raw, to)
    assert reply.startswith("550 5.7.1 Sender not authenticated") and "signature is older than 30 days" in reply
    assert _posts(test_odoo) == []


def test_signature_dated_ahead_of_the_gateways_clock_is_deferred_never_filed(test_odoo, gateway, mailer, monkeypatch):
    # Day-2 operations review: with the gateway's clock 20 minutes slow, every freshly signed note
    # got "550 5.7.1 ... signature is dated in the future" and bounced. It is deferred now, and
    # filed by the retry once the clocks agree; nothing is posted before.
    from gateway import senderauth

    to = mailer.address("note", "project.task", TASK_ID)
    signed_at = int(time.time()) + 1200
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<ahead@example.com>"), timestamp=signed_at)
    reply = mailer.send(raw, to)
    assert reply.startswith("451 4.7.0 The DKIM signature is dated ahead of the gateway's clock, try again later: "
                            f"its t= is {senderauth._when(signed_at)}, 20 minutes ahead of the gateway's clock ("), reply
    assert reply.endswith("which allows 15 minutes; a retry passes once the clocks agree"), reply
    # Under a bad signature of the same domain too: the good one decides, and says "later", not "never".
    below = sign(raw, mailer.keys["example.com"], "example.com", "nosuchkey")
    assert mailer.send(below, to).startswith("451 4.7.0 The DKIM signature is dated ahead of the gateway's clock")
    # A retry while the clocks still disagree is deferred again, not taken for a note already filed.
    assert mailer.send(raw, to).startswith("451 4.7.0 ")
    assert _posts(test_odoo) == []
    rows = _journal(gateway)
    assert [(row.verdict, row.refusal_class) for row in rows] == [("deferred", "SignatureDatedAhead")] * 3
    # The clocks agree (the gateway's set right): the same message is filed, once.
    real = time.time
    monkeypatch.setattr(senderauth, "time", type("Clock", (), {"time": staticmethod(lambda: real() + 1200),
                                                               "monotonic": staticmethod(time.monotonic)}))
    assert mailer.send(raw, to).startswith("250 2.0.0 Filed as Odoo message ")
    assert len(_posts(test_odoo)) == 1


def test_a_good_signature_is_deferred_up_to_just_under_dkimpys_ten_hours_then_refused(test_odoo, gateway, mailer):
    # Found by a behaviour review: the deferral was documented up to 5 days ahead, but dkimpy refuses
    # a t= more than 10 hours past the real clock before the gateway's own check, so 11 and 48 hours
    # ahead bounced with "550 5.7.1 ... t= value is in the future (...)". The bound is just under
    # dkimpy's now, and a t= past it is refused with the gateway's reason. Real clock, no time patched.
    from gateway import senderauth

    to = mailer.address("note", "project.task", TASK_ID)
    signed_at = int(time.time() + 9.5 * 3600)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<nine@example.com>"), timestamp=signed_at)
    reply = mailer.send(raw, to)
    assert reply.startswith("451 4.7.0 The DKIM signature is dated ahead of the gateway's clock, try again later: "
                            f"its t= is {senderauth._when(signed_at)}, 9 hours 30 minutes ahead of the gateway's "
                            "clock ("), reply
    signed_at = int(time.time() + 10.5 * 3600)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<ten@example.com>"), timestamp=signed_at)
    assert mailer.send(raw, to) == (
        "550 5.7.1 Sender not authenticated, no valid DKIM signature aligned with the From domain: signature is "
        f"dated in the future ({senderauth._when(signed_at)}), more than 9 hours 50 minutes ahead of the gateway's clock")
    assert _posts(test_odoo) == []
    rows = _journal(gateway)
    assert [(row.verdict, row.refusal_class) for row in rows] == [("refused", "SenderNotAuthenticated"),
                                                                  ("deferred", "SignatureDatedAhead")]


def test_signature_without_t_is_filed_unless_the_rules_require_t(test_odoo, start_gateway, dns_server, dkim_keys):
    strict = Mailer(start_gateway(dns_server.port, rules_extra="[sender]\nrequire_signature_time = true\n"), dkim_keys)
    to = strict.address("note", "project.task", TASK_ID)
    undated = strict.sign(strict.message("note_from_contributor.eml", to), dated=False)
    assert strict.send(undated, to) == ("550 5.7.1 Sender not authenticated, no valid DKIM signature aligned with "
                                        "the From domain: signature has no t=, its age cannot be checked")
    default = Mailer(start_gateway(dns_server.port), dkim_keys)
    assert default.send(undated, to).startswith("250 2.0.0 Filed")
    assert len(_posts(test_odoo)) == 1


# Found by a security review: dkimpy reads neither t= nor h= of a key record, and a key in testing
# mode, or one that accepts only sha1, authenticated the sender with an rsa-sha256 signature.
@pytest.mark.parametrize("selector, tag, reason", [
    ("testing", "t=y", "the DKIM key of example.com/testing is in testing mode (t=y): example.com must remove y "
                       "from t= of the TXT record testing._domainkey.example.com"),
    ("sha1only", "h=sha1", "the DKIM key of example.com/sha1only accepts only h=sha1, not the sha256 of "
                           "rsa-sha256: example.com must add sha256 to h= of the TXT record "
                           "sha1only._domainkey.example.com, or remove h="),
])
def test_signature_whose_key_record_says_it_must_not_count_is_refused(test_odoo, start_gateway, dkim_keys,
                                                                      selector, tag, reason):
    key = dkim_keys["example.com"]
    with DnsServer({key.record_name(SELECTOR, "example.com"): key.txt_record,
                    key.record_name(selector, "example.com"): f"v=DKIM1; k=rsa; {tag}; p={key.public_key}"}) as dns:
        mailer = Mailer(start_gateway(dns.port), dkim_keys)
        to = mailer.address("note", "project.task", TASK_ID)
        raw = sign(mailer.message("note_from_contributor.eml", to), key, "example.com", selector)
        assert mailer.send(raw, to) == ("550 5.7.1 Sender not authenticated, no valid DKIM signature aligned with "
                                        f"the From domain: {reason}")
        assert _posts(test_odoo) == []
        # Such a signature is as good as none: one that counts, below it, still files the note.
        raw = sign(mailer.sign(mailer.message("note_from_contributor.eml", to)), key, "example.com", selector)
        assert mailer.send(raw, to).startswith("250 2.0.0 Filed")
        assert len(_posts(test_odoo)) == 1


def test_mail_signed_with_either_key_of_a_selector_with_two_key_records_is_filed(test_odoo, start_gateway, dkim_keys):
    # Found by a DNS review: during a key rotation's overlap (the old and the new key at one selector),
    # or with an unrelated TXT record next to the key, only the first record of the answer was tried.
    # Servers shuffle them (DnsServer too), and the cache keeps one order for up to an hour: for 5
    # of 8 such selectors every message signed with the other key got "550 5.7.1 ... signature did
    # not verify" for that long.
    old, new = dkim_keys["example.com"], shared_rsa_key(name="rotated-in")
    with DnsServer() as dns:
        for record in (old.txt_record, new.txt_record):
            dns.add_txt(old.record_name("rotating", "example.com"), record)
        for record in ("some-site-verification=abc123", old.txt_record):
            dns.add_txt(old.record_name("verified", "example.com"), record)
        mailer = Mailer(start_gateway(dns.port), dkim_keys)
        to = mailer.address("note", "project.task", TASK_ID)
        replies = [mailer.send(sign(mailer.message("note_from_contributor.eml", to), key, "example.com", selector), to)
                   for key, selector in ((old, "rotating"), (new, "rotating"), (new, "rotating"), (old, "rotating"),
                                         (old, "verified"), (old, "verified"))]
        assert all(reply.startswith("250 2.0.0 Filed") for reply in replies), replies
        assert len(_posts(test_odoo)) == 6
        # Signed with neither key: the refusal says how many records were tried.
        stranger = shared_rsa_key(name="stranger")
        raw = sign(mailer.message("note_from_contributor.eml", to), stranger, "example.com", "rotating")
        assert mailer.send(raw, to) == (
            "550 5.7.1 Sender not authenticated, no valid DKIM signature aligned with the From domain: 2 key records "
            "at rotating._domainkey.example.com, none verifies: signature did not verify")
    assert len(_posts(test_odoo)) == 6

def test_a_working_nameserver_behind_two_silent_ones_authenticates_the_sender(test_odoo, start_gateway, dkim_keys):
    # Found by a DNS review: each try ends after 2 s, and [resolver] timeout (4 s by default) bounded
    # the whole lookup, so the third nameserver was never asked: every message got "451 4.4.3 ...
    # timeout looking up ..." after 4 s (three lines in /etc/resolv.conf, the first two down, alike).
    key = dkim_keys["example.com"]
    with DnsServer({key.record_name(SELECTOR, "example.com"): key.txt_record}) as dns, \
            silent_nameservers(["127.0.0.2", "127.0.0.3"], dns.port):
        mailer = Mailer(start_gateway(dns.port, resolver={"nameservers": ["127.0.0.2", "127.0.0.3", "127.0.0.1"],
                                                          "timeout": 4.0}), dkim_keys)
        to = mailer.address("note", "project.task", TASK_ID)
        started = time.monotonic()
        reply = mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to)), to)
        assert reply.startswith("250 2.0.0 Filed as Odoo message "), reply
        assert time.monotonic() - started > 3.5  # the two silent ones were asked first
    assert len(_posts(test_odoo)) == 1

@pytest.mark.parametrize("fault, what", [("refuse", "answered REFUSED"), ("servfail", "answered SERVFAIL"),
                                         ("truncate", "truncated its answer over UDP, and TCP failed: EOFError: EOF")])
def test_what_the_nameserver_did_is_in_the_journal_not_in_the_reply(test_odoo, start_gateway, dkim_keys, fault, what):
    # Found by a DNS review: SERVFAIL, REFUSED (the resolver's access control leaving the gateway out)
    # and a truncated answer whose TCP retry failed were all "no nameserver answered for ...", in the
    # reply, the log and the journal, and dnspython's words were dropped.
    key = dkim_keys["example.com"]
    with DnsServer({key.record_name(SELECTOR, "example.com"): key.txt_record}) as dns:
        getattr(dns, fault)(key.record_name(SELECTOR, "example.com"))
        running = start_gateway(dns.port)
        mailer = Mailer(running, dkim_keys)
        to = mailer.address("note", "project.task", TASK_ID)
        reply = mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to)), to)
    assert reply == ("451 4.4.3 DNS lookup of the DKIM key failed, try again later: no usable answer from the "
                     "nameservers for gateway._domainkey.example.com.")
    [entry] = _journal(running)
    assert entry.decision == (f"refused DnsTemporaryFailure: {reply[10:]} (127.0.0.1:{dns.port} {what})")
    assert entry.smtp_reply == reply
    assert _posts(test_odoo) == []

@pytest.mark.parametrize("record, identity, reason", [
    ("v=DKIM1; k=rsa; t=s; p={rsa}", b"paula@sub.example.com",
     "the DKIM key of example.com/odd has t=s, which allows no subdomain, but the signature's i= is in sub.example.com"),
    ("{ed25519}", None, "the key at odd._domainkey.example.com is of type ed25519 (k=), which cannot verify the "
                        "signature's rsa-sha256"),
    ("v=DKIM1; k=rsa; p=", None, "key revoked (empty p=) at odd._domainkey.example.com"),
])
def test_key_record_that_cannot_verify_the_signature_is_refused_saying_why(test_odoo, start_gateway, dkim_keys,
                                                                         record, identity, reason):
    # Found by a DNS review: a t=s key accepted a signature whose i= is in a subdomain (RFC 6376
    # section 3.6.1 says it must not), an ed25519 key under an rsa-sha256 signature was "malformed
    # DKIM signature: ValueError: The signature must be exactly 64 bytes long", and a revoked key
    # "could not parse RSA public key (b''): ...".
    key = dkim_keys["example.com"]
    published = record.format(rsa=key.public_key, ed25519=generate_ed25519_key().txt_record)
    with DnsServer({key.record_name("odd", "example.com"): published}) as dns:
        mailer = Mailer(start_gateway(dns.port), dkim_keys)
        to = mailer.address("note", "project.task", TASK_ID)
        raw = sign(mailer.message("note_from_contributor.eml", to), key, "example.com", "odd", identity=identity)
        assert mailer.send(raw, to) == ("550 5.7.1 Sender not authenticated, no valid DKIM signature aligned with "
                                        f"the From domain: {reason}")
    assert _posts(test_odoo) == []

def test_a_key_published_after_a_miss_is_found_after_a_reload_and_the_journal_says_the_miss_may_be_cached(
        test_odoo, start_gateway, dkim_keys):
    # Day-2 review: docs/operations.md said `dig +short TXT ...` shows the record "as the gateway
    # reads it", and the journal's "key not found" gave no hint that the gateway may be answering
    # from its cache (a miss is kept for the zone's negative TTL, at most an hour) while dig
    # already shows the key. A reload builds a new resolver: its cache starts empty.
    key = dkim_keys["example.com"]
    with DnsServer({key.record_name(SELECTOR, "example.com"): key.txt_record}, negative_ttl=3600) as dns:
        running = start_gateway(dns.port)
        mailer = Mailer(running, dkim_keys)
        to = mailer.address("note", "project.task", TASK_ID)
        refused = ("550 5.7.1 Sender not authenticated, no valid DKIM signature aligned with the From domain: "
                   "key not found for rotated._domainkey.example.com")

        def send() -> str:
            return mailer.send(sign(mailer.message("note_from_contributor.eml", to), key, "example.com", "rotated"), to)

        assert send() == refused  # The reply says no more than before.
        with Journal(running.services.config.journal_path) as journal:
            [entry] = journal.recent(1)
        assert entry.decision == f"refused SenderNotAuthenticated: {refused[10:]} ({CACHED_MISS_NOTE})"
        assert "cached" not in entry.smtp_reply
        dns.add_txt(key.record_name("rotated", "example.com"), key.txt_record)
        assert send() == refused  # The miss is still cached.
        assert dns.query_count("rotated._domainkey.example.com") == 1
        # What a reload (SIGHUP) does: the services, the resolver and its cache among them, built again.
        new_services = Services.build(load_config(running.config_path))
        old = running.server.server.reload(new_services)
        try:
            assert send().startswith("250 2.0.0 Filed")
        finally:
            running.server.server.reload(old)
            new_services.close()
        assert len(_posts(test_odoo)) == 1


def test_a_key_swapped_at_its_selector_is_asked_of_dns_again_while_the_old_one_is_cached(test_odoo, start_gateway,
                                                                                       dkim_keys):
    # Found by a DNS review: a domain that swapped the key at a selector had every message signed
    # with the new one refused "550 5.7.1 ... signature did not verify" while the old key stayed
    # cached (up to an hour), and the journal's decision said nothing of the cache.
    old, new = dkim_keys["example.com"], shared_rsa_key(name="swapped-in")
    name = old.record_name("swap", "example.com")
    with DnsServer({name: old.txt_record}, ttl=3600) as dns:
        running = start_gateway(dns.port)
        mailer = Mailer(running, dkim_keys)
        to = mailer.address("note", "project.task", TASK_ID)

        def send(key) -> str:
            return mailer.send(sign(mailer.message("note_from_contributor.eml", to), key, "example.com", "swap"), to)

        assert send(old).startswith("250 2.0.0 Filed")
        dns.remove(name)
        dns.add_txt(name, new.txt_record)
        assert send(new).startswith("250 2.0.0 Filed")  # the cached old key failed, DNS was asked again
        assert send(new).startswith("250 2.0.0 Filed")  # the new key is the cached one now
        assert len(_posts(test_odoo)) == 3
        # A signature no key verifies: DNS was asked again less than a minute ago, the journal says
        # the key may be a cached one, the reply no more than before.
        asked = dns.query_count(name)
        refused = ("550 5.7.1 Sender not authenticated, no valid DKIM signature aligned with the From domain: "
                   "signature did not verify")
        assert send(shared_rsa_key(name="stranger")) == refused
        assert dns.query_count(name) == asked
    [entry] = _journal(running)[:1]
    assert entry.decision == f"refused SenderNotAuthenticated: {refused[10:]} ({CACHED_KEY_NOTE})"
    assert len(_posts(test_odoo)) == 3

def _with_broken_signature(signed: bytes, tag: bytes, value: bytes, *, keep_good: bool) -> bytes:
    # The signature with one tag broken, alone or added above the good one.
    end = signed.index(b"\r\nFrom:")
    broken = re.sub(rb"([;\s]" + tag + rb"=)[^;]*", lambda match: match.group(1) + value, signed[:end], count=1)
    return broken + (b"\r\n" + signed if keep_good else signed[end:])


# Found by a security review's fuzzer: dkimpy raised IndexError or binascii.Error on these
# aligned signatures, and the message got 451 4.3.0 Internal error even with a good one below.
@pytest.mark.parametrize("tag, value, reason", [
    (b"i", b"example.com", "i= is not an identity, it has no @"),
    (b"bh", b"@example.com", "bh= is not valid base64"),
    (b"b", b"A===", "b= is not valid base64"),
])
def test_malformed_signature_fails_alone_and_leaves_a_good_one_below(test_odoo, gateway, mailer, tag, value, reason):
    to = mailer.address("note", "project.task", TASK_ID)
    alone = _with_broken_signature(mailer.sign(mailer.message("note_from_contributor.eml", to)), tag, value,
                                   keep_good=False)
    assert mailer.send(alone, to) == ("550 5.7.1 Sender not authenticated, no valid DKIM signature aligned with "
                                      f"the From domain: {reason}")
    above_good = _with_broken_signature(mailer.sign(mailer.message("note_from_contributor.eml", to)), tag, value,
                                        keep_good=True)
    assert mailer.send(above_good, to).startswith("250 2.0.0 Filed")
    assert len(_posts(test_odoo)) == 1


# --- Addresses at RCPT ---------------------------------------------------------------------------


def _rcpt(gateway, *recipients) -> list[tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.ehlo("client.example.com")
        client.mail(PAULA)
        return [client.rcpt(recipient) for recipient in recipients]


def test_tampered_token_is_refused_at_rcpt(gateway, mailer):
    good = mailer.address("note", "project.task", TASK_ID)
    [(code, text)] = _rcpt(gateway, good.replace(f"-{TASK_ID}-", "-61-"))
    assert (code, text.decode()) == (550, "5.1.1 No such gateway address: the address signature is not valid")
    [row] = _journal(gateway)
    assert (row.verdict, row.refusal_class, row.mail_from) == ("refused", "BadAddress", PAULA)
    assert row.smtp_reply == "550 5.1.1 No such gateway address: the address signature is not valid"


def test_other_spellings_of_a_minted_address_are_refused_at_rcpt(gateway, mailer):
    # A review of addresses as credentials: a day with a leading zero and a KELVIN SIGN (U+212A,
    # lowercased to "k") in the local part verified as the minted address; each is a bad address now.
    minted = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "project.task", TASK_ID, issued_day=address.today())
    zero_day = minted.replace(f"-d{address.today()}-", f"-d0{address.today()}-")
    kelvin = minted.replace("task", "tas\u212a")
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.ehlo("client.example.com")
        client.mail(PAULA, ["SMTPUTF8"])
        replies = [client.rcpt(recipient) for recipient in (zero_day, kelvin, minted)]
    assert [(code, text.decode()) for code, text in replies] == [
        (550, "5.1.1 No such gateway address: expected note+<model>-<id>-<signature> or reply+..."),
        (550, "5.1.1 No such gateway address: the local part holds a character that is not ASCII"),
        (250, "2.1.5 OK")]


def test_note_token_used_as_reply_is_refused_at_rcpt(gateway, mailer):
    note = mailer.address("note", "project.task", TASK_ID)
    [(code, _)] = _rcpt(gateway, note.replace("note+", "reply+", 1))
    assert code == 550


def test_unknown_alias_domain_and_malformed_address_are_refused(gateway):
    [(code1, text1), (code2, _)] = _rcpt(gateway, "note+project.task-60-abc@other.example.com", "nonsense@notes.example.com")
    assert code1 == 550 and b"5.1.1 Not an alias domain" in text1
    assert code2 == 550


def test_second_gateway_recipient_gets_452(gateway, mailer):
    first = mailer.address("note", "project.task", TASK_ID)
    second = mailer.address("note", "sale.order", SALE_ORDER_ID)
    [(code1, _), (code2, text2)] = _rcpt(gateway, first, second)
    assert code1 == 250 and code2 == 452 and text2.startswith(b"4.5.3")


def test_model_not_enabled_is_refused_at_rcpt(gateway, mailer):
    [(code, text)] = _rcpt(gateway, mailer.address("note", "res.partner", 3))
    assert code == 550 and b"not enabled" in text


def test_bare_line_feed_in_data_is_refused(test_odoo, gateway, mailer):
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to))
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.ehlo("client.example.com")
        client.mail(PAULA)
        client.rcpt(to)
        # smtplib would turn bare LF into CRLF, so DATA is spoken by hand.
        code, _ = client.docmd("DATA")
        assert code == 354
        client.send(raw.replace(b"on site:", b"on\nsite:") + b".\r\n")
        code, text = client.getreply()
    assert (code, text[:5]) == (550, b"5.6.0")
    assert _posts(test_odoo) == []


def test_size_limit_is_advertised_and_enforced(gateway, mailer):
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.ehlo("client.example.com")
        limit = int(client.esmtp_features["size"])
        assert limit == gateway.services.config.gateway.listener.max_message_size
        code, _ = client.mail(PAULA, [f"SIZE={limit + 1}"])
    assert code == 552


# --- Nothing lost, nothing doubled ----------------------------------------------------------------


def test_same_message_id_twice_gives_one_note(test_odoo, gateway, mailer):
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<once@example.com>"))
    first = mailer.send(raw, to)
    second = mailer.send(raw, to)
    assert first.startswith("250 2.0.0 Filed as Odoo message")
    assert second.startswith("250 2.0.0 Already filed as Odoo message")
    assert first.rsplit(" ", 1)[1] == second.rsplit(" ", 1)[1]
    assert len(_posts(test_odoo)) == 1
    assert [row.verdict for row in _journal(gateway)] == ["duplicate", "filed"]


# What changes in Odoo between a note's first delivery and its retry, and the refusal a new
# message gets under it.
CHANGES = {
    "task archived": (lambda odoo: odoo.archive("project.task", TASK_ID), "550 5.2.1 The record of this address is archived"),
    "sender archived": (lambda odoo: odoo.archive("res.users", PAULA_UID), "550 5.7.1 The Odoo user of this sender is archived"),
    "out of the group": (lambda odoo: odoo.set_group(PAULA_UID, CONTRIBUTOR_GROUP_ID, member=False),
                         "550 5.7.1 Sender may not post internal notes"),
    "unfollowed": (lambda odoo: odoo.remove_follower("project.task", TASK_ID, PAULA_PARTNER_ID),
                   "550 5.7.1 Sender has no access to this record"),
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_retry_of_a_filed_note_is_already_filed_after_its_record_or_sender_changed(test_odoo, gateway, mailer,
                                                                                     change):
    # Found by the lifecycle review: the 250 of a filed note is lost, and before the MTA's retry the
    # task is archived (or Paula, her group membership, her following): identify-sender and
    # authorize refused the retry with a 550 before the post stage could find the note, and the
    # MTA bounced a note that is in Odoo. A new message under the same conditions is still refused.
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<lost-250@example.com>"))
    filed = _filed_id(mailer.send(raw, to))
    apply, refusal = CHANGES[change]
    apply(test_odoo)
    assert mailer.send(raw, to) == f"250 2.0.0 Already filed as Odoo message {filed}"
    other = mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to, "<new-one@example.com>")), to)
    assert other.startswith(refusal), other
    assert len(_posts(test_odoo)) == 1
    assert [row.verdict for row in _journal(gateway)] == ["refused", "duplicate", "filed"]
    assert f"retry of a message filed as Odoo message {filed}: not refused" in _journal(gateway)[1].decision


@pytest.mark.parametrize("change", ["task archived", "sender archived", "out of the group"])
def test_a_retry_of_a_post_odoo_stored_unanswered_is_already_filed_after_a_change(test_odoo, gateway, mailer, change):
    # The same review's realistic path: Odoo stored the note but its answer was lost (451, an
    # unsettled post in the journal); the retry after the change is looked up in Odoo, by Message-ID,
    # record and author, only because that refusal follows an unsettled post of this very message.
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<unanswered@example.com>"))
    test_odoo.fail("die_after_post", times=1)
    assert mailer.send(raw, to).startswith("451 4.3.0 Odoo is unavailable")
    [stored] = [m for m in test_odoo.messages("project.task", TASK_ID) if m["message_id"] == "<unanswered@example.com>"]
    apply, refusal = CHANGES[change]
    apply(test_odoo)
    assert mailer.send(raw, to) == f"250 2.0.0 Already filed as Odoo message {stored['id']}"
    assert len(_posts(test_odoo)) == 1
    with Journal(gateway.services.config.journal_path) as journal:
        assert [row.verdict for row in journal.recent(5)] == ["duplicate", "deferred"]
        # Found: settled, so a later delivery is not looked up in Odoo again.
        assert journal.unsettled_since("<unanswered@example.com>", "project.task", TASK_ID, PAULA,
                                       gateway.services.config.odoo_identity("notes.example.com")) is None
    other = mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to, "<new-one@example.com>")), to)
    assert other.startswith(refusal), other


def test_a_refused_retry_of_a_post_odoo_may_still_run_is_deferred_not_bounced(test_odoo, start_gateway, dns_server,
                                                                             dkim_keys):
    # Not in Odoo while the unanswered post may still be running there: a 550 could bounce a note
    # that lands a moment later, so it is deferred as the post stage defers it; once that time is
    # over, the refusal is said.
    mailer = Mailer(start_gateway(dns_server.port, unsettled_post_seconds=2), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<killed@example.com>"))
    test_odoo.fail("die_before_post", times=1)
    assert mailer.send(raw, to).startswith("451 4.3.0 Odoo is unavailable")
    test_odoo.archive("project.task", TASK_ID)
    assert mailer.send(raw, to).startswith("451 4.3.0 An earlier delivery of this message may still be being filed")
    time.sleep(2.2)
    assert mailer.send(raw, to).startswith("550 5.2.1 The record of this address is archived")
    assert [post.outcome for post in _posts(test_odoo)] == ["die_before_post"]
    assert all(m["message_id"] != "<killed@example.com>" for m in test_odoo.messages("project.task", TASK_ID))


def test_a_retry_of_a_post_an_older_gateway_made_for_a_sender_found_by_login_is_already_filed(
        test_odoo, start_gateway, dns_server, dkim_keys):
    # Upgrade review: before 0.2.0 a sender's user was found by login too. Such a post whose answer
    # was lost (an unsettled post in the journal) is authored by the user's partner with her email,
    # not the From; the new gateway, which finds her by email only, refused the retry (UnknownSender)
    # and, the From not being the message's, answered 550 once unsettled_post_seconds had passed,
    # while the note was in Odoo. The partner of the active user whose login is the From now counts,
    # on that path only: a new message from that address is still refused.
    mailer = Mailer(start_gateway(dns_server.port, unsettled_post_seconds=1), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<by-login@example.com>"))
    test_odoo.fail("die_after_post", times=1)
    assert mailer.send(raw, to).startswith("451 4.3.0 Odoo is unavailable")
    [stored] = [m for m in test_odoo.messages("project.task", TASK_ID) if m["message_id"] == "<by-login@example.com>"]
    # As the older gateway left it: Paula's login is the From, her contact's email another address,
    # which Odoo's message_post wrote as the message's email_from.
    test_odoo.write("res.partner", PAULA_PARTNER_ID, {"email": "paula.moved@example.com"})
    test_odoo.write("mail.message", stored["id"], {"email_from": '"Paula Contributor" <paula.moved@example.com>'})
    time.sleep(1.2)
    assert mailer.send(raw, to) == f"250 2.0.0 Already filed as Odoo message {stored['id']}"
    assert len(_posts(test_odoo)) == 1
    other = mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to, "<after@example.com>")), to)
    assert other.startswith("550 5.7.1 No Odoo user has this sender address"), other
    assert len(_posts(test_odoo)) == 1


def test_message_without_message_id_is_still_filed_once(test_odoo, gateway, mailer):
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("no_message_id.eml", to))
    assert mailer.send(raw, to).startswith("250 2.0.0 Filed")
    assert mailer.send(raw, to).startswith("250 2.0.0 Already filed")
    [post] = _posts(test_odoo)
    assert post.kwargs["message_id"].endswith("@derived.note-gateway.invalid>")


def test_two_messages_without_message_id_differing_only_in_the_body_are_both_filed(test_odoo, gateway, mailer):
    # Found by a mutation audit: the Message-ID derived for a message that has none hashes the
    # body too, and nothing showed it. A script that sends two findings with one Subject and one
    # Date must not have the second answered "Already filed" and lost.
    to = mailer.address("note", "project.task", TASK_ID)
    first = mailer.message("no_message_id.eml", to)
    second = first.replace(b"a retry must still be recognised.", b"the second finding, sent in the same second.")
    assert first != second
    replies = [mailer.send(mailer.sign(raw), to) for raw in (first, second)]
    assert all(reply.startswith("250 2.0.0 Filed as Odoo message ") for reply in replies), replies
    first_post, second_post = _posts(test_odoo)
    assert "second finding" in second_post.kwargs["body"]
    assert first_post.kwargs["message_id"] != second_post.kwargs["message_id"]


SHARED_ID = "<shared@example.com>"


def _shared(mailer, sender, name, to, text, message_id=SHARED_ID):
    return mailer.sign(compose(sender, to, "Pump P7", text, sender_name=name, message_id=message_id))


def _filed_id(reply):
    assert reply.startswith("250 2.0.0 "), reply
    return int(reply.rsplit(" ", 1)[1])


@pytest.mark.parametrize("access", [None, "followers"])
def test_another_senders_message_id_on_the_record_does_not_swallow_a_note(test_odoo, start_gateway, dns_server,
                                                                           dkim_keys, access):
    # Found by a security review: Peter (portal, no contributor) filed a reply with the Message-ID
    # of Paula's note first, and her note was answered "250 Already filed as <Peter's reply>", lost.
    # Under both the default policy's record search and the followers read (access="followers").
    mailer = Mailer(start_gateway(dns_server.port, access=access), dkim_keys)
    reply_to, note_to = (mailer.address(kind, "project.task", TASK_ID) for kind in ("reply", "note"))
    peter = _shared(mailer, PETER_EMAIL, "Peter Plain", reply_to, "Peter's public answer.")
    paula = _shared(mailer, PAULA, "Paula Contributor", note_to, "Paula's internal finding.")
    peters = _filed_id(mailer.send(peter, reply_to, mail_from=PETER_EMAIL))
    paulas_reply = mailer.send(paula, note_to)
    assert paulas_reply.startswith("250 2.0.0 Filed as Odoo message "), paulas_reply
    paulas = _filed_id(paulas_reply)
    note = test_odoo.message(paulas)
    assert (note["subtype_xmlid"], note["author_id"][0]) == ("mail.mt_note", PAULA_PARTNER_ID)
    assert "internal finding." in note["body"]
    # Odoo has the original ID from Peter on the record: the note has its sender's own.
    assert note["message_id"] == _filed_ids("shared", "project.task", TASK_ID)[2]
    assert paulas not in test_odoo.portal_chatter_ids("project.task", TASK_ID, partner_id=PETER_PARTNER_ID)
    reply = test_odoo.message(peters)
    assert (reply["subtype_xmlid"], reply["author_id"][0], reply["message_id"]) == (
        "mail.mt_comment", PETER_PARTNER_ID, SHARED_ID)
    # Each retry is recognised as its own sender's message; nothing is filed a third time.
    assert mailer.send(paula, note_to) == f"250 2.0.0 Already filed as Odoo message {paulas}"
    assert mailer.send(peter, reply_to, mail_from=PETER_EMAIL) == f"250 2.0.0 Already filed as Odoo message {peters}"
    assert len(test_odoo.filings()) == 2
    row = next(row for row in _journal(mailer.gateway) if row.odoo_message_id == paulas and row.verdict == "filed")
    assert f"message-id-taken:{SHARED_ID} is on the record from another author; filed as {note['message_id']}" in \
        row.defects


def test_a_note_first_does_not_swallow_another_senders_reply_with_its_message_id(test_odoo, gateway, mailer):
    reply_to, note_to = (mailer.address(kind, "project.task", TASK_ID) for kind in ("reply", "note"))
    paula = _shared(mailer, PAULA, "Paula Contributor", note_to, "Paula's internal finding.")
    peter = _shared(mailer, PETER_EMAIL, "Peter Plain", reply_to, "Peter's public answer.")
    paulas = _filed_id(mailer.send(paula, note_to))
    peters_reply = mailer.send(peter, reply_to, mail_from=PETER_EMAIL)
    assert peters_reply.startswith("250 2.0.0 Filed as Odoo message "), peters_reply
    peters = _filed_id(peters_reply)
    reply = test_odoo.message(peters)
    assert (reply["subtype_xmlid"], reply["author_id"][0]) == ("mail.mt_comment", PETER_PARTNER_ID)
    assert "Peter" in reply["body"] and peters in test_odoo.portal_chatter_ids("project.task", TASK_ID,
                                                                               partner_id=PETER_PARTNER_ID)
    # Odoo's mail gateway drops an ID it knows: the reply went in under its record's own.
    assert reply["message_id"] == _filed_ids("shared", "project.task", TASK_ID)[1]
    row = next(row for row in _journal(gateway) if row.odoo_message_id == peters and row.verdict == "filed")
    assert f"message-id-taken:{SHARED_ID} is on the record from another author; filed as {reply['message_id']}" in \
        row.defects
    note = test_odoo.message(paulas)
    assert (note["subtype_xmlid"], note["message_id"]) == ("mail.mt_note", SHARED_ID)
    assert paulas not in test_odoo.portal_chatter_ids("project.task", TASK_ID, partner_id=PETER_PARTNER_ID)
    assert mailer.send(peter, reply_to, mail_from=PETER_EMAIL) == f"250 2.0.0 Already filed as Odoo message {peters}"
    assert mailer.send(paula, note_to) == f"250 2.0.0 Already filed as Odoo message {paulas}"
    assert len(test_odoo.filings()) == 2


def test_a_reply_first_then_the_same_senders_note_is_already_filed(test_odoo, gateway, mailer):
    # docs/rules.md: a note address in Bcc is invisible to the reply delivery, which is filed
    # publicly first; the note delivery of the same sender's message then files nothing more.
    reply_to, note_to = (mailer.address(kind, "project.task", TASK_ID) for kind in ("reply", "note"))
    raw = _shared(mailer, PAULA, "Paula Contributor", reply_to, "Seal replaced.")
    filed = _filed_id(mailer.send(raw, reply_to))
    assert mailer.send(raw, note_to) == f"250 2.0.0 Already filed as Odoo message {filed}"
    assert len(test_odoo.filings()) == 1


@pytest.mark.parametrize("kind", ["note", "reply"])
def test_every_id_of_a_message_taken_by_another_sender_still_files_it_once(test_odoo, gateway, mailer, kind):
    # Peter files messages under the Message-ID of Paula's message and under each ID the gateway
    # derives from it (all predictable): Paula's message is still filed, once, never as his.
    reply_to, to = mailer.address("reply", "project.task", TASK_ID), mailer.address(kind, "project.task", TASK_ID)
    for message_id in _filed_ids("shared", "project.task", TASK_ID):
        _filed_id(mailer.send(_shared(mailer, PETER_EMAIL, "Peter Plain", reply_to, "Peter again.", message_id),
                              reply_to, mail_from=PETER_EMAIL))
    paula = _shared(mailer, PAULA, "Paula Contributor", to, "Paula's own words.")
    reply = mailer.send(paula, to)
    assert reply.startswith("250 2.0.0 Filed as Odoo message "), reply
    filed = test_odoo.message(_filed_id(reply))
    assert filed["author_id"][0] == PAULA_PARTNER_ID and "Paula" in filed["body"]
    assert filed["message_id"] == _filed_ids("shared", "project.task", TASK_ID)[2]
    assert mailer.send(paula, to) == f"250 2.0.0 Already filed as Odoo message {filed['id']}"
    assert len(test_odoo.filings()) == 4


@pytest.mark.parametrize("fault", ["refuse", "http500", "garbage", "rpc_error"])
def test_odoo_down_defers_then_the_retry_files_once(test_odoo, gateway, mailer, fault):
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, f"<retry-{fault}@example.com>"))
    test_odoo.fail(fault)
    reply = mailer.send(raw, to)
    assert reply.startswith("451 4.3.0 Odoo is unavailable"), reply
    test_odoo.heal()
    assert mailer.send(raw, to).startswith("250 2.0.0 Filed")
    assert mailer.send(raw, to).startswith("250 2.0.0 Already filed")
    assert len([p for p in _posts(test_odoo) if p.ok]) == 1
    assert [row.verdict for row in _journal(gateway)] == ["duplicate", "filed", "deferred"]


def test_odoo_hanging_defers_within_the_timeout(test_odoo, start_gateway, dns_server, dkim_keys):
    gateway = start_gateway(dns_server.port, odoo_timeout=1.0)
    mailer = Mailer(gateway, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to))
    test_odoo.fail("hang", seconds=5)
    assert mailer.send(raw, to).startswith("451 4.3.0")
    test_odoo.heal()
    assert mailer.send(raw, to).startswith("250 ")


def test_dns_failure_defers_with_443(test_odoo, start_gateway, dkim_keys):
    with DnsServer() as dns:
        name = dkim_keys["example.com"].record_name(SELECTOR, "example.com")
        dns.add_txt(name, dkim_keys["example.com"].txt_record)
        dns.servfail(name)
        mailer = Mailer(start_gateway(dns.port), dkim_keys)
        to = mailer.address("note", "project.task", TASK_ID)
        raw = mailer.sign(mailer.message("note_from_contributor.eml", to))
        assert mailer.send(raw, to).startswith("451 4.4.3")
        dns.heal(name)
        assert mailer.send(raw, to).startswith("250 ")


def test_an_accepted_note_costs_three_odoo_calls_under_the_default_policy(test_odoo, gateway, mailer):
    # Issue 6: Odoo's time is what limits throughput. With the odoo-rules policy warm (rules and
    # access lists cached, never the user's values), a note is: the sender, one record search with
    # the evaluated rules that also asks that the Message-ID is not on the record yet, the post.
    to = mailer.address("note", "project.task", TASK_ID)
    assert mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to)), to).startswith("250 ")
    test_odoo.clear_calls()
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<three-calls@example.com>"))
    assert mailer.send(raw, to).startswith("250 ")
    calls = test_odoo.calls
    assert [(call.model, call.model_method) for call in calls] == [
        ("res.users", "search_read"), ("project.task", "search"), ("project.task", "message_post")]
    assert ["!", ["message_ids.message_id", "in", sorted(_filed_ids("three-calls", "project.task", TASK_ID))]] == \
        calls[1].args[0][-2:]
    # The same message again (a retry): the search finds it filed, the plain search and the
    # Message-ID search tell a retry from a refusal, and nothing is posted.
    test_odoo.clear_calls()
    assert mailer.send(raw, to).startswith("250 ")
    assert [(call.model, call.model_method) for call in test_odoo.calls] == [
        ("res.users", "search_read"), ("project.task", "search"), ("project.task", "search"),
        ("mail.message", "search_read")]


def test_read_cache_under_the_default_policy_leaves_the_message_id_check_and_the_post(test_odoo, start_gateway,
                                                                                    dns_server, dkim_keys):
    # With read_cache_seconds above 0 the sender and its access to the record are reused (DESIGN.md
    # allows a short cache that can be set to zero); the Message-ID check never is: a retry comes
    # precisely when a first delivery may have been filed. That check is the record search with
    # the rules and the Message-ID clause, so the record is searched on every message.
    mailer = Mailer(start_gateway(dns_server.port, read_cache_seconds=60), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    assert mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to)), to).startswith("250 ")
    test_odoo.clear_calls()
    for _ in range(2):
        assert mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to)), to).startswith("250 ")
    assert [(call.model, call.model_method) for call in test_odoo.calls] == [
        ("project.task", "search"), ("project.task", "message_post")] * 2
    assert all("message_ids.message_id" in repr(call.args) for call in test_odoo.calls[::2])
    # A refusal of another record: the plain search (cached per sender and record) says why.
    other = mailer.address("note", "project.task", PRIVATE_TASK_ID)
    reply = mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", other)), other)
    assert reply.startswith("550 5.7.1")
    assert [(call.model, call.model_method) for call in test_odoo.calls[4:]] == [
        ("project.task", "search"), ("project.task", "search"), ("project.task", "search")]


def test_under_the_followers_policy_the_followers_read_also_checks_the_message_id(test_odoo, followers_gateway):
    # The followers are read while the sender is looked up (the two calls may come in either
    # order); that read also asks that the Message-ID is not on the record, so a note is 3 calls.
    mailer = followers_gateway
    to = mailer.address("note", "project.task", TASK_ID)

    def record_calls():
        # Logging in a pooled connection (the parallel read may open a second one) is left out.
        return [call for call in test_odoo.calls if call.model_method in ("search_read", "search", "message_post")]

    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<followers-three@example.com>"))
    assert mailer.send(raw, to).startswith("250 2.0.0 Filed")
    calls = record_calls()
    assert sorted((call.model, call.model_method) for call in calls[:2]) == [
        ("project.task", "search_read"), ("res.users", "search_read")]
    assert [(call.model, call.model_method) for call in calls[2:]] == [("project.task", "message_post")]
    [read] = [call for call in calls if call.model == "project.task" and call.model_method == "search_read"]
    assert read.args[0][-2:] == ["!", ["message_ids.message_id", "in",
                                       _filed_ids("followers-three", "project.task", TASK_ID)]]
    # A retry: the read finds it filed, the plain read and the Message-ID search make it a duplicate.
    test_odoo.clear_calls()
    assert mailer.send(raw, to).startswith("250 2.0.0 Already filed")
    assert sorted((call.model, call.model_method) for call in record_calls()) == [
        ("mail.message", "search_read"), ("project.task", "search_read"), ("project.task", "search_read"),
        ("res.users", "search_read")]
