"""Several alias domains in one gateway, each on its own Odoo, and domains bound to a company."""

from __future__ import annotations

import textwrap
import threading
import time

import pytest

from conftest import ALIAS_DOMAIN, SECRET, SELECTOR, write_config

from gateway import address, cli, observe
from gateway.config import load_config
from gateway.testing.configs import fresh_secret
from gateway.journal import Journal, JournalEntry
from gateway.pipeline import Services
from gateway.smtp import ThreadedGateway
from gateway.testing.dkim import sign
from gateway.testing.odoo import TestOdoo
from gateway.testing.odoo_demo import DEMO_API_KEY, GATEWAY_UID, PAULA_EMAIL, PAULA_PARTNER_ID, SALE_ORDER_ID, TASK_ID
from gateway.testing.sending import compose, deliver

SECOND_DOMAIN = "notes.second.example"
SECOND_SECRET = fresh_secret()  # made for this run: a secret written here is refused


@pytest.fixture
def second_odoo():
    with TestOdoo.with_demo_data(database="second") as odoo:
        yield odoo


def _start(config_path):
    services = Services.build(load_config(config_path))
    return services, ThreadedGateway(services).start()


@pytest.fixture
def two_odoo_gateway(tmp_path, test_odoo, second_odoo, dns_server):
    config_path = write_config(tmp_path, test_odoo, dns_server.port)
    (tmp_path / "second-key").write_text(DEMO_API_KEY)
    with (tmp_path / "gateway.toml").open("a") as gateway_file:
        gateway_file.write(textwrap.dedent(f"""
            [odoo.second]
            url = "{second_odoo.url}"
            database = "second"
            login = "gateway"
            api_key_file = "second-key"
            timeout = 5
        """))
    (tmp_path / "rules" / f"{SECOND_DOMAIN}.toml").write_text(textwrap.dedent(f"""
        domain = "{SECOND_DOMAIN}"
        odoo = "second"
        secrets = ["{SECOND_SECRET}"]
        [note]
        models = ["project.task"]
    """))
    services, server = _start(config_path)
    yield server
    server.stop()
    services.close()


def _send(gateway, dkim_keys, to, sender=PAULA_EMAIL, message_id=None):
    raw = compose(sender, to, "Pump", "The seal is worn.", message_id=message_id)
    return deliver(sign(raw, dkim_keys["example.com"], "example.com", SELECTOR), to, port=gateway.port,
                   mail_from=sender)


def test_each_alias_domain_posts_to_its_own_odoo(test_odoo, second_odoo, two_odoo_gateway, dkim_keys):
    first = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "project.task", TASK_ID)
    second = address.mint(SECOND_SECRET.encode(), SECOND_DOMAIN, "note", "project.task", TASK_ID)
    assert _send(two_odoo_gateway, dkim_keys, first, message_id="<one@example.com>").startswith("250 ")
    assert _send(two_odoo_gateway, dkim_keys, second, message_id="<two@example.com>").startswith("250 ")
    assert [post.kwargs["message_id"] for post in test_odoo.posts()] == ["<one@example.com>"]
    assert [post.kwargs["message_id"] for post in second_odoo.posts()] == ["<two@example.com>"]
    # The second domain allows notes on tasks only, and its token is signed with its own secret.
    order = address.mint(SECOND_SECRET.encode(), SECOND_DOMAIN, "note", "sale.order", SALE_ORDER_ID)
    assert _send(two_odoo_gateway, dkim_keys, order).startswith("550 5.7.1 Posting by email is not enabled")
    forged = address.mint(SECRET.encode(), SECOND_DOMAIN, "note", "project.task", TASK_ID)
    assert _send(two_odoo_gateway, dkim_keys, forged).startswith("550 5.1.1 No such gateway address")


