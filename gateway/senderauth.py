"""Authenticate the From address: a DKIM signature that verifies, signs From and has d= of its domain."""

from __future__ import annotations

import base64
import binascii
import email.errors
import email.message
import email.parser
import email.policy
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from gateway import dkimcrypto, idn
from gateway.observe import duration, printable
from gateway.config import DEFAULT_MAX_SIGNATURE_AGE_DAYS
from gateway.context import VerifiedSender
from gateway.resolver import CACHED_KEY_NOTE, CACHED_MISS_NOTE, KeyRecords
from gateway.refusals import (DnsTemporaryFailure, FromAddressInternationalised, FromHeaderInvalid, HeaderNotSigned,
                              SenderAuthenticationTimedOut, SenderNotAuthenticated, SignatureDatedAhead,
                              TooManySignatures)

log = logging.getLogger(__name__)

dkimcrypto.install()  # OpenSSL checks the RSA signatures dkimpy verifies (issue 6)

# dkimpy's dnsfunc: (name: bytes, timeout=...) -> the TXT record, or None when there is none.
KeyLookup = Callable[..., bytes | None]

# RFC 8301 section 3.2: verifiers must not consider signatures with keys under 1024 bits valid.
MINIMUM_KEY_BITS = 1024
# RFC 8301 section 3.1 forbids rsa-sha1; ed25519-sha256 is RFC 8463.
ACCEPTED_ALGORITHMS = (b"rsa-sha256", b"ed25519-sha256")
# A signer's clock may run a little ahead of ours; more than this and t= is not believable
# (RFC 6376 section 3.5 lets a verifier ignore signatures dated in the future).
ALLOWED_CLOCK_SKEW_SECONDS = 15 * 60
# dkimpy's own bound on t=: dkim.validate_signature_fields raises "t= value is in the future" for
# a t= more than 36000 s (10 hours) past time.time(), before any signature is verified. It reads
# the clock itself and takes no parameter for it, so the gateway cannot lift it through dkimpy's API.
DKIMPY_FUTURE_SLOP_SECONDS = 36000
# A signature that verifies but is dated further ahead than ALLOWED_CLOCK_SKEW_SECONDS is deferred
# (451 SignatureDatedAhead): the gateway's clock may be the one that is wrong, and the retry passes
# once the clocks agree. Up to this far ahead only, a t= further ahead is refused (550). The bound
# is just under dkimpy's 10 hours (10 minutes under, in case the clock steps back while the message
# is checked): a signature dkimpy would refuse can never verify, so it could never be deferred. It
# was 5 days (about as long as a sender's MTA retries), but dkimpy refused everything past 10 hours
# with "550 5.7.1 ... t= value is in the future" before the gateway's own check (behaviour review:
# 11 and 48 hours ahead bounced although the docs promised 451).
MAX_DEFERRED_AHEAD_SECONDS = DKIMPY_FUTURE_SLOP_SECONDS - 10 * 60
# Used when the resolver does not say its own lifetime: dkimpy's default.
DEFAULT_DNS_TIMEOUT = 5.0
# "A Verifier MAY limit the number of signatures it tries, in order to avoid denial-of-service
# attacks" (RFC 6376 section 6.1). Each signature examined costs a key lookup, whose timeout is
# not cached (a domain whose DNS never answers costs the resolver's whole lifetime every time),
# and a hash of the whole body: a message carrying hundreds of aligned signatures held a worker
# thread for over an hour, or hashed a 5 MB body a hundred times (found by a security review).
# A message that went through a few forwarders and lists carries a handful of signatures; one with
# more than MAX_SIGNATURES is refused outright. Of the signatures aligned with the From domain
# (the only ones that can authenticate it, the others are never looked up), at most
# MAX_SIGNATURES_EXAMINED have their key looked up and their hashes checked, topmost first.
MAX_SIGNATURES = 20
MAX_SIGNATURES_EXAMINED = 5
# The lifetime of a key lookup once the message's deadline is near: a cached key still answers.
_SHORTEST_LOOKUP = 0.05

# How telling a failure is, when every signature failed and only one reason fits in the reply.
# A signature of the From domain says more than a third party's (a list, a provider), and the
# further it got, the more its failure says about this message.
_MALFORMED, _UNALIGNED, _POLICY, _KEY, _VERIFICATION = range(5)


@dataclass(frozen=True)
class _Failure:
    relevance: int
    detail: str
    # For the operator only (Refusal.internal), never the reply.
    internal: str | None = None


class _SignatureRefused(Exception):
    def __init__(self, relevance: int, detail: str, internal: str | None = None) -> None:
        super().__init__(detail)
        self.failure = _Failure(relevance, detail, internal)


class _SignatureAhead(Exception):
    """A signature that verified, dated further ahead of the gateway's clock than the skew allows."""

    def __init__(self, signed_at: int, now: float) -> None:
        ahead = signed_at - now
        super().__init__(f"its t= is {_when(signed_at)}, {duration(ahead)} ahead of the gateway's clock "
                         f"({_when(int(now))}), which allows {duration(ALLOWED_CLOCK_SKEW_SECONDS)}; "
                         "a retry passes once the clocks agree")


