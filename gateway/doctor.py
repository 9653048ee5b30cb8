"""`note-gateway doctor`: check the config, the resolver, each Odoo, the journal and the certificate, and say what to fix."""

from __future__ import annotations

import email.utils
import json
import shutil
import sqlite3
import ssl
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from gateway import checks, odootransport, senderauth, tls
from gateway.attachments import size_text
from gateway.config import ConfigError, GatewayConfig, OdooConnection, load_config, shown_host
from gateway.render import checked_renderer
from gateway.observe import duration
from gateway.journal import FREE_SPACE_NEEDED, Journal, JournalNewer, JournalUnavailable, path_problem
from gateway.odoo import OdooPool
from gateway.refusals import DnsTemporaryFailure, OdooUnavailable
from gateway.resolver import DkimKeyResolver

# The journal's file system: below journal.FREE_SPACE_NEEDED every message is deferred soon (a
# message row and its receipt take a few KiB, SQLite's WAL grows by pages); below this, an operator
# should act.
JOURNAL_FREE_WARN_BYTES = 512 * 1024 * 1024
# Rows this old mean nobody prunes the journal (docs/operations.md suggests --keep-days 90).
JOURNAL_OLD_ROW_DAYS = 120
# Odoo 17 is the oldest release whose message_post and groups behave as ODOO_FACTS.md describes.
OLDEST_ODOO = 17
# The gateway's clock and Odoo's (the Date header of its answer) further apart than this fail: two
# synchronised clocks agree within a second, and one that drifts goes on drifting. The gateway's
# clock dates DKIM signatures: one dated further ahead of it than senderauth.ALLOWED_CLOCK_SKEW_SECONDS
# is deferred (day-2 operations review: with the gateway 20 minutes slow every fresh note was
# refused, and doctor said everything looked right).
CLOCK_SKEW_FAIL_SECONDS = 120


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    problems: int = 0
    warnings: int = 0

    def ok(self, what: str, detail: str) -> None:
        self.lines.append(f"ok    {what}: {detail}")

    def warn(self, what: str, detail: str, fix: str) -> None:
        self.warnings += 1
        self.lines.append(f"WARN  {what}: {detail}" + (f"\n      fix: {fix}" if fix else ""))

    def fail(self, what: str, detail: str, fix: str) -> None:
        self.problems += 1
        self.lines.append(f"FAIL  {what}: {detail}" + (f"\n      fix: {fix}" if fix else ""))


def check_resolver(config: GatewayConfig, report: Report) -> None:
    settings = config.gateway.resolver
    servers = ", ".join(f"{server}:{settings.port}" for server in settings.nameservers) or "the system's"
    try:
        resolver = DkimKeyResolver(settings.nameservers, port=settings.port, timeout=settings.timeout, cache=False)
    except Exception as error:  # dnspython: no /etc/resolv.conf, or no nameserver in it.
        report.fail("resolver", f"cannot be set up: {error}", "set [resolver] nameservers, or fix /etc/resolv.conf")
        return
    # Any answer, a key or NXDOMAIN, shows the resolver answers; silence or SERVFAIL is a fault
    # (and would defer every message with 451, see resolver.py).
    domain = sorted(config.domains)[0]
    name = f"note-gateway-doctor._domainkey.{domain}."
    started = time.monotonic()
    try:
        resolver(name.encode())
        # The probe above never exists, so a resolver answering NXDOMAIN for every name passed it
        # (operator review) while every sender's key would then be "missing": a permanent 550.
        # A name that always exists must be found: the root zone, or the alias domain's top-level
        # domain (for a resolver serving only its own zones, as in a closed test network).
        proofs = [".", domain.rsplit(".", 1)[-1] + "."]
        found = next((proof for proof in proofs if resolver.name_exists(proof)), None)
    except DnsTemporaryFailure as error:
        report.fail("resolver", f"{servers} nameservers: {error.operator_text}", _resolver_fix(error.causes))
        return
    if found is None:
        report.fail("resolver", f"{servers} nameservers answer NXDOMAIN for {' and '.join(proofs)}, names that "
                                "always exist: they would call every sender's DKIM key missing (550)",
                    "make [resolver] nameservers point at a working recursive resolver that resolves internet names")
        return
    lifetime = ""
    if resolver.timeout > settings.timeout:
        # resolver.lookup_lifetime: [resolver] timeout covers all the nameservers together.
        lifetime = (f"; a key lookup may take {resolver.timeout:g} s: each of the {resolver.nameserver_count} "
                    f"nameservers in turn, the last with [resolver] timeout {settings.timeout:g} s")
    report.ok("resolver", f"{servers} nameservers answered for {name} and found {found} in "
                          f"{(time.monotonic() - started) * 1000:.0f} ms{lifetime}")


