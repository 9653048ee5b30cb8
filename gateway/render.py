"""Render note and reply bodies and refusal notices from jinja2 templates an admin can override."""

from __future__ import annotations

import difflib
import importlib.resources
import logging
import re
import secrets
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.meta
import jinja2.sandbox
import lxml.etree
from markupsafe import Markup

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.refusals import Refusal

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "gateway.templates"
# In a source checkout the bundled templates are the top-level templates/ folder; pyproject maps it
# to the package gateway.templates only when the gateway is installed.
SOURCE_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
DEFAULT_TEMPLATE = "default.html.j2"

# Kinds and model names become parts of a template path, so they are held to the shapes an address
# can carry (gateway/address.py) and can never climb out of the template folders.
_KIND = re.compile(r"^[a-z][a-z_]*$")
_MODEL = re.compile(r"^[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*$")


def bundled_templates() -> Traversable:
    """The folder of the templates shipped with the gateway.

    In a source checkout (templates/ beside pyproject.toml), that checkout's own folder: an editable
    install maps gateway.templates to the checkout it was made from, so the code of another checkout
    (a git worktree, a scratch clone on PYTHONPATH) rendered the first one's templates.
    """
    if SOURCE_TEMPLATES.is_dir() and (SOURCE_TEMPLATES.parent / "pyproject.toml").is_file():
        return SOURCE_TEMPLATES
    try:
        return importlib.resources.files(BUNDLED_PACKAGE)
    except ModuleNotFoundError:
        return SOURCE_TEMPLATES


class TemplateProblem(ValueError):
    """A template that cannot be read, compiled or rendered: the file, the line if known, and why."""

    def __init__(self, file: str, line: int | None, reason: str) -> None:
        self.file, self.line, self.reason = file, line, reason
        super().__init__(f"{file}, line {line}: {reason}" if line else f"{file}: {reason}")


# A template folder holds text: a file larger than this is no template or part of one.
MAX_TEMPLATE_FILE = 1024 * 1024


def _folder_files(root: Traversable, label: str) -> list[tuple[str, Traversable]]:
    """Every file under ``root`` as (template name, file), hidden files and folders (an editor's
    ``.default.html.j2.swp``, ``.git``) left out; a folder linked from elsewhere is not followed."""
    found: list[tuple[str, Traversable]] = []
    pending: list[tuple[str, Traversable]] = [("", root)]
    while pending:
        prefix, folder = pending.pop()
        try:
            children = list(folder.iterdir())
        except OSError as error:
            raise TemplateProblem(f"{label}/{prefix}".rstrip("/"), None,
                                  f"cannot read the folder: {error.strerror or error}") from None
        for child in children:
            if child.name.startswith("."):
                continue
            if child.is_dir():
                if not (isinstance(child, Path) and child.is_symlink()):
                    pending.append((f"{prefix}{child.name}/", child))
            elif child.is_file():
                found.append((prefix + child.name, child))
    return sorted(found, key=lambda item: item[0])


