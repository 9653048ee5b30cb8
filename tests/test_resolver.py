"""DKIM key lookups against real DNS servers on loopback: found, missing, failing, slow, cached."""

import socket
import threading
import time

import pytest

from gateway.refusals import DnsTemporaryFailure
from gateway.resolver import DkimKeyResolver
from gateway.testing import dnsmasq
from gateway.testing.dkim import shared_rsa_key
from gateway.testing.dns import DnsServer, silent_nameservers

KEY_NAME = "paula._domainkey.example.com"
SHORT_NAME = "short._domainkey.example.com"
SHORT_RECORD = "v=DKIM1; k=rsa; p=c2hvcnQ="


@pytest.fixture(scope="module")
def key_record():
    # A 2048-bit key makes a record longer than one 255-byte TXT string.
    record = shared_rsa_key(2048).txt_record
    assert len(record) > 255
    return record


@pytest.fixture(scope="module")
def dns_server(key_record):
    with DnsServer({KEY_NAME: key_record, SHORT_NAME: SHORT_RECORD}) as server:
        yield server


@pytest.fixture(scope="module")
def dnsmasq_server(key_record):
    if not dnsmasq.available():
        pytest.skip("dnsmasq is not installed (Debian package dnsmasq-base); CI installs it")
    with dnsmasq.Dnsmasq({KEY_NAME: key_record, SHORT_NAME: SHORT_RECORD}) as server:
        yield server


@pytest.fixture(params=["dnsmasq", "DnsServer"])
def any_server(request):
    return request.getfixturevalue("dnsmasq_server" if request.param == "dnsmasq" else "dns_server")


def resolver_for(server, **options):
    return DkimKeyResolver(["127.0.0.1"], port=server.port, **options)


def test_key_record_is_found_with_its_strings_joined(any_server, key_record):
    resolver = resolver_for(any_server)
    assert resolver(KEY_NAME.encode() + b".") == key_record.encode()
    assert resolver(SHORT_NAME.encode()) == SHORT_RECORD.encode()


def test_unknown_name_is_no_key(any_server):
    assert resolver_for(any_server)(b"nobody._domainkey.example.com.") is None


def test_name_without_txt_record_is_no_key(dns_server):
    # _domainkey.example.com exists (names below it do) but holds no TXT record: NODATA.
    assert resolver_for(dns_server)(b"_domainkey.example.com.") is None


def test_cached_answer_is_served_without_asking_again(dns_server):
    resolver = resolver_for(dns_server)
    before = dns_server.query_count(SHORT_NAME)
    for _ in range(3):
        assert resolver(SHORT_NAME.encode()) == SHORT_RECORD.encode()
    assert dns_server.query_count(SHORT_NAME) == before + 1


def test_nxdomain_is_cached_for_the_soa_minimum(dns_server):
    resolver = resolver_for(dns_server)
    name = "cached-miss._domainkey.example.com"
    assert resolver(name.encode()) is None
    assert resolver(name.encode()) is None
    assert dns_server.query_count(name) == 1


def test_without_cache_every_lookup_asks(dns_server):
    resolver = resolver_for(dns_server, cache=False)
    before = dns_server.query_count(SHORT_NAME)
    resolver(SHORT_NAME.encode())
    resolver(SHORT_NAME.encode())
    assert dns_server.query_count(SHORT_NAME) == before + 2


def test_cache_answers_after_dnsmasq_is_gone(key_record):
    if not dnsmasq.available():
        pytest.skip("dnsmasq is not installed (Debian package dnsmasq-base); CI installs it")
    with dnsmasq.Dnsmasq({KEY_NAME: key_record}) as server:
        resolver = resolver_for(server, timeout=0.5)
        assert resolver(KEY_NAME.encode()) == key_record.encode()
    # The server is stopped: only the cache can answer now.
    assert resolver(KEY_NAME.encode()) == key_record.encode()