def test_a_note_address_of_the_same_record_on_another_odoo_refuses_the_reply(test_odoo, second_odoo,
                                                                             two_odoo_gateway, dkim_keys):
    # Found by a mutation audit: reply-all turns a reply into a note only for a note address of the
    # same record, and task 60 of the second domain is another Odoo's task 60, not this one. Nor
    # does a plain note@ of a domain on another Odoo count. The reply was then filed publicly; a
    # review found that a message also meant as a note elsewhere must not be (docs/rules.md), so it
    # is now refused, and still not filed as a note on this Odoo.
    reply_to = address.mint(SECRET.encode(), ALIAS_DOMAIN, "reply", "project.task", TASK_ID)
    other_note = address.mint(SECOND_SECRET.encode(), SECOND_DOMAIN, "note", "project.task", TASK_ID)
    for number, cc in enumerate((other_note, f"note@{SECOND_DOMAIN}")):
        raw = b"Cc: " + cc.encode() + b"\r\n" + compose(PAULA_EMAIL, reply_to, "Re: Pump", "Seal replaced.",
                                                          message_id=f"<public-{number}@example.com>")
        reply = deliver(sign(raw, dkim_keys["example.com"], "example.com", SELECTOR), reply_to,
                        port=two_odoo_gateway.port, mail_from=PAULA_EMAIL)
        assert reply == ("550 5.7.1 The message is also addressed to an internal note address: send the public "
                         "reply separately, without the note address in To or Cc"), reply
    assert test_odoo.filings() == []
    assert second_odoo.filings() == []


def test_an_address_of_any_alias_domain_in_to_or_cc_addresses_the_gateway(test_odoo, second_odoo, two_odoo_gateway,
                                                                          dkim_keys):
    # A message is filed only if its To or Cc names the gateway (gateway/addressed.py); an address of
    # another of its alias domains does, as a reply-all may name a note+ of one and a reply+ of another.
    first = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "project.task", TASK_ID)
    second = address.mint(SECOND_SECRET.encode(), SECOND_DOMAIN, "note", "project.task", TASK_ID)
    raw = compose(PAULA_EMAIL, first, "Pump", "The seal is worn.", message_id="<both@example.com>")
    reply = deliver(sign(raw, dkim_keys["example.com"], "example.com", SELECTOR), second,
                    port=two_odoo_gateway.port, mail_from=PAULA_EMAIL)
    assert reply.startswith("250 2.0.0 Filed as Odoo message "), reply
    assert [post.kwargs["message_id"] for post in second_odoo.posts()] == ["<both@example.com>"]


def _two_connections(tmp_path, odoo, dns_port, rate_limit=""):
    """The second alias domain on a second [odoo.*] connection to the SAME database (one integration
    user per company, say: docs/rules.md)."""
    config_path = write_config(tmp_path, odoo, dns_port, rules_extra=rate_limit)
    with (tmp_path / "gateway.toml").open("a") as gateway_file:
        gateway_file.write(textwrap.dedent(f"""
            [odoo.other_company]
            url = "{odoo.url}/"
            database = "{odoo.database}"
            login = "gateway"
            api_key_file = "odoo-api-key"
            timeout = 5
        """))
    (tmp_path / "rules" / f"{SECOND_DOMAIN}.toml").write_text(textwrap.dedent(f"""
        domain = "{SECOND_DOMAIN}"
        odoo = "other_company"
        secrets = ["{SECOND_SECRET}"]
        [note]
        models = ["project.task"]
    """) + rate_limit)
    return _start(config_path)


@pytest.fixture
def two_connections_gateway(tmp_path, test_odoo, dns_server):
    services, server = _two_connections(tmp_path, test_odoo, dns_server.port)
    yield server
    server.stop()
    services.close()


def test_a_note_address_of_another_connection_to_the_same_database_keeps_a_reply_internal(
        tmp_path, test_odoo, two_connections_gateway, dkim_keys):
    # Found by the multi-Odoo review: "the same Odoo" was the same connection NAME, so a reply+ of
    # the first domain with a note+ of the second (another connection, same database, same task)
    # in Cc was filed PUBLIC, and the note+ delivery then answered "Already filed": the internal
    # text public, no note. The same URL and database are one Odoo, whatever the connections' names.
    reply_to = address.mint(SECRET.encode(), ALIAS_DOMAIN, "reply", "project.task", TASK_ID)
    note_to = address.mint(SECOND_SECRET.encode(), SECOND_DOMAIN, "note", "project.task", TASK_ID)
    raw = sign(compose(PAULA_EMAIL, f"{reply_to}, {note_to}", "Re: Pump", "INTERNAL: margin is 40%",
                       message_id="<both@example.com>"), dkim_keys["example.com"], "example.com", SELECTOR)
    first = deliver(raw, reply_to, port=two_connections_gateway.port, mail_from=PAULA_EMAIL)
    assert first.startswith("250 2.0.0 Filed as Odoo message "), first
    second = deliver(raw, note_to, port=two_connections_gateway.port, mail_from=PAULA_EMAIL)
    assert second == first.replace("Filed", "Already filed"), second
    assert [filing.subtype_xmlid for filing in test_odoo.filings()] == ["mail.mt_note"]
    with Journal(tmp_path / "journal.sqlite3", read_only=True) as journal:
        assert [entry.decision for entry in journal.recent(2)[::-1]] == [
            f"reply-all with {note_to}: filed as a note, never public", ""]


