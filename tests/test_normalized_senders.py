"""A sender's Odoo user is found by its partner's email as Odoo normalises it (email_normalized), as Odoo's gateway does;
never by a login alone."""

from __future__ import annotations

import pytest

from gateway.journal import Journal
from gateway.testing.odoo_demo import CONTRIBUTOR_GROUP_ID, TASK_ID
from gateway.testing.sending import compose

PAULA = "paula2@example.com"
MALLORY = "mallory@example.com"
MOVED = "paula.moved@example.com"
IDN_SIGNER = "xn--bcher-kva.example"


def _posts(test_odoo):
    return [call for call in test_odoo.calls if call.model_method == "message_post"]


def _contributor(test_odoo, login: str, name: str, stored_email: str, *, active: bool = True) -> int:
    """A portal contributor following the task, whose partner's email Odoo holds as ``stored_email``."""
    partner = test_odoo.add_partner(name, stored_email)
    test_odoo.add_user(login, name, partner_id=partner, groups=[CONTRIBUTOR_GROUP_ID], active=active)
    test_odoo.add_follower("project.task", TASK_ID, partner)
    return partner


def _note_from(mailer, sender: str, signer: str = "example.com") -> str:
    to = mailer.address("note", "project.task", TASK_ID)
    return mailer.send(mailer.sign(compose(sender, to, "Pump", "Seal worn."), signer), to, mail_from=sender)


@pytest.mark.parametrize("stored_email, sender, signer", [
    ("Paula Two <paula2@example.com>", PAULA, "example.com"),
    (" paula2@example.com ", PAULA, "example.com"),
    # tools.email_normalize(strict=False) keeps the first address of a list.
    ("paula2@example.com, paula.two@example.com", PAULA, "example.com"),
    ('"Two, Paula" <PAULA2@Example.COM>', PAULA, "example.com"),
    # Odoo normalises without IDNA: the U-labels stay, lowercased, and match an A-label From.
    ("Paula Bücher <Paula@BÜCHER.example>", "paula@xn--bcher-kva.example", IDN_SIGNER),
], ids=["name", "spaces", "list", "quoted-name-upper", "name-idn"])
def test_user_is_found_by_the_email_odoo_normalises(test_odoo, gateway, mailer, stored_email, sender, signer):
    # Found by a review comparing the gateway with Odoo's own mail gateway, which finds the user by
    # email_normalized: the raw email was compared, and these users were refused with
    # "550 5.7.1 No Odoo user has this sender address".
    partner = _contributor(test_odoo, "paula2", "Paula Two", stored_email)
    reply = _note_from(mailer, sender, signer)
    assert reply.startswith("250 2.0.0 Filed as Odoo message ")
    [post] = _posts(test_odoo)
    assert post.kwargs["author_id"] == partner
    # The search asks Odoo's field, not the raw email.
    [lookup] = [call for call in test_odoo.calls if call.model == "res.users" and call.model_method == "search_read"]
    assert {term[0] for term in lookup.args[0] if isinstance(term, (list, tuple))} == {"login", "email_normalized"}


def test_archived_user_of_a_named_email_is_refused_as_archived(test_odoo, gateway, mailer):
    _contributor(test_odoo, "paula2", "Paula Two", "Paula Two <paula2@example.com>", active=False)
    assert _note_from(mailer, PAULA) == f"550 5.7.1 The Odoo user of this sender is archived: {PAULA}"
    assert _posts(test_odoo) == []


def test_the_second_address_of_a_list_is_nobodys(test_odoo, gateway, mailer):
    # Odoo's email_normalized holds the first address only: the second finds no user, in Odoo's
    # gateway as here.
    _contributor(test_odoo, "paula2", "Paula Two", "paula2@example.com, paula.two@example.com")
    assert _note_from(mailer, "paula.two@example.com") == (
        "550 5.7.1 No Odoo user has this sender address: paula.two@example.com")
    assert _posts(test_odoo) == []


def test_a_partner_email_naming_someone_else_second_does_not_make_their_mail_its_users(test_odoo, gateway, mailer):
    # Mallory lists Paula's address after her own: Paula's mail stays Paula's, not ambiguous and
    # not Mallory's; Mallory's own address finds Mallory, as in Odoo.
    paula = _contributor(test_odoo, "paula2", "Paula Two", PAULA)
    mallory = _contributor(test_odoo, "mallory", "Mallory", f"{MALLORY}, {PAULA}")
    assert _note_from(mailer, PAULA).startswith("250 2.0.0 Filed as Odoo message ")
    assert _note_from(mailer, MALLORY).startswith("250 2.0.0 Filed as Odoo message ")
    assert [post.kwargs["author_id"] for post in _posts(test_odoo)] == [paula, mallory]


