"""Plain note@ / reply@ routed by References; reply-all to a note and a reply address of one record, and
a reply to an internal note, both filed as notes."""

from __future__ import annotations

import base64
import logging
from collections import Counter
from types import SimpleNamespace

import pytest

from conftest import ALIAS_DOMAIN, Mailer, write_config
from serving import folded_msg_id

from gateway import address, message
from gateway.config import load_config
from gateway.journal import Journal
from gateway.pipeline import Services
from gateway.smtp import ThreadedGateway
from gateway.testing.odoo_demo import (ADMIN_PARTNER_ID, CUSTOMER_PARTNER_ID, GATEWAY_UID, MARC_PARTNER_ID,
                                       PAULA_PARTNER_ID, PETER_EMAIL, PETER_PARTNER_ID, PRIVATE_TASK_ID, PROJECT_ID,
                                       SALE_ORDER_ID, SUBTYPE_ACTIVITIES_ID, SUBTYPE_COMMENT_ID, SUBTYPE_NOTE_ID,
                                       SUBTYPE_TASK_NEW_ID, TASK_ID)
from gateway.testing.sending import compose, deliver

PAULA = "portal.contrib@example.com"
MARC = "mark.brown23@example.com"  # an internal user
NOTE, REPLY = f"note@{ALIAS_DOMAIN}", f"reply@{ALIAS_DOMAIN}"


def _reply_to(mailer, to, *, references=(), in_reply_to=None, sender=PAULA, cc=None, message_id=None):
    raw = compose(sender, to, "Re: Gateway acceptance task", "Seal replaced, all good.", message_id=message_id)
    headers = b""
    if in_reply_to:
        headers += b"In-Reply-To: " + in_reply_to.encode() + b"\r\n"
    if references:
        headers += b"References: " + b"\r\n ".join(value.encode() for value in references) + b"\r\n"
    if cc:
        headers += b"Cc: " + cc.encode() + b"\r\n"
    return mailer.sign(headers + raw)


def _one_note_nobody_outside_sees(test_odoo):
    """The task got one post, an internal note: no email sent, nothing in Paula's portal chatter."""
    [post] = test_odoo.posts()
    assert post.kwargs["subtype_xmlid"] == "mail.mt_note"
    assert test_odoo.outbox == []
    assert test_odoo.portal_chatter_ids("project.task", TASK_ID, partner_id=PAULA_PARTNER_ID) == []


def _notification_id(test_odoo, model, res_id):
    """The Message-ID of a comment Odoo posted and notified, as a notification email carries it."""
    message_id = test_odoo.add_record("mail.message", {"model": model, "res_id": res_id, "message_type": "comment",
                                                       "subtype_id": 1, "body": "<p>Hello</p>", "author_id": 3})
    return test_odoo.record("mail.message", message_id, ["message_id"])["message_id"]


def _journal(gateway):
    with Journal(gateway.services.config.journal_path) as journal:
        return journal.recent(50)


def test_plain_note_address_follows_odoos_notification_message_id(test_odoo, gateway, mailer):
    notification = _notification_id(test_odoo, "project.task", TASK_ID)
    assert f"-openerp-{TASK_ID}-project.task@" in notification
    reply = mailer.send(_reply_to(mailer, NOTE, references=["<earlier@example.com>", notification]), NOTE)
    assert reply.startswith("250 2.0.0 Filed")
    [post] = test_odoo.posts()
    assert (post.model, post.args, post.kwargs["subtype_xmlid"]) == ("project.task", [[TASK_ID]], "mail.mt_note")
    [row] = _journal(gateway)
    assert (row.rcpt, row.model, row.res_id) == (NOTE, "project.task", TASK_ID)
    assert row.decision == f"routed by mail.message {notification}"


@pytest.mark.parametrize("to", [NOTE, REPLY])
def test_plain_address_follows_the_most_recent_reference(test_odoo, gateway, mailer, to):
    # Found by a mutation audit: References list the thread oldest first (RFC 5322 section 3.6.4),
    # and a thread that moved from the task to the order answers the order.
    older = _notification_id(test_odoo, "project.task", TASK_ID)
    newer = _notification_id(test_odoo, "sale.order", SALE_ORDER_ID)
    reply = mailer.send(_reply_to(mailer, to, references=[older, newer]), to)
    assert reply.startswith("250 2.0.0 Filed"), reply
    [filing] = test_odoo.filings()
    assert (filing.model, filing.res_id) == ("sale.order", SALE_ORDER_ID)
    assert _journal(gateway)[0].decision == f"routed by mail.message {newer}"


def test_plain_reply_address_follows_a_message_stored_in_odoo(test_odoo, gateway, mailer):
    # A message filed earlier through the gateway keeps its sender's Message-ID (ODOO_FACTS.md f).
    # A public one: a reply to a note is filed as a note (test_a_reply_to_an_internal_note_is_filed_as_a_note).
    to = mailer.address("reply", "sale.order", 23)
    assert mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", to, "<first@example.com>")),
                       to).startswith("250 ")
    reply = mailer.send(_reply_to(mailer, REPLY, in_reply_to="<first@example.com>"), REPLY)
    assert reply.startswith("250 ")
    last = test_odoo.filings()[-1]
    assert (last.model, last.res_id, last.subtype_xmlid) == ("sale.order", 23, "mail.mt_comment")
    assert _journal(gateway)[0].decision == "routed by mail.message <first@example.com>"


@pytest.mark.parametrize("to", [NOTE, REPLY])
@pytest.mark.parametrize("header", ["References", "In-Reply-To"])
def test_plain_address_follows_a_reference_folded_inside_its_msg_id(test_odoo, gateway, mailer, to, header):
    # Odoo's mail gateway deletes the whitespace inside each <...> (mail_thread.py message_route, its
    # "Unfold" buggy references); so does the gateway (found by a review: the id was dropped).
    notification = _notification_id(test_odoo, "project.task", TASK_ID)
    folded = folded_msg_id(notification)
    raw = (_reply_to(mailer, to, references=["<earlier@example.com>", folded]) if header == "References"
           else _reply_to(mailer, to, in_reply_to=folded))
    reply = mailer.send(raw, to)
    assert reply.startswith("250 2.0.0 Filed"), reply
    [filing] = test_odoo.filings()
    assert (filing.model, filing.res_id) == ("project.task", TASK_ID)
    assert _journal(gateway)[0].decision == f"routed by mail.message {notification}"


UNROUTED = ("550 5.1.1 No record found for this message: reply to an Odoo notification, or write to the record's "
            "own note+ or reply+ address: it references no message of a record this sender may post on")


# Routing a plain address as Odoo's mail gateway routes a reply (mail_thread.py message_route): the
# ids of References if it has any, else of In-Reply-To, the newest 32; the mail.message of the
# highest id among them gives the record. Found by a differential review against Odoo 18: the
# gateway took In-Reply-To first, the first id that resolved, trusted an id in Odoo's notification
# form without asking Odoo, and looked up 20.

@pytest.mark.parametrize("to", [NOTE, REPLY])
def test_plain_address_follows_references_before_in_reply_to(test_odoo, gateway, mailer, to):
    # In-Reply-To names the order's message, References end on the task's newer one: Odoo files on the task.
    order = _message_on(test_odoo, "sale.order", SALE_ORDER_ID, "<order-email@customer.example>")
    task = _notification_id(test_odoo, "project.task", TASK_ID)
    reply = mailer.send(_reply_to(mailer, to, in_reply_to=order, references=[order, task]), to)
    assert reply.startswith("250 2.0.0 Filed"), reply
    [filing] = test_odoo.filings()
    assert (filing.model, filing.res_id) == ("project.task", TASK_ID)
    assert _journal(gateway)[0].decision.startswith(f"routed by mail.message {task}")


@pytest.mark.parametrize("to", [NOTE, REPLY])
def test_plain_address_follows_the_most_recently_created_message_wherever_it_is_referenced(test_odoo, gateway,
                                                                                          mailer, to):
    # References oldest first is what RFC 5322 asks, not what every client writes: Odoo takes the
    # message it created last (the highest id), whatever its place in the header.
    order = _message_on(test_odoo, "sale.order", SALE_ORDER_ID, "<order-email@customer.example>")
    task = _notification_id(test_odoo, "project.task", TASK_ID)
    reply = mailer.send(_reply_to(mailer, to, references=[task, order]), to)
    assert reply.startswith("250 2.0.0 Filed"), reply
    [filing] = test_odoo.filings()
    assert (filing.model, filing.res_id) == ("project.task", TASK_ID)


def test_plain_address_follows_a_message_odoo_has_before_an_odoo_style_id_it_has_not(test_odoo, gateway, mailer):
    # An id in Odoo's notification form that no mail.message has (anyone can write one) does not
    # outrank a message Odoo has: Odoo's own gateway never reads the record out of the id.
    order = _message_on(test_odoo, "sale.order", SALE_ORDER_ID, "<order-email@customer.example>")
    made_up = f"<1.2-openerp-{TASK_ID}-project.task@forged.example>"
    reply = mailer.send(_reply_to(mailer, NOTE, in_reply_to=made_up, references=[order, made_up]), NOTE)
    assert reply.startswith("250 2.0.0 Filed"), reply
    [filing] = test_odoo.filings()
    assert (filing.model, filing.res_id) == ("sale.order", SALE_ORDER_ID)
    assert _journal(gateway)[0].decision == f"routed by mail.message {order}"


def test_plain_address_follows_an_odoo_id_no_message_has_when_odoo_has_none_of_them(test_odoo, gateway, mailer):
    # Odoo sends mail under "<...-openerp-<id>-<model>@host>" that it does not keep (a template
    # email, not a notification: its mail.message is deleted once sent, checked on Odoo 18); a
    # reply to it is routed by that id when Odoo has none of the ids, every check still applying.
    sent = f"<1.2-openerp-{TASK_ID}-project.task@odoo.example>"
    reply = mailer.send(_reply_to(mailer, NOTE, references=["<unknown@example.com>", sent]), NOTE)
    assert reply.startswith("250 2.0.0 Filed"), reply
    [filing] = test_odoo.filings()
    assert (filing.model, filing.res_id) == ("project.task", TASK_ID)
    assert _journal(gateway)[0].decision == f"routed by Odoo Message-ID {sent}"


