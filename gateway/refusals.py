"""Every way a message can be turned away, as one exception type with a subclass per condition."""

from __future__ import annotations

import unicodedata

from gateway import idn
from gateway.observe import masked


class Refusal(Exception):
    """A message the gateway will not file, with the SMTP reply that says why.

    Subclasses set the class attributes; ``detail`` adds the specifics of one message (which
    signature failed, which record) to the fixed reason. A 4xx refusal is transient: the sending
    MTA keeps the message and retries, so it must never be used for something a retry cannot heal
    (RFC 5321 section 4.2.5).
    """

    smtp_code: int = 451
    enhanced_code: str = "4.3.0"
    reason: str = "Temporary failure, try again later"
    template: str = "notice/generic.txt.j2"
    # Whether a notice email may explain this refusal to a verified sender. Never for mail that is
    # itself automatic: answering an auto-reply is how mail loops start (RFC 3834 section 2).
    sends_notice: bool = True

    def __init__(self, detail: str | None = None, *, internal: str | None = None) -> None:
        self.detail = detail
        # What only the operator reads (the journal, the log, ``note-gateway check``), never the
        # reply or the notice: the access policy, ir.model.access, email_domains, a record rule's
        # name. A portal sender can do nothing with them, and they describe the configuration
        # (found by a review of what refusals tell senders).
        self.internal = internal
        # The refusal this one is said in place of (pipeline.said_refusal): its class and specifics are
        # what the journal and the log keep.
        self.concealed: Refusal | None = None
        super().__init__(self.text)

    @property
    def transient(self) -> bool:
        return 400 <= self.smtp_code < 500

    @property
    def verdict(self) -> str:
        """The journal's and the metrics' verdict of a message answered with this refusal."""
        return "deferred" if self.transient else "refused"

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def text(self) -> str:
        text = self.reason if not self.detail else f"{self.reason}: {self.detail}"
        # An SMTP reply is one line; a detail taken from a message must not be able to add lines
        # or smuggle a second reply (RFC 5321 section 4.2), nor carry a control character (its
        # textstring is printable text), which the log lines quoting the reply would show raw.
        return masked(" ".join(text.split()))[:400]

    def smtp_reply(self) -> str:
        return f"{self.smtp_code} {self.enhanced_code} {_ascii(self.text)}"

    @property
    def operator_text(self) -> str:
        """The text with what only the operator reads (``internal``) added: the journal, the log, ``check``."""
        return f"{self.text} ({self.internal})" if self.internal else self.text


def _ascii(text: str) -> str:
    """Text for an SMTP reply: US-ASCII (RFC 5321 section 2.4), also to a client that declared SMTPUTF8.

    An address keeps its identity: its domain in A-labels ("paula@xn--bcher-kva.example") and a
    non-ASCII letter of its local part as "\\x{FC}" (RFC 6533); without its accents it named
    another, real domain ("paula@bucher.example", found by a review of internationalised senders).
    Any other detail taken from a message, a file name such as "Rechnung Müller.vbs", keeps its
    letters without their accents and "?" for the rest; aiosmtpd would fail to send it otherwise,
    and the client would get "500 Error: (UnicodeEncodeError)" instead of the refusal.
    """
    if text.isascii():
        return text
    text = idn.ADDRESS_IN_TEXT.sub(_ascii_address, text)
    letters = "".join(char for char in unicodedata.normalize("NFKD", text) if not unicodedata.combining(char))
    return letters.encode("ascii", "replace").decode("ascii")


def _ascii_address(match) -> str:
    found = match.group(0)
    if found.isascii():
        return found
    # A sentence's full stop after the address is not part of its domain.
    address = found.rstrip(".")
    return idn.ascii_address(address) + found[len(address):]


# --- Envelope (RCPT TO) -------------------------------------------------------------------------


class BadAddress(Refusal):
    smtp_code, enhanced_code = 550, "5.1.1"
    reason = "No such gateway address"
    template = "notice/bad_address.txt.j2"


class UnknownAliasDomain(Refusal):
    smtp_code, enhanced_code = 550, "5.1.1"
    reason = "Not an alias domain of this gateway"
    template = "notice/bad_address.txt.j2"


class TooManyRecipients(Refusal):
    smtp_code, enhanced_code = 452, "4.5.3"
    reason = "One gateway recipient per transaction, send the others separately"


