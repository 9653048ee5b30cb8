"""The real ``dnsmasq`` serving given TXT records on loopback: the DNS server of the end-to-end tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

# The longest character-string a TXT record can hold (RFC 1035 section 3.3.14).
TXT_STRING_LIMIT = 255


def dnsmasq_binary() -> str | None:
    """Where dnsmasq is installed; Debian puts it in /usr/sbin, often not on a user's PATH."""
    for candidate in (shutil.which("dnsmasq"), "/usr/sbin/dnsmasq", "/usr/local/sbin/dnsmasq"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def available() -> bool:
    """Whether the dnsmasq binary is installed (Debian: dnsmasq-base)."""
    return dnsmasq_binary() is not None


class Dnsmasq:
    """A dnsmasq process answering for the given TXT records, and NXDOMAIN for every other name.

    The records go into a configuration file of their own rather than onto the command line:
    only the file parser removes the double quotes that let a string hold commas and spaces,
    and on the command line the quotes would end up inside the record.
    """

    def __init__(self, records: dict[str, str] | None = None, host: str = "127.0.0.1",
                 ttl: int = 300) -> None:
        self.records = dict(records or {})
        self.host = host
        self.ttl = ttl
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._directory: tempfile.TemporaryDirectory[str] | None = None

    @staticmethod
    def available() -> bool:
        return available()

    def start(self, startup_timeout: float = 10.0) -> Dnsmasq:
        binary = dnsmasq_binary()
        if binary is None:
            raise FileNotFoundError("dnsmasq is not installed (Debian package dnsmasq-base)")
        self._directory = tempfile.TemporaryDirectory(prefix="note-gateway-dnsmasq-")
        directory = Path(self._directory.name)
        config = directory / "dnsmasq.conf"
        config.write_text("".join(f"txt-record={_txt_record_line(name, value)}\n"
                                  for name, value in self.records.items()), encoding="utf-8")
        log_path = directory / "dnsmasq.log"
        # The port is free when chosen and taken a moment later by dnsmasq; if another program
        # takes it in between, dnsmasq exits at once and another port is tried.
        for _attempt in range(10):
            port = _free_port(self.host)
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    [binary, "--no-daemon", f"--conf-file={config}", "--no-resolv", "--no-hosts",
                     "--bind-interfaces", f"--listen-address={self.host}", f"--port={port}",
                     "--pid-file=", "--log-facility=-", f"--local-ttl={self.ttl}",
                     # Answer NXDOMAIN for every name not configured instead of REFUSED: with
                     # no upstream, dnsmasq refuses what it may not forward.
                     "--local=/#/"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            if self._wait_until_answering(process, port, startup_timeout):
                self._process, self.port = process, port
                return self
            _end(process)
        log_text = log_path.read_text(encoding="utf-8", errors="replace")
        self._cleanup()
        raise RuntimeError(f"dnsmasq did not start on {self.host}: {log_text[-2000:]}")

    def stop(self) -> None:
        if self._process is not None:
            _end(self._process)
            self._process = None
        self._cleanup()

    def __enter__(self) -> Dnsmasq:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _cleanup(self) -> None:
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None

    def _wait_until_answering(self, process: subprocess.Popen[bytes], port: int,
                              timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        probe = dns.message.make_query("startup-probe.invalid.", "TXT")
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                reply = dns.query.udp(probe, self.host, port=port, timeout=0.2)
            except (dns.exception.Timeout, OSError):
                continue
            if reply.rcode() == dns.rcode.NXDOMAIN:
                return True
        return False


def _txt_record_line(name: str, value: str) -> str:
    if any(character in name + value for character in "\r\n\0"):
        raise ValueError("a TXT record for dnsmasq cannot hold CR, LF or NUL")
    # dnsmasq would cut a long string into 255-byte pieces itself; cutting here keeps the
    # pieces the same as the ones DnsServer publishes, and works on older dnsmasq releases.
    strings: list[str] = [""]
    for character in value:
        if len((strings[-1] + character).encode("utf-8")) > TXT_STRING_LIMIT:
            strings.append("")
        strings[-1] += character
    quoted = ",".join('"' + piece.replace("\\", "\\\\").replace('"', '\\"') + '"' for piece in strings)
    return f"{name.rstrip('.')},{quoted}"


def _free_port(host: str) -> int:
    # dnsmasq listens on UDP and TCP with the same number, so the port must be free for both.
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
