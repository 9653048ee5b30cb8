"""Fixtures of the real-Odoo suite: one provisioned world, DKIM keys for its mail domain, a gateway pointed at it."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway import address
from gateway.config import load_config
from gateway.journal import Journal
from gateway.pipeline import Services
from gateway.smtp import ThreadedGateway
from gateway.testing import dnsmasq
from gateway.testing.configs import fresh_secret, write_gateway_config
from gateway.testing.dkim import DkimKey, shared_rsa_key, sign
from gateway.testing.sending import compose, deliver

from .provision import cleanup, provision, real_odoo_or_skip, RealOdooEnv, RealOdooWorld

ALIAS_DOMAIN = "notes.note-gateway.test"  # RFC 2606 reserved, like the provisioned users' mail domain
# Made for each run: a secret written here would be published, and load_config refuses those.
SECRET = fresh_secret()
SELECTOR = "gateway"
# Another domain with a valid key of its own, for a signature that verifies but does not align.
OTHER_DOMAIN = "evil.example"


@pytest.fixture(scope="session")
def real_odoo_env() -> RealOdooEnv:
    return real_odoo_or_skip()


@pytest.fixture(scope="module")
def world(real_odoo_env):
    """One provisioned world per module; removed at the end even when a test failed."""
    world = provision(real_odoo_env)
    try:
        yield world
    finally:
        problems = cleanup(world)
    assert problems == [], problems


@pytest.fixture(scope="module")
def signing_keys(world) -> dict[str, DkimKey]:
    """The provisioned users' mail domain signs their mail, as their mail system would."""
    return {world.domain: shared_rsa_key(name=world.domain), OTHER_DOMAIN: shared_rsa_key(name=OTHER_DOMAIN)}


@pytest.fixture(scope="module")
def signing_dns(signing_keys):
    """dnsmasq, a real DNS server, publishing the signing domains' DKIM keys on loopback."""
    if not dnsmasq.available():
        pytest.skip("dnsmasq is not installed (apt-get install dnsmasq-base; .ci/run does it)")
    records = {key.record_name(SELECTOR, domain): key.txt_record for domain, key in signing_keys.items()}
    with dnsmasq.Dnsmasq(records) as server:
        yield server


def write_real_config(folder: Path, world: RealOdooWorld, dns_port: int, *, odoo_url: str | None = None,
                      odoo_timeout: float = 30.0, access: str | None = "followers",
                      models: tuple[str, ...] | None = None) -> Path:
    """A gateway file and one rules file, as an admin would write them for this Odoo.

    ``access=None`` writes no ``access`` key, so the default (odoo-rules) applies; ``models``
    replaces the models of [note] and [reply] (project.task and sale.order)."""
    # The followers policy by default: these scenarios were written for it, and the odoo-rules
    # default needs `note-gateway setup-odoo` run on the database first (docs/rules.md).
    policy = {"access": access} if access else {}
    return write_gateway_config(
        folder, odoo_url=odoo_url or world.env.url, database=world.env.db, login=world.integration.login,
        api_key=world.integration.api_key, dns_port=dns_port, alias_domain=ALIAS_DOMAIN, secret=SECRET,
        listener={"session_timeout": 60, "message_deadline": 60}, resolver={"timeout": 3},
        odoo={"timeout": odoo_timeout, "pool_size": 2},
        note={"contributor_group": world.group_xmlid, **policy}, reply=policy,
        # A module's scenarios send more than the default 20 messages from the world's one
        # contributor to its one task within the window; rate limits are tested against the test Odoo.
        rules_extra="\n[rate_limit]\nper_sender = 0\nper_record = 0\n",
        **({"models": models} if models else {}))


@dataclass
class RealGateway:
    """A running gateway and what it takes to send it signed mail from the world's users."""

    services: Services
    server: ThreadedGateway
    world: RealOdooWorld
    keys: dict[str, DkimKey]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.server.port

    @staticmethod
    def address(kind: str, model: str, res_id: int) -> str:
        return address.mint(SECRET.encode(), ALIAS_DOMAIN, kind, model, res_id)

    def message(self, sender: str, to: str, body: str, *, subject: str = "Site visit", sender_name: str = "",
                message_id: str | None = None, html: str | None = None) -> bytes:
        return compose(sender, to, subject, body, sender_name=sender_name, message_id=message_id, html=html)

    def sign(self, raw: bytes, domain: str | None = None) -> bytes:
        domain = domain or self.world.domain
        return sign(raw, self.keys[domain], domain, SELECTOR)

    def send(self, raw: bytes, to: str, *, mail_from: str = "", label: str = "") -> str:
        """Deliver over loopback SMTP; the wall time of the transaction is kept under ``label``."""
        started = time.perf_counter()
        reply = deliver(raw, to, port=self.port, mail_from=mail_from)
        if label:
            self.timings[label] = time.perf_counter() - started
        return reply

    def journal(self, limit: int = 100):
        with Journal(self.services.config.journal_path) as journal:
            return journal.recent(limit)


def start_real_gateway(folder: Path, world: RealOdooWorld, keys: dict[str, DkimKey], dns_port: int,
                       **options) -> RealGateway:
    services = Services.build(load_config(write_real_config(folder, world, dns_port, **options)))
    server = ThreadedGateway(services).start()
    return RealGateway(services, server, world, keys)


@pytest.fixture(scope="module")
def real_gateway(tmp_path_factory, world, signing_keys, signing_dns):
    gateway = start_real_gateway(tmp_path_factory.mktemp("real-gateway"), world, signing_keys, signing_dns.port)
    try:
        yield gateway
    finally:
        gateway.server.stop()
        gateway.services.close()


def closed_port() -> int:
    """A loopback TCP port nothing listens on: bound, then closed again."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