class SenderAddressInvalid(Refusal):
    smtp_code, enhanced_code = 553, "5.1.7"
    reason = "Malformed envelope sender address"


class RecipientAddressInvalid(Refusal):
    smtp_code, enhanced_code = 553, "5.1.3"
    reason = "Malformed recipient address"


class NonAsciiAddressUndeclared(Refusal):
    # RFC 6531 section 3.4: a non-ASCII address only in a transaction whose MAIL carried SMTPUTF8.
    # 5.6.7, "non-ASCII addresses not permitted" (RFC 6533 section 4); the words are Postfix's.
    smtp_code, enhanced_code = 553, "5.6.7"
    reason = "Must declare SMTPUTF8 to send unicode address"


# --- Message content and framing ----------------------------------------------------------------


class BareLineEnding(Refusal):
    smtp_code, enhanced_code = 550, "5.6.0"
    reason = "Bare CR or LF in message data, lines must end with CRLF"
    # No notice: refused before the sender is authenticated (DESIGN.md "No backscatter").
    sends_notice = False


class MessageTooLarge(Refusal):
    # Over listener.max_message_size: said by the listener (gateway/smtp.py), at MAIL for a declared
    # SIZE or at the end of DATA, and journaled there; the pipeline never sees the message. No
    # notice: the message was not read whole, so no DKIM signature on it can be checked, and a
    # notice to an unverified From would be backscatter (DESIGN.md "No backscatter").
    smtp_code, enhanced_code = 552, "5.3.4"
    reason = "Message too large"
    sends_notice = False


class LineTooLong(Refusal):
    # A line of the data over RFC 5321 section 4.5.3.1.6's 1000 octets (its CRLF included): aiosmtpd
    # reads the data to its end, keeps none of it, and said "500 Line too long (see RFC5321
    # 4.5.3.1.6)", which no journal row, metric or log line at INFO heard of (found by a review of
    # what operators can see); the listener says this in its place and journals it (gateway/smtp.py).
    # 500 as aiosmtpd said it, the reply section 4.5.3.1.10 gives for a line over its limit; 5.5.2,
    # RFC 3463's syntax error, the enhanced code that goes with 500 (RFC 5248's registry): the data
    # broke SMTP's framing. Not 552 5.3.4, which here is MessageTooLarge's (and HeaderTooLarge's)
    # and would send a sender and an operator looking at the message's size. Permanent: the same
    # bytes fail again. No notice: the message was not kept, so no DKIM signature can be checked.
    smtp_code, enhanced_code = 500, "5.5.2"
    reason = "Line too long in the message data"
    sends_notice = False


class MessageUnparseable(Refusal):
    smtp_code, enhanced_code = 554, "5.6.0"
    reason = "Malformed message, it could not be parsed"
    # No notice: refused before the sender is authenticated (DESIGN.md "No backscatter").
    sends_notice = False


class FromHeaderInvalid(Refusal):
    smtp_code, enhanced_code = 550, "5.7.1"
    reason = "The message must have exactly one From header with one address"
    # No notice: refused before the sender is authenticated (DESIGN.md "No backscatter").
    sends_notice = False


class FromAddressInternationalised(FromHeaderInvalid):
    # A From with a UTF-8 local part (RFC 6532 section 3.2, an SMTPUTF8/EAI address): the listener
    # offers SMTPUTF8 (RFC 6531) so that UTF-8 headers pass, but senders are matched by ASCII
    # addresses only (a homoglyph of a contributor's address must not become one). Said as that, not as
    # "exactly one From header" with the email package's defect text (found by a review). 5.6.7 is
    # RFC 6531's "non-ASCII addresses not permitted for that sender/recipient".
    smtp_code, enhanced_code = 550, "5.6.7"
    reason = "Internationalised sender addresses are not supported, senders are matched by ASCII addresses"


class AttachmentRefused(Refusal):
    # Only when the rules say so (attachments.on_refused_file = "refuse"); by default a refused
    # file is named in the note and the rest of the message is filed.
    smtp_code, enhanced_code = 550, "5.7.1"
    reason = "An attached file is not accepted by this gateway"
    template = "notice/attachment_refused.txt.j2"