class _NotExamined(Exception):
    """An aligned signature left out: over MAX_SIGNATURES_EXAMINED, or its key already failed."""


class _Examination:
    """What the loop over one message's signatures has spent: the signatures verified, the keys
    that failed, the deadline."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.examined = 0
        self.left_out = 0
        self._current: tuple[str, str] | None = None
        self._failed_keys: set[tuple[str, str]] = set()
        self._dns_failure: DnsTemporaryFailure | None = None

    def admit(self, domain: str, selector: str) -> None:
        """Before an aligned signature's key is looked up: raise _NotExamined to skip it, or
        SenderAuthenticationTimedOut once the deadline has passed."""
        if (domain, selector) in self._failed_keys:
            # The same key gives the same answer: a lookup that timed out would time out again,
            # and a missing or refused key is as missing the second time. Its failure is already
            # counted; a key that was found and usable is tried again (another signature of it
            # may pass where this one did not).
            raise _NotExamined()
        if self.examined >= MAX_SIGNATURES_EXAMINED:
            self.left_out += 1
            raise _NotExamined()
        if self.out_of_time():
            raise self.timed_out()
        self.examined += 1
        self._current = (domain, selector)

    def key_failed(self, dns_failure: DnsTemporaryFailure | None = None) -> None:
        """The key of the signature last admitted failed (DNS, missing, refused): skip its pair from now."""
        if self._current is not None:
            self._failed_keys.add(self._current)
        self._dns_failure = dns_failure or self._dns_failure

    def lookup_timeout(self, timeout: float) -> float:
        """A key lookup's lifetime: dkimpy's ``timeout``, but never past the deadline."""
        if self.deadline is None:
            return timeout
        return min(timeout, max(self.deadline - time.monotonic(), _SHORTEST_LOOKUP))

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def timed_out(self) -> SenderAuthenticationTimedOut:
        detail = f"the message's deadline passed with {self.examined} of its DKIM signatures examined"
        internal = None
        if self._dns_failure is not None:
            detail += f", the last DNS failure: {self._dns_failure.detail}"
            internal = self._dns_failure.internal
        return SenderAuthenticationTimedOut(detail, internal=internal)

    def not_examined(self) -> str:
        """What a refusal adds when aligned signatures were left out by the cap."""
        if not self.left_out:
            return ""
        return (f" ({self.left_out} more aligned signatures not examined, "
                f"the gateway examines at most {MAX_SIGNATURES_EXAMINED})")


def authenticate(raw: bytes, resolver: KeyLookup, *, now: float | None = None,
                 max_signature_age_days: int = DEFAULT_MAX_SIGNATURE_AGE_DAYS,
                 require_signature_time: bool = False,
                 email_message: email.message.Message | None = None,
                 deadline: float | None = None) -> VerifiedSender:
    """Return the From address vouched for by an aligned, valid DKIM signature, or refuse.

    Blocking (DNS, and a few milliseconds of RSA): call it from a worker thread. ``resolver`` is
    dkimpy's ``dnsfunc``: ``resolver(name, timeout=...)`` returns the key record or None, and
    raises ``DnsTemporaryFailure`` when the lookup may succeed later.

    Raises ``FromHeaderInvalid`` unless there is exactly one From header with one mailbox,
    ``TooManySignatures`` over MAX_SIGNATURES signatures, ``SenderAuthenticationTimedOut`` when
    ``deadline`` (a time.monotonic() value) passes before a signature passed,
    ``DnsTemporaryFailure`` when no signature passed and the key of an aligned one could not be
    looked up for now, and ``SenderNotAuthenticated`` otherwise, with the reason of the most
    telling failed signature.

    At most MAX_SIGNATURES_EXAMINED aligned signatures are verified, and none once ``deadline``
    has passed; each key lookup ends by the deadline.

    Authentication-Results and ARC headers in the message are never read: anyone upstream can
    write them, and trusting one needs a configured authserv-id or sealer (RFC 8601 section 5,
    RFC 8617), which the rules files do not offer yet.

    ``max_signature_age_days`` refuses a signature whose t= is older (0: no bound beyond x=);
    ``require_signature_time`` refuses one without t=, whose age cannot be known.

    ``email_message`` is ``raw`` already parsed by the email package (compat32); without it, the
    header is parsed here to count its From fields.
    """
    now = time.time() if now is None else now
    from_address = read_from_address(raw, email_message)
    # Not needed any more: not kept alive through the DNS lookups below.
    email_message = None
    from_domain = idn.ascii_domain(from_address.rpartition("@")[2])
    # dkimpy splits the header when a verifier is built; the first one built also gives the
    # signatures to look at and serves the first signature verified, so the header is split once
    # rather than twice (issue 6, found by profiling). Each further signature gets a verifier of
    # its own, as dkimpy keeps the state of its last verify on it.
    unused = [_verifier(raw, resolver)]
    # The header fields as dkimpy split them: the ones its signatures are checked against.
    header_fields = unused[0].headers

    def verifier() -> dkim.DKIM:
        return unused.pop() if unused else _verifier(raw, resolver)

    signatures = _signature_headers(unused[0])
    if not signatures:
        raise SenderNotAuthenticated("no DKIM signature")
    if len(signatures) > MAX_SIGNATURES:
        raise TooManySignatures(f"the message has {len(signatures)}, the gateway examines at most {MAX_SIGNATURES}")

    failures: list[_Failure] = []
    dns_failure: DnsTemporaryFailure | None = None
    # A signature that verified but is dated ahead of the clock: never the one that authenticates.
    dated_ahead: _SignatureAhead | None = None
    examination = _Examination(deadline)
    # Every signature is looked at, not only the topmost one: a forwarder or list may add one
    # that fails above the author's good one (RFC 6376 section 6.1).
    for index, header_value in enumerate(signatures):
        try:
            domain, selector, signed_list = _check_signature(
                verifier, index, header_value, from_domain, resolver, now, max_signature_age_days,
                require_signature_time, examination)
        except _NotExamined:
            continue
        except _SignatureAhead as ahead:
            dated_ahead = dated_ahead or ahead
            continue
        except _SignatureRefused as refused:
            failures.append(refused.failure)
            if refused.failure.relevance == _KEY:
                examination.key_failed()
            continue
        except DnsTemporaryFailure as error:
            log.info("DKIM signature %d of %s: %s", index, printable(from_address), printable(error.operator_text))
            dns_failure = dns_failure or error
            examination.key_failed(error)
            continue
        named = signed_names(signed_list)
        return VerifiedSender(email=from_address, dkim_domain=domain, selector=selector,
                              unsigned_headers=check_signed_copies(header_fields, named),
                              signed_headers=frozenset(name for name in USED_HEADERS if named[name]))

    if dated_ahead is not None:
        # A good signature of the From domain, only early: deferred, so that the sending MTA
        # retries once the clocks agree; never filed now, never refused for good.
        raise SignatureDatedAhead(str(dated_ahead) + examination.not_examined())
    if dns_failure is not None:
        if examination.out_of_time():
            # The lookup the deadline cut short was the last one: say what took the time.
            raise examination.timed_out()
        # A signature that might pass once DNS answers decides nothing yet: defer, so the
        # sending MTA retries (RFC 6376 section 6.1.2, TEMPFAIL).
        raise DnsTemporaryFailure(dns_failure.detail + examination.not_examined(), internal=dns_failure.internal,
                                  causes=dns_failure.causes)
    most_telling = max(failures, key=lambda failure: failure.relevance)
    raise SenderNotAuthenticated(most_telling.detail + examination.not_examined(), internal=most_telling.internal)


# --- From -----------------------------------------------------------------------------------------


def read_from_address(raw: bytes, email_message: email.message.Message | None = None) -> str:
    """The one mailbox of the one From header, lowercased; FromHeaderInvalid otherwise.

    ``email_message`` is ``raw`` already parsed (compat32): the email package ends the header at
    the same first empty line whether it parses the whole message or the header block alone, so
    its From fields are counted instead of parsing the header again.
    """
    header_block = _header_block(raw)
    # Fields are found on the raw lines so that one in the obsolete syntax, which dkimpy and
    # the email package both skip, still counts: a message with two From fields has no single
    # author to authenticate (RFC 5322 section 3.6 allows exactly one).
    values = [value for name, value in _header_fields(header_block) if name.strip().lower() == b"from"]
    # The email package must see the same single field, or a reader built on it (mail-parser,
    # Odoo) could be shown an author other than the one checked here.
    parsed = email_message if email_message is not None else email.parser.BytesHeaderParser(
        policy=email.policy.compat32).parsebytes(b"\r\n".join(header_block) + b"\r\n\r\n")
    seen_by_email_package = len(parsed.get_all("From") or [])
    if not values and not seen_by_email_package:
        raise FromHeaderInvalid("no From header")
    if len(values) == 1 and seen_by_email_package != 1:
        # "From :" (obs-from) alone, or a From below a line that ends the header for the email
        # package: the one author checked here is not one such a reader shows.
        raise FromHeaderInvalid(f"1 From header, but {seen_by_email_package} as the email package reads the header")
    if len(values) != 1:
        raise FromHeaderInvalid(f"{max(len(values), seen_by_email_package)} From headers")
    return _parse_mailbox(values[0])


_EMPTY_LINE = re.compile(rb"\r?\n\r?\n")
# The header registry builds a new class on every lookup; building it once spares that cost on
# every message (issue 6, found by profiling).
_FROM_HEADER = email.policy.default.header_factory["From"]
_HARMLESS_DEFECTS = (email.errors.ObsoleteHeaderDefect, email.errors.UndecodableBytesDefect, email.errors.CharsetError,
                     email.errors.InvalidBase64CharactersDefect, email.errors.InvalidBase64PaddingDefect,
                     email.errors.InvalidBase64LengthDefect)


def _header_block(raw: bytes) -> list[bytes]:
    # Lines end with CRLF or, as dkimpy also accepts, a bare LF; the header ends at the first
    # empty line (RFC 5322 section 2.1).
    # Only the header is split into lines: splitting a whole 1 MB message cost a list of some
    # 15,000 lines per message (issue 6, found by profiling).
    if raw.startswith((b"\r\n", b"\n")):
        return []
    end = _EMPTY_LINE.search(raw)
    lines: list[bytes] = []
    for line in re.split(rb"\r?\n", raw[:end.start()] if end else raw):
        if not line:
            break
        lines.append(line)
    return lines


def _header_fields(header_block: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(name, unfolded value) of every line with a colon; continuation lines join the field above."""
    fields: list[tuple[bytes, bytes]] = []
    for line in header_block:
        if line[:1] in (b" ", b"\t"):
            if fields:
                # Unfolding removes the line break and keeps the white space (RFC 5322 2.2.3).
                fields[-1] = (fields[-1][0], fields[-1][1] + line)
            continue
        name, colon, value = line.partition(b":")
        if colon:
            fields.append((name, value))
    return fields


