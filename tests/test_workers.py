"""listener.workers: several processes on one socket file every message once, reload, stop and die together."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from conftest import ALIAS_DOMAIN, Mailer
from serving import notes_to_both_records, send_while_posting, start_senders
from serving import ROOT, Port as _Port, ServeProcess, filed_counts as _filed, send as _send
from serving import rcpt

from gateway.inflight import InFlight
from gateway.refusals import MessageInProgress
from gateway.testing.odoo_demo import SALE_ORDER_ID, TASK_ID

KEY = ("<same@example.com>", "project.task", 42)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # A zombie has exited; only its parent's wait is missing.
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _worker_pids(gateway: ServeProcess, count: int) -> dict[int, int]:
    pids: dict[int, int] = {}
    for index in range(count):
        pids[index] = int(gateway.wait_for(rf"worker {index} started \(pid (\d+)\)").group(1))
        gateway.wait_for(rf"worker {index} serving ")
    return pids


def _message_lines(gateway: ServeProcess, count: int, timeout: float = 10) -> list[dict]:
    """The gateway's JSON message lines, once ``count`` of them have been read (each is written before
    its reply is sent, but the test's log reader may not have read it yet when the reply is in)."""
    mark = 0
    for _ in range(count):
        match = gateway.wait_for(r'^\{"event": "message"', timeout=timeout, start=mark)
        mark = gateway.lines.index(match.string, mark) + 1
    return [json.loads(line) for line in gateway.lines if line.startswith('{"event": "message"')]


@pytest.fixture
def serve(serve):
    """The conftest's serve with two workers unless told otherwise."""
    return functools.partial(serve, workers=2)


# --- the claim on a message being filed, across processes ------------------------------------------


