"""Load and validate the gateway file and the per-domain rules files (TOML)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(Exception):
    """A configuration mistake, naming the file, the key and the reason."""

    def __init__(self, path: Path | str, key: str, reason: str) -> None:
        self.path, self.key, self.reason = str(path), key, reason
        super().__init__(f"{path}: {key}: {reason}" if key else f"{path}: {reason}")


class _Strict(BaseModel):
    # An unknown key is almost always a typo of a known one; refusing it keeps a setting from
    # silently not applying.
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- The gateway file --------------------------------------------------------------------------


class ListenerConfig(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 2525
    protocol: Literal["smtp", "lmtp"] = "smtp"
    hostname: str = "note-gateway.localhost"
    max_message_size: Annotated[int, Field(ge=1024)] = 20 * 1024 * 1024
    session_timeout: Annotated[float, Field(gt=0)] = 90.0
    max_sessions: Annotated[int, Field(ge=1)] = 100
    # A client's mail system waits 10 minutes for the reply to DATA (RFC 5321 section 4.5.3.2.6);
    # the gateway answers well before, so a slow Odoo means a 451 and not a timed-out session
    # whose message the client may have to assume delivered.
    message_deadline: Annotated[float, Field(gt=0, le=300)] = 120.0
    # One host must not take every session (issue 4); a relay that legitimately sends much keeps
    # its queue and retries after the 421.
    max_sessions_per_ip: Annotated[int, Field(ge=1)] = 20
    # On SIGTERM: seconds to let sessions in flight finish before they are cut (the pipeline of a
    # message already in DATA still runs to its own deadline).
    shutdown_grace: Annotated[float, Field(ge=0)] = 30.0


class ResolverConfig(_Strict):
    # Empty: the system's resolvers from /etc/resolv.conf.
    nameservers: list[str] = []
    port: Annotated[int, Field(ge=1, le=65535)] = 53
    timeout: Annotated[float, Field(gt=0, le=30)] = 4.0
    cache: bool = True


class JournalConfig(_Strict):
    path: str = "journal.sqlite3"


class InputLimits(_Strict):
    """Bounds on hostile input, checked before the message is parsed (issue 4)."""

    # Real header blocks are a few KiB; a huge one is a parser attack or a loop that grew Received.
    max_header_bytes: Annotated[int, Field(ge=1024)] = 256 * 1024
    max_header_fields: Annotated[int, Field(ge=10)] = 1000
    max_mime_parts: Annotated[int, Field(ge=1)] = 500
    max_mime_depth: Annotated[int, Field(ge=1)] = 20


class NoticeConfig(_Strict):
    """The smarthost through which refusal notices leave; notices are off until a rules file asks."""

    smarthost: str = ""               # host name or address; empty: no notice is ever sent
    smarthost_port: Annotated[int, Field(ge=1, le=65535)] = 25
    timeout: Annotated[float, Field(gt=0, le=60)] = 10.0
    # The From of notices; the envelope sender is always empty (RFC 3834 section 3.3).
    from_address: str = ""


class OdooConnection(_Strict):
    url: str
    database: str
    login: str
    api_key_file: str | None = None
    api_key_env: str | None = None
    timeout: Annotated[float, Field(gt=0)] = 30.0
    pool_size: Annotated[int, Field(ge=1, le=64)] = 4

    @model_validator(mode="after")
    def _one_key_source(self) -> OdooConnection:
        if bool(self.api_key_file) == bool(self.api_key_env):
            raise ValueError("set exactly one of api_key_file or api_key_env")
        return self

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class GatewayFile(_Strict):
    listener: ListenerConfig = ListenerConfig()
    resolver: ResolverConfig = ResolverConfig()
    journal: JournalConfig = JournalConfig()
    limits: InputLimits = InputLimits()
    notices: NoticeConfig = NoticeConfig()
    odoo: dict[str, OdooConnection]
    rules_dir: str = "rules"
    templates_dir: str | None = None


# --- A rules file: one alias domain ------------------------------------------------------------


class SenderPolicy(_Strict):
    # strict: d= equals the From domain. Relaxed alignment needs a public suffix list and is not
    # offered yet, so it cannot be configured by mistake.
    alignment: Literal["strict"] = "strict"
    max_signature_age_days: Annotated[int, Field(ge=0)] = 0


class KindRules(_Strict):
    # No model by default: an admin opts each kind of record in.
    models: list[str] = []
    access: Literal["followers"] = "followers"
    allow_internal_users: bool = True


class NoteRules(KindRules):
    contributor_group: str = "note_gateway.group_portal_note_contributor"

    @field_validator("contributor_group")
    @classmethod
    def _xmlid(cls, value: str) -> str:
        module, dot, name = value.partition(".")
        if not (module and dot and name):
            raise ValueError("must be an xmlid of the form module.name")
        return value


class RateLimits(_Strict):
    # Odoo's own loop guard files at most 20 messages per author and record in 120 minutes
    # (mail.gateway.loop.threshold / .minutes); these are its defaults. 0 turns a limit off.
    per_sender: Annotated[int, Field(ge=0)] = 20
    per_record: Annotated[int, Field(ge=0)] = 20
    window_minutes: Annotated[float, Field(gt=0)] = 120.0


class NoticeRules(_Strict):
    # Off by default: a notice is mail sent to a stranger's address, which an admin opts into.
    enabled: bool = False


class DomainRules(_Strict):
    domain: str
    odoo: str
    secrets: list[str] = []
    secrets_file: str | None = None
    secrets_env: str | None = None
    sender: SenderPolicy = SenderPolicy()
    note: NoteRules = NoteRules()
    reply: KindRules = KindRules()
    rate_limit: RateLimits = RateLimits()
    notices: NoticeRules = NoticeRules()
    source: str = ""

    @field_validator("domain")
    @classmethod
    def _lowercase_domain(cls, value: str) -> str:
        return value.strip().lower()

    def kind_rules(self, kind: str) -> KindRules:
        return self.note if kind == "note" else self.reply


class GatewayConfig:
    """The whole validated configuration: the gateway file plus one rules set per alias domain."""

    def __init__(self, path: Path, gateway: GatewayFile, domains: dict[str, DomainRules],
                 secrets: dict[str, list[bytes]], api_keys: dict[str, str]) -> None:
        self.path = path
        self.gateway = gateway
        self.domains = domains
        self.secrets = secrets
        self.api_keys = api_keys

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve_path(self, value: str) -> Path:
        candidate = Path(value)
        return candidate if candidate.is_absolute() else self.base_dir / candidate

    @property
    def journal_path(self) -> Path:
        return self.resolve_path(self.gateway.journal.path)

    @property
    def templates_dir(self) -> Path | None:
        value = self.gateway.templates_dir
        return self.resolve_path(value) if value else None


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path, "", f"not valid TOML: {error}") from None


def _validated(model: type[BaseModel], data: dict, path: Path) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(top level)"
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        raise ConfigError(path, key, message) from None


def _read_secret_file(path: Path, owner: Path, key: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as error:
        raise ConfigError(owner, key, f"cannot read {path}: {error.strerror}") from None


def load_config(path: str | os.PathLike, environ: dict[str, str] | None = None) -> GatewayConfig:
    """Read the gateway file and every ``*.toml`` under its rules folder, or raise ConfigError."""
    environ = os.environ if environ is None else environ
    path = Path(path).resolve()
    gateway = _validated(GatewayFile, _read_toml(path), path)
    base = path.parent

    api_keys: dict[str, str] = {}
    for name, connection in gateway.odoo.items():
        key_name = f"odoo.{name}"
        if connection.api_key_file:
            key_path = Path(connection.api_key_file)
            key_path = key_path if key_path.is_absolute() else base / key_path
            api_keys[name] = _read_secret_file(key_path, path, f"{key_name}.api_key_file")
        else:
            value = environ.get(connection.api_key_env or "")
            if not value:
                raise ConfigError(path, f"{key_name}.api_key_env",
                                  f"environment variable {connection.api_key_env} is not set")
            api_keys[name] = value.strip()

    rules_dir = Path(gateway.rules_dir)
    rules_dir = rules_dir if rules_dir.is_absolute() else base / rules_dir
    if not rules_dir.is_dir():
        raise ConfigError(path, "rules_dir", f"{rules_dir} is not a folder")

    domains: dict[str, DomainRules] = {}
    secrets: dict[str, list[bytes]] = {}
    for rules_path in sorted(rules_dir.glob("*.toml")):
        data = _read_toml(rules_path)
        rules = _validated(DomainRules, {**data, "source": str(rules_path)}, rules_path)
        if rules.domain in domains:
            raise ConfigError(rules_path, "domain",
                              f"{rules.domain} is already configured by {domains[rules.domain].source}")
        if rules.odoo not in gateway.odoo:
            raise ConfigError(rules_path, "odoo", f"no [odoo.{rules.odoo}] in {path.name}")
        domain_secrets = list(rules.secrets)
        if rules.secrets_file:
            secret_path = Path(rules.secrets_file)
            secret_path = secret_path if secret_path.is_absolute() else rules_path.parent / secret_path
            text = _read_secret_file(secret_path, rules_path, "secrets_file")
            domain_secrets += [line.strip() for line in text.splitlines() if line.strip()]
        if rules.secrets_env:
            value = environ.get(rules.secrets_env, "")
            domain_secrets += [part.strip() for part in value.split(",") if part.strip()]
        if not domain_secrets:
            raise ConfigError(rules_path, "secrets", "no address secret (secrets, secrets_file or secrets_env)")
        for secret in domain_secrets:
            if len(secret) < 16:
                raise ConfigError(rules_path, "secrets", "each secret needs at least 16 characters")
        domains[rules.domain] = rules
        secrets[rules.domain] = [secret.encode() for secret in domain_secrets]

    if not domains:
        raise ConfigError(rules_dir, "", "no rules file (*.toml): the gateway would serve no alias domain")
    return GatewayConfig(path, gateway, domains, secrets, api_keys)