def test_a_records_rate_limit_counts_its_messages_through_every_connection_to_its_database(
        tmp_path, test_odoo, dns_server, dkim_keys):
    # Task 60 through either connection is one record of one Odoo: its limit is not doubled by a
    # second connection (it counted per connection name).
    services, server = _two_connections(tmp_path, test_odoo, dns_server.port, "\n[rate_limit]\nper_record = 1\n")
    try:
        first = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "project.task", TASK_ID)
        second = address.mint(SECOND_SECRET.encode(), SECOND_DOMAIN, "note", "project.task", TASK_ID)
        assert _send(server, dkim_keys, first, message_id="<one@example.com>").startswith("250 ")
        reply = _send(server, dkim_keys, second, message_id="<two@example.com>")
        assert reply.startswith("450 4.7.1 ") and "record" in reply, reply
        # A retry of the filed message through the other connection is still recognised as one.
        assert _send(server, dkim_keys, second, message_id="<one@example.com>").startswith("250 2.0.0 Already filed")
    finally:
        server.stop()
        services.close()


# --- One message to the same record id of two Odoos ---------------------------------------------
# Found by the multi-Odoo review: the in-flight claim and the journal's unsettled posts were keyed
# on (Message-ID, record, sender) without the Odoo, and project.task 60 exists in both databases.


def test_the_same_message_to_two_odoos_is_filed_in_both_at_once(test_odoo, second_odoo, two_odoo_gateway,
                                                                dkim_keys):
    # The MTA delivers note+ of each domain in parallel: the second is for another Odoo and must
    # not be told "being filed right now" (451) while the first posts.
    first = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "project.task", TASK_ID)
    second = address.mint(SECOND_SECRET.encode(), SECOND_DOMAIN, "note", "project.task", TASK_ID)
    raw = sign(compose(PAULA_EMAIL, f"{first}, {second}", "Pump", "The seal is worn.", message_id="<both@example.com>"),
               dkim_keys["example.com"], "example.com", SELECTOR)
    test_odoo.latency = {"message_post": 2}
    replies = {}
    sending = threading.Thread(target=lambda: replies.__setitem__(
        "first", deliver(raw, first, port=two_odoo_gateway.port, mail_from=PAULA_EMAIL)))
    sending.start()
    try:
        deadline = time.monotonic() + 10
        while not [call for call in test_odoo.posts() if call.ended is None]:
            assert time.monotonic() < deadline, "the first delivery never posted"
            time.sleep(0.01)
        # The first delivery holds its claim, posting in the first Odoo.
        second_reply = deliver(raw, second, port=two_odoo_gateway.port, mail_from=PAULA_EMAIL)
    finally:
        sending.join()
    assert second_reply.startswith("250 2.0.0 Filed as Odoo message "), second_reply
    assert replies["first"].startswith("250 2.0.0 Filed as Odoo message "), replies["first"]
    assert len(test_odoo.posts()) == len(second_odoo.posts()) == 1


def test_an_unsettled_post_in_one_odoo_does_not_defer_the_message_to_another(test_odoo, second_odoo,
                                                                             two_odoo_gateway, dkim_keys):
    first = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "project.task", TASK_ID)
    second = address.mint(SECOND_SECRET.encode(), SECOND_DOMAIN, "note", "project.task", TASK_ID)
    # The first Odoo stores the note and the connection drops: its post is unsettled there.
    test_odoo.fail("die_after_post", times=1)
    assert _send(two_odoo_gateway, dkim_keys, first, message_id="<both@example.com>").startswith("451 4.3.0 ")
    # Nothing is running in the second Odoo: filed at once, not deferred for unsettled_post_seconds.
    reply = _send(two_odoo_gateway, dkim_keys, second, message_id="<both@example.com>")
    assert reply.startswith("250 2.0.0 Filed as Odoo message "), reply
    assert len(second_odoo.posts()) == 1
    # The first Odoo's marker still holds for the first Odoo, where the message turns out filed.
    assert _send(two_odoo_gateway, dkim_keys, first, message_id="<both@example.com>").startswith(
        "250 2.0.0 Already filed as Odoo message ")
    assert len(test_odoo.posts()) == 1


