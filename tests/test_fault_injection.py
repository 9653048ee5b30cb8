"""Evidence for issue 4: N messages under seeded random faults in Odoo and DNS, retried as an MTA would; nothing lost, nothing doubled."""

from __future__ import annotations

import collections
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import SELECTOR, Mailer

from gateway import observe

from gateway.testing.dns import DnsServer
from gateway.testing.odoo_demo import PRIVATE_TASK_ID, SALE_ORDER_ID, TASK_ID

MESSAGES = 60
SEED = 4
FAULT_PROBABILITY = 0.35
# Faults are injected during the first rounds only; after that the outage is over and the queue
# drains, as it does on a real MTA, so every good message must end up filed.
FAULTY_ROUNDS = 4
MAX_ATTEMPTS = 6
# Weights: hangs and dropped DNS answers each cost a timeout (1 s and 3 s), so they are rarer.
FAULTS = {"refuse": 2, "http500": 2, "garbage": 2, "rpc_error": 2, "die_after_post": 3, "hang": 1,
          "dns-servfail": 3, "dns-drop": 1}
# What a deferral must say for each fault: Odoo faults are 451 4.3.0, DNS faults 451 4.4.3.
DEFERRAL = {"dns-servfail": "451 4.4.3", "dns-drop": "451 4.4.3"}
ODOO_DEFERRAL = "451 4.3.0 Odoo is unavailable"


@pytest.fixture
def dns_with_faults(dkim_keys):
    # TTL 0: every message asks again, so a DNS fault injected for it is really met.
    with DnsServer(ttl=0) as dns:
        for domain, key in dkim_keys.items():
            dns.add_txt(key.record_name(SELECTOR, domain), key.txt_record)
        yield dns