class OnlyRefusedFiles(AttachmentRefused):
    # No text of the sender's, and every file it held was refused by the attachment rules (an 11 MB
    # scan over max_file_size under "Sent from my iPhone", a lone setup.exe). Said as EmptyBody
    # before ("write above the quoted text"), which never named the file that was the cause (found
    # by a review of misleading refusals). The files and the rule each broke are the detail.
    reason = "The message has no text to file, and its files are not accepted by this gateway"
    template = "notice/only_refused_files.txt.j2"


class EmptyBody(Refusal):
    smtp_code, enhanced_code = 550, "5.6.0"
    reason = "The message has no text to file, write above the quoted text"
    template = "notice/empty_body.txt.j2"


class EncryptedMessage(Refusal):
    # S/MIME enveloped-data, PGP/MIME multipart/encrypted, an inline "BEGIN PGP MESSAGE": the
    # gateway holds no key, and a note of ciphertext is no note (found by a review of real-world
    # MIME shapes: each was filed as an unreadable note).
    smtp_code, enhanced_code = 554, "5.6.0"
    reason = "Encrypted messages cannot be filed, send it unencrypted"
    template = "notice/encrypted.txt.j2"


class OpaqueSignedMessage(Refusal):
    # application/pkcs7-mime; smime-type=signed-data: the text is inside the CMS structure, which
    # the gateway does not take apart (Outlook with "Send clear text signed message" off).
    smtp_code, enhanced_code = 554, "5.6.0"
    reason = "S/MIME opaque-signed messages cannot be read, send it clear-signed"
    template = "notice/opaque_signed.txt.j2"


class MessageFragment(Refusal):
    # message/partial (RFC 2046 section 5.2.2): one piece of a message split by the sender's
    # client; the gateway does not reassemble them, and a piece alone cannot be read.
    smtp_code, enhanced_code = 554, "5.6.0"
    reason = "Messages split in parts (message/partial) cannot be filed, send it whole"
    # No notice: refused before the sender is authenticated (DESIGN.md "No backscatter").
    sends_notice = False


class OutlookTnefOnly(Refusal):
    # The text and the files are inside Outlook's winmail.dat (TNEF), which the gateway does not
    # decode (docs/content.md, "Outlook's winmail.dat"); the same bytes would fail again.
    smtp_code, enhanced_code = 554, "5.6.0"
    reason = "Outlook sent this in its own format (winmail.dat): send it as plain text or HTML"


class UnknownTransferEncoding(Refusal):
    # Everything the message holds is in a Content-Transfer-Encoding the gateway does not know
    # (x-gzip64, a typo): RFC 2045 section 6.4 makes such a part an opaque file, and a note of one
    # opaque file is no note. Found by a MIME review: the encoded text was filed as the note.
    smtp_code, enhanced_code = 554, "5.6.0"
    reason = "The message is in a Content-Transfer-Encoding the gateway cannot decode, send it as plain text"


class NulByte(Refusal):
    smtp_code, enhanced_code = 550, "5.6.0"
    reason = "NUL byte in message data"
    # No notice: refused before the sender is authenticated (DESIGN.md "No backscatter").
    sends_notice = False


class HeaderTooLarge(Refusal):
    # No notice, as for MessageTooLarge: refused by the input limits before the signature is
    # checked. Both had a notice template that could never be sent (found by a review of the notices).
    smtp_code, enhanced_code = 552, "5.3.4"
    reason = "Message header too large"
    sends_notice = False


class HeaderMalformed(Refusal):
    smtp_code, enhanced_code = 550, "5.6.0"
    reason = "Malformed message header, it cannot be read"
    # No notice: refused before the sender is authenticated (DESIGN.md "No backscatter").
    sends_notice = False


class HeaderNotUtf8(Refusal):
    smtp_code, enhanced_code = 550, "5.6.0"
    reason = "Message header has 8-bit bytes that are not UTF-8"
    # No notice: refused before the sender is authenticated (DESIGN.md "No backscatter").
    sends_notice = False


class TooManyParts(Refusal):
    # No notice: refused by the input limits before the signature is checked (HeaderTooLarge).
    smtp_code, enhanced_code = 552, "5.3.4"
    reason = "Message has too many MIME parts"
    sends_notice = False


class NestedTooDeep(Refusal):
    smtp_code, enhanced_code = 554, "5.6.0"
    reason = "MIME parts nested too deep"
    # No notice: refused before the sender is authenticated (DESIGN.md "No backscatter").
    sends_notice = False


