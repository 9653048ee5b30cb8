"""Templates: escaping, body Markup, per-model templates and an admin's override folder."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import jinja2
import pytest

from gateway.refusals import EmptyBody
from gateway.render import BodyNotShown, Renderer, TemplateProblem
from gateway import render

RECEIVED_AT = datetime(2025, 3, 14, 9, 30, tzinfo=timezone.utc)


def body_values(**changes):
    values = {
        "body": "<p>Pump checked, <b>all fine</b> &amp; clean.</p>",
        "sender_name": "Paula Contributor",
        "sender_email": "portal.contrib@example.com",
        "subject": "Pump check",
        "dkim_domain": "example.com",
        "received_at": RECEIVED_AT,
        "res_id": 42,
    }
    values.update(changes)
    return values


def write(folder: Path, name: str, text: str) -> None:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_default_note_names_the_sender_and_holds_the_body():
    html = Renderer().render_body("note", "project.task", **body_values())
    assert (
        "<p><em>Internal note by email from Paula Contributor &lt;portal.contrib@example.com&gt;</em></p>" in html
    )
    assert "<strong>Pump check</strong>" in html
    assert html.rstrip().endswith("<p>Pump checked, <b>all fine</b> &amp; clean.</p>")


def test_default_reply_is_not_called_internal():
    html = Renderer().render_body("reply", "sale.order", **body_values(subject=""))
    assert "<p><em>Message by email from Paula Contributor</em></p>" in html
    assert "portal.contrib@example.com" not in html  # the name only, as Odoo's portal shows an author
    assert "nternal" not in html
    assert "<strong>" not in html  # No subject, no subject line.


def test_sender_name_and_subject_are_escaped():
    html = Renderer().render_body(
        "note",
        "project.task",
        **body_values(sender_name="<script>alert(1)</script>", subject='"><img src=x onerror=alert(1)>'),
    )
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img" not in html


def test_body_markup_is_not_escaped_twice():
    html = Renderer().render_body("note", "project.task", **body_values())
    assert "&amp;amp;" not in html
    assert "&lt;p&gt;" not in html


def test_model_template_is_used_before_the_default(tmp_path):
    template = "<p>Task {{ res_id }} note from {{ sender_email }}</p>{{ body }}"
    write(tmp_path, "note/project.task.html.j2", template)
    renderer = Renderer(tmp_path)
    assert renderer.render_body("note", "project.task", **body_values()).startswith(
        "<p>Task 42 note from portal.contrib@example.com</p><p>Pump checked"
    )
    # Another model still gets the bundled default.
    assert "Internal note by email" in renderer.render_body("note", "sale.order", **body_values())


def test_override_folder_wins_over_bundled_templates(tmp_path):
    template = "<p>Site note by {{ sender_name }} ({{ dkim_domain }})</p>{{ body }}"
    write(tmp_path, "note/default.html.j2", template)
    write(tmp_path, "notice/empty_body.txt.j2", "Nothing to file: {{ reason }}")
    renderer = Renderer(tmp_path)
    assert renderer.render_body("note", "sale.order", **body_values()).startswith(
        "<p>Site note by Paula Contributor (example.com)</p>"
    )
    notice = renderer.render_refusal(
        EmptyBody(), address="a@b.example", subject="", sender_email="c@d.example"
    )
    assert notice == "Nothing to file: The message has no text to file, write above the quoted text"
    # Templates the admin did not copy still come from the bundle.
    assert renderer.has_template("notice/access_denied.txt.j2")


def test_undefined_value_in_a_template_fails_loudly(tmp_path):
    write(tmp_path, "note/default.html.j2", "{{ sender_nmae }}")
    with pytest.raises(jinja2.UndefinedError):
        Renderer(tmp_path).render_body("note", "project.task", **body_values())


def test_broken_override_is_found_by_check(tmp_path):
    write(tmp_path, "note/default.html.j2", "<p>{{ body }}</p>\n{% if %}")
    with pytest.raises(TemplateProblem) as found:
        Renderer(tmp_path).check()
    assert str(found.value) == (f"{tmp_path / 'note' / 'default.html.j2'}, line 2: "
                                "Expected an expression, got 'end of statement block'")


def test_bundled_templates_compile():
    names = Renderer().check()
    assert {"note/default.html.j2", "reply/default.html.j2", "notice/generic.txt.j2"} <= set(names)


@pytest.mark.parametrize(
    "kind, model", [("note", "../secrets"), ("note", "project.task/../../x"), ("../note", "x")]
)
def test_kind_and_model_cannot_leave_the_template_folders(kind, model):
    with pytest.raises(ValueError):
        Renderer().render_body(kind, model, **body_values())


def test_notice_is_plain_text_not_html_escaped():
    notice = Renderer().render_notice(
        "notice/generic.txt.j2",
        reason="Sender not authenticated",
        detail="signature of <example.com> failed",
        address="note+project.task-42-abcdefghijklmnop@notes.example.com",
        subject="Tom's pump & valve",
        sender_email="portal.contrib@example.com",
    )
    assert (
        'Your message "Tom\'s pump & valve" to note+project.task-42-abcdefghijklmnop@notes.example.com'
        in notice
    )
    assert "Reason: Sender not authenticated (signature of <example.com> failed)." in notice
    assert "forward this notice to the administrator" in notice
    assert "&amp;" not in notice and "&#39;" not in notice


def test_escaping_follows_what_is_rendered_not_the_included_files_name(tmp_path):
    # Review of templates: escaping was chosen by file name, so a shared .txt.j2 partial included
    # in a note template wrote the sender's subject into the note as HTML (a link, an image shown
    # in lines the gateway presents as its own), and a notice's partial not named .txt.j2 was escaped.
    write(tmp_path, "_header.txt.j2", "Subject: {{ subject }}\n")
    write(tmp_path, "note/default.html.j2", '<p>{% include "_header.txt.j2" %}</p>\n{{ body }}\n')
    write(tmp_path, "notice/_sig.j2", "(re: {{ subject }})\n")
    write(tmp_path, "notice/generic.txt.j2",
          '{% extends "notice/layout.txt.j2" %}{% block advice %}{% include "notice/_sig.j2" %}{% endblock %}')
    renderer = Renderer(tmp_path)
    renderer.check()
    html = renderer.render_body("note", "project.task", **body_values(
        subject='<img src=x onerror=alert(1)><a href="https://evil.example">Approved by CFO</a>'))
    assert html.startswith("<p>Subject: &lt;img src=x onerror=alert(1)&gt;&lt;a href=&#34;https://evil.example&#34;&gt;"
                           "Approved by CFO&lt;/a&gt;\n</p>")
    assert "<img" not in html and "<a " not in html
    notice = renderer.render_notice("notice/generic.txt.j2", reason="Sender not authenticated", detail="",
                                    address="a@b.example", subject="Q&A <draft>", sender_email="c@d.example")
    assert "(re: Q&A <draft>)" in notice and "&amp;" not in notice and "&lt;" not in notice


def test_alias_domain_folder_wins_over_the_gateway_folder_and_falls_back_per_model(tmp_path):
    gateway_folder, domain_folder = tmp_path / "gateway", tmp_path / "domain"
    write(gateway_folder, "note/default.html.j2", "gateway default {{ body }}")
    write(gateway_folder, "note/sale.order.html.j2", "gateway order {{ body }}")
    write(domain_folder, "note/project.task.html.j2", "domain task {{ body }}")
    renderer = Renderer(gateway_folder)
    domain = renderer.for_domain(domain_folder)
    assert domain is renderer.for_domain(domain_folder)  # built once per folder
    assert renderer.for_domain(None) is renderer
    assert domain.render_body("note", "project.task", **body_values()).startswith("domain task")
    assert domain.render_body("note", "sale.order", **body_values()).startswith("gateway order")
    assert domain.render_body("note", "crm.lead", **body_values()).startswith("gateway default")
    assert renderer.render_body("note", "project.task", **body_values()).startswith("gateway default")


def test_default_note_names_refused_files_escaped():
    html = Renderer().render_body("note", "project.task", **body_values(),
                                  refused_files=["<evil>.exe (.exe files are not accepted)"])
    assert "Files not filed with this note" in html and "&lt;evil&gt;.exe" in html


def test_only_a_notes_template_gets_the_external_recipients(tmp_path):
    # The To/Cc recipients who are not internal users: a note says the email reached them; a
    # reply, which customers read, never gets the value, and check() refuses a reply template naming it.
    html = Renderer().render_body("note", "project.task", **body_values(),
                                  external_recipients=["Bob <b>Customer</b> <bob@customer.example>"])
    assert ("<p><em>Also sent by email to: Bob &lt;b&gt;Customer&lt;/b&gt; &lt;bob@customer.example&gt;</em></p>"
            in html)
    assert "Also sent by email" not in Renderer().render_body("note", "project.task", **body_values())
    assert "Also sent by email" not in Renderer().render_body(
        "reply", "project.task", **body_values(), external_recipients=["bob@customer.example"])
    write(tmp_path, "note/default.html.j2", "{{ body }}\n{{ external_recipients | join(', ') }}\n")
    Renderer(tmp_path).check()
    write(tmp_path, "reply/default.html.j2", "{{ body }}\n{{ external_recipients | join(', ') }}\n")
    with pytest.raises(TemplateProblem, match=r"reply/default\.html\.j2, line 2: 'external_recipients' is undefined"):
        Renderer(tmp_path).check()


def test_check_names_the_file_and_line_of_a_value_no_message_gives(tmp_path):
    # StrictUndefined fails only when the template renders: check() renders it with sample values.
    write(tmp_path, "note/project.task.html.j2", "<p>{{ body }}</p>\n<p>{{ sender_nmae }}</p>\n")
    with pytest.raises(TemplateProblem) as found:
        Renderer(tmp_path).check()
    assert str(found.value).startswith(f"{tmp_path / 'note' / 'project.task.html.j2'}, line 2: "
                                       "'sender_nmae' is undefined")
    # A notice gets the notice values only: the note's sender_name is not one of them.
    (tmp_path / "note" / "project.task.html.j2").unlink()
    write(tmp_path, "notice/not_contributor.txt.j2", "Dear {{ sender_name }}\n")
    with pytest.raises(TemplateProblem, match=r"not_contributor\.txt\.j2, line 1: 'sender_name' is undefined"):
        Renderer(tmp_path).check()
    # Branches taken only by some messages are rendered too: no refused file, then one.
    write(tmp_path, "notice/not_contributor.txt.j2", "{{ reason }}\n")
    write(tmp_path, "note/default.html.j2", "{{ body }}\n{% for item in refused_files %}{{ item.name }}{% endfor %}\n")
    with pytest.raises(TemplateProblem, match=r"default\.html\.j2, line 2: .*has no attribute 'name'"):
        Renderer(tmp_path).check()


def test_check_renders_a_default_template_as_each_model_routed_to_it(tmp_path):
    # Review of templates: a default template was rendered as project.task only, so a branch on
    # another model the rules route to it passed every check and every note to an order was deferred.
    write(tmp_path, "note/default.html.j2",
          '{% if model == "sale.order" %}<p>Order of {{ customer_name }}</p>{% endif %}\n{{ body }}\n')
    assert "note/default.html.j2" in Renderer(tmp_path).check()
    with pytest.raises(TemplateProblem) as found:
        Renderer(tmp_path).check({"note": ["project.task", "sale.order"]})
    assert str(found.value) == (
        f"{tmp_path / 'note' / 'default.html.j2'}, line 1: 'customer_name' is undefined: no message gives this value "
        "(the values are listed in docs/content.md) (rendered as a sale.order note: a rules file's [note] models "
        "send it to this template)")
    # A reply to an order is not rendered by the note template.
    Renderer(tmp_path).check({"reply": ["sale.order"]})
    # Nor is a note to an order when the folder has the order's own template.
    write(tmp_path, "note/sale.order.html.j2", "<p>Order {{ res_id }}</p>\n{{ body }}\n")
    Renderer(tmp_path).check({"note": ["project.task", "sale.order"]})


def test_templates_are_sandboxed_and_a_violation_is_named_by_check(tmp_path):
    # SECURITY (found by a security review): templates get copied from the internet, and a plain
    # jinja2 Environment ran this command at start, reload and check-config.
    ran = tmp_path / "ran"
    write(tmp_path, "tpl/note/default.html.j2",
          f'{{{{ body }}}}\n{{% set x = cycler.__init__.__globals__.os.popen("touch {ran}").read() %}}\n')
    with pytest.raises(TemplateProblem) as found:
        Renderer(tmp_path / "tpl").check()
    assert str(found.value) == (f"{tmp_path / 'tpl' / 'note' / 'default.html.j2'}, line 2: "
                                "SecurityError: access to attribute '__init__' of 'type' object is unsafe.")
    assert not ran.exists()
    # Immutable: a template cannot change a value it is given, so one message's rendering cannot
    # leak into the next.
    write(tmp_path, "tpl/note/default.html.j2", "{{ body }}\n{% set x = attachment_names.append('x') %}\n")
    with pytest.raises(TemplateProblem, match=r"default\.html\.j2, line 2: SecurityError: .*append"):
        Renderer(tmp_path / "tpl").check()


def test_sandboxed_templates_still_use_every_documented_value_and_filter(tmp_path):
    write(tmp_path, "note/default.html.j2",
          "{{ body }}\n<p>{{ received_at.strftime('%Y-%m-%d %H:%M') }} {{ received_at.isoformat() }}</p>\n"
          "<p>{{ sender_name | upper }} {{ sender_email.split('@')[1] }} {{ dkim_domain }} {{ kind }} {{ model }}"
          " {{ res_id + 1 }} {{ subject | truncate(4, True, '', 0) }}</p>\n"
          "<p>{{ attachment_names | join(', ') }}; {{ refused_files | length }}"
          "{% for item in refused_files %} {{ loop.index }}:{{ item }}{% endfor %}</p>\n")
    renderer = Renderer(tmp_path)
    assert "note/default.html.j2" in renderer.check()
    html = renderer.render_body("note", "project.task", **body_values(
        attachment_names=["a.pdf", "b.png"], refused_files=["c.exe (refused)"]))
    assert "<p>2025-03-14 09:30 2025-03-14T09:30:00+00:00</p>" in html
    assert "<p>PAULA CONTRIBUTOR example.com example.com note project.task 43 Pump</p>" in html
    assert "<p>a.pdf, b.png; 1 1:c.exe (refused)</p>" in html


def test_a_renderer_reads_its_folders_once(tmp_path):
    # An edit saved on disk reaches the gateway only with a new renderer (a reload, after its check).
    write(tmp_path, "note/default.html.j2", "first {{ body }}")
    renderer = Renderer(tmp_path)
    assert renderer.render_body("note", "sale.order", **body_values()).startswith("first")
    write(tmp_path, "note/default.html.j2", "second {{ body }")
    write(tmp_path, "note/sale.order.html.j2", "order {{ body }}")
    assert renderer.render_body("note", "sale.order", **body_values()).startswith("first")
    assert renderer.environment.auto_reload is False


def test_the_most_specific_folder_decides_before_the_model(tmp_path):
    # domain model > domain default > gateway model > gateway default > bundled (docs/content.md).
    gateway_folder, domain_folder = tmp_path / "gateway", tmp_path / "domain"
    write(gateway_folder, "note/project.task.html.j2", "gateway task {{ body }}")
    write(gateway_folder, "notice/empty_body.txt.j2", "gateway notice {{ reason }}")
    write(domain_folder, "note/default.html.j2", "domain default {{ body }}")
    write(domain_folder, "notice/empty_body.txt.j2", "domain notice {{ reason }}")
    renderer = Renderer(gateway_folder)
    domain = renderer.for_domain(domain_folder)
    assert domain.render_body("note", "project.task", **body_values()).startswith("domain default")
    assert renderer.render_body("note", "project.task", **body_values()).startswith("gateway task")
    # The reply templates: the domain has none, so the bundled default.
    assert domain.render_body("reply", "project.task", **body_values()).startswith("<p><em>Message by email")
    notice = dict(address="a@b.example", subject="", sender_email="c@d.example")
    assert domain.render_refusal(EmptyBody(), **notice).startswith("domain notice")
    assert renderer.render_refusal(EmptyBody(), **notice).startswith("gateway notice")


def test_every_file_of_a_folder_is_read_once_and_only_j2_files_are_checked(tmp_path):
    # An include of a file not ending in .j2 (today's review: "template note/footer.html not found").
    write(tmp_path, "note/default.html.j2", '{{ body }}\n{% include "note/footer.html" %}')
    write(tmp_path, "note/footer.html", "<p>Footer for {{ sender_email }}</p>\n")
    write(tmp_path, "note/unused.html", "{% if %} not a template, never checked")
    write(tmp_path, ".git/config", "[core]")
    write(tmp_path, "note/.footer.html.swp", "swap")
    renderer = Renderer(tmp_path)
    names = renderer.check()
    assert "note/default.html.j2" in names and "note/footer.html" not in names and "note/unused.html" not in names
    assert set(renderer.layers[0].sources) == {"note/default.html.j2", "note/footer.html", "note/unused.html"}
    write(tmp_path, "note/footer.html", "<p>Edited on disk</p>\n")
    html = renderer.render_body("note", "project.task", **body_values())
    assert html.endswith("<p>Footer for portal.contrib@example.com</p>\n")


def test_a_file_that_is_not_text_stops_only_the_template_that_uses_it(tmp_path):
    write(tmp_path, "note/default.html.j2", "{{ body }}\n")
    (tmp_path / "note" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff")
    assert "note/default.html.j2" in Renderer(tmp_path).check()
    write(tmp_path, "note/default.html.j2", '{{ body }}\n{% include "note/logo.png" %}\n')
    with pytest.raises(TemplateProblem) as found:
        Renderer(tmp_path).check()
    assert str(found.value) == (f"{tmp_path / 'note' / 'default.html.j2'}, line 2: "
                                f"{tmp_path / 'note' / 'logo.png'}: not UTF-8 text: byte 0x89")


def test_a_file_larger_than_a_template_can_be_is_named(tmp_path):
    write(tmp_path, "note/default.html.j2", "{{ body }}\n")
    (tmp_path / "note" / "huge.html").write_bytes(b"x" * (1024 * 1024 + 1))
    assert "note/default.html.j2" in Renderer(tmp_path).check()
    (tmp_path / "note" / "huge.html").rename(tmp_path / "note" / "sale.order.html.j2")
    with pytest.raises(TemplateProblem) as found:
        Renderer(tmp_path)
    assert str(found.value) == f"{tmp_path}/note/sale.order.html.j2: larger than 1 MiB, not read"


@pytest.mark.parametrize("name, text", [
    # Review of bad admin input: an empty file, or one that forgot {{ body }}, passed every check and
    # every note was then filed without its text.
    ("note/default.html.j2", ""),
    ("note/project.task.html.j2", "<p>{{ sender_name }}: {{ subject }}</p>\n"),
    ("reply/default.html.j2", "<p>{{ subject }}</p>\n{% if refused_files %}{{ body }}{% endif %}\n"),
    ("reply/sale.order.html.j2", "{{ body | striptags }}\n"),
    # A sanitized body can start or end with a line break, which trim drops (session review).
    ("note/default.html.j2", "{{ body | trim }}\n"),
    # The sample body written out by hand is not the body: each check uses a body of its own.
    ("note/default.html.j2", "<p>Sample body</p>\n"),
])
@pytest.mark.parametrize("folder", ["gateway", "domain"])
def test_check_refuses_a_body_template_that_does_not_show_the_body(tmp_path, name, text, folder):
    (tmp_path / "gateway").mkdir()
    write(tmp_path / folder, name, text)
    renderer = Renderer(tmp_path / "gateway")
    if folder == "domain":
        renderer = renderer.for_domain(tmp_path / "domain")
    with pytest.raises(TemplateProblem) as found:
        renderer.check()
    assert str(found.value) == (
        f"{tmp_path / folder / name}: does not show the message's body: every note or reply it renders would "
        "be filed without its text; write {{ body }} where the text goes, as is (no filter that changes it)")


def test_check_passes_a_body_shown_through_a_layout_or_a_macro(tmp_path):
    write(tmp_path, "note/_frame.html.j2", "<div>{% block text %}{% endblock %}</div>\n")
    write(tmp_path, "note/default.html.j2", '{% extends "note/_frame.html.j2" %}{% block text %}{{ body }}{% endblock %}')
    write(tmp_path, "reply/_macros.html.j2", "{% macro show(text) %}<div>{{ text }}</div>{% endmacro %}\n")
    write(tmp_path, "reply/default.html.j2", '{% import "reply/_macros.html.j2" as m %}{{ m.show(body) }}\n')
    assert {"note/default.html.j2", "reply/default.html.j2"} <= set(Renderer(tmp_path).check())


def test_a_note_whose_template_leaves_out_this_body_is_not_rendered(tmp_path):
    # A branch that check() cannot see: the body is shown unless the subject says "draft".
    write(tmp_path, "note/default.html.j2", '{% if "draft" in subject %}<p>(draft)</p>{% else %}{{ body }}{% endif %}')
    renderer = Renderer(tmp_path)
    renderer.check()
    assert renderer.render_body("note", "project.task", **body_values()) == body_values()["body"]
    with pytest.raises(BodyNotShown) as found:
        renderer.render_body("note", "project.task", **body_values(subject="A draft"))
    assert found.value.file == str(tmp_path / "note" / "default.html.j2")
    # A message without text (only files) loses nothing.
    assert renderer.render_body("note", "project.task", **body_values(body="", subject="A draft")) == "<p>(draft)</p>"


@pytest.mark.parametrize("text, where", [
    # Review of templates: each passed check() (the body's text was in the output) and filed a note
    # nobody can read, with a 250; Odoo stores a textarea's content as nothing.
    ("<p>From {{ sender_email }}</p>\n<!-- old layout: {{ body }} -->\n", "is inside an HTML comment"),
    ('<div style="display:none">{{ body }}</div>\n',
     'is inside an element whose style hides it (<div style="display:none">)'),
    ('<div style="color: red; Visibility : hidden"><blockquote>{{ body }}</blockquote></div>\n',
     'is inside an element whose style hides it (<div style="Visibility : hidden">)'),
    ("<div hidden><p>{{ body }}</p></div>\n", "is inside an element with the hidden attribute (<div hidden>)"),
    ("<template>{{ body }}</template>\n", "is inside <template>"),
    ("<textarea>{{ body }}</textarea>\n", "is inside <textarea>"),
    ("<noscript>{{ body }}</noscript>\n", "is inside <noscript>"),
    ("<script>var text = `{{ body }}`;</script>\n", "is inside <script>"),
    ('<a title="{{ body }}">note</a>\n', "is inside the title attribute of <a>"),
])
def test_check_refuses_a_body_template_whose_body_nobody_sees(tmp_path, text, where):
    write(tmp_path, "note/default.html.j2", text)
    with pytest.raises(TemplateProblem) as found:
        Renderer(tmp_path).check()
    assert str(found.value) == (f"{tmp_path / 'note' / 'default.html.j2'}: {{{{ body }}}} {where}: the note's text "
                                "would be invisible; write {{ body }} where it shows")
    # The same template never files a message either.
    with pytest.raises(BodyNotShown) as refused:
        Renderer(tmp_path).render_body("note", "project.task", **body_values())
    assert refused.value.reason == f"{{{{ body }}}} {where}: the note's text would be invisible"


def test_check_passes_a_body_shown_after_a_comment_or_in_a_visible_element(tmp_path):
    write(tmp_path, "note/default.html.j2",
          '<!-- site layout 2 --><div style="color: red; display: block"><details open><blockquote>\n'
          "{{ body }}</blockquote></details></div>\n<!-- {{ sender_email }} -->\n")
    write(tmp_path, "reply/default.html.j2", "<!-- first -->{{ body }}<!-- last -->")
    renderer = Renderer(tmp_path)
    assert {"note/default.html.j2", "reply/default.html.j2"} <= set(renderer.check())
    assert "<p>Pump checked" in renderer.render_body("note", "project.task", **body_values())


def test_a_note_whose_template_hides_this_body_is_not_rendered(tmp_path):
    # A branch that check() cannot see: the body is in a comment when the subject says "draft".
    write(tmp_path, "reply/default.html.j2",
          '{% if "draft" in subject %}<p>(draft)</p><!-- {{ body }} -->{% else %}{{ body }}{% endif %}')
    renderer = Renderer(tmp_path)
    renderer.check()
    assert renderer.render_body("reply", "project.task", **body_values()) == body_values()["body"]
    with pytest.raises(BodyNotShown) as found:
        renderer.render_body("reply", "project.task", **body_values(subject="A draft"))
    assert (found.value.file, found.value.reason) == (
        str(tmp_path / "reply" / "default.html.j2"),
        "{{ body }} is inside an HTML comment: the reply's text would be invisible")


@pytest.mark.parametrize("text", ["", "\n  \n", "{{ detail }}\n"])
def test_check_refuses_a_notice_that_says_nothing(tmp_path, text):
    # Review of templates: an empty notice passed the check and would mail the sender nothing.
    write(tmp_path, "notice/generic.txt.j2", text)
    with pytest.raises(TemplateProblem) as found:
        Renderer(tmp_path).check()
    assert str(found.value) == (
        f"{tmp_path / 'notice' / 'generic.txt.j2'}: renders an empty notice for the sample values: the sender would "
        "get a mail that says nothing of why the message was not filed; write {{ reason }} in it")


def test_a_source_checkout_renders_its_own_templates(tmp_path, monkeypatch):
    # An editable install maps gateway.templates to the checkout it was made from: the code of a
    # git worktree or scratch clone on PYTHONPATH rendered that checkout's templates instead of its own.
    checkout = tmp_path / "checkout"
    (checkout / "templates").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    monkeypatch.setattr(render, "SOURCE_TEMPLATES", checkout / "templates")
    assert render.bundled_templates() == checkout / "templates"
    # Without pyproject.toml beside it, a folder named templates is not the gateway's: the package's.
    (checkout / "pyproject.toml").unlink()
    assert render.bundled_templates() != checkout / "templates"
    assert render.bundled_templates().joinpath("note", "default.html.j2").is_file()
