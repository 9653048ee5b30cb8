"""Load and validate the gateway file and the per-domain rules files (TOML)."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import os
import re
import ssl
import stat
import tomllib
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway import odootransport
from gateway.resolver import DEFAULT_CACHE_SIZE


log = logging.getLogger(__name__)


# The address secret of rules/example.secrets (operator review: following the README in the
# checkout served rules/example.toml with it).
EXAMPLE_SECRET = "example-secret-change-me-0123456789"
# Every address secret written in this repository, now or before: the example's, the tests', the
# bench's. Anyone can read them, so anyone could sign addresses with them: load_config refuses each,
# in any case and with anything around it, wherever it is written. This is the one list of them;
# tests/test_config.py finds the secrets written in the repository and checks that each is refused.
# The tests, the bench and the demo make a strong secret for each run (gateway.testing.configs.fresh_secret).
PUBLISHED_SECRETS = frozenset({
    EXAMPLE_SECRET,
    "test-secret-for-addresses-0123456789",        # tests/conftest.py until it made one per run; test_subject.py
    "bench-secret-not-for-production-0123456789",  # bench/world.py until it made one per run
    "real-odoo-suite-secret-0123456789abcdef",     # tests/real_odoo/conftest.py until it made one per run
    "first-secret-0123456789", "older-secret-0123456789",  # tests/test_address.py, addresses known to verify
    "retired-secret-0123456789abcdef",             # tests/test_routing.py
    "second-domain-secret-0123456789", "idn-domain-secret-0123456789", "this-site-own-secret-0123456789",
    "fresh-secret-0123456789abc", "rotated-secret-0123456789", "second-secret-0123456789",
    "the-new-secret-0123456789abcdefgh", "0123456789abcdef-secret",  # earlier tests' configurations
})
# An address secret is the key of the addresses' HMAC: one address seen (a Reply-To, a reply+ a
# customer was given) lets anyone test guesses offline, as fast as SHA-256 runs. The rules below
# are a floor against a secret typed by hand (a review recovered "aaaaaaaaaaaaaaaa" from one address
# in a millisecond), not a proof of a good one: a secret made by secrets.token_urlsafe(32) passes.
MIN_SECRET_LENGTH = 22
MIN_SECRET_BITS = 128
MAKE_A_SECRET = 'make one with python3 -c "import secrets; print(secrets.token_urlsafe(32))"'
# The keys a rules file gives its secrets with, in the order load_config reads them: the first
# secret of the first of them that gives any signs new addresses, whatever was added last.
SECRET_SOURCES = ("secrets", "secrets_file", "secrets_credential", "secrets_env")


def secret_bits(secret: str) -> float:
    """A rough estimate of the bits of a secret: its length times log2 of the alphabet of the kinds
    of characters it uses (lowercase, uppercase, digits, ASCII punctuation, others; a mixed-case
    secret of base64url's characters only, 64), where a repetition of the whole counts once and a
    character that continues a run (the same one a fourth time, or a third step of 1 as in "abcd" or
    "4321") counts nothing."""
    alphabet = sum(size for present, size in (
        (any("a" <= char <= "z" for char in secret), 26), (any("A" <= char <= "Z" for char in secret), 26),
        (any("0" <= char <= "9" for char in secret), 10),
        (any(char.isascii() and not char.isalnum() for char in secret), 32),
        (any(not char.isascii() for char in secret), 64)) if present)
    if alphabet == 0:
        return 0.0
    if alphabet in (52, 62, 84, 94) and all(char.isascii() and (char.isalnum() or char in "-_") for char in secret):
        # Mixed case, written only in base64url's letters, digits, "-" and "_": taken as drawn from
        # base64url's 64 characters, as secrets.token_urlsafe draws them. A random 22-character one
        # that happened to hold no digit was refused at 125 bits (about 2 in 100; found by a review).
        alphabet = 64
    period = next((size for size in range(1, len(secret) // 2 + 1) if secret[size:] == secret[:-size]), len(secret))
    text = secret[:period]
    steps = [ord(char) - ord(before) for before, char in zip(text, text[1:])]
    # A character is the fourth of a run when the three steps up to it are one same step of -1, 0
    # or 1 ("aaaa", "abcd"); three in a row happen by chance in about 1 random secret in 60 and
    # refused some drawn by secrets.token_urlsafe(16).
    counted = sum(1 for index in range(len(text))
                  if index < 3 or not (steps[index - 1] == steps[index - 2] == steps[index - 3] in (-1, 0, 1)))
    return counted * math.log2(alphabet)


def secret_fingerprint(secret: bytes) -> str:
    """The first 8 hex digits of the secret's SHA-256: tells an admin which secret signs, never what it is."""
    return hashlib.sha256(secret).hexdigest()[:8]


def signing_secret(config: GatewayConfig, domain: str) -> str:
    """Which secret signs the new addresses of ``domain`` (`note-gateway address`, a note's
    Reply-To): the first of its list, whose source is the first of SECRET_SOURCES that gives any."""
    return f"the first secret of {config.secret_sources[domain][0]} (sha256 {secret_fingerprint(config.secrets[domain][0])})"


def signing_lines(config: GatewayConfig) -> list[str]:
    """One line per alias domain, logged at the start and at each reload: which secret signs."""
    return [f"{domain}: new addresses are signed with {signing_secret(config, domain)}; "
            f"{len(config.secrets[domain])} secret(s) verify" for domain in sorted(config.domains)]


def secret_problem(secret: str) -> str | None:
    """Why load_config refuses an address secret, or None; it never says the secret."""
    if any(char.isspace() or not char.isprintable() for char in secret):
        # Secrets read from a file, a credential or the environment are stripped, those written in
        # the rules file were not: "example-secret-... " was another secret. Refused rather than
        # stripped, so that what signs is what the file says.
        return "it holds a space, a line break or another invisible character; " + MAKE_A_SECRET
    folded = secret.casefold()
    if EXAMPLE_SECRET.casefold() in folded:
        return ("this is the example secret published with the gateway (rules/example.secrets): anyone could sign "
                f"addresses with it; {MAKE_A_SECRET}, and keep your rules in a folder of their own "
                "(README, \"Configuring it\")")
    if any(published.casefold() in folded for published in PUBLISHED_SECRETS):
        return ("this secret is published with the gateway's source (its tests or bench): anyone could sign addresses "
                f"with it; {MAKE_A_SECRET}")
    if len(secret) < MIN_SECRET_LENGTH:
        return f"each secret needs at least {MIN_SECRET_LENGTH} characters, this one has {len(secret)}; {MAKE_A_SECRET}"
    bits = secret_bits(secret)
    if bits < MIN_SECRET_BITS:
        return (f"this secret is too easy to guess from one address: about {bits:.0f} bits by the gateway's estimate "
                f"(its length, the kinds of characters it uses, repeats and runs), at least {MIN_SECRET_BITS} needed; "
                + MAKE_A_SECRET)
    return None


class ConfigError(Exception):
    """A configuration mistake, naming the file, the key and the reason."""

    def __init__(self, path: Path | str, key: str, reason: str) -> None:
        self.path, self.key, self.reason = str(path), key, reason
        super().__init__(f"{path}: {key}: {reason}" if key else f"{path}: {reason}")


class _Strict(BaseModel):
    # An unknown key is almost always a typo of a known one; refusing it keeps a setting from
    # silently not applying. Strict types: TOML already gives each value its type, so port = "2525"
    # or cache = 1 is a mistake named by its key, not a value quietly converted (an integer is still
    # taken where a number of seconds is asked, as TOML writes 90 for 90.0). No inf or nan, which
    # TOML allows: window_minutes = inf passed gt=0 and then broke prune-journal (operator review).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# How messages show an empty [listener] host: it binds every interface, IPv4 and IPv6.
EVERY_INTERFACE = "every interface (0.0.0.0 and ::)"


def shown_host(host: str) -> str:
    """listener.host as doctor and a reload's warning show it: an empty one is not a blank."""
    return host or EVERY_INTERFACE


def shown_address(host: str, port: int) -> str:
    """Where the listener is, as the log shows it: ``127.0.0.1:2525``, ``[::1]:2525``, or, for an
    empty host, ``every interface, 0.0.0.0:2525 and [::]:2525``."""
    if not host:
        return f"every interface, 0.0.0.0:{port} and [::]:{port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _host(value: str) -> str:
    # An empty [metrics] host failed at start with "Name or service not known" (operator review):
    # prometheus_client's start_http_server resolves it as a name.
    if not value.strip():
        raise ValueError("empty: write the address to listen on, e.g. 127.0.0.1, or 0.0.0.0 for every "
                         "IPv4 interface (:: for every IPv6 one)")
    return value


def _listener_host(value: str) -> str:
    # "" (or "*") listens on every interface, IPv4 and IPv6: asyncio's create_server and
    # workers.bind make of an empty host a socket on 0.0.0.0 and one on ::, on the same port.
    # 0.0.0.0 alone is IPv4 only and :: alone IPv6 only (both set IPV6_V6ONLY), so refusing "" for
    # the blank it left in the log and doctor left no way to take mail from both families, as an
    # MX on port 25 must (review); the log and doctor now show it as EVERY_INTERFACE.
    if value == "*":
        return ""
    if value and not value.strip():
        raise ValueError('blank: write "" (or "*") for every interface, IPv4 and IPv6, or the address to '
                         "listen on, e.g. 127.0.0.1 (0.0.0.0 is every IPv4 interface only, :: every IPv6 one only)")
    return value


# --- The gateway file --------------------------------------------------------------------------


class ListenerConfig(_Strict):
    host: str = "127.0.0.1"
    # Not 0: the system would pick a port no mail system could be pointed at (operator review).
    port: Annotated[int, Field(ge=1, le=65535)] = 2525
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
    # How many sessions may be inside DATA at once (receiving the message and waiting for its
    # reply). Each holds its message in memory a few times over (aiosmtpd joins the received lines,
    # the pipeline parses and decodes it), so this, times max_message_size, is what bounds the
    # memory, not the number of sessions (issue 6, benchmark 5). A session beyond it waits before
    # its 354, which RFC 5321 section 4.5.3.2.2 lets last up to 2 minutes at the client.
    max_messages_in_data: Annotated[int, Field(ge=1)] = 10
    # A message of at most this many bytes gives its DATA slot back once received, while it is
    # checked and filed: it holds little memory (about ten times its size), and otherwise a few
    # small notes waiting for a slow Odoo keep every other session out of DATA and the Odoo
    # connections from sharing their reads (issue 6). Those messages are bounded by max_sessions
    # instead, so the memory bound becomes max_messages_in_data x max_message_size plus
    # max_sessions x light_message_size, each about ten times over. 0: every message keeps its slot.
    light_message_size: Annotated[int, Field(ge=0)] = 65536
    # Processes serving the listener, each on its own socket (issue 6): a message costs some milliseconds of CPU in
    # Python, and one process runs on one core at a time. With more than one, max_sessions and
    # max_messages_in_data are shared out among them (each takes its share, rounded up), so the
    # bounds hold for the whole gateway; max_sessions_per_ip holds per process.
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    # aiosmtpd's command_call_limit (MAIL_SECURITY.md item 15): how many times one session may send
    # each command that carries no mail (NOOP, HELP, VRFY, EXPN, HELO, EHLO, LHLO, STARTTLS, AUTH,
    # each counted apart). One more gets "421 4.7.0 NOOP sent too many times" and the session is
    # closed. Without it a client that sends NOOP now and then holds its session, which each command
    # keeps from the idle timeout, for ever. Unknown commands have aiosmtpd's own fixed limit
    # (BOGUS_LIMIT): the fifth in a session gets "502 5.5.1 Too many unrecognized commands, goodbye."
    # and ends it, before this limit at any value of 5 or more.
    command_call_limit: Annotated[int, Field(ge=1)] = 20
    # The same for each command of a mail transaction (MAIL, RCPT, DATA, RSET, QUIT), counted over
    # the whole session: Postfix's connection cache delivers many messages on one session, each with
    # MAIL, RCPT and DATA, and sends RSET before it reuses the session. Large, so that
    # max_session_seconds and not this count ends a busy relay's session.
    transaction_call_limit: Annotated[int, Field(ge=1)] = 10000
    # Seconds one session may last in all, however busy: the first command after it gets
    # "421 4.4.2 This session has lasted too long, reconnect to go on" and the session is closed,
    # never a message inside DATA. Postfix reuses a session for at most 300 s by default
    # (smtp_connection_reuse_time_limit, lmtp_connection_reuse_time_limit) plus its last delivery
    # (message_deadline), so the default never cuts it.
    max_session_seconds: Annotated[float, Field(gt=0)] = 600.0
    # On SIGTERM: seconds to let sessions in flight finish before they are cut (the pipeline of a
    # message already in DATA still runs to its own deadline).
    shutdown_grace: Annotated[float, Field(ge=0)] = 30.0
    # STARTTLS (RFC 3207) with this certificate chain and key (PEM). A listener that faces the
    # internet sets require_starttls, so no MAIL is taken before the session is encrypted.
    tls_certificate: str | None = None
    tls_key: str | None = None
    # The key as a systemd credential (LoadCredential=NAME:PATH): read from $CREDENTIALS_DIRECTORY,
    # so the key file itself can stay readable by root alone.
    tls_key_credential: str | None = None
    require_starttls: bool = False

    _every_interface = field_validator("host")(_listener_host)

    @model_validator(mode="after")
    def _tls_complete(self) -> ListenerConfig:
        if self.tls_key and self.tls_key_credential:
            raise ValueError("set at most one of tls_key or tls_key_credential")
        if bool(self.tls_certificate) != bool(self.tls_key or self.tls_key_credential):
            raise ValueError("tls_certificate and tls_key (or tls_key_credential) go together")
        if self.require_starttls and not self.tls_certificate:
            raise ValueError("require_starttls needs tls_certificate and tls_key")
        return self


class MetricsConfig(_Strict):
    # Prometheus metrics over HTTP. Loopback by default: the numbers tell an outsider which
    # senders are refused and how loaded the gateway is.
    host: str = "127.0.0.1"
    # Not 0: "metrics on http://127.0.0.1:0/metrics" was logged for a port picked by the system.
    port: Annotated[int, Field(ge=1, le=65535)] = 9464

    _nonempty_host = field_validator("host")(_host)


class ResolverConfig(_Strict):
    # Empty: the system's resolvers from /etc/resolv.conf. Otherwise IPv4 or IPv6 addresses: a
    # host name would itself need a resolver.
    nameservers: list[str] = []
    port: Annotated[int, Field(ge=1, le=65535)] = 53
    # Seconds the last nameserver gets; a lookup first tries each one before it for up to
    # min(timeout, 2 s) (resolver.lookup_lifetime), all within the message's deadline.
    timeout: Annotated[float, Field(gt=0, le=30)] = 4.0
    cache: bool = True
    # The most DKIM key answers the cache keeps (about 4 KB each), in each process: the least
    # recently used goes first. Each is kept for its TTL, at most an hour.
    cache_size: Annotated[int, Field(ge=1, le=1_000_000)] = DEFAULT_CACHE_SIZE

    @field_validator("nameservers")
    @classmethod
    def _ip_addresses(cls, value: list[str]) -> list[str]:
        addresses = []
        for server in value:
            try:
                addresses.append(str(ipaddress.ip_address(server.strip())))
            except ValueError:
                raise ValueError(f"{server!r} is not an IPv4 or IPv6 address") from None
        return addresses


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


_URL_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def _url_host(host: str) -> bool:
    """Whether ``host`` (a URL's hostname, lowercase, without brackets) is an IP address or a host name."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    return len(host) <= 254 and all(_URL_HOST_LABEL.fullmatch(label) for label in labels)


def odoo_identity(url: str, database: str) -> str:
    """Which Odoo data an [odoo.NAME] connection reaches: its URL's scheme, host and port, and its database.

    Two connections with the same identity are one Odoo for every "same Odoo" question (a record
    of one is the record of the other): one integration user per company on one database, say
    (docs/rules.md). The login does not count: two logins on one database see the same records.
    Normalised from where odoorpc reaches it (endpoint): the host in lower case without a final
    dot, an IP address in its shortest form, the port the scheme implies written out. Two names of
    one server (a host name and its address) are not recognised as one: give both connections the
    same URL. E.g. ``https://erp.example.com:443/production``.
    """
    host, protocol, port = endpoint(url)
    host = host.strip("[]").lower().rstrip(".")
    try:
        address = ipaddress.ip_address(host)
        host = f"[{address.compressed}]" if address.version == 6 else address.compressed
    except ValueError:
        pass
    return f"{'https' if protocol == 'jsonrpc+ssl' else 'http'}://{host}:{port}/{database}"


def endpoint(url: str) -> tuple[str, str, int]:
    """The host, protocol and port that odoorpc.ODOO takes for an [odoo.NAME] url (checked by OdooConnection).

    odoorpc writes its URLs as ``{scheme}{host}:{port}/jsonrpc``, so an IPv6 address keeps its
    brackets and those URLs stay well-formed (http.client also reads the bare form, by its last
    colon). The URL has no path, query or user (OdooConnection), which odoorpc could not use.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    https = parts.scheme == "https"
    return host, "jsonrpc+ssl" if https else "jsonrpc", parts.port or (443 if https else 80)


class OdooConnection(_Strict):
    url: str
    database: str
    login: str
    api_key_file: str | None = None
    api_key_env: str | None = None
    # The name of a systemd credential (LoadCredential=NAME:PATH in the unit): the key is read
    # from $CREDENTIALS_DIRECTORY/NAME, which only the service's user can read.
    api_key_credential: str | None = None
    timeout: Annotated[float, Field(gt=0)] = 30.0
    pool_size: Annotated[int, Field(ge=1, le=64)] = 4
    # Seconds a sender's user row and a record's followers may be reused from an earlier message.
    # 0 (the default) reads them from Odoo on every message, as DESIGN.md's contract asks; more
    # saves two of the four round trips per message but lets a revoked group, an archived user or a
    # removed follower through for that long (issue 6).
    read_cache_seconds: Annotated[float, Field(ge=0, le=300)] = 0.0
    # A post that timed out or lost its connection may still be running in Odoo, which keeps an
    # abandoned request going up to its limit_time_real (120 s by default; without limit under
    # --workers=0). For this long after, a retry that does not find the message in Odoo is deferred
    # (451) instead of posted again, which could file it twice. Must exceed Odoo's limit_time_real.
    unsettled_post_seconds: Annotated[float, Field(gt=0, le=86400)] = 300.0
    # PEM file of the CA certificate(s) an https:// url's certificate must chain to (a private CA,
    # a self-signed Odoo); then only these are trusted for this connection, not the system's.
    # Relative to the gateway file; read at every start, reload and check-config.
    ca_file: str | None = None

    @model_validator(mode="after")
    def _one_key_source(self) -> OdooConnection:
        if sum(map(bool, (self.api_key_file, self.api_key_env, self.api_key_credential))) != 1:
            raise ValueError("set exactly one of api_key_file, api_key_env or api_key_credential")
        return self

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # odoorpc is given a host, a protocol and a port (endpoint() above), nothing else of the URL:
        # a URL it cannot reach passed here and every message was deferred (451) for days, and a
        # path was silently dropped (bad-input review). So the URL is scheme, host and port only.
        example = "such as https://erp.example.com or http://127.0.0.1:8069"
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, {example}")
        if any(char.isspace() or not char.isprintable() for char in value):
            raise ValueError(f"{value!r} contains a space or a control character: write the URL of Odoo, {example}")
        try:
            parts = urlsplit(value)
        except ValueError as error:  # "http://[::1": Invalid IPv6 URL
            raise ValueError(f"{value!r} is not a URL ({error}): write the URL of Odoo, {example}") from None
        if "@" in parts.netloc:
            # Not echoed: it may hold a password.
            raise ValueError("carries a user name or password (user@host): the gateway logs in with login and its "
                             "API key, never with credentials in the URL; remove them from it")
        if not parts.hostname:
            raise ValueError(f"{value!r} names no host: write the URL of Odoo, {example}")
        try:
            port = parts.port
        except ValueError:  # Port out of range, or not a number.
            port = 0
        if port == 0:
            raise ValueError(f"the port of {value!r} must be a number from 1 to 65535")
        if not _url_host(parts.hostname):
            raise ValueError(f"{parts.hostname!r} in {value!r} is not a host name or an IP address "
                             "(an internationalised name is written in its xn-- form)")
        if parts.query or parts.fragment or "?" in value or "#" in value:
            raise ValueError(f"{value!r} has a query or a fragment (? or #), which the gateway would not send: "
                             f"write scheme, host and port only, {example}")
        if parts.path.rstrip("/"):
            raise ValueError(f"{value!r} has a path ({parts.path}): Odoo must be served at the root of its host. "
                             "odoorpc, through which the gateway talks to Odoo, takes only a host and a port and "
                             "calls /jsonrpc and /web/... at their root, so the path would be dropped; give the "
                             "host name or port that serves Odoo at its root, such as https://erp.example.com")
        return value.rstrip("/")

    @property
    def identity(self) -> str:
        """The Odoo this connection reaches (odoo_identity): what the gateway's keys name an Odoo by."""
        return odoo_identity(self.url, self.database)


class GatewayFile(_Strict):
    listener: ListenerConfig = ListenerConfig()
    resolver: ResolverConfig = ResolverConfig()
    journal: JournalConfig = JournalConfig()
    metrics: MetricsConfig | None = None
    limits: InputLimits = InputLimits()
    notices: NoticeConfig = NoticeConfig()
    odoo: dict[str, OdooConnection]
    rules_dir: str = "rules"
    templates_dir: str | None = None


# --- A rules file: one alias domain ------------------------------------------------------------


_LDH_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def alias_domain(value: str) -> str:
    """An alias domain as recipients are compared with it: lowercase, A-labels, no final dot.

    The same form as idn.ascii_domain gives, and the recipient's domain is read without
    its final dot (address.split_address), so "notes.example.com." names notes.example.com. Anything
    that is not a host name (letters, digits and hyphens in labels of 1 to 63, or internationalised
    labels that IDNA can encode) raises ValueError.
    """
    domain = value.strip().lower()
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain:
        raise ValueError("must be a domain name such as notes.example.com")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"{value!r} is not a domain name: a label is empty, longer than 63 characters "
                         "or not encodable as IDNA") from None
    for label in domain.split("."):
        if not _LDH_LABEL.fullmatch(label):
            raise ValueError(f"{value!r} is not a domain name: each dot-separated label is 1 to 63 letters, "
                             "digits or hyphens, not starting or ending with a hyphen")
    if len(domain) > 253:
        raise ValueError(f"{value!r} is not a domain name: longer than 253 characters")
    return domain


