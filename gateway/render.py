"""Render note and reply bodies and refusal notices from jinja2 templates an admin can override."""

from __future__ import annotations

import importlib.resources
import re
import threading
from collections.abc import Callable
from datetime import datetime
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2.loaders import split_template_path
from markupsafe import Markup

if TYPE_CHECKING:
    from gateway.refusals import Refusal

BUNDLED_PACKAGE = "gateway.templates"
# In a source checkout the bundled templates are the top-level templates/ folder; pyproject maps it
# to the package gateway.templates only when the gateway is installed.
SOURCE_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
DEFAULT_TEMPLATE = "default.html.j2"
TEXT_SUFFIX = ".txt.j2"

# Kinds and model names become parts of a template path, so they are held to the shapes an address
# can carry (gateway/address.py) and can never climb out of the template folders.
_KIND = re.compile(r"^[a-z][a-z_]*$")
_MODEL = re.compile(r"^[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*$")


def bundled_templates() -> Traversable:
    """The folder of the templates shipped with the gateway."""
    try:
        return importlib.resources.files(BUNDLED_PACKAGE)
    except ModuleNotFoundError:
        return SOURCE_TEMPLATES


class ResourceLoader(jinja2.BaseLoader):
    """Loads templates from a package's resources, which need not be files on disk (a zip, a wheel)."""

    def __init__(self, root: Traversable) -> None:
        self.root = root

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        resource = self.root.joinpath(*split_template_path(template))
        if not resource.is_file():
            raise jinja2.TemplateNotFound(template)
        filename = str(resource) if isinstance(resource, Path) else None
        # Bundled templates change only with the gateway, so a compiled template never goes stale.
        return resource.read_text(encoding="utf-8"), filename, lambda: True

    def list_templates(self) -> list[str]:
        found: list[str] = []
        pending: list[tuple[str, Traversable]] = [("", self.root)]
        while pending:
            prefix, folder = pending.pop()
            for child in folder.iterdir():
                if child.is_dir():
                    pending.append((f"{prefix}{child.name}/", child))
                elif child.name.endswith(".j2"):
                    found.append(prefix + child.name)
        return sorted(found)


def _autoescape(template_name: str | None) -> bool:
    # Everything is HTML-escaped except plain-text notices: escaping there would show "&lt;" to
    # the reader and protects nothing, since a text/plain body is never interpreted as markup.
    return not (template_name or "").endswith(TEXT_SUFFIX)


class Renderer:
    """The template environment: an admin's folder first, then the bundled templates."""

    def __init__(self, override_dir: Path | None = None, *, domain_dir: Path | None = None) -> None:
        loaders: list[jinja2.BaseLoader] = []
        # An alias domain's own folder comes first (issue 3), then the gateway's, then the bundled.
        for folder in (domain_dir, override_dir):
            if folder is not None:
                loaders.append(jinja2.FileSystemLoader(str(folder), encoding="utf-8"))
        loaders.append(ResourceLoader(bundled_templates()))
        self.override_dir = override_dir
        self.domain_dir = domain_dir
        self._domain_renderers: dict[Path, Renderer] = {}
        self._domain_lock = threading.Lock()
        self.environment = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            autoescape=_autoescape,
            # A typo in an admin's template must fail loudly, not file a note with a blank in it.
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )

    def for_domain(self, domain_dir: Path | None) -> Renderer:
        """The renderer of an alias domain whose rules name a templates_dir; built once per folder."""
        if domain_dir is None:
            return self
        with self._domain_lock:
            renderer = self._domain_renderers.get(domain_dir)
            if renderer is None:
                renderer = self._domain_renderers[domain_dir] = Renderer(self.override_dir, domain_dir=domain_dir)
            return renderer

    def has_template(self, name: str) -> bool:
        try:
            self.environment.loader.get_source(self.environment, name)  # type: ignore[union-attr]
        except jinja2.TemplateNotFound:
            return False
        return True

    def body_template_name(self, kind: str, model: str) -> str:
        """``<kind>/<model>.html.j2`` if there is one, else ``<kind>/default.html.j2``."""
        if not _KIND.match(kind):
            raise ValueError(f"{kind!r} is not a message kind")
        if not _MODEL.match(model):
            raise ValueError(f"{model!r} is not an Odoo model name")
        specific = f"{kind}/{model}.html.j2"
        return specific if self.has_template(specific) else f"{kind}/{DEFAULT_TEMPLATE}"

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
        **extra: Any,
    ) -> str:
        """The HTML to post: the template of the kind and model wrapped around the sanitized body.

        Every documented value is required so that an admin's template can use any of them.
        """
        template = self.environment.get_template(self.body_template_name(kind, model))
        return template.render(
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
        return self.environment.get_template(template).render(
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

    def check(self) -> list[str]:
        """Compile every template and return their names, so a broken override stops the start.

        A syntax error raises jinja2.TemplateSyntaxError, which names the file and the line.
        """
        names = sorted({name for name in self.environment.list_templates() if name.endswith(".j2")})
        for name in names:
            self.environment.get_template(name)
        return names