@pytest.mark.parametrize("place, routed", [(20, True), (32, True), (33, False)])
def test_plain_address_looks_at_the_newest_32_references(test_odoo, gateway, mailer, place, routed):
    # The known message is the place-th id from the end of References; the others Odoo never saw.
    known = _message_on(test_odoo, "project.task", TASK_ID, "<known@customer.example>")
    references = [known] + [f"<unknown.{number}@example.com>" for number in range(place - 1)]
    reply = mailer.send(_reply_to(mailer, NOTE, references=references), NOTE)
    if routed:
        assert reply.startswith("250 2.0.0 Filed"), reply
        assert _journal(gateway)[0].decision == f"routed by mail.message {known}"
    else:
        assert reply == UNROUTED
        assert test_odoo.posts() == []


def test_plain_address_is_not_routed_by_odoos_reply_to_ids(test_odoo, gateway, mailer):
    # Odoo gives "<...-openerp-reply_to@host>" to messages whose replies must not go to their record,
    # and its mail gateway routes by no id with "reply_to" in it.
    task = _notification_id(test_odoo, "project.task", TASK_ID)
    reply_to = _message_on(test_odoo, "sale.order", SALE_ORDER_ID, "<1.2-openerp-reply_to@odoo.example>")
    reply = mailer.send(_reply_to(mailer, NOTE, references=[task, reply_to]), NOTE)
    assert reply.startswith("250 2.0.0 Filed"), reply
    [filing] = test_odoo.filings()
    assert (filing.model, filing.res_id) == ("project.task", TASK_ID)
    assert mailer.send(_reply_to(mailer, REPLY, references=[reply_to]), REPLY) == UNROUTED


def test_plain_address_without_references_is_refused(test_odoo, gateway, mailer):
    reply = mailer.send(_reply_to(mailer, NOTE), NOTE)
    assert reply == ("550 5.1.1 No record found for this message: reply to an Odoo notification, or write to the "
                     "record's own note+ or reply+ address: the message has no In-Reply-To or References")
    assert test_odoo.posts() == []


def _archived_task(test_odoo):
    task = test_odoo.add_record("project.task", {"name": "Archived", "project_id": PROJECT_ID},
                                followers=[PAULA_PARTNER_ID])
    test_odoo.archive("project.task", task)
    return task


def _message_on(test_odoo, model, res_id, message_id, *, internal=False):
    test_odoo.add_record("mail.message", {"model": model, "res_id": res_id, "message_type": "comment",
                                          "subtype_id": SUBTYPE_NOTE_ID if internal else SUBTYPE_COMMENT_ID,
                                          "is_internal": internal, "body": "<p>x</p>", "author_id": 3,
                                          "message_id": message_id})
    return message_id


# Found by a review: a plain address is routed by headers anyone can write, so any portal user could
# ask about any record with a made-up Odoo Message-ID (or one of a mail he was in Cc of), and the reply
# said whether it existed, was hidden, of which kind and company, and that a message was a note. Each
# now says what a message of unknown references is told; the journal keeps the specific refusal.
@pytest.mark.parametrize("to, sender, reference, refusal_class, kept", [
    (NOTE, PAULA, lambda odoo: "<nobody-knows@example.com>", "NoRecordReferenced",
     "(none of 1 referenced Message-IDs is known to Odoo)"),
    (NOTE, PAULA, lambda odoo: f"<1.2-openerp-{PRIVATE_TASK_ID}-project.task@testodoo>", "RecordAccessDenied",
     f"Sender has no access to this record: {PAULA} on project.task {PRIVATE_TASK_ID} (odoo-rules)"),
    (NOTE, PAULA, lambda odoo: "<1.2-openerp-42-res.partner@testodoo>", "ModelNotAllowed",
     "Posting by email is not enabled for this kind of record: note on res.partner"),
    (NOTE, PAULA, lambda odoo: "<1.2-openerp-999999-project.task@testodoo>", "RecordNotFound",
     "The record of this address does not exist: project.task 999999"),
    (REPLY, PAULA, lambda odoo: f"<1.2-openerp-{_archived_task(odoo)}-project.task@testodoo>", "RecordArchived",
     "The record of this address is archived: project.task"),
    # Peter, a portal user in no group, with the Message-ID of a mail he was in Cc of: neither where it
    # was filed nor that it is an internal note.
    (REPLY, PETER_EMAIL, lambda odoo: _message_on(odoo, "project.task", PRIVATE_TASK_ID, "<cc@customer.example>"),
     "RecordAccessDenied", f"{PETER_EMAIL} on project.task {PRIVATE_TASK_ID} (odoo-rules)"),
    (REPLY, PETER_EMAIL, lambda odoo: _message_on(odoo, "project.task", PRIVATE_TASK_ID, "<cc@customer.example>",
                                                  internal=True),
     "RecordAccessDenied", f"{PETER_EMAIL} on project.task {PRIVATE_TASK_ID} (odoo-rules)"),
    (NOTE, PETER_EMAIL, lambda odoo: f"<1.2-openerp-{PRIVATE_TASK_ID}-project.task@testodoo>", "NotContributor",
     None),
], ids=["unknown", "no-access", "model", "missing", "archived", "cc-message", "cc-note", "note-not-contributor"])
def test_plain_address_tells_nothing_of_records_the_sender_cannot_read(test_odoo, gateway, mailer, to, sender,
                                                                       reference, refusal_class, kept):
    raw = _reply_to(mailer, to, in_reply_to=reference(test_odoo), sender=sender)
    reply = mailer.send(raw, to, mail_from=sender)
    if refusal_class == "NotContributor":
        # About the sender, whatever the record: said as it is, naming no record.
        assert reply == f"550 5.7.1 Sender may not post internal notes: {sender} is not in the contributor group"
    else:
        assert reply == UNROUTED
    assert test_odoo.posts() == []
    [row] = _journal(gateway)
    assert row.refusal_class == refusal_class and row.smtp_reply == reply
    if kept:
        assert kept in row.decision, row.decision


@pytest.mark.parametrize("reference", ["unknown", "of a record he cannot read", "none"])
def test_plain_note_address_tells_a_non_contributor_so_whatever_the_references(test_odoo, gateway, mailer,
                                                                               reference):
    # Found by a review: Peter's note@ was "No record found" for a Message-ID unknown to Odoo and
    # "Sender may not post internal notes" for one Odoo has, telling him that it exists. Whether he
    # may file notes at all is about him alone, and said before the references are looked at.
    in_reply_to = {"unknown": "<nobody-knows@example.com>", "none": None,
                   "of a record he cannot read": _message_on(test_odoo, "project.task", PRIVATE_TASK_ID,
                                                             "<cc@customer.example>")}[reference]
    raw = _reply_to(mailer, NOTE, in_reply_to=in_reply_to, sender=PETER_EMAIL)
    assert mailer.send(raw, NOTE, mail_from=PETER_EMAIL) == (
        f"550 5.7.1 Sender may not post internal notes: {PETER_EMAIL} is not in the contributor group")
    assert test_odoo.posts() == []
    [row] = _journal(gateway)
    assert row.refusal_class == "NotContributor" and "routed" not in row.decision


def test_plain_address_of_a_record_hidden_from_the_gateway_is_deferred_naming_nothing(test_odoo, gateway, mailer,
                                                                                         caplog):
    # The same review: 451 "The gateway's Odoo user cannot see this record" told any sender that the
    # record existed. Still a 451 (the message waits while the operator, told at ERROR, corrects the
    # integration user's groups), with a text that names nothing.
    test_odoo.set_group(GATEWAY_UID, "sales_team.group_sale_salesman")
    raw = _reply_to(mailer, REPLY, in_reply_to=f"<1.2-openerp-{SALE_ORDER_ID}-sale.order@testodoo>")
    with caplog.at_level(logging.ERROR, logger="gateway.policy"):
        reply = mailer.send(raw, REPLY)
    assert reply == "451 4.3.0 The message cannot be filed right now, try again later"
    assert any(f"sale.order {SALE_ORDER_ID} exists but the gateway's Odoo user" in record.getMessage()
               for record in caplog.records if record.levelno == logging.ERROR)
    [row] = _journal(gateway)
    assert (row.verdict, row.refusal_class) == ("deferred", "RecordHiddenFromGateway")
    assert f"The gateway's Odoo user cannot see this record, an administrator must give it read access: " \
           f"sale.order {SALE_ORDER_ID}" in row.decision
    assert test_odoo.posts() == []


def test_plain_address_on_a_company_bound_domain_checks_access_before_company(test_odoo, start_gateway, dns_server,
                                                                              dkim_keys):
    # The same review: "sale.order 24 is of company 2, not 1" answered Peter about an order he could not read.
    other = test_odoo.add_record("res.company", {"name": "Secret Subsidiary"})
    test_odoo.write("res.users", GATEWAY_UID, {"company_ids": [1, other]})
    foreign = test_odoo.add_record("sale.order", {"name": "S-OTHER", "partner_id": 9, "company_id": other})
    # The followers policy, as the permission matrix's bound domain (under odoo-rules Peter would also
    # need to belong to company 2 to read its orders).
    gateway = start_gateway(dns_server.port, rules={"company_id": 1}, access="followers")
    mailer = Mailer(gateway, dkim_keys)
    for res_id in (foreign, foreign + 1000):
        raw = _reply_to(mailer, REPLY, in_reply_to=f"<1.2-openerp-{res_id}-sale.order@forged>", sender=PETER_EMAIL)
        assert mailer.send(raw, REPLY, mail_from=PETER_EMAIL) == UNROUTED
    assert [row.refusal_class for row in _journal(gateway)] == ["RecordNotFound", "RecordAccessDenied"]
    # A follower of the order is told it is of another company: access is established first.
    test_odoo.add_follower("sale.order", foreign, PETER_PARTNER_ID)
    raw = _reply_to(mailer, REPLY, in_reply_to=f"<1.2-openerp-{foreign}-sale.order@forged>", sender=PETER_EMAIL)
    assert mailer.send(raw, REPLY, mail_from=PETER_EMAIL) == (
        "550 5.7.1 The record belongs to a company this address does not serve: "
        f"sale.order {foreign} is of company {other}, not 1")
    assert test_odoo.posts() == []