class SnapshotLoader(jinja2.BaseLoader):
    """The templates of one folder as they were read when the gateway started or last reloaded.

    Every file of the folder (hidden ones left out) is read once, so that an edit on disk changes
    nothing until a reload, which checks it first (as a rules file is checked); a file saved
    half-way never reaches a message. The ``*.j2`` files are the templates, checked by
    Renderer.check; any other file is read so that a template can ``{% include %}`` it (a review
    found an include of "note/footer.html" stopping serve after an upgrade that read only
    ``*.j2``). A ``*.j2`` file that cannot be read, is not UTF-8 text or is larger than
    MAX_TEMPLATE_FILE is a TemplateProblem here; another such file is not read, and a template that
    uses it fails its check, naming the file and why.
    """

    def __init__(self, root: Traversable, folder: str, *, templates_only: bool = False) -> None:
        self.sources: dict[str, tuple[str, str | None]] = {}
        # Files that are not templates and were not read, and why: named if a template uses one.
        self.unread: dict[str, str] = {}
        for name, resource in _folder_files(root, folder):
            if templates_only and not name.endswith(".j2"):
                continue
            filename = str(resource) if isinstance(resource, Path) else None
            try:
                with resource.open("rb") as stream:
                    data = stream.read(MAX_TEMPLATE_FILE + 1)
                if len(data) > MAX_TEMPLATE_FILE:
                    raise _NotText(f"larger than {MAX_TEMPLATE_FILE // (1024 * 1024)} MiB, not read")
                try:
                    source = data.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise _NotText(f"not UTF-8 text: byte 0x{error.object[error.start]:02x}") from None
            except OSError as error:
                problem = _NotText(f"cannot read: {error.strerror or error}")
            except _NotText as not_text:
                problem = not_text
            else:
                self.sources[name] = (source, filename)
                continue
            if name.endswith(".j2"):
                raise TemplateProblem(f"{folder}/{name}", None, str(problem))
            self.unread[name] = f"{filename or f'{folder}/{name}'}: {problem}"

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool]]:
        try:
            source, filename = self.sources[template]
        except KeyError:
            if template in self.unread:
                raise UnreadTemplateFile(self.unread[template]) from None
            raise jinja2.TemplateNotFound(template) from None
        return source, filename, lambda: True

    def list_templates(self) -> list[str]:
        return sorted(self.sources)

    @property
    def templates(self) -> list[str]:
        """The names of the templates proper, the ``*.j2`` files."""
        return [name for name in sorted(self.sources) if name.endswith(".j2")]


class _NotText(Exception):
    pass


class UnreadTemplateFile(jinja2.TemplateError):
    """A template includes a file of the folder that was not read (not UTF-8, or too large)."""


BODY_NOT_SHOWN = ("does not show the message's body: every note or reply it renders would be filed without its text; "
                  "write {{ body }} where the text goes, as is (no filter that changes it)")


class BodyNotShown(Exception):
    """A note or reply template rendered a message without its (non-empty) body, or with it where
    no reader sees it (``reason``, as body_hidden says it)."""

    def __init__(self, file: str, reason: str = "") -> None:
        self.file, self.reason = file, reason
        super().__init__(f"{file}: rendered this message without its body" + (f": {reason}" if reason else ""))


# The body check() renders a body template with, around a marker of its own; render_body puts the
# same in place of a message's body to find whether a reader sees it (body_hidden).
def sample_body(marker: str) -> Markup:
    # Blank lines around it, as a sanitized body can have: a filter that trims or shortens the
    # body ({{ body | trim }}) is caught by check(), not by the run-time guard on a real message.
    return Markup(f"\n<p>Sample body {marker}</p>\n")


# Elements whose content no reader of a note sees: raw text a browser does not show (script, style,
# textarea and title, whose content Odoo's sanitizer drops or keeps as nothing: a review found a
# <textarea> around {{ body }} filed with 250 and an empty note), inert or fallback content
# (template, noscript, an iframe's, an object's), the document's head, and a select's text.
_HIDING_ELEMENTS = frozenset({"script", "style", "template", "textarea", "title", "noscript", "noembed", "noframes",
                              "iframe", "object", "embed", "applet", "audio", "video", "canvas", "head", "select",
                              "datalist", "xmp", "plaintext"})
