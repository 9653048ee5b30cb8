"""Refuse a message whose To and Cc name no address of the gateway: mail sent to someone else, replayed."""

from __future__ import annotations

from collections.abc import Collection

from gateway import idn
from gateway.context import ParsedMessage, Target, VerifiedSender
from gateway.refusals import NotAddressedToGateway

RECIPIENT_HEADERS = ("to", "cc")
_DISPLAY = {"to": "To", "cc": "Cc"}


def check_addressed(message: ParsedMessage, target: Target, sender: VerifiedSender, *,
                    alias_domains: Collection[str], accept_bcc_notes: bool = False) -> None:
    """Refuse (NotAddressedToGateway) a message whose To and Cc name no address at an alias domain.

    A DKIM signature vouches for who wrote a message, not for whom she wrote it to: whoever
    received a signed message could send it on unchanged to a reply+ address, where it was filed
    publicly under its author's name, or to a note+ one (found by a security review). What she
    sent to the gateway names the gateway in To or Cc. Any alias domain of this gateway counts,
    not only the recipient's: a reply-all may name a note+ of one domain and a reply+ of another.
    Domains are compared in A-labels (the alias domains are held so, config.alias_domain).

    A To or Cc field that the signature does not cover could have been written by whoever holds
    the message, so it counts only when the signature covers neither (Microsoft 365 signs no
    recipient field; the residual risk is in docs/rules.md). A signer that names To or Cc in h=
    signs every recipient field present when it signs (dkimpy and OpenDKIM by default), so a
    field it leaves out was most likely added afterwards: a Cc naming the gateway added to a
    message sent To someone else must not pass. A fixed-list signer that covers To and never Cc
    looks the same; its users are told to write the address in To.

    ``accept_bcc_notes`` ([sender] of the rules): a note need not name the gateway (Bcc, a
    redirect), at the risk written there. A reply, public, always must.
    """
    if target.kind == "note" and accept_bcc_notes:
        return
    unsigned = sender.unsigned_headers
    signs_recipients = any(name in sender.signed_headers for name in RECIPIENT_HEADERS)
    added: list[str] = []
    for name, addresses in (("to", message.to), ("cc", message.cc)):
        for value in addresses:
            local, at, domain = value.rpartition("@")
            if not at or idn.ascii_domain(domain) not in alias_domains:
                continue
            if signs_recipients and name in unsigned:
                added.append(_DISPLAY[name])
                break
            return
    if added:
        # Added after signing, or left out by a signer with a fixed list that names To and never Cc
        # (Broadcom Email Security.cloud signs From:To:Subject:Date:Message-ID:Content-Type:
        # MIME-Version, found by a review): the two look alike, and the author can do one thing,
        # write the address in the field her signature covers.
        covered = " and ".join(_DISPLAY[name] for name in RECIPIENT_HEADERS if name in sender.signed_headers)
        raise NotAddressedToGateway(
            f"only its {' and '.join(added)}, which the DKIM signature does not cover, names an address of "
            f"{target.domain} (a header added after signing, or a mail system that signs {covered} only): "
            f"write the gateway address in {covered}")
    raise NotAddressedToGateway(f"its To and Cc name no address of {target.domain}; a Bcc copy, or a message "
                                "sent to someone else, is not filed: write the gateway address in To or Cc")