def test_plain_address_of_an_unknown_domain_is_refused_at_rcpt(gateway, mailer):
    assert mailer.send(_reply_to(mailer, "note@elsewhere.example"), "note@elsewhere.example").startswith(
        "550 5.1.1 Not an alias domain of this gateway")


@pytest.mark.parametrize("order", [("note", "reply"), ("reply", "note")])
def test_reply_all_to_note_and_reply_is_filed_once_as_a_note(test_odoo, gateway, mailer, order):
    addresses = {kind: mailer.address(kind, "project.task", TASK_ID) for kind in ("note", "reply")}
    raw = _reply_to(mailer, addresses["note"], cc=addresses["reply"], message_id="<reply-all@example.com>")
    first, second = (mailer.send(raw, addresses[kind]) for kind in order)
    assert first.startswith("250 2.0.0 Filed as Odoo message ")
    assert second.startswith("250 2.0.0 Already filed as Odoo message ")
    [post] = test_odoo.posts()
    assert post.kwargs["subtype_xmlid"] == "mail.mt_note"
    message_id = int(first.rsplit(" ", 1)[1])
    assert message_id not in test_odoo.portal_chatter_ids("project.task", TASK_ID, partner_id=PAULA_PARTNER_ID)
    assert test_odoo.outbox == []
    reply_row = next(row for row in _journal(gateway) if row.rcpt == addresses["reply"])
    assert reply_row.kind == "note"
    assert reply_row.decision == f"reply-all with {addresses['note']}: filed as a note, never public"


def _kinds(test_odoo, message_id):
    """The messages of the task filed from ``message_id`` (under it or an ID derived from it), oldest first."""
    local = message_id.strip("<>").rpartition("@")[0]
    return [(row["id"], row["message_id"], row["subtype_id"][1]) for row in reversed(test_odoo.messages(
        "project.task", TASK_ID)) if str(row.get("message_id") or "").startswith(f"<{local}")]


@pytest.mark.parametrize("follows", [True, False], ids=["mail-gateway", "message_post"])
@pytest.mark.parametrize("order", [("note", "reply"), ("reply", "note")])
def test_a_bcc_note_and_its_reply_file_the_reply_publicly_whichever_comes_first(test_odoo, gateway, mailer, order,
                                                                                follows):
    # Found by a concurrency review: To the task's reply+ with a Bcc to its note+, the note delivery
    # first filed a note and the reply delivery was answered "250 Already filed" with no public reply:
    # the customer never got the answer, and which delivery came first (random with workers) decided.
    if not follows:
        # A reply of an author who does not follow goes in by message_post; Paula still reads the
        # task as a collaborator of its project (tests/test_content_end_to_end.py).
        test_odoo.add_record("project.collaborator", {"project_id": PROJECT_ID, "partner_id": PAULA_PARTNER_ID,
                                                      "limited_access": False})
        test_odoo.remove_follower("project.task", TASK_ID, PAULA_PARTNER_ID)
    addresses = {kind: mailer.address(kind, "project.task", TASK_ID) for kind in ("note", "reply")}
    message_id = f"<bcc-{'-'.join(order)}-{follows}@example.com>"
    raw = _reply_to(mailer, addresses["reply"], message_id=message_id)  # the note address only in the envelope
    replies = {kind: mailer.send(raw, addresses[kind]) for kind in order}
    first, second = order
    assert replies[first].startswith("250 2.0.0 Filed as Odoo message ")
    reply_filing = next(filing for filing in test_odoo.filings() if filing.subtype_xmlid == "mail.mt_comment")
    assert reply_filing.call.model_method == ("message_process" if follows else "message_post")
    filed = _kinds(test_odoo, message_id)
    public = [row for row in filed if row[2] == "Discussions"]
    [(reply_id, _, _)] = public
    assert reply_id in test_odoo.portal_chatter_ids("project.task", TASK_ID, partner_id=PAULA_PARTNER_ID)
    assert "Seal replaced, all good." in test_odoo.message(reply_id)["body"]
    if first == "reply":
        # The sender made the text public in the same message: the note delivery files nothing more.
        assert replies["note"] == f"250 2.0.0 Already filed as Odoo message {reply_id}"
        assert filed == public
        note_id = reply_id
    else:
        [(note_id, note_message_id, kind)] = [row for row in filed if row not in public]
        assert (note_message_id, kind) == (message_id, "Note")
        assert replies["reply"] == f"250 2.0.0 Filed as Odoo message {reply_id}"
        assert public[0][1] == f"<bcc-note-reply-{follows}.project.task-{TASK_ID}@example.com>"
        row = next(row for row in _journal(gateway) if row.rcpt == addresses["reply"])
        assert (row.kind, row.verdict) == ("reply", "filed")
        assert f"note-filed-first:{message_id} is on the record as the sender's internal note" in " ".join(row.defects)
    # A retry of either delivery (its 250 lost) files nothing more.
    filings = len(test_odoo.filings())
    assert mailer.send(raw, addresses["reply"]) == f"250 2.0.0 Already filed as Odoo message {reply_id}"
    assert mailer.send(raw, addresses["note"]) == f"250 2.0.0 Already filed as Odoo message {note_id}"
    assert len(test_odoo.filings()) == filings
    assert _kinds(test_odoo, message_id) == filed


@pytest.mark.parametrize("case", ["employee", "not-a-follower"])
def test_a_reply_refused_for_itself_is_not_already_filed_by_its_bcc_note(test_odoo, start_gateway, dns_server,
                                                                          dkim_keys, case):
    # Found by a review of the session's merges: a permanent refusal of a message this sender already
    # filed on the record is answered "Already filed" (a retry after the record changed); the note of
    # the message's Bcc'd note address, filed first, made the reply delivery's own 550 such a retry.
    if case == "employee":
        gateway = start_gateway(dns_server.port, rules_extra="allow_internal_users = false\n")
        sender, refusal = MARC, ("550 5.7.1 Internal users may not post here by email: answer in the record's "
                                 "chatter in Odoo")
    else:
        gateway = start_gateway(dns_server.port, rules_extra='access = "followers"\n')
        test_odoo.add_record("project.collaborator", {"project_id": PROJECT_ID, "partner_id": PAULA_PARTNER_ID,
                                                      "limited_access": False})
        test_odoo.remove_follower("project.task", TASK_ID, PAULA_PARTNER_ID)
        sender, refusal = PAULA, ("550 5.7.1 Sender has no access to this record: portal.contrib@example.com does "
                                  f"not follow project.task {TASK_ID}")
    mailer = Mailer(gateway, dkim_keys)
    addresses = {kind: mailer.address(kind, "project.task", TASK_ID) for kind in ("note", "reply")}
    alone = _reply_to(mailer, addresses["reply"], sender=sender, message_id=f"<alone-{case}@example.com>")
    assert mailer.send(alone, addresses["reply"], mail_from=sender) == refusal
    raw = _reply_to(mailer, addresses["reply"], sender=sender, message_id=f"<bcc-{case}@example.com>")
    assert mailer.send(raw, addresses["note"], mail_from=sender).startswith("250 2.0.0 Filed as Odoo message ")
    assert mailer.send(raw, addresses["reply"], mail_from=sender) == refusal
    assert [kind for _, _, kind in _kinds(test_odoo, f"<bcc-{case}@example.com>")] == ["Note"]


@pytest.mark.parametrize("form", ["second Cc header", "second To header", "quoted local part", "in a group"])
def test_reply_all_sees_the_note_address_however_the_headers_write_it(test_odoo, gateway, mailer, form):
    # Found by exploratory testing: mail-parser reads only the first To and Cc field, and the address
    # was compared as written, so these reply deliveries were filed publicly and emailed to the
    # record's followers, a portal user among them.
    note, reply = (mailer.address(kind, "project.task", TASK_ID) for kind in ("note", "reply"))
    local, _, domain = note.partition("@")
    headers = {
        "second Cc header": f"Cc: someone@example.com\r\nCc: {note}\r\n",
        "second To header": f"To: {note}\r\n",
        "quoted local part": f'Cc: "{local}"@{domain.upper()}\r\n',
        "in a group": f"Cc: team: someone@example.com, {note};\r\n",
    }[form]
    raw = compose(PAULA, reply, "Re: Gateway acceptance task", "Our margin on this job is 4%.",
                  message_id=f"<reply-all-{form.replace(' ', '-')}@example.com>")
    # After the header block's own To and Cc, where a second field of a name comes.
    head, _, body = raw.partition(b"\r\n\r\n")
    raw = mailer.sign(head + b"\r\n" + headers.encode() + b"\r\n" + body)
    assert mailer.send(raw, reply).startswith("250 2.0.0 Filed as Odoo message ")
    _one_note_nobody_outside_sees(test_odoo)
    [row] = _journal(gateway)
    assert row.kind == "note" and row.decision.startswith("reply-all with note+")


@pytest.mark.parametrize("form", ["final dot", "final dot in angle brackets", "quoted name, final dot",
                                  "encoded name, final dot", "second Cc header, final dot"])