class HtmlNestedTooDeep(Refusal):
    smtp_code, enhanced_code = 554, "5.6.0"
    reason = "HTML elements nested too deep"


# --- Automatic mail and loops: refused in the session, never answered --------------------------


class AutomaticMessage(Refusal):
    smtp_code, enhanced_code = 550, "5.7.1"
    reason = "Automatic replies, bulk and list mail are not filed"
    sends_notice = False


class MailLoop(Refusal):
    # RFC 3463: X.4.6 is "routing loop detected".
    smtp_code, enhanced_code = 550, "5.4.6"
    reason = "Mail loop: the message carries this gateway's own loop header"
    sends_notice = False


# --- Floods: transient, the sender's MTA retries later --------------------------------------------


class SenderRateLimited(Refusal):
    smtp_code, enhanced_code = 450, "4.7.1"
    reason = "Too many messages from this sender, try again later"


class RecordRateLimited(Refusal):
    smtp_code, enhanced_code = 450, "4.7.1"
    reason = "Too many messages to this record, try again later"


class TooManySessions(Refusal):
    smtp_code, enhanced_code = 421, "4.3.2"
    reason = "Too many sessions, try again later"


class ShuttingDown(Refusal):
    # RFC 5321 section 3.8: a server that must close says 421 and the client retries later.
    smtp_code, enhanced_code = 421, "4.3.2"
    reason = "The gateway is shutting down, try again later"


class SessionTooLong(Refusal):
    # listener.max_session_seconds: said at the first command after the limit, never inside DATA,
    # so no message is cut; the client reconnects and goes on (RFC 5321 section 3.8).
    smtp_code, enhanced_code = 421, "4.4.2"
    reason = "This session has lasted too long, reconnect to go on"


class GatewayBusy(Refusal):
    # Every slot of listener.max_messages_in_data stayed taken for a whole session_timeout: defer
    # before any of the message is sent, and the client retries later (RFC 5321 section 4.2.5).
    smtp_code, enhanced_code = 451, "4.3.2"
    reason = "The gateway is busy with other messages, try again later"
    sends_notice = False


class TooManyConnectionsFromPeer(Refusal):
    smtp_code, enhanced_code = 421, "4.7.0"
    reason = "Too many connections from your address, try again later"


# --- Sender authentication ----------------------------------------------------------------------


class SenderNotAuthenticated(Refusal):
    # Never a notice: a notice goes only to a sender whose DKIM signature verified (notices.should_send),
    # which this sender is not; its From may be forged (DESIGN.md "No backscatter"). It had a notice
    # template all the same, which could never be sent (found by a review of the notices).
    smtp_code, enhanced_code = 550, "5.7.1"
    reason = "Sender not authenticated, no valid DKIM signature aligned with the From domain"
    sends_notice = False


class HeaderNotSigned(Refusal):
    # A copy of a header the gateway reads that the signature which authenticated the sender does
    # not cover: added above the signed one, it is the one the email package reads.
    smtp_code, enhanced_code = 550, "5.7.1"
    reason = "The message was changed after it was signed"
    # No notice: the message is not what the sender signed, and the gateway never took its From as
    # verified (docs/rules.md); a notice would tell the signer of a message someone else changed.
    sends_notice = False


class DnsTemporaryFailure(Refusal):
    smtp_code, enhanced_code = 451, "4.4.3"
    reason = "DNS lookup of the DKIM key failed, try again later"

    def __init__(self, detail: str | None = None, *, internal: str | None = None,
                 causes: frozenset[str] = frozenset()) -> None:
        super().__init__(detail, internal=internal)
        # What the nameservers did, for doctor's advice (resolver.py): "timeout", an rcode such as
        # "SERVFAIL" or "REFUSED", "TCP" (a truncated answer, and TCP failed), "other".
        self.causes = causes


class SenderAuthenticationTimedOut(Refusal):
    # The message's deadline (listener.message_deadline) passed while its DKIM keys were being
    # looked up: DNS slow or silent, most often. Said as such, not as "Odoo is unavailable", which
    # sent admins looking at the wrong server (found by a security review). X.4.3: the directory
    # server (DNS) failed (RFC 3463).
    smtp_code, enhanced_code = 451, "4.4.3"
    reason = "The DKIM check took too long (DNS lookups of its keys), try again later"