_HIDING_STYLE = re.compile(r"(?:^|;)\s*(display\s*:\s*none|visibility\s*:\s*(?:hidden|collapse))\b", re.IGNORECASE)
# What libxml2 refuses in a text it is given (as gateway.quotes._NOT_XML).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def body_hidden(html: str, marker: str, kind: str = "note") -> str | None:
    """Why the text ``marker`` (in ``html``) is no text a reader sees, or None if it is somewhere.

    A review found templates that wrote {{ body }} and filed nothing readable with a 250: in an
    HTML comment, in ``<div style="display:none">``, in ``<template>`` or ``<textarea>``. The HTML
    is read as lxml (and Odoo's sanitizer) reads it; the marker must be in the text of an element
    none of whose ancestors hides it (_HIDING_ELEMENTS, the hidden attribute, a style with
    display: none or visibility: hidden).
    """
    lost = f"the {kind}'s text would be invisible"
    parser = lxml.etree.HTMLParser(huge_tree=True)
    root = lxml.etree.fromstring(_NOT_XML.sub(" ", html), parser) if html.strip() else None
    if root is None:
        # Nothing but a comment or processing instruction: no element, no text.
        return f"{{{{ body }}}} is inside an HTML comment: {lost}"
    found: list[str] = []
    for element in root.iter():
        if not isinstance(element.tag, str):
            # A comment or processing instruction: its own text is never shown, what follows it is.
            if marker in (element.text or ""):
                what = "an HTML comment" if element.tag is lxml.etree.Comment else "a processing instruction (<?...>)"
                found.append(f"{{{{ body }}}} is inside {what}: {lost}")
        else:
            if marker in (element.text or ""):
                hidden = _hidden_by(element)
                if hidden is None:
                    return None
                found.append(f"{{{{ body }}}} {hidden}: {lost}")
            for attribute, value in element.attrib.items():
                if marker in value:
                    found.append(f"{{{{ body }}}} is inside the {attribute} attribute of <{element.tag}>: {lost}")
        if marker in (element.tail or "") and element.getparent() is not None:
            hidden = _hidden_by(element.getparent())
            if hidden is None:
                return None
            found.append(f"{{{{ body }}}} {hidden}: {lost}")
    return found[0] if found else f"{{{{ body }}}} is where an HTML reader drops it: {lost}"


def _hidden_by(element: Any) -> str | None:
    """What hides the text of ``element`` (the innermost), or None if nothing does."""
    while element is not None:
        tag = element.tag if isinstance(element.tag, str) else ""
        if tag.lower() in _HIDING_ELEMENTS:
            return f"is inside <{tag}>"
        if "hidden" in element.attrib:
            return f"is inside an element with the hidden attribute (<{tag} hidden>)"
        style = _HIDING_STYLE.search(element.get("style") or "")
        if style:
            return f"is inside an element whose style hides it (<{tag} style=\"{' '.join(style.group(1).split())}\">)"
        element = element.getparent()
    return None


def _environment(loader: jinja2.BaseLoader, *, autoescape: bool) -> jinja2.Environment:
    # Sandboxed: a template reads the values it is given and calls their harmless methods, and
    # nothing else. A plain Environment let a template copied from the internet reach Python's
    # globals ("cycler.__init__.__globals__.os.popen(...)") and run a command at start, reload
    # and check-config (found by a security review). Immutable: no template changes a value
    # it is given (list.append, dict.update), so one rendering cannot leak into the next.
    return jinja2.sandbox.ImmutableSandboxedEnvironment(
        loader=loader,
        autoescape=autoescape,
        # A typo in an admin's template must fail loudly, not file a note with a blank in it;
        # check() renders every template with sample values so the typo stops the start instead.
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        # The sources never change under a renderer; nothing to look at on disk again.
        auto_reload=False,
        cache_size=-1,
    )