def test_reply_all_naming_the_note_address_with_a_final_dot_is_never_public(test_odoo, gateway, mailer, form):
    # Found by a lifecycle review: mail-parser reads "note+...@notes.example.com." (and the same in
    # angle brackets) as no address at all, where the standard library's parser and the MTA see the
    # note address, the final dot stripped. The reply+ delivery of such a reply-all was filed
    # publicly while the note+ delivery, written with the dot, was refused at RCPT (553 by
    # aiosmtpd behind Postfix): the internal text reached the portal.
    note, reply = (mailer.address(kind, "project.task", TASK_ID) for kind in ("note", "reply"))
    cc = {
        "final dot": f"Cc: {note}.\r\n",
        "final dot in angle brackets": f"Cc: <{note}.>\r\n",
        "quoted name, final dot": f'Cc: "Task, internal note" <{note}.>\r\n',
        "encoded name, final dot": f"Cc: =?utf-8?q?T=C3=A2che_note?= <{note}.>\r\n",
        "second Cc header, final dot": f"Cc: someone@example.com\r\nCc: Task note <{note}.>\r\n",
    }[form]
    raw = compose(PAULA, reply, "Re: Gateway acceptance task", "Internal: the customer broke the seal himself.",
                  message_id=f"<final-dot-{form.replace(' ', '-').replace(',', '')}@example.com>")
    raw = mailer.sign(cc.encode() + raw)
    assert mailer.send(raw, reply).startswith("250 2.0.0 Filed as Odoo message ")
    _one_note_nobody_outside_sees(test_odoo)
    [row] = _journal(gateway)
    assert (row.kind, row.decision) == ("note", f"reply-all with {note}: filed as a note, never public")


def test_reply_naming_a_note_address_of_another_record_with_a_final_dot_is_refused(test_odoo, gateway, mailer):
    to = mailer.address("reply", "project.task", TASK_ID)
    other = mailer.address("note", "sale.order", SALE_ORDER_ID)
    assert mailer.send(_reply_to(mailer, to, cc=f"Order note <{other}.>"), to) == ALSO_A_NOTE
    assert test_odoo.filings() == []


UNREADABLE = ("550 5.7.1 The message's To or Cc holds an address the gateway cannot read that may be an internal "
              "note address: send the public reply without it, or write it as a plain name@domain address: ")


@pytest.mark.parametrize("form", ["double at", "note part, comment", "alias domain in brackets",
                                  "alias domain, no note part"])
def test_reply_naming_an_unreadable_address_that_may_be_a_note_is_refused_never_public(test_odoo, gateway, mailer,
                                                                                      form):
    # The same review: neither mail-parser nor the standard library reads these as an address of the
    # gateway, so the reply-all check never saw them; a lenient MTA may still deliver one to the note
    # address, and the sender may have meant it so. Refused rather than filed publicly (fail closed).
    to = mailer.address("reply", "project.task", TASK_ID)
    local, _, domain = mailer.address("note", "project.task", TASK_ID).partition("@")
    cc = {"double at": f"{local}@@{domain}", "note part, comment": f"{local}(@{domain}",
          "alias domain in brackets": f"Task <{local}@[{domain}>", "alias domain, no note part": f"team@@{domain}"}[form]
    reply = mailer.send(_reply_to(mailer, to, cc=f"someone@example.com, {cc}"), to)
    assert reply == UNREADABLE + cc
    assert test_odoo.filings() == []
    [row] = _journal(gateway)
    assert (row.verdict, row.refusal_class) == ("refused", "UnreadableRecipient")
    assert row.decision == f"also addressed to unreadable {cc!r}: refused"


def test_an_unreadable_address_elsewhere_leaves_a_public_reply_public(test_odoo, gateway, mailer):
    # Fail closed only for what may be a note address: an item mail-parser drops that names neither a
    # note local part nor an alias domain (a colleague's address with a final dot) changes nothing.
    to = mailer.address("reply", "project.task", TASK_ID)
    assert mailer.send(_reply_to(mailer, to, cc="bob@example.com."), to).startswith("250 2.0.0 Filed as Odoo message ")
    [filing] = test_odoo.filings()
    assert filing.subtype_xmlid == "mail.mt_comment"


@pytest.mark.parametrize("token", ["retired secret", "mistyped signature"])
def test_reply_all_with_a_note_address_that_no_longer_verifies_is_never_public(test_odoo, gateway, mailer, token):
    # Found by a review: the reply-all check skipped a note address whose signature does not verify
    # (a secret rotated out, a token mistyped); its own delivery is refused at RCPT and the reply
    # was filed publicly. It still says the sender meant the message as a note.
    reply = mailer.address("reply", "project.task", TASK_ID)
    if token == "retired secret":
        note = address.mint(b"retired-secret-0123456789abcdef", ALIAS_DOMAIN, "note", "project.task", TASK_ID)
    else:
        valid = mailer.address("note", "project.task", TASK_ID)
        local, _, domain = valid.partition("@")
        note = f"{local[:-1]}{'a' if local[-1] != 'a' else 'b'}@{domain}"
    raw = _reply_to(mailer, reply, cc=note, message_id="<reply-all-unverified@example.com>")
    assert mailer.send(raw, note).startswith("550 5.1.1 ")
    assert mailer.send(raw, reply).startswith("250 2.0.0 Filed as Odoo message ")
    _one_note_nobody_outside_sees(test_odoo)
    row = next(row for row in _journal(gateway) if row.rcpt == reply)
    assert row.kind == "note" and row.decision == f"reply-all with {note}: filed as a note, never public"


def test_reply_naming_a_plain_note_address_is_never_public(test_odoo, gateway, mailer):
    to = mailer.address("reply", "project.task", TASK_ID)
    reply = mailer.send(_reply_to(mailer, to, cc=NOTE), to)
    assert reply.startswith("250 ")
    assert test_odoo.posts()[0].kwargs["subtype_xmlid"] == "mail.mt_note"


ALSO_A_NOTE = ("550 5.7.1 The message is also addressed to an internal note address: send the public reply "
               "separately, without the note address in To or Cc")


@pytest.mark.parametrize("order", [("note", "reply"), ("reply", "note")])
def test_reply_naming_a_note_address_of_another_record_is_refused_never_public(test_odoo, gateway, mailer, order):
    # Found by a review (it was filed publicly): one email To the task's reply+ and Cc the order's
    # note+ was a note on the order and, the same text meant internal, public on the task.
    to = mailer.address("reply", "project.task", TASK_ID)
    other = mailer.address("note", "sale.order", SALE_ORDER_ID)
    raw = _reply_to(mailer, to, cc=other, message_id="<also-a-note@example.com>")
    replies = {kind: mailer.send(raw, {"note": other, "reply": to}[kind]) for kind in order}
    assert replies["reply"] == ALSO_A_NOTE
    assert replies["note"].startswith("250 2.0.0 Filed as Odoo message ")
    [filing] = test_odoo.filings()
    assert (filing.model, filing.res_id, filing.subtype_xmlid) == ("sale.order", SALE_ORDER_ID, "mail.mt_note")
    assert test_odoo.portal_chatter_ids("project.task", TASK_ID, partner_id=PAULA_PARTNER_ID) == []
    assert test_odoo.outbox == []
    row = next(row for row in _journal(gateway) if row.rcpt == to)
    assert (row.verdict, row.decision) == ("refused", f"also addressed to {other}: refused")


@pytest.mark.parametrize("cc", ["note+project.task-6o-abcdefghijklmnop", "note+sale.order-23-retired"])
def test_reply_naming_an_unreadable_note_address_of_another_record_is_refused(test_odoo, gateway, mailer, cc):
    # A note+ whose record part is mistyped names no record; one whose signature does not verify
    # names the record of its local part: either was meant as a note, and not of this task.
    to = mailer.address("reply", "project.task", TASK_ID)
    assert mailer.send(_reply_to(mailer, to, cc=f"{cc}@{ALIAS_DOMAIN}"), to) == ALSO_A_NOTE
    assert test_odoo.filings() == []


def test_reply_all_from_a_non_contributor_is_refused_rather_than_made_public(test_odoo, gateway, mailer):
    addresses = {kind: mailer.address(kind, "project.task", TASK_ID) for kind in ("note", "reply")}
    raw = _reply_to(mailer, addresses["reply"], cc=addresses["note"], sender=PETER_EMAIL)
    reply = mailer.send(raw, addresses["reply"], mail_from=PETER_EMAIL)
    assert reply.startswith("550 5.7.1 Sender may not post internal notes")
    assert test_odoo.posts() == []


# Found by a review: a plain reply@ whose To or Cc named a note address was answered "also addressed
# to an internal note address" or "may not post internal notes" before the sender's access to the
# record its References led to was established. Which answer depended on that record, so Peter, who
# cannot read task 42, learnt whether a Message-ID was in Odoo and, with a made-up note+ of a guessed
# record in Cc, which record held it. Each is now told what a message of unknown references is.
@pytest.mark.parametrize("cc", [None, "order note+", "made-up order note+", "guessed task note+", "plain note@"])
@pytest.mark.parametrize("known", [True, False], ids=["known", "unknown"])
def test_plain_reply_naming_a_note_address_tells_nothing_of_records_the_sender_cannot_read(
        test_odoo, gateway, mailer, cc, known):
    in_reply_to = (_message_on(test_odoo, "project.task", PRIVATE_TASK_ID, "<cc@customer.example>") if known
                   else "<nobody-knows@example.com>")
    cc = {None: None, "order note+": mailer.address("note", "sale.order", SALE_ORDER_ID),
          "made-up order note+": f"note+sale.order-{SALE_ORDER_ID}-x@{ALIAS_DOMAIN}",
          "guessed task note+": f"note+project.task-{PRIVATE_TASK_ID}-x@{ALIAS_DOMAIN}", "plain note@": NOTE}[cc]
    raw = _reply_to(mailer, REPLY, in_reply_to=in_reply_to, sender=PETER_EMAIL, cc=cc)
    assert mailer.send(raw, REPLY, mail_from=PETER_EMAIL) == UNROUTED
    assert test_odoo.posts() == []
    [row] = _journal(gateway)
    assert row.refusal_class == ("RecordAccessDenied" if known else "NoRecordReferenced"), row.decision


NOT_CONTRIBUTOR_AS_NOTE = ("550 5.7.1 Sender may not post internal notes: portal.plain@example.com is not in the "
                           "contributor group; the message is also addressed to a note address, so it is filed only "
                           "as a note")


