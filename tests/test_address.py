"""Record addresses: minting, verification, rotation and kind separation."""

import pytest

from gateway import address
from gateway.refusals import BadAddress, UnknownAliasDomain

SECRET = b"first-secret-0123456789"
OLD = b"older-secret-0123456789"
SECRETS = {"notes.example.com": [SECRET, OLD]}


def test_minted_address_parses_back_to_its_target():
    minted = address.mint(SECRET, "Notes.Example.com", "note", "project.task", 42)
    assert minted.startswith("note+project.task-42-") and minted.endswith("@notes.example.com")
    assert minted == minted.lower()
    target = address.parse(minted, SECRETS)
    assert (target.kind, target.domain, target.model, target.res_id) == ("note", "notes.example.com", "project.task", 42)


def test_case_folded_by_an_mta_still_parses():
    minted = address.mint(SECRET, "notes.example.com", "reply", "sale.order", 23)
    assert address.parse("<" + minted.upper() + ">", SECRETS).res_id == 23


def test_older_secret_still_verifies_for_rotation():
    minted = address.mint(OLD, "notes.example.com", "note", "project.task", 42)
    assert address.parse(minted, SECRETS).res_id == 42


def test_note_token_does_not_work_as_reply_and_reverse():
    note = address.mint(SECRET, "notes.example.com", "note", "project.task", 42)
    with pytest.raises(BadAddress):
        address.parse(note.replace("note+", "reply+", 1), SECRETS)
    reply = address.mint(SECRET, "notes.example.com", "reply", "project.task", 42)
    with pytest.raises(BadAddress):
        address.parse(reply.replace("reply+", "note+", 1), SECRETS)


@pytest.mark.parametrize("tamper", [
    lambda a: a.replace("-42-", "-43-"),
    lambda a: a.replace("project.task", "sale.order"),
    lambda a: a[:-len("@notes.example.com") - 1] + ("a" if a[-len("@notes.example.com") - 1] != "a" else "b") + "@notes.example.com",
])
def test_tampered_token_is_refused(tamper):
    minted = address.mint(SECRET, "notes.example.com", "note", "project.task", 42)
    with pytest.raises(BadAddress):
        address.parse(tamper(minted), SECRETS)


def test_token_of_another_domain_is_refused():
    minted = address.mint(SECRET, "other.example.com", "note", "project.task", 42)
    with pytest.raises(UnknownAliasDomain):
        address.parse(minted, SECRETS)
    with pytest.raises(BadAddress):
        address.parse(minted.replace("other.example.com", "notes.example.com"), SECRETS)


@pytest.mark.parametrize("bad", ["", "nobody", "@notes.example.com", "note@notes.example.com",
                                 "note+project.task-0-aaaa@notes.example.com", "note+Project-1-x@notes.example.com",
                                 "note+project.task-42@notes.example.com", "spam+project.task-42-abcd@notes.example.com"])
def test_malformed_addresses_are_refused(bad):
    with pytest.raises((BadAddress, UnknownAliasDomain)):
        address.parse(bad, SECRETS)


def test_mint_rejects_bad_input():
    for args in [("spam", "project.task", 1), ("note", "Project Task", 1), ("note", "project.task", 0)]:
        with pytest.raises(ValueError):
            address.mint(SECRET, "notes.example.com", *args)