def _parse_mailbox(value: bytes) -> str:
    try:
        # RFC 6532 section 3.2 allows UTF-8 in header fields; other 8-bit bytes have no meaning.
        text = value.decode("utf-8")
    except UnicodeError:
        raise FromHeaderInvalid("From is not valid UTF-8") from None
    if "\r" in text or "\n" in text:
        raise FromHeaderInvalid("From contains a line break")
    try:
        header = _FROM_HEADER("From", text)
        groups, defects = header.groups, header.defects
    except (email.errors.HeaderParseError, ValueError, IndexError, TypeError, AttributeError) as error:
        # The email package's parser fails on some shapes with an AttributeError of its own tree: a
        # group then a mailbox ("g:; x@example.com": 'Group' object has no attribute 'local_part'), a
        # word ending in a period before the angle address ("Paula www.<p@example.com>": 'str'
        # object has no attribute 'token_type'). Found by a fuzzing review: a 451 on every retry.
        raise FromHeaderInvalid(f"From cannot be parsed: {error}") from None
    # Obsolete syntax (an unquoted period in a display name) is common and harmless, and so is an
    # encoded word its charset does not decode (Foxmail's gb2312-labelled GBK names, windows-874,
    # which Python does not know, were refused; found by a review): in the address any encoded
    # word is refused below. Anything else means the parser had to guess which part is
    # the address.
    serious = [defect for defect in defects if not isinstance(defect, _HARMLESS_DEFECTS)]
    if any(isinstance(defect, email.errors.NonASCIILocalPartDefect) for defect in serious):
        raise FromAddressInternationalised("the From address has a non-ASCII local part")
    if serious:
        raise FromHeaderInvalid(f"From is malformed: {serious[0]}")
    if _encoded_word_in_address(header._parse_tree):
        # RFC 2047 section 5: never in an addr-spec. The email package decodes it all the same, so
        # "=?utf-8?q?ceo?= @example.com" read as ceo@example.com: a signer that checks the From's
        # mailbox as written would have let through a name it never allowed (found by a review).
        raise FromHeaderInvalid("From address contains an encoded word (RFC 2047 allows them only in the name)")
    mailboxes = [address for group in groups for address in group.addresses]
    if len(mailboxes) != 1:
        raise FromHeaderInvalid(f"From has {len(mailboxes)} mailboxes")
    if any(group.display_name is not None for group in groups):
        # Before or after the mailbox ("portal.contrib@example.com, g:;"): RFC 5322 section 3.6.2
        # allows mailboxes only in From.
        raise FromHeaderInvalid("From uses group syntax")
    mailbox = mailboxes[0]
    address = mailbox.addr_spec
    if not mailbox.username or not mailbox.domain or "@" not in address:
        raise FromHeaderInvalid("From address has no domain")
    if any((character.isspace() and character != " ") or ord(character) < 32 or ord(character) == 127
           for character in address):
        raise FromHeaderInvalid("From address contains control characters")
    return address.lower()