HOLDER = """
import sys
from gateway.inflight import InFlight
with InFlight(sys.argv[1]).claim(("<same@example.com>", "project.task", 42)):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_claim_held_by_another_process_refuses_and_a_dead_holder_frees_it(tmp_path):
    lock_path = str(tmp_path / "journal.sqlite3.inflight")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, lock_path], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline() == "held\n"
        here = InFlight(lock_path)
        with pytest.raises(MessageInProgress) as refused:
            with here.claim(KEY):
                pass
        assert refused.value.smtp_reply().startswith("451 4.3.0")
        # Another message is not held up by it.
        with here.claim(("<other@example.com>", "project.task", 42)):
            pass
        # A holder that dies without letting go: the kernel drops its lock.
        holder.kill()
        holder.wait(10)
        with here.claim(KEY):
            pass
        here.close()
    finally:
        holder.kill()
        holder.wait(10)


def test_a_claim_is_also_exclusive_between_threads_of_one_process(tmp_path):
    in_flight = InFlight(tmp_path / "journal.sqlite3.inflight")
    with in_flight.claim(KEY):
        outcome: list[str] = []

        def second() -> None:
            try:
                with in_flight.claim(KEY):
                    outcome.append("claimed")
            except MessageInProgress:
                outcome.append("refused")

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(10)
        assert outcome == ["refused"]
    # Released at the end of the block: claimed again, here and by a thread.
    with in_flight.claim(KEY):
        pass
    in_flight.close()


# --- a gateway of two workers ---------------------------------------------------------------------


def _most_calls_at_once(calls) -> int:
    edges = sorted([(call.started, 1) for call in calls] + [(call.ended, -1) for call in calls])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def test_two_workers_share_the_sessions_and_odoo_pool_and_file_each_message_once(test_odoo, serve, dkim_keys):
    # pool_size bounds the gateway's connections to Odoo, not each worker's: 2 workers get 1 each.
    gateway = serve(rules_extra="[rate_limit]\nper_sender = 0\nper_record = 0\n", pool_size=2)
    assert re.search(r"listening on 127\.0\.0\.1:\d+ \(SMTP, 2 workers\)", gateway.log)
    _worker_pids(gateway, 2)
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    test_odoo.latency = {"message_post": 0.05}
    messages = notes_to_both_records(mailer, "worker")
    threads, replies = start_senders(messages, gateway.port, 8)
    for thread in threads:
        thread.join(60)
    assert all(reply.startswith("250 2.0.0") for reply in replies.values()), replies
    assert set(_filed(test_odoo, [message_id for message_id, _, _ in messages]).values()) == {1}
    lines = _message_lines(gateway, len(messages))
    assert len(lines) == len(messages)
    # Both processes filed some: the kernel hands each connection to one of them.
    assert {line["worker"] for line in lines} == {0, 1}, [line["worker"] for line in lines]
    assert gateway.stop() == 0
    assert _most_calls_at_once(test_odoo.calls) <= 2


def test_each_worker_listens_on_its_own_socket_and_the_kernel_spreads_connections_over_them():
    # Benchmark 1 with two workers on one shared socket: the worker whose event loop woke first took
    # every connection waiting (asyncio accepts up to the backlog at a time), one held 70 % of the
    # sessions and of the CPU while the other idled. Each worker now has its own socket in an
    # SO_REUSEPORT group, and the kernel spreads new connections by a hash of the client's port.
    from gateway.workers import bind_per_worker

    groups = bind_per_worker("127.0.0.1", 0, 2)
    try:
        assert len(groups) == 2 and groups[0][0] is not groups[1][0]
        port = groups[0][0].getsockname()[1]
        assert {sock.getsockname()[1] for group in groups for sock in group} == {port}
        # 100: each socket's listen backlog (100) holds them all, even if one got every one.
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(100)]
        accepted = []
        for group in groups:
            group[0].setblocking(False)
            taken = 0
            while True:
                try:
                    connection, _ = group[0].accept()
                except BlockingIOError:
                    break
                connection.close()
                taken += 1
            accepted.append(taken)
        for client in clients:
            client.close()
        # Every connection reached a worker's socket, and each worker's socket got its share (each
        # at least 20 of 100: a fair coin gives fewer about once in 10^9 runs).
        assert sum(accepted) == 100 and min(accepted) >= 20, accepted
    finally:
        for group in groups:
            for sock in group:
                sock.close()


def test_with_port_0_every_address_of_every_worker_gets_the_same_port(monkeypatch):
    # Session review: a host with two addresses ("localhost": 127.0.0.1 and ::1) and port 0 (serve
    # --any-port) put worker 0's second address on a port of its own.
    from gateway import workers

    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, *a, **k: real("127.0.0.1", port, *a, **k)
                        + real("::1", port, *a, **k) if host == "localhost" else real(host, port, *a, **k))
    try:
        groups = workers.bind_per_worker("localhost", 0, 3)
    except OSError as error:
        pytest.skip(f"cannot bind ::1 here: {error}")
    try:
        ports = {sock.getsockname()[1] for group in groups for sock in group}
        assert len(ports) == 1 and all(len(group) == 2 for group in groups), \
            [[sock.getsockname()[:2] for sock in group] for group in groups]
    finally:
        for group in groups:
            for sock in group:
                sock.close()


def test_a_burst_of_sessions_is_spread_over_the_workers(test_odoo, serve, dkim_keys):
    # 24 sessions opened at once, under the 20 per worker of max_sessions_per_ip if spread: all are
    # filed, and by both workers.
    gateway = serve(workers=2, rules_extra="[rate_limit]\nper_sender = 0\nper_record = 0\n")
    _worker_pids(gateway, 2)
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    raws = [mailer.sign(mailer.message("note_from_contributor.eml", to, f"<burst-{n}@example.com>"))
            for n in range(24)]
    together = threading.Barrier(len(raws))
    replies: list[str] = []
    threads = [threading.Thread(target=lambda raw=raw: (together.wait(10), replies.append(_send(raw, to, gateway.port))))
               for raw in raws]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(replies) == 24 and all(reply.startswith("250 2.0.0") for reply in replies), replies
    workers = [line["worker"] for line in _message_lines(gateway, 24)]
    assert len(workers) == 24 and min(workers.count(0), workers.count(1)) >= 3, workers
    assert gateway.stop() == 0


def test_the_same_message_at_once_on_two_workers_is_filed_once(test_odoo, serve, dkim_keys):
    gateway = serve(rules_extra="[rate_limit]\nper_sender = 0\nper_record = 0\n")
    _worker_pids(gateway, 2)
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<twice@example.com>"))
    # Slow posts: every copy reaches the post while the first is inside message_post.
    test_odoo.latency = {"message_post": 1.0}
    replies: list[str] = []
    threads = [threading.Thread(target=lambda: replies.append(_send(raw, to, gateway.port))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert _filed(test_odoo, ["<twice@example.com>"]) == {"<twice@example.com>": 1}
    assert len(replies) == 8
    assert all(reply.startswith(("250 2.0.0", "451 4.3.0")) for reply in replies), replies
    assert any(reply.startswith("451 4.3.0") for reply in replies), replies
    lines = _message_lines(gateway, 8)
    refused_by = {line["worker"] for line in lines if line["refusal_class"] == "MessageInProgress"}
    filed_by = {line["worker"] for line in lines if line["verdict"] == "filed"}
    # Whatever process took each copy, only one copy reached Odoo.
    assert refused_by and filed_by, lines
    assert gateway.stop() == 0


def test_an_unsettled_post_is_known_to_every_worker(test_odoo, serve, dkim_keys):
    # The first delivery's message_post outlives the Odoo timeout and Odoo goes on with it; the
    # retries land on either worker, and each must defer rather than post it a second time.
    gateway = serve(odoo_timeout=1.0, rules_extra="[rate_limit]\nper_sender = 0\nper_record = 0\n")
    _worker_pids(gateway, 2)
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<unsettled@example.com>"))
    test_odoo.fail("hang", method="message_post", times=1, seconds=60)
    assert _send(raw, to, gateway.port).startswith("451 4.3.0 Odoo is unavailable"), gateway.log

    def refused_by() -> set[int]:
        lines = [json.loads(line) for line in gateway.lines if line.startswith('{"event": "message"')]
        return {line["worker"] for line in lines if line["refusal_class"] == "PostUnsettled"}

    for _ in range(40):
        assert _send(raw, to, gateway.port).startswith(
            "451 4.3.0 An earlier delivery of this message may still be being filed by Odoo")
        if refused_by() == {0, 1}:
            break
    ends = time.monotonic() + 5  # the last log line may still be on its way from the worker
    while refused_by() != {0, 1} and time.monotonic() < ends:
        time.sleep(0.05)
    assert refused_by() == {0, 1}
    assert _filed(test_odoo, ["<unsettled@example.com>"]) == {"<unsettled@example.com>": 0}
    test_odoo.release()
    ends = time.monotonic() + 15
    while not _filed(test_odoo, ["<unsettled@example.com>"])["<unsettled@example.com>"]:
        assert time.monotonic() < ends
        time.sleep(0.05)
    assert _send(raw, to, gateway.port).startswith("250 2.0.0 Already filed as Odoo message")
    assert _filed(test_odoo, ["<unsettled@example.com>"]) == {"<unsettled@example.com>": 1}
    assert len(test_odoo.posts()) == 1
    assert gateway.stop() == 0


def _session_worker(pids: dict[int, int], port: int) -> int:
    """The pid of the worker holding the one established session to ``port``."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", "( sport = :%d )" % port],
                         capture_output=True, text=True, check=True).stdout
    [pid] = [pid for pid in pids.values() if f"pid={pid}," in out]
    return pid