def test_every_250_is_in_odoo_exactly_once_under_random_faults(test_odoo, start_gateway, dns_with_faults, dkim_keys,
                                                                 record_property):
    rng = random.Random(SEED)
    dns = dns_with_faults
    key_name = dkim_keys["example.com"].record_name(SELECTOR, "example.com")
    gateway = start_gateway(dns.port, odoo_timeout=1.0, rules_extra="[rate_limit]\nper_sender = 0\nper_record = 0\n")
    mailer = Mailer(gateway, dkim_keys)

    # Most messages are good; some are refused by design, and must stay refused whatever the faults.
    messages = []
    for number in range(MESSAGES):
        model, res_id = ("project.task", TASK_ID) if number % 2 else ("sale.order", SALE_ORDER_ID)
        to = mailer.address("note", model, res_id)
        message_id = f"<fault-{number}@example.com>"
        raw = mailer.message("note_from_contributor.eml", to, message_id)
        if number % 10 == 3:
            messages.append((message_id, to, raw, "550 5.7.1 Sender not authenticated"))
        elif number % 15 == 7:
            messages.append((message_id, to, mailer.sign(b"Auto-Submitted: auto-generated\r\n" + raw),
                             "550 5.7.1 Automatic replies"))
        else:
            messages.append((message_id, to, mailer.sign(raw), None))

    injected: collections.Counter[str] = collections.Counter()
    replies: dict[str, list[tuple[str | None, str]]] = collections.defaultdict(list)
    pending = list(messages)
    for round_number in range(MAX_ATTEMPTS):
        retry = []
        for message in pending:
            message_id, to, raw, refusal = message
            fault = None
            if round_number < FAULTY_ROUNDS and rng.random() < FAULT_PROBABILITY:
                fault = rng.choices(list(FAULTS), weights=list(FAULTS.values()))[0]
            if fault == "dns-servfail":
                dns.servfail(key_name)
            elif fault == "dns-drop":
                dns.drop(key_name)
            elif fault == "hang":
                test_odoo.fail("hang", times=1, seconds=3)
            elif fault == "refuse":
                test_odoo.fail("refuse")
            elif fault is not None:
                test_odoo.fail(fault, times=1)
            if fault:
                injected[fault] += 1
            try:
                reply = mailer.send(raw, to)
            finally:
                test_odoo.heal()
                dns.heal(key_name)
            replies[message_id].append((fault, reply))
            if reply.startswith("4"):
                retry.append(message)  # the MTA keeps it and tries again later
        pending = retry
        if not pending:
            break

    counts = collections.Counter()
    for model, res_id in (("project.task", TASK_ID), ("sale.order", SALE_ORDER_ID)):
        for stored in test_odoo.messages(model, res_id):
            counts[stored["message_id"]] += 1

    problems = []
    for message_id, _, _, refusal in messages:
        for fault, reply in replies[message_id]:
            if reply.startswith("250"):
                if refusal is not None:
                    problems.append(f"{message_id}: {reply!r} for a message that must be refused")
            elif reply.startswith("5"):
                # A 5xx only for what is wrong with the message itself, never for a fault.
                if refusal is None or not reply.startswith(refusal):
                    problems.append(f"{message_id}: {reply!r} (fault {fault})")
            elif fault is None:
                problems.append(f"{message_id}: {reply!r} without any fault injected")
            elif not reply.startswith(DEFERRAL.get(fault, ODOO_DEFERRAL)):
                problems.append(f"{message_id}: {reply!r} does not name the fault {fault}")
    accepted = {message_id for message_id, history in replies.items() if any(r.startswith("250") for _, r in history)}
    duplicates = sum(count - 1 for count in counts.values() if count > 1)
    lost = sorted(message_id for message_id in accepted if counts[message_id] == 0)
    refused_filed = sorted(message_id for message_id, _, _, refusal in messages if refusal and counts[message_id])
    attempts = sum(len(history) for history in replies.values())
    codes = collections.Counter(reply[:9] for history in replies.values() for _, reply in history)
    recognised = sum(reply.startswith("250 2.0.0 Already filed") for history in replies.values() for _, reply in history)
    good = sum(refusal is None for *_, refusal in messages)

    record_property("figures", {"sent": MESSAGES, "attempts": attempts, "faults injected": sum(injected.values()),
                                "filed": len(accepted), "duplicates": duplicates, "lost": len(lost)})
    print(f"\nfault injection (seed {SEED}): messages sent {MESSAGES}, attempts {attempts}, "
          f"faults injected {sum(injected.values())} {dict(sorted(injected.items()))}")
    print(f"replies {dict(sorted(codes.items()))}; filed {len(accepted)} of {good} good messages "
          f"({recognised} recognised as already filed on retry), refused by design "
          f"{MESSAGES - good}, duplicates = {duplicates}, lost = {len(lost)}, still deferred = {len(pending)}")

    assert problems == []
    assert duplicates == 0 and lost == [] and refused_filed == []
    assert pending == [], {message_id: replies[message_id] for message_id, *_ in pending}
    assert accepted == {message_id for message_id, *_, refusal in messages if refusal is None}
    assert all(counts[message_id] == 1 for message_id in accepted)
    # The faults were real: each kind was injected and Odoo dying after a post was recognised.
    assert set(injected) == set(FAULTS) and recognised > 0


