"""Several processes on one listening socket (listener.workers): the supervisor that starts, watches and stops them."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from gateway.config import (ConfigError, GatewayConfig, load_config, reload_warnings, restart_values, shown_address,
                            signing_lines, domain_odoo_identities)
from gateway.render import checked_renderer

log = logging.getLogger("gateway")

# A worker that dies this often within this many seconds is not healing: the supervisor stops and
# exits 1, and the service manager (systemd's Restart=on-failure) takes over.
CRASH_LIMIT, CRASH_WINDOW = 5, 60.0
PR_SET_PDEATHSIG = 1
# The environment variable in which a worker gets the supervisor's values of config.RESTART_SETTINGS.
RESTART_VALUES = "NOTE_GATEWAY_RESTART_VALUES"
# The lock file of the claims (pipeline.in_flight_path) as the supervisor started: one for all workers.
IN_FLIGHT = "NOTE_GATEWAY_IN_FLIGHT"


def bind(host: str, port: int, backlog: int = 100, *, reuse_port: bool = False) -> list[socket.socket]:
    """Listening sockets for every address of ``host``, as asyncio's create_server would make them;
    with ``reuse_port``, each joins the group of sockets bound to its address with SO_REUSEPORT."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, protocol, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, protocol)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                # As asyncio does: "::" takes IPv6 only, so "0.0.0.0" beside it does not collide.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and sockets[0] is not sock:
                # Port 0 (tests): the port the system picked for the first address, for every one.
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(backlog)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def bind_per_worker(host: str, port: int, count: int) -> list[list[socket.socket]]:
    """The listening sockets of each of ``count`` workers: its own, in an SO_REUSEPORT group per address.

    The kernel then spreads new connections over the workers (by a hash of the client's address and
    port). On one socket shared by all, the worker whose event loop woke first took every
    connection waiting (asyncio accepts up to the backlog at a time): under a burst, measured in
    benchmark 1, one worker held 70 % of the sessions, and so of the CPU, while the other idled.
    A worker started again after a crash gets its predecessor's sockets, and the connections
    waiting on them. Without SO_REUSEPORT (not Linux or a BSD), all workers share one set.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        return [bind(host, port)] * count
    groups: list[list[socket.socket]] = []
    try:
        for _ in range(count):
            group = bind(host, port, reuse_port=True)
            groups.append(group)
            port = group[0].getsockname()[1]  # port 0 (tests): the one the system picked, for all
    except OSError:
        for group in groups:
            for sock in group:
                sock.close()
        raise
    return groups


def die_with_supervisor(supervisor: int) -> None:
    """Have the kernel kill this worker when its supervisor dies (Linux), so a killed gateway is gone whole.

    ``kill -9`` of the main process then means what it means for a single process: every session is
    cut, the senders retry, and a restart finds the port free and the receipts to recover.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != supervisor:
        # The supervisor died before the request above was made.
        os._exit(1)


