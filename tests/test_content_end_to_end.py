"""Content features end to end: per-domain templates, recipients of notes and replies, over signed SMTP."""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import html
import logging
import quopri
import re
import textwrap
import uuid

import pytest

from conftest import ALIAS_DOMAIN, SECRET, Mailer, write_config

from gateway import address
from gateway.config import load_config
from gateway.journal import Journal
from gateway.pipeline import Services
from gateway.smtp import ThreadedGateway
from gateway.testing.odoo_demo import (
    JOEL_PARTNER_ID, MARC_PARTNER_ID, PAULA_PARTNER_ID, PETER_PARTNER_ID, PROJECT_ID, SALE_ORDER_ID, TASK_ID,
)
from gateway.testing.sending import compose

PAULA = "portal.contrib@example.com"


def _posts(test_odoo):
    return [call for call in test_odoo.calls if call.model_method == "message_post"]


def _send(mailer: Mailer, kind: str, model: str, res_id: int, *, cc: str = "", subject: str = "Re: Pump") -> str:
    to = mailer.address(kind, model, res_id)
    raw = compose(PAULA, to, subject, "Pump checked.\n\nOn Mon, Bob wrote:\n> old\n", sender_name="Paula Contributor")
    if cc:
        raw = f"Cc: {cc}\r\n".encode() + raw
    return mailer.send(mailer.sign(raw), to)


def test_alias_domain_templates_override_per_model_with_fallback(tmp_path, test_odoo, dns_server, dkim_keys):
    config_path = write_config(tmp_path, test_odoo, dns_server.port)
    rules_path = tmp_path / "rules" / f"{ALIAS_DOMAIN}.toml"
    rules_path.write_text('templates_dir = "domain-templates"\n' + rules_path.read_text())
    folder = tmp_path / "rules" / "domain-templates" / "note"
    folder.mkdir(parents=True)
    (folder / "project.task.html.j2").write_text(textwrap.dedent("""\
        <p>Site log from {{ sender_name }}: {{ subject }}</p>
        {{ body }}
    """))
    services = Services.build(load_config(config_path))
    server = ThreadedGateway(services).start()
    try:
        mailer = Mailer(type("Running", (), {"port": server.port})(), dkim_keys)
        assert _send(mailer, "note", "project.task", TASK_ID).startswith("250 ")
        assert _send(mailer, "note", "sale.order", SALE_ORDER_ID).startswith("250 ")
    finally:
        server.stop()
        services.close()
    task_post, order_post = _posts(test_odoo)
    assert task_post.kwargs["body"].startswith("<p>Site log from Paula Contributor: Pump</p>")
    assert "Internal note by email from" not in task_post.kwargs["body"]
    # No template of the domain for sale.order: the bundled default.
    assert "Internal note by email from Paula Contributor" in order_post.kwargs["body"]


def test_alias_domain_default_template_wins_over_the_gateway_template_of_the_model(
        tmp_path, test_odoo, dns_server, dkim_keys):
    # The most specific folder decides first: a domain's own default is how all of its notes look,
    # even for a model the gateway's folder has a template of (docs/content.md "Templates").
    config_path = write_config(tmp_path, test_odoo, dns_server.port, rules={"templates_dir": "domain-templates"})
    config_path.write_text('templates_dir = "site-templates"\n' + config_path.read_text())
    (tmp_path / "site-templates" / "note").mkdir(parents=True)
    (tmp_path / "site-templates" / "note" / "project.task.html.j2").write_text("<p>Site task</p>\n{{ body }}\n")
    (tmp_path / "rules" / "domain-templates" / "note").mkdir(parents=True)
    (tmp_path / "rules" / "domain-templates" / "note" / "default.html.j2").write_text("<p>Domain note</p>\n{{ body }}\n")
    services = Services.build(load_config(config_path))
    server = ThreadedGateway(services).start()
    try:
        mailer = Mailer(type("Running", (), {"port": server.port})(), dkim_keys)
        assert _send(mailer, "note", "project.task", TASK_ID).startswith("250 ")
    finally:
        server.stop()
        services.close()
    [post] = _posts(test_odoo)
    assert post.kwargs["body"].startswith("<p>Domain note</p>")