def test_a_duplicate_in_one_odoo_does_not_settle_a_post_still_running_in_another(test_odoo, second_odoo,
                                                                                 two_odoo_gateway, dkim_keys):
    # The review's three faults: the message is filed in the second Odoo; the first Odoo takes
    # its post and sits on it (the gateway times out: unsettled); the second one's 250 was lost
    # and the MTA redelivers there ("Already filed"), which settled the FIRST Odoo's marker; the
    # next retry to the first Odoo posted while the first post still ran: the note twice there.
    first = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "project.task", TASK_ID)
    second = address.mint(SECOND_SECRET.encode(), SECOND_DOMAIN, "note", "project.task", TASK_ID)
    message_id = "<settle@example.com>"
    assert _send(two_odoo_gateway, dkim_keys, second, message_id=message_id).startswith("250 2.0.0 Filed")
    test_odoo.fail("hang", method="message_post", times=1)
    try:
        assert _send(two_odoo_gateway, dkim_keys, first, message_id=message_id).startswith("451 4.3.0 Odoo is unavailable")
        unsettled = "451 4.3.0 An earlier delivery of this message may still be being filed by Odoo"
        assert _send(two_odoo_gateway, dkim_keys, first, message_id=message_id).startswith(unsettled)
        assert _send(two_odoo_gateway, dkim_keys, second, message_id=message_id).startswith("250 2.0.0 Already filed")
        assert _send(two_odoo_gateway, dkim_keys, first, message_id=message_id).startswith(unsettled)
    finally:
        test_odoo.release()
    deadline = time.monotonic() + 10
    while not test_odoo.messages("project.task", TASK_ID) or any(call.ended is None for call in test_odoo.posts()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    copies = [row for row in test_odoo.messages("project.task", TASK_ID) if row["message_id"] == message_id]
    assert len(copies) == 1
    assert _send(two_odoo_gateway, dkim_keys, first, message_id=message_id).startswith("250 2.0.0 Already filed")


def _messages_total(**labels) -> float:
    return observe.REGISTRY.get_sample_value("note_gateway_messages_total", labels) or 0.0


def test_one_odoo_down_does_not_stop_the_other(test_odoo, second_odoo, two_odoo_gateway, dkim_keys):
    second_odoo.fail("refuse")
    deferred = {"verdict": "deferred", "refusal": "OdooUnavailable"}
    filed = {"verdict": "filed", "refusal": "none"}
    before = [_messages_total(**deferred, odoo="second"), _messages_total(**deferred, odoo="main"),
              _messages_total(**filed, odoo="main")]
    first = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "project.task", TASK_ID)
    second = address.mint(SECOND_SECRET.encode(), SECOND_DOMAIN, "note", "project.task", TASK_ID)
    assert _send(two_odoo_gateway, dkim_keys, second).startswith("451 ")
    assert _send(two_odoo_gateway, dkim_keys, first).startswith("250 ")
    # The metrics name the Odoo that fails (found by a review of multi-domain setups: no odoo label).
    assert [_messages_total(**deferred, odoo="second"), _messages_total(**deferred, odoo="main"),
            _messages_total(**filed, odoo="main")] == [before[0] + 1, before[1], before[2] + 1]


# --- The journal of several domains ------------------------------------------------------------


def _log(capsys, config_path, *options):
    status = cli.main(["log", "--config", str(config_path), *options])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _rows(out):
    """The table's rows as lists of cells, the header first."""
    return [line.split() for line in out.splitlines()]