# doctor's advice for each thing a nameserver did (DnsTemporaryFailure.causes): "reachable from this
# host" for all of them sent operators whose resolver's ACL refused the gateway to the network (DNS review).
_RESOLVER_FIXES = {
    "REFUSED": "let this host query the nameserver: add it to its access control (BIND allow-query and "
               "allow-recursion, Unbound access-control, dnsmasq's listen addresses), or make [resolver] "
               "nameservers point at one that serves it",
    "SERVFAIL": "the nameserver cannot resolve (SERVFAIL): check its upstream servers or forwarders and its DNSSEC "
                "validation, or make [resolver] nameservers point at a working recursive resolver",
    "TCP": "a DKIM key too large for UDP needs DNS over TCP: allow TCP port 53 from this host to the nameserver "
           "(firewall) and on the nameserver",
}
_REACHABLE_FIX = "make [resolver] nameservers point at a working recursive resolver reachable from this host"


def _resolver_fix(causes: frozenset[str]) -> str:
    fixes = [fix for cause, fix in _RESOLVER_FIXES.items() if cause in causes]
    if not fixes or causes - _RESOLVER_FIXES.keys():
        fixes.append(_REACHABLE_FIX)
    return "; ".join(fixes)


def odoo_clock_offset(connection: OdooConnection, clock: Callable[[], float] = time.time) -> float | None:
    """How far Odoo's clock is ahead of the gateway's (negative: behind), in seconds, by the Date
    header of an answer of Odoo (RFC 9110 section 6.6.1; Odoo's werkzeug, and a proxy in front of
    it, send one); None when the answer has none. Raises OSError when Odoo cannot be asked."""
    body = json.dumps({"jsonrpc": "2.0", "method": "call", "params": {}, "id": 1}).encode()
    request = urllib.request.Request(connection.url.rstrip("/") + "/web/webclient/version_info", data=body,
                                     headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=odootransport.tls_context(connection.ca_file)))
    sent = clock()
    with opener.open(request, timeout=connection.timeout) as answer:
        date = answer.headers.get("Date")
        answer.read()
    received = clock()
    if not date:
        return None
    try:
        stamped = email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return None
    # Date has whole seconds, stamped while the answer was made: taken as the middle of that second,
    # against the middle of the exchange.
    return stamped + 0.5 - (sent + received) / 2


def check_clock(config: GatewayConfig, name: str, report: Report, clock: Callable[[], float] = time.time) -> None:
    """The gateway's clock against Odoo's: DKIM's t= and x=, the signature's age, dated addresses and
    the API keys' expiry are all read by the gateway's clock."""
    connection = config.gateway.odoo[name]
    what = f"odoo {name}"
    fix = ("synchronise the clocks with NTP: on the gateway's host `timedatectl set-ntp true` (systemd-timesyncd) "
           "or chrony, and `timedatectl timesync-status` to see it work; if Odoo's host is the one that is wrong, "
           "there (docs/operations.md, \"Time\")")
    try:
        offset = odoo_clock_offset(connection, clock)
    except (OSError, ValueError) as error:
        report.warn(what, f"cannot compare the clocks: asking {connection.url} for its time failed: {error}",
                    "check the gateway's time synchronisation by hand: timedatectl timesync-status")
        return
    if offset is None:
        report.warn(what, "cannot compare the clocks: Odoo's answer has no Date header",
                    "check the gateway's time synchronisation by hand: timedatectl timesync-status")
        return
    if abs(offset) <= CLOCK_SKEW_FAIL_SECONDS:
        report.ok(what, f"the gateway's clock agrees with Odoo's within {max(abs(offset), 1):.0f} s")
        return
    skew = duration(senderauth.ALLOWED_CLOCK_SKEW_SECONDS)
    if offset > 0:
        effect = (f"DKIM signatures made now are dated ahead of the gateway's clock, and once that is more than "
                  f"{skew} every message is deferred (451 4.7.0) until the clocks agree; more than "
                  f"{duration(senderauth.MAX_DEFERRED_AHEAD_SECONDS)} ahead, every message is refused "
                  "(550 5.7.1) and bounces")
        report.fail(what, f"the gateway's clock is {duration(offset)} behind Odoo's: {effect}", fix)
    else:
        effect = ("the dates of DKIM signatures (t=, x=), of dated addresses and of the API keys' expiry are read "
                  "by a clock that runs ahead: signatures look older than they are and expire early")
        report.fail(what, f"the gateway's clock is {duration(offset)} ahead of Odoo's: {effect}", fix)


