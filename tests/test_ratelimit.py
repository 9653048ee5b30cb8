"""Rate limits count filed messages in the journal within the window, per sender and alias domain, and per record
of one Odoo, also the record a plain address is routed to."""

import threading
import time

import pytest

from conftest import ALIAS_DOMAIN, SECRET, SELECTOR, Mailer, write_config
from serving import Port, filed_counts, send

from gateway import address
from gateway.config import RateLimits, load_config
from gateway.testing.configs import fresh_secret
from gateway.context import Target
from gateway.journal import Journal, JournalEntry, LimitReached, ReceiptLimits
from gateway.pipeline import Services
from gateway.ratelimit import check_rate
from gateway.refusals import RecordRateLimited, SenderRateLimited
from gateway.smtp import ThreadedGateway
from gateway.testing.dkim import sign
from gateway.testing.odoo import TestOdoo
from gateway.testing.odoo_demo import DEMO_API_KEY, PRIVATE_TASK_ID, SALE_ORDER_ID, TASK_ID
from gateway.testing.sending import compose, deliver

TASK = Target("note", "notes.example.com", "project.task", 60, "note+project.task-60-x@notes.example.com")
OTHER = Target("note", "notes.example.com", "project.task", 61, "note+project.task-61-x@notes.example.com")


def _filed(journal, sender, target, minutes_ago, verdict="filed"):
    journal.record(JournalEntry(verdict=verdict, received_at=time.time() - minutes_ago * 60, from_address=sender,
                                model=target.model, res_id=target.res_id))


def test_only_filed_messages_within_the_window_count(tmp_path):
    limits = RateLimits(per_sender=2, per_record=0, window_minutes=60)
    with Journal(tmp_path / "journal.sqlite3") as journal:
        _filed(journal, "paula@example.com", TASK, 90)               # outside the window
        _filed(journal, "paula@example.com", TASK, 5, "deferred")    # a deferral costs nothing
        _filed(journal, "paula@example.com", TASK, 5, "refused")
        _filed(journal, "Paula@Example.com", OTHER, 10)
        check_rate(journal, limits, "paula@example.com", TASK)
        _filed(journal, "paula@example.com", OTHER, 1)
        with pytest.raises(SenderRateLimited):
            check_rate(journal, limits, "paula@example.com", TASK)
        check_rate(journal, limits, "peter@example.com", TASK)


def test_per_record_limit_counts_every_sender(tmp_path):
    limits = RateLimits(per_sender=0, per_record=2, window_minutes=60)
    with Journal(tmp_path / "journal.sqlite3") as journal:
        _filed(journal, "paula@example.com", TASK, 1)
        _filed(journal, "peter@example.com", TASK, 2)
        with pytest.raises(RecordRateLimited):
            check_rate(journal, limits, "joel@example.com", TASK)
        check_rate(journal, limits, "joel@example.com", OTHER)


def test_a_message_the_sender_filed_on_the_record_passes_at_the_limit(tmp_path):
    limits = RateLimits(per_sender=1, per_record=1, window_minutes=60)
    with Journal(tmp_path / "journal.sqlite3") as journal:
        journal.record(JournalEntry(verdict="filed", received_at=time.time() - 60, message_id="<a@example.com>",
                                    from_address="Paula@example.com", model=TASK.model, res_id=TASK.res_id))
        check_rate(journal, limits, "paula@example.com", TASK, message_id="<a@example.com>")
        with pytest.raises(SenderRateLimited):
            check_rate(journal, limits, "paula@example.com", TASK, message_id="<b@example.com>")
        with pytest.raises(SenderRateLimited):   # not filed on this record
            check_rate(journal, limits, "paula@example.com", OTHER, message_id="<a@example.com>")
        with pytest.raises(RecordRateLimited):   # another sender's message with that Message-ID
            check_rate(journal, limits, "peter@example.com", TASK, message_id="<a@example.com>")


def _begin(journal, limits, sender, target, message_id, domain="notes.example.com"):
    return journal.begin(received_at=time.time(), message_id=message_id, peer="127.0.0.1", mail_from=sender,
                         rcpt=f"note+x@{domain}", from_address=sender, kind="note", model=target.model,
                         res_id=target.res_id, limits=ReceiptLimits(since=time.time() - 3600, sender=sender,
                                                                    domain=domain, **limits))