def _encoded_word_in_address(token: object, inside: bool = False) -> bool:
    """Whether an encoded word stands in an addr-spec of the email package's parse tree."""
    kind = getattr(token, "token_type", None)
    if inside and kind == "encoded-word":
        return True
    if not isinstance(token, list):
        return False
    inside = inside or kind == "addr-spec"
    return any(_encoded_word_in_address(child, inside) for child in token)


# --- What the signature covers --------------------------------------------------------------------

# The header fields the gateway reads to build, address or route a note: From (read_from_address),
# Subject, Date, Message-ID, To, Cc, In-Reply-To and References (message.parse, recipients,
# routing), and the top-level MIME fields that decide what the body is (mime.walk).
USED_HEADERS = ("from", "subject", "date", "message-id", "to", "cc", "in-reply-to", "references",
                "mime-version", "content-type", "content-transfer-encoding", "content-disposition")
_DISPLAY_NAMES = {"message-id": "Message-ID", "mime-version": "MIME-Version", "cc": "Cc"}


def signed_names(signed_list: bytes) -> Counter[str]:
    """How many times the h= of a verified DKIM-Signature (its value as _check_signature parsed it)
    names each header, by lowercase name."""
    # As dkimpy splits h=: names around colons, compared in lowercase.
    return Counter(name.strip().lower().decode("ascii", "replace") for name in signed_list.split(b":"))