@pytest.mark.parametrize("other_login, other_email", [
    ("paula.again", "Paula Again <paula2@example.com>"),
    ("paula.again", " PAULA2@example.com, paula.again@example.com"),
], ids=["named", "list"])
def test_two_users_whose_normalised_emails_collide_are_refused(test_odoo, gateway, mailer, other_login, other_email):
    # Odoo's gateway takes the first user it finds (a follower first, then by name); the gateway
    # refuses to guess, as for two users of one raw email: filing as either could give one user's
    # note to another. Before email_normalized was searched, the named and listed emails went
    # unseen and the note was filed as the first user.
    _contributor(test_odoo, "paula2", "Paula Two", PAULA)
    _contributor(test_odoo, other_login, "Paula Again", other_email)
    assert _note_from(mailer, PAULA) == f"550 5.7.1 Several Odoo users have this sender address: {PAULA} (2 users)"
    assert _posts(test_odoo) == []


def test_internal_users_in_cc_are_found_by_their_normalised_email(test_odoo, gateway, mailer):
    # The To/Cc lookup compared the raw email too: Bea, whose email Odoo holds with her name, was
    # dropped as "not an internal user" and not notified of the note. Nick's list names Bea's
    # colleague second, which is nobody's address.
    bea = test_odoo.add_partner("Bea Two", "Bea Two <bea2@example.com>")
    test_odoo.add_user("bea2", "Bea Two", internal=True, partner_id=bea)
    nick = test_odoo.add_partner("Nick", "nick@example.com, colleague@example.com")
    test_odoo.add_user("nick", "Nick", internal=True, partner_id=nick)
    _contributor(test_odoo, "paula2", "Paula Two", PAULA)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = b"Cc: bea2@example.com, colleague@example.com\r\n" + compose(PAULA, to, "Pump", "Seal worn.")
    assert mailer.send(mailer.sign(raw), to, mail_from=PAULA).startswith("250 2.0.0 Filed")
    [post] = _posts(test_odoo)
    assert post.kwargs["partner_ids"] == [bea]
    assert "colleague@example.com" in post.kwargs["body"]  # "Also sent by email to": not an internal user


# Found by a lifecycle review on Odoo 18: the login was matched too, and a portal login is set when the
# user is invited and never follows her email. After an administrator changed a contributor's partner
# email (she moved company), her old address, still her login, filed notes as her ("250 Filed"),
# where Odoo's own mail gateway (_mail_find_user_for_gateway, email_normalized only) finds nobody.

def test_the_old_address_of_a_contributor_whose_email_changed_files_nothing(test_odoo, gateway, mailer):
    partner = _contributor(test_odoo, PAULA, "Paula Two", PAULA)
    assert _note_from(mailer, PAULA).startswith("250 2.0.0 Filed as Odoo message ")
    test_odoo.write("res.partner", partner, {"email": MOVED})
    assert _note_from(mailer, PAULA) == f"550 5.7.1 No Odoo user has this sender address: {PAULA}"
    assert _note_from(mailer, MOVED).startswith("250 2.0.0 Filed as Odoo message ")
    assert [post.kwargs["author_id"] for post in _posts(test_odoo)] == [partner, partner]
    # The operator is told whose login the old address is.
    with Journal(gateway.services.config.journal_path) as journal:
        refused = next(row for row in journal.recent(10) if row.verdict == "refused")
    assert refused.refusal_class == "UnknownSender"
    assert "it is the login of user " in refused.decision and f"whose email is {MOVED}" in refused.decision


def test_a_user_found_only_by_her_login_because_she_has_no_email_is_told_to_have_it_set(test_odoo, gateway, mailer):
    # Why the login was matched: such a user was found by it. Odoo's gateway finds her by neither,
    # and the refusal says what the administrator must do.
    partner = test_odoo.add_partner("Paula Two", None)
    test_odoo.add_user(PAULA, "Paula Two", partner_id=partner, groups=[CONTRIBUTOR_GROUP_ID])
    test_odoo.add_follower("project.task", TASK_ID, partner)
    assert _note_from(mailer, PAULA) == (
        "550 5.7.1 The Odoo user whose login is this sender address has no email address: an Odoo administrator "
        f"must set the user's email to this address: {PAULA}")
    assert _posts(test_odoo) == []
    test_odoo.write("res.partner", partner, {"email": PAULA})
    assert _note_from(mailer, PAULA).startswith("250 2.0.0 Filed as Odoo message ")


def test_a_login_that_is_another_users_email_does_not_take_or_block_her_mail(test_odoo, gateway, mailer):
    # A user whose login is Paula's address and whose email is another: Odoo's gateway finds Paula by
    # her email, and so does the gateway (this was refused as two users of the address).
    paula = _contributor(test_odoo, "paula2", "Paula Two", PAULA)
    _contributor(test_odoo, PAULA, "Paula Again", "paula.again@example.com")
    assert _note_from(mailer, PAULA).startswith("250 2.0.0 Filed as Odoo message ")
    assert [post.kwargs["author_id"] for post in _posts(test_odoo)] == [paula]
