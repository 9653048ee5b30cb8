"""Refusal notices: a short email to a DKIM-verified sender, at most once per sender, reason and day."""

from __future__ import annotations

import email.utils
import logging
import smtplib
import time
import uuid
from datetime import datetime, timezone
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from typing import TYPE_CHECKING

from gateway.automatic import LOOP_HEADER
from gateway.journal import JournalUnavailable

if TYPE_CHECKING:
    from gateway.context import MessageContext
    from gateway.pipeline import Services

log = logging.getLogger(__name__)


class UnsafeHeader(ValueError):
    """A value meant for a header holds CR or LF, which would let it add headers (MAIL_SECURITY.md 17)."""


def _safe(value: str, name: str) -> str:
    if "\r" in value or "\n" in value:
        raise UnsafeHeader(f"{name} contains CR or LF")
    return value


def should_send(ctx: MessageContext, services: Services) -> bool:
    refusal = ctx.refusal
    return bool(
        refusal is not None and not refusal.transient and refusal.sends_notice
        # Only a sender whose DKIM signature verified: any other From may be forged, and a notice
        # to it would be backscatter to an innocent third party (DESIGN.md "No backscatter").
        and ctx.sender is not None
        and ctx.rules.notices.enabled
        and services.config.gateway.notices.smarthost
    )


def compose(ctx: MessageContext, services: Services) -> EmailMessage:
    assert ctx.refusal is not None and ctx.sender is not None
    subject = " ".join((ctx.message.subject if ctx.message else "").split())
    body = services.renderer.render_refusal(ctx.refusal, address=ctx.target.address, subject=subject,
                                            sender_email=ctx.sender.email)
    sender = services.config.gateway.notices.from_address or f"no-reply@{ctx.target.domain}"
    notice = EmailMessage(policy=SMTP_POLICY)
    notice["From"] = _safe(email.utils.formataddr(("Odoo note gateway", sender)), "From")
    notice["To"] = _safe(ctx.sender.email, "To")
    notice["Subject"] = _safe(f"Not filed: {subject}" if subject else "Your message was not filed", "Subject")
    notice["Date"] = email.utils.formatdate(time.time())
    notice["Message-ID"] = f"<{uuid.uuid4().hex}@{ctx.target.domain}>"
    if ctx.message is not None and ctx.message.message_id and not ctx.message.message_id_derived:
        notice["In-Reply-To"] = _safe(ctx.message.message_id, "In-Reply-To")
        notice["References"] = _safe(ctx.message.message_id, "References")
    # RFC 3834 section 5: the notice says it is automatic, so that well-behaved responders stay
    # quiet; the loop header lets this gateway refuse it should it ever come back.
    notice["Auto-Submitted"] = "auto-replied"
    notice[LOOP_HEADER] = _safe(services.config.gateway.listener.hostname, LOOP_HEADER)
    notice.set_content(body)
    return notice


def maybe_send(ctx: MessageContext, services: Services) -> None:
    """Send the notice of a permanent refusal if the rules ask for it; never fails the message."""
    if not should_send(ctx, services):
        return
    assert ctx.refusal is not None and ctx.sender is not None
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    try:
        notice = compose(ctx, services)
        if not services.journal.claim_notice(ctx.sender.email, ctx.refusal.name, day):
            return
        settings = services.config.gateway.notices
        with smtplib.SMTP(settings.smarthost, settings.smarthost_port, timeout=settings.timeout) as client:
            # The null reverse-path: a notice that cannot be delivered must not bounce back to
            # the gateway (RFC 3834 section 3.3, RFC 5321 section 4.5.5).
            client.send_message(notice, from_addr="", to_addrs=[ctx.sender.email])
        ctx.notice_sent = True
        log.info("notice %s sent to %s", ctx.refusal.name, ctx.sender.email)
    except (UnsafeHeader, JournalUnavailable, OSError, smtplib.SMTPException) as error:
        # The refusal stands whatever becomes of its notice; the journal row already says why.
        log.warning("notice %s to %s not sent: %s", ctx.refusal.name, ctx.sender.email, error)