def test_a_worker_killed_while_odoo_posts_leaves_an_unsettled_post_for_its_siblings(test_odoo, serve, dkim_keys):
    # Crash review 2: one worker was killed while Odoo was still running its message_post; the
    # retry on the other worker found nothing in Odoo yet and posted the note a second time. The
    # killed worker's receipt is an unsettled post: deferred until Odoo has it, then "Already filed".
    gateway = serve(rules_extra="[rate_limit]\nper_sender = 0\nper_record = 0\n")
    pids = _worker_pids(gateway, 2)
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    message_id = "<worker-killed-while-posting@example.com>"
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, message_id))
    # Odoo goes on with the post until the test lets it, however slow the retries (a 4 s latency
    # could end before them on a loaded machine, found by a review of the tests).
    test_odoo.fail("hang", method="message_post", times=1, seconds=60)
    replies: list[str] = []
    sender = threading.Thread(target=lambda: replies.append(_send(raw, to, gateway.port)))
    sender.start()
    deadline = time.monotonic() + 15
    while not [call for call in test_odoo.posts() if call.ended is None]:
        assert time.monotonic() < deadline, "the post did not start"
        time.sleep(0.02)
    victim = _session_worker(pids, gateway.port)
    mark = len(gateway.lines)
    os.kill(victim, signal.SIGKILL)
    sender.join(timeout=30)
    assert replies[0].startswith("no reply"), replies
    # At once, before or after the supervisor has seen the death: on either worker, deferred.
    for _ in range(4):
        reply = _send(raw, to, gateway.port)
        assert reply.startswith("451 4.3.0 An earlier delivery of this message may still be being filed by Odoo"), reply
    gateway.wait_for(rf"interrupted by the death of worker pid {victim}, the sender will retry: {message_id}",
                     start=mark)
    test_odoo.release()
    deadline = time.monotonic() + 15
    while not _filed(test_odoo, [message_id])[message_id]:
        assert time.monotonic() < deadline, "Odoo did not finish the first post"
        time.sleep(0.05)
    for _ in range(2):
        assert _send(raw, to, gateway.port).startswith("250 2.0.0 Already filed as Odoo message")
    assert _filed(test_odoo, [message_id]) == {message_id: 1}
    assert len(test_odoo.posts()) == 1
    assert gateway.stop() == 0