class SignatureDatedAhead(Refusal):
    # A signature that verified, but whose t= is further ahead of the gateway's clock than
    # senderauth.ALLOWED_CLOCK_SKEW_SECONDS allows: one of the two clocks is wrong, most often the
    # gateway's (a host without time synchronisation). A retry passes once the clocks agree, so it
    # is deferred, never filed (day-2 operations review: a gateway 20 minutes slow answered every
    # fresh note "550 5.7.1 ... signature is dated in the future", bouncing it and blaming the
    # sender). X.7.0: a security status (RFC 3463). A t= more than senderauth.MAX_DEFERRED_AHEAD_SECONDS
    # (9 hours 50 minutes, just under dkimpy's own 10 hours) ahead is refused (550), as before.
    smtp_code, enhanced_code = 451, "4.7.0"
    reason = "The DKIM signature is dated ahead of the gateway's clock, try again later"
    sends_notice = False


class TooManySignatures(Refusal):
    # More DKIM-Signature fields than any real message carries (senderauth.MAX_SIGNATURES): each
    # costs a key lookup and a hash of the body, so the gateway does not look at any of them, and
    # the same message would be refused again (RFC 6376 section 6.1 lets a verifier limit them).
    smtp_code, enhanced_code = 550, "5.7.1"
    reason = "Too many DKIM signatures"
    # No notice: refused before the sender is authenticated (DESIGN.md "No backscatter").
    sends_notice = False


class NotAddressedToGateway(Refusal):
    # The message's To and Cc name no address of the gateway: a signed message its author sent to
    # someone else, which that someone could otherwise send on to a reply+ address (filed publicly
    # under her name) or a note+ one (found by a security review). No notice: its verified From is
    # the author, who did not send it to the gateway, and the reply reaches who did.
    smtp_code, enhanced_code = 550, "5.7.1"
    reason = "The message is not addressed to the gateway"
    sends_notice = False


# --- Identity and authorization ------------------------------------------------------------------


class UnknownSender(Refusal):
    smtp_code, enhanced_code = 550, "5.7.1"
    reason = "No Odoo user has this sender address"
    template = "notice/unknown_sender.txt.j2"


class AmbiguousSender(Refusal):
    smtp_code, enhanced_code = 550, "5.7.1"
    reason = "Several Odoo users have this sender address"
    template = "notice/unknown_sender.txt.j2"


class SenderArchived(Refusal):
    smtp_code, enhanced_code = 550, "5.7.1"
    reason = "The Odoo user of this sender is archived"
    template = "notice/unknown_sender.txt.j2"


class SenderWithoutEmail(Refusal):
    # The sender address is the login of an active Odoo user whose partner has no email. The user
    # is found by email alone, as Odoo's own mail gateway finds her (identity._MATCHED_FIELDS): a
    # login does not follow an email change, and matched it kept an old address filing as its user
    # (found by a lifecycle review). Only an administrator setting the email heals it.
    smtp_code, enhanced_code = 550, "5.7.1"
    reason = ("The Odoo user whose login is this sender address has no email address: an Odoo administrator "
              "must set the user's email to this address")
    template = "notice/unknown_sender.txt.j2"


class NotContributor(Refusal):
    smtp_code, enhanced_code = 550, "5.7.1"
    reason = "Sender may not post internal notes"
    template = "notice/not_contributor.txt.j2"


class InternalUserNotAllowed(Refusal):
    # The kind's allow_internal_users = false: the address takes mail from portal users only. Told
    # before as NotContributor ("may not post internal notes", "ask for that access"), even on a
    # reply+ address and to a user no group would let in (found by a review of misleading refusals).
    smtp_code, enhanced_code = 550, "5.7.1"
    reason = "Internal users may not post here by email"
    template = "notice/internal_user.txt.j2"


class ModelNotAllowed(Refusal):
    smtp_code, enhanced_code = 550, "5.7.1"
    reason = "Posting by email is not enabled for this kind of record"
    template = "notice/access_denied.txt.j2"


class AnswersNoteOfAnotherRecord(Refusal):
    # A reply to this record whose In-Reply-To (else newest message of References) is an internal note of
    # another record: filed here it would be public, its quote carrying that note (found by a
    # review). Odoo's catchall would file it on the other record as a note; the address names this
    # one, so the sender is asked to send it where it belongs. A retry would fail the same way.
    smtp_code, enhanced_code = 550, "5.7.1"
    reason = ("The message answers an internal note of another record: "
              "send it to that record's note address")