DEFAULT_MAX_SIGNATURE_AGE_DAYS = 30


class SenderPolicy(_Strict):
    # strict: d= equals the From domain. Relaxed alignment needs a public suffix list and is not
    # offered yet, so it cannot be configured by mistake.
    alignment: Literal["strict"] = "strict"
    # A replayed message keeps its valid signature: the age of t= bounds how long a captured
    # signed message can be filed again (MAIL_SECURITY.md item 7). 0: no bound beyond x=.
    max_signature_age_days: Annotated[int, Field(ge=0)] = DEFAULT_MAX_SIGNATURE_AGE_DAYS
    # t= is optional (RFC 6376 section 3.5): a signature without it is refused only when asked.
    require_signature_time: bool = False
    # A note whose To and Cc name no address of the gateway (the gateway in Bcc, or a redirect) is
    # refused unless this is set: otherwise whoever received a message the contributor signed could
    # file it as her note (gateway/addressed.py, docs/rules.md). Replies always need it in To/Cc.
    accept_bcc_notes: bool = False


AccessPolicy = Literal["odoo-rules", "followers", "own", "company", "email-domain"]


class KindRules(_Strict):
    # No model by default: an admin opts each kind of record in.
    models: list[str] = []
    # odoo-rules by default: what Odoo itself would let the sender read (issue 7; docs/rules.md).
    access: AccessPolicy = "odoo-rules"
    # The record's customer field, read by the own, company and email-domain policies.
    partner_field: str = "partner_id"
    allow_internal_users: bool = True
    # Internal users whose addresses are in To/Cc are notified through Odoo (issue 3); portal
    # and customer addresses never are.
    notify_recipients: bool = True

    @field_validator("partner_field")
    @classmethod
    def _field_name(cls, value: str) -> str:
        if not value.replace("_", "").isalnum() or not value[:1].isalpha():
            raise ValueError("must be a field name such as partner_id")
        return value


