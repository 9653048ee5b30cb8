"""The ``note-gateway`` command: serve, address, log, prune-journal, check-config, check, setup-odoo, doctor, send, demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
import time
from pathlib import Path

from gateway import address
from gateway.config import (ConfigError, GatewayConfig, JournalSettings, alias_domain, endpoint,
                            keep_restart_settings, load_config, load_journal_settings, log_warnings, reload_warnings,
                            shown_address, signing_lines, signing_secret, domain_odoo_identities)


DISTRIBUTION = "odoo-note-gateway"
# The checkout the gateway package runs from, when it runs from one (not an installed wheel).
_CHECKOUT = Path(__file__).resolve().parent.parent


def package_version(checkout: Path = _CHECKOUT) -> str:
    """The version `note-gateway --version` prints: the source checkout's pyproject.toml when the
    package runs from one, else the installed distribution's (importlib.metadata).

    The checkout comes first: an editable install (pip install -e) keeps the version of the day it
    was installed in its metadata, which a checkout pulled since would contradict. Nothing asks git.
    """
    import importlib.metadata
    import tomllib

    try:
        with open(checkout / "pyproject.toml", "rb") as file:
            project = tomllib.load(file).get("project", {})
        if project.get("name") == DISTRIBUTION and project.get("version"):
            return str(project["version"])
    except (OSError, tomllib.TOMLDecodeError):
        pass
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _load(path: str) -> GatewayConfig:
    try:
        return load_config(path)
    except ConfigError as error:
        print(f"note-gateway: configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _load_journal_settings(path: str, *, rules_left_out: str | None,
                           odoo_left_out: str | None = None) -> JournalSettings:
    """What log and prune-journal read of the configuration (no secret, no API key); each part
    they use that could not be read is said on stderr, with what leaving it out costs the command
    (rules_left_out None: the caller says it)."""
    try:
        settings = load_journal_settings(path)
    except ConfigError as error:
        print(f"note-gateway: configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    for problem in settings.rules_problems if rules_left_out is not None else ():
        print(f"note-gateway: warning: {problem}; {rules_left_out}", file=sys.stderr)
    if odoo_left_out is not None:
        for problem in settings.odoo_problems:
            print(f"note-gateway: warning: {problem}; {odoo_left_out}", file=sys.stderr)
    return settings


def command_serve(args: argparse.Namespace) -> int:
    # SIGHUP's default action ends the process: systemd's ExecReload (kill -HUP) sent while the
    # gateway still loads its files would kill it. Held back until run() handles it (a reload then,
    # reading the files again), and the mask is given back on every way out.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        return _serve(args, held)
    finally:
        if signal.SIGHUP not in held:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


def _serve(args: argparse.Namespace, held: set) -> int:
    from gateway import observe
    from gateway.pipeline import Services, open_in_flight
    from gateway.smtp import GatewayServer

    config = _load(args.config)
    if args.listen_fds is None:
        log_warnings(config)  # Once: a worker (--listen-fds) reads what its supervisor logged.
    logger = logging.getLogger("gateway")
    workers = config.gateway.listener.workers
    # A worker's supervisor has checked the journal for all of them.
    if args.listen_fds is None and not _check_journal(config):
        return 2
    # --any-port (tests): a port the system picks, read back from the "listening on" line.
    port = 0 if args.any_port else None
    if workers > 1 and args.listen_fds is None:
        from gateway.workers import Supervisor
        # Checked once here, as each worker checks them again: a broken template stops the start.
        if _check_templates(config) is None:
            return 2
        # The supervisor handles SIGHUP itself (it forwards it to the workers it started).
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        return Supervisor(args.config, config, port=port).run()
    sockets = None
    lock_path = None
    if args.listen_fds is not None:
        # A worker of a supervisor: its socket, its receipts recovered and its metrics served by it.
        from gateway import workers as worker_processes
        supervisor = worker_processes.supervisor_pid()
        if supervisor is not None:
            worker_processes.die_with_supervisor(supervisor)
        sockets = worker_processes.inherited_sockets(args.listen_fds)
        observe.worker = worker_processes.worker_index()
        lock_path = worker_processes.inherited_in_flight_path()
        running = worker_processes.running_restart_values()
        if running is not None:
            keep_restart_settings(config, running)
            workers = config.gateway.listener.workers
    share = workers if sockets is not None else 1
    if sockets is None and _lock_journal(config) is None:
        return 1
    try:
        # One for the life of the process, handed to the services of every reload: a second one
        # would neither see this one's claims nor keep its own once this one closes (open_in_flight).
        in_flight = open_in_flight(config, lock_path)
        try:
            services = Services.build(config, workers=share, in_flight=in_flight)
        except ConfigError:
            in_flight.close()
            raise
    except ConfigError as error:
        print(f"note-gateway: configuration error: {error}", file=sys.stderr)
        return 2
    server = GatewayServer(services, workers=share, port=port)
    if sockets is None:
        # Messages whose session a killed gateway cut while filing them: their senders got no reply
        # and will retry; the journal says so instead of leaving them open (issue 4).
        odoo_of = {domain: rules.odoo for domain, rules in config.domains.items()}
        for entry in services.journal.recover_interrupted(odoo_of=odoo_of):
            logger.warning("interrupted by the previous stop, the sender will retry: %s to %s",
                           entry.message_id or "-", entry.rcpt)
    observe.bare_message_lines()
    if config.gateway.metrics is not None and sockets is None:
        metrics = config.gateway.metrics
        try:
            observe.serve_metrics(metrics.host, metrics.port)
        except OSError as error:
            logger.error("cannot serve metrics on %s:%d: %s", metrics.host, metrics.port, error.strerror or error)
            services.close()
            in_flight.close()
            return 1
        logger.info("metrics on http://%s:%d/metrics", metrics.host, metrics.port)

    def build(new_config: GatewayConfig, running: Services) -> Services:
        # In a thread of the loop's default executor: opening the journal may wait up to its busy
        # timeout (5 s), and the sessions must not wait with it. The running journal is kept when
        # journal.path still names it (Services.build): one journal per file and process.
        keep_restart_settings(new_config, config)
        return Services.build(new_config, workers=share, in_flight=in_flight, running=running)

    async def reload_once() -> None:
        # systemctl reload (ExecReload=kill -HUP): read the files again; a broken config keeps
        # the running one rather than stopping a mail service over a typo. The settings that need
        # a restart (config.RESTART_SETTINGS: the socket, the protocol, ...) keep their running values.
        new_services = None
        try:
            new_config = await asyncio.to_thread(load_config, args.config)
            # Logged once the reload is taken, not by a refused one. A worker's supervisor says
            # them once for all of them. They name a credential or environment variable changed for
            # this reload, which is not in force (day-2 operations review: a leaked address secret
            # retired by a reload stayed valid).
            warnings = (reload_warnings(new_config, config, domain_odoo_identities(server.services.config))
                        if sockets is None else [])
            new_services = await asyncio.to_thread(build, new_config, server.services)
            old_services = server.reload(new_services)
        except Exception as error:  # noqa: BLE001 (whatever it is, the running configuration stays)
            if new_services is not None:
                new_services.close()  # Not a journal it was lent: that stays the running services'.
            logger.error("reload refused, the previous rules stay in force: %s", _refusal(error, args.config))
            return
        # Before the retire, which would otherwise close the journal the new services go on with.
        old_services.hand_over_journal(new_services)
        for warning in warnings:
            logger.warning("%s", warning)
        # Messages in flight still use the old services: they are closed when the last is done.
        old_services.retire()
        logger.info("rules reloaded: %s", ", ".join(sorted(new_services.config.domains)))
        if sockets is None:  # A worker's supervisor says it once for all of them.
            for line in signing_lines(new_services.config):
                logger.info("%s", line)

    # One reload at a time, in the order asked; SIGHUPs that come during one make one more after it,
    # which reads the files as they are then (a burst of them is one or two reloads, not a queue).
    reloading: list[asyncio.Task] = []
    reload_again = [False]
    stopping = [False]

    async def reload_loop() -> None:
        while True:
            reload_again[0] = False
            await reload_once()
            if not reload_again[0] or stopping[0]:
                return

    def reload(loop: asyncio.AbstractEventLoop) -> None:
        if stopping[0]:
            logger.info("reload ignored: stopping")
        elif reloading and not reloading[0].done():
            reload_again[0] = True
        else:
            reloading[:] = [loop.create_task(reload_loop())]

    # When the stop's grace ends (time.monotonic()), once a signal asked for the stop.
    stop_ends: list[float] = []
    # Messages whose pipeline the stop did not wait for (GatewayServer.stop): their threads still run.
    abandoned = [0]

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: reload(loop))
        # SIGHUP was held back since the start (command_serve; a worker also by Supervisor._spawn),
        # as its default action would kill the process: from now on it is handled, and one that
        # came while starting is delivered now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        listener = config.gateway.listener
        if sockets is not None:
            await server.start(sockets)
            logger.info("worker %s serving %s (%s%s)", observe.worker, shown_address(listener.host, server.port),
                        listener.protocol.upper(), ", STARTTLS required" if listener.require_starttls
                        else ", STARTTLS" if config.tls_files else "")
        else:
            await server.start()
            logger.info("listening on %s (%s%s) for %s", shown_address(listener.host, server.port),
                        listener.protocol.upper(), ", STARTTLS required" if listener.require_starttls
                        else ", STARTTLS" if config.tls_files else "", ", ".join(sorted(config.domains)))
            for line in signing_lines(config):
                logger.info("%s", line)
        for name, pool in services.odoo.items():
            # Logging in now shows a wrong key or URL at start; the gateway serves anyway, since
            # Odoo being down is a reason to defer mail (451), not to refuse to start.
            try:
                version = await asyncio.to_thread(pool.version)
                logger.info("odoo %s: logged in to %s as %s, Odoo %d", name, pool.connection.url,
                            pool.connection.login, version)
            except Exception as error:
                logger.warning("odoo %s: cannot log in yet (%s); mail is deferred until it can", name, error)
        await stop.wait()
        stop_ends.append(time.monotonic() + listener.shutdown_grace)
        # No reload starts now (a SIGHUP stays handled: its default action would kill the process);
        # one under way finishes first, and its services are then the ones closed at the end.
        stopping[0] = True
        if reloading:
            await reloading[0]
        logger.info("stopping: no new sessions, up to %g s for messages in flight", listener.shutdown_grace)
        abandoned[0] = await server.stop()
        logger.info("stopped")

    try:
        asyncio.run(run())
    except OSError as error:
        # Port taken or not allowed (port 25 without CAP_NET_BIND_SERVICE): one line, exit 1, and
        # systemd's Restart=on-failure tries again.
        listener = config.gateway.listener
        logger.error("cannot listen on %s: %s", shown_address(listener.host, listener.port), error.strerror or error)
        return 1
    finally:
        # The queued notices get what is left of the stop's grace, counted from the signal: the
        # messages in flight had it first, and server.stop may have used it all and more (the
        # pipelines still running, each up to its message deadline). A fresh grace here made a stop
        # take up to two, past what a supervisor waits for a worker (workers._stop_workers).
        grace = config.gateway.listener.shutdown_grace
        server.services.close(notices_wait=max(0.0, stop_ends[0] - time.monotonic()) if stop_ends else grace)
        in_flight.close()
    if abandoned[0]:
        # The interpreter's exit would join the pipeline threads still running (concurrent.futures
        # does at exit), however long they take: the stop would not end within shutdown_grace +
        # message_deadline as promised, and a worker's supervisor would kill it. Their messages
        # are journaled already (GatewayServer.stop) and the journal is closed under them.
        logger.warning("exiting without waiting for %d pipeline thread(s) still running", abandoned[0])
        logging.shutdown()
        os._exit(0)
    return 0


def _lock_journal(config: GatewayConfig) -> int | None:
    """The lock of the one gateway serving on this journal (held until exit), or None once the error is logged."""
    from gateway.journal import JournalInUse, lock_journal

    try:
        return lock_journal(config.journal_path)
    except JournalInUse as error:
        logging.getLogger("gateway").error("%s", error)
    except OSError as error:
        logging.getLogger("gateway").error("cannot lock the journal %s: %s", config.journal_path,
                                           error.strerror or error)
    return None


def _check_journal(config: GatewayConfig) -> bool:
    """Whether the journal can be kept at journal.path by this user; False once the reason is on stderr."""
    from gateway.journal import path_problem

    problem = path_problem(config.journal_path)
    if problem is not None:
        print(f"note-gateway: configuration error: {ConfigError(config.path, 'journal.path', problem)}", file=sys.stderr)
        return False
    return True


def _check_journal_version(config: GatewayConfig) -> bool:
    """Whether an existing journal's schema is one this gateway knows, read only (nothing created or
    migrated); False once serve's reason is on stderr.

    A journal a newer gateway migrated stops serve (exit 2) and fails doctor, while check-config said
    OK (upgrade review: the check an admin runs before a downgrade, or before starting an older
    checkout on a restored journal). An older schema is no problem: serve migrates it.
    """
    from gateway.journal import Journal, JournalNewer, JournalUnavailable

    if not config.journal_path.is_file():
        return True
    try:
        Journal(config.journal_path, read_only=True).close()
    except JournalNewer as error:
        print(f"note-gateway: configuration error: {ConfigError(config.path, 'journal.path', str(error))}",
              file=sys.stderr)
        return False
    except JournalUnavailable:
        pass  # Older (serve migrates it), or unreadable here: doctor examines the file itself.
    return True


def _check_templates(config: GatewayConfig, *, log_warnings: bool = True):
    """The checked renderer of ``config``, or None once the broken template is named on stderr."""
    from gateway.render import checked_renderer

    try:
        return checked_renderer(config, log_warnings=log_warnings)
    except ConfigError as error:
        print(f"note-gateway: configuration error: {error}", file=sys.stderr)
        return None


def _domain_option(value: str | None) -> str | None:
    """--domain read as the rules files' domains are (lowercase, A-labels, no final dot), or None;
    a value that is no domain name ends the command with exit code 2."""
    if not value:
        return None
    try:
        return alias_domain(value)
    except ValueError as error:
        print(f"note-gateway: --domain: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _refusal(error: Exception, config_path: str) -> str:
    """Why a reload was refused, as ``<file>: <key>: <reason>``."""
    if isinstance(error, ConfigError):
        return str(error)
    if isinstance(error, (OSError, ssl.SSLError)):
        # The certificate, read again when the new services are put in place.
        return f"{Path(config_path).resolve()}: listener.tls_certificate: {error.strerror or error}"
    return f"{Path(config_path).resolve()}: {type(error).__name__}: {error}"


def command_address(args: argparse.Namespace) -> int:
    config = _load(args.config)
    domain = _domain_option(args.domain) or ""
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
    rules = config.domains[domain]
    # A dated address can expire; it is dated whenever the domain limits the age of addresses.
    dated = args.dated or rules.dates_addresses
    issued_day = address.today() if dated else None
    try:
        # Before asking Odoo for --for: a record id the gateway could not read back (more than
        # 18 digits; operator review) is refused here, not printed as an address that gets 550 5.1.1.
        address.check_parts(args.kind, args.model, args.res_id, partner_id=args.partner_id, issued_day=issued_day)
    except ValueError as error:
        print(f"note-gateway: {error}", file=sys.stderr)
        return 2
    partner_id = args.partner_id
    if args.for_email or args.online:
        # Odoo is asked anyway: what it says against the address is a warning (operator review: an
        # address was printed for a task that does not exist, or bound to a user whose mail to it
        # would be refused).
        partner_id = _ask_odoo(config, rules, args, domain)
        if partner_id is None:
            return 2
        partner_id = partner_id or args.partner_id
    try:
        # The first secret signs (signing_secret); all of them verify.
        minted = address.mint(config.secrets[domain][0], domain, args.kind, args.model, args.res_id,
                              partner_id=partner_id, issued_day=issued_day)
    except ValueError as error:  # A partner id from Odoo that an address cannot carry.
        print(f"note-gateway: {error}", file=sys.stderr)
        return 2
    print(minted)
    octets = len(minted.rpartition("@")[0].encode())
    if octets > address.MAX_LOCAL_PART_OCTETS:
        # This gateway reads it; a mail server on the way may not (review of addresses as a credential).
        print(f"note-gateway: warning: the local part of this address has {octets} octets, more than the "
              f"{address.MAX_LOCAL_PART_OCTETS} of RFC 5321 (4.5.3.1.1): some mail servers refuse such an address "
              "before it reaches the gateway; a shorter model name, or no --for/--partner-id or --dated, shortens it",
              file=sys.stderr)
    return 0


def _ask_odoo(config: GatewayConfig, rules, args: argparse.Namespace, domain: str) -> int | None:
    """--for's partner (0 without --for), warning on stderr when the record does not exist or the
    user may not post; None once the reason it cannot be asked is printed."""
    from gateway import policy
    from gateway.context import Target
    from gateway.identity import find_user
    from gateway.odoo import OdooPool
    from gateway.refusals import OdooUnavailable, Refusal

    odoo_name = rules.odoo
    asking = f"--for {args.for_email}" if args.for_email else "--online"
    pool = OdooPool(odoo_name, config.gateway.odoo[odoo_name], config.api_keys[odoo_name])
    target = Target(args.kind, domain, args.model, args.res_id, "")
    try:
        user = find_user(pool, args.for_email) if args.for_email else None
        try:
            policy.check_exists(pool, target)
        except OdooUnavailable:
            raise
        except Refusal as refusal:
            print(f"note-gateway: warning: {refusal.text}; mail to this address will be refused", file=sys.stderr)
        if user is not None:
            try:
                policy.check_poster(pool, rules, target, user)
            except OdooUnavailable as error:  # The contributor group's xmlid, for one.
                print(f"note-gateway: warning: cannot tell whether {user.email} may post here: {error.explanation}",
                      file=sys.stderr)
            except Refusal as refusal:
                group = f" ({rules.note.contributor_group})" if args.kind == "note" and not user.internal else ""
                print(f"note-gateway: warning: {refusal.text}{group}; mail from "
                      f"{user.email} to this address will be refused ({refusal.smtp_code} {refusal.enhanced_code})",
                      file=sys.stderr)
        return user.partner_id if user is not None else 0
    except OdooUnavailable as error:
        # Not "try again later" when the key is wrong: what Odoo said, and what to check.
        print(f"note-gateway: {asking}: odoo.{odoo_name}: {error.explanation}"
              + (f"; {error.fix}" if error.fix else ""), file=sys.stderr)
        return None
    except Refusal as refusal:
        print(f"note-gateway: {asking}: {refusal.text}", file=sys.stderr)
        return None
    finally:
        pool.close()


def command_prune_journal(args: argparse.Namespace) -> int:
    """Delete journal rows older than --keep-days that no rate limit, notice or unsettled post still reads."""
    import math

    from gateway.journal import Journal, JournalUnavailable

    # Not load_config: a timer's run must not need the service's credentials (day-2 review). A rules
    # file it cannot read (a typo a reload refused) stops it, unless the admin says to go on: the
    # running gateway keeps its last good copy, whose window (maybe days) still counts rows older
    # than --keep-days (behaviour review: it only warned, and deleted them).
    ignore = args.ignore_unreadable_rules
    config = _load_journal_settings(args.config, rules_left_out="the rate-limit windows there are not checked "
                                                                "against --keep-days" if ignore else None)
    if config.rules_problems and not ignore:
        for problem in config.rules_problems:
            print(f"note-gateway: {problem}; nothing deleted, as the running gateway may still count rows older "
                  "than --keep-days for the rate limits there: correct it, or pass --ignore-unreadable-rules to "
                  "prune without checking their windows", file=sys.stderr)
        return 2
    # The rate limits count the filed rows of their window, one notice per sender and reason is
    # sent per day, and an unsettled post decides for odoo.unsettled_post_seconds (at most a day).
    longest_window = max((rules.rate_limit.window_minutes for rules in config.domains.values()), default=0.0)
    needed = max(1, math.ceil(longest_window / 1440))
    if args.keep_days < needed:
        print(f"note-gateway: --keep-days {args.keep_days} is shorter than the journal rows still in use: "
              f"the rate-limit window of {longest_window:g} minutes needs --keep-days {needed} or more",
              file=sys.stderr)
        return 2
    before = time.time() - args.keep_days * 86400
    try:
        with Journal(config.journal_path) as journal:
            deleted = journal.prune(before)
    except JournalUnavailable as error:
        print(f"note-gateway: {error}", file=sys.stderr)
        return 1
    print(f"deleted rows older than {args.keep_days} days: " + ", ".join(f"{table} {count}"
                                                                         for table, count in deleted.items()))
    return 0


def command_log(args: argparse.Namespace) -> int:
    from gateway.journal import Journal, JournalUnavailable, format_decision, format_entries
    from gateway.message import own_message_id

    # Not load_config: the journal is what an admin reads during a configuration incident, and
    # without the service's credentials (day-2 review).
    config = _load_journal_settings(args.config, rules_left_out="the journal's rows are listed all the same",
                                    odoo_left_out="--odoo lists the rows of that name only")
    try:
        model, res_id = _record_filter(args.record)
    except ValueError as error:
        print(f"note-gateway: --record: {error}", file=sys.stderr)
        return 2
    try:
        since = _since(args.since)
    except ValueError as error:
        print(f"note-gateway: --since: {error}", file=sys.stderr)
        return 2
    # Read as the gateway read the message's Message-ID header when it journaled it (a folded one,
    # a relay's comment, spaces inside the brackets, no brackets), so the value quoted from the
    # header finds its rows.
    message_id = None if args.message_id is None else own_message_id(args.message_id)
    if message_id == "":
        print("note-gateway: --message-id: empty or not a msg-id; give the Message-ID as the message has it, "
              "e.g. <ab12@example.com> (the brackets may be left out)", file=sys.stderr)
        return 2
    domain = _domain_option(args.domain)
    # A name the configuration does not have may still be in older rows (a domain or a connection
    # removed since): said, not refused, so a typo does not pass for "no rows".
    if domain is not None and domain not in config.domains:
        print(f"note-gateway: --domain {domain} is not an alias domain of this gateway "
              f"(configured: {', '.join(sorted(config.domains))}); listing the journal's rows of it",
              file=sys.stderr)
    if args.odoo is not None and args.odoo not in config.odoo_identities:
        print(f"note-gateway: --odoo {args.odoo} is not an [odoo.NAME] connection of this gateway "
              f"(configured: {', '.join(sorted(config.odoo_identities))}); listing the journal's rows of it",
              file=sys.stderr)
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
                                                since=since, model=model, res_id=res_id, domain=domain,
                                                odoo=args.odoo, message_id=message_id,
                                                odoo_identity=config.odoo_identities.get(args.odoo or ""))))
    finally:
        journal.close()
    return 0


def _shown(path: str | Path) -> str:
    """A path as the admin typed it: relative to the current folder when it is below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _record_filter(value: str | None) -> tuple[str | None, int | None]:
    """--record project.task/42 or --record project.task."""
    if not value:
        return None, None
    model, _, res_id = value.partition("/")
    if res_id and not res_id.isdigit():
        raise ValueError(f"{value!r} is not MODEL or MODEL/ID, e.g. project.task or project.task/42")
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
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is neither a duration (90s, 15m, 2h, 7d) nor an ISO time "
                         "(2024-05-01 or 2024-05-01T12:00, UTC unless an offset is given)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def command_doctor(args: argparse.Namespace) -> int:
    from gateway.doctor import run_doctor

    return run_doctor(args.config)