def check_signed_copies(header_fields: list, named: Counter[str]) -> frozenset[str]:
    """Refuse a copy of a used header that the passing signature does not cover; return the used
    headers it leaves out of h= altogether.

    dkimpy hashes, for each time h= names a header, the next copy of it from the bottom (RFC 6376
    section 5.4.2), while the email package and mail-parser read the topmost copy: a header added
    above a signed one passes the signature and is the one the gateway reads (found by a security
    review: a Content-Type prepended to a signed reply filed only the quoted text, an In-Reply-To
    chose the record of a plain note@, a Cc had Odoo email internal users). So every copy must be
    covered: no more copies than h= names (naming it more often, oversigning, is what keeps such
    copies out, and passes). A header h= does not name at all is the signer's choice and is not
    refused: Gmail leaves Content-Type out, Microsoft 365 To, Cc, In-Reply-To and References. The
    callers use those only where they cannot widen who sees the note (VerifiedSender.unsigned_headers).

    ``header_fields`` is dkimpy's split of the header, ``named`` the names in h= of the
    DKIM-Signature that verified (signed_names): counting them costs no second parse and no
    second verify.
    """
    present = Counter(name.strip().lower().decode("ascii", "replace") for name, _ in header_fields)
    unsigned = []
    for name in USED_HEADERS:
        copies = present.get(name, 0)
        covered = named.get(name, 0)
        if copies == 0:
            continue
        if covered == 0:
            unsigned.append(name)
        elif copies > covered:
            display = _DISPLAY_NAMES.get(name, name.title())
            raise HeaderNotSigned(f"the {display} header was added after the DKIM signature (not covered by it)")
    return frozenset(unsigned)


# --- One signature --------------------------------------------------------------------------------


def _verifier(raw: bytes, resolver: KeyLookup) -> dkim.DKIM:
    try:
        return dkim.DKIM(raw, minkey=MINIMUM_KEY_BITS, timeout=getattr(resolver, "timeout", DEFAULT_DNS_TIMEOUT))
    except dkim.MessageFormatError as error:
        # Raised by the dkim.rfc822_parse that building a verifier runs on the message.
        raise SenderNotAuthenticated(f"the header cannot be read for DKIM: {error}") from None
    except IndexError:
        # The only other exception rfc822_parse raises (dkimpy 1.1.8): a continuation line before
        # any header field, which it appends to a field that is not there. The input-limits stage
        # refuses such a header before this runs; this keeps authenticate's own promise of a
        # refusal, never an internal error, for a message that fails the same way on every retry.
        raise SenderNotAuthenticated(
            "the header cannot be read for DKIM: a continuation line comes before any header field") from None


def _signature_headers(verifier: dkim.DKIM) -> list[bytes]:
    # The same list, in the same order, that dkimpy indexes with verify(idx=...).
    return [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]


def _check_signature(new_verifier: Callable[[], dkim.DKIM], index: int, header_value: bytes,
                     from_domain: str, resolver: KeyLookup, now: float, max_age_days: int,
                     require_time: bool, examination: _Examination) -> tuple[str, str, bytes]:
    """Return (d=, s=, h=) when signature ``index`` authenticates the From domain; raise otherwise."""
    try:
        tags = parse_tag_value(header_value)
    except InvalidTagValueList as error:
        raise _SignatureRefused(_MALFORMED, f"malformed DKIM signature: {error}") from None
    try:
        domain = idn.ascii_domain(tags[b"d"])
        selector = tags[b"s"].decode("ascii").strip()
    except KeyError as error:
        missing = error.args[0].decode()
        raise _SignatureRefused(_MALFORMED, f"DKIM signature without {missing}=") from None
    except UnicodeError:
        raise _SignatureRefused(_MALFORMED, "DKIM signature with non-ASCII s= or d=") from None

    # Strict alignment (RFC 7489 section 3.1.1): only the From domain itself vouches for From.
    # Checked first, so no key is looked up for a signature that could never count.
    if domain != from_domain:
        raise _SignatureRefused(
            _UNALIGNED, f"signature of {domain} does not align with From domain {from_domain}")
    _check_syntax(tags)
    signed_ahead = _check_policy(tags, now, max_age_days, require_time)

    examination.admit(domain, selector)

    key_name = f"{selector}._domainkey.{domain}"
    algorithm = tags[b"a"].strip().lower()
    lookup = _RecordingLookup(resolver, examination,
                              lambda record: _check_key(record, domain, selector, key_name, algorithm,
                                                        tags.get(b"i")))
    # One verification per key record at the name, until one verifies (RFC 6376 section 6.1.2
    # step 3 lets a verifier try several): the usual single record costs one, as before.
    failures: list[_Failure] = []
    verifier = new_verifier()
    while True:
        try:
            verified = _verify(verifier, index, lookup, key_name)
        except _SignatureRefused as refused:
            if not lookup.asked or refused.failure.detail == _BODY_HASH_MISMATCH:
                # Failed before its key was looked up, or on the body: no other record can help.
                raise
            failures.append(refused.failure)
        else:
            if verified:
                if signed_ahead is not None:
                    # Verified, so the sender did sign it: only its date is early. Checked after
                    # the verification, so that a signature that would fail anyway is refused now
                    # (550), not deferred until the clocks agree.
                    raise _SignatureAhead(signed_ahead, now)
                return domain, selector, tags.get(b"h", b"")
            failures.append(_Failure(*_why_not_verified(verifier, lookup, key_name)))
        if not lookup.next_record():
            # Every record failed: if they came from the cache, DNS may have others by now.
            if not lookup.refresh():
                break
            failures = []
        verifier = new_verifier()
    raise _SignatureRefused(*_none_verifies(failures, lookup, key_name, resolver))