def test_log_tells_the_odoo_databases_apart_and_filters_by_odoo_and_domain(tmp_path, test_odoo, second_odoo,
                                                                          two_odoo_gateway, dkim_keys, capsys):
    # Found by a review of multi-domain setups: `log --record project.task/60` listed the filings in
    # both databases as identical rows, and nothing filtered by domain or Odoo.
    first = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "project.task", TASK_ID)
    second = address.mint(SECOND_SECRET.encode(), SECOND_DOMAIN, "note", "project.task", TASK_ID)
    assert _send(two_odoo_gateway, dkim_keys, first, message_id="<one@example.com>").startswith("250 ")
    assert _send(two_odoo_gateway, dkim_keys, second, message_id="<two@example.com>").startswith("250 ")
    forged = address.mint(SECRET.encode(), SECOND_DOMAIN, "note", "project.task", TASK_ID)
    assert _send(two_odoo_gateway, dkim_keys, forged).startswith("550 5.1.1 No such gateway address")
    config_path = tmp_path / "gateway.toml"

    status, out, _ = _log(capsys, config_path, "--record", f"project.task/{TASK_ID}")
    header, *rows = _rows(out)
    # Two databases, one domain each: an odoo column, no domain column (the Odoo names the domain).
    assert header[:6] == ["time", "(UTC)", "verdict", "sender", "target", "odoo"] and "domain" not in header
    assert [(row[3], row[4], row[-1]) for row in rows] == [
        (f"project.task/{TASK_ID}", "second", "<two@example.com>"),
        (f"project.task/{TASK_ID}", "main", "<one@example.com>")]

    # The refusal at RCPT counts as the second domain's too, as does its Odoo. The rows of one Odoo
    # need no odoo column (the columns are decided by the rows listed, not the configuration).
    status, out, _ = _log(capsys, config_path, "--odoo", "second")
    assert status == 0
    assert _rows(out)[0][:6] == ["time", "(UTC)", "verdict", "sender", "target", "reply"]
    assert [(row[1], row[4]) for row in _rows(out)[1:]] == [("refused", "550"), ("filed", "250")]
    status, by_domain, _ = _log(capsys, config_path, "--domain", SECOND_DOMAIN.upper() + ".")
    assert by_domain == out
    status, out, _ = _log(capsys, config_path, "--domain", ALIAS_DOMAIN, "--verdict", "filed")
    assert [row[-1] for row in _rows(out)[1:]] == ["<one@example.com>"]

    # A name the configuration does not have is said, in case it is a typo.
    status, out, err = _log(capsys, config_path, "--odoo", "secnod")
    assert (status, out.strip()) == (0, "No journal entries.")
    assert err == ("note-gateway: --odoo secnod is not an [odoo.NAME] connection of this gateway "
                   "(configured: main, second); listing the journal's rows of it\n")


def test_log_columns_follow_the_rows_listed_not_the_configuration(tmp_path, test_odoo, second_odoo, two_odoo_gateway,
                                                                  dkim_keys, capsys):
    # Day-2 review: log chose its odoo and domain columns from the configuration as it is now.
    # With [odoo.second] and its alias domain removed (by a reload), the rows filed through both
    # Odoos were listed without an odoo column, the same project.task/60 twice with nothing to
    # tell which database holds which.
    first = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "project.task", TASK_ID)
    second = address.mint(SECOND_SECRET.encode(), SECOND_DOMAIN, "note", "project.task", TASK_ID)
    assert _send(two_odoo_gateway, dkim_keys, first, message_id="<one@example.com>").startswith("250 ")
    assert _send(two_odoo_gateway, dkim_keys, second, message_id="<two@example.com>").startswith("250 ")
    config_path = tmp_path / "gateway.toml"
    text = config_path.read_text()
    config_path.write_text(text[:text.index("[odoo.second]")])
    (tmp_path / "rules" / f"{SECOND_DOMAIN}.toml").unlink()

    status, out, _ = _log(capsys, config_path)
    header, *rows = _rows(out)
    assert header[:6] == ["time", "(UTC)", "verdict", "sender", "target", "odoo"] and "domain" not in header
    assert [(row[3], row[4], row[-1]) for row in rows] == [(f"project.task/{TASK_ID}", "second", "<two@example.com>"),
                                                           (f"project.task/{TASK_ID}", "main", "<one@example.com>")]
    # The rows of one Odoo only: the table as with one Odoo, whatever the configuration says.
    status, out, _ = _log(capsys, config_path, "--limit", "1")
    assert _rows(out)[0] == ["time", "(UTC)", "verdict", "sender", "target", "reply", "odoo", "id", "message-id"]
    # Two alias domains of one Odoo in the rows listed: a domain column, though the configuration
    # now has one domain on one Odoo.
    with Journal(tmp_path / "journal.sqlite3") as journal:
        journal.record(JournalEntry(verdict="refused", domain="old.example.com", odoo="main", model="project.task",
                                    res_id=TASK_ID, message_id="<old@example.com>"))
    status, out, _ = _log(capsys, config_path, "--odoo", "main")
    header, *rows = _rows(out)
    assert header[:6] == ["time", "(UTC)", "verdict", "sender", "target", "domain"] and "odoo" not in header[:7]
    assert [(row[4], row[-1]) for row in rows] == [("old.example.com", "<old@example.com>"),
                                                   (ALIAS_DOMAIN, "<one@example.com>")]


