"""The SMTP/LMTP listener: resolves recipients at RCPT, hands DATA to the pipeline, turns outcomes into replies."""

from __future__ import annotations

import asyncio
import collections
import copy
import logging
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException

from gateway import address, observe, pipeline, policy, tls
from gateway.context import MessageContext, Target
from gateway.journal import JournalEntry, JournalUnavailable
from gateway.pipeline import Services
from gateway.refusals import (GatewayBusy, InternalError, LineTooLong, MessageTookTooLong, MessageTooLarge,
                              NonAsciiAddressUndeclared, RecipientAddressInvalid, Refusal, SenderAddressInvalid,
                              SessionTooLong, ShuttingDown, TooManyConnectionsFromPeer, TooManyRecipients,
                              TooManySessions)

log = logging.getLogger(__name__)

# A path of the plain shape nearly every MTA sends: <dot-atom@dot-atom> in ASCII, no comment after it.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
_PLAIN_PATH = re.compile(rf"<({_DOT_ATOM})@{_DOT_ATOM}>")
# The commands of a mail transaction, which a relay's session repeats for every message it
# delivers (listener.transaction_call_limit); every other command has listener.command_call_limit.
TRANSACTION_COMMANDS = ("MAIL", "RCPT", "DATA", "RSET", "QUIT")
_SYNTAX_ATTRIBUTES = ("__smtp_syntax__", "__smtp_syntax_extended__", "__smtp_syntax_when__")
# aiosmtpd's own replies when a message passes its data_size_limit (listener.max_message_size): at
# MAIL, for a SIZE= parameter over it, and at the end of DATA, which it reads to the end and
# discards past the limit. Neither names the limit nor carries an enhanced code, and neither
# reaches the handler; the listener puts MessageTooLarge's reply in their place and journals it.
# tests/test_abuse.py fails if an aiosmtpd upgrade changes their text.
_AIOSMTPD_SIZE_DECLARED_TOO_LARGE = "552 Error: message size exceeds fixed maximum message size"
_AIOSMTPD_DATA_TOO_LARGE = "552 Error: Too much mail data"
# aiosmtpd's reply at the end of DATA when a line was over its line_length_limit (RFC 5321 section
# 4.5.3.1.6); the listener puts LineTooLong's in its place and journals it, as for the size.
_AIOSMTPD_LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
LINE_LIMIT = "a line may hold 1000 bytes with its CRLF (RFC 5321 section 4.5.3.1.6)"
# aiosmtpd's reply to a command it has no method for. Before STARTTLS, with
# listener.require_starttls, the listener puts STARTTLS_REQUIRED in its place (Limited.push);
# tests/test_operations.py fails if an aiosmtpd upgrade changes its text.
_AIOSMTPD_UNKNOWN_COMMAND = re.compile(r'500 Error: command "(.*)" not recognized', re.S)
# MAIL's SMTPUTF8 parameter (RFC 6531 section 3.4), among the others after the path.
_SMTPUTF8_PARAMETER = re.compile(r"\sSMTPUTF8(?:\s|$)", re.IGNORECASE)
# RFC 3207 section 4's commands allowed before STARTTLS when it is required, and LMTP's greeting.
ALLOWED_BEFORE_STARTTLS = frozenset({"NOOP", "EHLO", "LHLO", "STARTTLS", "QUIT"})
STARTTLS_REQUIRED = "530 5.7.0 Must issue a STARTTLS command first"
# The gateway has no authentication: EHLO does not offer AUTH, and the command gets 502, RFC 5321
# section 4.2.4's reply for a command the server recognizes but does not implement (500 is for one
# it does not recognize; 503, "bad sequence", would say that AUTH could work at another point).
AUTH_NOT_IMPLEMENTED = "502 5.5.1 AUTH not implemented: the gateway takes mail without authentication"


@dataclass
class _Running:
    """A message whose pipeline has not ended: what a stop needs to wait for it, or to journal it if it gives up."""

    deadline: float
    ctx: MessageContext
    services: Services
    started: float