class Renderer:
    """The template environment: the alias domain's folder, the gateway's, then the bundled templates.

    Each folder is read whole when the renderer is built (SnapshotLoader): a template changes only
    with a new renderer, that is at a reload, after ``check`` passed on it.
    """

    def __init__(self, override_dir: Path | None = None, *, domain_dir: Path | None = None) -> None:
        # The most specific folder first: an alias domain's own (issue 3), then the gateway's, then
        # the bundled ones. body_template_name looks for the model's template and the default one
        # folder by folder in this order.
        self.layers: list[SnapshotLoader] = []
        for folder in (domain_dir, override_dir):
            if folder is not None:
                self.layers.append(SnapshotLoader(folder, str(folder)))
        # The bundled package ships only *.j2 files (beside its __init__.py).
        self.layers.append(SnapshotLoader(bundled_templates(), "bundled templates", templates_only=True))
        self.override_dir = override_dir
        self.domain_dir = domain_dir
        # The files of the admin's folders the gateway never uses (checked_renderer).
        self.warnings: list[str] = []
        self._domain_renderers: dict[Path, Renderer] = {}
        self._domain_lock = threading.Lock()
        # Escaping follows what is rendered, not the name of the file a template includes: a note's
        # or reply's HTML body is escaped throughout, a notice's plain text never. Chosen by file
        # name (".txt.j2" not escaped), a '{% include "_header.txt.j2" %}' in a note template wrote
        # the sender's subject into the note as HTML, and a notice including a partial not named
        # .txt.j2 showed "&amp;" (found by a review of templates). One loader, two environments.
        loader = jinja2.ChoiceLoader(self.layers)
        self.environment = _environment(loader, autoescape=True)
        self.text_environment = _environment(loader, autoescape=False)

    def for_domain(self, domain_dir: Path | None) -> Renderer:
        """The renderer of an alias domain whose rules name a templates_dir; built once per folder.

        ``checked_renderer`` builds and checks those of every domain when the services are built;
        one asked for here first is built (and reads its folder) now.
        """
        if domain_dir is None:
            return self
        with self._domain_lock:
            renderer = self._domain_renderers.get(domain_dir)
            if renderer is None:
                renderer = self._domain_renderers[domain_dir] = Renderer(self.override_dir, domain_dir=domain_dir)
            return renderer

    def has_template(self, name: str) -> bool:
        return any(name in layer.sources for layer in self.layers)

    def body_template_name(self, kind: str, model: str) -> str:
        """The first of ``<kind>/<model>.html.j2`` and ``<kind>/default.html.j2`` in the most specific folder that has one.

        An alias domain's own default beats the gateway's template of the model: the folder an admin
        made for one domain says how all of its notes look, unless it has a template of the model.
        """
        if not _KIND.match(kind):
            raise ValueError(f"{kind!r} is not a message kind")
        if not _MODEL.match(model):
            raise ValueError(f"{model!r} is not an Odoo model name")
        specific, default = f"{kind}/{model}.html.j2", f"{kind}/{DEFAULT_TEMPLATE}"
        for layer in self.layers:
            if specific in layer.sources:
                return specific
            if default in layer.sources:
                return default
        return default

    def render_body(
        self,
        kind: str,
        model: str,
        *,
        body: str,
        sender_name: str,
        sender_email: str,
        subject: str,
        dkim_domain: str,
        received_at: datetime,
        res_id: int,
        refused_files: list[str] | tuple[str, ...] = (),
        attachment_names: list[str] | tuple[str, ...] = (),
        external_recipients: list[str] | tuple[str, ...] = (),
        **extra: Any,
    ) -> str:
        """The HTML to post: the template of the kind and model wrapped around the sanitized body.

        Every documented value is required so that an admin's template can use any of them.
        ``external_recipients`` (the To/Cc recipients of the email who are not internal users) is
        given to a note's template only: a reply's is read by the record's customers, and a reply
        template that names it is refused by check() as naming a value no message gives.
        """
        template = self.environment.get_template(self.body_template_name(kind, model))
        if kind == "note":
            extra["external_recipients"] = list(external_recipients)
        html = template.render(
            # The body was sanitized by gateway.content; Markup keeps autoescape from escaping it
            # a second time, while every other value (the sender's name, the subject) is escaped.
            body=Markup(body),
            sender_name=sender_name,
            sender_email=sender_email,
            subject=subject,
            dkim_domain=dkim_domain,
            received_at=received_at,
            kind=kind,
            model=model,
            res_id=res_id,
            refused_files=list(refused_files),
            attachment_names=list(attachment_names),
            **extra,
        )
        # check() refuses a body template that does not show the body; one that shows it only on
        # some messages ({% if %} on the subject, a filter that changes it) must still never file
        # a note without its text (found by a review of bad admin input). Nor where no reader sees
        # it (an HTML comment, a hidden element): the sample body in its place must be seen, as
        # check() demands of the sample values (a review of templates).
        if body.strip():
            file = self._filename(template.name or self.body_template_name(kind, model))
            if body not in html:
                raise BodyNotShown(file)
            marker = f"note-gateway-body-{secrets.token_hex(8)}"
            hidden = body_hidden(html.replace(body, sample_body(marker)), marker, kind)
            if hidden is not None:
                raise BodyNotShown(file, hidden)
        return html

    def render_notice(
        self,
        template: str,
        *,
        reason: str,
        detail: str | None,
        address: str,
        subject: str,
        sender_email: str,
        **extra: Any,
    ) -> str:
        """The plain-text notice that tells a sender why a message was not filed."""
        return self.text_environment.get_template(template).render(
            reason=reason,
            detail=detail or "",
            address=address,
            subject=subject,
            sender_email=sender_email,
            **extra,
        )

    def render_refusal(self, refusal: Refusal, *, address: str, subject: str, sender_email: str) -> str:
        """The notice of a refusal, from the template it names."""
        return self.render_notice(
            refusal.template,
            reason=refusal.reason,
            detail=refusal.detail,
            address=address,
            subject=subject,
            sender_email=sender_email,
        )

    def check(self, models: Mapping[str, Iterable[str]] | None = None) -> list[str]:
        """Compile every template and render each the gateway renders with sample values; return their names.

        Raises TemplateProblem naming the file and the line: a syntax error, or a value no message
        gives (StrictUndefined), found at start and reload instead of at the first message.
        ``models`` are the models of each kind ("note", "reply") that the rules files using this
        renderer route: a ``<kind>/default.html.j2`` is rendered as each of those it is the template
        of, besides project.task. A review found a default template checked as project.task only, so
        that ``{% if model == "sale.order" %}{{ customer_name }}{% endif %}`` passed every check and
        every note to an order was then deferred.
        """
        names = sorted({name for layer in self.layers for name in layer.templates})
        # A body no template could write by chance: a body template whose output lacks it would
        # file every note without its text (an empty file, a forgotten {{ body }}).
        marker = f"note-gateway-body-check-{secrets.token_hex(8)}"
        for name in names:
            try:
                template = self._environment_of(name).get_template(name)
            except jinja2.TemplateSyntaxError as error:
                raise TemplateProblem(error.filename or name, error.lineno, error.message or str(error)) from None
            except jinja2.TemplateError as error:
                raise TemplateProblem(self._filename(name), None, _reason(error)) from None
            for values in _samples(name, marker, self._routed_models(name, models or {})):
                # Said of a model a rules file routes here: the one the samples do not render by default.
                routed = (f" (rendered as a {values['model']} {values['kind']}: a rules file's [{values['kind']}] "
                          "models send it to this template)"
                          if name.endswith(f"/{DEFAULT_TEMPLATE}") and values.get("model", SAMPLE_MODEL) != SAMPLE_MODEL
                          else "")
                try:
                    output = template.render(**values)
                except jinja2.TemplateSyntaxError as error:
                    # A template it extends or includes, compiled only now.
                    raise TemplateProblem(error.filename or error.name or name, error.lineno,
                                          (error.message or str(error)) + routed) from None
                except Exception as error:  # noqa: BLE001 (whatever a template raises, it would raise on a message)
                    file, line = self._where(error, name)
                    raise TemplateProblem(file, line, _reason(error) + routed) from None
                if "body" in values:
                    if str(values["body"]) not in output:
                        raise TemplateProblem(self._filename(name), None, BODY_NOT_SHOWN + routed)
                    hidden = body_hidden(output, marker, values["kind"])
                    if hidden is not None:
                        raise TemplateProblem(self._filename(name), None,
                                              f"{hidden}; write {{{{ body }}}} where it shows{routed}")
                elif not output.strip():
                    # A notice that says nothing: the sender would get an empty mail (a review of templates).
                    raise TemplateProblem(self._filename(name), None,
                                          "renders an empty notice for the sample values: the sender would get a mail "
                                          "that says nothing of why the message was not filed; write {{ reason }} "
                                          "in it")
        return names

    def _environment_of(self, name: str) -> jinja2.Environment:
        """The environment ``name`` is rendered in: the notices' plain text, or HTML for the rest."""
        return self.text_environment if name.split("/")[0] == "notice" else self.environment

    def _routed_models(self, name: str, models: Mapping[str, Iterable[str]]) -> list[str]:
        """The models of ``models`` whose notes or replies the template ``name`` renders, if it is a
        ``<kind>/default.html.j2`` (a model's own template renders that model only)."""
        kind, _, file = name.partition("/")
        if file != DEFAULT_TEMPLATE or not _KIND.match(kind):
            return []
        return sorted({model for model in models.get(kind, ()) if _MODEL.match(model)
                       and model != SAMPLE_MODEL and self.body_template_name(kind, model) == name})

    def describe_error(self, error: BaseException, name: str) -> str:
        """What an error raised while rendering the template ``name`` says to an admin: the file and
        line it was raised in, and why (as check() says it)."""
        file, line = self._where(error, name)
        return str(TemplateProblem(file, line, _reason(error)))

    def _filename(self, name: str) -> str:
        for layer in self.layers:
            if name in layer.sources:
                return layer.sources[name][1] or f"bundled templates/{name}"
        return name

    def _where(self, error: BaseException, name: str) -> tuple[str, int | None]:
        """The template file and line the error was raised in (jinja2 rewrites the traceback to them)."""
        files = {filename for layer in self.layers for _, filename in layer.sources.values() if filename}
        for frame in reversed(traceback.extract_tb(error.__traceback__)):
            if frame.filename in files:
                return frame.filename, frame.lineno
        return self._filename(name), None


