"""Mint and verify record addresses: ``<kind>+<model>-<id>[-p<partner>][-d<day>]-<signature>@<alias domain>``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

from gateway import idn
from gateway.context import Target
from gateway.refusals import BadAddress, UnknownAliasDomain

KINDS = ("note", "reply")
# RFC 5321 4.5.3.1.1: the longest local part every mail server must take. The gateway reads longer
# ones (a long model name, an 18-digit id, a partner and a day); `note-gateway address` warns of them.
MAX_LOCAL_PART_OCTETS = 64
SIGNATURE_LENGTH = 16  # base32 characters: 80 bits of the HMAC-SHA256
# The ids an address carries (record, partner) have at most 18 digits, so every one fits a signed
# 64-bit integer (Odoo's ids are PostgreSQL integers, far below). parse() reads no more and mint()
# writes no more: an address minted beyond it would be refused with 550 5.1.1 by its own gateway.
ID_DIGITS = 18
MAX_ID = 10**ID_DIGITS - 1
# The issue day of a dated address: days since 1970, six digits until the year 4707.
DAY_DIGITS = 6
MAX_DAY = 10**DAY_DIGITS - 1
# Every number is read in the one spelling mint() writes, without a leading zero: "-d020795-" names
# the day of "-d20795-" and verified with its signature, so one address had many spellings (found by
# a review of addresses as credentials).
_ID = rf"[1-9][0-9]{{0,{ID_DIGITS - 1}}}"
_DAY = rf"0|[1-9][0-9]{{0,{DAY_DIGITS - 1}}}"
# Odoo model names are lowercase words joined by dots and underscores; they never hold "-",
# which is why "-" can separate the parts of the local part.
_MODEL_NAME = r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*"

# The optional parts (issue 7) sit between the id and the signature; a signature never holds "-",
# so an address of the first format (no optional part) can never be read as having one.
# RECORD_PART is what follows "<kind>+" up to the signature in every address mint() writes;
# gateway/subject.py builds its pattern of pasted addresses from it, so the two cannot drift apart.
RECORD_PART = (
    rf"(?P<model>{_MODEL_NAME})-(?P<res_id>{_ID})"
    rf"(?:-p(?P<partner>{_ID}))?(?:-d(?P<day>{_DAY}))?"
)
# Matched with fullmatch: "$" also matched before a final line feed.
_LOCAL_PART = re.compile(rf"(?P<kind>[a-z]+)\+{RECORD_PART}-(?P<sig>[a-z2-7]+)")
_MODEL = re.compile(_MODEL_NAME)


def today() -> int:
    """The issue day of an address: whole days since 1970-01-01 UTC."""
    return int(time.time() // 86400)


def signature(secret: bytes, domain: str, kind: str, model: str, res_id: int,
              partner_id: int | None = None, issued_day: int | None = None) -> str:
    # The domain and the kind are signed too, so that a note token never works as a reply token
    # and a token of one alias domain never works on another. The optional parts are appended
    # only when present, so addresses minted before they existed keep verifying.
    parts = [domain.lower(), kind, model, str(res_id)]
    if partner_id is not None:
        parts.append(f"p={partner_id}")
    if issued_day is not None:
        parts.append(f"d={issued_day}")
    message = "\x00".join(parts).encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    # Lowercase base32: MTAs that fold the case of local parts keep the address valid.
    return base64.b32encode(digest).decode().lower()[:SIGNATURE_LENGTH]


def check_parts(kind: str, model: str, res_id: int, *, partner_id: int | None = None,
                issued_day: int | None = None) -> None:
    """Raise ValueError for a part that parse() would not read back, so that no address is minted
    that its own gateway refuses with 550 5.1.1 (item 10 of the operator review)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    if not isinstance(model, str) or not _MODEL.fullmatch(model):
        raise ValueError(f"{model!r} is not an Odoo model name")
    _check_id("record id", res_id)
    if partner_id is not None:
        _check_id("partner id", partner_id)
    if issued_day is not None and not (_is_whole(issued_day) and 0 <= issued_day <= MAX_DAY):
        raise ValueError(f"the issue day must be a whole number from 0 to {MAX_DAY}, not {issued_day!r}")


def mint(secret: bytes, domain: str, kind: str, model: str, res_id: int, *,
         partner_id: int | None = None, issued_day: int | None = None) -> str:
    """An address; with ``partner_id`` it only accepts mail from that partner, with ``issued_day``
    it can expire (rules key address_max_age_days)."""
    check_parts(kind, model, res_id, partner_id=partner_id, issued_day=issued_day)
    # As parse() reads the domain (split_address): an internationalised one in its A-label form,
    # the form alias domains are configured and signed in.
    domain = idn.ascii_domain(domain) if not domain.isascii() else domain.lower()
    if not domain.isascii():
        raise ValueError(f"{domain!r} is not a valid internationalised domain name")
    optional = (f"-p{partner_id}" if partner_id is not None else "") + (
        f"-d{issued_day}" if issued_day is not None else "")
    sig = signature(secret, domain, kind, model, res_id, partner_id, issued_day)
    return f"{kind}+{model}-{res_id}{optional}-{sig}@{domain}"