class GatewayHandler:
    """aiosmtpd hooks: the thin layer between SMTP and the pipeline."""

    def __init__(self, services: Services, executor: ThreadPoolExecutor) -> None:
        self.services = services
        self.executor = executor
        # Messages between the end of DATA and their reply; a graceful stop waits for them.
        self.in_data = 0
        # Pipelines not ended yet (queued or running), which may outlive their reply.
        self.pipelines: dict[asyncio.Future, _Running] = {}

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        """The EHLO (and LHLO) reply without aiosmtpd's AUTH line.

        aiosmtpd offers its built-in "AUTH LOGIN PLAIN" once TLS is active, whatever the server
        does with it; the gateway has no authentication, and answered every AUTH 535, so a relay
        configured with credentials for this next hop tried them, failed, and deferred or bounced
        the mail (found by a review of the SMTP replies). None of aiosmtpd's AUTH options removes
        the line (auth_exclude_mechanism of both mechanisms leaves an empty "250-AUTH "); this hook
        is aiosmtpd's way to edit the reply, and as it is defined it records the client's name itself.
        The AUTH command itself gets AUTH_NOT_IMPLEMENTED (Limited.smtp_AUTH).
        """
        session.host_name = hostname
        return [line for line in responses if line[4:].split()[:1] != ["AUTH"]]

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, rcpt: str,
                          rcpt_options: list[str]) -> str:
        # One DATA gets one reply, so one gateway target per transaction: the sending MTA
        # delivers further recipients in further transactions (MAIL_SECURITY.md item 16).
        if envelope.rcpt_tos:
            return TooManyRecipients().smtp_reply()
        try:
            target = _accepted_target(rcpt, self.services)
        except Refusal as refusal:
            log.info("RCPT %r refused: %s", rcpt, refusal.smtp_reply())
            await self._journal_rcpt_refusal(session, envelope, rcpt, refusal)
            return refusal.smtp_reply()
        envelope.rcpt_tos.append(rcpt)
        envelope.rcpt_options.extend(rcpt_options)
        envelope.gateway_target = target  # type: ignore[attr-defined]
        return "250 2.1.5 OK"

    async def _journal_rcpt_refusal(self, session: Session, envelope: Envelope, rcpt: str, refusal: Refusal) -> None:
        # A refused recipient is bad input too, and admins look for it in the journal when a
        # contributor says "my mail bounced".
        await self.journal_refusal(session, refusal, mail_from=envelope.mail_from or "", rcpt=rcpt)

    async def journal_refusal(self, session: Session, refusal: Refusal, *, mail_from: str, rcpt: str = "",
                              target: Target | None = None, seconds: float | None = None,
                              counted: bool = False) -> None:
        """The journal row of a refusal said in the session itself, outside the pipeline.

        ``counted``: the refusal is of a message (too large, a line too long, no free DATA slot), so
        it is counted in note_gateway_messages_total and has its JSON log line, as the pipeline's
        refusals do;
        ``seconds`` is its time from DATA to the reply, when it reached DATA. Otherwise it is of a
        recipient at RCPT: counted in note_gateway_recipients_refused_total, not as a message, with
        a JSON line of its own event ("refused-recipient"), so that every journal row has its line.

        Never raises: the caller's precise reply must still go out. Besides JournalUnavailable,
        anything the journaling raises (a RuntimeError from the executor shut down at stop) is
        logged; raised out of Limited.push, it skipped the 552 and aiosmtpd's reset of the
        transaction, and out of handle_RCPT it became aiosmtpd's "500 Error: (RuntimeError)"
        (found by a security review).
        """
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        entry = JournalEntry(peer=peer, mail_from=mail_from, rcpt=(target.address if target else rcpt)[:320],
                             verdict=refusal.verdict,
                             refusal_class=refusal.name, smtp_reply=refusal.smtp_reply(), total_seconds=seconds or 0.0)
        services = self.services
        if target is not None:
            entry.kind, entry.model, entry.res_id = target.kind, target.model, target.res_id
        # The alias domain and its Odoo, when the recipient is of one this gateway serves, so that
        # `note-gateway log --domain/--odoo` and the metrics' odoo label find these refusals too.
        domain = target.domain if target is not None else _domain_of(rcpt)
        rules = services.config.domains.get(domain)
        if rules is not None:
            entry.domain, entry.odoo = domain, rules.odoo
        elif target is not None:
            # A domain a reload removed during the session: its Odoo is no longer known.
            entry.domain = domain
        try:
            entry.id = await asyncio.get_running_loop().run_in_executor(
                self.executor, services.held(services.journal.record), entry)
        except JournalUnavailable as error:
            log.error("journal unavailable, %s refusal not recorded: %s | %s", "message" if counted else "RCPT",
                      error, entry.smtp_reply)
        except Exception:
            log.exception("%s refusal not recorded in the journal: %s", "message" if counted else "RCPT",
                          entry.smtp_reply)
        finally:
            if counted:
                observe.message_done(entry, timed=seconds is not None)
            else:
                observe.recipient_refused(entry)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        target: Target = envelope.gateway_target  # type: ignore[attr-defined]
        services = self.services
        if target.domain not in services.config.domains:
            # A reload between this session's RCPT and its DATA removed the alias domain: defer,
            # and the retry is judged at RCPT by the configuration now in force.
            return await self._refuse_data(server, session, envelope, target,
                                           InternalError("the configuration changed during this session"))
        refused = await self._recheck_recipient(server, session, envelope, target, services)
        if refused is not None:
            return refused
        raw = envelope.original_content or b""
        light = services.config.gateway.listener.light_message_size
        if light and len(raw) <= light:
            # Received, and small: its memory no longer needs a DATA slot (listener.light_message_size).
            server.release_data_slot()
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        ctx = MessageContext(raw=raw, mail_from=envelope.mail_from or "", target=target,
                             rules=services.config.domains[target.domain], peer=peer,
                             odoo_identity=services.config.odoo_identity(target.domain))
        budget = services.config.gateway.listener.message_deadline
        deadline = time.monotonic() + budget
        loop = asyncio.get_running_loop()
        self.in_data += 1
        # aiosmtpd's idle timer (session_timeout) runs from the DATA command and would cut a
        # message still being filed; the message's own deadline bounds it here, and the timer
        # starts again once the reply is out of our hands.
        timer = getattr(server, "_timeout_handle", None)
        if timer is not None:
            timer.cancel()
        try:
            return await self._process(ctx, services, target, envelope, budget, deadline, loop)
        finally:
            self.in_data -= 1
            if timer is not None:
                server._reset_timeout()

    async def _recheck_recipient(self, server: SMTP, session: Session, envelope: Envelope, target: Target,
                                 services: Services) -> str | None:
        """The refusal RCPT would give the session's recipient now, or None if it would accept it.

        A reload between RCPT and DATA may have dropped the secret that signed the address (a
        rotation that retires a leaked secret) or tightened the domain's rules: the message is
        judged by the rules in force when it is filed, so the address is verified again here
        against the services DATA uses. Without it, a session that passed RCPT before the reload
        filed its message after it, and an attacker holding a revoked address could keep a session
        open with NOOPs for up to listener.max_session_seconds (found by a review of multi-domain
        setups). The refusal is RCPT's own, 550 5.1.1 for a signature no current secret verifies:
        a retry would be refused at RCPT, so a 4xx would only delay the bounce. About 12 µs a
        message (one HMAC a secret), so it runs whether or not a reload happened.
        """
        try:
            _accepted_target(envelope.rcpt_tos[0], services)
        except Refusal as refusal:
            log.info("DATA to %r refused, its address is no longer accepted: %s", envelope.rcpt_tos[0],
                     refusal.smtp_reply())
            return await self._refuse_data(server, session, envelope, target, refusal)
        return None

    async def _refuse_data(self, server: SMTP, session: Session, envelope: Envelope, target: Target,
                           refusal: Refusal) -> str:
        """Journal and count a refusal said at DATA outside the pipeline; its reply."""
        started = getattr(server, "_data_started", None)
        await self.journal_refusal(session, refusal, mail_from=envelope.mail_from or "", target=target,
                                   seconds=None if started is None else time.monotonic() - started, counted=True)
        return refusal.smtp_reply()

    async def _process(self, ctx: MessageContext, services: Services, target: Target, envelope: Envelope,
                       budget: float, deadline: float, loop: asyncio.AbstractEventLoop) -> str:
        # Held from here (no await since handle_DATA read self.services) until the pipeline ends:
        # services a reload replaced are closed only then (Services.retire).
        future = loop.run_in_executor(self.executor,
                                      services.held(lambda: pipeline.process(ctx, services, deadline=deadline)))
        self.pipelines[future] = _Running(deadline, ctx, services, time.monotonic())
        future.add_done_callback(lambda done: self.pipelines.pop(done, None))
        # A little over the pipeline's own deadline: normally the pipeline answers itself.
        give_up = budget + pipeline.LISTENER_GRACE_SECONDS
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout=give_up)
        except asyncio.TimeoutError:
            # Every Odoo call ends by the deadline: a pipeline still running the grace later is the
            # gateway's own work, named by its stage, not "Odoo is unavailable" (security review).
            refusal = pipeline.took_too_long(ctx, give_up)
            fallback = refusal.smtp_reply()
            with ctx.reply_lock:
                if not ctx.reply_settled:
                    # The pipeline journals this reply when it ends (pipeline.sent_reply), which may
                    # be much later or, for a stage that never ends, at the stop: the message is
                    # counted now, as its reply goes out, and its row is not counted again (found by
                    # a review of what operators can see: a stuck gateway's 451s reached no metric).
                    ctx.listener_reply, ctx.listener_refusal = fallback, refusal
                    ctx.listener_answered_at = time.monotonic()
                    observe.message_answered(refusal.verdict, refusal.name, ctx.rules.odoo,
                                             ctx.listener_answered_at - (deadline - budget))
                    log.warning("%s to %s: no outcome %g s after its data, the pipeline is still running "
                                "(stage %s), answered %r", ctx.message.message_id if ctx.message else "-",
                                target.address, give_up, ctx.running_stage or "-", fallback)
                    return fallback
            # The pipeline settled its reply just now (it is journaling it): that one is sent.
        except Exception:
            log.exception("pipeline crashed on %s", target.address)
            return InternalError().smtp_reply()
        reply = pipeline.smtp_reply(ctx)
        # The Message-ID and the envelope sender are the sender's text: escaped (observe.printable).
        log.info("%s from=%s rcpt=%s verdict=%s reply=%r", observe.printable(ctx.message.message_id) if ctx.message
                 else "-", observe.printable(ctx.sender.email if ctx.sender else envelope.mail_from), target.address,
                 ctx.verdict, reply)
        return reply


