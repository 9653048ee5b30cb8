"""Refusal notices: a short email to a DKIM-verified sender, at most once per sender, reason and day."""

from __future__ import annotations

import email.utils
import logging
import smtplib
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from typing import TYPE_CHECKING

from gateway import idn
from gateway.automatic import LOOP_HEADER
from gateway.config import NoticeConfig

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
    # The alias domain's own templates first, as for the note itself (docs/content.md "Templates").
    renderer = services.renderer.for_domain(ctx.rules.templates_path)
    body = renderer.render_refusal(ctx.refusal, address=ctx.target.address, subject=subject,
                                   sender_email=ctx.sender.email)
    sender = services.config.gateway.notices.from_address or f"no-reply@{ctx.target.domain}"
    notice = EmailMessage(policy=SMTP_POLICY)
    notice["From"] = _safe(email.utils.formataddr(("Odoo note gateway", sender)), "From")
    notice["To"] = _safe(idn.envelope_address(ctx.sender.email), "To")
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
    """Queue the notice of a permanent refusal if the rules ask for it; never fails the message.

    Only composing it and claiming it in the journal happen here, before the SMTP reply; the
    smarthost is spoken to by the services' Notifier, after the reply, so a slow or broken
    smarthost can neither delay the reply nor change it.
    """
    if not should_send(ctx, services):
        return
    if ctx.refusal is None or ctx.sender is None:
        # should_send said no already; a real check, not an assert, which python -O drops (and which,
        # raised, turned the 550 of a message refused before authentication into a pipeline crash).
        # Never a notice to a From no DKIM signature vouched for (DESIGN.md "No backscatter").
        return
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    try:
        notice = compose(ctx, services)
        # One sender whichever form of an internationalised domain its From was written in.
        recipient = idn.envelope_address(ctx.sender.email)
        if not services.journal.claim_notice(recipient, ctx.refusal.name, day):
            return
        pending = Pending(notice, recipient, ctx.refusal.name, services.config.gateway.notices)
        why_not = services.notifier.submit(pending)
    except Exception as error:  # noqa: BLE001 (the refusal stands whatever becomes of its notice)
        # A template that fails on this message's values, a CR or LF in a header, a journal that
        # cannot be written: the reply is the refusal's all the same; the journal row says why.
        log.warning("notice %s to %s not sent: %s: %s", ctx.refusal.name, ctx.sender.email,
                    type(error).__name__, error)
        return
    if why_not:
        log.warning("notice %s to %s not sent: %s", ctx.refusal.name, ctx.sender.email, why_not)
        return
    ctx.notice_queued = True


# How many notices may wait for the smarthost; beyond, a notice is dropped (and logged) rather than
# held in memory behind a smarthost that does not answer.
QUEUE_SIZE = 100


@dataclass(frozen=True)
class Pending:
    """A composed notice, claimed in the journal, waiting for the smarthost."""

    notice: EmailMessage
    recipient: str
    reason: str
    settings: NoticeConfig


def deliver(pending: Pending) -> None:
    settings = pending.settings
    # smtplib's timeout bounds each read and write, not the conversation: this runs after the
    # SMTP reply, in the Notifier's thread, so that a smarthost slow at every step holds up only
    # the notices behind it.
    with smtplib.SMTP(settings.smarthost, settings.smarthost_port, timeout=settings.timeout) as client:
        # The null reverse-path: a notice that cannot be delivered must not bounce back to
        # the gateway (RFC 3834 section 3.3, RFC 5321 section 4.5.5).
        client.send_message(pending.notice, from_addr="", to_addrs=[pending.recipient])


class Notifier:
    """Sends queued notices one at a time in a thread of its own, started with the first notice.

    ``close`` takes no more notices; the thread goes on until the queue is empty, and ``close``
    waits for it up to the time it is given (serve gives it what is left of listener.shutdown_grace,
    counted from the stop signal).
    """

    def __init__(self, size: int = QUEUE_SIZE) -> None:
        self.size = size
        self._pending: deque[Pending] = deque()
        self._sending = False
        self._closed = False
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, pending: Pending) -> str | None:
        """Queue a notice; None if it was queued, else why it was not."""
        with self._changed:
            if self._closed:
                return "the gateway is stopping or reloading"
            if len(self._pending) >= self.size:
                return f"{self.size} notices are already waiting for the smarthost"
            self._pending.append(pending)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="notices", daemon=True)
                self._thread.start()
            self._changed.notify_all()
        return None

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._closed:
                    self._changed.wait()
                if not self._pending:
                    return
                pending = self._pending.popleft()
                self._sending = True
            try:
                deliver(pending)
                log.info("notice %s sent to %s", pending.reason, pending.recipient)
            except Exception as error:  # noqa: BLE001 (one notice's failure stops no other)
                log.warning("notice %s to %s not sent: %s: %s", pending.reason, pending.recipient,
                            type(error).__name__, error)
            finally:
                with self._changed:
                    self._sending = False
                    self._changed.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every queued notice was tried; False if some are still waiting after ``timeout``."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._pending and not self._sending, timeout)

    def close(self, wait: float | None = None) -> None:
        """Take no more notices. With ``wait`` (the process is stopping) wait up to that many seconds
        for the queued ones to be tried, and log how many were not; 0 waits for none."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if wait is not None and not self.flush(max(0.0, wait)):
            with self._changed:
                left = len(self._pending) + self._sending
            log.warning("stopping with %d notice(s) not sent after %.0f s", left, wait)