@pytest.mark.parametrize("sender, cc, expected", [
    (PAULA, "order note+", ALSO_A_NOTE),
    (PAULA, "made-up task note+", "250 2.0.0 Filed"),
    (PAULA, "plain note@", "250 2.0.0 Filed"),
    (PETER_EMAIL, "order note+", ALSO_A_NOTE),
    (PETER_EMAIL, "made-up task note+", NOT_CONTRIBUTOR_AS_NOTE),
    (PETER_EMAIL, "plain note@", NOT_CONTRIBUTOR_AS_NOTE),
])
def test_plain_reply_naming_a_note_address_of_a_readable_record_is_a_note_or_refused(
        test_odoo, gateway, mailer, sender, cc, expected):
    # The same review's counterpart: a sender who may read the record (both follow task 60) is told
    # why, and nothing of a reply@ naming a note address is ever public.
    in_reply_to = _message_on(test_odoo, "project.task", TASK_ID, "<public@customer.example>")
    cc = {"order note+": mailer.address("note", "sale.order", SALE_ORDER_ID),
          "made-up task note+": f"note+project.task-{TASK_ID}-x@{ALIAS_DOMAIN}", "plain note@": NOTE}[cc]
    reply = mailer.send(_reply_to(mailer, REPLY, in_reply_to=in_reply_to, sender=sender, cc=cc), REPLY,
                        mail_from=sender)
    assert reply.startswith(expected), reply
    assert [filing.subtype_xmlid for filing in test_odoo.filings()] == (["mail.mt_note"] if reply.startswith("250")
                                                                         else [])
    assert test_odoo.outbox == []


# A reply that answers an internal note (found by a design review: reply+ and reply@ filed it
# publicly, and its collapsed quote carried the note to the record's portal followers).

SECRET = "Our margin on this job is 40%, do not tell the customer."


def _file_note(mailer, message_id, model="project.task", res_id=TASK_ID):
    to = mailer.address("note", model, res_id)
    raw = compose(PAULA, to, "Pump P7", SECRET, sender_name="Paula Contributor", message_id=message_id)
    reply = mailer.send(mailer.sign(raw), to)
    assert reply.startswith("250 2.0.0 Filed")
    return int(reply.rsplit(" ", 1)[1])


def _answer(mailer, to, *, in_reply_to=None, references=(), sender=PAULA, message_id=None):
    """A plain Reply to a message, quoting it, as a mail client writes it."""
    body = ("The visit is done, the pump runs again.\n\n"
            "On Mon, 1 Dec 2026 at 10:00, Paula Contributor <portal.contrib@example.com> wrote:\n"
            f"> {SECRET}\n")
    raw = compose(sender, to, "Re: Pump P7", body, message_id=message_id)
    headers = b""
    if in_reply_to:
        headers += b"In-Reply-To: " + in_reply_to.encode() + b"\r\n"
    if references:
        headers += b"References: " + b"\r\n ".join(value.encode() for value in references) + b"\r\n"
    return mailer.sign(headers + raw)


def _backend_message(test_odoo, subtype_id, *, is_internal=False, model="project.task", res_id=TASK_ID,
                     author_id=MARC_PARTNER_ID):
    """A message posted in Odoo's backend: Odoo gives it its own Message-ID, which the emails it
    sends carry (References of every notification of the record, facts i)."""
    message_id = test_odoo.add_record("mail.message", {
        "model": model, "res_id": res_id, "message_type": "comment", "subtype_id": subtype_id,
        "is_internal": is_internal, "body": f"<p>{SECRET}</p>", "author_id": author_id})
    return test_odoo.record("mail.message", message_id, ["message_id"])["message_id"]


def _nothing_public(test_odoo, *records):
    for model, res_id in (("project.task", TASK_ID), *records):
        for partner_id in (PETER_PARTNER_ID, PAULA_PARTNER_ID):
            assert not any("40%" in row["body"] for row in test_odoo.portal_chatter(model, res_id, partner_id))
    # The internal author of a note answered is emailed the answer, as by Odoo's mail gateway; no
    # portal user or customer is.
    outside = [mail for mail in test_odoo.outbox
               if test_odoo.record("res.partner", mail.partner_id, ["partner_share"])["partner_share"]]
    assert not any("40%" in mail.body_html or "40%" in mail.text for mail in outside)


@pytest.mark.parametrize("to", ["reply+", "reply@"])
def test_a_reply_to_an_internal_note_is_filed_as_a_note(test_odoo, gateway, mailer, to):
    _file_note(mailer, "<n1@example.com>")
    to = mailer.address("reply", "project.task", TASK_ID) if to == "reply+" else REPLY
    raw = _answer(mailer, to, in_reply_to="<n1@example.com>", references=["<n1@example.com>"],
                  message_id="<r1@example.com>")
    reply = mailer.send(raw, to)
    assert reply.startswith("250 2.0.0 Filed as Odoo message ")
    filed = test_odoo.message(int(reply.rsplit(" ", 1)[1]))
    assert filed["subtype_xmlid"] == "mail.mt_note" and "visit is done" in filed["body"]
    assert [filing.subtype_xmlid for filing in test_odoo.filings()] == ["mail.mt_note", "mail.mt_note"]
    _nothing_public(test_odoo)
    row = _journal(gateway)[0]
    assert (row.rcpt, row.kind, row.model, row.res_id) == (to, "note", "project.task", TASK_ID)
    assert row.decision.endswith("answers internal message <n1@example.com>: filed as a note, never public")


def test_a_reply_to_a_public_message_stays_public(test_odoo, gateway, mailer):
    # An earlier note in References does not make it one: the parent is the message of In-Reply-To,
    # as for Odoo's mail gateway. Odoo's own notifications reference the record's first message,
    # which may be a note.
    _file_note(mailer, "<n1@example.com>")
    public = _notification_id(test_odoo, "project.task", TASK_ID)
    to = mailer.address("reply", "project.task", TASK_ID)
    raw = _answer(mailer, to, in_reply_to=public, references=["<n1@example.com>", public])
    assert mailer.send(raw, to).startswith("250 2.0.0 Filed")
    assert [filing.subtype_xmlid for filing in test_odoo.filings()] == ["mail.mt_note", "mail.mt_comment"]
    assert _journal(gateway)[0].kind == "reply"


def test_a_reply_without_in_reply_to_answers_the_most_recent_reference(test_odoo, gateway, mailer):
    public = _notification_id(test_odoo, "project.task", TASK_ID)
    note = _backend_message(test_odoo, SUBTYPE_NOTE_ID)
    to = mailer.address("reply", "project.task", TASK_ID)
    assert mailer.send(_answer(mailer, to, references=[public, note]), to).startswith("250 2.0.0 Filed")
    assert [filing.subtype_xmlid for filing in test_odoo.filings()] == ["mail.mt_note"]
    _nothing_public(test_odoo)


def test_a_reply_without_in_reply_to_answers_the_most_recently_created_reference(test_odoo, gateway, mailer):
    # As Odoo's _get_parent_message (order='create_date DESC, id DESC'), not the last one written:
    # the note was created after the public message that References names after it.
    public = _notification_id(test_odoo, "project.task", TASK_ID)
    _file_note(mailer, "<n10@example.com>")
    to = mailer.address("reply", "project.task", TASK_ID)
    raw = _answer(mailer, to, in_reply_to="<unknown-10@example.com>", references=["<n10@example.com>", public])
    assert mailer.send(raw, to).startswith("250 2.0.0 Filed")
    assert [filing.subtype_xmlid for filing in test_odoo.filings()] == ["mail.mt_note", "mail.mt_note"]
    _nothing_public(test_odoo)


# A reply whose References begin with a note, the thread's root, followed by ids Odoo never saw (the
# thread went on by direct email), and whose In-Reply-To is the last of them (found by a review: the
# gateway looked up the 20 most recent ids only, and with 20 later ones filed the reply publicly,
# the note in its quote; Odoo's own mail gateway looks up every one and files it as a note).

@pytest.mark.parametrize("later", [19, 20, 150])
def test_a_reply_whose_references_begin_with_a_note_is_a_note_however_long_they_are(test_odoo, gateway, mailer,
                                                                                     later):
    _file_note(mailer, "<root-note@example.com>")
    to = mailer.address("reply", "project.task", TASK_ID)
    unknown = [f"<direct-{number}@example.com>" for number in range(later)]
    raw = _answer(mailer, to, in_reply_to=unknown[-1], references=["<root-note@example.com>", *unknown])
    reply = mailer.send(raw, to)
    assert reply.startswith("250 2.0.0 Filed as Odoo message "), reply
    assert [filing.subtype_xmlid for filing in test_odoo.filings()] == ["mail.mt_note", "mail.mt_note"]
    _nothing_public(test_odoo)
    assert _journal(gateway)[0].decision.endswith(
        "answers internal message <root-note@example.com>: filed as a note, never public")


TOO_MANY = ("550 5.7.1 The message references too many earlier messages to tell whether it answers an internal "
            "note: send it with a shorter References header, or to the record's note address")


def test_a_reply_whose_left_out_references_could_hold_the_note_is_refused_not_filed_publicly(test_odoo, gateway,
                                                                                               mailer):
    # The first id and the newest 99 are kept; the note, second, is not looked up.
    _file_note(mailer, "<second-note@example.com>")
    to = mailer.address("reply", "project.task", TASK_ID)
    unknown = [f"<direct-{number}@example.com>" for number in range(99)]
    raw = _answer(mailer, to, in_reply_to=unknown[-1],
                  references=["<root@example.com>", "<second-note@example.com>", *unknown])
    reply = mailer.send(raw, to)
    assert reply.startswith(TOO_MANY + ": 1 of its In-Reply-To and References were not looked up"), reply
    assert [filing.subtype_xmlid for filing in test_odoo.filings()] == ["mail.mt_note"]
    _nothing_public(test_odoo)


