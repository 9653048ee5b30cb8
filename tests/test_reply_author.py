"""Who Odoo's mail gateway makes the author of a reply+ it files: the sender's partner, whatever her name and address form."""

from __future__ import annotations

import email
import email.headerregistry
import email.policy
import email.utils
import threading
import time

import pytest

from test_idn_senders import A_LABELS, SIGNER, U_LABELS

from gateway.journal import Journal
from gateway.testing.odoo_demo import CONTRIBUTOR_GROUP_ID, MARC_PARTNER_ID, PAULA_PARTNER_ID, TASK_ID
from gateway.testing.sending import compose

PAULA = "portal.contrib@example.com"


def _journal(gateway):
    with Journal(gateway.services.config.journal_path) as journal:
        return journal.recent(50)


def _handed_from(test_odoo) -> str:
    """The From of the message handed to Odoo's mail gateway, as the email package reads it."""
    [filing] = test_odoo.filings()
    assert filing.call.model_method == "message_process"
    raw = filing.call.args[1]
    return str(email.message_from_bytes(raw.encode("utf-8"), policy=email.policy.SMTP)["From"])


@pytest.mark.parametrize("name", [
    # A portal user sets her own name on /my/account (res.partner.name). The first one was read by
    # Odoo 18 as Marc Demo's mailbox, and the reply filed public under an internal user's name
    # (found by a differential review against Odoo 18: formataddr left the specials of a non-ASCII
    # name bare once the header was refolded). The others filed the reply without an author.
    "Päula <mark.brown23@example.com>",
    "Zoë [ACME]",
    "Renée @ ACME",
    "Dvořák <dvorak>",
    "O'Brien, Seán",
    'Zoë "the pump" \\ ACME',
    "Paula <mark.brown23@example.com>",
])
def test_a_reply_is_the_senders_whatever_her_name(test_odoo, gateway, mailer, name):
    test_odoo.write("res.partner", PAULA_PARTNER_ID, {"name": name})
    to = mailer.address("reply", "project.task", TASK_ID)
    reply = mailer.send(mailer.sign(compose(PAULA, to, "Pump", "Seal replaced.", sender_name="Paula")), to)
    assert reply.startswith("250 2.0.0 Filed as Odoo message ")
    filed = test_odoo.message(int(reply.rsplit(" ", 1)[1]))
    assert filed["author_id"][0] == PAULA_PARTNER_ID and filed["subtype_xmlid"] == "mail.mt_comment"
    # Odoo keeps the name it read with the one address, the sender's.
    assert email.utils.getaddresses([filed["email_from"]]) == [(name, PAULA)]
    assert _handed_from(test_odoo) == str(email.headerregistry.Address(display_name=name, addr_spec=PAULA))


def test_a_name_odoo_would_read_as_another_mailbox_is_left_out(test_odoo, gateway, mailer):
    # An encoded-word typed as the name itself: Python's header class writes it decoded and bare,
    # "From: <mark.brown23@example.com> <portal.contrib@example.com>", which Odoo reads as Marc's
    # mailbox alone. The From is then the bare address, and the journal says so.
    test_odoo.write("res.partner", PAULA_PARTNER_ID, {"name": "=?utf-8?q?=3Cmark=2Ebrown23=40example=2Ecom=3E?="})
    to = mailer.address("reply", "project.task", TASK_ID)
    reply = mailer.send(mailer.sign(compose(PAULA, to, "Pump", "Seal replaced.", sender_name="Paula")), to)
    assert reply.startswith("250 2.0.0 Filed as Odoo message ")
    filed = test_odoo.message(int(reply.rsplit(" ", 1)[1]))
    assert filed["author_id"][0] == PAULA_PARTNER_ID and filed["email_from"] == PAULA
    assert _handed_from(test_odoo) == PAULA
    [row] = _journal(gateway)
    assert any(note.startswith("reply-from-without-name:") for note in row.defects)