def test_a_killed_worker_is_started_again_and_a_killed_gateway_takes_its_workers(test_odoo, serve, dkim_keys):
    gateway = serve()
    pids = _worker_pids(gateway, 2)
    mark = len(gateway.lines)
    os.kill(pids[1], signal.SIGKILL)
    gateway.wait_for(rf"worker 1 \(pid {pids[1]}\) exited with -9; starting it again", start=mark)
    new_pid = int(gateway.wait_for(r"worker 1 started \(pid (\d+)\)", start=mark).group(1))
    gateway.wait_for(r"worker 1 serving ", start=mark)
    assert new_pid != pids[1] and _alive(new_pid) and _alive(pids[0])
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    for number in range(4):
        raw = mailer.sign(mailer.message("note_from_contributor.eml", to, f"<after-kill-{number}@example.com>"))
        assert _send(raw, to, gateway.port).startswith("250 2.0.0")

    # kill -9 of the gateway itself: its workers go with it, and the port is free at once.
    gateway.kill()
    deadline = time.monotonic() + 10
    while (_alive(pids[0]) or _alive(new_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pids[0]) and not _alive(new_pid)
    # No process of it holds the socket any more (the kernel closes a dead process's files a moment after).
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", gateway.port), timeout=5).close()
        except ConnectionRefusedError:
            break
        assert time.monotonic() < deadline, "the killed gateway's socket is still listening"
        time.sleep(0.1)
    restarted = serve()
    assert rcpt(restarted.port, to)[0] == 250
    assert restarted.stop() == 0


def _reload_both_workers(gateway) -> int:
    """SIGHUP, then wait until both workers say they reloaded; the log position before the signal."""
    mark = len(gateway.lines)
    gateway.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while sum("rules reloaded: " in line for line in gateway.lines[mark:]) < 2:
        assert time.monotonic() < deadline, gateway.log
        time.sleep(0.05)
    return mark


def test_sighup_reloads_every_worker_and_a_broken_file_is_refused_once(test_odoo, serve, dkim_keys):
    gateway = serve()
    _worker_pids(gateway, 2)
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    rules = gateway.config_path.parent / "rules" / f"{ALIAS_DOMAIN}.toml"
    order = mailer.address("note", "sale.order", SALE_ORDER_ID)
    good = rules.read_text()
    rules.write_text(good.replace('models = ["project.task", "sale.order"]\ncontributor_group',
                                  'models = ["project.task"]\ncontributor_group', 1))
    mark = _reload_both_workers(gateway)
    # Every session, whichever worker takes it, sees the new rules.
    assert [rcpt(gateway.port, order)[0] for _ in range(8)] == [550] * 8
    # Which secret signs, said by the supervisor at the start and at the reload, not by each worker.
    signing = f"{ALIAS_DOMAIN}: new addresses are signed with the first secret of secrets (sha256 "
    assert [sum(signing in line for line in lines) for lines in (gateway.lines[:mark], gateway.lines[mark:])] == [
        1, 1], gateway.log

    rules.write_text(good + "\n[note\nbroken = \n")
    mark = len(gateway.lines)
    gateway.signal(signal.SIGHUP)
    gateway.wait_for(r"reload refused, the previous rules stay in force: .*not valid TOML", start=mark)
    time.sleep(0.5)
    assert sum("reload refused" in line for line in gateway.lines[mark:]) == 1, gateway.log
    assert [rcpt(gateway.port, order)[0] for _ in range(8)] == [550] * 8
    assert gateway.stop() == 0


def test_a_reload_keeps_the_protocol_in_every_worker_and_in_workers_started_again(test_odoo, serve, dkim_keys):
    gateway = serve()
    pids = _worker_pids(gateway, 2)
    config = gateway.config_path
    config.write_text(config.read_text().replace(f'hostname = "{ALIAS_DOMAIN}"',
                                                 f'hostname = "{ALIAS_DOMAIN}"\nprotocol = "lmtp"\nmax_sessions = 4'))
    mark = _reload_both_workers(gateway)
    # Said once, by the supervisor, not once more by each worker.
    assert [line.split(f"reload: {config}: ", 1)[1] for line in gateway.lines[mark:] if "needs a restart" in line] == [
        "listener.protocol: changed from 'smtp' to 'lmtp', which needs a restart; 'smtp' stays in force until then",
        "listener.max_sessions: changed from 100 to 4, which needs a restart; 100 stays in force until then",
    ], gateway.log
    # Workers started again after the reload read the files as they are now, yet speak what the gateway started with.
    for index, pid in pids.items():
        os.kill(pid, signal.SIGKILL)
        gateway.wait_for(rf"worker {index} \(pid {pid}\) exited with -9; starting it again", start=mark)
    for index in pids:
        gateway.wait_for(rf"worker {index} serving .*\(SMTP", start=mark)
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    for number in range(4):
        raw = mailer.sign(mailer.message("note_from_contributor.eml", to, f"<after-reload-{number}@example.com>"))
        assert _send(raw, to, gateway.port).startswith("250 2.0.0")
    assert gateway.stop() == 0


def test_a_sighup_storm_during_load_files_every_message_once_and_stops_no_worker(test_odoo, serve, dkim_keys):
    gateway = serve(rules_extra="[rate_limit]\nper_sender = 0\nper_record = 0\n")
    pids = _worker_pids(gateway, 2)
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    test_odoo.latency = {"message_post": 0.2}
    messages = notes_to_both_records(mailer, "storm", count=30)
    threads, replies = start_senders(messages, gateway.port, 6)
    # A reload forwarded to a worker still starting (or a burst of them, each handled after the
    # last) must not kill it: SIGHUP is blocked until the worker handles it.
    while any(thread.is_alive() for thread in threads):
        gateway.signal(signal.SIGHUP)
        time.sleep(0.05)
    assert all(reply.startswith("250 2.0.0 Filed") for reply in replies.values()), replies
    assert set(_filed(test_odoo, [message_id for message_id, _, _ in messages]).values()) == {1}
    assert not any("exited with" in line or "Traceback" in line for line in gateway.lines), gateway.log
    assert all(_alive(pid) for pid in pids.values())
    # Nor one started again, however soon after its start the SIGHUPs come.
    mark = len(gateway.lines)
    os.kill(pids[1], signal.SIGKILL)
    gateway.wait_for(r"worker 1 started \(pid \d+\)", start=mark)
    for _ in range(10):
        gateway.signal(signal.SIGHUP)
        time.sleep(0.02)
    gateway.wait_for(r"worker 1 serving ", start=mark)
    time.sleep(1)
    exits = [line for line in gateway.lines[mark:] if "exited with" in line]
    assert len(exits) == 1 and f"(pid {pids[1]}) exited with -9" in exits[0], gateway.log
    assert rcpt(gateway.port, mailer.address("note", "project.task", TASK_ID))[0] == 250
    assert gateway.stop() == 0


def test_closing_the_services_a_reload_replaced_keeps_the_claims_of_the_new_ones(test_odoo, serve, dkim_keys):
    gateway = serve(rules_extra="[rate_limit]\nper_sender = 0\nper_record = 0\n")
    _worker_pids(gateway, 2)
    config = gateway.config_path
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    raw = mailer.sign(mailer.message("note_from_contributor.eml", to, "<after-close@example.com>"))
    # A short message deadline: services replaced by a reload were once closed on a timer of
    # message_deadline + 10 s, and closing them closed their descriptor of the claim file, which
    # drops every claim the worker holds on it, those of the services in force too (fcntl(2)).
    config.write_text(config.read_text().replace("message_deadline = 20", "message_deadline = 5"))
    assert "message_deadline = 5" in config.read_text()
    _reload_both_workers(gateway)
    replaced = time.monotonic()
    test_odoo.latency = {"message_post": 3.0}
    time.sleep(max(0.0, replaced + 13.5 - time.monotonic()))
    first: list[str] = []
    thread = threading.Thread(target=lambda: first.append(_send(raw, to, gateway.port)))
    thread.start()
    deadline = time.monotonic() + 10
    while not [call for call in test_odoo.posts() if call.ended is None]:
        assert time.monotonic() < deadline, "the post did not start"
        time.sleep(0.02)
    # Past the moment the replaced services were closed, the first copy still posting: every
    # other copy, whichever worker takes it, finds the claim.
    time.sleep(max(0.0, replaced + 15.3 - time.monotonic()))
    others = [_send(raw, to, gateway.port) for _ in range(6)]
    thread.join(30)
    assert first and first[0].startswith("250 2.0.0 Filed"), first
    assert _filed(test_odoo, ["<after-close@example.com>"]) == {"<after-close@example.com>": 1}, (first, others)
    assert gateway.stop() == 0


def test_sigterm_lets_every_worker_finish_its_message(test_odoo, serve, dkim_keys):
    # A pool of 12 is 6 connections per worker: all 6 posts can be in Odoo at once wherever they land.
    gateway = serve(listener_extra="shutdown_grace = 15", pool_size=12)
    pids = _worker_pids(gateway, 2)
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    test_odoo.latency = {"message_post": 1.5}
    threads, replies = send_while_posting(test_odoo, mailer, gateway.port, 6, "term")
    gateway.signal(signal.SIGTERM)
    for thread in threads:
        thread.join(30)
    assert gateway.wait(timeout=30) == 0
    assert sorted(reply[:9] for reply in replies) == ["250 2.0.0"] * 6, replies
    assert not any(_alive(pid) for pid in pids.values())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", gateway.port), timeout=5)


def test_metrics_of_every_worker_are_served_summed_on_one_port(test_odoo, serve, dkim_keys):
    metrics_port = _free_port()
    gateway = serve(metrics_port=metrics_port)
    _worker_pids(gateway, 2)
    mailer = Mailer(_Port(gateway.port), dkim_keys)
    to = mailer.address("note", "project.task", TASK_ID)
    for number in range(6):
        raw = mailer.sign(mailer.message("note_from_contributor.eml", to, f"<metrics-{number}@example.com>"))
        assert _send(raw, to, gateway.port).startswith("250 2.0.0")
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    lines = _message_lines(gateway, 6)
    assert len(lines) == 6
    assert 'note_gateway_messages_total{odoo="main",refusal="none",verdict="filed"} 6.0' in text, text
    assert gateway.stop() == 0


def test_a_never_used_template_is_warned_about_once_at_start_and_once_per_reload(test_odoo, serve, tmp_path):
    # Session review: with workers, the supervisor and every worker logged it (3 times at start, 4
    # more at a reload, the supervisor twice).
    (tmp_path / "rules" / "tpl" / "note").mkdir(parents=True)
    (tmp_path / "rules" / "tpl" / "note" / "project_task.html.j2").write_text("{{ body }}")
    gateway = serve(workers=2)
    rules = tmp_path / "rules" / f"{ALIAS_DOMAIN}.toml"
    rules.write_text('templates_dir = "tpl"\n' + rules.read_text())
    mark = _reload_both_workers(gateway)
    time.sleep(0.5)  # what a worker would log comes before its "rules reloaded"; a moment more for the supervisor
    warned = [index for index, line in enumerate(gateway.lines) if "project_task.html.j2 is never used" in line]
    assert len(warned) == 1 and warned[0] >= mark, gateway.log
    gateway.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while sum("rules reloaded: " in line for line in gateway.lines[mark:]) < 4:
        assert time.monotonic() < deadline, gateway.log
        time.sleep(0.05)
    time.sleep(0.5)
    assert sum("project_task.html.j2 is never used" in line for line in gateway.lines) == 2, gateway.log
    # A worker started again (its start builds the services as at the gateway's start) logs nothing.
    pid = int(re.findall(r"worker 1 started \(pid (\d+)\)", gateway.log)[-1])
    mark = len(gateway.lines)
    os.kill(pid, signal.SIGKILL)
    gateway.wait_for(r"worker 1 serving ", start=mark)
    time.sleep(0.5)
    assert sum("project_task.html.j2 is never used" in line for line in gateway.lines) == 2, gateway.log
    assert gateway.stop() == 0