def command_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    # The journal as serve checks it at start: a folder it can write, and the file if it exists. A
    # folder that does not exist yet is only a warning here: systemd's StateDirectory= (the unit's
    # /var/lib/note-gateway) is made when the unit first starts, after the admin checked the files.
    folder = config.journal_path.parent
    if not folder.exists() and not config.journal_path.is_dir():
        config.warnings.append(f"{config.path}: journal.path: the folder {folder} does not exist yet; serve "
                               "needs it (systemd's StateDirectory= makes it when the unit first starts)")
    elif not _check_journal(config) or not _check_journal_version(config):
        return 2
    # The templates as serve and a reload check them: each compiled and rendered with sample values.
    if _check_templates(config, log_warnings=False) is None:  # printed below as "warning:"
        return 2
    print(f"{_shown(config.path)}: OK")
    for domain, rules in sorted(config.domains.items()):
        print(f"  {domain} ({_shown(rules.source)}): odoo={rules.odoo}, note models={rules.note.models or 'none'} "
              f"({rules.note.access}), reply models={rules.reply.models or 'none'} ({rules.reply.access}), "
              f"{len(config.secrets[domain])} secret(s), signed with {signing_secret(config, domain)}")
    for warning in config.warnings:
        print(f"warning: {warning}")
    if not args.online:
        return 0
    from gateway.checks import check_online
    from gateway.odoo import OdooPool

    pools = {name: OdooPool(name, connection, config.api_keys[name]) for name, connection in config.gateway.odoo.items()}
    try:
        found = check_online(config, pools)
    finally:
        for pool in pools.values():
            pool.close()
    for line in found.lines:
        print(f"  {line}")
    for warning in found.warnings:
        print(f"warning: {warning}")
    for error in found.errors:
        print(f"error: {error}")
    return 1 if found.errors else 0