MIB = 1024 * 1024
# Files that run code when opened on a desktop, the usual payloads of mail-borne malware.
DEFAULT_DENIED_EXTENSIONS = [
    ".exe", ".com", ".bat", ".cmd", ".scr", ".pif", ".cpl", ".msi", ".msp", ".dll", ".js", ".jse",
    ".vbs", ".vbe", ".wsf", ".wsh", ".hta", ".ps1", ".lnk", ".reg", ".jar", ".iso", ".img", ".vhd",
]
DEFAULT_DENIED_TYPES = [
    "application/x-msdownload", "application/x-dosexec", "application/x-executable", "application/x-ms-installer",
    "application/x-msi", "application/hta", "application/x-sh", "application/java-archive",
]


# A name's ending as the deny-list compares it: what is written is compared as it is, so a glob, a
# path or a space inside (rules review: "*.exe" or "bat " loaded and then refused no file) would
# never match any file and is refused when the rules are loaded, naming the entry.
_GLOB_CHARACTERS = "*?[]"


def _denied_extension(written: str) -> str:
    """".exe" from "exe", ".EXE" or " .exe "; ".tar.gz" too (the end of the name is compared)."""
    item = written.strip().lower()
    if not item.strip("."):
        raise ValueError(f"{written!r} is not an extension: it is empty; write one such as .exe")
    if any(char in _GLOB_CHARACTERS for char in item):
        bare = item.lstrip("*.")
        hint = f"write .{bare}, not {item}" if bare and not any(c in _GLOB_CHARACTERS for c in bare) else (
            "list each extension, such as .exe")
        raise ValueError(f"{written!r} is not an extension: {hint} (the end of a file's name is compared, "
                         "there are no wildcards)")
    if "/" in item or "\\" in item or ":" in item:
        # Windows reads "invoice.vbs:x" as invoice.vbs, and .vbs alone refuses it.
        raise ValueError(f"{written!r} is not an extension: it holds a /, \\ or :, which no extension "
                         "does; write the ending of the name alone, such as .exe")
    if any(char.isspace() or not char.isprintable() for char in item):
        raise ValueError(f"{written!r} is not an extension: it holds a space or a control character")
    dotted = item if item.startswith(".") else f".{item}"
    if "" in dotted[1:].split("."):
        raise ValueError(f"{written!r} is not an extension: a dot is doubled or ends it; write it as "
                         "a name ends, such as .exe or .tar.gz")
    return dotted