def test_a_template_includes_a_file_of_its_folder_that_is_no_j2_template(tmp_path, test_odoo, dns_server, dkim_keys):
    # Today's review: an include of "note/footer.html" stopped serve after an upgrade that read only
    # the *.j2 files of a folder ("template note/footer.html not found"). Every file is read; hidden
    # ones (an editor's swap file) and files no template uses (a picture) stop nothing.
    config_path = write_config(tmp_path, test_odoo, dns_server.port)
    config_path.write_text('templates_dir = "site-templates"\n' + config_path.read_text())
    folder = tmp_path / "site-templates" / "note"
    folder.mkdir(parents=True)
    (folder / "default.html.j2").write_text('<p>{{ body }}</p>\n{% include "note/footer.html" %}\n')
    (folder / "footer.html").write_text("<p><em>Site log, filed by {{ sender_email }}</em></p>\n")
    (folder / ".default.html.j2.swp").write_bytes(b"b0VIM 9.0\x00\xff\xfe")
    (folder / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    services = Services.build(load_config(config_path))
    server = ThreadedGateway(services).start()
    try:
        mailer = Mailer(type("Running", (), {"port": server.port})(), dkim_keys)
        assert _send(mailer, "note", "project.task", TASK_ID).startswith("250 ")
    finally:
        server.stop()
        services.close()
    [post] = _posts(test_odoo)
    assert post.kwargs["body"].endswith(f"<p><em>Site log, filed by {PAULA}</em></p>\n")


def test_a_text_partial_included_in_a_note_template_is_escaped(tmp_path, test_odoo, dns_server, dkim_keys):
    # Review of templates: a shared "_header.txt.j2" included by the note template was not escaped
    # (escaping went by file name), and the sender's Subject was filed as HTML in the note's first line.
    config_path = write_config(tmp_path, test_odoo, dns_server.port)
    config_path.write_text('templates_dir = "site-templates"\n' + config_path.read_text())
    folder = tmp_path / "site-templates"
    (folder / "note").mkdir(parents=True)
    (folder / "_header.txt.j2").write_text("Subject: {{ subject }}\n")
    (folder / "note" / "default.html.j2").write_text('<p>{% include "_header.txt.j2" %}</p>\n{{ body }}\n')
    services = Services.build(load_config(config_path))
    server = ThreadedGateway(services).start()
    try:
        mailer = Mailer(type("Running", (), {"port": server.port})(), dkim_keys)
        subject = '<a href="https://evil.example">Approved by CFO</a>'
        assert _send(mailer, "note", "project.task", TASK_ID, subject=subject).startswith("250 ")
    finally:
        server.stop()
        services.close()
    [post] = _posts(test_odoo)
    assert post.kwargs["body"].startswith(
        "<p>Subject: &lt;a href=&#34;https://evil.example&#34;&gt;Approved by CFO&lt;/a&gt;\n</p>"), post.kwargs["body"]


@pytest.mark.parametrize("hidden", [
    # Review of bad admin input: a template that leaves out {{ body }} filed every note without its
    # text with a 250.
    ("<p>(draft)</p>", ";"),
    # Review of templates: {{ body }} in an HTML comment (or a hidden element) passed every check and
    # filed notes nobody could read with a 250.
    ("<p>(draft)</p><!-- {{ body }} -->",
     " ({{ body }} is inside an HTML comment: the note's text would be invisible)"),
], ids=["left out", "in a comment"])
def test_a_note_the_template_would_file_without_visible_text_is_deferred(
        tmp_path, test_odoo, dns_server, dkim_keys, caplog, hidden):
    # check() refuses a template that always does it; one that does it on some messages (a branch
    # check() does not take) defers those, 451, until the admin corrects it.
    draft, said = hidden
    config_path = write_config(tmp_path, test_odoo, dns_server.port)
    config_path.write_text('templates_dir = "site-templates"\n' + config_path.read_text())
    template = tmp_path / "site-templates" / "note" / "default.html.j2"
    template.parent.mkdir(parents=True)
    template.write_text(f'{{% if "draft" in subject|lower %}}{draft}\n{{% else %}}{{{{ body }}}}\n{{% endif %}}')
    services = Services.build(load_config(config_path))
    server = ThreadedGateway(services).start()
    try:
        mailer = Mailer(type("Running", (), {"port": server.port})(), dkim_keys)
        with caplog.at_level(logging.ERROR, logger="gateway.pipeline"):
            deferred = _send(mailer, "note", "project.task", TASK_ID, subject="Draft: pump")
        filed = _send(mailer, "note", "project.task", TASK_ID)
    finally:
        server.stop()
        services.close()
    assert deferred == ("451 4.3.0 The gateway's template would file this message without its text, an "
                        "administrator must correct it")
    assert (f"template {template} rendered the note of {Mailer.address('note', 'project.task', TASK_ID)} without "
            f"the message's text{said}") in caplog.text
    assert filed.startswith("250 ")
    [post] = _posts(test_odoo)
    assert "Pump checked." in post.kwargs["body"] and "<!--" not in post.kwargs["body"]
    with Journal(tmp_path / "journal.sqlite3", read_only=True) as journal:
        assert [entry.smtp_reply[:9] for entry in reversed(journal.recent(2))] == ["451 4.3.0", "250 2.0.0"]


def test_a_misnamed_template_is_warned_of_at_start(tmp_path, test_odoo, dns_server, dkim_keys, caplog):
    # Review of bad admin input: note/project_task.html.j2 passed every check while the bundled
    # template stayed in use without a word.
    config_path = write_config(tmp_path, test_odoo, dns_server.port)
    config_path.write_text('templates_dir = "site-templates"\n' + config_path.read_text())
    template = tmp_path / "site-templates" / "note" / "project_task.html.j2"
    template.parent.mkdir(parents=True)
    template.write_text("<p>Site task</p>\n{{ body }}\n")
    with caplog.at_level(logging.WARNING, logger="gateway.render"):
        services = Services.build(load_config(config_path))
    server = ThreadedGateway(services).start()
    try:
        mailer = Mailer(type("Running", (), {"port": server.port})(), dkim_keys)
        assert _send(mailer, "note", "project.task", TASK_ID).startswith("250 ")
    finally:
        server.stop()
        services.close()
    assert (f"configuration: {config_path}: templates_dir: {template} is never used: project_task is in no rules "
            "file's [note] models") in caplog.text
    assert "did you mean note/project.task.html.j2?" in caplog.text
    [post] = _posts(test_odoo)
    assert "Internal note by email from" in post.kwargs["body"]


def test_note_notifies_internal_users_in_cc_with_one_lookup(test_odoo, gateway, mailer):
    reply = _send(mailer, "note", "project.task", TASK_ID,
                  cc="Marc Demo <mark.brown23@example.com>, portal.plain@example.com, stranger@elsewhere.example")
    assert reply.startswith("250 ")
    [post] = _posts(test_odoo)
    assert post.kwargs["partner_ids"] == [MARC_PARTNER_ID]
    assert [mail.partner_id for mail in test_odoo.outbox] == [MARC_PARTNER_ID]
    lookups = [call for call in test_odoo.calls if call.model == "res.users" and call.model_method == "search_read"]
    assert len(lookups) == 2  # the sender's identity, then every To/Cc address at once


def test_a_note_says_which_customers_and_portal_users_the_email_also_went_to(test_odoo, gateway, mailer):
    # Found by a review on a real Odoo 18: Paula's email went to the customer and a portal user
    # too; they are rightly not notified of the note (journaled recipient-dropped), but the internal
    # team reading the note could not tell that its "internal" text had reached them already.
    cc = ('Marc Demo <mark.brown23@example.com>, "Bob <b>Customer</b>" <Bob@Customer.example>, '
          "Joel Willis <joel.willis63@example.com>, stranger@elsewhere.example")
    assert _send(mailer, "note", "project.task", TASK_ID, cc=cc).startswith("250 2.0.0 Filed")
    [post] = _posts(test_odoo)
    line = ("<p><em>Also sent by email to: Bob &lt;b&gt;Customer&lt;/b&gt; &lt;bob@customer.example&gt;, "
            "Joel Willis &lt;joel.willis63@example.com&gt;, stranger@elsewhere.example</em></p>")
    assert line in post.kwargs["body"]
    # Marc is an internal user, notified of the note: not named; his email shows the line too.
    assert "mark.brown23" not in post.kwargs["body"]
    [notification] = test_odoo.outbox
    assert notification.partner_id == MARC_PARTNER_ID and line in notification.body_html
    assert "recipient-dropped:joel.willis63@example.com (not an internal user)" in _journal_defects(gateway)

    # A reply is read by the record's customers: it never says so (and a note Cc'd to nobody
    # outside does not either).
    test_odoo.clear_calls()
    assert _send(mailer, "reply", "project.task", TASK_ID, cc=cc).startswith("250 2.0.0 Filed")
    [processed] = _processed(test_odoo)
    filed = processed.get_payload(decode=True).decode()
    assert "Message by email from" in filed
    assert "Also sent by email" not in filed and "customer.example" not in filed.lower()
    test_odoo.clear_calls()
    assert _send(mailer, "note", "project.task", TASK_ID, cc="Marc Demo <mark.brown23@example.com>").startswith("250 ")
    [post] = _posts(test_odoo)
    assert "Also sent by email" not in post.kwargs["body"]


# Found by a review of this session's merges: a Cc the DKIM signature does not cover (Microsoft 365
# leaves To and Cc out of h=) can be added by whoever holds the signed message, and its display name
# became the gateway's own "Also sent by email to:" line of an internal note, emailed to the internal
# users in Cc. It may still have an internal user notified; it never writes text into the note.
FORGED_CC = '"Approved by the CFO, pay invoice 123 today" <x@attacker.example>'


@pytest.mark.parametrize("signed", [["from", "subject", "date", "message-id"],
                                    ["from", "to", "subject", "date", "message-id"]],
                         ids=["To and Cc uncovered (Microsoft 365)", "Cc uncovered"])
def test_a_note_names_only_recipients_of_fields_the_signature_covers(test_odoo, gateway, mailer, signed):
    to = mailer.address("note", "project.task", TASK_ID)
    raw = compose(PAULA, f"{to}, Bob Customer <bob@customer.example>", "Invoice 123", "Please check.",
                  sender_name="Paula Contributor")
    signed_raw = mailer.sign(raw, include_headers=[name.encode() for name in signed])
    # Added on the way: a stranger, Bob again under another name, and Marc, an internal user.
    forged = (f'Cc: {FORGED_CC}, "Pay now" <bob@customer.example>, Marc Demo <mark.brown23@example.com>\r\n'
              .encode() + signed_raw)
    assert mailer.send(forged, to).startswith("250 2.0.0 Filed")
    [post] = _posts(test_odoo)
    body = post.kwargs["body"]
    assert "CFO" not in body and "attacker.example" not in body and "Pay now" not in body
    if "to" in signed:
        # Bob is in the covered To, so named; his name too is one an uncovered field also gives,
        # so the address alone.
        assert "<p><em>Also sent by email to: bob@customer.example</em></p>" in body
    else:
        assert "Also sent by email" not in body
    # What an uncovered Cc can still do: have an internal user notified.
    assert post.kwargs["partner_ids"] == [MARC_PARTNER_ID]


def test_a_note_names_at_most_twenty_recipients_each_cut_to_a_line(test_odoo, gateway, mailer):
    # The same review: the line had no bound, and a display name none either.
    cc = ", ".join([f'"{"Very long name " * 10}" <long@customer.example>']
                   + [f"customer{number}@customer.example" for number in range(24)])
    assert _send(mailer, "note", "project.task", TASK_ID, cc=cc).startswith("250 2.0.0 Filed")
    [post] = _posts(test_odoo)
    line = next(line for line in post.kwargs["body"].splitlines() if "Also sent by email to:" in line)
    shown = line.removeprefix("<p><em>Also sent by email to: ").removesuffix("</em></p>").split(", ")
    assert len(shown) == 21 and shown[-1] == "and 5 more"
    assert shown[0] == f"{('Very long name ' * 10)[:63]}… &lt;long@customer.example&gt;"
    assert shown[1:20] == [f"customer{number}@customer.example" for number in range(19)]


def test_no_one_in_cc_is_notified_where_the_rules_say_so(test_odoo, start_gateway, dns_server, dkim_keys):
    # Found by a mutation audit: notify_recipients = false was tested nowhere. Marc, an internal
    # user in Cc, is notified by default (the test above), not here.
    mailer = Mailer(start_gateway(dns_server.port, note={"notify_recipients": False}), dkim_keys)
    reply = _send(mailer, "note", "project.task", TASK_ID, cc="Marc Demo <mark.brown23@example.com>")
    assert reply.startswith("250 2.0.0 Filed")
    [post] = _posts(test_odoo)
    assert post.kwargs["partner_ids"] == []
    assert test_odoo.outbox == []


MARC = "mark.brown23@example.com"


def _answer(mailer: Mailer, notification, text: str, *, sender: str = MARC, name: str = "Marc Demo") -> str:
    """``sender`` answers a notification email, as a mail client does: to its Reply-To, quoting it."""
    to = email.utils.parseaddr(notification.reply_to)[1]
    raw = compose(sender, to, "Re: Pump", f"{text}\n\nOn Mon, Paula Contributor wrote:\n> Pump checked.\n",
                  sender_name=name)
    raw = (f"In-Reply-To: {notification.message_id}\r\nReferences: {notification.references}\r\n".encode()
           + raw)
    return mailer.send(mailer.sign(raw), to, mail_from=sender)


def test_a_note_notifies_the_internal_followers_of_notes_its_internal_sender_included(test_odoo, gateway, mailer):
    # What docs/content.md "Who Odoo notifies of a note" says, which a review found wrong ("only the
    # internal users it names in To/Cc"): Odoo's standard notifies the record's internal followers
    # of the Note subtype too, portal ones never; and it leaves out only the integration user, so an
    # internal sender who follows Note gets his own note emailed back (no RPC argument avoids it).
    for partner_id in (MARC_PARTNER_ID, PETER_PARTNER_ID):
        test_odoo.add_follower("project.task", TASK_ID, partner_id, ["mail.mt_comment", "mail.mt_note"])
    assert _send(mailer, "note", "project.task", TASK_ID).startswith("250 2.0.0 Filed")
    assert [mail.partner_id for mail in test_odoo.outbox] == [MARC_PARTNER_ID]
    test_odoo.clear_outbox()
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(compose(MARC, to, "Pump", "Ordered the seal.", sender_name="Marc Demo"))
    reply = mailer.send(raw, to, mail_from=MARC)
    assert reply.startswith("250 2.0.0 Filed")
    [post] = _posts(test_odoo)[1:]
    assert post.kwargs["author_id"] == MARC_PARTNER_ID and post.kwargs["partner_ids"] == []
    assert [mail.partner_id for mail in test_odoo.outbox] == [MARC_PARTNER_ID]


@pytest.mark.parametrize("catchall", [False, True], ids=["no-catchall", "catchall"])
def test_an_internal_answer_to_a_notes_notification_never_reaches_the_portal_author(test_odoo, gateway, mailer,
                                                                                    catchall):
    # Found by a security review: Odoo makes a notification's Reply-To the catchall, or without
    # one the author's own address (ODOO_FACTS.md i). Marc, an internal user in Cc of Paula's
    # note, answered it by email: without a catchall straight to Paula, a customer's agent; with
    # one, Odoo files the answer as a note and notifies the note's author, Paula (mail_thread.py
    # :1297-1308). A note's notifications are answered to the record's note address instead.
    if catchall:
        test_odoo.write("res.company", 1, {"alias_domain_id": test_odoo.add_record(
            "mail.alias.domain", {"name": "odoo.example.com"})})
    assert _send(mailer, "note", "project.task", TASK_ID, cc=f"Marc Demo <{MARC}>").startswith("250 2.0.0 Filed")
    [notification] = test_odoo.outbox
    assert notification.partner_id == MARC_PARTNER_ID and notification.internal
    note_address = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "project.task", TASK_ID)
    assert email.utils.parseaddr(notification.reply_to)[1] == note_address
    assert PAULA not in notification.reply_to and "catchall" not in notification.reply_to
    [post] = _posts(test_odoo)
    assert post.kwargs["reply_to"] == note_address

    # Marc's answer comes back to the gateway, which files it as his own note and notifies only
    # the internal users it chooses itself: nobody here, Paula least of all.
    test_odoo.clear_outbox()
    reply = _answer(mailer, notification, "Margin is thin, no discount.")
    assert reply.startswith("250 2.0.0 Filed as Odoo message ")
    filed = test_odoo.message(int(reply.rsplit(" ", 1)[1]))
    assert filed["author_id"][0] == MARC_PARTNER_ID and filed["subtype_xmlid"] == "mail.mt_note"
    assert "Margin is thin" in filed["body"] and filed["partner_ids"] == []
    assert test_odoo.outbox == []
    assert filed["id"] not in test_odoo.portal_chatter_ids("project.task", TASK_ID, partner_id=PAULA_PARTNER_ID)


def test_a_note_filed_from_a_bound_address_is_answered_to_the_records_own_dated_note_address(
        test_odoo, start_gateway, dns_server, dkim_keys):
    # The address a note came in on may take mail only from its author (bound) or be a plain
    # note@: answers go to the record's note address, dated where the domain requires dates,
    # so that a colleague's answer is not refused as written to someone else's address.
    mailer = Mailer(start_gateway(dns_server.port, rules={"require_dated_addresses": True}), dkim_keys)
    today = address.today()
    to = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "project.task", TASK_ID, partner_id=PAULA_PARTNER_ID,
                      issued_day=today - 3)
    raw = f"Cc: Marc Demo <{MARC}>\r\n".encode() + compose(PAULA, to, "Pump", "Pump checked.",
                                                            sender_name="Paula Contributor")
    assert mailer.send(mailer.sign(raw), to).startswith("250 2.0.0 Filed")
    [notification] = test_odoo.outbox
    answer_to = email.utils.parseaddr(notification.reply_to)[1]
    assert answer_to == address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "project.task", TASK_ID,
                                     issued_day=today)
    test_odoo.clear_outbox()
    reply = _answer(mailer, notification, "Margin is thin, no discount.")
    assert reply.startswith("250 2.0.0 Filed")
    assert test_odoo.message(int(reply.rsplit(" ", 1)[1]))["author_id"][0] == MARC_PARTNER_ID
    assert test_odoo.outbox == []


def test_an_internal_answer_where_internal_users_may_not_post_says_to_use_the_chatter(
        test_odoo, start_gateway, dns_server, dkim_keys):
    mailer = Mailer(start_gateway(dns_server.port, note={"allow_internal_users": False}), dkim_keys)
    assert _send(mailer, "note", "project.task", TASK_ID, cc=f"Marc Demo <{MARC}>").startswith("250 2.0.0 Filed")
    [notification] = test_odoo.outbox
    test_odoo.clear_outbox()
    assert _answer(mailer, notification, "Margin is thin, no discount.") == (
        "550 5.7.1 Internal users may not post here by email: answer in the record's chatter in Odoo")
    assert len(_posts(test_odoo)) == 1 and test_odoo.outbox == []


