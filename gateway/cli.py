"""The ``note-gateway`` command: serve, address, log, check-config, doctor, send, demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
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

    from gateway import observe

    config = _load(args.config)
    services = Services.build(config)
    server = GatewayServer(services)
    observe.bare_message_lines()
    if config.gateway.metrics is not None:
        metrics = config.gateway.metrics
        try:
            observe.serve_metrics(metrics.host, metrics.port)
        except OSError as error:
            logging.getLogger("gateway").error("cannot serve metrics on %s:%d: %s", metrics.host, metrics.port,
                                               error.strerror or error)
            services.close()
            return 1
        logging.getLogger("gateway").info("metrics on http://%s:%d/metrics", metrics.host, metrics.port)

    async def run() -> None:
        await server.start()
        listener = config.gateway.listener
        logging.getLogger("gateway").info(
            "listening on %s:%d (%s%s) for %s", listener.host, server.port, listener.protocol.upper(),
            ", STARTTLS required" if listener.require_starttls else ", STARTTLS" if config.tls_files else "",
            ", ".join(sorted(config.domains)))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: reload(loop))
        await stop.wait()
        logging.getLogger("gateway").info("stopping: finishing sessions in flight")
        await server.stop()

    def reload(loop: asyncio.AbstractEventLoop) -> None:
        # systemctl reload (ExecReload=kill -HUP): read the files again; a broken config keeps
        # the running one rather than stopping a mail service over a typo.
        logger = logging.getLogger("gateway")
        try:
            new_services = Services.build(load_config(args.config))
            old_services = server.reload(new_services)
        except (ConfigError, OSError, ValueError) as error:
            logger.error("reload failed, keeping the running configuration: %s", error)
            return
        # Messages in flight still use the old services: close them once those are surely done.
        loop.call_later(new_services.config.gateway.listener.message_deadline + 10, old_services.close)
        logger.info("reloaded %s", args.config)

    try:
        asyncio.run(run())
    except OSError as error:
        # Port taken or not allowed (port 25 without CAP_NET_BIND_SERVICE): one line, exit 1, and
        # systemd's Restart=on-failure tries again.
        listener = config.gateway.listener
        logging.getLogger("gateway").error("cannot listen on %s:%d: %s", listener.host, listener.port,
                                           error.strerror or error)
        return 1
    finally:
        server.services.close()
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
    from gateway.journal import Journal, JournalUnavailable, format_decision, format_entries

    config = _load(args.config)
    model, res_id = _record_filter(args.record)
    try:
        since = _since(args.since)
    except ValueError as error:
        print(f"note-gateway: --since: {error}", file=sys.stderr)
        return 2
    # Read-only: an admin may read the journal without being able to write the gateway's state.
    try:
        journal = Journal(config.journal_path, read_only=True)
    except JournalUnavailable as error:
        print(f"note-gateway: {error}", file=sys.stderr)
        return 1
    try:
        if args.id is not None:
            entry = journal.get(args.id)
            if entry is None:
                print(f"note-gateway: no journal entry {args.id}", file=sys.stderr)
                return 1
            print(format_decision(entry))
        else:
            print(format_entries(journal.recent(args.limit, verdict=args.verdict, sender=args.sender,
                                                since=since, model=model, res_id=res_id)))
    finally:
        journal.close()
    return 0


def _record_filter(value: str | None) -> tuple[str | None, int | None]:
    """--record project.task/42 or --record project.task."""
    if not value:
        return None, None
    model, _, res_id = value.partition("/")
    if res_id and not res_id.isdigit():
        raise SystemExit(f"note-gateway: --record: {value!r} is not MODEL or MODEL/ID")
    return model, int(res_id) if res_id else None


def _since(value: str | None) -> float | None:
    """An ISO time (UTC unless it says otherwise), or a duration back from now: 90s, 15m, 2h, 7d."""
    if not value:
        return None
    import re
    import time
    from datetime import datetime, timezone

    match = re.fullmatch(r"(\d+)([smhd])", value.strip())
    if match:
        return time.time() - int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    moment = datetime.fromisoformat(value.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def command_doctor(args: argparse.Namespace) -> int:
    from gateway.doctor import run_doctor

    return run_doctor(args.config)


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
    parser.add_argument("--credentials-directory", metavar="DIR",
                        help="where *_credential keys are read when not run by systemd (which sets "
                             "$CREDENTIALS_DIRECTORY), e.g. /etc/note-gateway/credentials")
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
    journal.add_argument("--sender", help="only messages from this From (or envelope) address")
    journal.add_argument("--since", help="only messages since an ISO time (UTC) or a duration: 30m, 2h, 7d")
    journal.add_argument("--record", help="only messages to MODEL or MODEL/ID, e.g. project.task/42")
    journal.add_argument("--id", type=int, help="show one message's whole decision: stages, reply, defects")
    journal.set_defaults(func=command_log)

    doctor = commands.add_parser("doctor", help="check config, resolver, Odoo, journal and certificate")
    doctor.add_argument("--config", required=True)
    doctor.set_defaults(func=command_doctor)

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
    if args.credentials_directory:
        # For an admin running doctor, log or address by hand: the files systemd would hand over.
        os.environ["CREDENTIALS_DIRECTORY"] = args.credentials_directory
    quiet = args.command in ("demo", "address", "log", "check-config", "send", "doctor")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # aiosmtpd logs every SMTP line at INFO: useful when debugging, noise otherwise.
    logging.getLogger("mail.log").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
