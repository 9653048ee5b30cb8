"""DKIM key lookups through a caching dnspython resolver, as the ``dnsfunc`` that dkimpy calls."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.resolver
from dkim.util import InvalidTagValueList, parse_tag_value

from gateway.refusals import DnsTemporaryFailure

log = logging.getLogger(__name__)

# A single try must leave room for a second one (another nameserver, or the same one again after
# a lost UDP datagram) inside the lifetime of the whole lookup.
_LONGEST_SINGLE_TRY = 2.0


def lookup_lifetime(timeout: float, nameservers: int) -> float:
    """The lifetime of one key lookup: [resolver] ``timeout``, and a try of each nameserver but the last before it.

    The nameservers are asked in turn, each try ending after min(timeout, _LONGEST_SINGLE_TRY),
    and ``timeout`` bounded the whole lookup: with two silent nameservers ahead of a working one
    (or three lines in /etc/resolv.conf), the default 4 s ran out before the third was asked, and
    every message got 451 (DNS review). Now the last nameserver gets ``timeout`` after each one
    before it had its try: 4 s with one nameserver, 8 s with three. The message's deadline
    (listener.message_deadline) still ends any lookup (senderauth).
    """
    return timeout + max(nameservers - 1, 0) * min(timeout, _LONGEST_SINGLE_TRY)


# The most answers the key cache keeps ([resolver] cache_size), and the longest it keeps one: a
# domain's TTL, or its SOA minimum for "no such key", may be a week, and a removed or rotated key
# would be believed that long (docs/operations.md, "The DKIM key cache").
DEFAULT_CACHE_SIZE = 5000
LONGEST_CACHED_SECONDS = 3600.0

# Said to the operator only (the journal's decision, the log line, `note-gateway check`) with a
# "key not found" when the key cache is on: a key published after a first lookup missed it is not
# seen until the cached miss expires (day-2 review: docs/operations.md said dig shows the record
# "as the gateway reads it", which is untrue while an answer is cached).
CACHED_MISS_NOTE = (f"possibly an answer cached earlier: the gateway keeps \"no key\" for the zone's negative TTL "
                    f"(its SOA minimum), at most {LONGEST_CACHED_SECONDS / 60:g} minutes, and a reload "
                    f"(systemctl reload) empties its DKIM key cache")

# A key found in the cache that fails to verify a signature is asked of DNS again, without the
# cache, at most once per name in this many seconds: a domain that swapped the key at a selector
# would otherwise see its mail refused for as long as the old key stays cached (up to an hour).
REFRESH_INTERVAL = 60.0
# Said to the operator with a refusal whose key came from the cache and could not be asked again.
CACHED_KEY_NOTE = (f"possibly a key cached earlier: the gateway asks DNS again for a cached key that fails at most "
                   f"once a minute per selector, and a reload (systemctl reload) empties its DKIM key cache")


# The most key records at one name a signature is verified against (RFC 6376 section 6.1.2 step 3
# lets a verifier try one or several): a key rotation publishes two at the same selector for a
# while, rarely more. Each one tried costs a verification (a hash of the message), so a name with
# dozens of TXT records cannot multiply the work.
MAX_KEY_RECORDS = 4


@dataclass(frozen=True)
class KeyRecords:
    """The key records found at one name, in DNS order.

    ``records`` holds at most MAX_KEY_RECORDS of the ``found`` records that look like DKIM keys
    (_is_key_record); when none does, all the TXT records at the name (up to the same bound), so
    that the refusal says what is wrong with them. ``cached``: the answer came from the cache.
    """

    records: tuple[bytes, ...] = ()
    found: int = 0
    cached: bool = False


class BoundedCache(dns.resolver.LRUCache):
    """dnspython's LRU cache, each answer kept at most ``longest`` seconds whatever its TTL.

    dns.resolver.Cache, used before, kept every answer for its full TTL with no bound on their
    number (day-2 review: a sender with a wildcard TXT record naming a new selector in each message
    grew it by about 4 KB a lookup, 20,000 selectors 80 MB, each kept for the TTL its zone chose).
    Answers found (a key, no TXT record at the name) and NXDOMAIN both pass through put.
    """

    def __init__(self, max_size: int = DEFAULT_CACHE_SIZE, longest: float = LONGEST_CACHED_SECONDS) -> None:
        super().__init__(max_size)
        self.longest = longest

    def put(self, key: dns.resolver.CacheKey, value: dns.resolver.Answer) -> None:
        # The answer is the lookup's own (dnspython makes one per response): shortening its life
        # changes nothing for the caller, which has already read it.
        value.expiration = min(value.expiration, time.time() + self.longest)
        super().put(key, value)


class DkimKeyResolver:
    """Finds the TXT record of a DKIM key and tells a missing key from a lookup that may heal.

    dkimpy's own lookup has no cache and reports a timeout or SERVFAIL as a missing key, which
    would turn a passing DNS fault into a permanent refusal. Here NXDOMAIN and an empty answer
    mean "no key" (``None``, a 5xx later on), while a timeout, SERVFAIL or no nameserver answering
    raise ``DnsTemporaryFailure`` so the sending MTA tries again (RFC 6376 section 6.1.2 says a
    temporary lookup failure should be reported as TEMPFAIL).

    One instance is shared by the worker threads that verify messages: dnspython's resolver keeps
    no per-query state on itself and its cache takes a lock, and nothing here changes after
    construction.
    """

    def __init__(self, nameservers: list[str], port: int = 53, timeout: float = 4.0,
                 cache: bool = True, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        if nameservers:
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = list(nameservers)
            resolver.port = port
        else:
            # The system's resolvers from /etc/resolv.conf; a missing or empty file raises
            # NoResolverConfiguration here, at start, rather than on the first message.
            resolver = dns.resolver.Resolver()
        # Each try as before; the whole lookup long enough to try every nameserver.
        resolver.timeout = min(timeout, _LONGEST_SINGLE_TRY)
        timeout = lookup_lifetime(timeout, len(resolver.nameservers))
        resolver.lifetime = timeout
        # The cache keeps each answer for its TTL, and NXDOMAIN for the SOA minimum of the
        # response (RFC 2308 section 5), so a burst of mail from one domain costs one lookup; at
        # most an hour, and at most cache_size answers, the least recently used going first.
        resolver.cache = BoundedCache(cache_size) if cache else None
        self._resolver = resolver
        # senderauth adds CACHED_MISS_NOTE to a "key not found" that may come from the cache.
        self.caches = cache
        # The lifetime of a lookup (lookup_lifetime), which dkimpy is given as its timeout.
        self.timeout = timeout
        self.nameserver_count = len(resolver.nameservers)
        # When each name was last asked again without the cache (refreshed), at most cache_size
        # of them, none older than REFRESH_INTERVAL.
        self._refreshed: dict[dns.name.Name, float] = {}
        self._refreshed_limit = cache_size
        self._refresh_lock = threading.Lock()

    def __call__(self, name: bytes, timeout: int | float = 5) -> bytes | None:
        """Return the first key record at ``name`` with its strings joined, or None when there is none.

        The signature matches dkimpy's ``dnsfunc``; its ``timeout`` can only shorten the
        configured lifetime, never lengthen it. senderauth asks key_records, which keeps them all.
        """
        found = self.key_records(name, timeout)
        return found.records[0] if found.records else None

    def key_records(self, name: bytes | str, timeout: int | float = 5) -> KeyRecords:
        """The key records at ``name``, their strings joined; none when the name has no TXT record.

        Several TXT records at one selector are common: the old and the new key during a rotation,
        or a key next to an unrelated record ("some-site-verification=..."). Servers answer them in
        any order, so keeping one of them refused the messages signed with another one at random
        (DNS review: with the cache on, one order was pinned for the cache's life, and 5 of 8 such
        selectors refused every message).
        """
        qname = _query_name(name)
        if qname is None:
            return KeyRecords()
        lifetime = min(self.timeout, timeout) if timeout else self.timeout
        answer = self._resolve(qname, dns.rdatatype.TXT, lifetime)
        if answer is None:
            return KeyRecords()
        # The cache hands out the Answer it stored, the one a first lookup got: marked here, so a
        # cache hit is told from a fresh answer without a second look into the cache.
        cached = getattr(answer, "_gateway_seen", False)
        answer._gateway_seen = True  # type: ignore[attr-defined]
        if answer.rrset is None:
            return KeyRecords(cached=cached)
        records = [b"".join(rdata.strings) for rdata in answer.rrset]
        # A lone record is the one to try whatever it holds (dkimpy's reason says what is wrong
        # with it): no parse for the usual case.
        candidates = records if len(records) == 1 else [record for record in records if _is_key_record(record)] or records
        return KeyRecords(tuple(candidates[:MAX_KEY_RECORDS]), len(candidates), cached)

    def refreshed(self, name: bytes | str, timeout: int | float = 5) -> KeyRecords | None:
        """The key records at ``name`` asked of DNS again, the cached answer replaced; None when the
        name was asked again less than REFRESH_INTERVAL ago (or there is no cache to bypass).

        senderauth asks it when a cached key fails to verify a signature: a key swapped at the same
        selector was otherwise refused with "signature did not verify" while the old one stayed
        cached (DNS review). Once a minute per name at most, so that forged signatures cannot make
        every message a DNS query.
        """
        qname = _query_name(name)
        cache = self._resolver.cache
        if qname is None or cache is None:
            return None
        now = time.monotonic()
        with self._refresh_lock:
            last = self._refreshed.get(qname)
            if last is not None and now - last < REFRESH_INTERVAL:
                return None
            if len(self._refreshed) >= self._refreshed_limit:
                self._refreshed = {key: when for key, when in self._refreshed.items()
                                   if now - when < REFRESH_INTERVAL}
                if len(self._refreshed) >= self._refreshed_limit:
                    return None
            self._refreshed[qname] = now
        cache.flush((qname, dns.rdatatype.TXT, dns.rdataclass.IN))
        return self.key_records(name, timeout)

    def name_exists(self, name: str) -> bool:
        """Whether ``name`` exists (NOERROR, with or without NS records): doctor's proof that the
        resolver really resolves, since a resolver that answers NXDOMAIN for every name also answers
        the DKIM key probe. Faults raise DnsTemporaryFailure, as key lookups do."""
        return self._resolve(dns.name.from_text(name, origin=dns.name.root), dns.rdatatype.NS,
                             self.timeout) is not None

    def _resolve(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType,
                 lifetime: float) -> dns.resolver.Answer | None:
        """The answer (its rrset None when the name has no such record), None when the name does
        not exist; DnsTemporaryFailure for what a later try may heal."""
        try:
            return self._resolver.resolve(qname, rdtype, dns.rdataclass.IN, search=False,
                                          raise_on_no_answer=False, lifetime=lifetime)
        except dns.resolver.NXDOMAIN:
            return None
        except dns.resolver.YXDOMAIN:
            # The name is longer than a DNAME substitution allows: it cannot hold a key, now
            # or later (RFC 6672 section 2.2).
            return None
        except dns.exception.Timeout as error:
            said, causes = what_nameservers_did(error)
            raise DnsTemporaryFailure(f"timeout looking up {qname}", internal=said,
                                      causes=causes | {"timeout"}) from error
        except dns.resolver.NoNameservers as error:
            # SERVFAIL, REFUSED, a truncated answer whose TCP retry failed, or a malformed reply,
            # from every nameserver. The sender is told no more; what each nameserver did goes to
            # the operator (the log, the journal's decision, doctor): "no nameserver answered"
            # for them all sent operators looking for a network fault when their resolver's ACL
            # refused the gateway (DNS review).
            said, causes = what_nameservers_did(error)
            raise DnsTemporaryFailure(f"no usable answer from the nameservers for {qname}", internal=said,
                                      causes=causes) from error
        except dns.exception.DNSException as error:
            log.warning("DNS lookup of %s failed: %r", qname, error)
            raise DnsTemporaryFailure(f"lookup of {qname} failed") from error


def what_nameservers_did(error: dns.exception.DNSException) -> tuple[str | None, frozenset[str]]:
    """What each nameserver did in a failed lookup, from dnspython's trace of its tries
    (NoNameservers and LifetimeTimeout keep one): "127.0.0.1:53 answered REFUSED", and the causes
    (DnsTemporaryFailure.causes)."""
    errors = getattr(error, "kwargs", {}).get("errors") or []
    said: list[str] = []
    causes: set[str] = set()
    truncated: list[str] = []
    for server, tcp, port, problem, _response in errors:
        where = _server_text(str(server), port)
        if isinstance(problem, str):
            # An answer with an rcode other than NOERROR and NXDOMAIN: SERVFAIL, REFUSED, NOTIMP...
            said.append(f"{where} answered {problem}")
            causes.add(problem)
        elif isinstance(problem, dns.message.Truncated):
            truncated.append(where)  # said with its TCP try, below
        elif tcp and where in truncated:
            truncated.remove(where)
            said.append(f"{where} truncated its answer over UDP, and TCP failed: {_problem_text(problem)}")
            causes.add("TCP")
        elif isinstance(problem, dns.exception.Timeout):
            said.append(f"{where} did not answer{' over TCP' if tcp else ''}")
            causes.add("timeout")
        else:
            said.append(f"{where}{' over TCP' if tcp else ''}: {_problem_text(problem)}")
            causes.add("other")
    for where in truncated:
        said.append(f"{where} truncated its answer over UDP, no time was left for TCP")
        causes.add("TCP")
    return "; ".join(dict.fromkeys(said)) or None, frozenset(causes)


def _server_text(server: str, port: int) -> str:
    # dnspython names a nameserver "Do53:127.0.0.1@53".
    address = server.removeprefix("Do53:").rpartition("@")[0] or server
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _problem_text(problem: object) -> str:
    text = str(problem)
    return f"{type(problem).__name__}: {text}" if text else type(problem).__name__


def _query_name(name: bytes | str) -> dns.name.Name | None:
    """The absolute DNS name dkimpy asks for, or None when s= and d= cannot form one."""
    # s= and d= come from the message, so anything can be in them; a name that cannot be
    # written in DNS cannot have a key (RFC 6376 section 3.6.2.1).
    try:
        text = name.decode("utf-8") if isinstance(name, bytes) else name
        if text.endswith(".."):
            # dkimpy appends the root's dot to d=, and d= written absolute ("example.com.") is the
            # same DNS name (RFC 1034 section 3.1): its key is at the same place. senderauth
            # aligns that d= with the From domain the same way (idn.ascii_domain).
            text = text[:-1]
        return dns.name.from_text(text, origin=dns.name.root)
    except (UnicodeError, dns.exception.DNSException, ValueError):
        return None


def _is_key_record(record: bytes) -> bool:
    """Whether a TXT record can be a DKIM key (RFC 6376 section 3.6.1): a tag=value list with p=,
    and v=, if there is one, first and DKIM1. An unrelated record at the selector is none."""
    try:
        tags = parse_tag_value(record)
    except InvalidTagValueList:
        return False
    if b"p" not in tags:
        return False
    return b"v" not in tags or (next(iter(tags)) == b"v" and tags[b"v"] == b"DKIM1")
