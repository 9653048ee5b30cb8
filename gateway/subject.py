"""The subject as a note shows it: without reply and forward prefixes and without the address token."""

from __future__ import annotations

import re

from gateway import address

# Reply and forward prefixes of common clients and languages: Re, Fwd/Fw, AW/WG (de), TR/RE (fr),
# SV/VS (nordic), Antw/Doorst (nl), R/Rif (it), RES/ENC (pt), RV (es), Odp/PD (pl), YNT (tr),
# 回复/转发 (zh), 返信/転送 (ja); Outlook may count them ("Re[2]:", "RE(3):") and use a full-width colon.
_PREFIX = re.compile(
    r"^\s*(?:(?:re|fwd?|aw|wg|tr|sv|vs|antw|doorst|rif|r|enc|res|rv|odp|pd|ynt|回复|回覆|转发|轉寄|返信|転送)"
    r"\s*(?:\[\d+\]|\(\d+\))?\s*[:：]\s*)+",
    re.IGNORECASE,
)
# Forward prefixes only, as clients set them on a forward: Fwd/Fw, WG (de), TR (fr), RV (es), I (it),
# Doorst (nl), ENC (pt), PD (pl), VL (fi), VB (sv), 转发/轉寄 (zh), 転送 (ja). "VS" is left out: it
# is a forward in Danish and Norwegian but a reply in Finnish. Only the first prefix counts: "Fwd: Re:"
# forwards a reply, "Re: Fwd:" answers a forward. Tags a server puts in front ("[External]") are skipped.
_FORWARD_PREFIX = re.compile(
    r"^\s*(?:\[[^\]]{0,40}\]\s*)*(?:fwd?|wg|tr|rv|i|doorst|enc|pd|vl|vb|转发|轉寄|転送)"
    r"\s*(?:\[\d+\]|\(\d+\))?\s*[:：]",
    re.IGNORECASE,
)
# A gateway address or its local part pasted into the subject (note+project.task-42-<signature>,
# with the optional -p<partner> and -d<day> parts) is a capability: it is never shown in the
# chatter. The record part is the parser's own (gateway/address.py), so every form it reads is
# found here; the signature is matched loosely, so that a mistyped one is hidden too. The domain
# may be an internationalised one, and a full stop after the address is left in place.
_TOKEN = re.compile(
    rf"(?:{'|'.join(address.KINDS)})\+{address.RECORD_PART}-[a-z0-9]+(?:@[\w-]+(?:\.[\w-]+)*)?",
    re.IGNORECASE,
)
_EMPTY_BRACKETS = re.compile(r"\[\s*\]|\(\s*\)|<\s*>")


def clean_subject(subject: str) -> str:
    """Drop the token, then every leading reply/forward prefix, and collapse the spaces."""
    text = _TOKEN.sub("", subject or "")
    text = _EMPTY_BRACKETS.sub("", text)
    text = _PREFIX.sub("", " ".join(text.split()))
    return text.strip(" -:")


def is_forward_subject(subject: str) -> bool:
    """True if the subject carries a forward prefix ("Fwd:", "FW:", "WG:", ...), the token aside."""
    return bool(_FORWARD_PREFIX.match(_TOKEN.sub("", subject or "")))
