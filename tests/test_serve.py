"""`note-gateway serve` as a process: JSON message lines, the metrics port, SIGHUP reload, SIGTERM stop."""

from __future__ import annotations

import base64
import json
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import Mailer, write_config
from serving import Port, send

from gateway.testing.odoo_demo import DEMO_API_KEY, SALE_ORDER_ID, TASK_ID
from gateway.testing.sending import deliver

ROOT = Path(__file__).parent.parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServeProcess:
    def __init__(self, config: Path, *, any_port: bool = True) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config), *(["--any-port"] if any_port else [])],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        # A thread reads stderr: select() on the pipe cannot see lines already in Python's buffer.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 15) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = re.search(pattern, line)
                if match:
                    return match
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=5)
        self.process.stderr.close()
        return self.process.returncode


def _rcpt(port: int, to: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.example.com")
        client.mail("portal.contrib@example.com")
        return client.rcpt(to)[0]


def test_serve_logs_json_serves_metrics_and_reloads_on_sighup(tmp_path, test_odoo, dns_server, dkim_keys):
    metrics_port = _free_port()
    config = write_config(tmp_path, test_odoo, dns_server.port)
    config.write_text(config.read_text() + f"\n[metrics]\nhost = \"127.0.0.1\"\nport = {metrics_port}\n")
    rules = tmp_path / "rules" / "notes.example.com.toml"
    # Before the reload, sale.order takes no notes.
    original_rules = rules.read_text()
    rules.write_text(original_rules.replace('models = ["project.task", "sale.order"]\ncontributor_group',
                                            'models = ["project.task"]\ncontributor_group', 1))
    serve = ServeProcess(config)
    try:
        port = int(serve.wait_for(r"listening on 127\.0\.0\.1:(\d+) \(SMTP\)").group(1))
        mailer = Mailer(type("Running", (), {"port": port})(), dkim_keys)
        order = mailer.address("note", "sale.order", SALE_ORDER_ID)
        assert _rcpt(port, order) == 550

        task = mailer.address("note", "project.task", TASK_ID)
        assert mailer.send(mailer.sign(mailer.message("note_from_contributor.eml", task)), task).startswith("250")
        line = json.loads(serve.wait_for(r'^\{"event": "message".*').group(0))
        # Row 1 of the journal is the sale.order recipient refused at RCPT just before.
        assert line["verdict"] == "filed" and line["res_id"] == TASK_ID and line["journal_id"] == 2

        def metrics() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
                return response.read().decode()

        assert 'note_gateway_messages_total{odoo="main",refusal="none",verdict="filed"} 1.0' in metrics()
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("client.example.com")
            assert "note_gateway_sessions_in_flight 1.0" in metrics()
        # The server sees the session end a moment after the client has quit.
        deadline = time.monotonic() + 10
        while "note_gateway_sessions_in_flight 0.0" not in metrics() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "note_gateway_sessions_in_flight 0.0" in metrics()

        # A broken file is refused on reload and the running configuration stays.
        rules.write_text(original_rules + "\nunknown_key = 1\n")
        serve.process.send_signal(signal.SIGHUP)
        serve.wait_for(r"reload refused, the previous rules stay in force: .*unknown_key: unknown key")
        assert serve.process.poll() is None
        assert _rcpt(port, order) == 550

        rules.write_text(original_rules)
        serve.process.send_signal(signal.SIGHUP)
        serve.wait_for(r"rules reloaded: ")
        assert _rcpt(port, order) == 250
    finally:
        assert serve.stop() == 0


def test_verbose_logs_debug_lines_but_not_the_odoo_api_key_nor_what_a_sender_wrote(test_odoo, serve, dkim_keys):
    # Found by a review of the logs: `note-gateway --verbose serve`, the documented way to see DEBUG
    # lines, wrote the Odoo API key some twenty times per message (odoorpc logs each JSON-RPC call,
    # hiding only a parameter named "password") and the note's text three times (aiosmtpd's
    # "DATA readline" lines and odoorpc's message_post).
    gateway = serve(verbose=True)
    mailer = Mailer(Port(gateway.port), dkim_keys)
    task = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", task, "<verbose-1@example.com>"))
    assert send(raw, task, gateway.port).startswith("250 2.0.0 Filed as Odoo message ")
    credentials = base64.b64encode(b"\0paula\0Pump-P7-password").decode()
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.ehlo("client.example.com")
        # Credentials the gateway never asked for; aiosmtpd hides them only after "AUTH" in capitals.
        assert client.docmd("auth", f"plain {credentials}")[0] == 502
        # A line of a message sent without waiting for the reply to DATA is read as a command.
        assert client.docmd("Customer's", "contact was not told yet")[0] == 500
    assert gateway.stop() == 0
    log = gateway.log
    assert DEMO_API_KEY not in log
    for written in ("seal is worn", "not told yet", credentials):
        assert written not in log, written
    # --verbose was on: the DEBUG lines are there, each Odoo call with its time.
    assert re.search(r" DEBUG gateway\.odoo: odoo main: project\.task\.message_post answered in \d+\.\d{3} s", log), log
    assert " DEBUG mail.log: ('127.0.0.1', " in log
    assert "INFO mail.log: ('127.0.0.1', " in log and ">> b'auth plain <withheld>'" in log


def test_serve_exits_1_with_one_line_when_the_port_is_taken(tmp_path, test_odoo):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, test_odoo, 53, listener_extra=f"port = {port}")
        result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(config)], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"ERROR gateway: cannot listen on 127.0.0.1:{port}: " in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_workers_exits_1_with_one_line_when_the_journal_cannot_be_opened(tmp_path, test_odoo):
    # A review: with workers = 2 a journal the supervisor could not open at start (a full disk,
    # where SQLite must create its -wal file again) ended in a JournalUnavailable traceback.
    config = write_config(tmp_path, test_odoo, 53, listener_extra="workers = 2")
    journal = tmp_path / "journal.sqlite3"
    assert 'path = "journal.sqlite3"' in config.read_text()
    journal.write_bytes(b"not a journal" * 100)
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(config)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"ERROR gateway: journal {journal} cannot be prepared: file is not a database" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_journal_that_cannot_be_opened_on_a_full_file_system_says_it_is_full(tmp_path, monkeypatch):
    from gateway import journal as journal_module
    from gateway.journal import Journal, JournalUnavailable

    path = tmp_path / "journal.sqlite3"
    path.write_bytes(b"not a journal" * 100)
    monkeypatch.setattr(journal_module.shutil, "disk_usage", lambda folder: type("Usage", (), {"free": 4096}))
    with pytest.raises(JournalUnavailable) as refused:
        Journal(path)
    assert str(refused.value).endswith(": file is not a database (its file system is full: 4096 bytes free)")


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def _free_port_of_both_families() -> int:
    # One socket on :: that also takes IPv4 holds the port on 0.0.0.0 and :: while it is picked.
    with socket.socket(socket.AF_INET6) as probe:
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind(("::", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback (::1) to connect to")
@pytest.mark.parametrize("host, workers", [("", 1), ("", 2), ("*", 1)])
def test_an_empty_host_takes_mail_on_every_interface_ipv4_and_ipv6(tmp_path, test_odoo, dns_server, dkim_keys,
                                                                  host, workers):
    # host = "" listened on 0.0.0.0 and :: at once until 742b0d0 refused it; 0.0.0.0 alone takes
    # IPv4 only and :: alone IPv6 only, so an MX had to turn away the senders of one family (review).
    # Not --any-port: port 0 would give each address a port of its own; this one is free on both.
    port = _free_port_of_both_families()
    config = write_config(tmp_path, test_odoo, dns_server.port, listener_extra=f"port = {port}\nworkers = {workers}")
    config.write_text(config.read_text().replace('host = "127.0.0.1"', f'host = "{host}"', 1))
    serve = ServeProcess(config, any_port=False)
    try:
        every = f"every interface, 0.0.0.0:{port} and [::]:{port}"
        serve.wait_for(re.escape(f"listening on {every} (SMTP{', 2 workers' if workers == 2 else ''}) for "))
        for index in range(workers if workers > 1 else 0):
            serve.wait_for(re.escape(f"worker {index} serving {every} (SMTP)"))
        mailer = Mailer(type("Running", (), {"port": port})(), dkim_keys)
        task = mailer.address("note", "project.task", TASK_ID)
        for address in ("127.0.0.1", "::1"):
            raw = mailer.sign(mailer.message("note_from_contributor.eml", task))
            reply = deliver(raw, task, host=address, port=port, mail_from="portal.contrib@example.com", timeout=30)
            assert reply.startswith("250 2.0.0 Filed"), (address, reply)
    finally:
        assert serve.stop() == 0