def check_odoo(config: GatewayConfig, name: str, report: Report) -> None:
    connection = config.gateway.odoo[name]
    what = f"odoo {name}"
    pool = OdooPool(name, connection, config.api_keys[name])
    deadline = lambda: time.monotonic() + connection.timeout  # noqa: E731 (one per call)
    try:
        try:
            version = pool.version(deadline())
        except OdooUnavailable as error:
            # Refused credentials and an unreachable Odoo need different fixes (found by an operator
            # review): the pool tells them apart and says which.
            report.fail(what, f"cannot log in: {error.explanation}",
                        error.fix or "check url, database and login, and that Odoo is running")
            return
        except Exception as error:  # noqa: BLE001 (anything else the login raised: any fault counts)
            report.fail(what, f"cannot log in to {connection.url} database {connection.database} as "
                              f"{connection.login}: {type(error).__name__}: {error}",
                        "check url, database and login, and that Odoo is running")
            return
        detail = f"logged in to {connection.url} database {connection.database} as {connection.login}, Odoo {version}"
        if version < OLDEST_ODOO:
            report.warn(what, detail, f"Odoo {OLDEST_ODOO} or newer is what the gateway was built against")
        else:
            report.ok(what, detail)
        check_clock(config, name, report)
        # The same checks as `check-config --online` (operator review: doctor said "everything looks
        # right" while every message was deferred, as setup-odoo had not been run).
        found = checks.Findings()
        checks.check_connection(config, name, pool, found)
        own = f"odoo.{name}: "  # Said once already by doctor's "odoo NAME:".
        for line in found.lines:
            report.ok(what, line.removeprefix(own))
        for warning in found.warnings:
            report.warn(what, warning.text.removeprefix(own), warning.fix)
        for error in found.errors:
            report.fail(what, error.text.removeprefix(own), error.fix)
    finally:
        pool.close()


def check_journal(config: GatewayConfig, report: Report, now: Callable[[], float] = time.time) -> None:
    path = config.journal_path
    folder = path.parent
    # What serve and check-config refuse at start (journal.path_problem), each with its own fix: a
    # folder was reported as "disk I/O error" with "move the damaged file away" (operator review).
    problem = path_problem(path)
    if problem is not None:
        if path.is_dir():
            fix = f"set [journal] path to a file name, e.g. {path / 'journal.sqlite3'}"
        elif not folder.is_dir():
            fix = "create it, owned by the gateway's user (StateDirectory= in the systemd unit does this)"
        else:
            fix = "run doctor as the gateway's user, or give that user the file and its folder"
        report.fail("journal", problem, fix)
        return
    # A full file system defers every message (451 "journal cannot be written") while the file
    # itself looks writable (a review: doctor said "everything looks right" meanwhile).
    free = shutil.disk_usage(folder).free if folder.is_dir() else JOURNAL_FREE_WARN_BYTES
    if free < FREE_SPACE_NEEDED:
        report.fail("journal", f"{folder} has {size_text(free)} free: every message is deferred (451) until there is room",
                    "free space on that file system")
        return
    if free < JOURNAL_FREE_WARN_BYTES:
        report.warn("journal", f"{folder} has {size_text(free)} free", "free space on that file system, or prune the "
                    "journal: note-gateway prune-journal --keep-days 90 (docs/operations.md)")
    if not path.exists():
        report.ok("journal", f"{path} does not exist yet; the gateway will create it")
        return
    repair = ("stop the gateway, then `sqlite3 journal.sqlite3 .recover | sqlite3 recovered.sqlite3` and put the "
              "recovered file in its place; moving the file away instead drops its receipts and unsettled posts, "
              "so a message being filed may be filed twice")
    try:
        with Journal(path, read_only=True) as journal:
            damage, oldest = journal.health()
    except JournalNewer as error:
        # Not damaged: written by a newer gateway, and .recover would not make it older (day-2
        # operations review of upgrades: doctor told a downgraded gateway's admin to recover it).
        report.fail("journal", str(error), "a newer gateway migrated it, and migrations have no step back: install "
                    "that version (or a newer one) again, or stop the gateway and put back the journal's backup taken "
                    "before the upgrade (docs/operations.md, \"Upgrading\")")
        return
    except (JournalUnavailable, sqlite3.Error) as error:
        report.fail("journal", str(error), repair)
        return
    if damage is not None:
        report.fail("journal", f"{path} is damaged: {damage}", repair)
        return
    size = sum(file.stat().st_size for file in (path, path.with_name(path.name + "-wal")) if file.exists())
    detail = f"{path} is writable, {size_text(size)}"
    if oldest is None:
        report.ok("journal", detail + ", no message yet")
        return
    age_days = (now() - oldest) / 86400
    detail += f", its oldest row {age_days:.0f} days old"
    if age_days > JOURNAL_OLD_ROW_DAYS:
        # The gateway never deletes a row: nothing else tells that the file only grows.
        report.warn("journal", detail, "prune it daily from a timer: note-gateway prune-journal --keep-days 90 "
                    "(docs/operations.md)")
        return
    report.ok("journal", detail)