def test_servfail_is_a_temporary_failure(dns_server):
    name = "broken._domainkey.example.com"
    dns_server.servfail(name)
    with pytest.raises(DnsTemporaryFailure) as refusal:
        resolver_for(dns_server)(name.encode())
    assert refusal.value.smtp_code == 451 and refusal.value.enhanced_code == "4.4.3"


def test_timeout_is_a_temporary_failure_within_the_configured_time(dns_server):
    name = "silent._domainkey.example.com"
    dns_server.drop(name)
    resolver = resolver_for(dns_server, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(DnsTemporaryFailure, match="timeout"):
        resolver(name.encode())
    assert time.monotonic() - started < 1.0


def test_dkimpy_timeout_can_only_shorten_the_lookup(dns_server):
    name = "silent2._domainkey.example.com"
    dns_server.drop(name)
    resolver = resolver_for(dns_server, timeout=3.0)
    started = time.monotonic()
    with pytest.raises(DnsTemporaryFailure):
        resolver(name.encode(), timeout=0.3)
    assert time.monotonic() - started < 1.0


def test_no_nameserver_answering_is_a_temporary_failure():
    # Nothing listens on the port: every try goes unanswered until the lifetime is spent.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    resolver = DkimKeyResolver(["127.0.0.1"], port=closed_port, timeout=0.5)
    with pytest.raises(DnsTemporaryFailure):
        resolver(KEY_NAME.encode())


def test_d_written_with_its_final_dot_finds_the_same_key(dns_server, key_record):
    # dkimpy asks for s._domainkey.<d=>. even when d= already ends with the root's dot; that is
    # the same DNS name, not an empty label.
    assert resolver_for(dns_server)(KEY_NAME.encode() + b"..") == key_record.encode()


@pytest.mark.parametrize("name", [
    b"x" * 64 + b"._domainkey.example.com.",  # a label longer than 63 bytes (RFC 1035 2.3.4)
    b"sel.._domainkey.example.com.",  # an empty label
    b"paula._domainkey.example.com...",  # an empty label before the final dots
    b"\xff\xfe._domainkey.example.com.",  # not UTF-8
])
def test_name_that_cannot_exist_is_no_key_without_a_query(name):
    # No nameserver is reachable, so any query would raise instead of returning None.
    resolver = DkimKeyResolver(["127.0.0.1"], port=9, timeout=0.2)
    assert resolver(name) is None


def test_lookups_from_many_threads_at_once(dns_server, key_record):
    resolver = resolver_for(dns_server, cache=False)
    results, errors = [], []

    def look_up():
        try:
            results.append(resolver(KEY_NAME.encode()))
        except Exception as error:  # pragma: no cover - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=look_up) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [key_record.encode()] * 16


def test_the_cache_keeps_at_most_cache_size_answers_the_least_recently_used_going_first(dns_server):
    # Day-2 review: the cache (dns.resolver.Cache) had no bound. A sender with a wildcard TXT record
    # and a new selector in each message, or s= and d= a sender makes up, grew it by about 4 KB a
    # lookup (20,000 selectors: 80 MB), each kept for the TTL the sender's zone chose.
    resolver = resolver_for(dns_server, cache_size=50)
    names = [f"sel{number}._domainkey.flood.example" for number in range(200)]
    asked = dns_server.query_count(SHORT_NAME)
    assert resolver(SHORT_NAME.encode()) == SHORT_RECORD.encode()
    for name in names:
        assert resolver(name.encode()) is None
        # The key in use stays: it is the most recently used.
        assert resolver(SHORT_NAME.encode()) == SHORT_RECORD.encode()
    assert dns_server.query_count(SHORT_NAME) == asked + 1
    assert len(resolver._resolver.cache.data) <= 50
    before = {name: dns_server.query_count(name) for name in (names[0], names[-1])}
    assert resolver(names[-1].encode()) is None
    assert dns_server.query_count(names[-1]) == before[names[-1]]  # still cached
    assert resolver(names[0].encode()) is None
    assert dns_server.query_count(names[0]) == before[names[0]] + 1  # pushed out, asked again


def test_an_answer_is_cached_an_hour_at_most_whatever_its_ttl(key_record, monkeypatch):
    # The zone's TTL (a week here) and its SOA minimum for "no such key" (a day) are the domain
    # owner's choice: a removed key would have been believed, and a key published after a first
    # miss refused, that long.
    missing = "later._domainkey.example.com"
    with DnsServer({KEY_NAME: key_record}, ttl=7 * 86400, negative_ttl=86400) as server:
        resolver = resolver_for(server)
        assert resolver(KEY_NAME.encode()) == key_record.encode()
        assert resolver(missing.encode()) is None
        now = time.time()
        for entry in resolver._resolver.cache.data.values():  # LRUCache keeps nodes, Cache the answers
            assert getattr(entry, "value", entry).expiration <= now + 3600
        server.remove(KEY_NAME)
        server.add_txt(missing, SHORT_RECORD)
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() + 1800)
        # Half an hour later both answers are still the cached ones ...
        assert resolver(KEY_NAME.encode()) == key_record.encode()
        assert resolver(missing.encode()) is None
        assert (server.query_count(KEY_NAME), server.query_count(missing)) == (1, 1)
        # ... and an hour and a second after they were cached, the zone is asked again.
        monkeypatch.setattr(time, "time", lambda: real_time() + 3601)
        assert resolver(KEY_NAME.encode()) is None
        assert resolver(missing.encode()) == SHORT_RECORD.encode()
        assert (server.query_count(KEY_NAME), server.query_count(missing)) == (2, 2)