def _accepted_target(rcpt: str, services: Services) -> Target:
    """The target of a recipient address as the services in force accept it; raises its Refusal.

    RCPT asks it first, and DATA again (a reload between them may have retired the secret or
    tightened the rules)."""
    target = address.parse_recipient(rcpt, services.config.secrets)
    policy.check_recipient(services.config.domains[target.domain], target)
    return target


def _domain_of(rcpt: str) -> str:
    try:
        return address.split_address(rcpt)[1]
    except Refusal:
        return ""


class _SessionLimit:
    """The sessions of one listener: how many, from which peers, and whether it is stopping."""

    def __init__(self, limit: int, per_peer: int = 0, in_data: int = 0) -> None:
        self.limit = limit
        self.per_peer = per_peer or limit
        # Sessions allowed inside DATA at once (listener.max_messages_in_data): the memory bound.
        self.data_slots = asyncio.Semaphore(in_data or limit)
        self.active = 0
        self.by_peer: collections.Counter[str] = collections.Counter()
        self.sessions: set[SMTP] = set()
        self.stopping = False


def _limited(base: type[SMTP]) -> type[SMTP]:
    class Limited(base):  # type: ignore[valid-type, misc]
        """Caps concurrent sessions, in all and per peer, and how long each lasts.

        aiosmtpd has neither bound (MAIL_SECURITY.md item 15).
        """

        def __init__(self, *args, session_limit: _SessionLimit, max_session_seconds: float,
                     requires_tls: bool = False, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._requires_tls = requires_tls
            self._session_limit = session_limit
            self._max_session_seconds = max_session_seconds
            self._session_ends: float | None = None
            # aiosmtpd looks each command up in this table after its own checks (the call limit
            # among them); QUIT always gets its 221.
            self._smtp_methods = {name: method if name == "QUIT" else self._within_session_time(name, method)
                                  for name, method in self._smtp_methods.items()}

        def _within_session_time(self, name: str, method):
            """``method`` run only while the session is younger than listener.max_session_seconds.

            Checked as a command starts, so a DATA that started in time is received and filed whole.
            With listener.require_starttls, only the commands of ALLOWED_BEFORE_STARTTLS run before TLS.
            """
            async def command(arg: str | None) -> None:
                if self._session_ends is not None and self.loop.time() >= self._session_ends:
                    refusal = SessionTooLong(f"the limit is {self._max_session_seconds:g} s")
                    log.info("session of %s closed: %s", self.session.peer, refusal.smtp_reply())
                    await self.push(refusal.smtp_reply())
                    if self.transport is not None:
                        self.transport.close()
                    return None
                if self._requires_tls and self._tls_protocol is None and name not in ALLOWED_BEFORE_STARTTLS:
                    await self.push(STARTTLS_REQUIRED)
                    return None
                return await method(arg)

            # aiosmtpd's HELP reads the syntax that its @syntax decorator put on the method.
            for attribute in _SYNTAX_ATTRIBUTES:
                if hasattr(method, attribute):
                    setattr(command, attribute, getattr(method, attribute))
            return command

        async def _handle_client(self) -> None:
            limit = self._session_limit
            peer = self.session.peer[0] if isinstance(self.session.peer, tuple) else str(self.session.peer)
            refusal: Refusal | None = None
            if limit.stopping:
                refusal = ShuttingDown()
            elif limit.active >= limit.limit:
                refusal = TooManySessions()
            elif limit.by_peer[peer] >= limit.per_peer:
                refusal = TooManyConnectionsFromPeer()
            if refusal is not None:
                log.info("connection from %s refused: %s", peer, refusal.smtp_reply())
                observe.session_refused(refusal.name)
                await self.push(refusal.smtp_reply())
                self.transport.close()
                return
            self._session_ends = self.loop.time() + self._max_session_seconds
            limit.active += 1
            observe.session_started()
            limit.by_peer[peer] += 1
            limit.sessions.add(self)
            try:
                await super()._handle_client()
            finally:
                limit.active -= 1
                observe.session_ended()
                limit.by_peer[peer] -= 1
                if limit.by_peer[peer] <= 0:
                    del limit.by_peer[peer]
                limit.sessions.discard(self)

        def _utf8_refusal(self, arg: str | None, *, smtputf8: bool, sender: bool) -> Refusal | None:
            """The refusal of a MAIL or RCPT argument that is not valid UTF-8, or is not ASCII undeclared.

            With SMTPUTF8 offered, aiosmtpd decodes an argument as UTF-8 with surrogateescape and
            takes any bytes, declared or not: a sender or recipient with bytes that are not UTF-8
            passed into the journal (which could not store it: the RCPT refusal went unrecorded) and
            the log. Those get 553 with 5.1.7 / 5.1.3 (malformed address); a non-ASCII address in a
            transaction whose MAIL did not declare SMTPUTF8 gets 553 5.6.7 (RFC 6531 section 3.4),
            as Postfix answers it.
            """
            if not arg or arg.isascii():
                return None
            try:
                arg.encode("utf-8")
            except UnicodeEncodeError:
                return (SenderAddressInvalid if sender else RecipientAddressInvalid)("not valid UTF-8")
            if not smtputf8:
                return NonAsciiAddressUndeclared()
            return None

        async def smtp_MAIL(self, arg: str | None) -> None:
            # After HELO too (a review: only EHLO sessions were checked, and after HELO a sender with
            # bytes that are not UTF-8 crashed the receipt's write, 451 at every retry, while a
            # non-ASCII one was filed); there SMTPUTF8 cannot be declared. Before any greeting,
            # aiosmtpd answers 503 itself.
            if self.envelope is not None and self.envelope.mail_from is None and self.session.host_name:
                declared = self.session.extended_smtp and bool(_SMTPUTF8_PARAMETER.search(arg or ""))
                refusal = self._utf8_refusal(arg, smtputf8=declared, sender=True)
                if refusal is not None:
                    log.info("MAIL from %s refused: %s", self.session.peer, refusal.smtp_reply())
                    await self.push(refusal.smtp_reply())
                    return None
            # Kept for push(): aiosmtpd refuses a SIZE= over the limit before the handler sees the sender.
            self._mail_arg = arg
            try:
                return await super().smtp_MAIL(arg)
            finally:
                self._mail_arg = None

        async def smtp_RCPT(self, arg: str | None) -> None:
            envelope = self.envelope
            if envelope is not None and envelope.mail_from is not None:
                refusal = self._utf8_refusal(arg, smtputf8=envelope.smtp_utf8, sender=False)
                if refusal is not None:
                    # Journaled as any refused recipient; bytes that are not UTF-8 as U+FFFD.
                    rcpt = (arg or "").encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                    rcpt = (rcpt[3:] if rcpt[:3].upper() == "TO:" else rcpt).strip().lstrip("<").partition(">")[0]
                    log.info("RCPT %r refused: %s", rcpt, refusal.smtp_reply())
                    await self.event_handler.journal_refusal(self.session, refusal,
                                                             mail_from=envelope.mail_from, rcpt=rcpt)
                    await self.push(refusal.smtp_reply())
                    return None
            return await super().smtp_RCPT(arg)

        async def push(self, status) -> None:
            if status == _AIOSMTPD_SIZE_DECLARED_TOO_LARGE and getattr(self, "_mail_arg", None) is not None:
                status = await self._refuse_declared_size(self._mail_arg)
            elif status == _AIOSMTPD_DATA_TOO_LARGE and self.envelope is not None and self.envelope.rcpt_tos:
                status = await self._refuse_received_data(MessageTooLarge(f"the limit is {self.data_size_limit} bytes"))
            elif status == _AIOSMTPD_LINE_TOO_LONG and self.envelope is not None and self.envelope.rcpt_tos:
                status = await self._refuse_received_data(LineTooLong(LINE_LIMIT))
            elif self._requires_tls and self._tls_protocol is None and isinstance(status, str):
                status = self._unknown_before_tls(status)
            await super().push(status)

        def _unknown_before_tls(self, status: str) -> str:
            """STARTTLS_REQUIRED in place of aiosmtpd's 500 to an unknown command, before TLS.

            RFC 3207 section 4: with TLS required, every command but NOOP, EHLO, STARTTLS and QUIT
            gets 530 before TLS. _within_session_time answers the commands aiosmtpd knows, but an
            unknown one never reaches a method and got "500 Error: command "X" not recognized"
            (found by a review of the listener's SMTP conformance). Answered here, after aiosmtpd's
            lookup, so unknown commands still count towards its limit of five ("502 5.5.1 Too many
            unrecognized commands", then closed). A 500 of a known method stays: LMTP's own
            answer to EHLO, which is allowed before TLS and no LMTP command.
            """
            unknown = _AIOSMTPD_UNKNOWN_COMMAND.fullmatch(status)
            if unknown is not None and unknown.group(1) not in self._smtp_methods:
                return STARTTLS_REQUIRED
            return status

        async def _refuse_declared_size(self, arg: str) -> str:
            """MAIL FROM:<...> SIZE=n with n over listener.max_message_size: MessageTooLarge, journaled.

            aiosmtpd checked the command up to the SIZE parameter, so parsing it again succeeds.
            """
            path = self._strip_command_keyword("FROM:", arg) or ""
            address, params = self._getaddr(path)
            declared = (self._getparams((params or "").upper().split()) or {}).get("SIZE")
            refusal = MessageTooLarge(f"SIZE={declared} declared, the limit is {self.data_size_limit} bytes")
            log.info("MAIL from %s refused: %s", self.session.peer, refusal.smtp_reply())
            await self.event_handler.journal_refusal(self.session, refusal, mail_from=address or "", counted=True)
            return refusal.smtp_reply()

        async def _refuse_received_data(self, refusal: Refusal) -> str:
            """A DATA aiosmtpd refused at its end, journaled with the envelope and counted; its reply.

            Over listener.max_message_size (MessageTooLarge) or with a line over 1000 bytes
            (LineTooLong): aiosmtpd read the data to its end and kept none of it past the fault; it
            resets the transaction after this reply, and the session goes on.
            """
            envelope = self.envelope
            target = getattr(envelope, "gateway_target", None)
            log.info("DATA from %s refused: %s", self.session.peer, refusal.smtp_reply())
            started = getattr(self, "_data_started", None)
            await self.event_handler.journal_refusal(
                self.session, refusal, mail_from=envelope.mail_from or "", rcpt=envelope.rcpt_tos[0], target=target,
                seconds=None if started is None else time.monotonic() - started, counted=True)
            return refusal.smtp_reply()

        async def smtp_DATA(self, arg: str) -> None:
            # Hold a slot from before the 354 until the reply: a session waiting here has sent
            # nothing of its message yet, so memory grows with the slots, not with the sessions.
            # A DATA that aiosmtpd will refuse at once (no RCPT, an argument) needs no slot.
            if self.envelope is None or not self.envelope.rcpt_tos or arg:
                return await super().smtp_DATA(arg)
            slots = self._session_limit.data_slots
            # aiosmtpd's idle timer runs from the command on; a session waiting for a slot is not
            # idle by its own fault, so it waits up to session_timeout and then gets a 451.
            if self._timeout_handle is not None:
                self._timeout_handle.cancel()
            try:
                await asyncio.wait_for(slots.acquire(), timeout=self._timeout_duration)
            except asyncio.TimeoutError:
                self._reset_timeout()
                refusal = GatewayBusy()
                log.info("DATA from %s deferred: %s", self.session.peer, refusal.smtp_reply())
                # Journaled and counted as a deferred message, as the other refusals at DATA are: a
                # gateway short of slots was seen only by its clients (found by a review of what
                # operators can see). No time from DATA: none of the message was sent.
                envelope = self.envelope
                await self.event_handler.journal_refusal(
                    self.session, refusal, mail_from=envelope.mail_from or "", rcpt=envelope.rcpt_tos[0],
                    target=getattr(envelope, "gateway_target", None), counted=True)
                await self.push(refusal.smtp_reply())
                return None
            self._holds_data_slot = True
            try:
                if self.transport is None or self.transport.is_closing():
                    return None
                self._reset_timeout()
                self._data_started = time.monotonic()
                return await super().smtp_DATA(arg)
            finally:
                self._data_started = None
                self.release_data_slot()

        async def smtp_STARTTLS(self, arg: str) -> None:
            """aiosmtpd's STARTTLS, refused once TLS is active, and a session whose handshake fails ended.

            aiosmtpd answered a second STARTTLS "220 Ready to start TLS" and began a TLS handshake
            inside TLS, which no client completes. A handshake that never completed (the client went
            silent until session_timeout, or closed the connection) woke aiosmtpd as if it had
            succeeded: the session then waited for ever on a connection already closed, and kept its
            place in listener.max_sessions and max_sessions_per_ip until a restart. A handshake that
            failed (not TLS, TLS below 1.2) ended the session with an ERROR and a traceback.
            Both were found by a review of the STARTTLS paths.
            """
            if self._tls_protocol is not None and self.session.ssl is not None:
                await self.push("503 5.5.1 TLS already active")
                return None
            failure: BaseException | None = None
            try:
                await super().smtp_STARTTLS(arg)
            except TLSSetupException as error:
                failure = error.__cause__ or error
            # On success aiosmtpd has a new session with the TLS details (connection_made, RFC 3207
            # section 4.2); without one, the handshake did not complete.
            if self._tls_protocol is not None and self.session.ssl is None:
                log.info("STARTTLS from %s failed, session closed: %s", self.session.peer,
                         failure or "the client did not complete the handshake")
                if self.transport is not None:
                    self.transport.close()
                # What aiosmtpd does after a failed handshake: the original transport closed, the
                # idle timer cancelled, and the command loop ended (transport None).
                self.connection_lost(None)
            return None

        async def smtp_AUTH(self, arg: str) -> None:
            """AUTH_NOT_IMPLEMENTED, whatever the mechanism, with TLS or without.

            aiosmtpd's AUTH ran its built-in LOGIN and PLAIN against a callback that fails every
            login (535), and before TLS answered "538 5.7.11 Encryption required", as if it would
            work over TLS. No @syntax: HELP does not list it. Before TLS, with
            listener.require_starttls, it gets STARTTLS_REQUIRED like any other command.
            """
            await self.push(AUTH_NOT_IMPLEMENTED)

        def _getaddr(self, arg: str):
            """aiosmtpd's address parsing, with a shortcut for the plain ``<local@domain>`` path.

            aiosmtpd runs every MAIL and RCPT argument through the email package's full header grammar
            and builds a typing.Protocol class on each call (~90 µs, twice per message). A
            plain path gets the same answer from one regular expression; anything else (quotes, a
            route, ``<>``, a comment, non-ASCII, a domain literal) goes the original way.
            tests/test_smtp_paths.py holds the two to the same answers.
            """
            match = _PLAIN_PATH.match(arg)
            # "=?" may open an encoded word, which the grammar decodes.
            if match is None or "=?" in match.group(0):
                return self._full_getaddr(arg)
            rest = arg[match.end():]
            if rest[:1] in (" ", "\t", "("):
                # The grammar's folding white space after the path takes every kind of white space.
                rest = rest.lstrip()
                if rest.startswith("("):
                    return self._full_getaddr(arg)
            if self.local_part_limit and len(match.group(1)) > self.local_part_limit:
                return None, None
            return match.group(0)[1:-1], rest

        def _full_getaddr(self, arg: str):
            # The email package's grammar raises IndexError, AttributeError or UnboundLocalError on
            # some broken paths ('MAIL FROM:"', 'RCPT TO:a@'), which aiosmtpd would answer with
            # "500 Error: (IndexError) string index out of range" and a logged traceback: such a path
            # is malformed, and gets aiosmtpd's "553 5.1.3 Error: malformed address" instead.
            try:
                return super()._getaddr(arg)
            except Exception:  # noqa: BLE001 (any failure of the grammar means a malformed path)
                return None, None

        def release_data_slot(self) -> None:
            """Give this session's DATA slot back (once): at the end of DATA, or earlier for a light message."""
            if getattr(self, "_holds_data_slot", False):
                self._holds_data_slot = False
                self._session_limit.data_slots.release()

        # aiosmtpd's HELP reads the syntax that its @syntax decorator put on the method.
        for attribute in _SYNTAX_ATTRIBUTES:
            setattr(smtp_DATA, attribute, getattr(base.smtp_DATA, attribute, None))
            setattr(smtp_MAIL, attribute, getattr(base.smtp_MAIL, attribute, None))
            setattr(smtp_RCPT, attribute, getattr(base.smtp_RCPT, attribute, None))
            setattr(smtp_STARTTLS, attribute, getattr(base.smtp_STARTTLS, attribute, None))

    Limited.__name__ = f"Limited{base.__name__}"
    return Limited


LimitedSMTP = _limited(SMTP)
LimitedLMTP = _limited(LMTP)


class GatewayServer:
    """The listener bound to its socket, run on an asyncio loop."""

    def __init__(self, services: Services, *, workers: int = 1, port: int | None = None) -> None:
        self.services = services
        listener = services.config.gateway.listener
        self.listener = listener
        # listener.port unless given: 0, a port the system picks, is for the tests and the demo
        # (the configuration refuses it, as no mail system could be pointed at it).
        self.bind_port = listener.port if port is None else port
        # One of ``workers`` processes takes its share of the gateway's bounds.
        max_sessions = -(-listener.max_sessions // workers)
        self.executor = ThreadPoolExecutor(max_workers=max_sessions, thread_name_prefix="pipeline")
        self.handler = GatewayHandler(services, self.executor)
        self.session_limit = _SessionLimit(max_sessions, listener.max_sessions_per_ip,
                                           -(-listener.max_messages_in_data // workers))
        self._servers: list[asyncio.base_events.Server] = []
        self.tls_context = self._tls_context(services)

    @staticmethod
    def _tls_context(services: Services):
        files = services.config.tls_files
        return tls.server_context(*files) if files else None

    def reload(self, services: Services) -> Services:
        """Serve new sessions' messages with new services (after SIGHUP); return the old ones.

        The socket, the protocol spoken on it and the session bounds stay as they were at start
        (config.RESTART_SETTINGS need a restart). The certificate is read again, so a renewed one
        is picked up by reload; a certificate that does not load raises and changes nothing.
        """
        tls_context = self._tls_context(services)
        old = self.handler.services
        self.tls_context = tls_context
        self.services = self.handler.services = services
        return old

    def _protocol(self) -> SMTP:
        # The protocol is the one the listener started with: a client (Postfix's smtp: or lmtp:
        # transport) is configured for it, and a reload must not switch it under that client.
        protocol_class = LimitedLMTP if self.listener.protocol == "lmtp" else LimitedSMTP
        listener = self.services.config.gateway.listener
        return protocol_class(
            self.handler,
            session_limit=self.session_limit,
            max_session_seconds=listener.max_session_seconds,
            # MAIL_SECURITY.md item 15: aiosmtpd counts each command over the whole session and
            # answers "421 4.7.0 <command> sent too many times" past its limit, then closes.
            command_call_limit={"*": listener.command_call_limit,
                                **dict.fromkeys(TRANSACTION_COMMANDS, listener.transaction_call_limit)},
            # DKIM is computed over the exact bytes received (MAIL_SECURITY.md item 15).
            decode_data=False,
            # RFC 6531: offered, so that a relay may pass on a message with UTF-8 header fields
            # (RFC 6532), which the gateway files. Without it, Postfix (smtputf8_enable = yes,
            # Debian's default) bounced such mail: "SMTPUTF8 is required, but was not offered".
            enable_SMTPUTF8=True,
            hostname=listener.hostname,
            data_size_limit=listener.max_message_size,
            timeout=listener.session_timeout,
            ident="Odoo Note Gateway",
            tls_context=self.tls_context,
            # RFC 3207 section 4: a server may refuse commands other than NOOP, EHLO, STARTTLS and
            # QUIT before TLS. Limited does it, not aiosmtpd's require_starttls: aiosmtpd refused
            # LMTP's LHLO too (a Postfix lmtp: client could not even greet), and its
            # "530 Must issue a STARTTLS command first" had no enhanced status code.
            requires_tls=listener.require_starttls and self.tls_context is not None,
        )

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Listen on host and port, or on ``sockets``, listening sockets handed down by the supervisor."""
        loop = asyncio.get_running_loop()
        if sockets:
            self._servers = [await loop.create_server(self._protocol, sock=sock) for sock in sockets]
        else:
            # An empty host (every interface): None, for which asyncio binds 0.0.0.0 and ::.
            self._servers = [await loop.create_server(self._protocol, host=self.listener.host or None,
                                                      port=self.bind_port)]

    @property
    def port(self) -> int:
        assert self._servers
        return self._servers[0].sockets[0].getsockname()[1]

    async def stop(self, grace: float | None = None) -> int:
        """Stop accepting, let messages in DATA get their reply for up to ``grace`` seconds, cut the rest.

        A session cut here gets 421 (RFC 5321 section 3.8): its client keeps the message and
        retries, and a retry of one that was being posted is matched by its Message-ID.

        The pipelines still running are waited for until their message deadline (and a second to
        journal their outcome), never past ``grace`` + listener.message_deadline from the stop.
        One still running then (a stage that does not end at the deadline) is not waited for: its
        message is journaled as interrupted (abandoned), and the number of them is returned, for
        the caller to exit without waiting for their threads (serve). Before, the stop waited for
        them without a bound: SIGTERM had not stopped a gateway after 240 s while a note whose text
        took minutes to link was being filed (found by a security review).
        """
        grace = self.listener.shutdown_grace if grace is None else grace
        loop = asyncio.get_running_loop()
        stop_started = time.monotonic()
        self.session_limit.stopping = True
        for server in self._servers:
            server.close()
        ends = loop.time() + grace
        while self.handler.in_data > 0 and loop.time() < ends:
            await asyncio.sleep(0.05)
        if self.handler.in_data:
            log.warning("stopping with %d message(s) still being filed after %.0f s", self.handler.in_data, grace)
        for session in list(self.session_limit.sessions):
            transport = session.transport
            if transport is not None and not transport.is_closing():
                transport.write(ShuttingDown().smtp_reply().encode() + b"\r\n")
                transport.close()
        for server in self._servers:
            await server.wait_closed()
        # A pipeline still running finishes here (it is bounded by its own message deadline), so
        # its outcome reaches the journal before the process exits.
        bound = stop_started + grace + self.listener.message_deadline
        while self.handler.pipelines:
            until = min(bound, max(running.deadline for running in self.handler.pipelines.values()) + 1.0)
            if until <= time.monotonic():
                break
            await asyncio.wait(list(self.handler.pipelines), timeout=until - time.monotonic())
        abandoned = list(self.handler.pipelines.values())
        if not abandoned:
            await loop.run_in_executor(None, lambda: self.executor.shutdown(wait=True, cancel_futures=False))
            return 0
        log.warning("stopping with %d message(s) whose pipeline is still running past its deadline, %.0f s after "
                    "the signal: not waited for", len(abandoned), time.monotonic() - stop_started)
        await loop.run_in_executor(None, _journal_abandoned, abandoned)
        self.executor.shutdown(wait=False, cancel_futures=True)
        return len(abandoned)


def _journal_abandoned(abandoned: list[_Running]) -> None:
    """The journal rows of messages whose pipeline a stop gave up on; the process exits next.

    One that wrote its receipt may be posting: the receipt becomes an Interrupted row and an
    unsettled post now, as the next start would do (docs/reliability.md "The journal's receipt"),
    so its retry is deferred until Odoo has it and never filed twice. One that had not is deferred,
    with the reply its session got: the listener's own, or the stop's 421.
    """
    for running in abandoned:
        ctx = copy.copy(running.ctx)
        stage = ctx.running_stage or "-"
        message_id = ctx.message.message_id if ctx.message else "-"
        if ctx.receipt_id is not None:
            log.warning("%s to %s: the stop did not wait for its pipeline (stage %s), its receipt is recovered as "
                        "an interrupted post", message_id, ctx.target.address, stage)
            continue
        ctx.refusal = MessageTookTooLong(f"the gateway stopped with stage {stage} still running")
        # The listener's own reply if its timer answered the session first (pipeline.sent_reply).
        reply = ctx.listener_reply or ShuttingDown().smtp_reply()
        entry = JournalEntry.from_context(ctx, reply, time.monotonic() - running.started)
        log.warning("%s to %s: the stop did not wait for its pipeline (stage %s), deferred: %s", message_id,
                    ctx.target.address, stage, reply)
        try:
            running.services.journal.record(entry)
        except JournalUnavailable as error:
            log.error("journal unavailable, interrupted message not recorded: %s | %s", error, reply)
        finally:
            # Counted already if the listener's timer answered it (GatewayHandler._process).
            observe.message_done(entry, already_counted=ctx.listener_reply is not None)
    journals = {id(running.services.journal): running.services for running in abandoned
                if running.ctx.receipt_id is not None}
    for services in journals.values():
        odoo_of = {domain: rules.odoo for domain, rules in services.config.domains.items()}
        try:
            for entry in services.journal.recover_interrupted(pids=[os.getpid()], odoo_of=odoo_of):
                log.warning("interrupted by the stop, the sender will retry: %s to %s", entry.message_id or "-",
                            entry.rcpt)
        except JournalUnavailable as error:
            # The receipts stay: the next start recovers them the same way.
            log.error("journal unavailable, receipts of interrupted posts left for the next start: %s", error)


class ThreadedGateway:
    """A GatewayServer on its own loop in a background thread, for tests and the demo.

    ``port``: 0 (the default) listens on a port the system picks, read back from the ``port``
    property; None on the config's listener.port.
    """

    def __init__(self, services: Services, port: int | None = 0) -> None:
        self.server = GatewayServer(services, port=port)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gateway-loop", daemon=True)

    def start(self) -> ThreadedGateway:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout=10)
        except BaseException:
            # The port taken, for one: the loop's thread is not left running.
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.loop.close()
            raise
        return self

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def __enter__(self) -> ThreadedGateway:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