def test_concurrent_deliveries_under_faults_file_each_message_once(test_odoo, start_gateway, dns_server, dkim_keys):
    # Issue 6 made messages that wait for a busy Odoo connection share their reads: a fault in a
    # shared read defers every message of it, and a message delivered twice at once (an MTA retry
    # racing the first delivery) must still be filed once. Eight senders at a time on two Odoo
    # connections, each good message delivered twice in the first round, Odoo faults at random
    # moments for the first rounds; then the outage ends and the queue drains.
    rng = random.Random(SEED)
    # An HTML 500 on message_post is an unsettled post since ff18134 (a proxy's page cannot say
    # whether Odoo goes on with it): its retry waits odoo.unsettled_post_seconds, kept short here,
    # and the rounds after the outage wait that long before they send again.
    gateway = start_gateway(dns_server.port, pool_size=2, odoo_timeout=2.0, unsettled_post_seconds=0.5,
                            rules_extra="[rate_limit]\nper_sender = 0\nper_record = 0\n")
    mailer = Mailer(gateway, dkim_keys)
    messages = []
    for number in range(40):
        model, res_id = ("project.task", TASK_ID) if number % 2 else ("sale.order", SALE_ORDER_ID)
        if number % 8 == 5:
            model, res_id = "project.task", PRIVATE_TASK_ID  # Paula may not read it.
        to = mailer.address("note", model, res_id)
        message_id = f"<concurrent-{number}@example.com>"
        raw = mailer.message("note_from_contributor.eml", to, message_id)
        refusal = "550 5.7.1" if res_id == PRIVATE_TASK_ID else None
        if number % 10 == 3:
            refusal = "550 5.7.1 Sender not authenticated"  # Left unsigned.
        else:
            raw = mailer.sign(raw)
        messages.append((message_id, to, raw, refusal, model, res_id))

    stop_faults = threading.Event()

    def inject_faults() -> None:
        kinds = ["rpc_error", "http500", "garbage", "die_after_post", "refuse"]
        while not stop_faults.wait(rng.uniform(0.02, 0.08)):
            kind = rng.choice(kinds)
            if kind == "refuse":
                test_odoo.fail("refuse")
                time.sleep(0.05)
                test_odoo.heal()
            else:
                test_odoo.fail(kind, times=rng.randint(1, 3))

    shared_before = _shared_lookups()
    replies: dict[str, list[str]] = collections.defaultdict(list)
    pending = [message for message in messages for _ in range(2 if message[3] is None else 1)]
    faults = threading.Thread(target=inject_faults, daemon=True)
    faults.start()
    try:
        for round_number in range(10):
            if round_number == 3:
                stop_faults.set()
                faults.join()
                test_odoo.heal()
            if round_number >= 3:
                time.sleep(0.6)
            with ThreadPoolExecutor(max_workers=8) as senders:
                sent = list(zip(pending, senders.map(lambda message: mailer.send(message[2], message[1]), pending)))
            pending = []
            for message, reply in sent:
                replies[message[0]].append(reply)
                if reply.startswith("4"):
                    pending.append(message)
            if not pending and round_number >= 3:
                break
    finally:
        stop_faults.set()
        test_odoo.heal()

    problems = []
    for message_id, _, _, refusal, model, res_id in messages:
        stored = [m for m in test_odoo.messages(model, res_id) if m["message_id"] == message_id]
        for reply in replies[message_id]:
            if reply.startswith("5") and (refusal is None or not reply.startswith(refusal)):
                problems.append(f"{message_id}: {reply!r}")
            if reply.startswith("250") and refusal is not None:
                problems.append(f"{message_id}: {reply!r} for a message that must be refused")
        if refusal is None and len(stored) != 1:
            problems.append(f"{message_id}: {len(stored)} times in Odoo, replies {replies[message_id]}")
        if refusal is not None and stored:
            problems.append(f"{message_id}: refused by design but filed")
    codes = collections.Counter(reply[:9] for history in replies.values() for reply in history)
    print(f"\nconcurrent deliveries under faults: replies {dict(sorted(codes.items()))}")
    assert problems == []
    assert pending == []
    # The faults were met (deliveries deferred by Odoo) and so was batching (lookups shared).
    assert any(reply.startswith(ODOO_DEFERRAL) for history in replies.values() for reply in history)
    assert _shared_lookups() > shared_before


def _shared_lookups() -> float:
    """Messages answered by a sender lookup beyond the first of each read, from the gateway's metrics."""
    labels = {"odoo": "main", "read": "res.users.search_read"}
    answered = observe.REGISTRY.get_sample_value("note_gateway_odoo_read_batch_size_sum", labels) or 0.0
    reads = observe.REGISTRY.get_sample_value("note_gateway_odoo_read_batch_size_count", labels) or 0.0
    return answered - reads