@pytest.mark.parametrize("odoo_email, from_address", [
    (A_LABELS, A_LABELS), (U_LABELS, A_LABELS), (A_LABELS, U_LABELS), (U_LABELS, U_LABELS),
], ids=["same-a", "odoo-u-from-a", "odoo-a-from-u", "same-u"])
def test_a_reply_from_an_internationalised_domain_is_the_senders(test_odoo, gateway, mailer, odoo_email, from_address):
    # Found by a differential review against Odoo 18: a U-label From was a 451 forever (the SMTP
    # policy cannot write it), and an A-label From filed the reply of a partner whose email Odoo
    # holds in U-labels without an author (Odoo compares email_normalized as strings). The From
    # handed over carries the address as Odoo holds it.
    partner = test_odoo.add_partner("Paula Bücher", odoo_email)
    test_odoo.add_user(odoo_email, "Paula Bücher", partner_id=partner, groups=[CONTRIBUTOR_GROUP_ID])
    test_odoo.add_follower("project.task", TASK_ID, partner)
    to = mailer.address("reply", "project.task", TASK_ID)
    raw = mailer.message("note_from_idn_sender.eml", to).replace(A_LABELS.encode(), from_address.encode())
    reply = mailer.send(mailer.sign(raw, SIGNER), to, mail_from=A_LABELS)
    assert reply.startswith("250 2.0.0 Filed as Odoo message ")
    filed = test_odoo.message(int(reply.rsplit(" ", 1)[1]))
    assert filed["author_id"][0] == partner and filed["subtype_xmlid"] == "mail.mt_comment"
    assert _handed_from(test_odoo).endswith(f"<{odoo_email}>")


def test_a_reply_another_follower_with_the_senders_address_would_get_is_posted_as_hers(test_odoo, gateway, mailer):
    # Odoo's mail gateway takes the author among the record's followers by address (the oldest
    # first, measured): another partner with Paula's address following the task would have been
    # the author of her reply, which the gateway then only journaled.
    other = test_odoo.add_partner("Paula (old contact)", PAULA.upper(), id=30)
    test_odoo.add_follower("project.task", TASK_ID, other)
    to = mailer.address("reply", "project.task", TASK_ID)
    reply = mailer.send(mailer.sign(compose(PAULA, to, "Pump", "Seal replaced.", sender_name="Paula")), to)
    assert reply.startswith("250 2.0.0 Filed as Odoo message ")
    [filing] = test_odoo.filings()
    assert filing.call.model_method == "message_post" and filing.call.kwargs["author_id"] == PAULA_PARTNER_ID
    filed = test_odoo.message(int(reply.rsplit(" ", 1)[1]))
    assert filed["author_id"][0] == PAULA_PARTNER_ID and filed["author_id"][0] != other
    [row] = _journal(gateway)
    assert any(note.startswith("reply-posted-by-message_post:another follower of the record has the sender's "
                               f"address {PAULA} (one of partners {other})") for note in row.defects)


def test_a_reply_odoo_files_under_another_partner_is_not_acknowledged_as_filed(test_odoo, gateway, mailer):
    # Between the gateway's check and Odoo's mail gateway, Paula's partner gets another email and
    # Marc's gets hers: the reply is in Odoo once, public, under Marc's name. It used to be a 250
    # with a WARNING. Now the sender is told it is filed and must not be sent again (a 5xx: a 4xx
    # would be retried only to be found "Already filed"), the log is an ERROR, and the journal
    # keeps the message's id.
    test_odoo.fail("hang", model="mail.thread", method="message_process", times=1, seconds=30)
    to = mailer.address("reply", "project.task", TASK_ID)
    raw = mailer.sign(compose(PAULA, to, "Pump", "Seal replaced.", sender_name="Paula"))
    replies: list[str] = []
    sending = threading.Thread(target=lambda: replies.append(mailer.send(raw, to)))
    sending.start()
    try:
        deadline = time.monotonic() + 20
        while not test_odoo.filings() and time.monotonic() < deadline:
            time.sleep(0.01)
        test_odoo.write("res.partner", PAULA_PARTNER_ID, {"email": "paula.elsewhere@example.com"})
        test_odoo.write("res.partner", MARC_PARTNER_ID, {"email": PAULA})
    finally:
        test_odoo.heal()
        sending.join(30)
    [filing] = test_odoo.filings()
    assert filing.call.model_method == "message_process"
    [reply] = replies
    assert reply.startswith("550 5.7.0 Your reply was filed, but Odoo shows it under another contact's name; "
                            "do not send it again, an administrator must correct its author: Odoo message ")
    filed_id = int(reply.rsplit(" ", 1)[1])
    assert test_odoo.message(filed_id)["author_id"][0] == MARC_PARTNER_ID
    [row] = _journal(gateway)
    assert (row.verdict, row.refusal_class, row.odoo_message_id) == ("refused", "ReplyMisattributed", filed_id)
    assert f"reply-author:{MARC_PARTNER_ID} instead of partner {PAULA_PARTNER_ID}" in row.defects