def command_check(args: argparse.Namespace) -> int:
    from gateway.checks import dry_run
    from gateway.pipeline import Services

    config = _load(args.config)
    try:
        raw = Path(args.message).read_bytes()
    except OSError as error:  # Missing, a folder, not readable: one line, not a traceback (operator review).
        print(f"note-gateway: cannot read the message {args.message}: {error.strerror or error}", file=sys.stderr)
        return 2
    # SMTP carries CRLF line endings; a .eml saved on Unix has LF, which the framing stage would
    # refuse although the same message by SMTP would pass.
    if b"\r\n" not in raw:
        raw = raw.replace(b"\n", b"\r\n")
    try:
        # Read-only: no journal or claims file is made or written, no migration run (docs/rules.md).
        services = Services.build(config, read_only=True)
    except ConfigError as error:
        print(f"note-gateway: configuration error: {error}", file=sys.stderr)
        return 2
    try:
        verdicts, would_file = dry_run(services, args.rcpt, raw, args.mail_from)
    finally:
        services.close()
    width = max(len(stage) for stage, _ in verdicts)
    for stage, verdict in verdicts:
        print(f"{stage.ljust(width)}  {verdict}")
    return 0 if would_file else 1


def command_setup_odoo(args: argparse.Namespace) -> int:
    import getpass

    import odoorpc

    from gateway.odoo import transport_fault
    from gateway.odootransport import keep_alive_opener
    from gateway.setup_odoo import Setup

    config = _load(args.config)
    names = [args.odoo] if args.odoo else sorted(config.gateway.odoo)
    # The admin password is used for this run only: never written anywhere (issue 7).
    password = args.admin_password or getpass.getpass(f"Odoo password of {args.admin_login}: ")
    status = 0
    for name in names:
        connection = config.gateway.odoo.get(name)
        if connection is None:
            print(f"note-gateway: no [odoo.{name}] in {config.path.name}", file=sys.stderr)
            return 2
        host, protocol, port = endpoint(connection.url)
        try:
            # odoorpc.ODOO already asks Odoo for its version: an Odoo down or unreachable fails here
            # (operator review: this, the README's first command, ended in a traceback).
            # The gateway's own transport: the connection's ca_file is trusted here too.
            client = odoorpc.ODOO(host, protocol=protocol, port=port, timeout=connection.timeout,
                                  opener=keep_alive_opener(connection.ca_file)[0])
            client.login(connection.database, args.admin_login, password)
        except odoorpc.error.RPCError as error:  # Odoo answered: wrong password, no such database, ...
            print(f"odoo.{name}: cannot log in as {args.admin_login}: {error}", file=sys.stderr)
            status = 1
            continue
        except Exception as error:  # Refused, reset, timed out, not Odoo's JSON-RPC: as the pool says it.
            print(f"odoo.{name}: {transport_fault(connection.url, error)}; check url, that Odoo is running, "
                  "and that this host can reach it (network, firewall, proxy)", file=sys.stderr)
            status = 1
            continue
        # Each contributor group with the alias domains that name it: a group other than the
        # default one is named after them (setup_odoo.contributor_group_name).
        groups: dict[str, list[str]] = {}
        for domain, rules in sorted(config.domains.items()):
            if rules.odoo == name:
                groups.setdefault(rules.note.contributor_group, []).append(domain)
        try:
            # The models whose record rules odoo-rules evaluates: the ones their domains go through
            # must be readable by the integration user too.
            rule_models = sorted({model for rules in config.domains.values() if rules.odoo == name
                                  for kind in ("note", "reply") if rules.kind_rules(kind).access == "odoo-rules"
                                  for model in rules.kind_rules(kind).models})
            report = Setup(client, client.version).run(groups, [connection.login], rule_models)
        except (LookupError, odoorpc.error.RPCError) as error:
            print(f"odoo.{name}: {error}", file=sys.stderr)
            status = 1
            continue
        print(f"odoo.{name} ({connection.url}, database {connection.database}):")
        for line in report:
            print(f"  {line}")
    return status