def _is_whole(value: object) -> bool:
    # bool is an int to Python, and True would be written "True" in the address.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_id(what: str, value: object) -> None:
    if not (_is_whole(value) and 1 <= value <= MAX_ID):  # type: ignore[operator]
        raise ValueError(f"the {what} must be a whole number from 1 to {MAX_ID} ({ID_DIGITS} digits), not {value!r}")


def split_address(address: str) -> tuple[str, str]:
    address = address.strip().strip("<>").strip()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise BadAddress("not an email address")
    domain = domain.lower().rstrip(".")
    if not domain.isascii():
        # An internationalised domain in its U-label form (RFC 6531, a client that declared
        # SMTPUTF8): compared in the A-label form alias domains are configured in
        # (config.alias_domain), and named that way in a refusal, which is ASCII.
        domain = idn.ascii_domain(domain)
        if not domain.isascii():
            raise BadAddress("the domain is not a valid internationalised domain name")
    return local, domain


def parse(address: str, secrets_by_domain: dict[str, list[bytes]]) -> Target:
    """Return the target of a gateway address, or raise BadAddress / UnknownAliasDomain."""
    local, domain = split_address(address)
    secrets = secrets_by_domain.get(domain)
    if secrets is None:
        raise UnknownAliasDomain(domain)
    if not local.isascii():
        # Before lower(): some non-ASCII characters lowercase to ASCII ones (KELVIN SIGN U+212A to
        # "k"), and would give a minted address another spelling that verifies.
        raise BadAddress("the local part holds a character that is not ASCII")
    local = local.lower()
    match = _LOCAL_PART.fullmatch(local)
    if not match:
        raise BadAddress("expected note+<model>-<id>-<signature> or reply+...")
    if match["kind"] not in KINDS:
        raise BadAddress(f"unknown address kind {match['kind']!r}")
    target = _target_of(match, local, domain)
    given = match["sig"].encode()
    # Every secret is tried, in constant time each, so keys can be rotated: the first one signs,
    # all of them verify.
    valid = False
    for secret in secrets:
        expected = signature(secret, domain, target.kind, target.model, target.res_id,
                             target.partner_id, target.issued_day).encode()
        valid |= hmac.compare_digest(expected, given)
    if not valid:
        raise BadAddress("the address signature is not valid")
    return target


def _target_of(match: re.Match[str], local: str, domain: str) -> Target:
    """The Target that ``local`` (lower case, matched by _LOCAL_PART as ``match``) at ``domain``
    names, its kind and signature NOT checked here: parse() checks both, read_unverified() the kind."""
    return Target(kind=match["kind"], domain=domain, model=match["model"], res_id=int(match["res_id"]),
                  address=f"{local}@{domain}", partner_id=int(match["partner"]) if match["partner"] else None,
                  issued_day=int(match["day"]) if match["day"] is not None else None)


def parse_recipient(address: str, secrets_by_domain: dict[str, list[bytes]]) -> Target:
    """A record address, or a plain ``note@`` / ``reply@`` of a known alias domain.

    RCPT comes before the headers, so a plain address is accepted here with no record; the route
    stage finds the record from the message's References (issue 7).
    """
    local, domain = split_address(address)
    if local.isascii() and local.lower() in KINDS:
        if domain not in secrets_by_domain:
            raise UnknownAliasDomain(domain)
        kind = local.lower()
        return Target(kind=kind, domain=domain, model="", res_id=0, address=f"{kind}@{domain}", by_reference=True)
    return parse(address, secrets_by_domain)


def read_unverified(address: str, secrets_by_domain: dict[str, list[bytes]]) -> Target | None:
    """What an address at an alias domain names as parse_recipient reads it, its signature NOT checked.

    For reading the note addresses a reply names in To and Cc only (routing.note_addresses: a
    reply-all to its own record's note address is filed as a note, one naming another note address
    is refused): a note address whose signature no longer verifies (a rotated secret, a mistyped
    token) still says that its sender meant the message as a note (found by a review: such a Cc was
    skipped, the note delivery got 550 5.1.1 and the reply was filed publicly). Never a reason to
    file anything on the record it names. A ``note+`` local part whose record part cannot be read is
    a note of no record (model "", res_id 0, not by_reference). None for an address that is not at
    an alias domain, or whose local part is none of these: a plain ``note``/``reply``,
    ``<kind>+<model>-<id>...-<signature>``, ``note+...``.
    """
    try:
        local, domain = split_address(address)
    except BadAddress:
        return None
    if domain not in secrets_by_domain:
        return None
    ascii_local = local.isascii()  # As parse(): a non-ASCII local part is none of the gateway's forms.
    local = local.lower()
    if ascii_local and local in KINDS:
        return Target(kind=local, domain=domain, model="", res_id=0, address=f"{local}@{domain}", by_reference=True)
    match = _LOCAL_PART.fullmatch(local) if ascii_local else None
    if not match or match["kind"] not in KINDS:
        if local.startswith("note+"):
            # A note address whose record part cannot be read (mistyped): a note of no known record.
            return Target(kind="note", domain=domain, model="", res_id=0, address=f"{local}@{domain}")
        return None
    return _target_of(match, local, domain)
