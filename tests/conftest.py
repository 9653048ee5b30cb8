"""Shared fixtures: the test Odoo, a real DNS server with the DKIM keys, the gateway on loopback, a mailer."""

from __future__ import annotations

import email.utils
import string
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import address
from gateway.config import load_config
from gateway.pipeline import Services
from gateway.smtp import ThreadedGateway
from gateway.testing import dnsmasq
from gateway.testing.configs import fresh_secret, write_gateway_config
from gateway.testing.dkim import DkimKey, shared_rsa_key, sign
from gateway.testing.odoo import TestOdoo
from gateway.testing.sending import deliver

DATA = Path(__file__).parent / "data"
ALIAS_DOMAIN = "notes.example.com"
# Made for each run: a secret written here would be published, and load_config refuses those.
SECRET = fresh_secret()
SELECTOR = "gateway"
# example.com is the contributors' own mail domain, which signs their mail; evil.example is another
# domain with a valid key of its own, for signatures that verify but do not align.
# xn--bcher-kva.example is bücher.example in A-labels, as DNS and a DKIM d= name it (tests/test_idn_senders.py).
SIGNING_DOMAINS = ("example.com", "evil.example", "xn--bcher-kva.example")


@pytest.fixture(scope="session")
def dkim_keys() -> dict[str, DkimKey]:
    return {domain: shared_rsa_key(name=domain) for domain in SIGNING_DOMAINS}


@pytest.fixture(scope="session")
def dns_server(dkim_keys):
    """dnsmasq, a real DNS server, serving the signing domains' DKIM keys on loopback."""
    if not dnsmasq.available():
        pytest.skip("dnsmasq is not installed (apt-get install dnsmasq-base; .ci/run does it)")
    records = {key.record_name(SELECTOR, domain): key.txt_record for domain, key in dkim_keys.items()}
    with dnsmasq.Dnsmasq(records) as server:
        yield server


@pytest.fixture
def test_odoo():
    with TestOdoo.with_demo_data() as odoo:
        yield odoo


def write_config(folder: Path, odoo: TestOdoo, dns_port: int, *, rules_extra: str = "", listener_extra: str = "",
                 pool_size: int = 4, odoo_timeout: float = 5.0, read_cache_seconds: float = 0,
                 access: str | None = None, session_timeout: float = 30, message_deadline: float = 20,
                 unsettled_post_seconds: float | None = None, rules: dict | None = None,
                 note: dict | None = None, models: tuple[str, ...] | None = None,
                 resolver: dict | None = None) -> Path:
    """A gateway file and its rules for the test Odoo; ``note`` adds or overrides keys of [note],
    ``resolver`` of [resolver]; ``models`` replaces the models of both [note] and [reply]."""
    from gateway.testing.odoo_demo import DEMO_API_KEY

    policy = {"access": access} if access else {}
    return write_gateway_config(
        folder, odoo_url=odoo.url, database=odoo.database, api_key=DEMO_API_KEY, dns_port=dns_port,
        alias_domain=ALIAS_DOMAIN, secret=SECRET,
        listener={"session_timeout": session_timeout, "message_deadline": message_deadline}, listener_extra=listener_extra,
        resolver={"timeout": 3, **(resolver or {})},
        odoo={"timeout": odoo_timeout, "pool_size": pool_size, "read_cache_seconds": read_cache_seconds,
              **({"unsettled_post_seconds": unsettled_post_seconds} if unsettled_post_seconds else {})},
        note={"contributor_group": "note_gateway.group_portal_note_contributor", **policy, **(note or {})},
        reply=policy, **({"models": models} if models else {}),
        rules=rules, rules_extra=rules_extra)


@pytest.fixture
def serve(tmp_path, test_odoo, dns_server):
    """Start ``python -m gateway serve`` on one config (written on the first call); killed after the test.

    ``workers`` and ``metrics_port`` add ``listener.workers`` and a ``[metrics]`` section;
    ``stalling`` lets a Subject hang a stage (tests/stalling/sitecustomize.py); ``verbose`` runs
    ``note-gateway --verbose serve``; other options go to write_config.
    """
    from serving import ServeProcess

    started: list[ServeProcess] = []

    def start(workers: int | None = None, listener_extra: str = "", metrics_port: int | None = None,
              stalling: bool = False, verbose: bool = False, **options) -> ServeProcess:
        config_path = tmp_path / "gateway.toml"
        if not config_path.exists():
            if workers is not None:
                listener_extra = f"workers = {workers}\n{listener_extra}"
            write_config(tmp_path, test_odoo, dns_server.port, listener_extra=listener_extra, **options)
            if metrics_port is not None:
                config_path.write_text(config_path.read_text()
                                       + f'\n[metrics]\nhost = "127.0.0.1"\nport = {metrics_port}\n')
        process = ServeProcess(config_path, stalling=stalling, verbose=verbose)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.kill()


@dataclass
class RunningGateway:
    services: Services
    server: ThreadedGateway
    config_path: Path

    @property
    def port(self) -> int:
        return self.server.port


@pytest.fixture
def start_gateway(tmp_path, test_odoo):
    """Start a gateway with the given DNS port and config options; all are stopped after the test."""
    started: list[tuple[ThreadedGateway, Services]] = []

    def start(dns_port: int, **options) -> RunningGateway:
        config_path = write_config(tmp_path / f"gateway-{len(started)}", test_odoo, dns_port, **options)
        services = Services.build(load_config(config_path))
        server = ThreadedGateway(services).start()
        started.append((server, services))
        return RunningGateway(services, server, config_path)

    yield start
    for server, services in started:
        server.stop()
        services.close()


@pytest.fixture
def gateway(start_gateway, dns_server) -> RunningGateway:
    return start_gateway(dns_server.port)


def read_reply(stream) -> list[bytes]:
    """The lines of one whole SMTP reply (a multi-line one ends with "NNN "), from a socket's binary file."""
    lines: list[bytes] = []
    while True:
        line = stream.readline(4096)
        assert line, f"connection closed after {lines!r}"
        lines.append(line)
        if line[3:4] != b"-":
            return lines


class Mailer:
    """Builds scenario messages from tests/data, signs them as a domain's mail system would, sends them."""

    def __init__(self, gateway: RunningGateway, keys: dict[str, DkimKey]) -> None:
        self.gateway = gateway
        self.keys = keys

    @staticmethod
    def address(kind: str, model: str, res_id: int) -> str:
        return address.mint(SECRET.encode(), ALIAS_DOMAIN, kind, model, res_id)

    @staticmethod
    def message(name: str, to: str, message_id: str | None = None) -> bytes:
        text = (DATA / name).read_bytes().decode("utf-8")
        values = {"TO": to, "DATE": email.utils.formatdate(), "MESSAGE_ID": message_id or f"<{uuid.uuid4().hex}@example.com>"}
        return string.Template(text).safe_substitute(values).encode("utf-8")

    def sign(self, raw: bytes, domain: str = "example.com", **options) -> bytes:
        return sign(raw, self.keys[domain], domain, SELECTOR, **options)

    def send(self, raw: bytes, rcpt: str, mail_from: str = "portal.contrib@example.com") -> str:
        return deliver(raw, rcpt, port=self.gateway.port, mail_from=mail_from)


@pytest.fixture
def mailer(gateway, dkim_keys) -> Mailer:
    return Mailer(gateway, dkim_keys)
