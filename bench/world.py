"""What a benchmark runs against: the test Odoo, a DNS server, a gateway or a bare sink, each in its own process."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

from gateway import address
from gateway.testing.configs import fresh_secret, write_gateway_config
from gateway.testing.dkim import DkimKey, sign
from gateway.testing.odoo_demo import DEMO_API_KEY, PAULA_EMAIL, SALE_ORDER_ID, TASK_ID
from gateway.testing.sending import compose

from bench.client import dot_stuff

ALIAS_DOMAIN = "notes.example.com"
SENDER_DOMAIN = PAULA_EMAIL.rpartition("@")[2]
SELECTOR = "bench"
# Made for each run: a secret written here would be published, and load_config refuses those.
SECRET = fresh_secret()
REPOSITORY = Path(__file__).resolve().parent.parent
# Odoo's cost as measured on a real Odoo 18 (ODOO_FACTS.md k, rounded): 25 ms per note, 10 ms per read.
ODOO_LATENCY = "message_post=0.025,*=0.010"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def _environment() -> dict[str, str]:
    # The children import the gateway from this checkout, as the tests do.
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))}


@contextlib.contextmanager
def process(arguments: list[str], port: int) -> Iterator[subprocess.Popen]:
    """A child process that serves on ``port``; stopped with SIGTERM (as systemd would) on exit."""
    # The log goes to a file: a pipe nobody reads while the bench runs fills up and blocks the child.
    log = tempfile.TemporaryFile()
    child = subprocess.Popen(arguments, cwd=REPOSITORY, env=_environment(), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_for_port(port, child)
        yield child
    except BaseException:
        child.kill()
        raise
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        log.seek(0)
        errors = log.read().decode(errors="replace")
        log.close()
        if re.search(r"Traceback|ERROR", errors):
            print(f"--- stderr of {' '.join(arguments[:4])} ---\n{errors[-4000:]}", file=sys.stderr)


@contextlib.contextmanager
def test_odoo(latency: str = "") -> Iterator[str]:
    """The bundled test Odoo with the demo records, in its own process; yields its URL."""
    port = free_port()
    arguments = [sys.executable, "-m", "gateway.testing.odoo", "--port", str(port), "--demo"]
    if latency:
        arguments += ["--latency", latency]
    with process(arguments, port):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def sink() -> Iterator[int]:
    """A bare aiosmtpd server with a do-nothing handler: the ceiling for any aiosmtpd-based server."""
    port = free_port()
    with process([sys.executable, "-m", "bench.sink", "--port", str(port)], port):
        yield port


def write_config(folder: Path, odoo_url: str, dns_port: int, smtp_port: int, *, pool_size: int = 4,
                 max_sessions: int = 100, max_sessions_per_ip: int = 20, max_message_size: int = 20 * 1024 * 1024,
                 odoo_extra: str = "", workers: int = 1) -> Path:
    return write_gateway_config(
        folder, odoo_url=odoo_url, api_key=DEMO_API_KEY, dns_port=dns_port, smtp_port=smtp_port,
        alias_domain=ALIAS_DOMAIN, secret=SECRET,
        listener={"max_sessions": max_sessions, "max_sessions_per_ip": max_sessions_per_ip,
                  "max_message_size": max_message_size, "workers": workers},
        odoo={"pool_size": pool_size}, odoo_extra=odoo_extra,
        # One sender sends thousands of messages here: the flood guard (20 in 120 minutes, issue 4)
        # would measure itself, not the pipeline.
        rules_extra="[rate_limit]\nper_sender = 0\nper_record = 0")


@contextlib.contextmanager
def gateway(config: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    """``note-gateway serve`` in its own process, as it runs in production; yields (port, process)."""
    text = config.read_text()
    port = int(re.search(r"^port = (\d+)$", text, re.MULTILINE).group(1))
    with process([sys.executable, "-m", "gateway", "serve", "--config", str(config)], port) as child:
        yield port, child


def note_address(res_id: int = TASK_ID, model: str = "project.task") -> str:
    return address.mint(SECRET.encode(), ALIAS_DOMAIN, "note", model, res_id)


def _body(size: int) -> str:
    # Prose-like lines of 72 characters, as a contributor's report would be.
    line = "The seal of pump P-7 is worn; replacement is planned within two weeks. "
    lines = []
    total = 0
    counter = 0
    while total < size:
        counter += 1
        text = f"{counter:06d} {line}"[:72]
        lines.append(text)
        total += len(text) + 2
    return "\n".join(lines) + "\n"


def signed_messages(key: DkimKey, count: int, size: int, *, records: tuple[tuple[str, int], ...] | None = None,
                    ) -> list[tuple[str, str, bytes]]:
    """``count`` DKIM-signed notes from Paula of about ``size`` bytes, each with its own Message-ID,
    ready for the client: (mail_from, rcpt, dot-stuffed payload)."""
    records = records or (("project.task", TASK_ID), ("sale.order", SALE_ORDER_ID))
    body = _body(max(size - 1200, 100))  # headers and the DKIM signature take about 1.2 KB
    messages = []
    for index in range(count):
        model, res_id = records[index % len(records)]
        to = note_address(res_id, model)
        raw = compose(PAULA_EMAIL, to, f"Bench note {index}", body, sender_name="Paula Contributor",
                      message_id=f"<bench-{uuid.uuid4().hex}@{SENDER_DOMAIN}>")
        messages.append((PAULA_EMAIL, to, dot_stuff(sign(raw, key, SENDER_DOMAIN, SELECTOR))))
    return messages


def peak_rss_kib(pid: int) -> int:
    """VmHWM, the peak resident set of a process, from /proc (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE).group(1))