class Supervisor:
    """Starts ``listener.workers`` copies of ``note-gateway serve`` on inherited sockets and keeps them running."""

    def __init__(self, config_path: str, config: GatewayConfig, *, port: int | None = None) -> None:
        self.config_path = config_path
        self.config = config
        # The Odoo of each alias domain as the last configuration taken says it (odoo_change_warnings).
        self.odoo_in_force = domain_odoo_identities(config)
        # listener.port unless given (serve --any-port, for the tests: 0, a port the system picks).
        self.port = config.gateway.listener.port if port is None else port
        self.count = config.gateway.listener.workers
        # The listening sockets of each worker (bind_per_worker).
        self.sockets: list[list[socket.socket]] = []
        self.workers: dict[int, subprocess.Popen] = {}
        self.crashes: list[float] = []
        self.metrics_dir: str | None = None
        self.journal_lock: int | None = None
        self._stop = False
        self._reload = False

    def _environment(self, index: int) -> dict[str, str]:
        from gateway.pipeline import in_flight_path

        environment = {**os.environ, "NOTE_GATEWAY_WORKER": str(index), "NOTE_GATEWAY_SUPERVISOR": str(os.getpid()),
                       # A worker started again after a reload reads the files as they are now: the
                       # settings that need a restart (the protocol, the bounds, ...) are the supervisor's.
                       RESTART_VALUES: json.dumps(restart_values(self.config)),
                       IN_FLIGHT: str(in_flight_path(self.config))}
        if self.metrics_dir is not None:
            # prometheus_client reads it when it is imported: every worker writes its counters to
            # files there, and the supervisor serves their sum on the one metrics port.
            environment["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        return environment

    def _spawn(self, index: int) -> None:
        fds = [sock.fileno() for sock in self.sockets[index]]
        command = [sys.executable, "-m", "gateway", "serve", "--config", self.config_path,
                   "--listen-fds", ",".join(map(str, fds))]
        # The worker starts with SIGHUP blocked, and unblocks it once its handler is in place
        # (cli.command_serve): until then SIGHUP's default action would kill it, and a reload
        # forwarded while it starts (or a burst of them) would look like a crash. A SIGHUP that came
        # meanwhile stays pending and is handled then: a reload that re-reads the files the worker
        # has just read, harmless, and never lost if they changed after it read them.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            self.workers[index] = subprocess.Popen(command, pass_fds=fds, env=self._environment(index))
        finally:
            if signal.SIGHUP not in blocked:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        log.info("worker %d started (pid %d)", index, self.workers[index].pid)

    def _serve_metrics(self) -> None:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        metrics = self.config.gateway.metrics
        assert metrics is not None and self.metrics_dir is not None
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.metrics_dir)
        start_http_server(metrics.port, addr=metrics.host, registry=registry)
        log.info("metrics on http://%s:%d/metrics (%d workers)", metrics.host, metrics.port, self.count)

    def _on_signal(self, number: int, frame) -> None:
        if number == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True

    def _forward_reload(self) -> None:
        # Checked here once, so a broken file is reported once and no worker is asked to read it.
        try:
            config = load_config(self.config_path)
            checked_renderer(config, log_warnings=False)  # logged with the others just below
        except (ConfigError, OSError, ValueError) as error:
            log.error("reload refused, the previous rules stay in force: %s", error)
            return
        for warning in reload_warnings(config, self.config, self.odoo_in_force):
            log.warning("%s", warning)
        self.odoo_in_force = domain_odoo_identities(config)
        for line in signing_lines(config):
            log.info("%s", line)
        for worker in self.workers.values():
            if worker.poll() is None:
                worker.send_signal(signal.SIGHUP)

    def _reap(self) -> bool:
        """Restart the workers that died; False when they die too often to go on."""
        for index, worker in list(self.workers.items()):
            code = worker.poll()
            if code is None:
                continue
            log.error("worker %d (pid %d) exited with %s; starting it again", index, worker.pid, code)
            self._recover(worker.pid)
            if self.metrics_dir is not None:
                from prometheus_client import multiprocess
                multiprocess.mark_process_dead(worker.pid, self.metrics_dir)
            now = time.monotonic()
            self.crashes = [moment for moment in self.crashes if now - moment < CRASH_WINDOW] + [now]
            if len(self.crashes) > CRASH_LIMIT:
                log.error("%d worker exits within %.0f s: stopping", len(self.crashes), CRASH_WINDOW)
                return False
            self._spawn(index)
        return True

    def _recover(self, pid: int | None = None) -> None:
        """The receipts of a dead worker (or, at start, of a stopped gateway): unsettled posts now."""
        from gateway.journal import Journal, JournalUnavailable

        try:
            with Journal(self.config.journal_path) as journal:
                odoo_of = {domain: rules.odoo for domain, rules in self.config.domains.items()}
                for entry in journal.recover_interrupted(pids=None if pid is None else [pid], odoo_of=odoo_of):
                    log.warning("interrupted by the %s, the sender will retry: %s to %s",
                                "previous stop" if pid is None else f"death of worker pid {pid}",
                                entry.message_id or "-", entry.rcpt)
        except JournalUnavailable as error:
            if pid is None:
                raise
            # Its receipts stay: the post stage takes them for unsettled posts all the same, and the next start recovers them.
            log.error("receipts of worker pid %d not recovered: %s", pid, error)

    def _stop_workers(self) -> None:
        # New connections are refused once the workers close their copies too.
        for sock in {sock for group in self.sockets for sock in group}:
            sock.close()
        for worker in self.workers.values():
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        listener = self.config.gateway.listener
        # Each worker lets its sessions finish within the grace, then waits for the pipelines
        # still running, each bounded by the message deadline.
        ends = time.monotonic() + listener.shutdown_grace + listener.message_deadline + 10
        for worker in self.workers.values():
            try:
                worker.wait(timeout=max(0.1, ends - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop in time: killed", worker.pid)
                worker.kill()
                worker.wait()

    def run(self) -> int:
        from gateway.journal import JournalInUse, JournalUnavailable, lock_journal

        listener = self.config.gateway.listener
        # Held for the supervisor's life (not inherited by the workers): no second gateway recovers
        # the receipts of the messages this one's workers are filing.
        try:
            self.journal_lock = lock_journal(self.config.journal_path)
        except JournalInUse as error:
            log.error("%s", error)
            return 1
        except OSError as error:
            log.error("cannot lock the journal %s: %s", self.config.journal_path, error.strerror or error)
            return 1
        # Once for all workers: a worker started again later must not take the receipts of the
        # messages its siblings are filing for those of a stopped gateway.
        try:
            self._recover()
        except JournalUnavailable as error:
            # A full disk at a restart ended in a traceback (a review); one line, as serve says it.
            log.error("%s", error)
            return 1
        try:
            self.sockets = bind_per_worker(listener.host, self.port, self.count)
        except OSError as error:
            log.error("cannot listen on %s: %s", shown_address(listener.host, self.port), error.strerror or error)
            return 1
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(number, self._on_signal)
        code = 0
        try:
            if self.config.gateway.metrics is not None:
                self.metrics_dir = tempfile.mkdtemp(prefix="note-gateway-metrics-")
                try:
                    self._serve_metrics()
                except OSError as error:
                    metrics = self.config.gateway.metrics
                    log.error("cannot serve metrics on %s:%d: %s", metrics.host, metrics.port,
                              error.strerror or error)
                    return 1
            for index in range(self.count):
                self._spawn(index)
            port = self.sockets[0][0].getsockname()[1]
            log.info("listening on %s (%s, %d workers) for %s", shown_address(listener.host, port),
                     listener.protocol.upper(), self.count, ", ".join(sorted(self.config.domains)))
            for line in signing_lines(self.config):
                log.info("%s", line)
            while not self._stop:
                if self._reload:
                    self._reload = False
                    self._forward_reload()
                if not self._reap():
                    code = 1
                    break
                time.sleep(0.2)
            log.info("stopping: no new sessions, up to %g s for messages in flight", listener.shutdown_grace)
        finally:
            self._stop_workers()
            if self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
        log.info("stopped")
        return code


def inherited_sockets(fds: str) -> list[socket.socket]:
    """The listening sockets a worker was handed by its supervisor (``--listen-fds 3,4``)."""
    return [socket.socket(fileno=int(fd)) for fd in fds.split(",") if fd]


def supervisor_pid() -> int | None:
    value = os.environ.get("NOTE_GATEWAY_SUPERVISOR")
    return int(value) if value else None


def running_restart_values() -> dict[str, object] | None:
    """The supervisor's values of the settings that need a restart, which a worker keeps whatever the files say."""
    value = os.environ.get(RESTART_VALUES)
    return json.loads(value) if value else None


def inherited_in_flight_path() -> str | None:
    """The lock file of the claims the supervisor gave its workers."""
    return os.environ.get(IN_FLIGHT) or None


def worker_index() -> int | None:
    value = os.environ.get("NOTE_GATEWAY_WORKER")
    return int(value) if value else None