class AlsoAddressedToNote(Refusal):
    # A reply whose To or Cc also names a note address that is not one of its own record (another
    # record, another Odoo, a note+ of no readable record): meant in part as an internal note, its
    # text would be public here (found by a review: To a task's reply+ and Cc a sale order's
    # note+ was filed as a note on the order and publicly on the task). docs/rules.md: nothing of a
    # message that was also meant as a note is ever made public. A retry would fail the same way.
    smtp_code, enhanced_code = 550, "5.7.1"
    reason = ("The message is also addressed to an internal note address: send the public reply separately, "
              "without the note address in To or Cc")


class UnreadableRecipient(AlsoAddressedToNote):
    # A reply whose To or Cc holds an item that no parser reads as an address of the gateway but
    # that may be a note address: it holds a note address's local part or names an alias domain
    # (routing.unreadable_note_recipient). An MTA may deliver it to the note address all the same,
    # and its text was meant, at least in part, as internal: refused rather than filed publicly
    # (fail closed; found by a lifecycle review). The detail quotes the item; a retry fails the same way.
    reason = ("The message's To or Cc holds an address the gateway cannot read that may be an internal note "
              "address: send the public reply without it, or write it as a plain name@domain address")


class ReferencesTooMany(Refusal):
    # A reply whose In-Reply-To and References hold more msg-ids than the gateway keeps
    # (message.MAX_MESSAGE_IDS each: the first and the newest), whose In-Reply-To is no message
    # Odoo has and whose kept ids answer no internal note: a left-out id could be the parent Odoo
    # would pick, and a note, whose quote a public reply would carry to the record's portal
    # followers (found by a review). Refused rather than filed publicly; a retry would fail the same way.
    smtp_code, enhanced_code = 550, "5.7.1"
    reason = ("The message references too many earlier messages to tell whether it answers an internal note: "
              "send it with a shorter References header, or to the record's note address")


class RecordNotFound(Refusal):
    smtp_code, enhanced_code = 550, "5.1.1"
    reason = "The record of this address does not exist"
    template = "notice/access_denied.txt.j2"


class ModelUnavailable(Refusal):
    # The address names a record of a model this Odoo no longer has (its module uninstalled: Odoo
    # answers every call on it "Object x doesn't exist"). No retry heals it: the address itself can
    # no longer be delivered to, which is X.1.1, "bad destination mailbox address" (RFC 3463), as for
    # a record that does not exist. Found by the lifecycle review: odoo-rules said "no access" and the
    # other policies deferred it as "Odoo is unavailable" until the sender's MTA gave up, days later.
    smtp_code, enhanced_code = 550, "5.1.1"
    reason = "This kind of record is no longer available in Odoo"
    template = "notice/access_denied.txt.j2"


class RecordArchived(Refusal):
    # The record exists but is archived (active = False): said as such, not as "does not exist" or
    # "no access" (found by a review). X.2.1 is "mailbox disabled, not accepting messages" (RFC 3463).
    # Said only for a record address: its token proves the sender was given it; a plain note@ /
    # reply@ says NoRecordReferenced (pipeline.said_refusal).
    smtp_code, enhanced_code = 550, "5.2.1"
    reason = "The record of this address is archived"
    template = "notice/record_archived.txt.j2"


class RecordAccessDenied(Refusal):
    smtp_code, enhanced_code = 550, "5.7.1"
    reason = "Sender has no access to this record"
    template = "notice/access_denied.txt.j2"


class AccessRuleUnsupported(Refusal):
    # Fail closed (issue 7): a record rule the gateway cannot evaluate faithfully decides nothing,
    # so the message is refused and the log and the journal name the rule for the admin (``internal``,
    # never in the reply).
    smtp_code, enhanced_code = 550, "5.7.1"
    reason = "Sender's access to this record cannot be decided, a record rule is not supported"
    template = "notice/access_denied.txt.j2"


class RecordOfOtherCompany(Refusal):
    smtp_code, enhanced_code = 550, "5.7.1"
    reason = "The record belongs to a company this address does not serve"
    template = "notice/other_company.txt.j2"


class AddressExpired(Refusal):
    smtp_code, enhanced_code = 550, "5.1.1"
    reason = "This gateway address has expired, ask for a new one"
    template = "notice/bad_address.txt.j2"