def _processed(test_odoo):
    """The replies handed to Odoo's mail gateway, each as the email message Odoo parsed."""
    return [email.message_from_string(call.args[1]) for call in test_odoo.calls
            if call.model_method == "message_process"]


def test_reply_by_a_follower_names_nobody_in_cc_to_odoo(test_odoo, gateway, mailer):
    # Odoo would subscribe every partner it finds for a To/Cc address of a task, portal partners
    # sharing an address included: the message Odoo's mail gateway gets names nobody but its author.
    followers = test_odoo.followers("project.task", TASK_ID)
    reply = _send(mailer, "reply", "project.task", TASK_ID,
                  cc="mark.brown23@example.com, joel.willis63@example.com")
    assert reply.startswith("250 ")
    assert _posts(test_odoo) == []
    [sent] = _processed(test_odoo)
    assert sent["Cc"] is None and sent["To"] is None
    assert test_odoo.followers("project.task", TASK_ID) == followers
    # Marc follows the task, so Odoo notifies him as a follower; Joel (portal) is not added.
    notified = {mail.partner_id for mail in test_odoo.outbox}
    assert JOEL_PARTNER_ID not in notified and {MARC_PARTNER_ID, PETER_PARTNER_ID} <= notified
    with Journal(gateway.services.config.journal_path) as journal:
        [row] = journal.recent(1)
    assert ("recipient-not-notified:mark.brown23@example.com (filed by Odoo's mail gateway, which notifies "
            "followers only)") in row.defects


def test_reply_by_a_sender_who_does_not_follow_names_internal_users_in_cc(test_odoo, gateway, mailer):
    # What rules/example.toml says of [reply] notify_recipients: internal users in To/Cc become
    # recipients when the reply is posted with message_post, i.e. when its sender does not follow
    # the record (a follower's reply goes through message_process, the test above).
    test_odoo.add_record("project.collaborator", {"project_id": PROJECT_ID, "partner_id": PAULA_PARTNER_ID,
                                                  "limited_access": False})
    test_odoo.remove_follower("project.task", TASK_ID, PAULA_PARTNER_ID)
    reply = _send(mailer, "reply", "project.task", TASK_ID,
                  cc="Marc Demo <mark.brown23@example.com>, joel.willis63@example.com")
    assert reply.startswith("250 ")
    assert _processed(test_odoo) == []
    [post] = _posts(test_odoo)
    assert post.kwargs["partner_ids"] == [MARC_PARTNER_ID]


def test_reply_is_not_emailed_back_to_its_sender(test_odoo, gateway, mailer):
    reply = _send(mailer, "reply", "project.task", TASK_ID)
    assert reply.startswith("250 ")
    filed = int(reply.rsplit(" ", 1)[1])
    message = test_odoo.message(filed)
    assert message["author_id"][0] == PAULA_PARTNER_ID and message["subtype_xmlid"] == "mail.mt_comment"
    assert message["message_type"] == "email" and "Pump checked." in message["body"]
    notified = {mail.partner_id for mail in test_odoo.outbox}
    # The other followers are notified as by any comment; the author is not (issue 3).
    assert PETER_PARTNER_ID in notified and PAULA_PARTNER_ID not in notified


@pytest.mark.parametrize("kind", ["note", "reply"])
def test_a_dated_bound_address_pasted_in_the_subject_is_not_shown(test_odoo, gateway, mailer, kind):
    # A reply+ subject is shown to customers; a pasted address is a capability, -p and -d parts
    # included (design review: "pump -d20779-<signature>@notes.example.com" was filed).
    pasted = address.mint(SECRET.encode(), ALIAS_DOMAIN, "reply", "project.task", TASK_ID,
                          partner_id=PAULA_PARTNER_ID, issued_day=address.today())
    reply = _send(mailer, kind, "project.task", TASK_ID, subject=f"Re: Pump [{pasted}] {pasted.upper()}")
    assert reply.startswith("250 ")
    body = test_odoo.message(int(reply.rsplit(" ", 1)[1]))["body"]
    assert "<strong>Pump</strong>" in body
    assert pasted.split("@")[0].rsplit("-", 1)[1] not in body.lower() and "-d" not in body


def test_reply_of_an_author_who_does_not_follow_is_posted_without_subscribing_it(test_odoo, gateway, mailer):
    # Odoo's mail gateway would subscribe the author, and a follower of a sale order may read it
    # in the portal (ODOO_FACTS.md c): a reply of an author who does not follow stays a message_post,
    # which does not email it its reply either.
    # Paula may still read the task as a collaborator of its project (Odoo 18's portal rule).
    test_odoo.add_record("project.collaborator", {"project_id": PROJECT_ID, "partner_id": PAULA_PARTNER_ID,
                                                  "limited_access": False})
    test_odoo.remove_follower("project.task", TASK_ID, PAULA_PARTNER_ID)
    before = test_odoo.followers("project.task", TASK_ID)
    assert _send(mailer, "reply", "project.task", TASK_ID).startswith("250 ")
    [filing] = test_odoo.filings()
    assert filing.call.model_method == "message_post" and filing.subtype_xmlid == "mail.mt_comment"
    assert test_odoo.followers("project.task", TASK_ID) == before
    assert PAULA_PARTNER_ID not in {mail.partner_id for mail in test_odoo.outbox}


def test_one_reply_sent_to_two_records_is_filed_on_both(test_odoo, gateway, mailer):
    # Each recipient is its own SMTP transaction with the same Message-ID; Odoo's mail gateway
    # drops a Message-ID it knows anywhere, so the second record gets an ID of its own.
    task, order = mailer.address("reply", "project.task", TASK_ID), mailer.address("reply", "sale.order", SALE_ORDER_ID)
    raw = mailer.sign(compose(PAULA, f"{task}, {order}", "Both", "Same answer for both.", sender_name="Paula Contributor",
                              message_id="<both@example.com>"))
    first, second = mailer.send(raw, task), mailer.send(raw, order)
    assert first.startswith("250 2.0.0 Filed") and second.startswith("250 2.0.0 Filed")
    assert test_odoo.message(int(first.rsplit(" ", 1)[1]))["message_id"] == "<both@example.com>"
    assert test_odoo.message(int(second.rsplit(" ", 1)[1]))["message_id"] == "<both.sale.order-23@example.com>"
    # A retry of either is recognised, under the ID it was filed with.
    assert mailer.send(raw, order).startswith("250 2.0.0 Already filed as Odoo message " + second.rsplit(" ", 1)[1])
    assert mailer.send(raw, task).startswith("250 2.0.0 Already filed as Odoo message " + first.rsplit(" ", 1)[1])


def test_reply_attachments_reach_odoo_byte_exact(test_odoo, gateway, mailer):
    to = mailer.address("reply", "project.task", TASK_ID)
    payload = bytes(range(256)) * 40
    message = email.message_from_bytes(compose(PAULA, to, "Photo", "The reading, attached.",
                                               sender_name="Paula Contributor"), policy=email.policy.SMTP)
    message.add_attachment(payload, maintype="application", subtype="octet-stream", filename="reading.bin")
    raw = mailer.sign(message.as_bytes())
    reply = mailer.send(raw, to)
    assert reply.startswith("250 ")
    message = test_odoo.message(int(reply.rsplit(" ", 1)[1]))
    [attachment_id] = message["attachment_ids"]
    assert test_odoo.attachment_bytes(attachment_id) == payload
    assert test_odoo.record("ir.attachment", attachment_id, ["name", "res_model", "res_id"]) | {"id": 0} == {
        "id": 0, "name": "reading.bin", "res_model": "project.task", "res_id": TASK_ID}


def test_a_template_lists_gmail_files_but_not_inline_images(tmp_path, test_odoo, dns_server, dkim_keys):
    # Gmail gives every file a Content-ID (and X-Attachment-Id), Content-Disposition: attachment;
    # attachment_names left out every file with a Content-ID, so a template never named a Gmail file
    # (found by a review of real-world MIME shapes). An image the HTML shows stays out of the list.
    config_path = write_config(tmp_path, test_odoo, dns_server.port)
    rules_path = tmp_path / "rules" / f"{ALIAS_DOMAIN}.toml"
    rules_path.write_text('templates_dir = "domain-templates"\n' + rules_path.read_text())
    folder = tmp_path / "rules" / "domain-templates" / "note"
    folder.mkdir(parents=True)
    (folder / "default.html.j2").write_text("{{ body }}\n<p>Files: {{ attachment_names | join(', ') }}</p>\n")
    services = Services.build(load_config(config_path))
    server = ThreadedGateway(services).start()
    try:
        mailer = Mailer(type("Running", (), {"port": server.port})(), dkim_keys)
        to = mailer.address("note", "project.task", TASK_ID)
        png = base64.encodebytes(b"\x89PNG\r\n\x1a\nfake").decode()
        raw = _raw(to, "Inspection report", 'Content-Type: multipart/mixed; boundary="000000000000aaaa"', textwrap.dedent(f"""\
            --000000000000aaaa
            Content-Type: multipart/related; boundary="000000000000rrrr"

            --000000000000rrrr
            Content-Type: multipart/alternative; boundary="000000000000bbbb"

            --000000000000bbbb
            Content-Type: text/plain; charset="UTF-8"

            Report attached, the seal: [image: seal.png]

            --000000000000bbbb
            Content-Type: text/html; charset="UTF-8"

            <div dir="ltr">Report attached, the seal: <img src="cid:ii_seal01" alt="seal.png"></div>

            --000000000000bbbb--
            --000000000000rrrr
            Content-Type: image/png; name="seal.png"
            Content-Disposition: inline; filename="seal.png"
            Content-Transfer-Encoding: base64
            X-Attachment-Id: ii_seal01
            Content-ID: <ii_seal01>

            {png}
            --000000000000rrrr--
            --000000000000aaaa
            Content-Type: application/pdf; name="report.pdf"
            Content-Disposition: attachment; filename="report.pdf"
            Content-Transfer-Encoding: base64
            Content-ID: <f_lx1abc0>
            X-Attachment-Id: f_lx1abc0

            JVBERi0xLjQK
            --000000000000aaaa--
            """).replace("\n", "\r\n").encode())
        reply = mailer.send(mailer.sign(raw), to)
    finally:
        server.stop()
        services.close()
    assert reply.startswith("250 "), reply
    filed = test_odoo.message(int(reply.rsplit(" ", 1)[1]))
    assert "<p>Files: report.pdf</p>" in filed["body"]
    assert filed["body"].count('<img src="/web/image/') == 1
    assert len(filed["attachment_ids"]) == 2


def test_reply_to_a_record_deleted_while_it_is_filed_is_deferred_then_refused(test_odoo, gateway, mailer):
    # Ported from the reply-author branch: the task is deleted after the gateway authorized the
    # sender, while Odoo's mail gateway is about to file the reply. Odoo answers MissingError
    # (measured on Odoo 18), the reply is deferred, no record is created from the mail, and the
    # retry is refused at the record check.
    import threading
    import time

    to = mailer.address("reply", "project.task", TASK_ID)
    raw = mailer.sign(compose(PAULA, to, "Re: Pump", "Pump checked.", sender_name="Paula Contributor"))
    tasks_before = test_odoo.search("project.task", [], active_test=False)
    test_odoo.fail("hang", method="message_process", seconds=10)
    replies: list[str] = []
    sender = threading.Thread(target=lambda: replies.append(mailer.send(raw, to)))
    sender.start()
    deadline = time.monotonic() + 10
    while not [call for call in test_odoo.calls if call.model_method == "message_process"]:
        assert time.monotonic() < deadline, "message_process was never called"
        time.sleep(0.02)
    with test_odoo.db.lock:
        test_odoo.db.rows["project.task"].pop(TASK_ID)
    test_odoo.heal()
    sender.join(timeout=30)
    assert replies and replies[0].startswith("451 4.3.0 Odoo is unavailable"), replies
    assert test_odoo.search("project.task", [], active_test=False) == [t for t in tasks_before if t != TASK_ID]
    assert mailer.send(raw, to).startswith("550 5.1.1 The record of this address does not exist")


