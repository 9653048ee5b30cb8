"""Run the benchmarks and print a table of ratios, each the median over repetitions in this one run."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from gateway.testing.dkim import DkimKey, generate_rsa_key
from gateway.testing.dns import DnsServer
from gateway.testing.odoo_demo import DEMO_API_KEY, PAULA_EMAIL, PAULA_PARTNER_ID, TASK_ID

from bench import client, world


@dataclass
class Size:
    """How much work each benchmark does; ``--tiny`` is for the smoke test, not for numbers."""

    repeat: int = 3
    capacity_messages: int = 400
    sink_messages: int = 1500
    odoo_messages: int = 400
    direct_seconds: float = 2.0
    spawn_messages: int = 16
    steady_rate: float = 50.0
    steady_messages: int = 250
    memory_sessions: int = 200
    # (max_sessions, concurrent sessions): the load beyond the limit, and the limit, each varied alone.
    memory_runs: tuple[tuple[int, int], ...] = ((100, 200), (100, 100), (50, 200))
    memory_message: int = 1024 * 1024
    # Peak RSS is a high-water mark of one run; each run of 200 x 1 MB costs ~20 s, so one each.
    memory_repeat: int = 1
    # ok / MISSED against the targets; a few messages per benchmark measure start-up and noise.
    verdicts: bool = True


TINY = Size(repeat=1, capacity_messages=6, sink_messages=6, odoo_messages=4, direct_seconds=0.2, spawn_messages=1,
            steady_rate=50.0, steady_messages=5, memory_sessions=4, memory_runs=((2, 4),), memory_message=64 * 1024,
            verdicts=False)


@dataclass
class Row:
    name: str
    unit: str
    baseline: list[float] = field(default_factory=list)
    gateway: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    target: str = ""
    passed: bool | None = None
    times: bool = False  # the ratio reads "9.0x" (a speed-up), not "0.90" (a fraction)
    note: str = ""

    def pair(self, baseline: float, gateway: float) -> None:
        """One repetition: its gateway run over the baseline measured in the same repetition. The
        row's ratio is the median of these, not the ratio of the medians of the two sides."""
        self.baseline.append(baseline)
        self.gateway.append(gateway)
        self.ratios.append(gateway / baseline)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _percentile(values: list[float], fraction: float) -> float:
    """Nearest rank, as ODOO_FACTS.md k reports its p95."""
    ordered = sorted(values)
    rank = max(1, int(-(-fraction * len(ordered) // 1)))
    return ordered[min(rank, len(ordered)) - 1]


def _sign_batch(key: DkimKey, count: int, size: int) -> list[tuple[str, str, bytes]]:
    return world.signed_messages(key, count, size)


def prepare_messages(key: DkimKey, count: int, size: int, workers: int) -> list[tuple[str, str, bytes]]:
    """Sign in several processes: dkimpy signs in pure Python, ~8 ms per 5 KB message here."""
    if count <= 0:
        return []
    chunks = [count // workers + (1 if index < count % workers else 0) for index in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        batches = pool.map(partial(_sign_batch, key, size=size), [chunk for chunk in chunks if chunk])
        return [message for batch in batches for message in batch]


def _check_all_accepted(run: client.Run, what: str) -> None:
    refused = [item.reply for item in run.sent if not item.accepted]
    if refused or not run.sent:
        raise SystemExit(f"bench: {what}: {len(refused)} of {len(run.sent)} messages not accepted, "
                         f"first: {refused[:1]}")


def _check_all_filed(journal: Path, message_ids: set[str], what: str) -> None:
    """A 250 is also the answer to a message already filed: the journal tells that each was a new note,
    once (a second row for a Message-ID is a second delivery, whatever its verdict)."""
    with sqlite3.connect(journal) as connection:
        rows = connection.execute("SELECT message_id, verdict FROM messages").fetchall()
    verdicts: dict[str, list[str]] = {}
    for message_id, verdict in rows:
        verdicts.setdefault(message_id, []).append(verdict)
    others = sorted({"not journaled" if message_id not in verdicts else
                     "journaled more than once" if len(verdicts[message_id]) > 1 else verdicts[message_id][0]
                     for message_id in message_ids} - {"filed"})
    if others:
        raise SystemExit(f"bench: {what}: not every message was filed as a new note: {others}")


# The reply of a session that waited a whole session_timeout for a slot of listener.max_messages_in_data
# (GatewayBusy): the limit at work under a load beyond it, before any of the message is sent.
_BUSY = "451 4.3.2 "


def _check_memory_run(run: client.Run, journal: Path, messages: list[tuple[str, str, bytes]], slots: int,
                      what: str) -> None:
    """Peak RSS means something only for a gateway that did the work: every message it took in was
    filed as a new note, as in 1 and 2. Sessions turned away at connect (421, max_sessions) and
    messages deferred for a DATA slot are the configured limits at work; anything else stops the
    bench (an Odoo that is down defers every message: nothing filed, nothing to measure). At least
    ``slots`` messages (the DATA slots the limits allow) must be filed, so that the limits were filled."""
    others = [item.reply for item in run.sent if not item.accepted and not item.reply.startswith(_BUSY)]
    if others or run.broken_sessions:
        raise SystemExit(f"bench: {what}: {len(others)} messages neither filed nor deferred for a DATA slot "
                         f"({_BUSY.strip()}), {run.broken_sessions} sessions broken; first: {others[:1]}")
    if run.accepted < slots:
        raise SystemExit(f"bench: {what}: {run.accepted} messages filed, fewer than the {slots} the limits let in "
                         "at once: the peak would not be that of the limits filled")
    _check_all_filed(journal, {_message_id(messages[item.index][2]) for item in run.sent if item.accepted}, what)


class Bench:
    def __init__(self, size: Size, folder: Path) -> None:
        self.size = size
        self.folder = folder
        self.key = generate_rsa_key()
        self.dns = DnsServer({self.key.record_name(world.SELECTOR, world.SENDER_DOMAIN): self.key.txt_record}).start()
        self.workers = max(1, os.cpu_count() or 1)
        self.rows: list[Row] = []
        self._configs = 0

    def close(self) -> None:
        self.dns.stop()

    def _judge(self, row: Row, passed: bool) -> None:
        row.passed = passed if self.size.verdicts else None

    def messages(self, count: int, size: int = 5 * 1024) -> list[tuple[str, str, bytes]]:
        return prepare_messages(self.key, count, size, self.workers)

    def config(self, odoo_url: str, **options) -> Path:
        self._configs += 1
        return world.write_config(self.folder / f"gateway-{self._configs}", odoo_url, self.dns.port,
                                  world.free_port(), **options)

    def warm(self, port: int, concurrency: int = 4) -> None:
        """A few messages first, to both records, four at a time: they log the pool's connections in,
        resolve the xmlid, read each model's rules and fill the DNS cache, as a gateway that has run a
        while has done (the direct loop's connections log in before its clock starts too)."""
        run = asyncio.run(client.blast(port, self.messages(4), concurrency))
        _check_all_accepted(run, "warm-up")

    # --- 1 and 3: capacity against an Odoo that answers at once ------------------------------------

    def capacity(self) -> tuple[Row, list[float], Row]:
        size = self.size
        row = Row("1. capacity: gateway / bare aiosmtpd sink", "msg/s", target=">= 0.35",
                  note="20 connections, 5 KB DKIM-signed notes, warm DNS cache, test Odoo without latency")
        workers = Row("1. the same with listener.workers = 2", "msg/s", target=">= 0.35",
                      note="two gateway processes, each on its own socket (SO_REUSEPORT), pool_size = 8 (4 per "
                           "worker, as the one process has), the same sink run as the baseline")
        for _ in range(size.repeat):
            messages = self.messages(max(size.capacity_messages, size.sink_messages))
            with world.sink() as port:
                sink_run = asyncio.run(client.blast(port, messages[:size.sink_messages], 20))
            _check_all_accepted(sink_run, "sink")
            # pool_size is shared out among the workers: 8 gives each the one process's 4.
            gateway_run = self._fresh_run(messages[:size.capacity_messages], "gateway capacity")
            workers_run = self._fresh_run(self.messages(size.capacity_messages), "gateway capacity with 2 workers",
                                          workers=2, pool_size=8)
            row.pair(sink_run.rate, gateway_run.rate)
            workers.pair(sink_run.rate, workers_run.rate)
        # Each configuration judged on its own: one process, and a worker per CPU.
        self._judge(row, _median(row.ratios) >= 0.35)
        self._judge(workers, _median(workers.ratios) >= 0.35)
        return row, row.gateway, workers

    def _fresh_run(self, messages: list[tuple[str, str, bytes]], what: str, latency: str = "",
                   **options) -> client.Run:
        """One gateway run on its own test Odoo, with messages no run has sent before.

        A real Odoo finds a Message-ID or a record's messages through an index; the test Odoo scans
        them, so one that kept every earlier run's notes would charge each later run more of the
        machine's CPU (measured: 2.0 -> 3.5 ms per note over 3000 notes). Messages sent again would
        measure the "already filed" path, not a note being filed.
        """
        with world.test_odoo(latency) as odoo_url:
            config = self.config(odoo_url, **options)
            with world.gateway(config) as (port, _process):
                self.warm(port)
                run = asyncio.run(client.blast(port, messages, 20))
        _check_all_accepted(run, what)
        _check_all_filed(config.parent / "journal.sqlite3", {_message_id(payload) for _, _, payload in messages}, what)
        return run

    def process_per_message(self, gateway_rates: list[float], workers_rates: list[float]) -> list[Row]:
        size = self.size
        row = Row("3. gateway / a process per message", "msg/s", target=">= 20x", times=True,
                  note=f"one Python process per message importing odoorpc, mailparser, dkim, then login + "
                       f"message_post, {self.workers} at a time; gateway rate from 1")
        # The baseline uses every CPU; so does a gateway with a worker per CPU (the second row of 1).
        workers = Row("3. the same with listener.workers = 2", "msg/s", target=">= 20x", times=True,
                      note="gateway rate from the second row of 1, the same process-per-message runs")
        with world.test_odoo() as odoo_url:
            parts = urlsplit(odoo_url)
            for repetition in range(size.repeat):
                messages = self.messages(size.spawn_messages)
                started = time.perf_counter()
                with ThreadPoolExecutor(self.workers) as pool:
                    codes = list(pool.map(partial(_spawn_one, parts.hostname, parts.port), messages))
                rate = len(messages) / (time.perf_counter() - started)
                if any(codes):
                    raise SystemExit(f"bench: process per message failed: exit codes {codes}")
                for target, rates in ((row, gateway_rates), (workers, workers_rates)):
                    target.pair(rate, rates[repetition % len(rates)])
        self._judge(row, _median(row.ratios) >= 20)
        self._judge(workers, _median(workers.ratios) >= 20)
        return [row, workers]

    # --- 2: bound by Odoo ---------------------------------------------------------------------

    def odoo_bound(self) -> list[Row]:
        size = self.size
        row = Row("2. Odoo-bound: gateway / direct message_post loop", "notes/s", target=">= 0.7",
                  note="test Odoo 25 ms per message_post, 10 ms per other call; 4 connections each side; "
                       "default config: the sender's user lookup and the record access search (with the "
                       "Message-ID check in it) on every message")
        cached = Row("2. the same with read_cache_seconds = 10", "notes/s", target="",
                     note="the sender's user lookup answered from the cache after the first message; the "
                          "record access search with the Message-ID check is never cached and runs on every message")
        for _ in range(size.repeat):
            with world.test_odoo(world.ODOO_LATENCY) as odoo_url:
                direct = _direct_post_rate(odoo_url, 4, size.direct_seconds)
            for measured, extra in ((row, ""), (cached, "read_cache_seconds = 10")):
                run = self._fresh_run(self.messages(size.odoo_messages), "Odoo-bound", world.ODOO_LATENCY,
                                      pool_size=4, odoo_extra=extra)
                measured.pair(direct, run.rate)
        self._judge(row, _median(row.ratios) >= 0.7)
        return [row, cached]

    # --- 4: latency added at a steady rate -------------------------------------------------------

    def latency(self) -> tuple[Row, Row]:
        size = self.size
        p50 = Row("4. latency added at 50 msg/s, p50", "ms", target="",
                  note="DATA reply time at the client minus the journal's odoo_seconds (the time the message "
                       "waited on Odoo: its calls, a pooled connection, a batched read), Odoo latency as in 2")
        p99 = Row("4. latency added at 50 msg/s, p99", "ms", target="<= 10 ms")
        achieved: list[float] = []
        for _ in range(size.repeat):
            messages = self.messages(size.steady_messages)
            with world.test_odoo(world.ODOO_LATENCY) as odoo_url:
                config = self.config(odoo_url, pool_size=4)
                with world.gateway(config) as (port, _process):
                    self.warm(port)
                    run = asyncio.run(client.paced(port, messages, size.steady_rate, 20))
            _check_all_accepted(run, "steady rate")
            _check_all_filed(config.parent / "journal.sqlite3", {_message_id(payload) for _, _, payload in messages},
                             "steady rate")
            odoo_seconds = _journal_odoo_seconds(config.parent / "journal.sqlite3")
            added = []
            for item in run.sent:
                message_id = _message_id(messages[item.index][2])
                added.append((item.seconds - odoo_seconds[message_id]) * 1000)
            p50.gateway.append(_percentile(added, 0.50))
            p99.gateway.append(_percentile(added, 0.99))
            achieved.append(run.rate)
        self._judge(p99, _median(p99.gateway) <= 10)
        # Arrivals are steady only while the gateway keeps up; a message that finds all the client's
        # connections busy waits for one, so say what rate was actually served.
        p99.note = f"offered {size.steady_rate:.0f} msg/s, served {_median(achieved):.1f} msg/s (median)"
        return p50, p99

    # --- 5: memory -----------------------------------------------------------------------------

    def memory(self) -> list[Row]:
        size = self.size
        messages = self.messages(size.memory_sessions, size.memory_message)
        rows = []
        for limit, load in size.memory_runs:
            row = Row(f"5. peak RSS, {load} sessions x {size.memory_message // 1024} KB, max_sessions={limit}",
                      "MB", target="<= 300 MB" if (limit, load) == size.memory_runs[0] else "",
                      note="VmHWM of the `note-gateway serve` process; test Odoo without latency")
            for _ in range(min(size.repeat, size.memory_repeat)):
                # A fresh Odoo each time, so that no message is a duplicate and every one is posted.
                with world.test_odoo() as odoo_url:
                    # All bench clients share one loopback address: the per-address cap (20 by
                    # default, against one host taking every session) is raised to max_sessions so
                    # that the load really reaches the server; max_messages_in_data stays default.
                    config = self.config(odoo_url, max_sessions=limit, max_sessions_per_ip=limit,
                                         max_message_size=2 * size.memory_message + 65536)
                    with world.gateway(config) as (port, process):
                        self.warm(port, concurrency=min(4, limit))
                        run = asyncio.run(client.burst(port, messages[:load]))
                        peak = world.peak_rss_kib(process.pid) / 1024
                _check_memory_run(run, config.parent / "journal.sqlite3", messages,
                                  min(limit, _listener_default("max_messages_in_data")), "memory")
                row.gateway.append(peak)
                row.note = (f"VmHWM of `note-gateway serve`; max_sessions={limit}, max_sessions_per_ip={limit}, "
                            f"max_messages_in_data={_listener_default('max_messages_in_data')} (default; {_light_rule(min(len(m[2]) for m in messages))}); "
                            f"{run.accepted} filed, {run.deferred} deferred "
                            f"(4xx), {run.refused_sessions} sessions turned away at connect (421), "
                            f"{run.broken_sessions} broken after it")
            if row.target:
                self._judge(row, _median(row.gateway) <= 300)
            rows.append(row)
        return rows


def _listener_default(name: str):
    from gateway.config import ListenerConfig

    return ListenerConfig.model_fields[name].default


def _light_rule(message_size: int) -> str:
    light = _listener_default("light_message_size")
    if message_size > light:
        return f"each message, {message_size} bytes or more, is above light_message_size ({light}) and keeps its slot"
    return f"messages from {message_size} bytes, some within light_message_size ({light}), which give their slot back"


def _spawn_one(host: str, port: int, message: tuple[str, str, bytes]) -> int:
    """Odoo's mailgate model: a fresh interpreter per message that imports the libraries and posts."""
    payload = message[2]
    result = subprocess.run([sys.executable, "-c", _MAILGATE, host, str(port), DEMO_API_KEY, str(TASK_ID),
                             str(PAULA_PARTNER_ID)], input=payload, stdout=subprocess.DEVNULL, env=world._environment())
    return result.returncode


# What a process per message has to do at least: start, import, parse, log in, post.
_MAILGATE = """
import sys
import dkim, mailparser, odoorpc
host, port, key, res_id, author = sys.argv[1:]
raw = sys.stdin.buffer.read()
parsed = mailparser.parse_from_bytes(raw)
odoo = odoorpc.ODOO(host, port=int(port))
odoo.login("notes", "gateway", key)
odoo.execute_kw("project.task", "message_post", [[int(res_id)]], {
    "body": parsed.body, "message_type": "comment", "subtype_xmlid": "mail.mt_note",
    "author_id": int(author), "message_id": parsed.message_id,
    "context": {"mail_create_nosubscribe": True, "mail_post_autofollow": False}})
"""


def _direct_post_rate(odoo_url: str, concurrency: int, seconds: float, timeout: float = 30.0) -> float:
    """message_post as fast as ``concurrency`` logged-in odoorpc connections can, the ceiling for any gateway.

    Every connection must log in within ``timeout`` and post until the clock stops: a connection
    that fails would leave a lower rate and so a better ratio for the gateway, so any failure
    stops the bench (SystemExit), as a message the gateway did not file does.
    """
    import odoorpc

    from gateway.odootransport import keep_alive_opener

    parts = urlsplit(odoo_url)
    body = "<p>" + world._body(4000).replace("\n", "<br>") + "</p>"
    counts = [0] * concurrency
    errors: list[BaseException | None] = [None] * concurrency
    # A login that fails or hangs must not leave the others (and the clock) waiting for ever.
    start = threading.Barrier(concurrency + 1, timeout=timeout)
    stop = threading.Event()

    def loop(slot: int) -> None:
        try:
            # The gateway's own transport (a kept-alive connection), so the two sides differ only in
            # what the gateway does around message_post.
            opener, _handler = keep_alive_opener()
            odoo = odoorpc.ODOO(parts.hostname, port=parts.port, timeout=timeout, opener=opener)
            odoo.login("notes", "gateway", DEMO_API_KEY)
            start.wait()
            while not stop.is_set():
                odoo.execute_kw("project.task", "message_post", [[TASK_ID]], {
                    "body": body, "body_is_html": True, "message_type": "comment", "subtype_xmlid": "mail.mt_note",
                    "author_id": PAULA_PARTNER_ID, "partner_ids": [],
                    "context": {"mail_create_nosubscribe": True, "mail_post_autofollow": False}})
                counts[slot] += 1
        except BaseException as error:  # noqa: BLE001 (reported below, whatever it is)
            errors[slot] = error
            start.abort()
            stop.set()

    threads = [threading.Thread(target=loop, args=(slot,), daemon=True) for slot in range(concurrency)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    try:
        start.wait()
        started = time.perf_counter()
        stop.wait(seconds)
    except threading.BrokenBarrierError:
        pass
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    failures = [error for error in errors if error is not None]
    # A connection that only saw the barrier broken by another's failure or by the timeout is no cause.
    causes = [error for error in failures if not isinstance(error, threading.BrokenBarrierError)]
    if causes:
        raise SystemExit(f"bench: direct message_post loop: {len(causes)} of {concurrency} connections failed, "
                         f"first: {type(causes[0]).__name__}: {causes[0]}")
    if failures or start.broken:
        raise SystemExit(f"bench: direct message_post loop: the {concurrency} connections did not all log in "
                         f"within {timeout:g} s")
    # Calls in flight when the clock stopped finish after it; counting them is within one call per thread.
    return sum(counts) / elapsed


def _message_id(payload: bytes) -> str:
    return re.search(rb"^Message-ID: (<[^>]+>)", payload, re.MULTILINE | re.IGNORECASE).group(1).decode()


def _journal_odoo_seconds(path: Path) -> dict[str, float]:
    with sqlite3.connect(path) as connection:
        return dict(connection.execute("SELECT message_id, odoo_seconds FROM messages"))


def machine() -> str:
    model = "unknown CPU"
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        model = match.group(1).strip() if match else model
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, {platform.system()} {platform.release()}"


def _format(value: float, unit: str) -> str:
    return "-" if value != value else f"{value:.3g}" if unit == "ratio" else f"{value:.1f}"


def table(rows: list[Row]) -> str:
    header = ("benchmark", "baseline", "gateway", "ratio", "target", "")
    lines = []
    for row in rows:
        baseline = f"{_median(row.baseline):.1f} {row.unit}" if row.baseline else "-"
        gateway = f"{_median(row.gateway):.1f} {row.unit}" if row.gateway else "-"
        ratio = f"{_median(row.ratios):.2f}" if row.ratios else "-"
        if row.ratios and row.times:
            ratio = f"{_median(row.ratios):.1f}x"
        verdict = "" if row.passed is None else "ok" if row.passed else "MISSED"
        lines.append((row.name, baseline, gateway, ratio, row.target, verdict))
    widths = [max(len(line[column]) for line in [header, *lines]) for column in range(len(header))]
    rendered = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *lines]]
    rendered.insert(1, "  ".join("-" * width for width in widths).rstrip())
    return "\n".join(rendered)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="a few messages each, to check that the bench runs")
    parser.add_argument("--repeat", type=int, help="repetitions of each measurement (default 3)")
    parser.add_argument("--only", help="comma-separated benchmark numbers to run, e.g. 1,2 (3 needs 1)")
    options = parser.parse_args(argv)
    size = TINY if options.tiny else Size()
    if options.repeat:
        size.repeat = options.repeat
    only = set((options.only or "1,2,3,4,5").split(","))
    started = time.perf_counter()
    print(f"Machine: {machine()}", flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="note-gateway-bench-") as folder:
        bench = Bench(size, Path(folder))
        try:
            if only & {"1", "3"}:
                capacity, gateway_rates, workers = bench.capacity()
                rows.extend((capacity, workers))
                print("\n".join(table(rows[-2:]).splitlines()[-2:]), flush=True)
                if "3" in only:
                    rows.extend(bench.process_per_message(gateway_rates, workers.gateway))
                    print("\n".join(table(rows[-2:]).splitlines()[-2:]), flush=True)
            if "2" in only:
                rows.extend(bench.odoo_bound())
                print(table(rows[-1:]).splitlines()[-1], flush=True)
            if "4" in only:
                rows.extend(bench.latency())
                print(table(rows[-1:]).splitlines()[-1], flush=True)
            if "5" in only:
                rows.extend(bench.memory())
                print(table(rows[-1:]).splitlines()[-1], flush=True)
        finally:
            bench.close()
    print(f"\nMedians over {size.repeat} repetition(s) (peak RSS: {min(size.repeat, size.memory_repeat)}), "
          f"measured in this run "
          f"({time.perf_counter() - started:.0f} s); machine: {machine()}\n")
    print(table(rows))
    if not size.verdicts:
        print("\nNo verdicts (ok / MISSED) with --tiny: a few messages per benchmark measure start-up and noise, "
              "not the gateway. Run without --tiny for the ratios that count.")
    print()
    for row in rows:
        if row.note:
            print(f"{row.name.split(' ', 1)[0]} {row.note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