def test_log_odoo_lists_every_connection_to_that_connections_database(tmp_path, test_odoo, dns_server, dkim_keys,
                                                                     capsys):
    # Review of the last merges: with two connections to one database (one Odoo for the claims and
    # rate limits), `log --odoo main` listed only what came through main, not the record's other
    # filings in the same database.
    services, server = _two_connections(tmp_path, test_odoo, dns_server.port)
    try:
        first = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "project.task", TASK_ID)
        second = address.mint(SECOND_SECRET.encode(), SECOND_DOMAIN, "note", "project.task", TASK_ID)
        assert _send(server, dkim_keys, first, message_id="<one@example.com>").startswith("250 ")
        assert _send(server, dkim_keys, second, message_id="<two@example.com>").startswith("250 ")
    finally:
        server.stop()
        services.close()
    for name in ("main", "other_company"):
        status, out, _ = _log(capsys, tmp_path / "gateway.toml", "--odoo", name, "--record", f"project.task/{TASK_ID}")
        assert status == 0 and [row[-1] for row in _rows(out)[1:]] == ["<two@example.com>", "<one@example.com>"], out


def test_log_has_a_domain_column_when_one_odoo_serves_several_domains_and_none_with_one_domain(
        tmp_path, test_odoo, dns_server, dkim_keys, capsys):
    config_path = write_config(tmp_path, test_odoo, dns_server.port)
    services, server = _start(config_path)
    try:
        first = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "project.task", TASK_ID)
        assert _send(server, dkim_keys, first, message_id="<one@example.com>").startswith("250 ")
        # One domain on one Odoo: the table as it always was.
        status, out, _ = _log(capsys, config_path)
        assert _rows(out)[0] == ["time", "(UTC)", "verdict", "sender", "target", "reply", "odoo", "id", "message-id"]
    finally:
        server.stop()
        services.close()
    (tmp_path / "rules" / f"{SECOND_DOMAIN}.toml").write_text(textwrap.dedent(f"""
        domain = "{SECOND_DOMAIN}"
        odoo = "main"
        secrets = ["{SECOND_SECRET}"]
        [note]
        models = ["project.task"]
    """))
    services, server = _start(config_path)
    try:
        second = address.mint(SECOND_SECRET.encode(), SECOND_DOMAIN, "note", "project.task", TASK_ID)
        assert _send(server, dkim_keys, second, message_id="<two@example.com>").startswith("250 ")
    finally:
        server.stop()
        services.close()
    status, out, _ = _log(capsys, config_path)
    header, *rows = _rows(out)
    assert header[:6] == ["time", "(UTC)", "verdict", "sender", "target", "domain"] and "odoo" not in header[:7]
    assert [(row[4], row[-1]) for row in rows] == [(SECOND_DOMAIN, "<two@example.com>"),
                                                   (ALIAS_DOMAIN, "<one@example.com>")]
    status, out, _ = _log(capsys, config_path, "--odoo", "main", "--domain", SECOND_DOMAIN)
    assert [row[-1] for row in _rows(out)[1:]] == ["<two@example.com>"]


# --- Company binding ---------------------------------------------------------------------------