# A MIME type is compared as the message's parser gives it: type/subtype in lower case, without
# parameters (email.message.Message.get_content_type).
_MIME_TOKEN = re.compile(r"[!#$%&'+\-.^_`{|}~0-9a-z]+")


def _denied_mime_type(written: str) -> str:
    item = written.strip().lower()
    kind, slash, subtype = item.partition("/")
    if "*" in item:
        raise ValueError(f"{written!r} is not a MIME type: list each type, such as application/x-msdownload "
                         "(the type is compared whole, there are no wildcards)")
    if not (slash and _MIME_TOKEN.fullmatch(kind) and _MIME_TOKEN.fullmatch(subtype)):
        raise ValueError(f"{written!r} is not a MIME type: write type/subtype without parameters, "
                         "such as application/x-msdownload")
    return item


class AttachmentRules(_Strict):
    max_file_size: Annotated[int, Field(ge=0)] = 10 * MIB
    max_total_size: Annotated[int, Field(ge=0)] = 20 * MIB
    denied_extensions: list[str] = DEFAULT_DENIED_EXTENSIONS
    denied_types: list[str] = DEFAULT_DENIED_TYPES
    # "drop": file the message, name the refused files in the note and the journal.
    # "refuse": refuse the whole message (550 5.7.1) when any file is refused.
    on_refused_file: Literal["drop", "refuse"] = "drop"

    @field_validator("denied_extensions")
    @classmethod
    def _dotted(cls, value: list[str]) -> list[str]:
        return [_denied_extension(item) for item in value]

    @field_validator("denied_types")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [_denied_mime_type(item) for item in value]


class ContentRules(_Strict):
    # "link": a remote image (http, https) in a message becomes a link to it showing its alt text,
    # since a reader's browser fetching it tells the sender when the note was read, from where and
    # with which browser (a tracking pixel). "keep": filed as an image, as Odoo's own sanitizer does.
    remote_images: Literal["link", "keep"] = "link"


# The contributor group of a domain whose rules name none; setup-odoo gives it the documented name
# (setup_odoo.contributor_group_name), any other group a name of its own.
DEFAULT_CONTRIBUTOR_GROUP = "note_gateway.group_portal_note_contributor"


class NoteRules(KindRules):
    contributor_group: str = DEFAULT_CONTRIBUTOR_GROUP

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
    # A systemd credential holding the secrets, one a line (see api_key_credential).
    secrets_credential: str | None = None
    sender: SenderPolicy = SenderPolicy()
    # The Odoo company this alias domain serves: records of another company are refused and posts
    # run with allowed_company_ids = [company]. Either an id, or (Odoo 17+) the company whose
    # mail.alias.domain is named like this alias domain. Default: not bound.
    company_id: Annotated[int, Field(ge=1)] | None = None
    company_from_alias_domain: bool = False
    # For the email-domain policy: sender mail domain -> customer partner id (its commercial
    # partner must be the record's). Keys are host names, kept as alias domains are (lowercase,
    # A-labels, no final dot); "@acme.example" or two keys for one domain stop the start.
    email_domains: dict[str, Annotated[int, Field(ge=1)]] = {}
    # How long record rules and access lists read from Odoo are reused (0: read for every message).
    rules_cache_seconds: Annotated[float, Field(ge=0)] = 60.0
    # Refuse dated addresses older than this many days (0: no limit); undated (old-format) addresses,
    # and the plain note@ / reply@ addresses (no date either), are refused too when
    # require_dated_addresses is true.
    address_max_age_days: Annotated[int, Field(ge=0)] = 0
    require_dated_addresses: bool = False
    note: NoteRules = NoteRules()
    reply: KindRules = KindRules()
    attachments: AttachmentRules = AttachmentRules()
    content: ContentRules = ContentRules()
    # A folder of templates for this alias domain only, tried before the gateway's templates_dir
    # and the bundled ones (relative to the rules file).
    templates_dir: str | None = None
    rate_limit: RateLimits = RateLimits()
    notices: NoticeRules = NoticeRules()
    source: str = ""

    @property
    def dates_addresses(self) -> bool:
        """Whether the addresses minted for this domain carry their day (they can then expire)."""
        return bool(self.address_max_age_days) or self.require_dated_addresses

    @property
    def templates_path(self) -> Path | None:
        if not self.templates_dir:
            return None
        return resolved_path(self.templates_dir, Path(self.source).parent)

    @field_validator("domain")
    @classmethod
    def _alias_domain(cls, value: str) -> str:
        return alias_domain(value)

    @field_validator("email_domains", mode="before")
    @classmethod
    def _check_email_domains(cls, value: object) -> object:
        # Checked before the values, which are then still named by the key as written; two keys
        # that name one domain ("Acme.example" and "acme.example.") would silently become one.
        if isinstance(value, dict):
            seen: dict[str, str] = {}
            for key in value:
                domain = alias_domain(key) if isinstance(key, str) else key
                if domain in seen:
                    raise ValueError(f"{key!r} and {seen[domain]!r} both name {domain}")
                seen[domain] = key
        return value

    @field_validator("email_domains")
    @classmethod
    def _normalise_email_domains(cls, value: dict[str, int]) -> dict[str, int]:
        # As the alias domains: lowercase, A-labels, no final dot; the sender's domain is looked
        # up in the same form (policy.check_record_access, idn.ascii_domain).
        return {alias_domain(domain): partner for domain, partner in value.items()}


    def kind_rules(self, kind: str) -> KindRules:
        return self.note if kind == "note" else self.reply