def test_a_receipt_is_written_only_within_the_limits_counting_the_open_receipts(tmp_path):
    with Journal(tmp_path / "journal.sqlite3") as journal:
        _filed(journal, "paula@example.com", TASK, 5)
        _begin(journal, {"per_sender": 3}, "paula@example.com", OTHER, "<a@example.com>")   # being filed
        _begin(journal, {"per_sender": 3}, "Paula@Example.com", TASK, "<b@example.com>")
        with pytest.raises(LimitReached, match="sender"):
            _begin(journal, {"per_sender": 3}, "paula@example.com", OTHER, "<c@example.com>")
        # Another alias domain's sender count, and another sender, are apart.
        _begin(journal, {"per_sender": 3}, "paula@example.com", TASK, "<d@example.com>", domain="notes.second.example")
        _begin(journal, {"per_sender": 3}, "peter@example.com", TASK, "<e@example.com>")
        # TASK has one filed and three open receipts.
        with pytest.raises(LimitReached, match="record"):
            _begin(journal, {"per_record": 4}, "joel@example.com", TASK, "<f@example.com>")
        _begin(journal, {"per_record": 4}, "joel@example.com", OTHER, "<f@example.com>")
        assert journal.open_receipts() == 5


def test_a_receipt_of_a_message_the_sender_filed_on_the_record_passes_at_the_limit(tmp_path):
    with Journal(tmp_path / "journal.sqlite3") as journal:
        journal.record(JournalEntry(verdict="filed", received_at=time.time() - 60, message_id="<a@example.com>",
                                    from_address="Paula@example.com", model=TASK.model, res_id=TASK.res_id))
        _begin(journal, {"per_sender": 1, "per_record": 1}, "paula@example.com", TASK, "<a@example.com>")
        with pytest.raises(LimitReached):
            _begin(journal, {"per_sender": 1, "per_record": 1}, "paula@example.com", OTHER, "<a@example.com>")


# --- Over loopback SMTP: the record of a routed message, and the scope of each count ----------------

SECOND_DOMAIN = "notes.second.example"
SECOND_SECRET = fresh_secret()  # made for this run: a secret written here is refused
PAULA = "portal.contrib@example.com"
NOTE = f"note@{ALIAS_DOMAIN}"
REPLY = f"reply@{ALIAS_DOMAIN}"


@pytest.fixture
def second_odoo():
    with TestOdoo.with_demo_data(database="second") as odoo:
        yield odoo


@pytest.fixture
def two_domain_gateway(tmp_path, test_odoo, dns_server):
    """A gateway with a second alias domain, on the Odoo given (its own connection) or on "main"; both
    domains with the same [rate_limit]."""
    started = []

    def start(limits: str, second_odoo: TestOdoo | None = None) -> ThreadedGateway:
        config_path = write_config(tmp_path, test_odoo, dns_server.port, rules_extra=f"[rate_limit]\n{limits}\n")
        connection = "main"
        if second_odoo is not None:
            connection = "second"
            (tmp_path / "second-key").write_text(DEMO_API_KEY)
            with config_path.open("a") as gateway_file:
                gateway_file.write(f'\n[odoo.second]\nurl = "{second_odoo.url}"\ndatabase = "second"\n'
                                   'login = "gateway"\napi_key_file = "second-key"\ntimeout = 5\n')
        (tmp_path / "rules" / f"{SECOND_DOMAIN}.toml").write_text(
            f'domain = "{SECOND_DOMAIN}"\nodoo = "{connection}"\nsecrets = ["{SECOND_SECRET}"]\n'
            f'[note]\nmodels = ["project.task", "sale.order"]\n'
            f'contributor_group = "note_gateway.group_portal_note_contributor"\n[rate_limit]\n{limits}\n')
        services = Services.build(load_config(config_path))
        server = ThreadedGateway(services).start()
        started.append((server, services))
        return server

    yield start
    for server, services in started:
        server.stop()
        services.close()


def _note(dkim_keys, server, to, message_id=None, references=None) -> str:
    raw = compose(PAULA, to, "Pump P-7", "The seal is worn.", message_id=message_id)
    if references:
        raw = f"References: {references}\r\n".encode() + raw
    return deliver(sign(raw, dkim_keys["example.com"], "example.com", SELECTOR), to, port=server.port,
                   mail_from=PAULA)


def _first_address(model, res_id):
    return address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", model, res_id)


def _second_address(model, res_id):
    return address.mint(SECOND_SECRET.encode(), SECOND_DOMAIN, "note", model, res_id)