def command_send(args: argparse.Namespace) -> int:
    import smtplib

    import dkim

    from gateway.testing.dkim import sign
    from gateway.testing.sending import compose, deliver

    # Each ordinary mistake gets one line and a non-zero status, never a traceback (operator
    # review): 2 for what is wrong here (the key, the addresses), 1 when the message
    # was not accepted (no connection, or a refusal, which is printed as the reply it is).
    local, at, domain = args.sender.rpartition("@")
    if not (local and at and domain) or not args.sender.isascii() or not args.to.isascii():
        print("note-gateway: --from and --to must be plain ASCII email addresses", file=sys.stderr)
        return 2
    try:
        key = Path(args.key).read_bytes()
    except OSError as error:
        print(f"note-gateway: cannot read the key {args.key}: {error.strerror or error}", file=sys.stderr)
        return 2
    try:
        raw = compose(args.sender, args.to, args.subject, args.body)
    except ValueError as error:  # A line break in --subject, for one.
        print(f"note-gateway: cannot compose the message: {error}", file=sys.stderr)
        return 2
    try:
        signed = sign(raw, key, domain, args.selector)
    except dkim.DKIMException as error:
        print(f"note-gateway: cannot sign with the key {args.key}: {error} (a PEM private key is expected)",
              file=sys.stderr)
        return 2
    try:
        reply = deliver(signed, args.to, host=args.host, port=args.port, mail_from=args.sender, timeout=args.timeout,
                        lmtp=args.lmtp)
    except smtplib.SMTPResponseException as error:
        # A refusal that smtplib raises rather than returns: a greeting other than 220 (421 when
        # the gateway is full or stopping), or DATA itself refused.
        text = error.smtp_error
        reply = f"{error.smtp_code} {text.decode(errors='replace') if isinstance(text, bytes) else text}"
    except (smtplib.SMTPException, OSError) as error:  # Refused, timed out, unknown host, closed.
        if isinstance(error, TimeoutError) or isinstance(error.__context__, TimeoutError):
            reason = f"no answer within {args.timeout:g} s"
        else:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error) or type(error).__name__
        print(f"note-gateway: cannot send to {args.host}:{args.port}: {reason}", file=sys.stderr)
        return 1
    print(reply)
    if not args.lmtp and reply.startswith("503") and "HELO" in reply:
        # An LMTP listener answers EHLO 500, and MAIL then asks for a greeting (operator run).
        print(f"note-gateway: {args.host}:{args.port} did not take EHLO: if its protocol is \"lmtp\", "
              "send with --lmtp", file=sys.stderr)
    return 0 if reply.startswith("250") else 1


