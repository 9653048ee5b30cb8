"""The story of one message: the stages it passes, in order, and the services they share."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Callable, TypeVar

import dns.resolver

from gateway import (addressed, attachments, automatic, content, deadlines, identity, inputlimits, message, notices,
                     observe, odoorights, policy, post, ratelimit, recipients, routing, senderauth)
from gateway.config import ConfigError, GatewayConfig
from gateway.inflight import InFlight
from gateway.context import MessageContext, Target
from gateway.journal import WAIT_SECONDS, Journal, JournalBusy, JournalEntry, JournalUnavailable
from gateway.odoo import OdooPool, start_waiting, stop_waiting
from gateway.refusals import (AccessRuleUnsupported, AlsoAddressedToNote, AnswersNoteOfAnotherRecord,
                              GatewayMayNotPost, InternalError, InternalUserNotAllowed, JournalNotWritable,
                              MessageTookTooLong, ModelNotAllowed, ModelUnavailable, NoRecordReferenced,
                              NotContributor, OdooUnavailable, PostUnsettled, RecordAccessDenied, RecordArchived,
                              RecordHiddenFromGateway, RecordNotFound, RecordOfOtherCompany, ReferencesTooMany,
                              Refusal, ReplyMisattributed, RoutedRecordUnavailable, SenderAuthenticationTimedOut,
                              TemplateLosesBody, UnreadableRecipient)
from gateway.render import BodyNotShown, Renderer, checked_renderer
from gateway.resolver import DkimKeyResolver
from gateway.subject import clean_subject

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Services:
    """What the stages share: built once at start, rebuilt on reload."""

    config: GatewayConfig
    resolver: DkimKeyResolver
    odoo: dict[str, OdooPool]
    renderer: Renderer
    journal: Journal
    in_flight: InFlight = field(default_factory=InFlight)
    # Refusal notices leave after the SMTP reply, from a queue of their own (gateway/notices.py).
    notifier: notices.Notifier = field(default_factory=notices.Notifier)
    # Whether close() closes in_flight: not when the process handed in its own (see build).
    owns_in_flight: bool = True
    # Whether close() closes the journal: not one the running services lent to a reload (see build
    # and hand_over_journal).
    owns_journal: bool = True
    # The messages (and journal writes) still using these services: a reload closes the ones it
    # replaced when the last of them is done (retire).
    _users: int = field(default=0, init=False, repr=False)
    _retired: bool = field(default=False, init=False, repr=False)
    _closed: bool = field(default=False, init=False, repr=False)
    _users_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def build(cls, config: GatewayConfig, *, workers: int = 1, in_flight: InFlight | None = None,
              read_only: bool = False, running: Services | None = None) -> Services:
        """The services of one gateway process; one of ``workers`` takes its share of each Odoo pool.

        ``pool_size`` bounds the connections the whole gateway opens to an Odoo, as ``max_sessions``
        bounds its sessions: with several worker processes each gets its share, rounded up.

        ``in_flight``: the process's claims (open_in_flight), kept across reloads and not closed by
        close(). Without it the services open their own, for a process that never reloads.

        ``read_only``: for `note-gateway check`, which writes no file. The journal is opened
        read-only, or is an empty one in memory while the file does not exist (as `log`, for an
        admin who may read the gateway's state but not write it), and the claims are the
        process's own, in no file: a delivery of the same message while it runs is not deferred
        as being filed right now (a review found check creating the journal and <journal>.inflight,
        running the migrations, and claiming the message in the gateway's shared file).

        ``running``: the services a reload replaces. Their journal is lent to the new services when
        journal.path still names it, rather than opened a second time in the process (no migration
        run again, no wait for another program holding the journal's write lock); the new services
        own it once the reload is done (hand_over_journal).
        """
        resolver_config = config.gateway.resolver
        # First, as it opens nothing: every template is read and checked (ConfigError naming the
        # file and line), so a broken one stops the start or the reload, not every message after it.
        # A worker of several (workers > 1) leaves the warnings of never-used template files to its
        # supervisor, which logs them once for all at start and at each reload.
        renderer = checked_renderer(config, log_warnings=workers == 1)
        # What is built is closed again when a later part fails: a refused reload leaves nothing open.
        with ExitStack() as built:
            try:
                resolver = DkimKeyResolver(resolver_config.nameservers, port=resolver_config.port,
                                           timeout=resolver_config.timeout, cache=resolver_config.cache,
                                           cache_size=resolver_config.cache_size)
            except dns.resolver.NoResolverConfiguration as error:
                raise ConfigError(config.path, "resolver.nameservers",
                                  f"empty, and the system's resolvers cannot be read: {error}") from None
            odoo = {name: OdooPool(name, connection.model_copy(update={"pool_size": -(-connection.pool_size // workers)}),
                                   config.api_keys[name])
                    for name, connection in config.gateway.odoo.items()}
            for pool in odoo.values():
                built.callback(pool.close)
            owns_journal = not (running is not None and running.keeps_journal_for(config, read_only))
            try:
                if not owns_journal:
                    journal = running.journal
                elif not read_only:
                    journal = Journal(config.journal_path)
                elif config.journal_path.exists():
                    journal = Journal(config.journal_path, read_only=True)
                else:
                    journal = Journal(Journal.IN_MEMORY)
            except JournalUnavailable as error:
                raise ConfigError(config.path, "journal.path", str(error)) from None
            if owns_journal:
                built.callback(journal.close)
            owns_in_flight = in_flight is None
            if in_flight is None:
                in_flight = InFlight() if read_only else open_in_flight(config)
            services = cls(config=config, resolver=resolver, odoo=odoo, renderer=renderer,
                           journal=journal, in_flight=in_flight, owns_in_flight=owns_in_flight,
                           owns_journal=owns_journal)
            built.pop_all()
        return services

    def keeps_journal_for(self, config: GatewayConfig, read_only: bool = False) -> bool:
        """Whether services built for ``config`` may use this journal rather than open the file again."""
        return (not read_only and not self.journal.read_only and not self._closed
                and str(self.journal.path) != Journal.IN_MEMORY
                and self.journal.path.resolve() == config.journal_path.resolve())

    def hand_over_journal(self, successor: Services) -> None:
        """A reload is done: ``successor``, which was lent this journal, now owns it; these no longer close it."""
        if successor.journal is self.journal and not successor.owns_journal:
            successor.owns_journal, self.owns_journal = self.owns_journal, False

    def held(self, function: Callable[..., T]) -> Callable[..., T]:
        """``function`` for another thread, holding these services from now until it returns.

        Called on the event loop in the same step that read the server's services, so a reload
        cannot retire and close them between the two; the hold ends in the thread, when the
        message (or the journal write) is done, however long it runs past its reply.
        """
        with self._users_lock:
            self._users += 1

        def call(*args, **kwargs) -> T:
            try:
                return function(*args, **kwargs)
            finally:
                self._release()

        return call

    def _release(self) -> None:
        with self._users_lock:
            self._users -= 1
            done = self._retired and self._users == 0
        if done:
            self.close()

    def retire(self) -> None:
        """Replaced by a reload: close now if no message uses these services, else when the last one is done.

        Bounds what reloads keep open (a journal connection, Odoo connections, a notice thread) to
        the services of the messages in flight, however often the gateway is reloaded.
        """
        with self._users_lock:
            self._retired = True
            done = self._users == 0
        if done:
            self.close()

    def close(self, *, notices_wait: float | None = None) -> None:
        """Close what was built. At a stop, queued notices get up to ``notices_wait`` seconds (0: none
        more) and those left are logged; without it (a reload) they go on in their thread."""
        with self._users_lock:
            if self._closed:
                return
            self._closed = True
        self.notifier.close(notices_wait)
        for pool in self.odoo.values():
            pool.close()
        if self.owns_journal:
            self.journal.close()
        if self.owns_in_flight:
            self.in_flight.close()


def in_flight_path(config: GatewayConfig) -> Path:
    """The lock file of the claims: beside the journal, where every worker process of this gateway opens it."""
    return config.journal_path.with_name(config.journal_path.name + ".inflight")


def open_in_flight(config: GatewayConfig, lock_path: Path | str | None = None) -> InFlight:
    """The claims of one gateway process: open once, for its whole life, and handed to every Services it builds.

    At ``lock_path``, by default in_flight_path(config); a worker opens its supervisor's, so that
    one started again after a reload that moved the journal shares the file with its siblings. One
    descriptor per process: a record lock never conflicts with another of the same process, so a
    second InFlight (with its own set) would not see the first one's claims, and closing any
    descriptor of the file drops every lock the process holds on it (fcntl(2)), the other's too.
    """
    lock_path = lock_path or in_flight_path(config)
    try:
        return InFlight(lock_path)
    except OSError as error:
        raise ConfigError(config.path, "journal.path", f"cannot open {lock_path}: {error.strerror or error}") from None


def _odoo_too_slow() -> Refusal:
    return OdooUnavailable("the message took too long to process")


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    run: Callable[[MessageContext, Services, float], None]
    # The refusal when the message's deadline has passed by the end of this stage: the stages
    # waiting on Odoo say Odoo; one waiting on DNS says DNS (found by a security review, where a
    # silent DNS for the DKIM keys was answered "Odoo is unavailable"); the others (None) say the
    # message took too long in this stage, not that Odoo is unavailable (the same review: a
    # CPU-heavy text in extract-content was answered so).
    too_slow: Callable[[], Refusal] | None = None

    def too_slow_refusal(self) -> Refusal:
        if self.too_slow is not None:
            return self.too_slow()
        return MessageTookTooLong(f"the deadline passed in stage {self.name} ({self.description})")


def took_too_long(ctx: MessageContext, seconds: float) -> Refusal:
    """The listener's refusal of a message whose pipeline gave no outcome ``seconds`` after its data.

    Whatever the stage, not "Odoo is unavailable": every Odoo call ends by the deadline, so a
    pipeline still running past it is the gateway's own work (found by a security review).
    """
    stage = next((stage for stage in STAGES if stage.name == ctx.running_stage), None)
    running = f"; stage {stage.name} ({stage.description}) still running" if stage else ""
    return MessageTookTooLong(f"no outcome {seconds:g} s after its data{running}")


def _odoo(ctx: MessageContext, services: Services) -> OdooPool:
    return services.odoo[ctx.rules.odoo]


def _check_framing(ctx: MessageContext, services: Services, deadline: float) -> None:
    message.check_line_endings(ctx.raw)


def _check_input_limits(ctx: MessageContext, services: Services, deadline: float) -> None:
    # A multipart message is parsed here, once its raw bytes passed the cheap checks; the parse
    # stage takes it over (issue 6).
    ctx.email_message = inputlimits.check_input(ctx.raw, services.config.gateway.limits)


def _parse(ctx: MessageContext, services: Services, deadline: float) -> None:
    if ctx.email_message is None:
        ctx.email_message = message.parse_email(ctx.raw)
    ctx.message = message.parse(ctx.raw, ctx.email_message)


def _refuse_automatic(ctx: MessageContext, services: Services, deadline: float) -> None:
    assert ctx.message is not None
    automatic.check_not_automatic(ctx.raw, ctx.mail_from, ctx.message.from_address, ctx.message.subject,
                                  ctx.email_message)
    automatic.check_not_calendar_reply(ctx.message)


def _take_email_message(ctx: MessageContext) -> Message | None:
    email_message, ctx.email_message = ctx.email_message, None
    return email_message


def _authenticate_sender(ctx: MessageContext, services: Services, deadline: float) -> None:
    # The last stage to read the parsed message takes it off the context, and authenticate lets
    # go of it before its DNS lookups: ParsedMessage holds what the later stages need, and a large
    # message would otherwise stay in memory twice while DNS and Odoo answer.
    sender_policy = ctx.rules.sender
    ctx.sender = senderauth.authenticate(
        ctx.raw, services.resolver, max_signature_age_days=sender_policy.max_signature_age_days,
        require_signature_time=sender_policy.require_signature_time, email_message=_take_email_message(ctx),
        deadline=deadline)


def _authentication_too_slow() -> Refusal:
    return SenderAuthenticationTimedOut("the message's deadline passed while its DKIM signature was checked")


def _journal_too_slow() -> Refusal:
    # The stages that wait on the journal say the journal, not Odoo (journal review: with the
    # journal locked by another process, late messages were answered "Odoo is unavailable" and
    # counted as OdooUnavailable, which fires an Odoo alert while Odoo is healthy).
    return JournalNotWritable(_JOURNAL_BUSY)


# How much of an unreadable To/Cc item a refusal and the journal quote (UnreadableRecipient).
MAX_QUOTED_ITEM = 120
_JOURNAL_BUSY = "the journal was busy until the message's deadline"


def _journal_refusal(ctx: MessageContext, stage: str, error: JournalUnavailable) -> JournalNotWritable:
    """The refusal of a message whose journal could not be read or written; the error itself goes
    to the log and the message's journal row, not to the sender (journal review: the reply gave
    any stranger the journal's path and SQLite's error)."""
    log.error("journal unavailable in stage %s, message deferred (451): %s", stage, error)
    ctx.journal_notes.append(f"journal-unavailable:{error}")
    return JournalNotWritable(_JOURNAL_BUSY if isinstance(error, JournalBusy) else None)


def _check_addressed(ctx: MessageContext, services: Services, deadline: float) -> None:
    # Before identify-sender: a message not sent to the gateway costs no Odoo call, and its refusal
    # says nothing of its author's Odoo account (a replay to note@ told whether she had one, and
    # whether it was archived: security review).
    assert ctx.message is not None and ctx.sender is not None
    addressed.check_addressed(ctx.message, ctx.target, ctx.sender, alias_domains=services.config.domains,
                              accept_bcc_notes=ctx.rules.sender.accept_bcc_notes)


def _rate_limit(ctx: MessageContext, services: Services, deadline: float) -> None:
    assert ctx.sender is not None
    try:
        ratelimit.check_rate(services.journal, ctx.rules.rate_limit, ctx.sender.email, ctx.target,
                             odoo=ctx.odoo_identity, message_id=ctx.message.message_id if ctx.message else None,
                             deadline=deadline)
    except JournalUnavailable as error:
        raise _journal_refusal(ctx, "rate-limit", error) from None


def _rate_limit_routed(ctx: MessageContext, services: Services, deadline: float) -> None:
    # The record of a plain note@ / reply@ is known only after route; a record address had its
    # record's limit checked with the sender's, before any Odoo call. After authorize, not right
    # after route: RecordRateLimited tells that the record gets mail, so it is said only to a sender
    # who may read the record (found by two reviews: between route and authorize, a portal user
    # told a busy record she could not read from an unknown Message-ID by its 450).
    assert ctx.sender is not None
    if not ctx.target.by_reference:
        return
    try:
        ratelimit.check_record(services.journal, ctx.rules.rate_limit, ctx.sender.email, ctx.target,
                               odoo=ctx.odoo_identity, message_id=ctx.message.message_id if ctx.message else None,
                               deadline=deadline)
    except JournalUnavailable as error:
        raise _journal_refusal(ctx, "routed-rate-limit", error) from None


def _identify_sender(ctx: MessageContext, services: Services, deadline: float) -> None:
    assert ctx.sender is not None
    odoo = _odoo(ctx, services)
    # Who follows the record does not depend on who sent the message: read it on a second pooled
    # connection while the sender is looked up, one Odoo round trip less per message (issue 6).
    # "authorize" checks it; a refusal raised by the read surfaces there, in the stage order.
    # Only the followers policy on a record known from the address uses it.
    if (not ctx.target.by_reference and ctx.rules.kind_rules(ctx.target.kind).access == "followers"
            and ctx.rules.company_id is None and not ctx.rules.company_from_alias_domain):
        # The read also asks that the message is not filed there yet (as every policy's record
        # search does), which holds only under the message's claim: taken now, held to the end.
        _claim(ctx, services)
        ctx.followers = odoo.submit(policy.read_followers, odoo, ctx.target, deadline=deadline,
                                    unfiled=post.filed_message_ids(ctx))
    if _may_answer_a_note(ctx, services):
        # The message a reply+ answers is looked up at the same time too (reply-all-as-note).
        ctx.parent = odoo.submit(routing.reply_parent, odoo, ctx.message, ctx.target.model, ctx.target.res_id,
                                 deadline=deadline)
    ctx.user = identity.find_user(odoo, ctx.sender.email, deadline=deadline)


def _may_answer_a_note(ctx: MessageContext, services: Services) -> bool:
    """A reply to a known record that references messages, and is neither a note nor refused by its To/Cc."""
    assert ctx.message is not None
    return (ctx.target.kind == "reply" and not ctx.target.by_reference and bool(routing.referenced_ids(ctx.message))
            and routing.note_addresses(ctx.message, ctx.target, services.config) == (None, None)
            and routing.unreadable_note_recipient(ctx.message, services.config) is None)


def _route(ctx: MessageContext, services: Services, deadline: float) -> None:
    assert ctx.message is not None
    if not ctx.target.by_reference:
        return
    if ctx.target.kind == "note":
        # Whether the sender may file notes at all is about the sender alone: said before routing,
        # so that it does not depend on whether the references lead to a record (found by a review:
        # a non-contributor's note@ was "No record found" for an unknown Message-ID and "may not post
        # internal notes" for one Odoo has, whoever's record holds it).
        assert ctx.user is not None
        policy.check_poster(_odoo(ctx, services), ctx.rules, ctx.target, ctx.user, deadline=deadline)
    unsigned = ctx.sender.unsigned_headers if ctx.sender else frozenset()
    model, res_id, how = routing.resolve(_odoo(ctx, services), ctx.message, unsigned=unsigned, deadline=deadline)
    ctx.target = dataclasses.replace(ctx.target, model=model, res_id=res_id)
    ctx.decision = f"routed {how}"


def _reply_all_as_note(ctx: MessageContext, services: Services, deadline: float) -> None:
    """A reply that is also a note, or that answers one, is filed as a note: never public.

    Reply-all to a note address (To/Cc); or a reply to an internal message of the record (its
    In-Reply-To or References), as Odoo's own mail gateway files it: it quotes the note, and
    its followers may include portal users. Every check of a note then applies (authorize).
    A reply answering an internal note of another record is refused (AnswersNoteOfAnotherRecord), as
    is one whose To or Cc also names a note address that is not its record's (AlsoAddressedToNote).
    For a plain reply@, routed by headers anyone can write, what this decides is said only once the
    sender's access to the routed record is established (said_refusal, _check_reply_access).
    """
    assert ctx.message is not None
    if ctx.target.kind != "reply":
        return
    note, elsewhere = routing.note_addresses(ctx.message, ctx.target, services.config)
    unreadable = routing.unreadable_note_recipient(ctx.message, services.config)
    if elsewhere is not None or unreadable is not None:
        # Meant in part as a note of another record (or Odoo): filed here as a reply its text would
        # be public, and filed as a note here it would be a note where the sender did not put one.
        if ctx.target.by_reference:
            # Said only to a sender who may read the record a plain reply@ was routed to: whether a
            # note address is "another" depends on where References led, and any sender could ask
            # whether a Message-ID is in Odoo, and of which record (found by a review).
            _check_reply_access(ctx, services, deadline)
        if elsewhere is None:
            # An item no parser reads, which may be a note address (routing.unreadable_note_recipient).
            item = observe.printable(unreadable)[:MAX_QUOTED_ITEM]
            ctx.decision = "; ".join(filter(None, (ctx.decision, f"also addressed to unreadable {item!r}: refused")))
            raise UnreadableRecipient(item)
        ctx.decision = "; ".join(filter(None, (ctx.decision, f"also addressed to {elsewhere}: refused")))
        raise AlsoAddressedToNote()
    if note is not None:
        decision, ctx.note_reason = f"reply-all with {note}", "the message is also addressed to a note address"
    else:
        parent = _reply_parent(ctx, services, deadline)
        if parent is None or not parent.internal:
            return
        if parent.elsewhere is not None:
            # Filed here it would be public, quoting that note; Odoo's catchall would file it there
            # as a note, but the address names this record. The journal names the other record,
            # the reply to the sender does not.
            model, res_id = parent.elsewhere
            ctx.decision = "; ".join(filter(None, (
                ctx.decision, f"answers internal message {parent.message_id} of {model},{res_id}: refused")))
            raise AnswersNoteOfAnotherRecord()
        decision, ctx.note_reason = (f"answers internal message {parent.message_id}",
                                     "the message answers an internal note of this record")
        ctx.note_from_parent = True
        ctx.parent_author_id = parent.author_id
    ctx.target = dataclasses.replace(ctx.target, kind="note")
    ctx.decision = "; ".join(filter(None, (ctx.decision, f"{decision}: filed as a note, never public")))


def _reply_parent(ctx: MessageContext, services: Services, deadline: float) -> routing.Parent | None:
    assert ctx.message is not None
    if ctx.parent is not None:
        return ctx.parent.result()
    if not routing.referenced_ids(ctx.message):
        return None
    # A plain reply@, whose record the route stage has just found.
    return routing.reply_parent(_odoo(ctx, services), ctx.message, ctx.target.model, ctx.target.res_id,
                                deadline=deadline)


def _authorize(ctx: MessageContext, services: Services, deadline: float) -> None:
    assert ctx.user is not None
    odoo = _odoo(ctx, services)
    try:
        policy.check_model_allowed(ctx.rules, ctx.target)
        policy.check_address(ctx.rules, ctx.target)
        policy.check_address_owner(ctx.target, ctx.user)
        policy.check_poster(odoo, ctx.rules, ctx.target, ctx.user, deadline=deadline)
    except (ModelNotAllowed, NotContributor, InternalUserNotAllowed) as refusal:
        if not ctx.note_reason:
            raise
        if ctx.note_from_parent or ctx.target.by_reference:
            # That the message answers an internal note, or that it is a note because its To/Cc
            # names one of the record a plain reply@ was routed to, is said only to a sender who may
            # read the record, as the reply it was sent as (found by reviews: anyone holding a
            # Message-ID learnt that it was a note, and of which record; a plain reply@ Cc a made-up
            # note+ of a guessed record told whether the Message-ID was of that record); else that
            # refusal is the reply.
            _check_reply_access(ctx, services, deadline)
        # A reply refused as a note says why it was one (reply-all-as-note).
        raise type(refusal)(f"{refusal.detail}; {ctx.note_reason}, so it is filed only as a note",
                            internal=refusal.internal) from None
    ctx.unfiled = _check_record_access(ctx, services, ctx.target, deadline, unfiled=post.filed_message_ids(ctx))


def _check_reply_access(ctx: MessageContext, services: Services, deadline: float) -> None:
    """Establish that the sender may post on the record as the reply the message was sent as (or raise)."""
    assert ctx.user is not None
    reply = dataclasses.replace(ctx.target, kind="reply")
    policy.check_model_allowed(ctx.rules, reply)
    policy.check_address(ctx.rules, reply)
    policy.check_address_owner(reply, ctx.user)
    _check_record_access(ctx, services, reply, deadline, unfiled=None)


def _check_record_access(ctx: MessageContext, services: Services, target: Target, deadline: float,
                         *, unfiled: list[str] | None) -> bool:
    assert ctx.user is not None
    odoo = _odoo(ctx, services)
    ctx.company_id = policy.bound_company(odoo, ctx.rules, deadline=deadline)
    # Claimed before the record search, which also asks Odoo whether the message is already filed
    # there: that answer holds until the post only while no other delivery of it can post.
    _claim(ctx, services)
    try:
        found = policy.check_record_access(
            odoo, target, ctx.user, rules=ctx.rules, sender_email=ctx.sender.email if ctx.sender else "",
            company=ctx.company_id, deadline=deadline, followers=ctx.followers, unfiled=unfiled)
    except RecordOfOtherCompany:
        # Said only to a sender who may read the record (policy.check_record_access).
        ctx.record_access = True
        raise
    ctx.record_access = True
    return found


# What a routed note@ / reply@ never says before the sender's access to its record is established:
# each tells something of a record the sender may not read (that it exists, is archived, is hidden
# from the gateway, its kind, its company, that a Message-ID is a note). Found by a review: any
# portal user could ask about any record by writing a made-up Odoo Message-ID in In-Reply-To.
# AlsoAddressedToNote too: whether a note address in To/Cc is of "another" record depends on where
# References led (the same review found it said before access, telling whether a Message-ID existed).
_RECORD_REVEALING = (ModelNotAllowed, ModelUnavailable, RecordNotFound, RecordArchived, RecordAccessDenied, AccessRuleUnsupported,
                     RecordOfOtherCompany, RecordHiddenFromGateway, AnswersNoteOfAnotherRecord, ReferencesTooMany,
                     AlsoAddressedToNote)


def said_refusal(ctx: MessageContext, refusal: Refusal) -> Refusal:
    """The refusal the sender is told: ``refusal`` itself, or for a plain note@ / reply@ whose record
    is not established as readable by the sender, the reply of a message that references no record.

    A record address (note+ / reply+) keeps its precise refusal: its token proves that the sender
    was given the address. A plain address is routed by headers anyone can write, so everything
    record-revealing says what a message of unknown references is told (routing.UNROUTED); the
    journal and the log keep the specific refusal (``concealed``). A record hidden from the
    gateway's own Odoo user stays a 451, so that the message waits while the administrator (told
    at ERROR) corrects it, with a text that names nothing.
    """
    if not (ctx.target.by_reference and ctx.target.model and not ctx.record_access
            and isinstance(refusal, _RECORD_REVEALING)):
        return refusal
    said: Refusal = (RoutedRecordUnavailable() if refusal.transient
                     else NoRecordReferenced(routing.UNROUTED))
    said.concealed = refusal
    return said


def _claim(ctx: MessageContext, services: Services) -> None:
    """Hold the message's in-flight claim until the end of the run (MessageInProgress, 451, if taken).

    On (Message-ID, record, Odoo): the same message to task 60 of another Odoo is another post,
    which must not wait for this one; to task 60 through another connection to the same database
    it is the same post.
    """
    if ctx.claim is None:
        assert ctx.message is not None
        claim = ExitStack()
        claim.enter_context(services.in_flight.claim(
            (ctx.message.message_id, ctx.target.model, ctx.target.res_id, ctx.odoo_identity)))
        ctx.claim = claim


def _extract_content(ctx: MessageContext, services: Services, deadline: float) -> None:
    assert ctx.message is not None
    # The text's steps give up at the deadline (MessageTookTooLong), between blocks and lines.
    with deadlines.deadline(deadline):
        ctx.body_html = content.extract_body(ctx.message, files=ctx.attachments, refused=ctx.refused_files)
        deadlines.check_deadline()
        if ctx.rules.content.remote_images == "link":
            ctx.body_html, linked = content.link_remote_images(ctx.body_html)
            if linked:
                ctx.journal_notes.append(f"remote-image-dropped:{linked}")


def _screen_attachments(ctx: MessageContext, services: Services, deadline: float) -> None:
    assert ctx.message is not None
    ctx.attachments, refused = attachments.screen(ctx.message.attachments, ctx.rules.attachments)
    ctx.refused_files = [str(item) for item in refused]
    ctx.journal_notes += [f"attachment-refused:{item}" for item in refused]


def _choose_recipients(ctx: MessageContext, services: Services, deadline: float) -> None:
    # The internal author of the note a reply answers is told of the answer whatever the rules say
    # of To/Cc, as Odoo's own mail gateway tells it (recipients.choose).
    to_cc = ctx.rules.kind_rules(ctx.target.kind).notify_recipients
    if not to_cc and ctx.parent_author_id is None:
        return
    chosen = recipients.choose(_odoo(ctx, services), ctx, own_domains=set(services.config.domains), to_cc=to_cc,
                               parent_author=ctx.parent_author_id, deadline=deadline)
    ctx.notify_partner_ids = chosen.partner_ids
    ctx.notify_emails = chosen.emails
    ctx.journal_notes += [f"recipient-dropped:{item}" for item in chosen.dropped]
    # The sender's email reached them, what the note says included: the note says so to its readers.
    ctx.external_recipients = recipients.shown(ctx, chosen.not_notified)


def _render(ctx: MessageContext, services: Services, deadline: float) -> None:
    assert ctx.message is not None and ctx.user is not None and ctx.sender is not None
    try:
        ctx.rendered_body = services.renderer.for_domain(ctx.rules.templates_path).render_body(
            ctx.target.kind, ctx.target.model,
            body=ctx.body_html, sender_name=ctx.user.name or ctx.message.from_name,
            sender_email=ctx.sender.email, subject=clean_subject(ctx.message.subject),
            dkim_domain=ctx.sender.dkim_domain,
            received_at=datetime.fromtimestamp(ctx.received_at, timezone.utc), res_id=ctx.target.res_id,
            refused_files=list(ctx.refused_files),
            attachment_names=[item.filename for item in ctx.attachments or [] if not item.inline],
            external_recipients=list(ctx.external_recipients),
        )
    except BodyNotShown as error:
        # Never a note without its text: deferred until the admin corrects the template and reloads.
        log.error("template %s rendered the %s of %s without the message's text%s; deferred (451) until it "
                  "shows {{ body }} on every message (docs/content.md \"Templates\")",
                  error.file, ctx.target.kind, ctx.target.address, f" ({error.reason})" if error.reason else "")
        raise TemplateLosesBody() from None


def _record_receipt(ctx: MessageContext, services: Services, deadline: float) -> None:
    assert ctx.message is not None and ctx.sender is not None
    try:
        # The rate limits once more, counted with the messages being filed right now and written in
        # one transaction with the receipt (ratelimit.begin_receipt): the early checks alone let as
        # many messages past a limit as were in flight at once.
        ctx.receipt_id = ratelimit.begin_receipt(
            services.journal, ctx.rules.rate_limit, ctx.sender.email, ctx.target,
            received_at=ctx.received_at, message_id=ctx.message.message_id, peer=ctx.peer, mail_from=ctx.mail_from,
            rcpt=ctx.target.address, from_address=ctx.message.from_address, kind=ctx.target.kind,
            sender=unsettled_key(ctx)[3], odoo_identity=ctx.odoo_identity, deadline=deadline)
    except JournalUnavailable as error:
        # A full or read-only disk: defer before posting, so that every note in Odoo has its row.
        raise _journal_refusal(ctx, "record-receipt", error) from None


def _post(ctx: MessageContext, services: Services, deadline: float) -> None:
    try:
        _post_once(ctx, services, deadline)
    except OdooUnavailable as error:
        if not error.access_denied:
            raise
        # Odoo answered, and refused: nothing was posted (an answered call is settled, so no
        # unsettled marker was left). Its own Odoo user lacks a right, which a retry does not give,
        # but an admin can (operator review: "Odoo is unavailable" for every note on a sale.order
        # the user could read but not write); the mail waits in the sender's queue meanwhile.
        odoo = _odoo(ctx, services)
        login = odoo.connection.login
        # The group per model (odoorights.KNOWN); the sale.order group was named for every model.
        hint = odoorights.post_hint(login, ctx.target.model)
        log.error("odoo %s: the gateway's Odoo user %s may not post on %s %s: Odoo refused %s: %s. %s; messages "
                  "to it are deferred (451) until then", odoo.name, login, ctx.target.model, ctx.target.res_id,
                  error.call or "the post", " ".join(str(error.odoo_message or "").split()),
                  hint[:1].upper() + hint[1:])
        raise GatewayMayNotPost(f"{ctx.target.model} {ctx.target.res_id}") from None


def _post_once(ctx: MessageContext, services: Services, deadline: float) -> None:
    assert ctx.message is not None
    odoo = _odoo(ctx, services)
    # Two deliveries of one message at once (a retry while the first is still posting) would
    # both find nothing and both post; only one may be between the search and the post.
    _claim(ctx, services)
    # An earlier delivery's post that timed out or lost its answer may still be running in Odoo
    # (the journal's unsettled_posts, shared by the workers); read once, and written only on that
    # rare path, so an ordinary note costs no journal write and no Odoo call more.
    key = unsettled_key(ctx)
    try:
        # The receipt of a delivery whose process died while posting counts as a marker too.
        unsettled_since = services.journal.unsettled_since(*key, own_receipt=ctx.receipt_id, deadline=deadline)
    except JournalUnavailable as error:
        # Whether an earlier post may still be running is unknown: defer rather than risk a second.
        raise _journal_refusal(ctx, "post", error) from None
    taken: frozenset[str] = frozenset()
    notes: frozenset[str] = frozenset()
    if not ctx.unfiled:
        # One of its Message-IDs is on the record (or the record search did not ask): filed
        # already only if by this sender; another author's message with that ID is not this one,
        # nor, for a public reply, the sender's own note of it (its Bcc note delivery came first).
        filed = post.look_up(odoo, ctx, deadline=deadline)
        if filed.existing is not None:
            ctx.odoo_message_id, ctx.duplicate = filed.existing, True
            if unsettled_since is not None:
                _settle(ctx, services, key)
            return
        taken, notes = filed.taken, filed.notes
    if unsettled_since is not None:
        # Not in Odoo (the record search or look_up said so, under the claim): either that post
        # failed, or Odoo is still running it. Only time tells them apart.
        refusal = unsettled_refusal(odoo, unsettled_since)
        if refusal is not None:
            raise refusal
        ctx.journal_notes.append(f"unsettled-post-expired:the post of {time.time() - unsettled_since:.0f} s ago "
                                 "is not in Odoo; posted again")
    try:
        if ctx.target.kind == "reply" and post.files_through_mail_gateway(odoo, ctx, deadline=deadline):
            ctx.odoo_message_id, ctx.duplicate = post.file_reply(odoo, ctx, taken=taken, notes=notes,
                                                                 deadline=deadline)
        else:
            # A note's notifications are answered to its record's note address, never to its
            # (portal) author nor to Odoo's catchall (post.note_reply_to).
            reply_to = post.note_reply_to(ctx, services.config.secrets) if ctx.target.kind == "note" else None
            ctx.odoo_message_id = post.post_message(odoo, ctx, message_id=post.posting_message_id(ctx, taken, notes),
                                                    reply_to=reply_to, deadline=deadline)
    except OdooUnavailable:
        if ctx.post_unsettled:
            _mark_unsettled(ctx, services, key)
        raise
    except ReplyMisattributed:
        # Filed, under another author: settled all the same (post.file_reply).
        if unsettled_since is not None:
            _settle(ctx, services, key)
        raise
    if unsettled_since is not None:
        _settle(ctx, services, key)


def unsettled_key(ctx: MessageContext) -> tuple[str, str, int, str, str]:
    """What an unsettled post is remembered by: Message-ID, record, its sender, and the Odoo (config.odoo_identity)."""
    assert ctx.message is not None and ctx.target.res_id is not None
    return (ctx.message.message_id, ctx.target.model, ctx.target.res_id, post.sender_address(ctx).strip().lower(),
            ctx.odoo_identity)


def unsettled_refusal(odoo: OdooPool, since: float) -> PostUnsettled | None:
    """The refusal of a message not in Odoo whose post was left unsettled at ``since``, while it may still run."""
    age = time.time() - since
    wait = odoo.connection.unsettled_post_seconds - age
    if wait <= 0:
        return None
    return PostUnsettled(f"its post {age:.0f} s ago got no answer, and it is not posted again "
                         f"for another {wait:.0f} s (odoo.unsettled_post_seconds)")


def _mark_unsettled(ctx: MessageContext, services: Services, key: tuple[str, str, int, str, str]) -> None:
    longest = max((connection.unsettled_post_seconds for connection in services.config.gateway.odoo.values()),
                  default=0.0)
    try:
        services.journal.mark_unsettled(*key, forget_before=time.time() - longest)
    except JournalUnavailable as error:
        # The reply is a 451 all the same; only a retry within Odoo's own time limit could double it.
        log.error("journal unavailable, unsettled post of %s on %s,%s not recorded: %s", key[0], key[1], key[2], error)
        return
    ctx.journal_notes.append("unsettled-post:Odoo may still be filing it; a retry that does not find it "
                             f"is deferred for {_odoo(ctx, services).connection.unsettled_post_seconds:g} s")


def _settle(ctx: MessageContext, services: Services, key: tuple[str, str, int, str, str]) -> None:
    try:
        services.journal.settle(*key)
    except JournalUnavailable as error:
        # Filed, and the reply says so; the marker is ignored once the message is found in Odoo.
        log.error("journal unavailable, settled post of %s on %s,%s not recorded: %s", key[0], key[1], key[2], error)


# The order a message goes through; each stage either fills in the context or raises a Refusal.
STAGES: tuple[Stage, ...] = (
    Stage("framing", "refuse bare CR or LF in the data", _check_framing),
    Stage("input-limits", "refuse NUL bytes, huge headers, 8-bit junk and MIME bombs", _check_input_limits),
    Stage("parse", "parse the MIME message", _parse),
    Stage("refuse-automatic", "refuse auto-replies, bounces and other reports, bulk mail, bare calendar replies and our own loops",
          _refuse_automatic),
    Stage("authenticate-sender", "require an aligned, valid DKIM signature on From", _authenticate_sender,
          too_slow=_authentication_too_slow),
    Stage("addressed-to-gateway", "refuse a message whose To and Cc name no gateway address (mail sent to "
          "someone else), a Bcc note only where the rules accept it", _check_addressed),
    Stage("rate-limit", "at most so many filed messages per sender, and per record of a record address",
          _rate_limit, too_slow=_journal_too_slow),
    Stage("identify-sender", "find the sender's active Odoo user", _identify_sender, too_slow=_odoo_too_slow),
    Stage("route", "find the record of a plain note@/reply@ from References (a plain note@: contributor first)",
          _route, too_slow=_odoo_too_slow),
    Stage("reply-all-as-note", "a reply also addressed to a note address, or answering an internal note, "
          "is filed as a note", _reply_all_as_note, too_slow=_odoo_too_slow),
    Stage("authorize", "model allowed, contributor group for notes, record access policy, then company", _authorize,
          too_slow=_odoo_too_slow),
    Stage("routed-rate-limit", "at most so many filed messages per record, for a routed note@/reply@ "
          "(after authorize: said only to a sender who may read the record)",
          _rate_limit_routed, too_slow=_journal_too_slow),
    Stage("screen-attachments", "apply the size limits and type deny-list to the files", _screen_attachments),
    Stage("extract-content", "take the body, trim quote and signature, sanitize its HTML", _extract_content),
    Stage("choose-recipients", "notify internal users named in To/Cc and the internal author of the note a "
          "reply answers, drop all others", _choose_recipients,
          too_slow=_odoo_too_slow),
    Stage("render", "render the note or reply template", _render),
    Stage("record-receipt", "write the durable receipt that the message is being filed, within the rate limits "
          "counted with the messages being filed right now", _record_receipt,
          too_slow=_journal_too_slow),
    Stage("post", "post once per Message-ID and sender with message_post", _post, too_slow=_odoo_too_slow),
)


def process(ctx: MessageContext, services: Services, *, deadline: float) -> MessageContext:
    """Run every stage; a refusal stops the run. Blocking: the SMTP layer calls it in a worker thread."""
    started = time.monotonic()
    try:
        # odoo_seconds: the time this thread waits on Odoo (gateway/odoo.py start_waiting), not
        # the stages' wall time, which holds the gateway's own work between the calls too.
        start_waiting()
        try:
            _run_stages(ctx, services, deadline)
        finally:
            ctx.odoo_seconds = stop_waiting()
        _say_refusal(ctx)
        # Under the claim: the outcome row removes the receipt, and the next delivery of the
        # message, which may take the claim as soon as it is let go, must not find this one's
        # receipt open and take it for a post left by a dead process (an unsettled post).
        journal(ctx, services, time.monotonic() - started, deadline=deadline)
    finally:
        if ctx.claim is not None:
            ctx.claim.close()
            ctx.claim = None
    notices.maybe_send(ctx, services)
    return ctx


def _run_stages(ctx: MessageContext, services: Services, deadline: float) -> None:
    for stage in STAGES:
        stage_started = time.monotonic()
        ctx.running_stage = stage.name
        try:
            stage.run(ctx, services, deadline)
        except MessageTookTooLong as refusal:
            # A stage that gave up at the deadline (deadlines.check_deadline) is named in the reply.
            ctx.refusal = refusal if refusal.detail else stage.too_slow_refusal()
        except Refusal as refusal:
            ctx.refusal = refusal
            if isinstance(refusal, OdooUnavailable) and refusal.odoo_error:
                # What Odoo answered, which the reply to the sender leaves out (review of Odoo faults:
                # a UserError on message_post left only "Odoo refused project.task.message_post").
                ctx.journal_notes.append(f"odoo-error:{refusal.odoo_error} on {refusal.call or 'a call'}: "
                                         + " ".join(str(refusal.odoo_message or "").split())[:300])
        except Exception as error:
            # A bug or an unforeseen fault must not bounce mail that a fixed gateway would accept:
            # defer it, and log everything an admin needs.
            log.exception("stage %s failed on %s", stage.name, ctx.target.address)
            ctx.refusal = stage_fault(stage.name, error, ctx, services)
        finally:
            ctx.stage_durations[stage.name] = time.monotonic() - stage_started
            ctx.running_stage = ""
        if ctx.refusal is not None:
            _answer_retry_of_filed(ctx, services, stage, deadline)
            break
        if time.monotonic() > deadline and stage is not STAGES[-1]:
            ctx.refusal = stage.too_slow_refusal()
            break


def stage_fault(stage: str, error: Exception, ctx: MessageContext, services: Services) -> Refusal:
    """The refusal of a stage that raised what no refusal foresees (a bug, a template that fails on
    this message): ``451 4.3.0 Internal error, try again later: stage <name>``, and for the operator
    (the journal, ``note-gateway check``) its cause: for the render stage the template's file and
    line, as check-config names them.

    ``note-gateway check`` gives the same (a review found it ending in a Python traceback on a
    message whose domain template fails, ``{% if "urgent" in subject|lower %}{{ subjet }}{% endif %}``,
    where the listener deferred it).
    """
    cause = f"{type(error).__name__}: {error}"
    if stage == "render":
        renderer = services.renderer.for_domain(ctx.rules.templates_path)
        try:
            name = renderer.body_template_name(ctx.target.kind, ctx.target.model)
        except ValueError:
            pass
        else:
            cause = renderer.describe_error(error, name)
    return InternalError(f"stage {stage}", internal=cause)


def _answer_retry_of_filed(ctx: MessageContext, services: Services, stage: Stage, deadline: float) -> None:
    """A permanent refusal of a message this sender already filed on this record becomes "250 Already filed".

    A retry comes after its first delivery was filed but its 250 was lost, or after a 451 for a
    post Odoo stored without answering (die_after_post); if in between the record was archived,
    the sender archived, taken out of the contributor group or unfollowed, the refusal stages
    (identify-sender, authorize) answered 550 before the post stage's look-up: the MTA bounced a
    note that is in Odoo, and the journal said refused (found by the lifecycle review). The rate
    limits already let such a retry through (ratelimit._is_retry); every refusal does now.

    Only on that path, so an ordinary note costs nothing more: a permanent (5xx) refusal of a
    record address (note+ / reply+) in a stage after the DKIM check passed, except the post stage,
    which looks the message up itself. Never an oracle: the sender is the DKIM-verified one, the
    question is whether her own message, this Message-ID on this record, is there (the journal's
    filed row from her address; in Odoo, a message of hers: her partner or her From, post.is_own),
    and no other message is ever answered. Odoo is asked only when the journal holds an unsettled
    post of this very message by this sender; found, it is settled. Not found while that post may
    still be running in Odoo (odoo.unsettled_post_seconds), it is deferred (PostUnsettled, as the
    post stage does) rather than bounced under a note that may yet land.
    """
    refusal = ctx.refusal
    if (refusal is None or refusal.transient or stage.name == "post" or ctx.sender is None or ctx.message is None
            or ctx.target.by_reference or not ctx.target.model or not ctx.target.res_id):
        return
    try:
        found = retry_of_filed(ctx, services, deadline)
    except Refusal as deferral:
        # Whether it is filed is not known yet: a 451, which a retry heals, not the bounce.
        ctx.refusal = deferral
        ctx.decision = "; ".join(filter(None, (ctx.decision, f"refused {refusal.name}: {refusal.operator_text}; "
                                                             "deferred: it may be filed already")))
        return
    except JournalUnavailable as error:
        ctx.refusal = _journal_refusal(ctx, stage.name, error)
        return
    except Exception as error:
        log.exception("the retry check of a refused message failed on %s", ctx.target.address)
        ctx.refusal = stage_fault(stage.name, error, ctx, services)
        return
    if found is None:
        return
    ctx.refusal, ctx.odoo_message_id, ctx.duplicate = None, found, True
    ctx.decision = "; ".join(filter(None, (ctx.decision, f"retry of a message filed as Odoo message {found}: "
                                                         f"not refused {refusal.name} ({refusal.operator_text})")))


def retry_of_filed(ctx: MessageContext, services: Services, deadline: float | None = None) -> int | None:
    """The Odoo message this sender's message is already filed as on its record, if it is (see
    _answer_retry_of_filed): the journal's filed row, else, for an unsettled earlier post only,
    Odoo's mail.message of hers under its Message-IDs. Raises PostUnsettled while that post may
    still be running, OdooUnavailable when Odoo cannot say, JournalUnavailable."""
    assert ctx.sender is not None and ctx.message is not None
    filed = services.journal.filed_as(
        ctx.message.message_id, ctx.sender.email, ctx.odoo_identity, ctx.target.model, ctx.target.res_id,
        public_reply_to=ctx.target.address if ctx.target.kind == "reply" else None, deadline=deadline)
    if filed is not None:
        return filed
    key = unsettled_key(ctx)
    since = services.journal.unsettled_since(*key, deadline=deadline)
    if since is None:
        return None
    odoo = _odoo(ctx, services)
    # A post an older gateway made (before 0.2.0) for the user whose login is this From: authored by
    # her partner, with her email, which is not the From (she is no sender now, UnknownSender or
    # SenderWithoutEmail). The journal's unsettled post of this very message from this address says
    # the gateway posted it for her (upgrade review: answered 550 on its retry, while in Odoo).
    authors = identity.login_partners(odoo, post.sender_address(ctx), deadline=deadline) if ctx.user is None \
        else frozenset()
    existing = post.look_up(odoo, ctx, deadline=deadline, authors=authors).existing
    if existing is not None:
        _settle(ctx, services, key)
        return existing
    refusal = unsettled_refusal(odoo, since)
    if refusal is not None:
        raise refusal
    return None


def _say_refusal(ctx: MessageContext) -> None:
    """The refusal the reply and the notice say (said_refusal); what they leave out goes to the
    decision, which the journal and the message's log line keep."""
    refusal = ctx.refusal
    if refusal is None:
        return
    ctx.refusal = said_refusal(ctx, refusal)
    if ctx.refusal is not refusal or refusal.internal:
        kept = f"refused {refusal.name}: {refusal.operator_text}"
        if ctx.refusal is not refusal:
            kept += f"; said as {ctx.refusal.name}, the sender's access to the record not being established"
        ctx.decision = "; ".join(filter(None, (ctx.decision, kept)))