def test_every_key_record_at_a_name_is_kept(key_record):
    # DNS review: a key rotation publishes the old and the new key at one selector, and some domains
    # keep an unrelated TXT record next to a key. Only the first record (or the first starting with
    # v=DKIM1) was kept, so a message signed with the other key failed, depending on the server's order
    # (DnsServer shuffles them, as dnspython's to_wire does and real servers do).
    name = "two._domainkey.example.com"
    junk = "junk._domainkey.example.com"
    with DnsServer() as server:
        server.add_txt(name, SHORT_RECORD)
        server.add_txt(name, key_record)
        server.add_txt(junk, "some-site-verification=abc123")
        server.add_txt(junk, "k=rsa; v=DKIM1; p=dmVyc2lvbi1ub3QtZmlyc3Q=")  # v= not first: no key record
        server.add_txt(junk, "v=DKIM2; p=dmVyc2lvbi0y")
        server.add_txt(junk, "k=rsa; p=bm8tdmVyc2lvbg==")  # v= is optional
        resolver = resolver_for(server)
        found = resolver.key_records(name.encode())
        assert sorted(found.records) == sorted([SHORT_RECORD.encode(), key_record.encode()]) and found.found == 2
        assert not found.cached
        assert resolver.key_records(name.encode()).cached
        assert resolver.key_records(junk.encode()).records == (b"k=rsa; p=bm8tdmVyc2lvbg==",)
        # dkimpy's dnsfunc gets the first of them, as the cached answer has them.
        assert resolver(name.encode()) == found.records[0]
        assert server.query_count(name) == 1


def test_a_name_without_any_key_record_keeps_its_txt_records_for_the_refusal():
    # None of them can be a key: dkimpy's reason for each says what is wrong with them.
    name = "none._domainkey.example.com"
    with DnsServer({name: "some-site-verification=abc123"}) as server:
        resolver = resolver_for(server)
        assert resolver(name.encode()) == b"some-site-verification=abc123"
        server.add_txt(name, "v=DKIM2; p=AAAA")
        assert sorted(resolver_for(server).key_records(name.encode()).records) == [b"some-site-verification=abc123",
                                                                                   b"v=DKIM2; p=AAAA"]