class PlainAddressNotAccepted(Refusal):
    # require_dated_addresses: a plain note@ / reply@ carries no issue date, so it is undated too
    # and would let any message with the right References past the domain's address expiry.
    smtp_code, enhanced_code = 550, "5.1.1"
    reason = "This alias domain accepts only dated record addresses"
    template = "notice/bad_address.txt.j2"


class AddressNotForSender(Refusal):
    smtp_code, enhanced_code = 550, "5.7.1"
    reason = "This gateway address was issued to another person"
    template = "notice/address_not_for_sender.txt.j2"


class NoRecordReferenced(Refusal):
    smtp_code, enhanced_code = 550, "5.1.1"
    reason = ("No record found for this message: reply to an Odoo notification, "
              "or write to the record's own note+ or reply+ address")
    template = "notice/no_record_referenced.txt.j2"


class ReferencesNotSigned(NoRecordReferenced):
    # A plain address, and the In-Reply-To and References that would name the record are left out
    # of the DKIM signature (routing.resolve): the sender's mail provider does not sign them, and a
    # reply to the notification would fail the same way, so the notice says to use the record's own
    # address. The SMTP reply is NoRecordReferenced's, the detail naming the headers.
    template = "notice/references_not_signed.txt.j2"


class ReplyMisattributed(Refusal):
    # Odoo's mail gateway filed a reply+ under another partner than the sender's, although the
    # gateway had checked that only the sender's partner has the From's address (gateway/post.py
    # mail_gateway_address): one added in between. The reply is in Odoo, once, public, under
    # another name. A 250 would hide that from the sender; a 4xx would be retried only to be found
    # "Already filed"; a 5xx ends the retries and tells the sender that it is filed (not lost). Sent
    # again, the same message is found filed (post.look_up) and answered 250 with its id, which
    # would hide the wrong author again: hence "do not send it again". The log is an ERROR with the
    # message's id, for an administrator to correct its author; the journal row keeps the id.
    smtp_code, enhanced_code = 550, "5.7.0"
    reason = ("Your reply was filed, but Odoo shows it under another contact's name; do not send it again, "
              "an administrator must correct its author")



# --- Faults on our side or Odoo's: always transient ---------------------------------------------


class OdooUnavailable(Refusal):
    smtp_code, enhanced_code = 451, "4.3.0"
    reason = "Odoo is unavailable, try again later"

    def __init__(self, detail: str | None = None, *, unsettled: bool = False, explanation: str | None = None,
                 fix: str | None = None, odoo_error: str | None = None, odoo_message: str | None = None,
                 call: str | None = None) -> None:
        super().__init__(detail)
        # The exception Odoo answered with (``odoo.exceptions.AccessError``...), when it answered one,
        # its message, and the call it answered (``sale.order.message_post``).
        self.odoo_error = odoo_error
        self.odoo_message = odoo_message
        self.call = call
        # The request went out and Odoo may still be running it: a timeout or a connection lost
        # while waiting for the answer, a proxy's 502 or 504 (gateway/odoo.py). A request that never
        # went out whole, or that Odoo answered (an RPC error, a 500, garbage), is settled.
        self.unsettled = unsettled
        # What the admin reads (the log, check-config, doctor, address --for): the URL, database,
        # login and Odoo's own words, which the reply to a sender leaves out, and what to check.
        self.explanation = explanation or self.text
        self.fix = fix

    @property
    def access_denied(self) -> bool:
        """Odoo answered with an AccessError: the gateway's Odoo user lacks a right (not an outage)."""
        return self.odoo_error == "odoo.exceptions.AccessError"


class OdooRequestTooLarge(OdooUnavailable):
    # The web server in front of Odoo refused the post as too large (HTTP 413): nginx's
    # client_max_body_size is 1 MB by default, and a note with a 300 KiB photo was a 1.25 MB request
    # (found by a review of Odoo-side faults, where it read "Odoo is unavailable" for days). Nothing
    # reached Odoo. Every retry meets the same limit until an administrator raises it, but then the
    # message is filed: a 451 keeps it in the sender's queue meanwhile (a 5xx would lose it for a
    # setting), with a reason that names the limit rather than an outage; the log is an ERROR.
    reason = "The web server in front of Odoo refused this message as too large, an administrator must raise its limit"


