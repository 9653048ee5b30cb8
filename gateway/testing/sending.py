"""Compose, DKIM-sign and send a message over SMTP, as a contributor's mail system would."""

from __future__ import annotations

import email.utils
import smtplib
import time
import uuid
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

from gateway.testing.dkim import sign


def compose(sender: str, recipient: str, subject: str, body: str, *, sender_name: str = "",
            message_id: str | None = None, html: str | None = None) -> bytes:
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = email.utils.formataddr((sender_name, sender))
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(time.time())
    domain = sender.rpartition("@")[2] or "localhost"
    message["Message-ID"] = message_id or f"<{uuid.uuid4().hex}@{domain}>"
    message.set_content(body)
    if html is not None:
        message.add_alternative(html, subtype="html")
    return message.as_bytes()


def deliver(raw: bytes, recipient: str, *, host: str = "127.0.0.1", port: int = 2525,
            mail_from: str = "", timeout: float = 60, lmtp: bool = False) -> str:
    """Send over SMTP (LMTP with ``lmtp``: LHLO instead of EHLO) and return the server's final
    reply as "CODE text" (refusals included)."""
    client = smtplib.LMTP(host, port, timeout=timeout) if lmtp else smtplib.SMTP(host, port, timeout=timeout)
    try:
        client.ehlo("client.example.com")
        code, text = client.mail(mail_from)
        if code != 250:
            return f"{code} {text.decode(errors='replace')}"
        code, text = client.rcpt(recipient)
        if code not in (250, 251):
            client.rset()
            return f"{code} {text.decode(errors='replace')}"
        code, text = client.data(raw)
        return f"{code} {text.decode(errors='replace')}"
    finally:
        # The reply to DATA decides the message's fate. What QUIT gets does not change it: a
        # gateway that is stopping may answer 421 or close first (RFC 5321 3.8), which smtplib's
        # context manager would raise over the reply already received.
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


def send_signed(*, host: str, port: int, sender: str, recipient: str, subject: str, body: str,
                key_file: Path, selector: str = "gateway") -> str:
    domain = sender.rpartition("@")[2]
    raw = compose(sender, recipient, subject, body)
    signed = sign(raw, key_file.read_bytes(), domain, selector)
    return deliver(signed, recipient, host=host, port=port, mail_from=sender)
