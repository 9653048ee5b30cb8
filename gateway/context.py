"""The typed record of one message as it passes through the pipeline's stages."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from contextlib import ExitStack
    from email.message import Message

    from gateway.config import DomainRules
    from gateway.odoo import Pending
    from gateway.policy import RecordFollowers
    from gateway.refusals import Refusal
    from gateway.routing import Parent

Kind = Literal["note", "reply"]


@dataclass(frozen=True)
class Target:
    """Where a message goes, as read from a verified recipient address."""

    kind: Kind
    domain: str
    model: str
    res_id: int
    address: str
    # A plain note@ / reply@ address: model and res_id are found from the References of the
    # message by the route stage (issue 7); until then they are "" and 0.
    by_reference: bool = False
    # Signed in the address (issue 7): only this partner may write to it; the day it was issued.
    partner_id: int | None = None
    issued_day: int | None = None


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    payload: bytes
    content_id: str | None = None
    # Shown inside the text rather than filed as a document: not Content-Disposition: attachment and
    # its Content-ID referenced by the HTML body (or an image the gateway placed there itself).
    # A Content-ID alone says nothing: Gmail gives one to every file it sends.
    inline: bool = False
    # What makes the file unreadable (gateway.mime): "S/MIME" or "PGP/MIME" for an encrypted entity,
    # or the unknown Content-Transfer-Encoding it is still in. A message with no text whose every
    # file is so is refused (content.extract_body), not filed as an empty note.
    encryption: str | None = None
    unknown_encoding: str | None = None


@dataclass(frozen=True)
class DroppedRecipient:
    """A To or Cc item mail-parser could not read, and so left out of ParsedMessage.to / cc."""

    # The item as written, its whitespace collapsed.
    text: str
    # The addresses the standard library's parser reads in it (message._other_reading), if any.
    addresses: tuple[str, ...] = ()


@dataclass
class ParsedMessage:
    """What the stages need of the MIME message, taken from mail-parser once."""

    message_id: str
    from_address: str
    from_name: str
    subject: str
    text_plain: str
    text_html: str
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    # The display name each address of To and Cc was written with, by the address lowercased (the
    # first non-empty one): what a note says of the people the email went to (external_recipients).
    recipient_names: dict[str, str] = field(default_factory=dict)
    # What To and Cc say beyond to / cc, for the reply-all check only (routing.note_addresses,
    # routing.unreadable_note_recipient), never to notify or list anyone: the addresses the standard
    # library's parser reads in To and Cc that mail-parser does not ("note+...@notes.example.com."
    # and "<note+...@notes.example.com.>", with the final dot an MTA strips), and every item
    # mail-parser dropped, with what the standard library reads in it.
    other_readings: list[str] = field(default_factory=list)
    dropped_recipients: list[DroppedRecipient] = field(default_factory=list)
    # Message-IDs of In-Reply-To then References (RFC 5322 section 3.6.4), for routing plain addresses.
    in_reply_to: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    # How many msg-ids of In-Reply-To and References were left out of the two lists above
    # (message.MAX_MESSAGE_IDS each: the first and the newest are kept).
    message_ids_left_out: int = 0
    attachments: list[Attachment] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    message_id_derived: bool = False
    # What the gateway cannot read: "S/MIME" or "PGP/MIME" when the message is encrypted, and
    # whether it is S/MIME opaque-signed (its text inside a CMS structure). Refused when the
    # content is extracted, after the sender is authenticated.
    encryption: str | None = None
    opaque_signed: bool = False


@dataclass(frozen=True)
class VerifiedSender:
    """A From address vouched for by a DKIM signature whose d= aligns with its domain."""

    email: str
    dkim_domain: str
    selector: str
    # The header fields the gateway reads (senderauth.USED_HEADERS) that the message carries but
    # the signature's h= does not name at all, lowercased: the signer left them open to change.
    # In-Reply-To and References of this set choose no record (routing); To and Cc still notify the
    # internal users they name, and count as addressing the gateway only as gateway/addressed.py says.
    unsigned_headers: frozenset[str] = frozenset()
    # The header fields the gateway reads that h= names, lowercased, whether or not the message
    # carries them: a signer that names To or Cc covers the recipients (gateway/addressed.py).
    signed_headers: frozenset[str] = frozenset()


@dataclass(frozen=True)
class OdooUser:
    uid: int
    login: str
    name: str
    email: str
    partner_id: int
    commercial_partner_id: int
    internal: bool
    group_ids: tuple[int, ...] = ()
    # Read with the user on this message (never cached across messages): the record-rule
    # evaluator of the odoo-rules policy needs them, and reading them here saves round trips.
    company_ids: tuple[int, ...] | None = None
    company_id: int = 0


@dataclass
class MessageContext:
    """One message: the envelope, then what each stage found or decided."""

    raw: bytes
    mail_from: str
    target: Target
    rules: DomainRules
    peer: str = ""
    # The Odoo the record is in (config.odoo_identity: URL and database, not the connection's name):
    # the in-flight claim and the journal's keys name it, so that task 60 of one Odoo is not task 60
    # of another, and two connections to one database are one Odoo. '' (unknown) matches any Odoo.
    odoo_identity: str = ""
    received_at: float = field(default_factory=time.time)
    message: ParsedMessage | None = None
    # The message as the email package parses it (compat32, as mail-parser does), parsed once and
    # read by the stages up to authenticate-sender, which drops it: each parsing it again cost
    # about a millisecond of CPU per message (issue 6, found by profiling).
    email_message: Message | None = None
    sender: VerifiedSender | None = None
    user: OdooUser | None = None
    body_html: str | None = None
    rendered_body: str | None = None
    notify_partner_ids: list[int] = field(default_factory=list)
    notify_emails: list[str] = field(default_factory=list)
    # The To/Cc recipients of the email that are not internal users, so not notified of a note,
    # "Name <address>": the sender's email reached them already (the note template's external_recipients).
    external_recipients: list[str] = field(default_factory=list)
    # The files to post (after the attachment rules), and what the journal should remember of
    # the content stages: files refused, recipients not notified (issue 3).
    attachments: list[Attachment] | None = None
    refused_files: list[str] = field(default_factory=list)
    journal_notes: list[str] = field(default_factory=list)
    # The Odoo company the alias domain is bound to, if any: posts run in its context (issue 7).
    company_id: int | None = None
    # Decisions an admin reading the journal must see: how a plain address was routed, why a
    # reply+ delivery was filed as a note (issue 7).
    decision: str = ""
    # Why a reply delivery is filed as a note (the reply-all-as-note stage), for a refusal to say;
    # and whether it is because the message answers an internal note (said only once the sender's
    # access to the record is established).
    note_reason: str = ""
    note_from_parent: bool = False
    # The author (partner) of the internal message such a reply answers: notified of the note if an
    # active internal user, as Odoo's mail gateway notifies it (recipients.choose).
    parent_author_id: int | None = None
    # The record access policy let the sender read the record: from then on a routed note@ / reply@
    # is told its refusals as they are (pipeline.said_refusal).
    record_access: bool = False
    # The record's followers, read from Odoo while the sender is identified (issue 6).
    followers: Pending[RecordFollowers] | None = None
    # The message of the record a reply+ answers, looked up at the same time (routing.reply_parent).
    parent: Pending[Parent | None] | None = None
    # The claim against another delivery of this message being filed at the same time
    # (gateway/inflight.py), held from the authorize stage to the end of the run; and whether Odoo,
    # searched under it, had none of the message's Message-IDs on the record (issue 6: the record
    # search of the access policy also answers that, and the post stage need not search again).
    claim: ExitStack | None = None
    unfiled: bool = False
    # A call that files the message failed with Odoo perhaps still running it (gateway/post.py);
    # the post stage then leaves a marker in the journal for the retry (odoo.unsettled_post_seconds).
    post_unsettled: bool = False
    # The (name, address) of the From a reply+ is handed to Odoo's mail gateway with (gateway/post.py
    # files_through_mail_gateway): the address as Odoo holds it, the name only if Odoo reads it so.
    reply_from: tuple[str, str] | None = None
    odoo_message_id: int | None = None
    duplicate: bool = False
    refusal: Refusal | None = None
    receipt_id: int | None = None
    # A refusal notice was composed and queued for the smarthost (gateway/notices.py).
    notice_queued: bool = False
    stage_durations: dict[str, float] = field(default_factory=dict)
    # The stage running now ("" before the first and after the last): the listener names it when
    # the pipeline gives no outcome in time.
    running_stage: str = ""
    # The time the message waited on Odoo: its calls, a pooled connection, a batched read, a read
    # started alongside; not the gateway's own work (gateway/odoo.py start_waiting).
    odoo_seconds: float = 0.0
    # The reply the listener gave itself when the pipeline overran its last-resort timer (smtp.py),
    # its refusal (the journal row's verdict and class follow it: it is what the sender got) and
    # when; whether the pipeline's own reply was settled (journaled) first. Under reply_lock:
    # whichever comes first is the reply sent and the one the journal keeps (pipeline.sent_reply).
    listener_reply: str | None = None
    listener_refusal: Refusal | None = None
    listener_answered_at: float = 0.0
    reply_settled: bool = False
    reply_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def verdict(self) -> str:
        if self.refusal is None:
            return "duplicate" if self.duplicate else "filed"
        return self.refusal.verdict