def _reason(error: BaseException) -> str:
    if isinstance(error, jinja2.UndefinedError) and (error.message or "").endswith(" is undefined"):
        return f"{error.message}: no message gives this value (the values are listed in docs/content.md)"
    if isinstance(error, jinja2.UndefinedError):
        return str(error.message)
    if isinstance(error, UnreadTemplateFile):
        return str(error.message)
    if isinstance(error, jinja2.TemplateNotFound):
        return f"template {error.name} not found"
    return f"{type(error).__name__}: {error}"


# The kinds whose templates are rendered around a message's body, and the notice templates: each is
# rendered by check() with every value it gets, once with the lists and detail empty, once filled.
_BODY_TEMPLATE = re.compile(r"^(?P<kind>note|reply)/(?P<model>[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*)\.html\.j2$")
_NOTICE_TEMPLATE = re.compile(r"^notice/[a-z][a-z0-9_]*\.txt\.j2$")


# The model a default template is rendered as by check(), besides those the rules route to it.
SAMPLE_MODEL = "project.task"


def _samples(name: str, marker: str = "", routed: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The values check() renders ``name`` with; a default template also as each model of ``routed``."""
    body = _BODY_TEMPLATE.match(name)
    if body and body.group("model") == "default":
        return [values for model in (SAMPLE_MODEL, *routed)
                for values in _body_samples(body.group("kind"), model, marker)]
    if body:
        return _body_samples(body.group("kind"), body.group("model"), marker)
    if _NOTICE_TEMPLATE.match(name):
        values = dict(reason="Sample reason", detail="", address="note+project.task-1-abcdefghijklmnop@example.com",
                      subject="Sample subject", sender_email="sender@example.com")
        return [values, {**values, "detail": "sample detail", "subject": ""}]
    # A partial (a macro file, a layout under another name): compiled only, rendered where it is used.
    return []


def _body_samples(kind: str, model: str, marker: str) -> list[dict[str, Any]]:
    """A note's or reply's values for ``model``: once with the lists empty, once filled."""
    values = dict(body=sample_body(marker), sender_name="Sample Sender",
                  sender_email="sender@example.com", subject="Sample subject", dkim_domain="example.com",
                  received_at=datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc), kind=kind,
                  model=model, res_id=1, refused_files=[], attachment_names=[])
    filled = {**values, "sender_name": "", "subject": "", "refused_files": ["sample.exe (refused)"],
              "attachment_names": ["sample.pdf"]}
    if kind == "note":
        # A note's only (render_body): a reply's template that names it is refused.
        values["external_recipients"] = []
        filled["external_recipients"] = ["Sample Customer <customer@example.com>"]
    return [values, filled]


def checked_renderer(config: GatewayConfig, *, log_warnings: bool = True) -> Renderer:
    """The renderer of a configuration, with each alias domain's built and every template checked.

    Raises ConfigError naming the file that names the folder (the gateway file for its
    templates_dir, a rules file for the domain's) and, in the reason, the template's file and line:
    serve does not start, a reload is refused and check-config fails, as for a broken rules file.
    A file of those folders that the gateway never uses (template_warnings) is a warning of the
    configuration, in ``renderer.warnings`` and ``config.warnings`` (logged when added there, unless
    ``log_warnings`` is false: check-config and doctor print them instead).
    """
    from gateway.config import ConfigError

    try:
        renderer = Renderer(config.templates_dir)
    except TemplateProblem as error:
        raise ConfigError(config.path, "templates_dir", str(error)) from None
    # Each renderer's default templates are rendered as every model its rules files route (the
    # gateway's renderer: those of the domains without a folder of their own).
    domains: dict[Path | None, list] = {}
    for rules in config.domains.values():
        domains.setdefault(rules.templates_path, []).append(rules)
    try:
        renderer.check(_routed(domains.get(None, [])))
    except TemplateProblem as error:
        raise ConfigError(config.path, "templates_dir", str(error)) from None
    for path, using in domains.items():
        if path is None:
            continue
        rules = using[0]
        try:
            renderer.for_domain(path).check(_routed(using))
        except TemplateProblem as error:
            # A template of the gateway's folder fails in every domain: it is the gateway file's.
            owner = rules.source if Path(error.file).is_relative_to(rules.templates_path) else config.path
            raise ConfigError(owner, "templates_dir", str(error)) from None
    renderer.warnings = [f"{owner}: templates_dir: {reason}" for owner, reason in template_warnings(config, renderer)]
    for warning in renderer.warnings:
        if warning not in config.warnings:
            config.warnings.append(warning)
            if log_warnings:
                log.warning("configuration: %s", warning)
    return renderer


def _routed(domains: list) -> dict[str, list[str]]:
    """The models of each kind ("note", "reply") that these alias domains' rules file."""
    return {kind: sorted({model for rules in domains for model in rules.kind_rules(kind).models})
            for kind in ("note", "reply")}


def template_warnings(config: GatewayConfig, renderer: Renderer) -> list[tuple[str, str]]:
    """(file naming the folder, why) for each file of the admin's template folders the gateway never uses.

    A misnamed file (note/project_task.html.j2, note/Project.Task.html.j2, note/default.html,
    notes/default.html.j2, notice/acces_denied.txt.j2) passed every check while the bundled
    template stayed in use (found by a review of bad admin input). Used are: note/ and reply/
    ``<model>.html.j2`` of a model some rules file names for that kind and their ``default.html.j2``,
    the notices the refusals send, and every file one of those extends, includes or imports. A
    name starting with ``_`` is a partial by its name and never warned about; a template that
    names what it includes by an expression (not a string) leaves the "not included" part unknown.
    """
    from gateway.refusals import Refusal, all_refusal_classes

    bundled = renderer.layers[-1]
    kinds = sorted({name.split("/")[0] for name in bundled.sources if "/" in name})
    notices = {refusal.template for refusal in (Refusal, *all_refusal_classes())}
    # Each admin folder once, with the rules files that use it (the gateway's: every domain).
    folders: dict[Path, tuple[str, SnapshotLoader, list]] = {}
    if config.templates_dir is not None:
        folders[config.templates_dir] = (str(config.path), renderer.layers[0], list(config.domains.values()))
    for rules in config.domains.values():
        path = rules.templates_path
        if path is None:
            continue
        if path in folders:
            folders[path][2].append(rules)
        else:
            folders[path] = (rules.source, renderer.for_domain(path).layers[0], [rules])
    if not folders:
        return []
    layers = [bundled, *(layer for _, layer, _ in folders.values())]
    rendered = set(notices) | {f"{kind}/{model}.html.j2" for rules in config.domains.values()
                               for kind in ("note", "reply") for model in [*rules.kind_rules(kind).models, "default"]}
    included, known = _included_templates(renderer.environment, layers, rendered)
    if not known:
        log.info("templates: a template names what it includes by an expression; unused files are not looked for")
        return []
    found: list[tuple[str, str]] = []
    for owner, layer, domains in folders.values():
        models = _routed(domains)
        candidates = [f"{kind}/{model}.html.j2" for kind in ("note", "reply")
                      for model in [*models[kind], "default"]] + sorted(notices | included)
        for name in sorted({*layer.sources, *layer.unread}):
            if name in included or any(part.startswith("_") for part in name.split("/")):
                continue
            reason = _unused(name, kinds, models, notices)
            if reason is None:
                continue
            close = _close_match(name, candidates)
            hint = f"; did you mean {close}?" if close else ""
            filename = layer.sources[name][1] if name in layer.sources else None
            found.append((owner, f"{filename or name} is never used: {reason}{hint}"))
    return found


def _close_match(name: str, candidates: list[str]) -> str | None:
    """The name of ``candidates`` that ``name`` is most likely a misspelling of, if any."""
    def stem(value: str) -> str:
        # The suffixes every candidate shares would make any two names look alike.
        value = value.lower().removesuffix(".j2")
        return value.removesuffix(".html").removesuffix(".txt")

    stems = {stem(candidate): candidate for candidate in reversed(candidates)}
    close = difflib.get_close_matches(stem(name), list(stems), n=1, cutoff=0.75)
    return stems[close[0]] if close and stems[close[0]] != name else None


def _included_templates(environment: jinja2.Environment, layers: list[SnapshotLoader],
                        rendered: set[str]) -> tuple[set[str], bool]:
    """The names that the templates of ``rendered`` (what the gateway renders) extend, include or
    import, and those extend, include or import in turn.

    The second value is False when a template names what it includes by an expression: which files
    are used is then unknown.
    """
    pending = list(rendered)
    seen: set[str] = set()
    included: set[str] = set()
    known = True
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for layer in layers:
            if name not in layer.sources:
                continue
            try:
                tree = environment.parse(layer.sources[name][0])
            except jinja2.TemplateSyntaxError:
                continue
            for referenced in jinja2.meta.find_referenced_templates(tree):
                if referenced is None:
                    known = False
                else:
                    included.add(referenced)
                    pending.append(referenced)
    return included, known


def _unused(name: str, kinds: list[str], models: dict[str, list[str]], notices: set[str]) -> str | None:
    """Why the gateway never renders the file ``name`` of a template folder, or None if it may."""
    folders = ", ".join(f"{kind}/" for kind in kinds)
    parts = name.split("/")
    if len(parts) == 1 or parts[0] not in kinds:
        where = "directly in the folder" if len(parts) == 1 else f"in {parts[0]}/"
        return f"it is {where}, and the gateway reads templates only from {folders} (or where a template includes it)"
    kind, file = parts[0], "/".join(parts[1:])
    if kind in ("note", "reply"):
        if len(parts) > 2:
            return f"{kind}/ templates are {kind}/<model>.html.j2 and {kind}/default.html.j2, not in a subfolder"
        if not file.endswith(".html.j2"):
            return f"{kind}/ templates end in .html.j2"
        model = file.removesuffix(".html.j2")
        if not _MODEL.match(model):
            return (f"{kind}/ templates are named {kind}/<model>.html.j2 with the model's technical name, "
                    "lowercase with dots (project.task), or default.html.j2")
        if model != "default" and model not in models[kind]:
            listed = ", ".join(models[kind]) or "none"
            return f"{model} is in no rules file's [{kind}] models ({listed})"
        return None
    if kind == "notice":
        if name in notices:
            return None
        return ("it is no notice the gateway sends (docs/reliability.md \"Notices\"), "
                "nor extended, included or imported by one")
    return None