def smtp_reply(ctx: MessageContext) -> str:
    if ctx.refusal is not None:
        return ctx.refusal.smtp_reply()
    if ctx.duplicate:
        return f"250 2.0.0 Already filed as Odoo message {ctx.odoo_message_id}"
    return f"250 2.0.0 Filed as Odoo message {ctx.odoo_message_id}"


def sent_reply(ctx: MessageContext) -> str:
    """The reply the message gets: the pipeline's, unless the listener already answered it at its
    last-resort timer (smtp.py), which then stays the reply; whichever comes first is the one sent."""
    with ctx.reply_lock:
        if ctx.listener_reply is None:
            ctx.reply_settled = True
            return smtp_reply(ctx)
    ctx.journal_notes.append(f"listener-answered:the listener answered at its last-resort timer; the pipeline "
                             f"ended {time.monotonic() - ctx.listener_answered_at:.1f} s later with {smtp_reply(ctx)}")
    return ctx.listener_reply


# How long after a message's deadline the listener stops waiting for its pipeline and answers
# itself (smtp.py); every Odoo call and DNS lookup ends by the deadline, so a pipeline still running
# then is the gateway's own work (pipeline.took_too_long names its stage).
LISTENER_GRACE_SECONDS = 5.0


def journal(ctx: MessageContext, services: Services, total_seconds: float, *, deadline: float | None = None) -> None:
    # The row holds the reply the sender got (review of Odoo faults: a slow login left the row
    # saying "the message deadline passed" while the listener had answered "took too long").
    now = time.monotonic()
    entry = JournalEntry.from_context(ctx, sent_reply(ctx), total_seconds)
    # Once sent_reply has returned, listener_reply no longer changes.
    said = ctx.listener_refusal if ctx.listener_reply is not None else None
    if said is not None:
        # The listener's last-resort reply went out first: the row's verdict, class and time are
        # those of that reply, which the sender got, not of the pipeline's outcome, which the
        # listener-answered note keeps. A note filed late is deferred here, its Odoo id kept; the
        # sender retries, and the retry is answered "Already filed" (found by a review of what
        # operators can see: the row said filed and the metrics counted it so, after a 451).
        entry.verdict = said.verdict
        entry.refusal_class = said.name
        entry.total_seconds = max(0.0, ctx.listener_answered_at - (now - total_seconds))
    # The outcome is written past the deadline too (a note filed at the deadline has its row), but
    # a journal another process holds is waited for only until a little before the listener gives
    # up on the pipeline (LISTENER_GRACE_SECONDS), so that the reply is still the pipeline's own.
    wait = WAIT_SECONDS if deadline is None else max(
        0.5, min(WAIT_SECONDS, deadline + LISTENER_GRACE_SECONDS - 2 - time.monotonic()))
    try:
        entry.id = services.journal.record(entry, receipt_id=ctx.receipt_id, wait=wait)
    except JournalUnavailable as error:
        # The reply still tells the truth: a filed note is in Odoo whether or not the journal
        # could say so, and a retry is recognised by its Message-ID there.
        log.error("journal unavailable, outcome not recorded: %s | %s", error, entry.smtp_reply)
    finally:
        # Metrics and the message's log line (issue 5), whether or not the journal kept it; a
        # message the listener answered was counted as its reply went out (smtp.py).
        observe.message_done(entry, already_counted=said is not None)