def test_a_reply_whose_in_reply_to_odoo_has_is_decided_by_it_however_long_its_references(test_odoo, gateway,
                                                                                          mailer):
    public = _notification_id(test_odoo, "project.task", TASK_ID)
    to = mailer.address("reply", "project.task", TASK_ID)
    unknown = [f"<direct-{number}@example.com>" for number in range(150)]
    raw = _answer(mailer, to, in_reply_to=public, references=[*unknown, public])
    assert mailer.send(raw, to).startswith("250 2.0.0 Filed as Odoo message ")
    assert [filing.subtype_xmlid for filing in test_odoo.filings()] == ["mail.mt_comment"]


@pytest.mark.parametrize("subtype_id, is_internal, expected", [
    (SUBTYPE_NOTE_ID, False, "mail.mt_note"),
    (SUBTYPE_ACTIVITIES_ID, False, "mail.mt_note"),  # another internal subtype
    (SUBTYPE_COMMENT_ID, True, "mail.mt_note"),  # a comment marked internal (Employee Only)
    (SUBTYPE_COMMENT_ID, False, "mail.mt_comment"),
    (SUBTYPE_TASK_NEW_ID, False, "mail.mt_comment"),  # a public tracking message
])
def test_a_reply_to_a_message_posted_in_odoo_follows_its_visibility(test_odoo, gateway, mailer, subtype_id,
                                                                      is_internal, expected):
    parent = _backend_message(test_odoo, subtype_id, is_internal=is_internal)
    assert f"-openerp-{TASK_ID}-project.task@" in parent
    to = mailer.address("reply", "project.task", TASK_ID)
    assert mailer.send(_answer(mailer, to, in_reply_to=parent, references=[parent]), to).startswith("250 2.0.0 Filed")
    assert [filing.subtype_xmlid for filing in test_odoo.filings()] == [expected]


def test_a_reply_to_a_note_filed_under_a_derived_message_id_is_a_note(test_odoo, gateway, mailer):
    # Peter's public message holds <n3@example.com> on the task first, so Paula's note is filed
    # under her own derived ID (docs/reliability.md); her reply names the ID she sent it with.
    to = mailer.address("reply", "project.task", TASK_ID)
    peter = compose(PETER_EMAIL, to, "Pump P7", "Is the pump fixed?", message_id="<n3@example.com>")
    assert mailer.send(mailer.sign(peter), to, mail_from=PETER_EMAIL).startswith("250 2.0.0 Filed")
    note = test_odoo.message(_file_note(mailer, "<n3@example.com>"))
    assert note["message_id"].startswith("<n3.project.task-60.from-")
    assert mailer.send(_answer(mailer, to, in_reply_to="<n3@example.com>"), to).startswith("250 2.0.0 Filed")
    assert [filing.subtype_xmlid for filing in test_odoo.filings()] == ["mail.mt_comment", "mail.mt_note",
                                                                        "mail.mt_note"]
    _nothing_public(test_odoo)


# Who is told of a reply filed as a note because it answers one (found by a review against Odoo 18: the
# gateway filed it with no recipients, and the employee whose note a contributor answered, following
# the task for Discussions only as by default, never learnt of the answer; Odoo's own mail gateway
# adds the note's author to the recipients, mail_thread.py:1297-1308). Only an active internal user.

UNSIGNED = SimpleNamespace(sign=lambda raw: raw)


def _users_lookups(test_odoo):
    return [call for call in test_odoo.calls if call.model == "res.users" and call.model_method == "search_read"
            and "partner_id" in repr(call.args)]


def _archived_employee(test_odoo):
    uid = test_odoo.add_user("ed.employee@example.com", "Ed Employee", internal=True)
    test_odoo.archive("res.users", uid)
    return test_odoo.record("res.users", uid, ["partner_id"])["partner_id"][0]


@pytest.mark.parametrize("author, notified", [
    ("internal user", True),
    ("portal user", False),
    ("customer", False),
    ("archived internal user", False),
])
def test_a_reply_answering_a_note_notifies_its_author_only_if_an_internal_user(test_odoo, gateway, mailer, author,
                                                                               notified):
    author_id = {"internal user": lambda: MARC_PARTNER_ID, "portal user": lambda: PETER_PARTNER_ID,
                 "customer": lambda: CUSTOMER_PARTNER_ID,
                 "archived internal user": lambda: _archived_employee(test_odoo)}[author]()
    note = _backend_message(test_odoo, SUBTYPE_NOTE_ID, author_id=author_id)
    to = mailer.address("reply", "project.task", TASK_ID)
    test_odoo.clear_calls()
    test_odoo.clear_outbox()
    reply = mailer.send(_answer(mailer, to, in_reply_to=note, references=[note]), to)
    assert reply.startswith("250 2.0.0 Filed")
    [post] = test_odoo.posts()
    assert post.kwargs["subtype_xmlid"] == "mail.mt_note"
    assert post.kwargs["partner_ids"] == ([author_id] if notified else [])
    assert (author_id in [row["res_partner_id"][0] for row in test_odoo.notifications(int(reply.rsplit(" ", 1)[1]))]
            ) is notified
    assert [mail.partner_id for mail in test_odoo.outbox if mail.partner_id == author_id] == (
        [author_id] if notified else [])
    assert len(_users_lookups(test_odoo)) == 1
    _nothing_public(test_odoo)


def test_the_author_of_the_note_answered_is_looked_up_with_the_internal_users_in_cc(test_odoo, gateway, mailer):
    # One res.users search for both, as for To/Cc alone (issue 6).
    note = _backend_message(test_odoo, SUBTYPE_NOTE_ID)
    to = mailer.address("reply", "project.task", TASK_ID)
    raw = _answer(UNSIGNED, to, in_reply_to=note, references=[note])
    raw = mailer.sign(raw.replace(b"\r\nSubject:", b"\r\nCc: Mitchell Admin <admin@yourcompany.example.com>, "
                                  b"portal.plain@example.com\r\nSubject:", 1))
    test_odoo.clear_calls()
    assert mailer.send(raw, to).startswith("250 2.0.0 Filed")
    [post] = test_odoo.posts()
    assert post.kwargs["partner_ids"] == [ADMIN_PARTNER_ID, MARC_PARTNER_ID]
    assert len(_users_lookups(test_odoo)) == 1


def test_the_internal_author_of_the_note_answered_is_notified_where_cc_is_not(test_odoo, start_gateway, dns_server,
                                                                                dkim_keys):
    # notify_recipients is about the addresses the sender put in To/Cc; the note answered is not one.
    mailer = Mailer(start_gateway(dns_server.port, note={"notify_recipients": False}), dkim_keys)
    note = _backend_message(test_odoo, SUBTYPE_NOTE_ID)
    to = mailer.address("reply", "project.task", TASK_ID)
    raw = _answer(UNSIGNED, to, in_reply_to=note, references=[note])
    raw = mailer.sign(raw.replace(b"\r\nSubject:", b"\r\nCc: admin@yourcompany.example.com\r\nSubject:", 1))
    assert mailer.send(raw, to).startswith("250 2.0.0 Filed")
    [post] = test_odoo.posts()
    assert post.kwargs["partner_ids"] == [MARC_PARTNER_ID]


def test_the_sender_answering_her_own_note_is_not_added_to_its_recipients(test_odoo, gateway, mailer):
    _file_note(mailer, "<n1@example.com>")
    to = mailer.address("reply", "project.task", TASK_ID)
    test_odoo.clear_calls()
    assert mailer.send(_answer(mailer, to, in_reply_to="<n1@example.com>"), to).startswith("250 2.0.0 Filed")
    [post] = test_odoo.posts()
    assert post.kwargs["partner_ids"] == [] and _users_lookups(test_odoo) == []


# A reply to this task that answers a note of another record (found by a review of the fix above:
# the parent was looked for on this task only, and the reply was filed publicly here, the other
# record's note in its quote). Odoo's catchall finds the parent on any record and would file it
# there as a note; the address names this task, so the gateway refuses it.

CROSS_NOTE = ("550 5.7.1 The message answers an internal note of another record: send it to that record's "
              "note address")


def _other_task(test_odoo):
    """Another task of the project, followed by Paula and Peter like task 60."""
    task_id = test_odoo.add_record("project.task", {"name": "Pump P8", "project_id": PROJECT_ID})
    for partner_id in (PAULA_PARTNER_ID, PETER_PARTNER_ID):
        test_odoo.add_follower("project.task", task_id, partner_id)
    return task_id


@pytest.mark.parametrize("parent", ["gateway note on the order", "backend note on another task"])
def test_a_reply_to_a_note_of_another_record_is_refused_not_filed_publicly(test_odoo, gateway, mailer, parent):
    if parent == "gateway note on the order":
        other = ("sale.order", SALE_ORDER_ID)
        note = "<n4@example.com>"
        _file_note(mailer, note, *other)
    else:
        other = ("project.task", _other_task(test_odoo))
        note = _backend_message(test_odoo, SUBTYPE_NOTE_ID, model=other[0], res_id=other[1])
    before = test_odoo.filings()
    to = mailer.address("reply", "project.task", TASK_ID)
    # The answer names this task's public message after the note, in References: In-Reply-To decides.
    public = _notification_id(test_odoo, "project.task", TASK_ID)
    raw = _answer(mailer, to, in_reply_to=note, references=[public, note], message_id="<r4@example.com>")
    assert mailer.send(raw, to) == CROSS_NOTE
    assert test_odoo.filings() == before
    _nothing_public(test_odoo, other)
    row = _journal(gateway)[0]
    assert (row.rcpt, row.verdict, row.model, row.res_id) == (to, "refused", "project.task", TASK_ID)
    assert row.decision == f"answers internal message {note} of {other[0]},{other[1]}: refused"


def test_a_reply_to_a_public_message_of_another_record_stays_public(test_odoo, gateway, mailer):
    public = _notification_id(test_odoo, "sale.order", SALE_ORDER_ID)
    to = mailer.address("reply", "project.task", TASK_ID)
    assert mailer.send(_answer(mailer, to, in_reply_to=public, references=[public]), to).startswith("250 2.0.0 Filed")
    filing = test_odoo.filings()[-1]
    assert (filing.model, filing.res_id, filing.subtype_xmlid) == ("project.task", TASK_ID, "mail.mt_comment")
    assert _journal(gateway)[0].kind == "reply"