# dkimpy's reason (shortened by _validation_detail) when the body is not the one signed.
_BODY_HASH_MISMATCH = "body hash mismatch"


def _verify(verifier: dkim.DKIM, index: int, lookup: _RecordingLookup, key_name: str) -> bool:
    """dkimpy's verify of signature ``index`` against the record ``lookup`` gives it; its
    exceptions as _SignatureRefused."""
    try:
        return verifier.verify(idx=index, dnsfunc=lookup)
    except dkim.KeyFormatError as error:
        # Raised by dkimpy only after the signature checked out with a key under minkey.
        raise _SignatureRefused(_KEY, _key_size_detail(verifier, key_name) or str(error)) from None
    except dkim.NaClNotFoundError:
        raise _SignatureRefused(_KEY, "ed25519-sha256 needs PyNaCl, which is not installed") from None
    except dkim.ValidationError as error:
        raise _SignatureRefused(_VERIFICATION, _validation_detail(error)) from None
    except dkim.DKIMException as error:
        raise _SignatureRefused(_VERIFICATION, f"malformed DKIM signature: {error}") from None
    except (IndexError, ValueError) as error:
        # What dkimpy 1.1.8 raises, instead of a DKIMException, on tag values it uses without
        # checking them (binascii.Error is a ValueError); _check_syntax refuses the ones known.
        # Raised by the key lookup instead, it is no fault of the signature: it goes on up.
        if lookup.failed:
            raise
        raise _SignatureRefused(
            _MALFORMED, f"malformed DKIM signature: {type(error).__name__}: {error}") from None


def _none_verifies(failures: list[_Failure], lookup: _RecordingLookup, key_name: str,
                   resolver: KeyLookup) -> tuple[int, str, str | None]:
    """(relevance, detail, internal) of a signature that verified with none of the key records."""
    found = lookup.found
    # A key published after an earlier lookup missed it is not seen while the miss is cached.
    cached_miss = (lookup.asked and found is not None and not found.records and not lookup.refreshed
                   and getattr(resolver, "caches", False))
    internal = CACHED_MISS_NOTE if cached_miss else CACHED_KEY_NOTE if lookup.stale else None
    if len(failures) == 1:
        failure = failures[0]
        return failure.relevance, failure.detail, internal or failure.internal
    tried = len(failures)
    # The most telling first; servers shuffle the records, the refusal says the same each time.
    details = list(dict.fromkeys(failure.detail for failure in
                                 sorted(failures, key=lambda failure: (-failure.relevance, failure.detail))))
    detail = f"{found.found if found else tried} key records at {key_name}"
    if found is not None and found.found > tried:
        detail += f", the gateway tries {tried}"
    detail += ", none verifies: " + "; ".join(details)
    internals = list(dict.fromkeys(filter(None, [*(failure.internal for failure in failures), internal])))
    return max(failure.relevance for failure in failures), detail, "; ".join(internals) or None


def _check_syntax(tags: dict[bytes, bytes]) -> None:
    """Tag values dkimpy uses without checking them, and fails on with an IndexError or a
    binascii.Error rather than a DKIMException: a broken signature, which must not stop the loop
    over the signatures below it (issue found by a security review's fuzzer)."""
    identity = tags.get(b"i")
    if identity is not None and b"@" not in identity:
        # RFC 6376 section 3.5: i= is [local-part] "@" domain. dkimpy indexes the byte before
        # d= in it, past its start when i= is d= without the @.
        raise _SignatureRefused(_MALFORMED, "i= is not an identity, it has no @")
    for tag in (b"bh", b"b"):
        value = tags.get(tag)
        if value is None:
            continue
        try:
            # As dkimpy decodes it, once the key is looked up and the body hashed.
            base64.b64decode(re.sub(rb"\s+", b"", value))
        except binascii.Error:
            raise _SignatureRefused(_MALFORMED, f"{tag.decode()}= is not valid base64") from None