def test_the_record_limit_applies_to_a_plain_address_once_it_is_routed(test_odoo, start_gateway, dns_server,
                                                                      dkim_keys):
    # Found by a design review: rate-limit ran before route, so a message to plain note@ was counted
    # against model "" and id 0, never against its record; three routed notes on one task with
    # per_record = 1 were all filed.
    gateway = start_gateway(dns_server.port, rules_extra="[rate_limit]\nper_sender = 0\nper_record = 1\n")
    task = f"<1.2-openerp-{TASK_ID}-project.task@testodoo>"
    order = f"<1.2-openerp-{SALE_ORDER_ID}-sale.order@testodoo>"
    first = _note(dkim_keys, gateway, NOTE, "<routed-1@example.com>", task)
    assert first.startswith("250 2.0.0 Filed as Odoo message ")
    assert _note(dkim_keys, gateway, NOTE, references=task) == \
        "450 4.7.1 Too many messages to this record, try again later: 1 in 120 minutes"
    assert _note(dkim_keys, gateway, _first_address("project.task", TASK_ID)).startswith("450 4.7.1 ")
    # Another record is another count, and the retry of the routed note is recognised, not deferred.
    assert _note(dkim_keys, gateway, NOTE, references=order).startswith("250 2.0.0 Filed")
    assert _note(dkim_keys, gateway, NOTE, "<routed-1@example.com>", task) == \
        first.replace("Filed as", "Already filed as")
    assert [(post.model, post.args) for post in test_odoo.posts()] == [
        ("project.task", [[TASK_ID]]), ("sale.order", [[SALE_ORDER_ID]])]
    with Journal(gateway.services.config.journal_path) as journal:
        refused = journal.recent(verdict="deferred")[-1]
    assert (refused.refusal_class, refused.model, refused.res_id) == ("RecordRateLimited", "project.task", TASK_ID)
    assert list(refused.durations)[-2:] == ["authorize", "routed-rate-limit"]


def test_a_routed_record_at_its_limit_is_not_told_to_a_sender_who_cannot_read_it(test_odoo, start_gateway,
                                                                                 dns_server, dkim_keys):
    # Found by two reviews: routed-rate-limit ran between route and authorize, so a portal user
    # writing to plain note@/reply@ with References naming a message of a record she may not read
    # was told "450 Too many messages to this record" when it was busy, and the 550 of an unknown
    # Message-ID when it was not: whether a record she cannot read gets mail. The record's limit is
    # now checked after authorize; she hears the answer of an unknown Message-ID either way.
    gateway = start_gateway(dns_server.port, rules_extra="[rate_limit]\nper_sender = 0\nper_record = 1\n")
    marc = "mark.brown23@example.com"
    private = f"<1.2-openerp-{PRIVATE_TASK_ID}-project.task@testodoo>"

    def send(sender, to, references=None, message_id=None):
        raw = compose(sender, to, "Pump P-7", "The seal is worn.", message_id=message_id)
        if references:
            raw = f"References: {references}\r\n".encode() + raw
        return deliver(sign(raw, dkim_keys["example.com"], "example.com", SELECTOR), to, port=gateway.port,
                       mail_from=sender)

    # Marc, an internal user who may read the private task, gives it its share.
    assert send(marc, _first_address("project.task", PRIVATE_TASK_ID)).startswith("250 2.0.0 Filed")
    unknown = {to: send(PAULA, to, "<no-such-message@example.com>") for to in (NOTE, REPLY)}
    assert unknown[NOTE] == unknown[REPLY] == (
        "550 5.1.1 No record found for this message: reply to an Odoo notification, or write to the record's own "
        "note+ or reply+ address: it references no message of a record this sender may post on")
    for to in (NOTE, REPLY):
        assert send(PAULA, to, private) == unknown[to]
    # Marc, who may read it, is told that the record has had its share.
    assert send(marc, NOTE, private) == "450 4.7.1 Too many messages to this record, try again later: 1 in 120 minutes"
    assert [post.args for post in test_odoo.posts()] == [[[PRIVATE_TASK_ID]]]
    with Journal(gateway.services.config.journal_path) as journal:
        deferred = journal.recent(verdict="deferred")[-1]
    assert (deferred.refusal_class, deferred.res_id) == ("RecordRateLimited", PRIVATE_TASK_ID)
    assert list(deferred.durations)[-2:] == ["authorize", "routed-rate-limit"]


def test_a_retry_of_a_routed_message_at_the_sender_limit_is_already_filed(test_odoo, start_gateway, dns_server,
                                                                         dkim_keys):
    # The sender's limit is checked before the record of a plain address is known: a message this
    # sender filed on a record of this Odoo is a retry, which the post stage finds filed.
    gateway = start_gateway(dns_server.port, rules_extra="[rate_limit]\nper_sender = 1\nper_record = 0\n")
    task = f"<1.2-openerp-{TASK_ID}-project.task@testodoo>"
    first = _note(dkim_keys, gateway, NOTE, "<routed-2@example.com>", task)
    assert first.startswith("250 2.0.0 Filed as Odoo message ")
    assert _note(dkim_keys, gateway, NOTE, "<routed-2@example.com>", task) == \
        first.replace("Filed as", "Already filed as")
    assert _note(dkim_keys, gateway, NOTE, references=task) == \
        "450 4.7.1 Too many messages from this sender, try again later: 1 in 120 minutes"
    assert len(test_odoo.posts()) == 1