def command_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(keep_running=args.keep_running, port=args.port)


def _bounded(low: int, high: int):
    """An argparse type: an integer from ``low`` to ``high`` (a huge --id was an OverflowError from SQLite)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, not {value}")
        return value

    return parse


# SQLite's INTEGER: journal row ids, and the most rows a query can ask for.
_ROWS = _bounded(1, 2**63 - 1)
_PORT = _bounded(1, 65535)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="note-gateway", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    parser.add_argument("--version", action="version", version=f"note-gateway {package_version()}",
                        help="print the gateway's version and exit")
    parser.add_argument("--credentials-directory", metavar="DIR",
                        help="where *_credential keys are read when not run by systemd (which sets "
                             "$CREDENTIALS_DIRECTORY), e.g. /etc/note-gateway/credentials")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the SMTP/LMTP listener")
    serve.add_argument("--config", required=True, help="the gateway TOML file")
    # Internal: how the supervisor of listener.workers > 1 starts each worker on its sockets.
    serve.add_argument("--listen-fds", help=argparse.SUPPRESS)
    # Internal, for the tests: listen on a port the system picks instead of listener.port, which
    # must name a real port (0 in the file would be a port no mail system can be pointed at).
    serve.add_argument("--any-port", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=command_serve)

    mint = commands.add_parser("address", help="print the gateway address of a record")
    mint.add_argument("model", help="Odoo model, e.g. project.task")
    mint.add_argument("res_id", type=int, help="record id")
    mint.add_argument("--kind", choices=address.KINDS, default="note")
    mint.add_argument("--domain", help="alias domain (needed when several are configured)")
    bound = mint.add_mutually_exclusive_group()
    bound.add_argument("--for", dest="for_email", metavar="EMAIL",
                       help="bind the address to the partner of this Odoo user (asks Odoo)")
    bound.add_argument("--partner-id", type=int, help="bind the address to this partner id (offline)")
    mint.add_argument("--online", action="store_true",
                      help="ask Odoo whether the record exists (--for always does) and warn if not")
    mint.add_argument("--dated", action="store_true",
                      help="sign the issue date, so that address_max_age_days can expire the address")
    mint.add_argument("--config", required=True)
    mint.set_defaults(func=command_address)

    journal = commands.add_parser("log", help="print recent journal rows")
    journal.add_argument("--config", required=True)
    journal.add_argument("--limit", type=_ROWS, default=20, help="at most this many rows, newest first (default: 20)")
    journal.add_argument("--verdict", choices=("filed", "duplicate", "refused", "deferred"))
    journal.add_argument("--sender", help="only messages from this From (or envelope) address")
    journal.add_argument("--since", help="only messages since an ISO time (UTC) or a duration: 30m, 2h, 7d")
    journal.add_argument("--record", help="only messages to MODEL or MODEL/ID, e.g. project.task/42")
    journal.add_argument("--domain", help="only messages through this alias domain")
    journal.add_argument("--odoo", help="only messages of this [odoo.NAME] connection's database")
    journal.add_argument("--message-id", metavar="MSG-ID",
                         help="only the rows of this Message-ID, with or without its <angle brackets>")
    journal.add_argument("--id", type=_ROWS, help="show one message's whole decision: stages, reply, defects")
    journal.set_defaults(func=command_log)

    prune = commands.add_parser("prune-journal", help="delete journal rows older than N days (safe while serving)")
    prune.add_argument("--config", required=True)
    prune.add_argument("--keep-days", type=int, required=True,
                       help="keep this many days of rows (at least the longest rate-limit window, and 1)")
    prune.add_argument("--ignore-unreadable-rules", action="store_true",
                       help="prune even when a rules file cannot be read, without checking its rate-limit window")
    prune.set_defaults(func=command_prune_journal)

    doctor = commands.add_parser("doctor", help="check config, resolver, Odoo, journal and certificate")
    doctor.add_argument("--config", required=True)
    doctor.set_defaults(func=command_doctor)

    check = commands.add_parser("check-config", help="validate the gateway file and rules files")
    check.add_argument("--config", required=True)
    check.add_argument("--online", action="store_true",
                       help="also log in to each Odoo and check groups, models, rules and the gateway's rights")
    check.set_defaults(func=command_check_config)

    dry = commands.add_parser("check", help="run the whole decision on a message without posting it")
    dry.add_argument("--config", required=True)
    dry.add_argument("--rcpt", required=True, help="the recipient address, as in RCPT TO")
    dry.add_argument("--mail-from", help="the envelope sender (default: the message's From address)")
    dry.add_argument("message", help="the message (.eml), DKIM signature included")
    dry.set_defaults(func=command_check)

    setup = commands.add_parser("setup-odoo", help="create the contributor group and the gateway's group in Odoo")
    setup.add_argument("--config", required=True)
    setup.add_argument("--odoo", help="only this [odoo.NAME] connection (default: all)")
    setup.add_argument("--admin-login", default="admin", help="an Odoo administrator (default: admin)")
    setup.add_argument("--admin-password", help="its password (prompted when not given; never stored)")
    setup.set_defaults(func=command_setup_odoo)

    send = commands.add_parser("send", help="sign a message with a DKIM key and send it over SMTP (for testing)")
    send.add_argument("--host", default="127.0.0.1")
    send.add_argument("--port", type=_PORT, default=2525)
    send.add_argument("--from", dest="sender", required=True)
    send.add_argument("--to", required=True)
    send.add_argument("--subject", default="")
    send.add_argument("--body", required=True)
    send.add_argument("--key", required=True, help="PEM private key of the sender domain's DKIM selector")
    send.add_argument("--selector", default="gateway")
    send.add_argument("--timeout", type=float, default=60, help="seconds to wait for each SMTP reply (default: 60)")
    send.add_argument("--lmtp", action="store_true",
                      help="speak LMTP (LHLO), for a listener with protocol = \"lmtp\"")
    send.set_defaults(func=command_send)

    demo = commands.add_parser("demo", help="run the whole product here against the bundled test Odoo")
    demo.add_argument("--keep-running", action="store_true", help="stay up and print how to send your own")
    demo.add_argument("--port", type=_PORT, help="SMTP port of the demo gateway (default: any free)")
    demo.set_defaults(func=command_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.credentials_directory:
        # For an admin running doctor or address by hand: the files systemd would hand over (log and
        # prune-journal read none).
        os.environ["CREDENTIALS_DIRECTORY"] = args.credentials_directory
    quiet = args.command in ("demo", "address", "log", "check-config", "send", "doctor", "check", "setup-odoo")
    from gateway import observe
    # Control characters a sender wrote are escaped in every diagnostic line (observe.printable).
    handler = logging.StreamHandler()
    handler.setFormatter(observe.PrintableFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
                        handlers=[handler])
    # aiosmtpd logs every SMTP line at INFO: useful when debugging, noise otherwise.
    logging.getLogger("mail.log").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    # Even with --verbose: odoorpc's DEBUG lines carry the Odoo API key, aiosmtpd's the message text.
    observe.keep_secrets_out_of_logs()
    observe.downgrade_handled_library_errors()
    try:
        status = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`note-gateway log | head`): stop quietly, as the Python docs advise
        # (signal module, "Note on SIGPIPE"); the interpreter's last flush would raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
