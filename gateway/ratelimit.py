"""Rate limits per sender and per record, counted from the journal so they survive a restart."""

from __future__ import annotations

import time

from gateway.config import RateLimits
from gateway.context import Target
from gateway.journal import Journal
from gateway.refusals import RecordRateLimited, SenderRateLimited


def check_rate(journal: Journal, limits: RateLimits, sender_email: str, target: Target,
               now: float | None = None) -> None:
    """Raise a 450 refusal when the sender or the record has had its share of filed messages.

    Only filed messages count: a refused or deferred attempt costs Odoo nothing, and counting the
    retries of a deferred message would lock its sender out for an outage it did not cause. Two
    messages checked at once may both pass at the limit; the limit is a brake on floods, not a quota.
    """
    since = (time.time() if now is None else now) - limits.window_minutes * 60
    if limits.per_sender and journal.count_filed(since, from_address=sender_email) >= limits.per_sender:
        raise SenderRateLimited(f"{limits.per_sender} in {limits.window_minutes:g} minutes")
    if limits.per_record and journal.count_filed(since, model=target.model, res_id=target.res_id) >= limits.per_record:
        raise RecordRateLimited(f"{limits.per_record} in {limits.window_minutes:g} minutes")