class GatewayConfig:
    """The whole validated configuration: the gateway file plus one rules set per alias domain."""

    def __init__(self, path: Path, gateway: GatewayFile, domains: dict[str, DomainRules],
                 secrets: dict[str, list[bytes]], api_keys: dict[str, str], warnings: list[str] | None = None,
                 tls_key_path: Path | None = None, secret_sources: dict[str, list[str]] | None = None) -> None:
        self.path = path
        # Alias domain -> the key (SECRET_SOURCES) each of its secrets came from, in their order.
        self.secret_sources = secret_sources or {}
        self._tls_key_path = tls_key_path
        self.gateway = gateway
        self.domains = domains
        self.secrets = secrets
        self.api_keys = api_keys
        # Mistakes that do not stop the start (a world-readable key file), logged and shown by check-config.
        self.warnings = list(warnings or [])
        # When the listener's certificate ends (read by _check_tls); None without STARTTLS.
        self.tls_not_after: datetime | None = None
        # Connection name -> the Odoo it reaches (odoo_identity), worked out once: two connections
        # to one database are one Odoo for routing, the claims, the journal's keys and rate limits.
        self.odoo_identities = {name: connection.identity for name, connection in gateway.odoo.items()}

    def odoo_identity(self, domain: str) -> str:
        """The Odoo (odoo_identity) of an alias domain's records."""
        return self.odoo_identities[self.domains[domain].odoo]

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve_path(self, value: str) -> Path:
        return resolved_path(value, self.base_dir)

    @property
    def journal_path(self) -> Path:
        return self.resolve_path(self.gateway.journal.path)

    @property
    def tls_files(self) -> tuple[Path, Path] | None:
        """The listener's certificate chain and key, or None when STARTTLS is not offered."""
        listener = self.gateway.listener
        if not listener.tls_certificate:
            return None
        key = self._tls_key_path or self.resolve_path(listener.tls_key or "")
        return self.resolve_path(listener.tls_certificate), key

    @property
    def templates_dir(self) -> Path | None:
        value = self.gateway.templates_dir
        return self.resolve_path(value) if value else None