def test_a_reply_to_a_public_message_of_this_record_with_another_records_note_in_references_stays_public(
        test_odoo, gateway, mailer):
    # The parent is the message of In-Reply-To, wherever the older references are.
    _file_note(mailer, "<n6@example.com>", "sale.order", SALE_ORDER_ID)
    public = _notification_id(test_odoo, "project.task", TASK_ID)
    to = mailer.address("reply", "project.task", TASK_ID)
    raw = _answer(mailer, to, in_reply_to=public, references=["<n6@example.com>", public])
    assert mailer.send(raw, to).startswith("250 2.0.0 Filed")
    assert test_odoo.filings()[-1].subtype_xmlid == "mail.mt_comment"


@pytest.mark.parametrize("to", ["reply+", "reply@"])
def test_a_non_contributor_answering_a_note_is_refused_rather_than_made_public(test_odoo, gateway, mailer, to):
    _file_note(mailer, "<n5@example.com>")
    to = mailer.address("reply", "project.task", TASK_ID) if to == "reply+" else REPLY
    raw = _answer(mailer, to, in_reply_to="<n5@example.com>", sender=PETER_EMAIL)
    reply = mailer.send(raw, to, mail_from=PETER_EMAIL)
    assert reply == ("550 5.7.1 Sender may not post internal notes: portal.plain@example.com is not in the "
                     "contributor group; the message answers an internal note of this record, so it is filed "
                     "only as a note")
    assert [filing.subtype_xmlid for filing in test_odoo.filings()] == ["mail.mt_note"]
    _nothing_public(test_odoo)


# A reply whose References or In-Reply-To names a note folded inside the msg-id ("<...-openerp-\r\n
# 60-project.task@host>", as some mail clients split a long header; Odoo's mail gateway deletes the
# whitespace inside each <...>). Found by a review: the gateway dropped the folded id, did not see
# the note, and filed the reply publicly, the note in its quote, emailed to the portal followers.

@pytest.mark.parametrize("to", ["reply+", "reply@"])
@pytest.mark.parametrize("where", ["References", "In-Reply-To", "both"])
@pytest.mark.parametrize("fold", ["\r\n ", "\r\n\t"], ids=["space", "tab"])
def test_a_reply_naming_a_note_folded_inside_its_msg_id_is_filed_as_a_note(test_odoo, gateway, mailer, to, where,
                                                                            fold):
    note = _backend_message(test_odoo, SUBTYPE_NOTE_ID, is_internal=True)
    folded = folded_msg_id(note, fold)
    to = mailer.address("reply", "project.task", TASK_ID) if to == "reply+" else REPLY
    raw = _answer(mailer, to, in_reply_to=folded if where != "References" else None,
                  references=["<older@example.com>", folded] if where != "In-Reply-To" else ())
    reply = mailer.send(raw, to)
    assert reply.startswith("250 2.0.0 Filed as Odoo message "), reply
    assert [filing.subtype_xmlid for filing in test_odoo.filings()] == ["mail.mt_note"]
    _nothing_public(test_odoo)
    assert _journal(gateway)[0].decision.endswith(f"answers internal message {note}: filed as a note, never public")


# A reply whose References or In-Reply-To names a note in UTF-8 (RFC 6532: "<n13.1@bücher.example>")
# or as an RFC 2047 encoded word, both of which Odoo's mail gateway decodes (message_parse reads them
# under policy SMTP, as unstructured headers). Found by a differential review against Odoo 18: the
# gateway read them as compat32 text, UTF-8 bytes as U+FFFD and encoded words never decoded, while it
# filed the note under its decoded Message-ID; the reply did not find the note and was filed
# publicly, the note in its quote, where Odoo files it as a note.

UTF8_NOTE_ID = "<n13.1@b\u00fccher.example>"
ASCII_NOTE_ID = "<n14.1733000000.1@example.com>"


def _encoded_word(text, charset="utf-8", encoding="q"):
    """``text`` as one RFC 2047 encoded word, every byte of the msg-id encoded as some clients do."""
    data = text.encode(charset)
    if encoding == "b":
        return f"=?{charset}?b?{base64.b64encode(data).decode()}?="
    return f"=?{charset}?q?{''.join(chr(byte) if chr(byte).isascii() and chr(byte).isalnum() else f'={byte:02X}' for byte in data)}?="


NAMED_OTHERWISE = {
    # note's Message-ID as its header writes it, how the reply writes it, the ID it is filed under
    "UTF-8, named in UTF-8": (UTF8_NOTE_ID.encode(), UTF8_NOTE_ID, UTF8_NOTE_ID),
    "UTF-8, named in an encoded word": (UTF8_NOTE_ID.encode(), _encoded_word(UTF8_NOTE_ID), UTF8_NOTE_ID),
    "named in a q encoded word": (ASCII_NOTE_ID.encode(), _encoded_word(ASCII_NOTE_ID, "us-ascii"), ASCII_NOTE_ID),
    "named in a b encoded word": (ASCII_NOTE_ID.encode(), _encoded_word(ASCII_NOTE_ID, encoding="b"), ASCII_NOTE_ID),
    "named in two encoded words, folded": (
        ASCII_NOTE_ID.encode(), _encoded_word(ASCII_NOTE_ID[:12]) + "\r\n " + _encoded_word(ASCII_NOTE_ID[12:]),
        ASCII_NOTE_ID),
}


@pytest.mark.parametrize("to", ["reply+", "reply@"])
@pytest.mark.parametrize("where", ["References", "In-Reply-To"])
@pytest.mark.parametrize("note_header, written, msg_id", NAMED_OTHERWISE.values(), ids=NAMED_OTHERWISE.keys())
def test_a_reply_naming_a_note_in_utf8_or_an_encoded_word_is_filed_as_a_note(test_odoo, gateway, mailer, to, where,
                                                                             note_header, written, msg_id):
    note = test_odoo.message(_file_odd_note(mailer, note_header))
    assert note["message_id"] == msg_id
    to = mailer.address("reply", "project.task", TASK_ID) if to == "reply+" else REPLY
    raw = _answer(mailer, to, in_reply_to=written if where == "In-Reply-To" else None,
                  references=["<older@example.com>", written] if where == "References" else (),
                  message_id="<r13@example.com>")
    reply = mailer.send(raw, to)
    assert reply.startswith("250 2.0.0 Filed as Odoo message "), reply
    assert [filing.subtype_xmlid for filing in test_odoo.filings()] == ["mail.mt_note", "mail.mt_note"]
    _nothing_public(test_odoo)
    assert _journal(gateway)[0].decision.endswith(f"answers internal message {msg_id}: filed as a note, never public")


@pytest.mark.parametrize("encoding", ["q", "b"])
def test_a_reply_naming_a_backend_note_in_an_encoded_word_is_filed_as_a_note(test_odoo, gateway, mailer, encoding):
    # Odoo's own "<...-openerp-60-project.task@host>" of a note logged in the backend, as a client
    # that encodes References writes it.
    note = _backend_message(test_odoo, SUBTYPE_NOTE_ID, is_internal=True)
    to = mailer.address("reply", "project.task", TASK_ID)
    raw = _answer(mailer, to, references=[_encoded_word(note, encoding=encoding)])
    assert mailer.send(raw, to).startswith("250 2.0.0 Filed as Odoo message ")
    assert [filing.subtype_xmlid for filing in test_odoo.filings()] == ["mail.mt_note"]
    _nothing_public(test_odoo)
    assert _journal(gateway)[0].decision.endswith(f"answers internal message {note}: filed as a note, never public")


@pytest.mark.parametrize("to", [NOTE, REPLY])
def test_plain_address_follows_a_reference_in_an_encoded_word(test_odoo, gateway, mailer, to):
    notification = _notification_id(test_odoo, "project.task", TASK_ID)
    reply = mailer.send(_reply_to(mailer, to, references=["<earlier@example.com>", _encoded_word(notification)]), to)
    assert reply.startswith("250 2.0.0 Filed"), reply
    [filing] = test_odoo.filings()
    assert (filing.model, filing.res_id) == ("project.task", TASK_ID)
    assert _journal(gateway)[0].decision == f"routed by mail.message {notification}"


@pytest.mark.parametrize("first, retry, msg_id", [
    (UTF8_NOTE_ID.encode(), _encoded_word(UTF8_NOTE_ID).encode(), UTF8_NOTE_ID),
    (_encoded_word(UTF8_NOTE_ID, encoding="b").encode(), UTF8_NOTE_ID.encode(), UTF8_NOTE_ID),
    (ASCII_NOTE_ID.encode(), _encoded_word(ASCII_NOTE_ID, "us-ascii").encode(), ASCII_NOTE_ID),
    (_encoded_word(ASCII_NOTE_ID).encode(), ASCII_NOTE_ID.encode(), ASCII_NOTE_ID),
], ids=["UTF-8 then encoded", "encoded then UTF-8", "plain then encoded", "encoded then plain"])
def test_a_retry_spelling_its_message_id_otherwise_is_the_same_message(test_odoo, gateway, mailer, first, retry,
                                                                      msg_id):
    # The Message-ID is read as In-Reply-To and References are: one ID however a relay spells it.
    note_id = _file_odd_note(mailer, first)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = compose(PAULA, to, "Pump P7", SECRET, sender_name="Paula Contributor")
    again = mailer.sign(_with_message_id(raw, retry))
    assert mailer.send(again, to) == f"250 2.0.0 Already filed as Odoo message {note_id}"
    assert [row.message_id for row in _journal(gateway)] == [msg_id] * 2
    assert test_odoo.message(note_id)["message_id"] == msg_id


