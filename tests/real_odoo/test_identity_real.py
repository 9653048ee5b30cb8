"""The sender's user on a real Odoo 18: found by email_normalized, as Odoo's own mail gateway finds it, never by a login
alone (an old address after an email change, a user without an email); collisions refused."""

from __future__ import annotations

import contextlib

import pytest

from .provision import filed_id as _filed_id, messages_on, QUIET, real_odoo_or_skip

real_odoo_or_skip()

pytestmark = pytest.mark.real_odoo

NOTE_TEXT = "Seal of pump P-7 worn, replacement within two weeks.\n"


@contextlib.contextmanager
def _partner_emails(world, emails: dict[int, str]):
    """The partners' emails set as given for the block, then put back."""
    Partner = world.admin.env["res.partner"].with_context(**QUIET)
    before = {row["id"]: row["email"] for row in Partner.read(list(emails), ["email"])}
    try:
        for partner_id, value in emails.items():
            Partner.browse(partner_id).write({"email": value})
        yield
    finally:
        for partner_id, value in before.items():
            Partner.browse(partner_id).write({"email": value})


def _odoo_finds(world, address: str) -> list[int]:
    # What mail_thread.py _mail_find_user_for_gateway searches (it keeps the first, limit=1).
    return world.admin.env["res.users"].search([("email_normalized", "=", address)])


def _mail_address(world) -> str:
    # An address of the contributor's that is not her login: only her partner's email can find her.
    return f"paula.mail.{world.tag}@{world.domain}"


def _note(world, real_gateway, sender: str, label: str) -> str:
    to = real_gateway.address("note", "project.task", world.task_id)
    raw = real_gateway.sign(real_gateway.message(sender, to, NOTE_TEXT))
    return real_gateway.send(raw, to, mail_from=sender, label=label)


@pytest.mark.parametrize("form", ["named", "spaces", "list"])
def test_a_user_whose_email_odoo_normalises_is_the_sender(world, real_gateway, form):
    # Found by a review comparing the gateway with Odoo's own mail gateway: the raw email was
    # compared, and these users were refused "550 5.7.1 No Odoo user has this sender address".
    address = _mail_address(world)
    stored = {"named": f"Paula Contributor <{address}>", "spaces": f"  {address} ",
              "list": f"{address}, second.{world.tag}@{world.domain}"}[form]
    with _partner_emails(world, {world.contributor.partner_id: stored}):
        found = _odoo_finds(world, address)
        reply = _note(world, real_gateway, address, f"named email {form}")
    assert found == [world.contributor.user_id]
    filed = _filed_id(reply)
    [message] = [m for m in messages_on(world, "project.task", world.task_id) if m["id"] == filed]
    assert message["author_id"][0] == world.contributor.partner_id
    print(f"\npartner email {stored!r}: Odoo's gateway finds users {found}, the gateway answered {reply!r} "
          f"in {real_gateway.timings[f'named email {form}']:.3f} s")


def test_two_users_whose_normalised_emails_collide_are_refused(world, real_gateway):
    # Odoo's gateway would take the first of the two; the gateway refuses to guess.
    address = _mail_address(world)
    before = max([m["id"] for m in messages_on(world, "project.task", world.task_id)], default=0)
    with _partner_emails(world, {world.contributor.partner_id: address,
                                 world.plain.partner_id: f"Someone Else <{address.upper()}>"}):
        assert sorted(_odoo_finds(world, address)) == sorted([world.contributor.user_id, world.plain.user_id])
        reply = _note(world, real_gateway, address, "collision")
    assert reply == f"550 5.7.1 Several Odoo users have this sender address: {address} (2 users)"
    assert max([m["id"] for m in messages_on(world, "project.task", world.task_id)], default=0) == before


def test_an_address_listed_second_in_another_users_email_stays_its_owners(world, real_gateway):
    # Peter lists Paula's address after his own: Odoo's email_normalized is his first address only,
    # so Paula's mail is Paula's, and his own address is his.
    address = _mail_address(world)
    with _partner_emails(world, {world.contributor.partner_id: address,
                                 world.plain.partner_id: f"{world.plain.email}, {address}"}):
        assert _odoo_finds(world, address) == [world.contributor.user_id]
        filed = _filed_id(_note(world, real_gateway, address, "listed second"))
    [message] = [m for m in messages_on(world, "project.task", world.task_id) if m["id"] == filed]
    assert message["author_id"][0] == world.contributor.partner_id


def test_the_old_address_of_a_contributor_whose_email_changed_files_nothing(world, real_gateway):
    # Found by a lifecycle review: the login was matched too, and a portal login is set at the
    # invitation and never follows the email. After the admin changed the contributor's partner email
    # (she moved company), her old address, still her login, filed notes as her ("250 Filed"), where
    # Odoo's own gateway finds nobody.
    old, new = world.contributor.email, _mail_address(world)
    assert world.contributor.login == old
    before = max([m["id"] for m in messages_on(world, "project.task", world.task_id)], default=0)
    with _partner_emails(world, {world.contributor.partner_id: new}):
        assert _odoo_finds(world, old) == []
        refused = _note(world, real_gateway, old, "old address")
        assert max([m["id"] for m in messages_on(world, "project.task", world.task_id)], default=0) == before
        filed = _filed_id(_note(world, real_gateway, new, "new address"))
    assert refused == f"550 5.7.1 No Odoo user has this sender address: {old}"
    [message] = [m for m in messages_on(world, "project.task", world.task_id) if m["id"] == filed]
    assert message["author_id"][0] == world.contributor.partner_id
    print(f"\nafter the email change: old address {refused!r}, new address filed as {filed}")


def test_a_contributor_without_an_email_is_told_to_have_it_set(world, real_gateway):
    # Why the login was matched from the first version on: a user whose partner has no email was found
    # by it. Odoo's gateway finds her by neither; the refusal says what the administrator must do.
    address = world.contributor.email
    with _partner_emails(world, {world.contributor.partner_id: False}):
        assert _odoo_finds(world, address) == []
        reply = _note(world, real_gateway, address, "no email")
    assert reply == ("550 5.7.1 The Odoo user whose login is this sender address has no email address: an Odoo "
                     f"administrator must set the user's email to this address: {address}")
