"""Rate limits per sender and per record, counted from the journal so they survive a restart."""

from __future__ import annotations

import time

from gateway.config import RateLimits
from gateway.context import Target
from gateway.journal import Journal, LimitReached, ReceiptLimits
from gateway.refusals import RecordRateLimited, SenderRateLimited

# A sender's filed messages are counted per alias domain: each domain's [rate_limit] governs the
# mail sent through it, and what a sender files through another domain (perhaps for another
# customer's Odoo) uses none of it. A record's are counted per Odoo (``odoo``: config.odoo_identity,
# the URL and database of the domain's [odoo.NAME] connection): project.task 60 of another Odoo is
# another record, and alias domains on one Odoo, through one connection or several to its
# database, share the counts of its records, which receive their messages alike.


def check_rate(journal: Journal, limits: RateLimits, sender_email: str, target: Target,
               now: float | None = None, *, odoo: str = "", message_id: str | None = None,
               deadline: float | None = None) -> None:
    """Raise a 450 refusal when the sender, or the record of a record address, has had its share.

    Only filed messages count: a refused or deferred attempt costs Odoo nothing, and counting the
    retries of a deferred message would lock its sender out for an outage it did not cause. Early,
    before any Odoo call: messages checked at once may all pass here at the limit, and
    ``begin_receipt`` counts again, with the messages being filed right now, before the post.

    The record of a plain note@ / reply@ address is not known yet (``target.by_reference``): its
    limit is checked by ``check_record`` once the route stage found it.

    A message this sender already filed on this record (``message_id``; a retry after a lost 250)
    is never held back: it files nothing new, and the post stage answers "Already filed", where a
    450 would keep it queued at the sender's MTA and could end in a bounce for a filed note. The
    journal is asked only when a limit is reached. ``deadline`` (time.monotonic()): the message's,
    beyond which a journal locked by another process is not waited for (JournalBusy).
    """
    since = (time.time() if now is None else now) - limits.window_minutes * 60
    refusal = None
    if limits.per_sender and journal.count_filed(since, domain=target.domain, from_address=sender_email,
                                                 deadline=deadline) >= limits.per_sender:
        refusal = SenderRateLimited(f"{limits.per_sender} in {limits.window_minutes:g} minutes")
    elif not target.by_reference:
        refusal = _record_refusal(journal, limits, target, since, odoo, deadline)
    if refusal is not None and not _is_retry(journal, sender_email, target, odoo, message_id, deadline):
        raise refusal


def check_record(journal: Journal, limits: RateLimits, sender_email: str, target: Target,
                 now: float | None = None, *, odoo: str = "", message_id: str | None = None,
                 deadline: float | None = None) -> None:
    """Raise a 450 refusal when the record has had its share (as ``check_rate``), for a routed message."""
    since = (time.time() if now is None else now) - limits.window_minutes * 60
    refusal = _record_refusal(journal, limits, target, since, odoo, deadline)
    if refusal is not None and not _is_retry(journal, sender_email, target, odoo, message_id, deadline):
        raise refusal


def _record_refusal(journal: Journal, limits: RateLimits, target: Target, since: float,
                    odoo: str, deadline: float | None = None) -> RecordRateLimited | None:
    if limits.per_record and journal.count_filed(since, odoo_identity=odoo, model=target.model,
                                                 res_id=target.res_id, deadline=deadline) >= limits.per_record:
        return RecordRateLimited(f"{limits.per_record} in {limits.window_minutes:g} minutes")
    return None


def _is_retry(journal: Journal, sender_email: str, target: Target, odoo: str, message_id: str | None,
              deadline: float | None = None) -> bool:
    # Before a plain address is routed, a message this sender filed on any record of this Odoo:
    # the same References route it to the same record, where the post stage finds it filed.
    if not message_id:
        return False
    if not target.model:
        return journal.was_filed(message_id, sender_email, odoo, deadline=deadline)
    return journal.was_filed(message_id, sender_email, odoo, target.model, target.res_id, deadline=deadline)


def begin_receipt(journal: Journal, limits: RateLimits, sender_email: str, target: Target, *,
                  now: float | None = None, deadline: float | None = None, **receipt) -> int:
    """Write the message's receipt (Journal.begin, ``receipt`` its fields) if both limits still allow it.

    The check before the post, atomic with the receipt: filed messages and open receipts (messages
    being filed by any thread or worker) are counted in the transaction that writes this one, so
    that N messages at once cannot all pass a limit that leaves room for fewer (found by a
    concurrency review: 12 parallel notes with per_sender = 3, or per_record = 3, were all filed).
    The same 450 as check_rate; a retry of a message this sender filed on this record passes.
    """
    since = (time.time() if now is None else now) - limits.window_minutes * 60
    counted = ReceiptLimits(since=since, sender=sender_email, domain=target.domain,
                            per_sender=limits.per_sender, per_record=limits.per_record)
    try:
        return journal.begin(model=target.model, res_id=target.res_id, limits=counted, deadline=deadline, **receipt)
    except LimitReached as reached:
        if reached.which == "sender":
            raise SenderRateLimited(f"{limits.per_sender} in {limits.window_minutes:g} minutes") from None
        raise RecordRateLimited(f"{limits.per_record} in {limits.window_minutes:g} minutes") from None