# A note whose Message-ID is not a bare <id@domain> (found by a security review: it was stored under
# the raw header value, so the reply+ naming <id@domain> in In-Reply-To was not seen to answer a note
# and was filed publicly, the note in its quote). The message is filed under its single msg-id.

ODD_MESSAGE_IDS = {
    "comment": (b"<n7@example.com> (added by mx.example.com)", "<n7@example.com>"),
    "no angle brackets": (b"n8@example.com", "<n8@example.com>"),
    "folded": (b"<n9@example.com>\r\n (added by mx.example.com)", "<n9@example.com>"),
    # Folded inside the msg-id by a client that splits long ids (found by a review: filed under a
    # derived ID, a reply naming it unfolded did not find the note and was filed publicly).
    "folded inside": (b"<n11.1733000000.a-long-\r\n message-id@example.com>",
                      "<n11.1733000000.a-long-message-id@example.com>"),
    # RFC 6532 UTF-8, and an RFC 2047 encoded word: read as a reply's References are (found by a
    # review: a reply naming a note in UTF-8 did not find it and was filed publicly).
    "UTF-8": ("<n15@b\u00fccher.example>".encode(), "<n15@b\u00fccher.example>"),
    "encoded word": (b"=?utf-8?q?=3Cn16=40example=2Ecom=3E?=", "<n16@example.com>"),
}


def _with_message_id(raw, value):
    """``raw`` with its Message-ID written as ``value``, as a relay or a client wrote it."""
    head, separator, body = raw.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"message-id:")]
    return b"\r\n".join(lines + [b"Message-ID: " + value]) + separator + body


def _file_odd_note(mailer, value):
    to = mailer.address("note", "project.task", TASK_ID)
    raw = compose(PAULA, to, "Pump P7", SECRET, sender_name="Paula Contributor")
    reply = mailer.send(mailer.sign(_with_message_id(raw, value)), to)
    assert reply.startswith("250 2.0.0 Filed as Odoo message ")
    return int(reply.rsplit(" ", 1)[1])


@pytest.mark.parametrize("value, msg_id", ODD_MESSAGE_IDS.values(), ids=ODD_MESSAGE_IDS.keys())
def test_a_reply_to_a_note_with_an_odd_message_id_is_filed_as_a_note(test_odoo, gateway, mailer, value, msg_id):
    note = test_odoo.message(_file_odd_note(mailer, value))
    assert note["message_id"] == msg_id
    to = mailer.address("reply", "project.task", TASK_ID)
    raw = _answer(mailer, to, in_reply_to=msg_id, references=[msg_id], message_id="<r7@example.com>")
    assert mailer.send(raw, to).startswith("250 2.0.0 Filed as Odoo message ")
    assert [filing.subtype_xmlid for filing in test_odoo.filings()] == ["mail.mt_note", "mail.mt_note"]
    _nothing_public(test_odoo)
    assert _journal(gateway)[0].decision.endswith(f"answers internal message {msg_id}: filed as a note, never public")


@pytest.mark.parametrize("value, msg_id", ODD_MESSAGE_IDS.values(), ids=ODD_MESSAGE_IDS.keys())
def test_a_non_contributor_answering_a_note_with_an_odd_message_id_is_refused(test_odoo, gateway, mailer, value,
                                                                             msg_id):
    _file_odd_note(mailer, value)
    to = mailer.address("reply", "project.task", TASK_ID)
    reply = mailer.send(_answer(mailer, to, in_reply_to=msg_id, sender=PETER_EMAIL), to, mail_from=PETER_EMAIL)
    assert reply.startswith("550 5.7.1 Sender may not post internal notes: ")
    assert [filing.subtype_xmlid for filing in test_odoo.filings()] == ["mail.mt_note"]
    _nothing_public(test_odoo)


@pytest.mark.parametrize("value, msg_id", ODD_MESSAGE_IDS.values(), ids=ODD_MESSAGE_IDS.keys())
def test_a_note_with_an_odd_message_id_is_filed_once(test_odoo, gateway, mailer, value, msg_id):
    note_id = _file_odd_note(mailer, value)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = compose(PAULA, to, "Pump P7", SECRET, sender_name="Paula Contributor")
    again = _with_message_id(raw, value.replace(b"mx.example.com", b"mx2.example.com"))
    assert mailer.send(mailer.sign(again), to) == f"250 2.0.0 Already filed as Odoo message {note_id}"
    assert [row.message_id for row in _journal(gateway)] == [msg_id, msg_id]


@pytest.mark.parametrize("first, retry", [
    (b"<n12.a-long-\r\n message-id@example.com>", b"<n12.a-long-message-id@example.com>"),
    (b"<n12.a-long-message-id@example.com>", b"<n12.a-long-\r\n message-id@example.com>"),
    (b"<n12.a-long-\r\n message-id@example.com>", b"<n12.a-long-message-\r\n\tid@example.com>"),
], ids=["folded then unfolded", "unfolded then folded", "folded elsewhere"])
def test_a_retry_folded_otherwise_is_the_same_message(test_odoo, gateway, mailer, first, retry):
    # A relay may fold the Message-ID where the first delivery had none, or elsewhere: one message.
    note_id = _file_odd_note(mailer, first)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = compose(PAULA, to, "Pump P7", SECRET, sender_name="Paula Contributor")
    again = mailer.sign(_with_message_id(raw, retry))
    assert mailer.send(again, to) == f"250 2.0.0 Already filed as Odoo message {note_id}"
    assert [row.message_id for row in _journal(gateway)] == ["<n12.a-long-message-id@example.com>"] * 2
    assert test_odoo.message(note_id)["message_id"] == "<n12.a-long-message-id@example.com>"


def test_a_message_id_without_a_msg_id_is_replaced_by_a_derived_one(test_odoo, gateway, mailer):
    note = test_odoo.message(_file_odd_note(mailer, b"not a message id\r\n (garbage)"))
    assert note["message_id"].endswith("@derived.note-gateway.invalid>")
    assert "\r" not in note["message_id"] and "\n" not in note["message_id"]


@pytest.mark.parametrize("value, expected", [
    ("<n1@example.com>", "<n1@example.com>"),
    ("<Odd.Id+x=1/$@[10.0.0.1]>", "<Odd.Id+x=1/$@[10.0.0.1]>"),  # an ordinary value is kept as it is
    ("<n1@example.com> (added by mx.example.com)", "<n1@example.com>"),
    ("(relay) <n1@example.com>", "<n1@example.com>"),
    ("<n1@example.com>\r\n (added by mx.example.com)", "<n1@example.com>"),
    ("<n1@example.com> <n2@example.com>", "<n1@example.com>"),
    ("n2@example.com", "<n2@example.com>"),
    ("n2@example.com (no brackets)", "<n2@example.com>"),
    ("<n1.long-\r\n id@example.com>", "<n1.long-id@example.com>"),  # folded inside the msg-id
    ("<n1.long-\r\n\tid@example.com> (added by mx.example.com)", "<n1.long-id@example.com>"),
    # Whitespace inside <...> is deleted, as Odoo's mail gateway reads References (a fold whose CRLF
    # a relay or parser already removed); a control character still makes it no msg-id.
    ("<with space@example.com>", "<withspace@example.com>"), ("<with\x1bescape@example.com>", ""),
    ("", ""), ("garbage", ""), ("a@b@example.com", ""),
    ("<" + "x" * 600 + "@example.com>", ""),
])
def test_the_message_id_is_its_single_msg_id(value, expected):
    assert message.own_message_id(value) == expected


@pytest.mark.parametrize("value, msg_id", ODD_MESSAGE_IDS.values(), ids=ODD_MESSAGE_IDS.keys())
def test_a_message_id_is_the_one_a_reply_names(value, msg_id):
    raw = _with_message_id(compose(PAULA, NOTE, "Pump P7", SECRET), value)
    answer = _answer(SimpleNamespace(sign=lambda raw: raw), REPLY, in_reply_to=msg_id, references=[msg_id])
    assert message.parse(raw).message_id == msg_id
    assert message.all_message_ids(answer, "In-Reply-To") == message.all_message_ids(answer, "References") == [msg_id]


def test_the_parent_is_looked_up_only_for_a_reply_that_references_messages(test_odoo, gateway, mailer):
    # Few round trips per message (issue 6): one search of mail.message, only when there is a parent to find.
    to = mailer.address("reply", "project.task", TASK_ID)
    assert mailer.send(_answer(mailer, to), to).startswith("250 2.0.0 Filed")  # access rules read and cached
    calls = []
    for in_reply_to in (None, "<unknown@example.com>"):
        test_odoo.clear_calls()
        assert mailer.send(_answer(mailer, to, in_reply_to=in_reply_to), to).startswith("250 2.0.0 Filed")
        # A login of a pooled connection opened for a read made in parallel is no call per message.
        calls.append(Counter((call.model, call.model_method) for call in test_odoo.calls
                             if call.model and call.model_method != "context_get"))
    without, referencing = calls
    assert referencing - without == Counter({("mail.message", "search_read"): 1}) and not without - referencing


def test_plain_address_of_a_kind_the_domain_never_allows_is_refused_at_rcpt(tmp_path, test_odoo, dns_server):
    config_path = write_config(tmp_path, test_odoo, dns_server.port)
    rules_path = tmp_path / "rules" / f"{ALIAS_DOMAIN}.toml"
    rules_path.write_text(rules_path.read_text().replace("[reply]\nmodels = [\"project.task\", \"sale.order\"]",
                                                         "[reply]\nmodels = []"))
    services = Services.build(load_config(config_path))
    assert services.config.domains[ALIAS_DOMAIN].reply.models == []
    try:
        with ThreadedGateway(services) as server:
            assert deliver(b"unused", REPLY, port=server.port).startswith(
                "550 5.7.1 Posting by email is not enabled for this kind of record: reply@notes.example.com")
            # note@ passes RCPT (the record is only known after the headers): this message fails later.
            assert deliver(b"unused", NOTE, port=server.port, mail_from="portal.contrib@example.com").startswith(
                "550 5.7.1 The message must have exactly one From header")
    finally:
        services.close()
