"""Mint and verify record addresses: ``<kind>+<model>-<id>[-p<partner>][-d<day>]-<signature>@<alias domain>``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

from gateway.context import Target
from gateway.refusals import BadAddress, UnknownAliasDomain

KINDS = ("note", "reply")
SIGNATURE_LENGTH = 16  # base32 characters: 80 bits of the HMAC-SHA256

# Odoo model names are lowercase words joined by dots and underscores; they never hold "-",
# which is why "-" can separate the parts of the local part.
# The optional parts (issue 7) sit between the id and the signature; a signature never holds "-",
# so an address of the first format (no optional part) can never be read as having one.
_LOCAL_PART = re.compile(
    r"^(?P<kind>[a-z]+)\+(?P<model>[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*)-(?P<res_id>[1-9][0-9]{0,17})"
    r"(?:-p(?P<partner>[1-9][0-9]{0,17}))?(?:-d(?P<day>[0-9]{1,6}))?-(?P<sig>[a-z2-7]+)$"
)
_MODEL = re.compile(r"^[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*$")


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


def mint(secret: bytes, domain: str, kind: str, model: str, res_id: int, *,
         partner_id: int | None = None, issued_day: int | None = None) -> str:
    """An address; with ``partner_id`` it only accepts mail from that partner, with ``issued_day``
    it can expire (rules key address_max_age_days)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    if not _MODEL.match(model):
        raise ValueError(f"{model!r} is not an Odoo model name")
    if not (isinstance(res_id, int) and res_id > 0):
        raise ValueError("the record id must be a positive integer")
    if partner_id is not None and not (isinstance(partner_id, int) and partner_id > 0):
        raise ValueError("the partner id must be a positive integer")
    domain = domain.lower()
    optional = (f"-p{partner_id}" if partner_id is not None else "") + (
        f"-d{issued_day}" if issued_day is not None else "")
    sig = signature(secret, domain, kind, model, res_id, partner_id, issued_day)
    return f"{kind}+{model}-{res_id}{optional}-{sig}@{domain}"


def split_address(address: str) -> tuple[str, str]:
    address = address.strip().strip("<>").strip()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise BadAddress("not an email address")
    return local, domain.lower().rstrip(".")


def parse(address: str, secrets_by_domain: dict[str, list[bytes]]) -> Target:
    """Return the target of a gateway address, or raise BadAddress / UnknownAliasDomain."""
    local, domain = split_address(address)
    secrets = secrets_by_domain.get(domain)
    if secrets is None:
        raise UnknownAliasDomain(domain)
    match = _LOCAL_PART.match(local.lower())
    if not match:
        raise BadAddress("expected note+<model>-<id>-<signature> or reply+...")
    kind, model, res_id = match["kind"], match["model"], int(match["res_id"])
    partner_id = int(match["partner"]) if match["partner"] else None
    issued_day = int(match["day"]) if match["day"] is not None else None
    if kind not in KINDS:
        raise BadAddress(f"unknown address kind {kind!r}")
    given = match["sig"].encode()
    # Every secret is tried, in constant time each, so keys can be rotated: the first one signs,
    # all of them verify.
    valid = False
    for secret in secrets:
        expected = signature(secret, domain, kind, model, res_id, partner_id, issued_day).encode()
        valid |= hmac.compare_digest(expected, given)
    if not valid:
        raise BadAddress("the address signature is not valid")
    return Target(kind=kind, domain=domain, model=model, res_id=res_id, address=f"{local.lower()}@{domain}",
                  partner_id=partner_id, issued_day=issued_day)


def parse_recipient(address: str, secrets_by_domain: dict[str, list[bytes]]) -> Target:
    """A record address, or a plain ``note@`` / ``reply@`` of a known alias domain.

    RCPT comes before the headers, so a plain address is accepted here with no record; the route
    stage finds the record from the message's References (issue 7).
    """
    local, domain = split_address(address)
    if local.lower() in KINDS:
        if domain not in secrets_by_domain:
            raise UnknownAliasDomain(domain)
        kind = local.lower()
        return Target(kind=kind, domain=domain, model="", res_id=0, address=f"{kind}@{domain}", by_reference=True)
    return parse(address, secrets_by_domain)
