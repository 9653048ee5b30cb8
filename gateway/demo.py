"""``note-gateway demo``: the whole product on this machine, against the bundled test Odoo."""

from __future__ import annotations

import html
import re
import secrets
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from gateway import address
from gateway.config import load_config
from gateway.pipeline import Services
from gateway.smtp import ThreadedGateway
from gateway.testing.configs import write_gateway_config
from gateway.testing.dkim import generate_rsa_key
from gateway.testing.dns import DnsServer
from gateway.testing.odoo import TestOdoo
from gateway.testing.odoo_demo import DEMO_API_KEY, PAULA_EMAIL, PAULA_PARTNER_ID, TASK_ID
from gateway.testing.sending import compose, deliver, sign

ALIAS_DOMAIN = "notes.example.com"
SENDER_DOMAIN = PAULA_EMAIL.rpartition("@")[2]
SELECTOR = "demo"
# Made anew for each run, so that no published secret is ever one a gateway accepts.
SECRET = secrets.token_urlsafe(32)


def _text(body: str) -> str:
    """The chatter body as a reader sees it, on one line."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def _write_config(folder: Path, odoo: TestOdoo, dns_port: int, smtp_port: int | None) -> Path:
    return write_gateway_config(folder, odoo_url=odoo.url, database=odoo.database, api_key=DEMO_API_KEY,
                                dns_port=dns_port, smtp_port=smtp_port, alias_domain=ALIAS_DOMAIN, secret=SECRET)


def _print_chatter(odoo: TestOdoo) -> None:
    views = (("an internal user sees it in the backend", odoo.internal_chatter("project.task", TASK_ID)),
             ("the customer's portal users see it",
              odoo.portal_chatter("project.task", TASK_ID, partner_id=PAULA_PARTNER_ID)))
    for who, messages in views:
        print(f"\nChatter of project.task {TASK_ID} as {who}:")
        for message in messages:
            subtype = message["subtype_id"][1] if message.get("subtype_id") else "-"
            author = message["author_id"][1] if message.get("author_id") else "-"
            print(f"  #{message['id']} [{subtype}] {author}: {_text(message['body'])[:100]}")


def run_demo(*, keep_running: bool = False, port: int | None = None) -> int:
    """The demo on ``port`` (None: one the system picks); 1 once the reason is printed when it cannot listen there."""
    key = generate_rsa_key()
    with tempfile.TemporaryDirectory(prefix="note-gateway-demo-") as folder_name, \
            TestOdoo.with_demo_data() as odoo, DnsServer() as dns:
        folder = Path(folder_name)
        dns.add_txt(key.record_name(SELECTOR, SENDER_DOMAIN), key.txt_record)
        (folder / "sender-dkim.pem").write_bytes(key.private_pem)
        config_path = _write_config(folder, odoo, dns.port, port)
        services = Services.build(load_config(config_path))
        try:
            gateway = ThreadedGateway(services, port=port or 0).start()
        except OSError as error:
            # The port taken, or one below 1024 without the right to bind it: one line, not a traceback.
            print(f"note-gateway: demo: cannot listen on 127.0.0.1:{port}: {error.strerror or error}", file=sys.stderr)
            services.close()
            return 1
        try:
            note_to = address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", "project.task", TASK_ID)
            reply_to = address.mint(SECRET.encode(), ALIAS_DOMAIN, "reply", "project.task", TASK_ID)
            print(f"Test Odoo (JSON-RPC) at {odoo.url}, database {odoo.database}")
            print(f"DNS server at 127.0.0.1:{dns.port} serving {SELECTOR}._domainkey.{SENDER_DOMAIN}")
            print(f"Gateway listening on 127.0.0.1:{gateway.port}\n")

            for kind, to, subject, body in (
                ("note", note_to, "Pump P-7 inspected",
                 "The seal is worn; replacement within two weeks. Margin is thin, keep this internal."),
                ("reply", reply_to, "Visit done", "Visit done today, report to follow."),
            ):
                raw = sign(compose(PAULA_EMAIL, to, subject, body, sender_name="Paula Contributor"),
                           key, SENDER_DOMAIN, SELECTOR)
                started = time.perf_counter()
                reply = deliver(raw, to, port=gateway.port, mail_from=PAULA_EMAIL)
                print(f"{kind:5} from {PAULA_EMAIL} to {to}\n      -> {reply} "
                      f"({(time.perf_counter() - started) * 1000:.0f} ms)")
            _print_chatter(odoo)
            print(f"\nEmails Odoo sent for these posts: {len(odoo.outbox)} "
                  f"(a note notifies nobody; the public reply notifies the record's other followers)")

            if keep_running:
                print(textwrap.dedent(f"""
                    The demo keeps running (Ctrl-C to stop). Addresses of project.task {TASK_ID}:
                      note:  {note_to}
                      reply: {reply_to}
                    Send your own signed message as Paula:
                      note-gateway send --port {gateway.port} --from {PAULA_EMAIL} --to {note_to} \\
                        --key {folder / 'sender-dkim.pem'} --selector {SELECTOR} --subject "My note" --body "Hello"
                    Journal:  note-gateway log --config {config_path}
                """))
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    _print_chatter(odoo)
        finally:
            gateway.stop()
        services.close()
    return 0