def test_the_record_limit_counts_the_records_of_each_odoo_apart(test_odoo, second_odoo, two_domain_gateway,
                                                               dkim_keys):
    # Found by a rules review: task 60 of another Odoo database was refused once task 60 of the
    # first had its share, since the journal counted (model, id) over every Odoo.
    gateway = two_domain_gateway("per_sender = 0\nper_record = 2", second_odoo)
    first, second = _first_address("project.task", TASK_ID), _second_address("project.task", TASK_ID)
    assert [_note(dkim_keys, gateway, first)[:3] for _ in range(3)] == ["250", "250", "450"]
    assert _note(dkim_keys, gateway, second, "<other-odoo@example.com>").startswith("250 2.0.0 Filed")
    assert [post.kwargs["message_id"] for post in second_odoo.posts()] == ["<other-odoo@example.com>"]
    assert len(test_odoo.posts()) == 2


def test_two_domains_on_one_odoo_share_its_records_count_but_not_the_senders(test_odoo, two_domain_gateway,
                                                                             dkim_keys):
    # A sender's count is per alias domain (each domain's [rate_limit] governs its own mail); a
    # record's is per Odoo, whichever domain its messages come through.
    gateway = two_domain_gateway("per_sender = 2\nper_record = 2")
    first = _first_address("project.task", TASK_ID)
    assert [_note(dkim_keys, gateway, first)[:3] for _ in range(2)] == ["250", "250"]
    assert _note(dkim_keys, gateway, first) == \
        "450 4.7.1 Too many messages from this sender, try again later: 2 in 120 minutes"
    assert _note(dkim_keys, gateway, _second_address("project.task", TASK_ID)) == \
        "450 4.7.1 Too many messages to this record, try again later: 2 in 120 minutes"
    assert _note(dkim_keys, gateway, _second_address("sale.order", SALE_ORDER_ID)).startswith("250 2.0.0 Filed")
    assert len(test_odoo.posts()) == 3


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("limit", ["per_sender", "per_record"])
def test_messages_in_flight_at_once_do_not_pass_a_limit_together(test_odoo, serve, dkim_keys, limit, workers):
    # Found by a concurrency review: only filed messages counted, written when their post ended, so
    # 12 distinct notes at once with a limit of 3 were all filed (1 worker and 2). The receipt before
    # the post counts the messages being filed too, in one transaction that workers take in turn.
    other = "per_record" if limit == "per_sender" else "per_sender"
    gateway = serve(workers=workers, rules_extra=f"[rate_limit]\n{limit} = 3\n{other} = 0\n", pool_size=16)
    mailer = Mailer(Port(gateway.port), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    ids = [f"<in-flight-{n}@example.com>" for n in range(10)]
    raws = [mailer.sign(mailer.message("note_from_contributor.eml", to, message_id)) for message_id in ids]
    # Every message passes the early check while the first posts are still running.
    test_odoo.latency = {"message_post": 1.0}
    replies: list[str] = []
    threads = [threading.Thread(target=lambda raw=raw: replies.append(send(raw, to, gateway.port))) for raw in raws]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    said = "from this sender" if limit == "per_sender" else "to this record"
    filed_replies = [reply for reply in replies if reply.startswith("250 2.0.0 Filed as Odoo message ")]
    assert len(replies) == 10 and len(filed_replies) == 3, replies
    assert set(replies) - set(filed_replies) == {f"450 4.7.1 Too many messages {said}, try again later: 3 in 120 minutes"}
    assert sum(filed_counts(test_odoo, ids).values()) == 3
    # A retry of a filed one still passes at the limit: Already filed.
    filed = next(raw for raw, message_id in zip(raws, ids) if filed_counts(test_odoo, [message_id])[message_id])
    test_odoo.latency = None
    assert send(filed, to, gateway.port).startswith("250 2.0.0 Already filed as Odoo message ")
    assert gateway.stop() == 0
    with Journal(gateway.config_path.parent / "journal.sqlite3") as journal:
        assert journal.open_receipts() == 0
        deferred = journal.recent(verdict="deferred")
    assert len(deferred) == 7