@pytest.fixture
def bound_gateway(tmp_path, test_odoo, dns_server):
    def start(binding: str):
        folder = tmp_path / f"g{len(started)}"
        config_path = write_config(folder, test_odoo, dns_server.port, rules_extra="")
        rules_path = folder / "rules" / f"{ALIAS_DOMAIN}.toml"
        rules_path.write_text(binding + "\n" + rules_path.read_text())
        services, server = _start(config_path)
        started.append((services, server))
        return server

    started: list = []
    yield start
    for services, server in started:
        server.stop()
        services.close()


@pytest.fixture
def two_companies(test_odoo):
    other = test_odoo.add_record("res.company", {"name": "Other Company"})
    test_odoo.write("res.users", GATEWAY_UID, {"company_ids": [1, other]})
    # Paula belongs to both companies, so only the binding can keep her out of the other one.
    test_odoo.write("res.users", 8, {"company_ids": [1, other]})
    foreign = test_odoo.add_record("sale.order", {"name": "S-OTHER", "partner_id": 9, "company_id": other},
                                   followers=[PAULA_PARTNER_ID])
    return other, foreign


def test_company_from_the_alias_domain_refuses_other_company_records(test_odoo, bound_gateway, two_companies,
                                                                     dkim_keys):
    other, foreign = two_companies
    alias_domain = test_odoo.add_record("mail.alias.domain", {"name": ALIAS_DOMAIN})
    test_odoo.write("res.company", 1, {"alias_domain_id": alias_domain})
    gateway = bound_gateway("company_from_alias_domain = true")
    ours = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "sale.order", SALE_ORDER_ID)
    theirs = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "sale.order", foreign)
    assert _send(gateway, dkim_keys, ours).startswith("250 ")
    assert _send(gateway, dkim_keys, theirs).startswith(
        f"550 5.7.1 The record belongs to a company this address does not serve: sale.order {foreign} is of "
        f"company {other}, not 1")
    [post] = test_odoo.posts()
    assert post.context["allowed_company_ids"] == [1] and post.args == [[SALE_ORDER_ID]]


def test_unbound_domain_lets_odoo_rules_decide_across_the_users_companies(test_odoo, bound_gateway, two_companies,
                                                                          dkim_keys):
    other, foreign = two_companies
    gateway = bound_gateway("")
    theirs = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "sale.order", foreign)
    assert _send(gateway, dkim_keys, theirs).startswith("250 ")
    assert "allowed_company_ids" not in test_odoo.posts()[0].context


def test_binding_by_alias_domain_without_one_in_odoo_refuses(test_odoo, bound_gateway, dkim_keys):
    gateway = bound_gateway("company_from_alias_domain = true")
    to = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "sale.order", SALE_ORDER_ID)
    assert _send(gateway, dkim_keys, to).startswith("550 5.7.1 The record belongs to a company this address does "
                                                    f"not serve: mail.alias.domain {ALIAS_DOMAIN} names 0 companies")
    assert test_odoo.posts() == []


def test_binding_by_an_alias_domain_of_two_companies_refuses(test_odoo, bound_gateway, two_companies, dkim_keys):
    # Found by a mutation audit: an alias domain shared by several companies names no one company,
    # and taking the first could post in the wrong company's context.
    other, _ = two_companies
    alias_domain = test_odoo.add_record("mail.alias.domain", {"name": ALIAS_DOMAIN})
    test_odoo.write("res.company", 1, {"alias_domain_id": alias_domain})
    test_odoo.write("res.company", other, {"alias_domain_id": alias_domain})
    gateway = bound_gateway("company_from_alias_domain = true")
    to = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "sale.order", SALE_ORDER_ID)
    assert _send(gateway, dkim_keys, to) == ("550 5.7.1 The record belongs to a company this address does not "
                                             f"serve: mail.alias.domain {ALIAS_DOMAIN} names 2 companies")
    assert test_odoo.posts() == []


def test_bound_company_the_sender_does_not_belong_to_is_refused(test_odoo, bound_gateway, two_companies, dkim_keys):
    other, foreign = two_companies
    test_odoo.write("res.users", 8, {"company_ids": [1]})
    gateway = bound_gateway(f"company_id = {other}")
    theirs = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "sale.order", foreign)
    # Odoo would not let Paula work in the other company: the rules see no company at all.
    assert _send(gateway, dkim_keys, theirs).startswith("550 5.7.1 Sender has no access to this record")