# --- Forwards without a comment (found by exploratory testing, 2026-12) ----------------------------
# Forwarding a customer's email into a record is a main use case. Gmail's and Outlook's inline
# forwards with nothing written above them were refused as "no text to file", Apple Mail's was filed
# with "Begin forwarded message:" as the note and the customer's text collapsed. Each client's forward
# is now filed the same way: with a comment, the comment is the note and the forward is collapsed;
# without one, the forwarded message is the note.

CUSTOMER_TEXT = "The pump P-7 is leaking again since this morning, please come."
COMMENT = "FYI, going tomorrow at eight."


def _alternative(plain: str, html: str, boundary: str = "fwd-boundary") -> str:
    return (f'MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="{boundary}"\n\n'
            f"--{boundary}\nContent-Type: text/plain; charset=UTF-8\n\n{plain}\n"
            f"--{boundary}\nContent-Type: text/html; charset=UTF-8\n\n{html}\n--{boundary}--\n")


def _plain_only(plain: str) -> str:
    return f"MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n\n{plain}"


def _gmail(comment: str) -> str:
    plain = (f"{comment}\n\n" if comment else "") + textwrap.dedent(f"""\
        ---------- Forwarded message ---------
        From: Customer <cust@customer.example>
        Date: Mon, Dec 1, 2026 at 10:00 AM
        Subject: Pump P-7 leaking again
        To: Paula <portal.contrib@example.com>


        {CUSTOMER_TEXT}
        """)
    html = (f'<div dir="ltr">{comment or "<br>"}<br><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">'
            '---------- Forwarded message ---------<br>From: <strong class="gmail_sendername" dir="auto">Customer'
            '</strong> <span dir="auto">&lt;cust@customer.example&gt;</span><br>Date: Mon, Dec 1, 2026 at 10:00 AM'
            '<br>Subject: Pump P-7 leaking again<br>To: Paula &lt;portal.contrib@example.com&gt;<br></div><br><br>'
            f'<div dir="ltr">{CUSTOMER_TEXT}</div>\n</div></div>\n')
    return _alternative(plain, html)


def _gmail_with_signature(comment: str) -> str:
    # Gmail puts the signature above the forwarded message.
    plain = (f"{comment}\n\n" if comment else "") + textwrap.dedent(f"""\
        -- 
        Paula Contributor, Acme Services

        ---------- Forwarded message ---------
        From: Customer <cust@customer.example>
        Date: Mon, Dec 1, 2026 at 10:00 AM
        Subject: Pump P-7 leaking again

        {CUSTOMER_TEXT}
        """)
    html = (f'<div dir="ltr">{comment or "<br>"}<br clear="all"><div><br></div><span class="gmail_signature_prefix">'
            '-- </span><br><div dir="ltr" class="gmail_signature">Paula Contributor, Acme Services</div><br><br>'
            '<div class="gmail_quote"><div dir="ltr" class="gmail_attr">---------- Forwarded message ---------<br>'
            'From: Customer &lt;cust@customer.example&gt;<br>Date: Mon, Dec 1, 2026 at 10:00 AM<br>'
            'Subject: Pump P-7 leaking again<br></div><br><br>'
            f'<div dir="ltr">{CUSTOMER_TEXT}</div></div></div>\n')
    return _alternative(plain, html)


def _outlook_desktop(comment: str) -> str:
    plain = (f"{comment}\n\n" if comment else "\n") + textwrap.dedent(f"""\
        From: Customer <cust@customer.example>
        Sent: Monday, December 1, 2026 10:00 AM
        To: Paula Contributor <portal.contrib@example.com>
        Subject: Pump P-7 leaking again

        {CUSTOMER_TEXT}
        """)
    own = f'<p class="MsoNormal">{comment}<o:p></o:p></p>' if comment else ""
    html = ('<html><head><meta name="Generator" content="Microsoft Word 15 (filtered medium)"></head>'
            '<body lang="EN-US"><div class="WordSection1">'
            f'{own}<p class="MsoNormal"><o:p>&nbsp;</o:p></p>'
            '<div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm">'
            '<p class="MsoNormal"><b>From:</b> Customer &lt;cust@customer.example&gt; <br><b>Sent:</b> Monday, '
            'December 1, 2026 10:00 AM<br><b>To:</b> Paula Contributor &lt;portal.contrib@example.com&gt;<br>'
            '<b>Subject:</b> Pump P-7 leaking again<o:p></o:p></p></div>'
            f'<p class="MsoNormal"><o:p>&nbsp;</o:p></p><p class="MsoNormal">{CUSTOMER_TEXT}<o:p></o:p></p>'
            '</div></body></html>\n')
    return _alternative(plain, html)


def _outlook_original_message(comment: str) -> str:
    return _plain_only((f"{comment}\n" if comment else "") + textwrap.dedent(f"""\


        -----Original Message-----
        From: Customer <cust@customer.example>
        Sent: Monday, December 1, 2026 10:00 AM
        To: Paula <portal.contrib@example.com>
        Subject: Pump P-7 leaking again

        {CUSTOMER_TEXT}
        """))


def _outlook_web(comment: str) -> str:
    plain = (f"{comment}\n\n" if comment else "") + textwrap.dedent(f"""\
        ________________________________
        From: Customer <cust@customer.example>
        Sent: Monday, December 1, 2026 10:00
        To: Paula Contributor
        Subject: Pump P-7 leaking again

        {CUSTOMER_TEXT}
        """)
    html = ('<html><head></head><body dir="ltr"><div class="elementToProof" style="font-size: 12pt;">'
            f'{comment or "<br>"}</div><div id="appendonsend"></div><hr style="display:inline-block;width:98%" '
            'tabindex="-1"><div id="divRplyFwdMsg" dir="ltr"><font face="Calibri, sans-serif" style="font-size:11pt">'
            '<b>From:</b> Customer &lt;cust@customer.example&gt;<br><b>Sent:</b> Monday, December 1, 2026 10:00<br>'
            '<b>To:</b> Paula Contributor<br><b>Subject:</b> Pump P-7 leaking again</font><div>&nbsp;</div></div>'
            f'<div><div dir="ltr">{CUSTOMER_TEXT}</div></div></body></html>\n')
    return _alternative(plain, html)


def _apple_mail(comment: str) -> str:
    plain = (f"{comment}\n" if comment else "") + textwrap.dedent(f"""\


        Begin forwarded message:

        From: Customer <cust@customer.example>
        Subject: Pump P-7 leaking again
        Date: 1 December 2026 at 10:00:00 CET
        To: Paula <portal.contrib@example.com>

        {CUSTOMER_TEXT}
        """)
    html = ('<html><head><meta http-equiv="content-type" content="text/html; charset=utf-8"></head>'
            '<body style="overflow-wrap: break-word; -webkit-nbsp-mode: space; line-break: after-white-space;">'
            f'{comment}<br id="lineBreakAtBeginningOfMessage"><div><br><blockquote type="cite">'
            '<div>Begin forwarded message:</div><br class="Apple-interchange-newline">'
            '<div style="margin: 0px;"><span><b>From: </b></span><span>Customer &lt;<a href="mailto:cust@customer.example">'
            'cust@customer.example</a>&gt;<br></span></div>'
            '<div style="margin: 0px;"><span><b>Subject: </b></span><span><b>Pump P-7 leaking again</b><br></span></div>'
            '<div style="margin: 0px;"><span><b>Date: </b></span><span>1 December 2026 at 10:00:00 CET<br></span></div>'
            f'<br><div><div dir="ltr">{CUSTOMER_TEXT}</div></div></blockquote></div><br></body></html>\n')
    return _alternative(plain, html, boundary="Apple-Mail=_6C1E2A3B")


def _thunderbird(comment: str) -> str:
    plain = (f"{comment}\n\n" if comment else "\n\n") + textwrap.dedent(f"""\
        -------- Forwarded Message --------
        Subject: \tPump P-7 leaking again
        Date: \tMon, 1 Dec 2026 10:00:00 +0100
        From: \tCustomer <cust@customer.example>
        To: \tPaula <portal.contrib@example.com>



        {CUSTOMER_TEXT}
        """)
    html = textwrap.dedent(f"""\
        <!DOCTYPE html>
        <html>
          <head>
            <meta http-equiv="content-type" content="text/html; charset=UTF-8">
          </head>
          <body>
            {f"<p>{comment}</p>" if comment else ""}
            <div class="moz-forward-container"><br>
              <br>
              -------- Forwarded Message --------
              <table class="moz-email-headers-table" cellspacing="0" cellpadding="0" border="0">
                <tbody>
                  <tr><th valign="BASELINE" nowrap="nowrap" align="RIGHT">Subject: </th><td>Pump P-7 leaking again</td></tr>
                  <tr><th valign="BASELINE" nowrap="nowrap" align="RIGHT">Date: </th><td>Mon, 1 Dec 2026 10:00:00 +0100</td></tr>
                  <tr><th valign="BASELINE" nowrap="nowrap" align="RIGHT">From: </th><td>Customer
                    <a class="moz-txt-link-rfc2396E" href="mailto:cust@customer.example">&lt;cust@customer.example&gt;</a></td></tr>
                </tbody>
              </table>
              <br>
              <br>
              <p>{CUSTOMER_TEXT}</p>
            </div>
          </body>
        </html>
        """)
    return _alternative(plain, html, boundary="------------Xy12AbCdEf34GhIjKl56MnOp")


FORWARDS = {
    "gmail": ("Fwd: Pump P-7 leaking again", _gmail),
    "gmail-signature-above": ("Fwd: Pump P-7 leaking again", _gmail_with_signature),
    "outlook-desktop": ("FW: Pump P-7 leaking again", _outlook_desktop),
    "outlook-original-message": ("FW: Pump P-7 leaking again", _outlook_original_message),
    "outlook-web": ("Fw: Pump P-7 leaking again", _outlook_web),
    "outlook-german": ("WG: Pumpe P-7 leckt wieder", _outlook_desktop),
    "apple-mail": ("Fwd: Pump P-7 leaking again", _apple_mail),
    "thunderbird": ("Fwd: Pump P-7 leaking again", _thunderbird),
}


def _send_raw(mailer: Mailer, subject: str, mime: str) -> tuple[str, str]:
    to = mailer.address("note", "project.task", TASK_ID)
    headers = (f"From: Paula Contributor <{PAULA}>\nTo: {to}\nSubject: {subject}\n"
               f"Date: {email.utils.formatdate()}\nMessage-ID: <{uuid.uuid4().hex}@example.com>\n")
    raw = (headers + mime).replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
    return mailer.send(mailer.sign(raw), to), to