class RoutedRecordUnavailable(Refusal):
    # What a plain note@ / reply@ is answered when its record is hidden from the gateway's own Odoo
    # user (RecordHiddenFromGateway, logged at ERROR for the operator): still a 451, so that the
    # message waits in the sender's queue until the administrator gives that user access rather
    # than being lost for a misconfiguration; but it names neither the record nor why, since
    # nothing proves the sender was given that record (pipeline.said_refusal).
    smtp_code, enhanced_code = 451, "4.3.0"
    reason = "The message cannot be filed right now, try again later"


class RecordHiddenFromGateway(Refusal):
    # The record exists, but the gateway's own Odoo user cannot see it (a record rule hides it: a
    # "Sales / User: Own Documents Only" integration user, found by an operator review). Only an
    # admin can heal it, by giving that user read access; the mail waits in the sender's queue
    # meanwhile rather than being refused as if the record did not exist.
    smtp_code, enhanced_code = 451, "4.3.0"
    reason = "The gateway's Odoo user cannot see this record, an administrator must give it read access"


class GatewayMayNotPost(Refusal):
    # Odoo answered the post (message_post, or the mail gateway's message_process) with an
    # AccessError: the gateway's own Odoo user may read the record but not post on it, as a
    # "Project / Administrator" on sale.order, which Odoo lets post only with write access (found by
    # an operator review, where it was "Odoo is unavailable"). Odoo posted nothing. Only an admin can
    # heal it; the mail waits in the sender's queue meanwhile, and the log says which right is missing.
    smtp_code, enhanced_code = 451, "4.3.0"
    reason = "The gateway's Odoo user may not post on this record, an administrator must correct it"


class OdooCredentialsRefused(OdooUnavailable):
    # Odoo answered and refused the gateway's login or API key: a configuration problem, not an
    # outage (found by an operator review). Still a 451, as docs/reliability.md promises for every
    # Odoo fault: the mail waits in the sending MTA's queue and is filed once the admin fixes the key.
    pass


class PostUnsettled(Refusal):
    # A post of this message timed out or lost its answer a short while ago, and Odoo does not have
    # it (yet): Odoo may still be running that request (up to its limit_time_real). Posting again now
    # could file it twice; after odoo.unsettled_post_seconds the gateway posts again.
    smtp_code, enhanced_code = 451, "4.3.0"
    reason = "An earlier delivery of this message may still be being filed by Odoo, try again later"


class MessageInProgress(Refusal):
    smtp_code, enhanced_code = 451, "4.3.0"
    reason = "The same message is being filed right now, try again later"


class JournalNotWritable(Refusal):
    # Nothing is posted that the journal cannot record: a note in Odoo that the journal does not
    # know of cannot be traced, and a full disk heals (issue 4).
    smtp_code, enhanced_code = 451, "4.3.0"
    reason = "The gateway's journal cannot be written, try again later"


class TemplateLosesBody(Refusal):
    # The note or reply template rendered this message without its text (a branch that leaves out
    # {{ body }}, a filter that changes it). Filing it would lose the text with a 250; refusing it
    # would bounce a message for a fault of the gateway's own configuration. It waits in the
    # sender's queue instead, and the log names the template, until an administrator corrects it
    # and reloads (check-config and every start and reload refuse a template that never shows it).
    smtp_code, enhanced_code = 451, "4.3.0"
    reason = "The gateway's template would file this message without its text, an administrator must correct it"


class MessageTookTooLong(Refusal):
    # The message's deadline (listener.message_deadline) passed in a stage that does not wait on
    # Odoo (parsing, trimming and sanitizing the text, the journal...), or the pipeline gave no
    # outcome at all by then: the detail names the stage. Said as such, not as "Odoo is
    # unavailable", which sent admins looking at the wrong server (found by a security review,
    # where a CPU-heavy text was answered so). A retry can heal it (a loaded machine, a fixed gateway).
    smtp_code, enhanced_code = 451, "4.3.0"
    reason = "The message took too long to process, try again later"


class InternalError(Refusal):
    smtp_code, enhanced_code = 451, "4.3.0"
    reason = "Internal error, try again later"


def all_refusal_classes() -> list[type[Refusal]]:
    """Every concrete refusal, for the test that checks codes and templates."""
    found: list[type[Refusal]] = []
    pending = [Refusal]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            found.append(sub)
            pending.append(sub)
    return found
