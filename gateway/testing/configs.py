"""Write a gateway file and one rules file into a folder, for the demo, the tests and the benchmarks."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any


def fresh_secret() -> str:
    """A strong address secret made for this run, as README says to make one: a secret written in
    the repository is published, and load_config refuses it (config.PUBLISHED_SECRETS)."""
    return secrets.token_urlsafe(32)


def _value(value: Any) -> str:
    # JSON's strings, numbers, booleans and arrays of them are valid TOML values.
    return json.dumps(value)


def _table(name: str, values: dict[str, Any], extra: str = "") -> str:
    lines = [f"[{name}]", *(f"{key} = {_value(value)}" for key, value in values.items() if value is not None)]
    if extra.strip():
        lines.append(extra.strip())
    return "\n".join(lines) + "\n"


def _private(path: Path, text: str) -> None:
    # Keys and secrets are written as an admin should write them: readable by the owner only
    # (the config loader warns about anything looser).
    path.write_text(text)
    os.chmod(path, 0o600)


def write_gateway_config(folder: Path, *, odoo_url: str, api_key: str, dns_port: int, alias_domain: str,
                         secret: str, database: str = "notes", login: str = "gateway", smtp_port: int | None = None,
                         models: tuple[str, ...] = ("project.task", "sale.order"),
                         listener: dict[str, Any] | None = None, resolver: dict[str, Any] | None = None,
                         odoo: dict[str, Any] | None = None, rules: dict[str, Any] | None = None,
                         note: dict[str, Any] | None = None, reply: dict[str, Any] | None = None,
                         listener_extra: str = "", odoo_extra: str = "", rules_extra: str = "") -> Path:
    """``folder/gateway.toml`` with ``folder/rules/<alias domain>.toml``; returns the gateway file's path.

    The dictionaries add or override keys of their table; the ``*_extra`` strings are TOML lines
    appended as they are (after [reply] for ``rules_extra``, so they may open further tables).
    Without ``smtp_port`` the file has no listener.port (2525 then): the tests and the demo listen
    on a port the system picks (ThreadedGateway's port=0, `serve --any-port`), which the file
    cannot ask for.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rules").mkdir(exist_ok=True)
    _private(folder / "odoo-api-key", api_key + "\n")
    gateway = "\n".join((
        'rules_dir = "rules"\n',
        _table("listener", {"host": "127.0.0.1", "port": smtp_port, "hostname": alias_domain, **(listener or {})},
               listener_extra),
        _table("resolver", {"nameservers": ["127.0.0.1"], "port": dns_port, **(resolver or {})}),
        _table("journal", {"path": "journal.sqlite3"}),
        _table("odoo.main", {"url": odoo_url, "database": database, "login": login, "api_key_file": "odoo-api-key",
                             **(odoo or {})}, odoo_extra),
    ))
    _private(folder / "gateway.toml", gateway)
    rules_text = "\n".join((
        "\n".join(f"{key} = {_value(value)}" for key, value in
                  {"domain": alias_domain, "odoo": "main", "secrets": [secret], **(rules or {})}.items()) + "\n",
        _table("note", {"models": list(models), **(note or {})}),
        _table("reply", {"models": list(models), **(reply or {})}, rules_extra),
    ))
    _private(folder / "rules" / f"{alias_domain}.toml", rules_text)
    return folder / "gateway.toml"
