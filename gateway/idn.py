"""Internationalised domains in email addresses: one mailbox, whether its domain is written in A-labels or U-labels."""

from __future__ import annotations

import re


def ascii_domain(domain: str | bytes) -> str:
    """A domain as DNS compares it: lowercase, no final dot, internationalised labels as A-labels.

    A domain IDNA cannot encode (an empty label, one too long) is returned lowercased as it is;
    it names no mailbox that could have passed the DKIM check anyway.
    """
    if isinstance(domain, bytes):
        domain = domain.decode("utf-8")
    domain = domain.strip().rstrip(".").lower()
    try:
        # DKIM's d=, an RFC 6532 From and an Odoo email may each write an internationalised domain
        # in U-labels or A-labels; compared as A-labels, they match however either side wrote it.
        # Python's codec is IDNA 2003, as Odoo's own outgoing mail encodes a domain.
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def unicode_domain(domain: str) -> str | None:
    """The U-label form of an A-label domain, or None when it has none (or none that encodes back to it).

    A domain whose labels decode to one that IDNA 2003 would encode differently (xn--strae-oqa,
    "straße", is "strasse" to it) gets none: looked up as "straße", it would find a mailbox that
    Odoo's own mail, and the DKIM alignment check, place at another domain.
    """
    if "xn--" not in domain:
        return None
    try:
        # The codec's ToUnicode checks that the result encodes back to the input (RFC 3490 section 4.2).
        decoded = domain.encode("ascii").decode("idna").lower()
    except UnicodeError:
        return None
    return decoded if decoded != domain else None


def address_forms(address: str) -> tuple[str, ...]:
    """Every way Odoo may have stored ``address``: as written, with A-labels, with U-labels; lowercased, once each.

    An Odoo user or partner whose login or email is any of them has this address: an internal
    user types "paula@bücher.example" into Odoo while her mail program writes From:
    paula@xn--bcher-kva.example, or the other way round (found by a review of internationalised
    senders: each was refused as "No Odoo user has this sender address").
    """
    address = address.strip().lower()
    local, at, domain = address.rpartition("@")
    if not at:
        return (address,)
    forms = [address]
    a_labels = ascii_domain(domain)
    for form in (a_labels, unicode_domain(a_labels)):
        if form is not None and f"{local}@{form}" not in forms:
            forms.append(f"{local}@{form}")
    return tuple(forms)


def same_mailbox(stored: str, address: str) -> bool:
    """Whether an email or login read from Odoo is ``address``, in any of its forms, case-insensitively."""
    return bool(stored) and stored.lower() in address_forms(address)


def envelope_address(address: str) -> str:
    """``address`` as mail is sent to it without SMTPUTF8: the domain in A-labels, the local part unchanged.

    An address with U-labels in its domain is otherwise mail that only an SMTPUTF8 server takes
    (smtplib refuses to send it to another), in a To header that the email package writes as an
    encoded-word in the middle of the domain, which is no address.
    """
    local, at, domain = address.strip().rpartition("@")
    return f"{local}@{ascii_domain(domain)}" if at else address


def ascii_address(address: str) -> str:
    """``address`` in US-ASCII for an SMTP reply: the domain in A-labels.

    A non-ASCII character of the local part has no ASCII form, so it is written as RFC 6533's
    EmbeddedUnicodeChar, "\\x{FC}": dropping an accent would name another, real mailbox.
    """
    local, at, domain = address.rpartition("@")
    if not at:
        return _embedded_unicode(address)
    domain = ascii_domain(domain)
    if not domain.isascii():
        # Not encodable by IDNA 2003 (a label too long, a prohibited character): each label is
        # still written in Punycode, which any string has, so the reply names the same domain.
        domain = ".".join(label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii")
                          for label in domain.split("."))
    return f"{_embedded_unicode(local)}@{domain}"


def _embedded_unicode(text: str) -> str:
    return "".join(character if character.isascii() else f"\\x{{{ord(character):X}}}" for character in text)


# An address as the gateway's refusals write one: no white space, brackets or quotes in it.
ADDRESS_IN_TEXT = re.compile(r"[^\s<>()\[\]{},;:\"'@]+@[^\s<>()\[\]{},;:\"'@]+")
