"""A real Postfix instance of its own, configured in a temporary folder, as the MTA in front of the gateway."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"

# Only the services a relay needs. chroot is off ("n"): the instance's queue is in a temporary
# folder, not under a chroot prepared by Debian's scripts.
_MASTER_CF = """\
{listen} inet n - n - {maxproc} smtpd
{options}cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
lmtp      unix  - - n - - lmtp
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def available() -> bool:
    """Whether Debian's postfix package is installed and this process may run it (it needs root)."""
    import os

    return Path(POSTFIX).is_file() and os.geteuid() == 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class Postfix:
    """``postfix -c DIR start`` with a main.cf written from ``settings``; stopped and removed on exit.

    ``transports`` maps a domain to a Postfix next hop (``smtp:[127.0.0.1]:2525``); it becomes a
    texthash transport map, which needs no postmap.

    The listening smtpd is the master.cf service ``smtp inet n - n - <smtpd_maxproc> smtpd`` with
    ``smtpd_options`` as its ``-o name=value`` lines (a before-queue ``smtpd_proxy_filter``, as
    docs/operations.md sets it up); ``services`` are further master.cf lines (a dedicated
    ``notegw unix - - n - 20 lmtp`` transport).
    """

    def __init__(self, *, relay_domains: list[str], transports: dict[str, str],
                 settings: dict[str, str] | None = None, hostname: str = "mx.test.example",
                 smtpd_options: dict[str, str] | None = None, smtpd_maxproc: str = "-",
                 services: list[str] | None = None) -> None:
        self.relay_domains = relay_domains
        self.transports = transports
        self.settings = dict(settings or {})
        self.smtpd_options = dict(smtpd_options or {})
        self.smtpd_maxproc = smtpd_maxproc
        self.services = list(services or [])
        self.hostname = hostname
        self.port = 0
        self.directory: Path | None = None

    @property
    def config_directory(self) -> Path:
        assert self.directory is not None
        return self.directory / "etc"

    @property
    def log_path(self) -> Path:
        assert self.directory is not None
        return self.directory / "maillog"

    def start(self) -> Postfix:
        # Under /tmp rather than pytest's folder: Postfix's daemons run as the postfix user and
        # must reach the queue, and pytest's folders are root's alone (0700).
        self.directory = Path(tempfile.mkdtemp(prefix="note-gateway-postfix-"))
        self.directory.chmod(0o755)
        etc = self.config_directory
        etc.mkdir()
        (self.directory / "spool").mkdir()
        data = self.directory / "data"
        data.mkdir()
        shutil.chown(data, "postfix", "postfix")
        (etc / "transport").write_text("".join(f"{domain} {nexthop}\n" for domain, nexthop in self.transports.items()))
        self.port = free_port()
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.directory / "spool"),
            "data_directory": str(self.directory / "data"),
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.directory),
            "myhostname": self.hostname,
            "mydomain": "test.example",
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "local_transport": "error:no local delivery in this test instance",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": ", ".join(self.relay_domains),
            "transport_maps": f"texthash:{etc / 'transport'}",
            # No DNS on the test machine: every next hop is a [numeric] address from transport_maps.
            "smtp_dns_support_level": "disabled",
            "lmtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            # A test must see a result in seconds, not after Postfix's default back-off.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtp_connect_timeout": "5s",
            "lmtp_connect_timeout": "5s",
            "daemon_timeout": "60s",
            "shlib_directory": "/usr/lib/postfix",
            "meta_directory": "/etc/postfix",
            "daemon_directory": "/usr/lib/postfix/sbin",
            **self.settings,
        }
        (etc / "main.cf").write_text("".join(f"{key} = {value}\n" for key, value in main.items()))
        options = "".join(f"  -o {name}={value}\n" for name, value in self.smtpd_options.items())
        (etc / "master.cf").write_text(_MASTER_CF.format(listen=f"127.0.0.1:{self.port}", maxproc=self.smtpd_maxproc,
                                                         options=options)
                                       + "".join(f"{line}\n" for line in self.services))
        for name in ("dynamicmaps.cf", "postfix-files"):
            if (Path("/etc/postfix") / name).exists():
                shutil.copy(Path("/etc/postfix") / name, etc / name)
        self._postfix("check")
        self._postfix("start")
        self._wait_until_listening()
        return self

    def _postfix(self, *command: str) -> str:
        result = subprocess.run([POSTFIX, "-c", str(self.config_directory), *command], capture_output=True,
                                text=True, timeout=60)
        if result.returncode != 0:
            # postfix(1) writes its reasons to stderr only when that is a terminal: ask again
            # through script(1) to have them in the error.
            reasons = ""
            if shutil.which("script"):
                line = " ".join([POSTFIX, "-c", str(self.config_directory), *command])
                reasons = subprocess.run(["script", "-qc", line, "/dev/null"], capture_output=True, text=True,
                                         timeout=60).stdout
            raise RuntimeError(f"postfix {' '.join(command)} failed: {result.stdout}{result.stderr}{reasons}"
                               f"{self.log()}")
        return result.stdout + result.stderr

    def _wait_until_listening(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                    if connection.recv(512).startswith(b"220"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"postfix did not listen on {self.port}: {self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_log(self, *texts: str, timeout: float = 30) -> str:
        """Wait until the mail log has a line containing every one of ``texts``; return that line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log().splitlines():
                if all(text in line for text in texts):
                    return line
            time.sleep(0.1)
        raise AssertionError(f"no log line with {texts!r} in:\n{self.log()}")

    def queue(self) -> str:
        """``postqueue -p`` of this instance: what is still waiting."""
        result = subprocess.run(["/usr/sbin/postqueue", "-c", str(self.config_directory), "-p"],
                                capture_output=True, text=True, timeout=30)
        return result.stdout + result.stderr

    def stop(self) -> None:
        if self.directory is None:
            return
        try:
            pid_file = self.directory / "spool" / "pid" / "master.pid"
            try:
                master = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                master = None
            # "abort" stops the master at once instead of waiting for its children to finish
            # their sessions, as "stop" does; nothing of a test instance needs to survive.
            subprocess.run([POSTFIX, "-c", str(self.config_directory), "abort"], capture_output=True, timeout=60)
            deadline = time.monotonic() + 10
            while master is not None and Path(f"/proc/{master}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> Postfix:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