def _read_text(path: Path) -> str:
    """The UTF-8 text of a configuration file, or a ConfigError saying why it cannot be read."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except OSError as error:
        # A folder, a file the gateway's user may not read, an I/O error.
        raise ConfigError(path, "", f"cannot read: {error.strerror or error}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ConfigError(path, "", f"not UTF-8 text: byte 0x{data[error.start]:02x} on line {line}") from None


def _read_toml(path: Path) -> dict:
    # A byte order mark, which some Windows editors write at the start of UTF-8 files, is taken as
    # the UTF-8 it announces: tomllib refused it as "Invalid statement (at line 1, column 1)".
    text = _read_text(path).removeprefix("\ufeff")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path, "", f"not valid TOML: {error}") from None


def _toml_type(value: object) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "table"}.get(type(value), type(value).__name__)


def _validated(model: type[BaseModel], data: dict, path: Path) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(top level)"
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        elif first["type"] == "value_error":
            # Our own validators' reasons, without pydantic's "Value error, " before them.
            message = str(first.get("ctx", {}).get("error", message))
        elif first["type"].endswith("_type"):
            # Strict types: say what was written, e.g. port = "2525" (a string where a number goes).
            message = f"{message}, not the {_toml_type(first['input'])} {first['input']!r}"
        raise ConfigError(path, key, message) from None


def _read_secret_file(path: Path, owner: Path, key: str, credential: str | None = None) -> str:
    """A key or secrets file (or the systemd credential named ``credential``): its text, which must not be empty."""
    try:
        data = path.read_bytes()
    except OSError as error:
        reason = f"cannot read {path}: {error.strerror or error}"
        if credential is not None and isinstance(error, FileNotFoundError):
            reason += credential_missing(credential)
        raise ConfigError(owner, key, reason) from None
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError as error:
        raise ConfigError(owner, key, f"{path} is not UTF-8 text (byte 0x{data[error.start]:02x})") from None
    if not text:
        # An empty key would only show as a refused login to Odoo on the first message.
        raise ConfigError(owner, key, f"{path} is empty")
    return text


def resolved_path(value: str | Path, base: Path) -> Path:
    """``value`` as written in a configuration file: an absolute path, or one relative to ``base`` (the file's folder)."""
    path = Path(value)
    return path if path.is_absolute() else base / path


def world_readable(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False


def _ca_file(connection: OdooConnection, base: Path, owner: Path, name: str) -> Path:
    """odoo.<name>.ca_file resolved, checked to be readable CA certificates for an https:// url."""
    key = f"odoo.{name}.ca_file"
    ca_path = resolved_path(str(connection.ca_file), base)
    if not connection.url.startswith("https://"):
        raise ConfigError(owner, key, f"is for an https:// url, and {connection.url} is plain HTTP: "
                                      "remove ca_file or use https://")
    try:
        # What the connection itself loads: a file that fails here would fail every message's
        # login with a TLS error.
        odootransport.tls_context(str(ca_path))
    except OSError as error:
        if isinstance(error, ssl.SSLError):
            raise ConfigError(owner, key, f"{ca_path} holds no PEM CA certificate ({error})") from None
        raise ConfigError(owner, key, f"cannot read {ca_path}: {error.strerror or error}") from None
    return ca_path


def _warn(warnings: list[str], path: Path | str, key: str, reason: str) -> None:
    # Not logged here: check-config and doctor print them (a log line too showed each twice);
    # serve and a reload log them (log_warnings).
    warnings.append(f"{path}: {key}: {reason}")


def log_warnings(config: GatewayConfig) -> None:
    """Log what check-config prints as "warning:", and certificate_warning, for serve's start."""
    for warning in config.warnings:
        log.warning("configuration: %s", warning)
    if (expiring := certificate_warning(config)) is not None:
        log.warning("%s", expiring)


def certificate_warning(config: GatewayConfig, now: datetime | None = None) -> str | None:
    """The line serve logs at its start and at each reload for a listener certificate that has
    expired or expires within checks.EXPIRY_WARNING_DAYS, as doctor's "tls" check says it.

    An expired certificate loads: serve logged nothing and went on presenting it, and only doctor
    compared the dates (found by a review of STARTTLS). The gateway still offers STARTTLS with it:
    most senders use TLS opportunistically and do not check the certificate, and for them an
    expired one is better than none; senders that do check (MTA-STS in enforce mode, DANE-TA
    records) defer the mail until it is renewed. Not one of config.warnings: doctor and check-config
    would say it twice with doctor's own "tls" line.
    """
    from gateway.checks import EXPIRY_WARNING_DAYS

    files = config.tls_files
    if files is None or config.tls_not_after is None:
        return None
    certificate = files[0]
    days = (config.tls_not_after - (now or datetime.now(timezone.utc))).total_seconds() / 86400
    stamp = config.tls_not_after.strftime("%Y-%m-%d %H:%M UTC")
    renew = "renew it, then systemctl reload note-gateway"
    if days < 0:
        return (f"certificate: {certificate} expired on {stamp}: senders that check certificates (MTA-STS, DANE-TA) "
                "defer their mail; STARTTLS is still offered with it, which senders that do not check take, "
                f"rather than none: {renew}")
    if days < EXPIRY_WARNING_DAYS:
        return f"certificate: {certificate} expires on {stamp}, in {days:.0f} days: {renew}"
    return None


def credential_missing(name: str) -> str:
    """What a "cannot read" of a missing credential adds: it is loaded by systemd at start, never at a reload.

    Under the unit's LoadCredential=, systemd copies the credentials into $CREDENTIALS_DIRECTORY
    when the service starts and leaves that copy as it is until the service stops (systemd.exec(5),
    "Credentials"): a credential added to the unit since is missing there at a reload (day-2
    operations review: the reload said only "No such file or directory").
    """
    return (f"; systemd puts the service's credentials there when it starts (LoadCredential={name}:PATH in the "
            "unit) and not at a reload: add that line if it is missing, then restart the gateway "
            "(systemctl restart note-gateway)")


def start_only_values(config: GatewayConfig) -> list[str]:
    """The keys of ``config`` whose values a reload cannot refresh, as ``<key> (<file>)``.

    A *_credential is read from $CREDENTIALS_DIRECTORY, which systemd fills when the service starts
    and never again while it runs; a *_env from the environment, which a running process keeps as
    it started. A reload reads them again and finds the values of the start: a key or an address
    secret changed there (a leaked secret retired, a rotated Odoo key) takes a restart.
    """
    found = []
    for name, connection in sorted(config.gateway.odoo.items()):
        for key in ("api_key_credential", "api_key_env"):
            if getattr(connection, key):
                found.append(f"odoo.{name}.{key} ({config.path})")
    if config.gateway.listener.tls_key_credential:
        found.append(f"listener.tls_key_credential ({config.path})")
    for domain in sorted(config.domains):
        rules = config.domains[domain]
        for key in ("secrets_credential", "secrets_env"):
            if getattr(rules, key):
                found.append(f"{key} ({rules.source})")
    return found


def start_only_warning(config: GatewayConfig) -> str | None:
    """The one warning a reload logs when ``config`` takes values from *_credential or *_env keys."""
    found = start_only_values(config)
    if not found:
        return None
    return (f"reload: {', '.join(found)} kept the values of the gateway's start: systemd copies credentials into "
            "$CREDENTIALS_DIRECTORY when the service starts, and a process keeps the environment it started with; "
            "after changing one of them, restart the gateway (systemctl restart note-gateway), a reload does not "
            "see the change (*_file values are read at each reload)")


def api_key_replacement(connection: OdooConnection) -> str:
    """How a new API key is put in force, by where the key comes from (the fix of a refused or expiring key)."""
    if connection.api_key_credential:
        return (f"put it in the file of the credential {connection.api_key_credential} (LoadCredential=), "
                "systemctl restart note-gateway (systemd copies credentials at start: a reload does not read it)")
    if connection.api_key_env:
        return (f"set {connection.api_key_env} to it in the service's environment, systemctl restart note-gateway "
                "(a process keeps the environment it started with: a reload does not see it)")
    return "put it in the key file, systemctl reload note-gateway"


def credential_path(name: str, owner: Path, key: str, environ: dict[str, str] | os._Environ) -> Path:
    """Where systemd put the credential NAME of this service (systemd.exec(5), "Credentials")."""
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ConfigError(owner, key, "CREDENTIALS_DIRECTORY is not set: run under systemd with "
                                      f"LoadCredential={name}:PATH, or use the *_file key instead")
    if "/" in name or name in ("", ".", ".."):
        raise ConfigError(owner, key, "a credential name is a file name, without /")
    return Path(directory) / name


def _rules_files(rules_dir: Path, gateway_file: Path) -> list[Path]:
    """The rules files (``*.toml``) of ``rules_dir``, sorted; OSError when the folder cannot be read.

    Not Path.glob, which took a folder it may not read for an empty one ("no rules file"). The
    gateway file itself (``gateway_file``, resolved) when rules_dir is its own folder ("."): it is
    no rules file.
    """
    names = os.listdir(rules_dir)
    return sorted(rules_dir / name for name in names
                  if name.endswith(".toml") and (rules_dir / name).resolve() != gateway_file)


def load_config(path: str | os.PathLike, environ: dict[str, str] | None = None) -> GatewayConfig:
    """Read the gateway file and every ``*.toml`` under its rules folder, or raise ConfigError."""
    environ = os.environ if environ is None else environ
    path = Path(path).resolve()
    gateway = _validated(GatewayFile, _read_toml(path), path)
    base = path.parent
    warnings: list[str] = []

    api_keys: dict[str, str] = {}
    for name, connection in gateway.odoo.items():
        key_name = f"odoo.{name}"
        if connection.api_key_credential:
            api_keys[name] = _read_secret_file(
                credential_path(connection.api_key_credential, path, f"{key_name}.api_key_credential", environ),
                path, f"{key_name}.api_key_credential", connection.api_key_credential)
        elif connection.api_key_file:
            key_path = resolved_path(connection.api_key_file, base)
            api_keys[name] = _read_secret_file(key_path, path, f"{key_name}.api_key_file")
            # Issue 7: an API key is never left where any local user can read it.
            if world_readable(key_path):
                _warn(warnings, path, f"{key_name}.api_key_file",
                      f"{key_path} is readable by every local user (chmod o-r)")
        else:
            value = environ.get(connection.api_key_env or "")
            if not value:
                raise ConfigError(path, f"{key_name}.api_key_env",
                                  f"environment variable {connection.api_key_env} is not set")
            api_keys[name] = value.strip()

    for name, connection in list(gateway.odoo.items()):
        if connection.ca_file:
            gateway.odoo[name] = connection.model_copy(update={"ca_file": str(_ca_file(connection, base, path, name))})

    listener = gateway.listener
    tls_key_path = None
    if listener.tls_key_credential:
        tls_key_path = credential_path(listener.tls_key_credential, path, "listener.tls_key_credential", environ)

    rules_dir = resolved_path(gateway.rules_dir, base)
    if not rules_dir.is_dir():
        raise ConfigError(path, "rules_dir", f"{rules_dir} is not a folder")
    if gateway.templates_dir:
        # As a rules file's templates_dir: a typo must not leave the bundled templates in use unnoticed.
        templates_dir = resolved_path(gateway.templates_dir, base)
        if not templates_dir.is_dir():
            raise ConfigError(path, "templates_dir", f"{templates_dir} is not a folder")

    domains: dict[str, DomainRules] = {}
    secrets: dict[str, list[bytes]] = {}
    secret_lists: dict[str, list[tuple[str, str, str]]] = {}
    try:
        rules_paths = _rules_files(rules_dir, path)
    except OSError as error:
        raise ConfigError(path, "rules_dir", f"cannot read the folder {rules_dir}: {error.strerror or error}") from None
    for rules_path in rules_paths:
        data = _read_toml(rules_path)
        rules = _validated(DomainRules, {**data, "source": str(rules_path)}, rules_path)
        if rules.domain in domains:
            raise ConfigError(rules_path, "domain",
                              f"{rules.domain} is already configured by {domains[rules.domain].source}")
        if rules.company_id is not None and rules.company_from_alias_domain:
            raise ConfigError(rules_path, "company_from_alias_domain", "set company_id or company_from_alias_domain, "
                                                                     "not both")
        for kind in ("note", "reply"):
            if rules.kind_rules(kind).access == "email-domain" and not rules.email_domains:
                raise ConfigError(rules_path, f"{kind}.access", "email-domain needs a non-empty email_domains map")
        if rules.odoo not in gateway.odoo:
            raise ConfigError(rules_path, "odoo", f"no [odoo.{rules.odoo}] in {path.name}")
        # (key of the source, where in it, secret), in the order the sources are read: the first signs.
        domain_secrets: list[tuple[str, str, str]] = [
            ("secrets", f"secret {number} of the list", secret) for number, secret in enumerate(rules.secrets, 1)]
        if rules.secrets and world_readable(rules_path):
            _warn(warnings, rules_path, "secrets", "secrets written in a file readable by every local user")
        if rules.secrets_file:
            secret_path = resolved_path(rules.secrets_file, rules_path.parent)
            text = _read_secret_file(secret_path, rules_path, "secrets_file")
            if world_readable(secret_path):
                _warn(warnings, rules_path, "secrets_file", f"{secret_path} is readable by every local user")
            domain_secrets += [("secrets_file", f"line {number} of {secret_path}", line.strip())
                               for number, line in enumerate(text.splitlines(), 1) if line.strip()]
        if rules.secrets_credential:
            credential = credential_path(rules.secrets_credential, rules_path, "secrets_credential", environ)
            text = _read_secret_file(credential, rules_path, "secrets_credential", rules.secrets_credential)
            domain_secrets += [("secrets_credential", f"line {number} of {credential}", line.strip())
                               for number, line in enumerate(text.splitlines(), 1) if line.strip()]
        if rules.secrets_env:
            # As api_key_env: a variable named but not set is an error, even when another source
            # gives secrets (bad-input review: secrets rotated through an environment that did not
            # reach the gateway were silently not in force).
            value = environ.get(rules.secrets_env)
            if value is None:
                raise ConfigError(rules_path, "secrets_env", f"environment variable {rules.secrets_env} is not set")
            env_secrets = [part.strip() for part in value.split(",") if part.strip()]
            if not env_secrets:
                raise ConfigError(rules_path, "secrets_env", f"environment variable {rules.secrets_env} is empty")
            domain_secrets += [("secrets_env", f"item {number} of environment variable {rules.secrets_env}", secret)
                               for number, secret in enumerate(env_secrets, 1)]
        if not domain_secrets:
            raise ConfigError(rules_path, "secrets",
                              "no address secret (secrets, secrets_file, secrets_env or secrets_credential)")
        for key, where, secret in domain_secrets:
            if (problem := secret_problem(secret)) is not None:
                raise ConfigError(rules_path, key, f"{where}: {problem}")
        keys = list(dict.fromkeys(key for key, _, _ in domain_secrets))
        if len(keys) > 1:
            # Review of addresses as a credential: an admin who added the new secret through
            # another source than the old one's kept signing with the old (a leaked) one.
            _warn(warnings, rules_path, keys[0],
                  f"this domain's secrets come from {' and '.join(keys)}, read in the order {', '.join(SECRET_SOURCES)}: "
                  f"new addresses are signed with the first secret of {keys[0]} "
                  f"(sha256 {secret_fingerprint(domain_secrets[0][2].encode())}), whichever was added last; to "
                  f"rotate, put the new secret first in {keys[0]}, or keep all of them in one source")
        if rules.notices.enabled and not gateway.notices.smarthost:
            # notices.should_send needs both: without the smarthost the rules file asks in vain.
            _warn(warnings, rules_path, "notices.enabled",
                  f"true, but {path.name} has no [notices] smarthost: no notice is sent until it names one")
        if rules.templates_path is not None and not rules.templates_path.is_dir():
            raise ConfigError(rules_path, "templates_dir", f"{rules.templates_path} is not a folder")
        domains[rules.domain] = rules
        secrets[rules.domain] = [secret.encode() for _, _, secret in domain_secrets]
        secret_lists[rules.domain] = domain_secrets

    if not domains:
        raise ConfigError(rules_dir, "", "no rules file (*.toml): the gateway would serve no alias domain")
    sources = {domain: [key for key, _, _ in listed] for domain, listed in secret_lists.items()}
    config = GatewayConfig(path, gateway, domains, secrets, api_keys, warnings, tls_key_path, sources)
    _check_tls(config)
    return config


class _JournalOdoo(BaseModel):
    """Of an [odoo.NAME] table, what names its Odoo (odoo_identity); its other keys are not read."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)
    url: str
    database: str


class _JournalRules(BaseModel):
    """Of a rules file, what the journal's readers need: its alias domain, its Odoo and its rate-limit window."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True, allow_inf_nan=False)
    domain: str
    odoo: str
    rate_limit: RateLimits = RateLimits()

    @field_validator("domain")
    @classmethod
    def _alias_domain(cls, value: str) -> str:
        return alias_domain(value)


class JournalSettings:
    """What ``note-gateway log`` and ``prune-journal`` read of the configuration (load_journal_settings)."""

    def __init__(self, path: Path, journal: JournalConfig, odoo_identities: dict[str, str | None],
                 domains: dict[str, _JournalRules], rules_problems: list[ConfigError],
                 odoo_problems: list[ConfigError]) -> None:
        self.path = path
        self.journal = journal
        # Every [odoo.NAME] of the gateway file, its Odoo (odoo_identity) None when its url or
        # database cannot be read.
        self.odoo_identities = odoo_identities
        # The alias domains of the rules files that could be read: their Odoo and rate-limit window.
        self.domains = domains
        # What could not be read (a rules file with a TOML typo or the rules folder; a connection
        # without a url): the commands say it as a warning and go on with the rest.
        self.rules_problems = rules_problems
        self.odoo_problems = odoo_problems

    @property
    def journal_path(self) -> Path:
        return resolved_path(self.journal.path, self.path.parent)


def load_journal_settings(path: str | os.PathLike) -> JournalSettings:
    """The journal's path and the names the journal's rows carry, read without secrets or API keys.

    The journal's readers must work during a configuration incident (a rules file with a typo,
    which a reload refused and the running gateway works without) and for an admin who cannot read
    the service's credentials: unlike load_config, this reads no secret, API key, certificate or
    template, and a rules file or an [odoo.NAME] table it cannot read is one of ``rules_problems``
    or ``odoo_problems``, not an error (day-2 review: `log` and `prune-journal` refused to run, exit 2, over a TOML typo in
    one rules file, or without $CREDENTIALS_DIRECTORY). Only a gateway file that cannot be read,
    or a [journal] section that cannot be, is a ConfigError: the journal is not found without it.
    What a reader does with ``rules_problems`` is its own choice: `log` warns, `prune-journal`
    refuses unless told --ignore-unreadable-rules (the running gateway may still count rows for
    the rate-limit window of its last good copy of that file).
    """
    path = Path(path).resolve()
    data = _read_toml(path)
    base = path.parent
    rules_problems: list[ConfigError] = []
    odoo_problems: list[ConfigError] = []
    section = data.get("journal", {})
    try:
        journal = _validated(JournalConfig, section, path)
    except ConfigError as error:
        raise ConfigError(path, f"journal.{error.key}" if error.key != "(top level)" else "journal",
                          error.reason) from None
    odoo_identities: dict[str, str | None] = {}
    connections = data.get("odoo", {})
    for name, connection in (connections.items() if isinstance(connections, dict) else ()):
        odoo_identities[name] = None
        try:
            read = _validated(_JournalOdoo, connection if isinstance(connection, dict) else {}, path)
            odoo_identities[name] = odoo_identity(read.url, read.database)
        except ConfigError as error:
            odoo_problems.append(ConfigError(path, f"odoo.{name}.{error.key}", error.reason))
        except ValueError as error:  # A url urlsplit cannot read.
            odoo_problems.append(ConfigError(path, f"odoo.{name}.url", str(error)))

    domains: dict[str, _JournalRules] = {}
    rules_dir = data.get("rules_dir", "rules")
    if not isinstance(rules_dir, str):
        rules_problems.append(ConfigError(path, "rules_dir", f"not a string: {rules_dir!r}"))
        return JournalSettings(path, journal, odoo_identities, domains, rules_problems, odoo_problems)
    rules_dir_path = resolved_path(rules_dir, base)
    try:
        rules_paths = _rules_files(rules_dir_path, path)
    except OSError as error:
        rules_problems.append(ConfigError(path, "rules_dir", f"cannot read the folder {rules_dir_path}: "
                                                       f"{error.strerror or error}"))
        rules_paths = []
    for rules_path in rules_paths:
        try:
            rules = _validated(_JournalRules, _read_toml(rules_path), rules_path)
        except ConfigError as error:
            rules_problems.append(error)
            continue
        domains.setdefault(rules.domain, rules)
    return JournalSettings(path, journal, odoo_identities, domains, rules_problems, odoo_problems)


def _check_tls(config: GatewayConfig) -> None:
    """The listener's certificate and key load, as serve will load them, or a ConfigError names which does not."""
    files = config.tls_files
    if files is None:
        return
    from gateway import tls

    listener = config.gateway.listener
    certificate, key = files
    certificate_key = "listener.tls_certificate"
    key_key = "listener.tls_key_credential" if listener.tls_key_credential else "listener.tls_key"
    for file, key_name in ((certificate, certificate_key), (key, key_key)):
        try:
            with file.open("rb"):
                pass
        except OSError as error:
            reason = f"cannot read {file}: {error.strerror or error}"
            if key_name == "listener.tls_key_credential" and isinstance(error, FileNotFoundError):
                reason += credential_missing(str(listener.tls_key_credential))
            raise ConfigError(config.path, key_name, reason) from None
    try:
        config.tls_not_after = tls.certificate_not_after(certificate)
    except ValueError as error:
        raise ConfigError(config.path, certificate_key, f"{certificate} is not a PEM certificate: {error}") from None
    try:
        tls.server_context(certificate, key)
    except (ssl.SSLError, ValueError) as error:
        reason = getattr(error, "reason", None) or str(error)
        raise ConfigError(config.path, key_key,
                          f"{key} does not load as the private key of {certificate}: {reason}") from None


# Settings a running gateway keeps until it is restarted: its socket (host and port), the protocol
# spoken on it, its processes, the session bounds sized when it started, the grace of its stop and
# its metrics server. A reload that changes one keeps the running value and says so.
RESTART_SETTINGS = ("listener.host", "listener.port", "listener.protocol", "listener.workers",
                    "listener.max_sessions", "listener.max_sessions_per_ip", "listener.max_messages_in_data",
                    "listener.shutdown_grace", "metrics.host", "metrics.port")


def restart_values(config: GatewayConfig) -> dict[str, object]:
    """The values of RESTART_SETTINGS in ``config`` (None for the keys of an absent [metrics])."""
    values: dict[str, object] = {}
    for setting in RESTART_SETTINGS:
        section_name, name = setting.split(".")
        section = getattr(config.gateway, section_name)
        values[setting] = getattr(section, name) if section is not None else None
    return values


def _restart_changes(new: GatewayConfig, kept: dict[str, object]) -> list[tuple[str, object, object]]:
    wanted = restart_values(new)
    return [(key, kept[key], wanted[key]) for key in RESTART_SETTINGS if kept[key] != wanted[key]]


def keep_restart_settings(new: GatewayConfig, running: GatewayConfig | dict[str, object]) -> list[tuple[str, object, object]]:
    """Give ``new`` the running values of RESTART_SETTINGS; return (key, running value, value in the file) of each changed.

    ``running`` is the configuration the process started with, or its restart_values (what the
    supervisor hands a worker it starts again after a reload).
    """
    kept = restart_values(running) if isinstance(running, GatewayConfig) else running
    changed = _restart_changes(new, kept)
    listener = {key.split(".")[1]: value for key, value in kept.items() if key.startswith("listener.")}
    metrics = None
    if kept["metrics.host"] is not None:
        metrics = MetricsConfig(host=kept["metrics.host"], port=kept["metrics.port"])
    new.gateway = new.gateway.model_copy(update={"listener": new.gateway.listener.model_copy(update=listener),
                                                 "metrics": metrics})
    return changed


def domain_odoo_identities(config: GatewayConfig) -> dict[str, str]:
    """Alias domain -> the Odoo (odoo_identity) its addresses name records in."""
    return {domain: config.odoo_identity(domain) for domain in config.domains}


def odoo_change_warnings(new: GatewayConfig, in_force: dict[str, str]) -> list[str]:
    """One line per alias domain whose Odoo (URL and database) differs in ``new`` from ``in_force``
    (domain_odoo_identities of the configuration running until now).

    The Odoo is not signed into an address (review of addresses as a credential): pointed at
    another database, by the rules file's odoo or its [odoo.NAME] url or database, every address
    already given out names the record with the same id there.
    """
    return [f"reload: {new.domains[domain].source}: odoo: the Odoo of {domain} changed from {in_force[domain]} to "
            f"{identity}: the Odoo is not part of an address's signature, so every address of {domain} already "
            f"given out now names the record with the same id in {identity}; unless both are the same data (a "
            "database moved to another server), rotate the domain's secret: a new one first, the old ones dropped "
            "(docs/rules.md, \"Address secrets\")"
            for domain, identity in sorted(domain_odoo_identities(new).items())
            if domain in in_force and in_force[domain] != identity]


def reload_warnings(new: GatewayConfig, running: GatewayConfig | dict[str, object],
                    odoo_in_force: dict[str, str] | None = None) -> list[str]:
    """The lines a reload to ``new`` logs once it is accepted, before keep_restart_settings: the
    configuration's warnings and certificate_warning (as log_warnings says them at the start), the
    values it keeps from the start (start_only_warning), one line per setting that needs a
    restart (restart_warnings), then one per alias domain whose Odoo changed from ``odoo_in_force``
    (odoo_change_warnings; the domain_odoo_identities of the configuration in force until now).

    ``running``: as for keep_restart_settings. A reload refused logs none of them: they would
    describe a configuration that never ran.
    """
    kept = restart_values(running) if isinstance(running, GatewayConfig) else running
    lines = [f"configuration: {warning}" for warning in new.warnings]
    if (expiring := certificate_warning(new)) is not None:
        lines.append(expiring)
    if (start_only := start_only_warning(new)) is not None:
        lines.append(start_only)
    lines += [f"reload: {warning}" for warning in restart_warnings(new.path, _restart_changes(new, kept))]
    if odoo_in_force is not None:
        lines += odoo_change_warnings(new, odoo_in_force)
    return lines


def restart_warnings(path: Path | str, changed: list[tuple[str, object, object]]) -> list[str]:
    """One line per setting of ``keep_restart_settings``: ``<file>: <key>: <what happens>``."""
    def shown(value: object) -> str:
        if value == "":  # listener.host, the only setting here that may be empty: not a bare ''
            return f"'' ({EVERY_INTERFACE})"
        return "no [metrics] section" if value is None else repr(value) if isinstance(value, str) else str(value)

    return [f"{path}: {key}: changed from {shown(running)} to {shown(wanted)}, which needs a restart; "
            f"{shown(running)} stays in force until then" for key, running, wanted in changed]