@pytest.mark.parametrize("client", FORWARDS)
def test_a_forward_without_a_comment_is_filed_as_the_forwarded_message(test_odoo, gateway, mailer, client):
    subject, build = FORWARDS[client]
    reply, _ = _send_raw(mailer, subject, build(""))
    assert reply.startswith("250 2.0.0 Filed"), reply
    [post] = _posts(test_odoo)
    body = post.kwargs["body"]
    # The forwarded message is the note, in full view: nothing is collapsed.
    assert CUSTOMER_TEXT in body and "cust@customer.example" in body
    assert "<details>" not in body
    assert "<script" not in body and "class=" not in body  # sanitized as any note


@pytest.mark.parametrize("client", FORWARDS)
def test_a_forward_with_a_comment_files_the_comment_and_collapses_the_forward(test_odoo, gateway, mailer, client):
    subject, build = FORWARDS[client]
    reply, _ = _send_raw(mailer, subject, build(COMMENT))
    assert reply.startswith("250 2.0.0 Filed"), reply
    [post] = _posts(test_odoo)
    own, _, details = post.kwargs["body"].partition("<details>")
    assert COMMENT in own and CUSTOMER_TEXT not in own
    assert CUSTOMER_TEXT in details


@pytest.mark.parametrize("client", ["gmail", "apple-mail", "thunderbird"])
def test_a_forward_whose_subject_was_edited_is_known_by_its_marker_line(test_odoo, gateway, mailer, client):
    # Gmail, Apple Mail and Thunderbird write a line above a forwarded message that they never write
    # above a quoted one; Outlook does not, so its forwards are known by their "FW:" subject only.
    _, build = FORWARDS[client]
    reply, _ = _send_raw(mailer, "Pump P-7 leaking again", build(""))
    assert reply.startswith("250 2.0.0 Filed"), reply
    [post] = _posts(test_odoo)
    assert CUSTOMER_TEXT in post.kwargs["body"] and "<details>" not in post.kwargs["body"]


QUOTE_ONLY_REPLIES = {
    "gmail": ("Re: Pump P-7 leaking again", _alternative(
        f"On Mon, Dec 1, 2026 at 10:00 AM Customer <cust@customer.example> wrote:\n\n> {CUSTOMER_TEXT}\n",
        '<div dir="ltr"><br></div><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Mon, Dec 1, '
        '2026 at 10:00 AM Customer &lt;cust@customer.example&gt; wrote:<br></div><blockquote class="gmail_quote">'
        f'{CUSTOMER_TEXT}</blockquote></div>')),
    "outlook-desktop": ("RE: Pump P-7 leaking again", _outlook_desktop("")),
    "outlook-original-message": ("RE: Pump P-7 leaking again", _outlook_original_message("")),
    "outlook-web": ("RE: Pump P-7 leaking again", _outlook_web("")),
    "apple-mail": ("Re: Pump P-7 leaking again", _alternative(
        f"\n\n> On 1 Dec 2026, at 10:00, Customer <cust@customer.example> wrote:\n>\n> {CUSTOMER_TEXT}\n",
        '<html><body><br id="lineBreakAtBeginningOfMessage"><div><br><blockquote type="cite"><div>On 1 Dec 2026, '
        'at 10:00, Customer &lt;cust@customer.example&gt; wrote:</div><br class="Apple-interchange-newline">'
        f'<div><div>{CUSTOMER_TEXT}</div></div></blockquote></div><br></body></html>')),
    "thunderbird": ("Re: Pump P-7 leaking again", _alternative(
        f"On 01/12/2026 10:00, Customer wrote:\n> {CUSTOMER_TEXT}\n",
        '<html><body><p><br></p><div class="moz-cite-prefix">On 01/12/2026 10:00, Customer wrote:<br></div>'
        f'<blockquote type="cite"><p>{CUSTOMER_TEXT}</p></blockquote></body></html>')),
    # A reply quoting a forward: the quote starts with the attribution, not with the forward's line.
    "gmail-quoting-a-forward": ("Re: Fwd: Pump P-7 leaking again", _alternative(
        "On Mon, Dec 1, 2026 at 11:00 AM Bob <bob@example.org> wrote:\n\n> ---------- Forwarded message ---------\n"
        f"> From: Customer <cust@customer.example>\n>\n> {CUSTOMER_TEXT}\n",
        '<div dir="ltr"><br></div><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Mon, Dec 1, '
        '2026 at 11:00 AM Bob &lt;bob@example.org&gt; wrote:<br></div><blockquote class="gmail_quote">'
        '---------- Forwarded message ---------<br>From: Customer &lt;cust@customer.example&gt;<br><br>'
        f'{CUSTOMER_TEXT}</blockquote></div>')),
}


@pytest.mark.parametrize("client", QUOTE_ONLY_REPLIES)
def test_a_reply_holding_only_a_quote_is_still_refused(test_odoo, gateway, mailer, client):
    subject, mime = QUOTE_ONLY_REPLIES[client]
    reply, _ = _send_raw(mailer, subject, mime)
    assert reply == "550 5.6.0 The message has no text to file, write above the quoted text"
    assert _posts(test_odoo) == []


# A review of silent content loss: "As the manual wrote:" above a blockquote reads as an attribution,
# so all the HTML part held was trimmed, and the plain part ("(html)") was filed without it.
MANUAL_HTML = ('<div dir="ltr"><div>Visited site 12 today. As the manual wrote:</div>'
               "<blockquote><div>never run the pump dry</div></blockquote></div>")


@pytest.mark.parametrize("plain", ["(html)", "Site 12: see below."], ids=["stub", "text-of-its-own"])
def test_the_senders_words_the_html_part_trimmed_reach_the_note_beside_a_plain_part(
        test_odoo, gateway, mailer, plain):
    reply, _ = _send_raw(mailer, "Re: Pump", _alternative(plain, MANUAL_HTML))
    assert reply.startswith("250 2.0.0 Filed"), reply
    [post] = _posts(test_odoo)
    body = post.kwargs["body"]
    assert "Visited site 12 today. As the manual wrote:" in body and "never run the pump dry" in body
    # Collapsed, as what is trimmed always is; a stub is no text of the sender's and is not filed.
    own, _, details = body.partition("<details>")
    assert "never run the pump dry" in details
    assert ("(html)" not in body) if plain == "(html)" else (plain in own)


# Inline answers typed into the quote, where the client marks none of them as the author's (a
# stripping review: only the line above the quote was filed, or, with none, the reply was refused
# "write above the quoted text").
INLINE_REPLIES = {
    "gmail": ("Re: Pump P-7 leaking again", _alternative(
        f"Done.\n\nOn Mon, Dec 1, 2026 at 10:00 AM Customer <cust@customer.example> wrote:\n\n> {CUSTOMER_TEXT}\n>\n"
        "Seal replaced, leak gone.\n",
        '<div dir="ltr">Done.</div><div class="gmail_quote gmail_quote_container"><div dir="ltr" class="gmail_attr">'
        'On Mon, Dec 1, 2026 at 10:00 AM Customer &lt;cust@customer.example&gt; wrote:<br></div><blockquote '
        f'class="gmail_quote">{CUSTOMER_TEXT}</blockquote><div>Seal replaced, leak gone.</div></div>')),
    "outlook-desktop": ("RE: Pump P-7 leaking again", _alternative(
        "\nFrom: Customer <cust@customer.example>\nSent: Monday, December 1, 2026 10:00 AM\n"
        f"To: Paula Contributor <{PAULA}>\nSubject: Pump P-7 leaking again\n\n{CUSTOMER_TEXT}\n"
        "[Paula Contributor] Seal replaced, leak gone.\n",
        '<html><body lang="EN-US"><div class="WordSection1"><p class="MsoNormal"><o:p>&nbsp;</o:p></p><div><div '
        'style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0in 0in 0in"><p class="MsoNormal"><b>From:'
        '</b> Customer &lt;cust@customer.example&gt;<br><b>Sent:</b> Monday, December 1, 2026 10:00 AM<br><b>To:</b>'
        f' Paula Contributor<br><b>Subject:</b> Pump P-7 leaking again</p></div></div><p class="MsoNormal">{CUSTOMER_TEXT}'
        '</p><p class="MsoNormal"><span style="color:red">[Paula Contributor] Seal replaced, leak gone.</span></p>'
        '</div></body></html>')),
}


@pytest.mark.parametrize("client", INLINE_REPLIES)
def test_inline_answers_typed_into_the_quote_are_filed_next_to_it(test_odoo, gateway, mailer, client):
    subject, mime = INLINE_REPLIES[client]
    reply, _ = _send_raw(mailer, subject, mime)
    assert reply.startswith("250 2.0.0 Filed"), reply
    [post] = _posts(test_odoo)
    own, _, details = post.kwargs["body"].partition("<details>")
    assert "Seal replaced, leak gone." in own and CUSTOMER_TEXT in own and not details


@pytest.mark.parametrize("labels", [("Feladó:", "Elküldve:", "Címzett:", "Tárgy:"), ("من:", "تم الإرسال:", "إلى:", "الموضوع:")],
                         ids=["hungarian", "arabic"])
def test_an_outlook_reply_in_another_language_collapses_the_thread(test_odoo, gateway, mailer, labels):
    # A stripping review: in a language the gateway had no labels of, Outlook's header block was
    # not known, and the whole earlier thread was filed as the sender's words. Hungarian is known by
    # its labels now, Arabic by Outlook's markup around the block.
    block = "<br>".join(f"<b>{label}</b> {value}" for label, value in zip(labels, ("Customer", "x", "Paula", "P-7")))
    html_part = ('<html><body><div class="WordSection1"><p class="MsoNormal">Seal replaced.</p><div><div style="border:'
                 f'none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0in 0in 0in"><p class="MsoNormal">{block}</p></div>'
                 f'</div><p class="MsoNormal">{CUSTOMER_TEXT}</p></div></body></html>')
    plain = "Seal replaced.\n\n" + "\n".join(f"{label} x" for label in labels) + f"\n\n{CUSTOMER_TEXT}\n"
    reply, _ = _send_raw(mailer, "RE: Pump P-7 leaking again", _alternative(plain, html_part))
    assert reply.startswith("250 2.0.0 Filed"), reply
    [post] = _posts(test_odoo)
    own, _, details = post.kwargs["body"].partition("<details>")
    assert "Seal replaced." in own and CUSTOMER_TEXT not in own and CUSTOMER_TEXT in details


def test_a_disclaimer_below_a_top_posted_reply_is_collapsed_with_the_quote(test_odoo, gateway, mailer):
    # A stripping review: the footer an outbound gateway appends below the quote was taken for the
    # answer of an inline reply, and the whole quoted message was filed in full view.
    footer = "CONFIDENTIALITY NOTICE: This e-mail is intended solely for the addressee."
    html_part = ('<html><body><p>Seal replaced.</p><div class="moz-cite-prefix">On 01/12/2026 10:00, Customer wrote:'
                 f'<br></div><blockquote type="cite"><p>{CUSTOMER_TEXT}</p></blockquote><br><div>{footer}</div></body></html>')
    plain = f"Seal replaced.\n\nOn 01/12/2026 10:00, Customer wrote:\n> {CUSTOMER_TEXT}\n\n{footer}\n"
    for mime in (_alternative(plain, html_part), _plain_only(plain)):
        reply, _ = _send_raw(mailer, "Re: Pump P-7 leaking again", mime)
        assert reply.startswith("250 2.0.0 Filed"), reply
        own, _, details = test_odoo.message(int(reply.rsplit(" ", 1)[1]))["body"].partition("<details>")
        assert "Seal replaced." in own and CUSTOMER_TEXT not in own and footer not in own
        assert CUSTOMER_TEXT in details and footer in details