def _check_policy(tags: dict[bytes, bytes], now: float, max_age_days: int, require_time: bool) -> int | None:
    """What dkimpy accepts but the gateway must not: checked before any DNS lookup.

    Returns t= when it is further ahead of ``now`` than ALLOWED_CLOCK_SKEW_SECONDS (and within
    MAX_DEFERRED_AHEAD_SECONDS): such a signature, if it verifies, is deferred, not refused.
    """
    algorithm = tags.get(b"a", b"").strip().lower()
    if algorithm == b"rsa-sha1":
        raise _SignatureRefused(_POLICY, "rsa-sha1 is refused (RFC 8301)")
    if algorithm not in ACCEPTED_ALGORITHMS:
        name = algorithm.decode(errors="replace")
        raise _SignatureRefused(_POLICY, f"signature algorithm {name!r} is not supported")
    if b"l" in tags:
        # dkimpy hashes only the first l= bytes of the body, so anything appended after them
        # would pass as signed (RFC 6376 section 8.2).
        raise _SignatureRefused(_POLICY, "signature uses l= (partial body)")
    signed_headers = [name.strip().lower() for name in tags.get(b"h", b"").split(b":")]
    if b"from" not in signed_headers:
        # A verifier must ignore a signature whose h= leaves From out (RFC 6376 section 6.1.1);
        # dkimpy does not.
        raise _SignatureRefused(_POLICY, "From is not signed")
    expires = _tag_time(tags, b"x")
    if expires is not None and now > expires:
        # dkimpy grants 10 hours past x=; the signer asked for no more (RFC 6376 section 3.5).
        raise _SignatureRefused(_POLICY, f"signature expired at {_when(expires)}")
    signed_at = _tag_time(tags, b"t")
    if signed_at is not None and signed_at > now + MAX_DEFERRED_AHEAD_SECONDS:
        raise _SignatureRefused(_POLICY, f"signature is dated in the future ({_when(signed_at)}), more than "
                                         f"{duration(MAX_DEFERRED_AHEAD_SECONDS)} ahead of the gateway's clock")
    if signed_at is None:
        # t= is optional (RFC 6376 section 3.5): without it the age is unknown, and the signature
        # is refused only when the rules ask for t=.
        if require_time:
            raise _SignatureRefused(_POLICY, "signature has no t=, its age cannot be checked")
    elif max_age_days > 0 and now - signed_at > max_age_days * 86400:
        # A replayed message keeps its valid signature; the age of t= bounds how long it can be
        # replayed (RFC 6376 section 8.6).
        raise _SignatureRefused(_POLICY, f"signature is older than {max_age_days} days ({_when(signed_at)})")
    if signed_at is not None and signed_at > now + ALLOWED_CLOCK_SKEW_SECONDS:
        return signed_at
    return None


def _tag_time(tags: dict[bytes, bytes], tag: bytes) -> int | None:
    value = tags.get(tag)
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit():
        raise _SignatureRefused(_MALFORMED, f"{tag.decode()}= is not a number")
    return int(value)


def _when(timestamp: int) -> str:
    try:
        return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return str(timestamp)


def _check_key(record: bytes | None, domain: str, selector: str, key_name: str, algorithm: bytes,
               identity: bytes | None = None) -> None:
    """Tags of the key record that dkimpy ignores or words poorly; checked as the record arrives,
    before dkimpy hashes the body for a signature that could not count anyway."""
    if not record:
        return
    try:
        key_tags = parse_tag_value(record)
    except InvalidTagValueList:
        return  # dkimpy finds the record unusable, and _why_not_verified says so in its words
    if b"p" in key_tags and not re.sub(rb"\s+", b"", key_tags[b"p"]):
        # "An empty value means that this public key has been revoked" (RFC 6376 section 3.6.1);
        # dkimpy said "could not parse RSA public key (b''): Unparsable public key; ...".
        raise _SignatureRefused(_KEY, f"key revoked (empty p=) at {key_name}")
    key_type = key_tags.get(b"k", b"rsa").strip().lower()
    signed_with = algorithm.partition(b"-")[0]
    if key_type in (b"rsa", b"ed25519") and key_type != signed_with:
        # dkimpy checked an rsa-sha256 signature with an ed25519 key and said "malformed DKIM
        # signature: ValueError: The signature must be exactly 64 bytes long" (DNS review).
        # Not _KEY: the key may verify another signature of the message, made with its algorithm.
        raise _SignatureRefused(
            _VERIFICATION, f"the key at {key_name} is of type {key_type.decode()} (k=), which cannot verify the "
                  f"signature's {algorithm.decode()}")
    flags = {flag.strip().lower() for flag in key_tags.get(b"t", b"").split(b":")}
    if b"s" in flags and identity is not None:
        # t=s: "the "i=" domain MUST NOT be a subdomain of "d="" (RFC 6376 section 3.6.1); dkimpy
        # does not check it (DNS review: i=paula@sub.example.com was accepted).
        identity_domain = idn.ascii_domain(identity.rpartition(b"@")[2].decode("utf-8", "replace"))
        if identity_domain != domain:
            # Not _KEY: another signature of the message, its i= in d= itself, may pass with it.
            raise _SignatureRefused(
                _VERIFICATION, f"the DKIM key of {domain}/{selector} has t=s, which allows no subdomain, but the "
                      f"signature's i= is in {identity_domain}")
    if b"y" in flags:
        # "Verifiers MUST NOT treat messages from Signers in testing mode differently from unsigned
        # email, even should the signature fail to verify" (RFC 6376 section 3.6.1). Some domains
        # leave t=y set long after testing: the reason tells their administrator what to change.
        raise _SignatureRefused(_KEY, f"the DKIM key of {domain}/{selector} is in testing mode (t=y): "
                                      f"{domain} must remove y from t= of the TXT record {key_name}")
    acceptable = key_tags.get(b"h")
    if acceptable is not None:
        # "If the h= tag exists in the public-key record and the hash algorithm implied by the a=
        # tag ... is not included in the contents of the h= tag, the Verifier MUST ignore the
        # signature" (RFC 6376 section 6.1.2); unrecognised names in h= are ignored (3.6.1).
        hash_name = algorithm.rpartition(b"-")[2]
        if hash_name not in {name.strip().lower() for name in acceptable.split(b":")}:
            listed = acceptable.decode("ascii", "replace").strip()
            raise _SignatureRefused(
                _KEY, f"the DKIM key of {domain}/{selector} accepts only h={listed}, not the "
                      f"{hash_name.decode()} of {algorithm.decode()}: {domain} must add {hash_name.decode()} "
                      f"to h= of the TXT record {key_name}, or remove h=")