def test_at_most_max_key_records_are_kept_of_a_crowded_name():
    from gateway.resolver import MAX_KEY_RECORDS

    name = "crowd._domainkey.example.com"
    records = [f"v=DKIM1; k=rsa; p=a2V5{number}A==" for number in range(MAX_KEY_RECORDS + 3)]
    with DnsServer() as server:
        for record in records:
            server.add_txt(name, record)
        found = resolver_for(server).key_records(name.encode())
    assert len(found.records) == MAX_KEY_RECORDS and set(found.records) < {record.encode() for record in records}
    assert found.found == MAX_KEY_RECORDS + 3


def test_two_silent_nameservers_ahead_of_a_working_one_leave_it_time_to_answer(dns_server):
    # DNS review: each try ends after 2 s, but [resolver] timeout (4 s) was the lifetime of the whole
    # lookup: the third nameserver was never asked, and every message got 451 after 4 s. The same
    # with three lines in /etc/resolv.conf. Now the last nameserver gets the timeout after each one
    # before it had its try.
    with silent_nameservers(["127.0.0.2", "127.0.0.3"], dns_server.port):
        resolver = DkimKeyResolver(["127.0.0.2", "127.0.0.3", "127.0.0.1"], port=dns_server.port, cache=False)
        assert resolver.timeout == 8.0
        started = time.monotonic()
        assert resolver(SHORT_NAME.encode()) == SHORT_RECORD.encode()
        assert 3.5 < time.monotonic() - started < 6
        # A short timeout stays short: each try and the last nameserver get it.
        hasty = DkimKeyResolver(["127.0.0.2", "127.0.0.3", "127.0.0.1"], port=dns_server.port, timeout=0.3,
                                cache=False)
        assert hasty.timeout == pytest.approx(0.9)
        assert hasty(SHORT_NAME.encode()) == SHORT_RECORD.encode()
    # One nameserver: the timeout, as configured.
    assert resolver_for(dns_server).timeout == 4.0


@pytest.mark.parametrize("fault, what, causes", [
    ("servfail", "answered SERVFAIL", {"SERVFAIL"}),
    ("refuse", "answered REFUSED", {"REFUSED"}),
    ("truncate", "truncated its answer over UDP, and TCP failed: EOFError: EOF", {"TCP"}),
])
def test_what_the_nameserver_did_is_kept_for_the_operator(dns_server, fault, what, causes):
    # DNS review: SERVFAIL, REFUSED and a truncated answer whose TCP retry failed were all "no
    # nameserver answered for ...", in the reply, the log, the journal and doctor, and dnspython's
    # own words ("... answered REFUSED") were dropped. The sender is told no more than before.
    name = f"{fault}-said._domainkey.example.com"
    getattr(dns_server, fault)(name)
    with pytest.raises(DnsTemporaryFailure) as refusal:
        resolver_for(dns_server)(name.encode())
    assert refusal.value.detail == f"no usable answer from the nameservers for {name}."
    assert refusal.value.internal == f"127.0.0.1:{dns_server.port} {what}"
    assert refusal.value.causes == causes


def test_a_timeout_says_which_nameservers_did_not_answer(dns_server):
    with silent_nameservers(["127.0.0.2"], dns_server.port):
        name = "dropped-said._domainkey.example.com"
        dns_server.drop(name)
        with pytest.raises(DnsTemporaryFailure) as refusal:
            DkimKeyResolver(["127.0.0.2", "127.0.0.1"], port=dns_server.port, timeout=0.3)(name.encode())
    assert refusal.value.detail == f"timeout looking up {name}."
    assert refusal.value.internal == (f"127.0.0.2:{dns_server.port} did not answer; "
                                      f"127.0.0.1:{dns_server.port} did not answer")
    assert refusal.value.causes == {"timeout"}
