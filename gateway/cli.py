"""The ``note-gateway`` command: serve, address, log, check-config, send, demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from gateway import address
from gateway.config import ConfigError, GatewayConfig, load_config


def _load(path: str) -> GatewayConfig:
    try:
        return load_config(path)
    except ConfigError as error:
        print(f"note-gateway: configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def command_serve(args: argparse.Namespace) -> int:
    from gateway.pipeline import Services
    from gateway.smtp import GatewayServer

    config = _load(args.config)
    services = Services.build(config)
    server = GatewayServer(services)
    logger = logging.getLogger("gateway")
    # Messages whose session a killed gateway cut while filing them: their senders got no reply
    # and will retry; the journal says so instead of leaving them open (issue 4).
    for entry in services.journal.recover_interrupted():
        logger.warning("interrupted by the previous stop, the sender will retry: %s to %s",
                       entry.message_id or "-", entry.rcpt)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, stop.set)
        loop.add_signal_handler(signal.SIGHUP, server.reload)
        await server.start()
        listener = config.gateway.listener
        logger.info("listening on %s:%d (%s) for %s", listener.host, server.port, listener.protocol.upper(),
                    ", ".join(sorted(config.domains)))
        await stop.wait()
        logger.info("stopping: no new sessions, up to %g s for messages in flight", listener.shutdown_grace)
        await server.stop()
        logger.info("stopped")

    try:
        asyncio.run(run())
    finally:
        services.close()
    return 0


def command_address(args: argparse.Namespace) -> int:
    config = _load(args.config)
    domain = (args.domain or "").lower()
    if not domain:
        if len(config.domains) != 1:
            print("note-gateway: several alias domains are configured, name one with --domain", file=sys.stderr)
            return 2
        domain = next(iter(config.domains))
    if domain not in config.domains:
        print(f"note-gateway: {domain} is not an alias domain of this gateway "
              f"(configured: {', '.join(sorted(config.domains))})", file=sys.stderr)
        return 2
    if args.model not in config.domains[domain].kind_rules(args.kind).models:
        print(f"note-gateway: warning: {args.model} is not in [{args.kind}] models of "
              f"{config.domains[domain].source}; mail to this address will be refused", file=sys.stderr)
    try:
        # The first secret signs; all of them verify, so a new secret goes first when rotating.
        print(address.mint(config.secrets[domain][0], domain, args.kind, args.model, args.res_id))
    except ValueError as error:
        print(f"note-gateway: {error}", file=sys.stderr)
        return 2
    return 0


def command_log(args: argparse.Namespace) -> int:
    from gateway.journal import Journal, format_entries

    config = _load(args.config)
    journal = Journal(config.journal_path)
    try:
        print(format_entries(journal.recent(args.limit, verdict=args.verdict, sender=args.sender)))
    finally:
        journal.close()
    return 0


def command_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    print(f"{config.path}: OK")
    for domain, rules in sorted(config.domains.items()):
        print(f"  {domain} ({rules.source}): odoo={rules.odoo}, note models={rules.note.models or 'none'}, "
              f"reply models={rules.reply.models or 'none'}, {len(config.secrets[domain])} secret(s)")
    return 0


def command_send(args: argparse.Namespace) -> int:
    from gateway.testing.sending import send_signed

    reply = send_signed(host=args.host, port=args.port, sender=args.sender, recipient=args.to,
                        subject=args.subject, body=args.body, key_file=Path(args.key),
                        selector=args.selector)
    print(reply)
    return 0 if reply.startswith("250") else 1


def command_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(keep_running=args.keep_running, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="note-gateway", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the SMTP/LMTP listener")
    serve.add_argument("--config", required=True, help="the gateway TOML file")
    serve.set_defaults(func=command_serve)

    mint = commands.add_parser("address", help="print the gateway address of a record")
    mint.add_argument("model", help="Odoo model, e.g. project.task")
    mint.add_argument("res_id", type=int, help="record id")
    mint.add_argument("--kind", choices=address.KINDS, default="note")
    mint.add_argument("--domain", help="alias domain (needed when several are configured)")
    mint.add_argument("--config", required=True)
    mint.set_defaults(func=command_address)

    journal = commands.add_parser("log", help="print recent journal rows")
    journal.add_argument("--config", required=True)
    journal.add_argument("--limit", type=int, default=20)
    journal.add_argument("--verdict", choices=("filed", "duplicate", "refused", "deferred"))
    journal.add_argument("--sender", help="only messages from this From address")
    journal.set_defaults(func=command_log)

    check = commands.add_parser("check-config", help="validate the gateway file and rules files")
    check.add_argument("--config", required=True)
    check.set_defaults(func=command_check_config)

    send = commands.add_parser("send", help="sign a message with a DKIM key and send it over SMTP (for testing)")
    send.add_argument("--host", default="127.0.0.1")
    send.add_argument("--port", type=int, default=2525)
    send.add_argument("--from", dest="sender", required=True)
    send.add_argument("--to", required=True)
    send.add_argument("--subject", default="")
    send.add_argument("--body", required=True)
    send.add_argument("--key", required=True, help="PEM private key of the sender domain's DKIM selector")
    send.add_argument("--selector", default="gateway")
    send.set_defaults(func=command_send)

    demo = commands.add_parser("demo", help="run the whole product here against the bundled test Odoo")
    demo.add_argument("--keep-running", action="store_true", help="stay up and print how to send your own")
    demo.add_argument("--port", type=int, default=0, help="SMTP port of the demo gateway (default: any free)")
    demo.set_defaults(func=command_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet = args.command in ("demo", "address", "log", "check-config", "send")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # aiosmtpd logs every SMTP line at INFO: useful when debugging, noise otherwise.
    logging.getLogger("mail.log").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
