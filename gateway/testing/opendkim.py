"""A real OpenDKIM milter in sign mode, with a key made by opendkim-genkey: an independent signer for tests."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from gateway.testing.postfix import free_port

OPENDKIM = "/usr/sbin/opendkim"
GENKEY = "/usr/sbin/opendkim-genkey"


def available() -> bool:
    """Whether Debian's opendkim and opendkim-tools are installed."""
    return Path(OPENDKIM).is_file() and Path(GENKEY).is_file()


class OpenDkim:
    """``opendkim -f`` signing mail of ``domain`` from 127.0.0.1, listening for milter connections on loopback."""

    def __init__(self, domain: str, selector: str = "odkim") -> None:
        self.domain = domain
        self.selector = selector
        self.port = 0
        self.txt_record = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._directory: Path | None = None

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def milter(self) -> str:
        """The address Postfix's smtpd_milters takes."""
        return f"inet:127.0.0.1:{self.port}"

    def start(self) -> OpenDkim:
        self._directory = Path(tempfile.mkdtemp(prefix="note-gateway-opendkim-"))
        directory = self._directory
        subprocess.run([GENKEY, "-b", "2048", "-h", "sha256", "-d", self.domain, "-s", self.selector,
                        "-D", str(directory)], check=True, capture_output=True, timeout=60)
        self.txt_record = _zone_txt(directory / f"{self.selector}.txt")
        self.port = free_port()
        log_path = directory / "opendkim.log"
        (directory / "opendkim.conf").write_text("\n".join([
            "Mode s",
            f"Domain {self.domain}",
            f"Selector {self.selector}",
            f"KeyFile {directory / (self.selector + '.private')}",
            f"Socket inet:{self.port}@127.0.0.1",
            "InternalHosts 127.0.0.1",
            "Canonicalization relaxed/simple",
            "SignatureAlgorithm rsa-sha256",
            "OversignHeaders From",
            # The key is in a temporary folder of the test, not in a folder only opendkim may read.
            "RequireSafeKeys no",
            "Syslog no",
            "Background no",
            "",
        ]))
        with log_path.open("ab") as log:
            self._process = subprocess.Popen([OPENDKIM, "-f", "-x", str(directory / "opendkim.conf")],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 15
        import socket

        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"opendkim exited: {log_path.read_text(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"opendkim did not listen on {self.port}: {log_path.read_text(errors='replace')}")

    def stop(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    # opendkim lingers about five seconds after SIGTERM; a test signer has
                    # nothing to finish, so it gets one.
                    self._process.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            self._process = None
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def __enter__(self) -> OpenDkim:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _zone_txt(path: Path) -> str:
    """The TXT value of opendkim-genkey's zone-file snippet: its quoted strings joined."""
    return "".join(re.findall(r'"([^"]*)"', path.read_text()))