def _raw(to: str, subject: str, mime: str, body: bytes) -> bytes:
    """A message as a mail client writes it: ``mime`` are its MIME headers, ``body`` its bytes."""
    head = (f"From: Paula Contributor <{PAULA}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: {email.utils.formatdate()}\r\nMessage-ID: <{uuid.uuid4().hex}@example.com>\r\n"
            f"MIME-Version: 1.0\r\n{mime}\r\n\r\n")
    return head.encode() + body


def _journal_defects(gateway) -> list[str]:
    with Journal(gateway.services.config.journal_path) as journal:
        [row] = journal.recent(1)
    return row.defects


@pytest.mark.parametrize("subtype", ["html", "plain"])
def test_a_lone_surrogate_in_utf_7_costs_one_character_not_the_text(test_odoo, gateway, mailer, subtype):
    # UTF-7 decodes "+2AA-" to a lone surrogate: the sanitizer could not encode it (a plain part:
    # 451 on every retry), and libxml2 stopped reading the HTML there, silently, the note losing
    # everything after it (found after the fuzzing review's control characters).
    to = mailer.address("note", "project.task", TASK_ID)
    text = (b"<p>Pump P-7 +2AA- inspected</p><p>AFTER-SURROGATE seal replaced</p>\r\n" if subtype == "html"
            else b"Pump P-7 +2AA- inspected\r\n\r\nAFTER-SURROGATE seal replaced\r\n")
    raw = _raw(to, "UTF-7", f"Content-Type: text/{subtype}; charset=utf-7", text)
    reply = mailer.send(mailer.sign(raw), to)
    assert reply.startswith("250 2.0.0 Filed"), reply
    body = test_odoo.message(int(reply.rsplit(" ", 1)[1]))["body"]
    assert "Pump P-7 \ufffd inspected" in body and "AFTER-SURROGATE seal replaced" in body


def test_outlook_windows_1252_labelled_iso_8859_1_is_filed_readable(test_odoo, gateway, mailer):
    # Outlook labels Windows-1252 text iso-8859-1; read as latin-1 its quotes, dash and euro sign
    # became invisible C1 controls in the note (found by an exploratory test). Browsers and mail
    # clients read the label as windows-1252 (WHATWG Encoding Standard), and so does the gateway.
    to = mailer.address("note", "project.task", TASK_ID)
    text = "It\u2019s \u201cdone\u201d \u2013 price \u20ac5"
    raw = _raw(to, "Quote", "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable",
               quopri.encodestring(text.encode("cp1252")).replace(b"\n", b"\r\n") + b"\r\n")
    reply = mailer.send(mailer.sign(raw), to)
    assert reply.startswith("250 ")
    body = test_odoo.message(int(reply.rsplit(" ", 1)[1]))["body"]
    assert f"<p>{text}</p>" in body and not any("\x80" <= char <= "\x9f" for char in body)
    assert "charset-read-as-windows-1252:iso-8859-1" in _journal_defects(gateway)


def test_a_byte_its_charset_does_not_decode_costs_one_character_not_the_part(test_odoo, gateway, mailer):
    # A gb2312 part with one byte no Chinese charset decodes was read whole as windows-1252
    # ("±ÃÒÑ¼ìÐÞ"), and the journal said only charset-mismatch (found by a review of real-world
    # charsets). It is read in its charset, with U+FFFD for that byte, and the journal says so.
    to = mailer.address("note", "project.task", TASK_ID)
    data = "泵P-7已检修，王喆".encode("gbk") + b"\xff" + "密封件已更换。".encode("gbk")
    raw = _raw(to, "Pump P-7", "Content-Type: text/plain; charset=gb2312\r\nContent-Transfer-Encoding: base64",
               base64.encodebytes(data).replace(b"\n", b"\r\n"))
    reply = mailer.send(mailer.sign(raw), to)
    assert reply.startswith("250 ")
    body = test_odoo.message(int(reply.rsplit(" ", 1)[1]))["body"]
    assert "泵P-7已检修，王喆\ufffd密封件已更换。" in body
    assert _journal_defects(gateway) == ["charset-mismatch:gb2312", "charset-replaced:gb18030"]


def test_utf_16_without_a_byte_order_mark_is_filed_big_endian(test_odoo, gateway, mailer):
    # RFC 2781 section 4.3; it was read little-endian, every character swapped (found by a review).
    to = mailer.address("note", "project.task", TASK_ID)
    text = "Pump P-7 inspected, seal replaced \u00fc"
    raw = _raw(to, "UTF-16", "Content-Type: text/plain; charset=utf-16\r\nContent-Transfer-Encoding: base64",
               base64.encodebytes(text.encode("utf-16-be")).replace(b"\n", b"\r\n"))
    reply = mailer.send(mailer.sign(raw), to)
    assert reply.startswith("250 ")
    assert f"<p>{text}</p>" in test_odoo.message(int(reply.rsplit(" ", 1)[1]))["body"]
    assert _journal_defects(gateway) == ["charset-read-as-big-endian:utf-16"]


