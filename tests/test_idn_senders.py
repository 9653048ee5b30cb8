"""Internationalised sender domains: bücher.example and xn--bcher-kva.example are one domain to Odoo and in replies."""

from __future__ import annotations

import pytest

from conftest import Mailer

from gateway.testing.odoo_demo import MARC_PARTNER_ID, TASK_ID

# One domain in its two forms: U-labels, as a person types it into Odoo or a mail program writes it
# in an RFC 6532 From, and A-labels, as DNS, DKIM's d= and most mail programs write it.
U_LABELS = "paula@bücher.example"
A_LABELS = "paula@xn--bcher-kva.example"
SIGNER = "xn--bcher-kva.example"


def _posts(test_odoo):
    return [call for call in test_odoo.calls if call.model_method == "message_post"]


def _lookups(test_odoo):
    return [call for call in test_odoo.calls if call.model == "res.users" and call.model_method == "search_read"]


def _note_from(mailer: Mailer, from_address: str, *, cc: str = "") -> str:
    """A note to the task from ``from_address``, signed by the domain's mail system (d= in A-labels)."""
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.message("note_from_idn_sender.eml", to).replace(A_LABELS.encode(), from_address.encode())
    if cc:
        raw = f"Cc: {cc}\r\n".encode() + raw
    return mailer.send(mailer.sign(raw, SIGNER), to, mail_from=A_LABELS)


@pytest.mark.parametrize("odoo_email, from_address", [
    (A_LABELS, A_LABELS), (U_LABELS, A_LABELS), (A_LABELS, U_LABELS), (U_LABELS, U_LABELS),
    # Odoo compares case-insensitively, in the U-labels too.
    ("Paula@BÜCHER.example", A_LABELS),
], ids=["same-a", "odoo-u-from-a", "odoo-a-from-u", "same-u", "odoo-upper-u"])
def test_sender_is_found_whichever_form_odoo_and_the_from_use(test_odoo, gateway, mailer, odoo_email, from_address):
    # Found by a review of internationalised senders: Odoo holding one form and the From the other
    # was "550 5.7.1 No Odoo user has this sender address".
    partner = test_odoo.add_partner("Paula Bücher", odoo_email)
    test_odoo.add_user(odoo_email, "Paula Bücher", internal=True, partner_id=partner)
    reply = _note_from(mailer, from_address)
    assert reply.startswith("250 2.0.0 Filed as Odoo message ")
    [post] = _posts(test_odoo)
    assert post.kwargs["author_id"] == partner
    # Both forms in the one search: no second round trip to Odoo.
    [lookup] = _lookups(test_odoo)
    assert {term[2] for term in lookup.args[0] if isinstance(term, (list, tuple))} == {A_LABELS, U_LABELS}


@pytest.mark.parametrize("from_address", [A_LABELS, U_LABELS])
def test_two_users_with_the_address_in_its_two_forms_are_ambiguous(test_odoo, gateway, mailer, from_address):
    test_odoo.add_user("paula.u", "Paula U-labels", email=U_LABELS, internal=True)
    test_odoo.add_user("paula.a", "Paula A-labels", email=A_LABELS, internal=True)
    reply = _note_from(mailer, from_address)
    assert reply == f"550 5.7.1 Several Odoo users have this sender address: {A_LABELS} (2 users)"
    assert _posts(test_odoo) == []


@pytest.mark.parametrize("from_address", [U_LABELS, A_LABELS])
def test_refusal_names_the_domain_in_a_labels_not_without_its_accents(test_odoo, gateway, mailer, from_address):
    # The SMTP reply is ASCII; it named "paula@bucher.example", another and real domain.
    reply = _note_from(mailer, from_address)
    assert reply == f"550 5.7.1 No Odoo user has this sender address: {A_LABELS}"


def test_archived_user_of_the_other_form_is_refused_as_archived(test_odoo, gateway, mailer):
    test_odoo.add_user(U_LABELS, "Paula Bücher", internal=True, active=False)
    reply = _note_from(mailer, A_LABELS)
    assert reply == f"550 5.7.1 The Odoo user of this sender is archived: {A_LABELS}"


def test_internal_user_in_cc_is_notified_whichever_form_the_cc_uses(test_odoo, gateway, mailer):
    colleague = test_odoo.add_partner("Bea Bücher", "bea@xn--bcher-kva.example")
    test_odoo.add_user("bea@xn--bcher-kva.example", "Bea Bücher", internal=True, partner_id=colleague)
    test_odoo.add_user(U_LABELS, "Paula Bücher", internal=True)
    # Bea twice (each form once), and Paula, the sender, in the form her From does not use.
    reply = _note_from(mailer, A_LABELS, cc=f"bea@bücher.example, Bea <bea@xn--bcher-kva.example>, {U_LABELS}, "
                                          "Marc Demo <mark.brown23@example.com>")
    assert reply.startswith("250 2.0.0 Filed")
    [post] = _posts(test_odoo)
    assert post.kwargs["partner_ids"] == [colleague, MARC_PARTNER_ID]


def test_to_and_cc_forms_are_computed_once_per_address(monkeypatch):
    # A review of this session's merges: each new address was compared with every kept one, its IDNA
    # forms computed again per pair; a To of 6,000 addresses took 28 s of a pipeline thread.
    from types import SimpleNamespace

    from gateway import idn, recipients

    calls = []
    forms = idn.address_forms
    monkeypatch.setattr(idn, "address_forms", lambda address: calls.append(address) or forms(address))
    to = [f"user{index}@example.com" for index in range(2000)] + ["bea@bücher.example", "user7@example.com"]
    ctx = SimpleNamespace(message=SimpleNamespace(to=to, cc=["Bea@xn--bcher-kva.example", "x@notes.example.com"],
                                                  from_address="paula@example.com"),
                          target=SimpleNamespace(domain="notes.example.com"), sender=None)
    found = recipients.candidate_addresses(ctx)
    assert found == to[:2001]  # user7 and Bea's other form are the same mailboxes; the alias domain is left out
    assert len(calls) <= len(to) + 2