class _RecordingLookup:
    """Passes dkimpy's key lookup to the resolver and remembers the answer, which dkimpy does not report.

    DNS is asked once, for every key record at the name (the resolver's ``key_records``; a plain
    ``dnsfunc`` gives one at most): each lookup of dkimpy gets the current one, the first until
    next_record moves on to another. Each lookup ends by the message's deadline, and the record's
    own tags are checked on arrival (``check_key`` raises _SignatureRefused).
    """

    def __init__(self, resolver: KeyLookup, examination: _Examination,
                 check_key: Callable[[bytes | None], None]) -> None:
        self._resolver = resolver
        self._examination = examination
        self._check_key = check_key
        self.asked = False
        # Whether the resolver raised: its exceptions are never taken for a broken signature.
        self.failed = False
        self.found: KeyRecords | None = None
        self._position = 0
        # What dkimpy asked for, and its timeout: refresh asks again.
        self._name: bytes | None = None
        self._timeout: float = DEFAULT_DNS_TIMEOUT
        # Whether refresh asked DNS again (the records are then fresh ones).
        self.refreshed = False
        self._refreshed = False
        # The records came from the cache, failed, and could not be asked again (refresh).
        self.stale = False

    @property
    def record(self) -> bytes | None:
        """The key record dkimpy is given now."""
        if self.found is None or self._position >= len(self.found.records):
            return None
        return self.found.records[self._position]

    def next_record(self) -> bool:
        """Move on to the next key record at the name; False when there is none left."""
        if self.found is None or self._position + 1 >= len(self.found.records):
            return False
        self._position += 1
        return True

    def refresh(self) -> bool:
        """Once every record failed: when they came from the cache, ask DNS again without it
        (the resolver's ``refreshed``). True when DNS has other records, the first now current."""
        found = self.found
        refreshed = getattr(self._resolver, "refreshed", None)
        if found is None or not found.cached or not found.records or self._refreshed or refreshed is None:
            return False
        self._refreshed = True
        if self._examination.out_of_time():
            self.stale = True
            return False
        try:
            fresh = refreshed(self._name, timeout=self._examination.lookup_timeout(self._timeout))
        except BaseException:
            self.failed = True
            raise
        if fresh is None:
            self.stale = True
            return False
        self.refreshed = True
        if fresh.records == found.records:
            return False
        self.found, self._position = fresh, 0
        return True

    def __call__(self, name: bytes, timeout: int | float = 5) -> bytes | None:
        if self.found is None:
            self._name, self._timeout = name, timeout
            self.asked = True
            try:
                self.found = self._ask(name, self._examination.lookup_timeout(timeout))
            except BaseException:
                self.failed = True
                raise
        record = self.record
        self._check_key(record)
        return record

    def _ask(self, name: bytes, timeout: float) -> KeyRecords:
        key_records = getattr(self._resolver, "key_records", None)
        if key_records is not None:
            return key_records(name, timeout=timeout)
        record = self._resolver(name, timeout=timeout)
        return KeyRecords((record,), 1) if record else KeyRecords()


def _why_not_verified(verifier: dkim.DKIM, lookup: _RecordingLookup, key_name: str) -> tuple[int, str]:
    # dkimpy returns False both for a missing or unusable key and for a bad signature.
    if lookup.asked and not lookup.record:
        return _KEY, f"key not found for {key_name}"
    if lookup.asked:
        try:
            dkim.evaluate_pk(key_name.encode(), lookup.record)
        except dkim.KeyFormatError as error:
            return _KEY, f"key for {key_name} is unusable: {error}"
        except dkim.DKIMException as error:
            return _KEY, f"key for {key_name} is unusable: {error}"
        except binascii.Error:
            # dkimpy's verify turns it into False; evaluate_pk itself lets it out.
            return _KEY, f"key for {key_name} is unusable: p= is not valid base64"
    too_small = _key_size_detail(verifier, key_name)
    if too_small:
        return _KEY, too_small
    return _VERIFICATION, "signature did not verify"


def _key_size_detail(verifier: dkim.DKIM, key_name: str) -> str | None:
    if getattr(verifier, "ktag", None) == b"rsa" and 0 < verifier.keysize < MINIMUM_KEY_BITS:
        return (f"key of {verifier.keysize} bits at {key_name} is too small, "
                f"{MINIMUM_KEY_BITS} is the minimum (RFC 8301)")
    return None


def _validation_detail(error: dkim.ValidationError) -> str:
    text = str(error)
    if text.startswith("body hash mismatch"):
        # The hashes themselves help nobody reading the refusal.
        return _BODY_HASH_MISMATCH
    return text