def check_certificate(config: GatewayConfig, report: Report, now: Callable[[], datetime]) -> None:
    files = config.tls_files
    listener = config.gateway.listener
    if files is None:
        if listener.host not in ("127.0.0.1", "::1", "localhost"):
            report.warn("tls", f"no certificate, yet the listener is on {shown_host(listener.host)}",
                        "set [listener] tls_certificate, tls_key and require_starttls when it faces the internet")
        else:
            report.ok("tls", "no certificate (loopback listener)")
        return
    certificate, key = files
    try:
        tls.server_context(certificate, key)
        not_after = tls.certificate_not_after(certificate)
    except (OSError, ssl.SSLError, ValueError) as error:
        report.fail("tls", f"{certificate} / {key}: {error}",
                    "point tls_certificate at the PEM chain and tls_key at its matching private key")
        return
    days = (not_after - now()).total_seconds() / 86400
    stamp = not_after.strftime("%Y-%m-%d %H:%M UTC")
    if days < 0:
        report.fail("tls", f"{certificate} expired on {stamp}", "renew it, then systemctl reload note-gateway")
    elif days < checks.EXPIRY_WARNING_DAYS:
        report.warn("tls", f"{certificate} expires on {stamp}, in {days:.0f} days",
                    "renew it, then systemctl reload note-gateway")
    else:
        report.ok("tls", f"{certificate} valid until {stamp} ({days:.0f} days)")


def diagnose(config_path: str, now: Callable[[], datetime] | None = None) -> Report:
    report = Report()
    try:
        config = load_config(config_path)
    except ConfigError as error:
        report.fail("config", str(error), "correct that key; `note-gateway check-config` says the same")
        return report
    report.ok("config", f"{config.path}, alias domains {', '.join(sorted(config.domains))}")
    # What check-config prints as "warning:" (a world-readable key, notices asked without a
    # smarthost): doctor said "everything looks right" over them.
    for warning in config.warnings:
        report.warn("config", warning, "")
    try:
        renderer = checked_renderer(config, log_warnings=False)  # shown as WARN lines
        names = renderer.check()
    except ConfigError as error:
        report.fail("templates", str(error), "correct that template; serve would not start with it")
    else:
        report.ok("templates", f"{len(names)} templates compile and render")
        for warning in renderer.warnings:
            report.warn("templates", warning, "rename the file as the gateway looks for it, or remove it "
                                              "(docs/content.md \"Templates\")")
    check_resolver(config, report)
    for name in sorted(config.gateway.odoo):
        check_odoo(config, name, report)
    check_journal(config, report)
    check_certificate(config, report, now or (lambda: datetime.now(timezone.utc)))
    return report


def run_doctor(config_path: str) -> int:
    report = diagnose(config_path)
    print("\n".join(report.lines))
    summary = f"{report.problems} problem(s), {report.warnings} warning(s)"
    print(summary if report.problems or report.warnings else "everything looks right")
    sys.stdout.flush()
    return 1 if report.problems else 0