def _with_file(to: str, subject: str, file_headers: str, data: bytes) -> bytes:
    """A text part and one file whose MIME headers are ``file_headers`` (each line ending in CRLF)."""
    body = (b"--B\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee attached.\r\n--B\r\n"
            + file_headers.encode() + b"Content-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(data).replace(b"\n", b"\r\n") + b"--B--\r\n")
    return _raw(to, subject, 'Content-Type: multipart/mixed; boundary="B"', body)


def test_refusal_naming_a_non_ascii_file_is_one_ascii_smtp_line(test_odoo, start_gateway, dns_server, dkim_keys):
    # A reply is ASCII (refusals._ascii); aiosmtpd failed to send a refusal that
    # named "Rechnung Müller.vbs" and the client got "500 Error: (UnicodeEncodeError) ..." instead.
    gateway = start_gateway(dns_server.port, rules_extra='[attachments]\non_refused_file = "refuse"\n')
    mailer = Mailer(gateway, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = _with_file(to, "Rechnung", "Content-Type: text/plain\r\nContent-Disposition: attachment; "
                     "filename*=utf-8''Rechnung%20M%C3%BCller%20%E2%82%AC.vbs\r\n", b"MsgBox 1\r\n")
    assert mailer.send(mailer.sign(raw), to) == (
        "550 5.7.1 An attached file is not accepted by this gateway: Rechnung Muller ?.vbs (.vbs files are not accepted)")


def test_encoded_attachment_names_are_filed_as_the_client_shows_them(test_odoo, gateway, mailer):
    # Found by an exploratory test: Gmail's RFC 2047 name was filed as "=?UTF-8?B?...?=" and a raw
    # UTF-8 one as "��ber caf��.pdf".
    to = mailer.address("note", "project.task", TASK_ID)
    names = []
    for headers in ('Content-Type: application/pdf; name="=?UTF-8?B?UmFwcG9ydCBkw6l0YWlsbMOpLnBkZg==?="\r\n'
                    'Content-Disposition: attachment; filename="=?UTF-8?B?UmFwcG9ydCBkw6l0YWlsbMOpLnBkZg==?="\r\n',
                    'Content-Type: application/pdf; name="Über café.pdf"\r\n'
                    'Content-Disposition: attachment; filename="Über café.pdf"\r\n'):
        reply = mailer.send(mailer.sign(_with_file(to, "Report", headers, b"%PDF-1.4\n")), to)
        assert reply.startswith("250 ")
        [attachment_id] = test_odoo.message(int(reply.rsplit(" ", 1)[1]))["attachment_ids"]
        names.append(test_odoo.record("ir.attachment", attachment_id, ["name"])["name"])
    assert names == ["Rapport détaillé.pdf", "Über café.pdf"]


# The same .vbs file named as a client may write it: the deny-list must see "invoice.vbs" in each.
VBS_NAMES = {
    "plain": 'Content-Type: text/plain; name="invoice.vbs"\r\nContent-Disposition: attachment; filename="invoice.vbs"\r\n',
    "rfc2047-b": ('Content-Type: text/plain; name="=?UTF-8?B?aW52b2ljZS52YnM=?="\r\n'
                  'Content-Disposition: attachment; filename="=?UTF-8?B?aW52b2ljZS52YnM=?="\r\n'),
    "rfc2047-q-name-only": 'Content-Type: text/plain; name="=?utf-8?Q?invoice=2Evbs?="\r\n'
                           'Content-Disposition: attachment\r\n',
    "rfc2047-split": ('Content-Type: application/octet-stream\r\nContent-Disposition: attachment;\r\n'
                      ' filename="=?utf-8?B?aW52b2ljZS52?=\r\n =?utf-8?B?YnM=?="\r\n'),
    "rfc2231": "Content-Type: text/plain\r\nContent-Disposition: attachment; filename*=utf-8''invoice%2Evbs\r\n",
    "rfc2231-continued": ("Content-Type: text/plain\r\nContent-Disposition: attachment;\r\n"
                          " filename*0*=utf-8''invoice; filename*1*=%2Ev; filename*2=bs\r\n"),
}


def test_deny_list_refuses_an_encoded_vbs_with_the_reply_of_a_plain_one(test_odoo, start_gateway, dns_server,
                                                                           dkim_keys):
    # SECURITY (found by an exploratory test): the deny-list checked the undecoded name, so
    # invoice.vbs written as an RFC 2047 encoded word was filed instead of refused.
    gateway = start_gateway(dns_server.port, rules_extra='[attachments]\non_refused_file = "refuse"\n')
    mailer = Mailer(gateway, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    replies = {label: mailer.send(mailer.sign(_with_file(to, "Invoice", headers, b'MsgBox "hi"\r\n')), to)
               for label, headers in VBS_NAMES.items()}
    assert replies == dict.fromkeys(VBS_NAMES, "550 5.7.1 An attached file is not accepted by this gateway: "
                                               "invoice.vbs (.vbs files are not accepted)")
    assert _posts(test_odoo) == []


def test_dropped_encoded_vbs_is_named_in_the_note_and_the_journal(test_odoo, gateway, mailer):
    to = mailer.address("note", "project.task", TASK_ID)
    reply = mailer.send(mailer.sign(_with_file(to, "Invoice", VBS_NAMES["rfc2047-b"], b'MsgBox "hi"\r\n')), to)
    assert reply.startswith("250 ")
    message = test_odoo.message(int(reply.rsplit(" ", 1)[1]))
    assert message["attachment_ids"] == [] and "invoice.vbs" in message["body"]
    assert "attachment-refused:invoice.vbs (.vbs files are not accepted)" in _journal_defects(gateway)


# A tracking pixel as a mailing tool writes it, and the text that goes with it.
PIXEL = '<img src="https://tracker.example/p.gif?note=42" width="1" height="1">'
PIXEL_HTML = f'<p>See the photo of the pump.</p>{PIXEL}<p><img src="https://photos.example/pump.jpg" alt="Pump P-7"></p>'


def _remote_images_filed(mailer: Mailer, kind: str, test_odoo) -> str:
    to = mailer.address(kind, "project.task", TASK_ID)
    raw = compose(PAULA, to, "Pump photo", "See the photo of the pump.", sender_name="Paula Contributor",
                  html=PIXEL_HTML)
    reply = mailer.send(mailer.sign(raw), to)
    assert reply.startswith("250 ")
    return test_odoo.message(int(reply.rsplit(" ", 1)[1]))["body"]


@pytest.mark.parametrize("kind", ["note", "reply"])
def test_remote_images_are_filed_as_links_not_loaded_by_readers(test_odoo, gateway, mailer, kind):
    # SECURITY (found by a content review): a remote image was filed as an image, so the browser of
    # every internal user opening the chatter fetched it and told the sender when the internal note
    # was read, from which IP and browser. It is now a link the reader can open deliberately.
    body = _remote_images_filed(mailer, kind, test_odoo)
    assert "<img" not in body
    # A link shows its alt text, else its URL (Odoo drops the rel the gateway gives it).
    assert '<a href="https://tracker.example/p.gif?note=42">https://tracker.example/p.gif?note=42</a>' in body
    assert '<a href="https://photos.example/pump.jpg">Pump P-7</a>' in body
    assert "See the photo of the pump." in body
    assert "remote-image-dropped:2" in _journal_defects(gateway)


def test_inline_image_of_the_message_still_shows_next_to_a_linked_remote_one(test_odoo, gateway, mailer):
    to = mailer.address("note", "project.task", TASK_ID)
    message = email.message_from_bytes(
        compose(PAULA, to, "Pump photo", "See the photo.", sender_name="Paula Contributor",
                html=f'<p>See the photo.</p><p><img src="cid:pump@example.com" alt="pump"></p>{PIXEL}'),
        policy=email.policy.SMTP)
    html_part = message.get_body(("html",))
    html_part.add_related(b"\x89PNG\r\n\x1a\nfake", maintype="image", subtype="png", cid="<pump@example.com>",
                          filename="pump.png")
    reply = mailer.send(mailer.sign(message.as_bytes()), to)
    assert reply.startswith("250 ")
    filed = test_odoo.message(int(reply.rsplit(" ", 1)[1]))
    [attachment_id] = filed["attachment_ids"]
    # Odoo points the message's own image at /web/image/<id>: it stays an image.
    assert f'<img src="/web/image/{attachment_id}?access_token=' in filed["body"]
    assert filed["body"].count("<img") == 1
    assert "remote-image-dropped:1" in _journal_defects(gateway)


def _with_images(to: str, html: str, images: dict[str, bytes], *, text: str = "See below.", cc: str = "") -> bytes:
    """Paula's message whose HTML is ``html`` with ``images`` (Content-ID: bytes) inline, as Outlook sends them."""
    message = email.message_from_bytes(
        compose(PAULA, to, "Valve", text, sender_name="Paula Contributor", html=html), policy=email.policy.SMTP)
    if cc:
        message["Cc"] = cc
    html_part = message.get_body(("html",))
    for content_id, payload in images.items():
        html_part.add_related(payload, maintype="image", subtype="png", cid=f"<{content_id}>",
                              filename=content_id.partition("@")[0])
    return message.as_bytes()


def test_an_inline_image_the_rules_refuse_is_text_not_a_broken_picture(test_odoo, start_gateway, dns_server,
                                                                        dkim_keys):
    # Found by a review on a real Odoo 18: Outlook's signature logo over max_file_size was left out,
    # and its <img src="cid:image001.png@..."> stayed in the note; Odoo points only a cid: of a posted
    # file at it, so the chatter and the internal user's notification email showed a broken picture.
    gateway = start_gateway(dns_server.port, rules_extra="[attachments]\nmax_file_size = 100\n")
    mailer = Mailer(gateway, dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    logo, plan = "image001.png@01DC62B1.5A8F3E20", "image002.png@01DC62B1.5A8F3E20"
    html = (f'<p>The valve leaks again.</p><p><img src="cid:{plan}"></p><p>Kind regards</p>'
            f'<p><img width="120" height="40" src="cid:{logo}" alt="Contoso &lt;logo&gt;"></p>'
            '<p><img src="cid:seal@example.com" alt="seal"></p>')
    reply = mailer.send(mailer.sign(_with_images(to, html, {
        logo: b"\x89PNG\r\n\x1a\n" + b"L" * 200, plan: b"\x89PNG\r\n\x1a\n" + b"P" * 200,
        "seal@example.com": b"\x89PNG\r\n\x1a\nseal"}, cc=f"Marc Demo <{MARC}>")), to)
    assert reply.startswith("250 2.0.0 Filed"), reply
    filed = test_odoo.message(int(reply.rsplit(" ", 1)[1]))
    [seal_id] = filed["attachment_ids"]
    [notification] = test_odoo.outbox
    for body in (filed["body"], notification.body_html):
        assert "cid:" not in body
        # The refused ones: their alt text, escaped, else a marker naming the file.
        assert "<p>Contoso &lt;logo&gt;</p>" in body
        assert "<p>[image not filed: image002.png]</p>" in body
        # The filed one still shows, pointed at its attachment by Odoo.
        assert f'<img src="/web/image/{seal_id}?access_token=' in body
        assert body.count("<img") == 1
    assert "image001.png (208 bytes, over the limit of 100 bytes per file)" in filed["body"]
    # A pasted screenshot alone, left out, is refused for it, not filed as a note of a marker.
    reply = mailer.send(mailer.sign(_with_images(to, f'<p><img src="cid:{plan}"></p>',
                                                 {plan: b"\x89PNG\r\n\x1a\n" + b"P" * 200}, text="")), to)
    assert reply == ("550 5.7.1 The message has no text to file, and its files are not accepted by this gateway: "
                     "image002.png (208 bytes, over the limit of 100 bytes per file)")


@pytest.mark.parametrize("kind", ["note", "reply"])
def test_a_cid_url_spelled_otherwise_than_its_content_id_shows_its_file(test_odoo, gateway, mailer, kind):
    # Found by a review on a real Odoo 18: a cid: URL URL-encoded (RFC 2392: "cid:photo1%40host.example")
    # or in another case than the part's Content-ID was read as pointing at it (the part counted as
    # inline), but Odoo compares the URL with the posted cid exactly, for message_post and for its
    # mail gateway, and left both pictures broken. Such a URL is written as the Content-ID posted.
    to = mailer.address(kind, "project.task", TASK_ID)
    html = ('<div>Two photos: <img src="cid:photo1%40host.example" alt="p1"> and '
            '<img src="cid:PHOTO2@HOST.EXAMPLE" alt="p2">.</div>')
    reply = mailer.send(mailer.sign(_with_images(to, html, {
        "photo1@host.example": b"\x89PNG\r\n\x1a\none", "photo2@host.example": b"\x89PNG\r\n\x1a\ntwo"})), to)
    assert reply.startswith("250 2.0.0 Filed"), reply
    filed = test_odoo.message(int(reply.rsplit(" ", 1)[1]))
    files = {test_odoo.record("ir.attachment", attachment_id, ["name"])["name"]: attachment_id
             for attachment_id in filed["attachment_ids"]}
    assert set(files) == {"photo1", "photo2"}
    assert "cid:" not in filed["body"]
    for name, alt in (("photo1", "p1"), ("photo2", "p2")):
        assert re.search(f'<img src="/web/image/{files[name]}\\?access_token=[^"]+" alt="{alt}">', filed["body"])


def test_remote_images_keep_rule_files_them_as_images(test_odoo, start_gateway, dns_server, dkim_keys):
    gateway = start_gateway(dns_server.port, rules_extra='[content]\nremote_images = "keep"\n')
    body = _remote_images_filed(Mailer(gateway, dkim_keys), "note", test_odoo)
    assert PIXEL in body and '<img src="https://photos.example/pump.jpg" alt="Pump P-7">' in body
    assert not any(defect.startswith("remote-image-dropped") for defect in _journal_defects(gateway))


# What follows the point where the note is cut, and a comment or a processing instruction after it.
CUT_POINTS = {
    "cite": '<blockquote type="cite"><p>Was the seal replaced?</p></blockquote>',
    "gmail-quote": '<div class="gmail_quote"><p>Was the seal replaced?</p></div>',
    "outlook-separator": "<div>-----Original Message-----</div><p>Was the seal replaced?</p>",
    "signature": "<div>-- <br>Paula Contributor, site inspections</div>",
    "mobile-closing": "<div>Sent from my iPhone</div>",
}
AFTER_THE_CUT = {
    "comment": "<!-- added by the outbound gateway: SECRET-COMMENT -->",
    "windows-fragment-end": "<!--EndFragment-->",
    "processing-instruction": "<?php SECRET-COMMENT ?>",
}


@pytest.mark.parametrize("after", AFTER_THE_CUT)
@pytest.mark.parametrize("cut", CUT_POINTS)
def test_a_comment_after_the_quote_or_signature_is_no_reason_to_defer(test_odoo, gateway, mailer, cut, after):
    # Found by a fuzzing review: a comment or processing instruction anywhere after the cut point
    # made the stage extract-content fail ("Input object is not an XML element: HtmlComment"), a
    # 451 on every retry. Windows' clipboard writes <!--EndFragment--> at the end of pasted HTML.
    to = mailer.address("note", "project.task", TASK_ID)
    html = f"<p>Seal of P-7 replaced, pump running.</p>{CUT_POINTS[cut]}{AFTER_THE_CUT[after]}"
    reply = mailer.send(mailer.sign(compose(PAULA, to, "Re: P-7", "Seal of P-7 replaced, pump running.", html=html)), to)
    assert reply.startswith("250 2.0.0 Filed"), reply
    body = test_odoo.message(int(reply.rsplit(" ", 1)[1]))["body"]
    own, _, details = body.partition("<details>")
    assert "Seal of P-7 replaced, pump running." in own and "<details>" in body
    # Comments carry nothing to show: the sanitizer drops them, in the note and in what was trimmed.
    assert "SECRET-COMMENT" not in body and "EndFragment" not in body and "<!--" not in body


def test_html_nested_deeper_than_libxml2s_default_limit_keeps_all_its_text(test_odoo, gateway, mailer):
    # A content review: lxml reads HTML nested deeper than 255 levels only up to there, without an
    # error, and the note kept "My answer" alone, the author's sign-off below the nesting lost.
    to = mailer.address("note", "project.task", TASK_ID)
    html = ("<p>My answer</p>" + "<div>" * 300 + "<p>DEEP-TEXT</p>" + "</div>" * 300
            + "<p>AFTER-DEEP author sign-off</p>")
    raw = compose(PAULA, to, "Deep", "My answer\nDEEP-TEXT\nAFTER-DEEP author sign-off", html=html)
    reply = mailer.send(mailer.sign(raw), to)
    assert reply.startswith("250 ")
    body = test_odoo.message(int(reply.rsplit(" ", 1)[1]))["body"]
    assert "My answer" in body and "DEEP-TEXT" in body and "AFTER-DEEP author sign-off" in body


def test_html_nested_deeper_than_libxml2_reads_is_refused_not_cut_short(test_odoo, gateway, mailer):
    # Past 2048 levels libxml2 stops reading even with its "huge" option: refused, never filed cut.
    to = mailer.address("note", "project.task", TASK_ID)
    html = "<p>My answer</p>" + "<div>" * 2100 + "<p>DEEP-TEXT</p>" + "</div>" * 2100 + "<p>Bye</p>"
    raw = compose(PAULA, to, "Deep", "My answer\nDEEP-TEXT\nBye", html=html)
    assert mailer.send(mailer.sign(raw), to) == "554 5.6.0 HTML elements nested too deep: more than 2048 levels"
    assert _posts(test_odoo) == []


@pytest.mark.parametrize("character", ["\x01", "\x0b", "\x0c", "\x1b", "\ufffe"],
                         ids=["soh", "vertical-tab", "form-feed", "escape", "noncharacter"])
def test_a_control_character_in_html_nested_deeper_than_odoo_reads_is_no_reason_to_defer(
        test_odoo, gateway, mailer, character):
    # Found by a fuzzing review: the text of what is nested deeper than 100 levels is joined and
    # set again (quotes._flatten), and lxml refuses a control character there: 451 on every retry.
    to = mailer.address("note", "project.task", TASK_ID)
    html = ("<p>My answer</p>" + "<div>\n" * 101 + f"page one{character}page two<p>DEEP-TEXT</p>"
            + "</div>\n" * 101 + "<p>AFTER-DEEP author sign-off</p>")
    raw = compose(PAULA, to, "Deep", "My answer\npage one page two\nDEEP-TEXT\nAFTER-DEEP author sign-off", html=html)
    reply = mailer.send(mailer.sign(raw), to)
    assert reply.startswith("250 2.0.0 Filed"), reply
    body = test_odoo.message(int(reply.rsplit(" ", 1)[1]))["body"]
    assert "My answer" in body and "DEEP-TEXT" in body and "AFTER-DEEP author sign-off" in body
    # A vertical tab or a form feed separates the words as a line break does; the others are dropped.
    assert ("page one\npage two" if character in "\x0b\x0c" else "page onepage two") in body
    assert character not in body


def test_a_comment_in_html_nested_deeper_than_odoo_reads_keeps_the_text_after_it(test_odoo, gateway, mailer):
    # Found while fixing the fuzzing review's comments: unwrapping what is nested deeper than 100
    # levels walked elements only, and the text after each comment or processing instruction in it
    # was dropped with it, silently.
    to = mailer.address("note", "project.task", TASK_ID)
    html = ("<p>My answer</p>" + "<div>" * 101 + "<div>seal<!--[if !supportLists]-->AFTER-COMMENT replaced"
            "<?php x ?>AFTER-PI<p>DEEP-TEXT</p></div>" + "</div>" * 101 + "<p>Bye</p>")
    raw = compose(PAULA, to, "Deep", "My answer\nseal replaced\nDEEP-TEXT\nBye", html=html)
    reply = mailer.send(mailer.sign(raw), to)
    assert reply.startswith("250 2.0.0 Filed"), reply
    body = test_odoo.message(int(reply.rsplit(" ", 1)[1]))["body"]
    assert "sealAFTER-COMMENT replacedAFTER-PI" in body and "DEEP-TEXT" in body and "supportLists" not in body


def test_plain_text_quoted_300_levels_deep_keeps_the_answer_below(test_odoo, gateway, mailer):
    # Each ">" level was a blockquote; Odoo reads 256 levels and stored nothing below them.
    to = mailer.address("note", "project.task", TASK_ID)
    raw = compose(PAULA, to, "Deep", "My answer\n" + ">" * 300 + " DEEP-TEXT\nAFTER-DEEP author sign-off\n")
    reply = mailer.send(mailer.sign(raw), to)
    assert reply.startswith("250 ")
    body = test_odoo.message(int(reply.rsplit(" ", 1)[1]))["body"]
    assert "My answer" in body and "DEEP-TEXT" in body and "AFTER-DEEP author sign-off" in body


def test_a_note_with_one_long_line_is_filed_while_other_sessions_are_answered(test_odoo, serve, dkim_keys):
    # A review: a 40 KB line starting "On " (one line of a base64 part) kept mail-parser-reply's
    # search, which holds the interpreter's lock, busy for ~19 s: no other session got its banner or
    # its EHLO answered meanwhile. The library no longer reads such a line: ~10 ms.
    import smtplib
    import threading
    import time

    from serving import Port, send

    gateway = serve()
    mailer = Mailer(Port(gateway.port), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(compose(PAULA, to, "Pump", "Note: see below\nOn " + "a " * 20_000 + "\n"))
    assert b"Content-Transfer-Encoding: base64" in raw or b"quoted-printable" in raw
    replies: list[str] = []
    note = threading.Thread(target=lambda: replies.append(send(raw, to, gateway.port)))
    worst = 0.0
    note.start()
    while note.is_alive() or not worst:
        started = time.monotonic()
        with smtplib.SMTP("127.0.0.1", gateway.port, timeout=60) as client:
            assert client.ehlo("probe.example.com")[0] == 250
        worst = max(worst, time.monotonic() - started)
        time.sleep(0.02)
    note.join()
    assert replies[0].startswith("250 2.0.0 Filed"), replies
    assert worst < 3, f"an EHLO waited {worst:.1f} s"
    body = test_odoo.message(int(replies[0].rsplit(" ", 1)[1]))["body"]
    assert "Note: see below" in body and "a a a a" in body


# The closings mobile clients and webmail apps write below the text; a MIME review found all but the
# iPhone and Outlook ones filed as part of the note.
MOBILE_CLOSINGS = [
    "Sent from my Samsung Galaxy smartphone.", "Gesendet von meinem Samsung Galaxy Smartphone.",
    "Envoyé de mon appareil Galaxy", "Sent from Yahoo Mail on Android", "Sent with Proton Mail secure email.",
    "Sent from my Huawei phone", "Sent from my BlackBerry 10 smartphone.", "Sent from my T-Mobile 5G Device",
    "Sent via the Samsung Galaxy S23, an AT&T 5G smartphone", "Skickat från min iPhone", "Wysłane z mojego iPhone'a",
]


@pytest.mark.parametrize("closing", MOBILE_CLOSINGS)
def test_a_mobile_closing_below_the_text_is_collapsed_with_the_signature(test_odoo, gateway, mailer, closing):
    to = mailer.address("note", "project.task", TASK_ID)
    reply = mailer.send(mailer.sign(compose(PAULA, to, "P-7 done", f"Pump P-7 done, seal replaced.\n\n{closing}\n")), to)
    assert reply.startswith("250 2.0.0 Filed"), reply
    own, _, details = test_odoo.message(int(reply.rsplit(" ", 1)[1]))["body"].partition("<details>")
    assert "Pump P-7 done, seal replaced." in own and closing.split()[0] not in own
    assert html.escape(closing, quote=False) in details


def test_a_sentence_like_a_closing_in_the_middle_of_the_text_stays_in_the_note(test_odoo, gateway, mailer):
    to = mailer.address("note", "project.task", TASK_ID)
    # The former pattern took "Sent from my phone" anywhere, and trimmed the author's text below it.
    text = "Pump P-7 done.\nSent from my phone\nThe report is attached.\n"
    reply = mailer.send(mailer.sign(compose(PAULA, to, "P-7 done", text, html=text.replace("\n", "<br>"))), to)
    assert reply.startswith("250 2.0.0 Filed"), reply
    body = test_odoo.message(int(reply.rsplit(" ", 1)[1]))["body"]
    assert "Sent from my phone" in body and "The report is attached." in body and "<details>" not in body


def test_dashes_in_a_table_or_above_a_list_are_filed_as_the_authors_text(test_odoo, gateway, mailer):
    # A stripping review: a "--" cell was taken for a signature delimiter, the table was cut in two and
    # its rows below filed only in the collapsed block, as cells the sanitizer dropped; a "--" line
    # between a heading and a numbered list hid the list.
    to = mailer.address("note", "project.task", TASK_ID)
    table = ("<p>Inspection results:</p><table border=1><tr><th>Valve</th><th>Action</th></tr><tr><td>V1</td>"
             "<td>--</td></tr><tr><td>V2</td><td>gasket replaced</td></tr></table><p>Customer signed the report.</p>")
    plain = "Checklist:\n--\n1. pump ok\n2. valve replaced\n"
    for text, html_part in (("(html)", table), (plain, None)):
        reply = mailer.send(mailer.sign(compose(PAULA, to, "P-7 visit", text, html=html_part)), to)
        assert reply.startswith("250 2.0.0 Filed"), reply
        body = test_odoo.message(int(reply.rsplit(" ", 1)[1]))["body"]
        assert "<details>" not in body
        if html_part:
            assert "<td>gasket replaced</td>" in body and "Customer signed the report." in body
        else:
            assert "2. valve replaced" in body


# The start of a winmail.dat as Outlook writes it: the TNEF signature, a key, then the TNEF version
# attribute (MS-OXTNEF 2.1.3); the gateway does not decode it (docs/content.md), so no more is needed.
WINMAIL_DAT = bytes.fromhex("789f3e22" "4c61" "0106900800" "04000000" "00000100" "0100")
_TNEF_REFUSAL = "554 5.6.0 Outlook sent this in its own format (winmail.dat): send it as plain text or HTML"


def _tnef_message(to: str, text: str | None, *, content_type: str = "application/ms-tnef") -> bytes:
    """Outlook's 'Rich Text' message: a text part (Outlook to an external recipient) and winmail.dat,
    or winmail.dat alone as the whole message (Exchange)."""
    encoded = base64.b64encode(WINMAIL_DAT).decode()
    tnef_headers = (f'Content-Type: {content_type}; name="winmail.dat"\r\nContent-Transfer-Encoding: base64\r\n'
                    'Content-Disposition: attachment; filename="winmail.dat"')
    if text is None:
        return _raw(to, "Inspection report attached", tnef_headers + "\r\nX-MS-TNEF-Correlator: <0000@example.com>",
                    encoded.encode())
    return _raw(to, "Inspection report attached", 'Content-Type: multipart/mixed; boundary="_000_tnef_"',
                (f'--_000_tnef_\r\nContent-Type: text/plain; charset="us-ascii"\r\n\r\n{text}\r\n'
                 f"--_000_tnef_\r\n{tnef_headers}\r\n\r\n{encoded}\r\n--_000_tnef_--\r\n").encode())


@pytest.mark.parametrize("text, content_type", [
    (None, "application/ms-tnef"),  # Exchange: the whole message is winmail.dat
    (None, "application/vnd.ms-tnef"),
    ("", "application/ms-tnef"),  # an empty text part beside it
], ids=["tnef-only", "vnd-tnef-only", "empty-text-and-tnef"])
def test_a_message_that_is_only_outlooks_winmail_dat_is_refused_with_what_to_do(test_odoo, gateway, mailer, text,
                                                                                   content_type):
    # A MIME review: filed as an empty note with an opaque winmail.dat, its text and files unreadable.
    to = mailer.address("note", "project.task", TASK_ID)
    assert mailer.send(mailer.sign(_tnef_message(to, text, content_type=content_type)), to) == _TNEF_REFUSAL
    assert _posts(test_odoo) == []


def test_the_text_beside_a_winmail_dat_is_filed_with_the_file(test_odoo, gateway, mailer):
    # Outlook writes the text as a text part too: it is the note, and winmail.dat is filed as a file.
    to = mailer.address("note", "project.task", TASK_ID)
    reply = mailer.send(mailer.sign(_tnef_message(to, "Here is the inspection report for P-7.\r\n\r\nPaula")), to)
    assert reply.startswith("250 2.0.0 Filed"), reply
    stored = test_odoo.message(int(reply.rsplit(" ", 1)[1]))
    assert "Here is the inspection report for P-7." in stored["body"]
    [attachment_id] = stored["attachment_ids"]
    assert test_odoo.attachment_bytes(attachment_id) == WINMAIL_DAT


def test_the_text_of_a_filed_note_is_read_out_of_its_html_once(test_odoo, gateway, mailer, monkeypatch):
    # Each nh3 pass over a body costs CPU on every note (bench/); a review found the kept body read
    # twice, for readability and again for the inline-PGP check.
    from gateway import content

    read: list[str] = []
    real = content.visible_text

    def counted(sanitized: str) -> str:
        read.append(sanitized)
        return real(sanitized)

    monkeypatch.setattr(content, "visible_text", counted)
    reply, _ = _send_raw(mailer, "Pump P-7", _plain_only("The seal of pump P-7 was replaced.\n\n"
                                                          "On Mon, Bob wrote:\n> Is the pump done?\n"))
    assert reply.startswith("250 2.0.0 Filed"), reply
    [post] = _posts(test_odoo)
    assert "The seal of pump P-7 was replaced." in post.kwargs["body"]
    assert read and all(read.count(body) == 1 for body in read), read
