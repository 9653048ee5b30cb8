"""A small authoritative DNS server on loopback, over UDP and TCP, with faults to order per name."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import struct
import threading
from collections import Counter
from collections.abc import Iterator

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rrset

# The longest character-string a TXT record can hold (RFC 1035 section 3.3.14); a longer key is
# published as several strings that the verifier joins (RFC 6376 section 3.6.2.2).
TXT_STRING_LIMIT = 255


class DnsServer:
    """Answers TXT queries from its own table, authoritatively, the way a domain's DNS would.

    Unknown names get NXDOMAIN with an SOA in the authority section so resolvers can cache the
    negative answer (RFC 2308 section 3). ``servfail(name)``, ``refuse(name)``, ``truncate(name)``
    and ``drop(name)`` make one name fail the way a broken or unreachable authority (or resolver)
    does, to test how the gateway defers mail.
    """

    def __init__(self, records: dict[str, str] | None = None, host: str = "127.0.0.1",
                 port: int = 0, ttl: int = 300, negative_ttl: int = 60) -> None:
        self.host = host
        self.port = port
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._lock = threading.Lock()
        self._records: dict[dns.name.Name, list[list[bytes]]] = {}
        self._servfail: set[dns.name.Name] = set()
        self._refused: set[dns.name.Name] = set()
        self._truncated: set[dns.name.Name] = set()
        self._dropped: set[dns.name.Name] = set()
        self._queries: Counter[dns.name.Name] = Counter()
        self._udp: socketserver.ThreadingUDPServer | None = None
        self._tcp: socketserver.ThreadingTCPServer | None = None
        self._threads: list[threading.Thread] = []
        for name, value in (records or {}).items():
            self.add_txt(name, value)

    # --- The table and the faults -------------------------------------------------------------

    def add_txt(self, name: str, value: str | bytes) -> None:
        """Publish one TXT record at ``name``; a value over 255 bytes becomes several strings."""
        data = value.encode("utf-8") if isinstance(value, str) else value
        strings = [data[start:start + TXT_STRING_LIMIT]
                   for start in range(0, len(data), TXT_STRING_LIMIT)] or [b""]
        with self._lock:
            self._records.setdefault(_name(name), []).append(strings)

    def remove(self, name: str) -> None:
        """Forget every record and fault of ``name``: it answers NXDOMAIN from now on."""
        key = _name(name)
        with self._lock:
            self._records.pop(key, None)
            self._servfail.discard(key)
            self._refused.discard(key)
            self._truncated.discard(key)
            self._dropped.discard(key)

    def servfail(self, name: str) -> None:
        """Answer SERVFAIL for ``name``, as an authority with a broken zone does."""
        with self._lock:
            self._servfail.add(_name(name))

    def refuse(self, name: str) -> None:
        """Answer REFUSED for ``name``, as a resolver whose access control leaves the client out does."""
        with self._lock:
            self._refused.add(_name(name))

    def truncate(self, name: str) -> None:
        """Answer ``name`` over UDP with the TC bit alone, and close a TCP connection that asks for
        it: a key too large for UDP behind a firewall that lets no DNS over TCP through."""
        with self._lock:
            self._truncated.add(_name(name))

    def drop(self, name: str) -> None:
        """Never answer for ``name``, so the client times out."""
        with self._lock:
            self._dropped.add(_name(name))

    def heal(self, name: str) -> None:
        """Undo ``servfail``, ``refuse``, ``truncate`` and ``drop`` for ``name``."""
        key = _name(name)
        with self._lock:
            self._servfail.discard(key)
            self._refused.discard(key)
            self._truncated.discard(key)
            self._dropped.discard(key)

    def query_count(self, name: str) -> int:
        """How many queries for ``name`` arrived, over UDP and TCP together."""
        with self._lock:
            return self._queries[_name(name)]

    # --- Serving ------------------------------------------------------------------------------

    def start(self) -> DnsServer:
        server = self
        # UDP first with the port asked for (0: any free one), then TCP on the same number; a
        # resolver falls back to TCP on a truncated answer (RFC 7766 section 5) and expects the
        # same address. Another program may hold that TCP port, so try a few UDP ports.
        for _attempt in range(20):
            udp = _UdpServer((self.host, self.port), _UdpHandler)
            udp.dns_server = server
            port = udp.server_address[1]
            try:
                tcp = _TcpServer((self.host, port), _TcpHandler)
            except OSError:
                udp.server_close()
                if self.port:
                    raise
                continue
            tcp.dns_server = server
            break
        else:
            raise OSError("no port free for both UDP and TCP on " + self.host)
        self._udp, self._tcp, self.port = udp, tcp, port
        for listener in (udp, tcp):
            thread = threading.Thread(target=listener.serve_forever, kwargs={"poll_interval": 0.05},
                                      name=f"dns-{type(listener).__name__}-{port}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for listener in (self._udp, self._tcp):
            if listener is not None:
                listener.shutdown()
                listener.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._udp = self._tcp = None
        self._threads = []

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def nameserver(self) -> str:
        return self.host

    # --- Answering ----------------------------------------------------------------------------

    def answer(self, wire: bytes, max_size: int | None) -> bytes | None:
        """The reply to one query in wire format, None to stay silent, b"" (TCP) to close the connection."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None  # Not a DNS query: a real server drops it too.
        if not query.question:
            return None
        question = query.question[0]
        qname = question.name.canonicalize()
        with self._lock:
            self._queries[qname] += 1
            if qname in self._dropped:
                return None
            servfail = qname in self._servfail
            refused = qname in self._refused
            truncated = qname in self._truncated
            records = [list(strings) for strings in self._records.get(qname, [])]
            exists = bool(records) or any(name.is_subdomain(qname) for name in self._records)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if truncated:
            if max_size is None:
                return b""
            response.flags |= dns.flags.TC
            return response.to_wire()
        if servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif refused:
            response.set_rcode(dns.rcode.REFUSED)
        elif not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa())
        elif question.rdtype in (dns.rdatatype.TXT, dns.rdatatype.ANY) and records:
            rrset = dns.rrset.RRset(question.name, dns.rdataclass.IN, dns.rdatatype.TXT)
            rrset.update_ttl(self.ttl)
            for strings in records:
                rrset.add(dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, strings))
            response.answer.append(rrset)
        else:
            # The name exists (or has names below it, RFC 8020) but holds no record of this type.
            response.authority.append(self._soa())
        limit = max_size or 65535
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            # Too large for UDP: send the header alone with TC set, and the client asks again
            # over TCP (RFC 1035 section 4.2.1).
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            return truncated.to_wire(max_size=limit)

    def _soa(self) -> dns.rrset.RRset:
        soa = dns.rrset.RRset(dns.name.root, dns.rdataclass.IN, dns.rdatatype.SOA)
        soa.update_ttl(self.negative_ttl)
        soa.add(dns.rdtypes.ANY.SOA.SOA(
            dns.rdataclass.IN, dns.rdatatype.SOA, dns.name.from_text("ns.test."),
            dns.name.from_text("hostmaster.test."), 1, 3600, 600, 86400, self.negative_ttl))
        return soa


@contextlib.contextmanager
def silent_nameservers(hosts: list[str], port: int) -> Iterator[None]:
    """UDP sockets at ``hosts`` (other loopback addresses: 127.0.0.2, ...) on ``port`` that take
    queries and never answer, as black-holed nameservers do: the client waits for each try to time out."""
    sockets: list[socket.socket] = []
    try:
        for host in hosts:
            silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(silent)
            silent.bind((host, port))
        yield
    finally:
        for silent in sockets:
            silent.close()


def _name(text: str) -> dns.name.Name:
    return dns.name.from_text(text, origin=dns.name.root).canonicalize()


class _UdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = True
    allow_reuse_address = True
    dns_server: DnsServer


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    dns_server: DnsServer


class _UdpHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        wire, sock = self.request
        server: DnsServer = self.server.dns_server  # type: ignore[attr-defined]
        try:
            query = dns.message.from_wire(wire)
            # Without EDNS a UDP answer is at most 512 bytes (RFC 1035 section 2.3.4).
            max_size = max(query.payload, 512) if query.edns >= 0 else 512
        except dns.exception.DNSException:
            max_size = 512
        reply = server.answer(wire, max_size)
        if reply is not None:
            sock.sendto(reply, self.client_address)


class _TcpHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: DnsServer = self.server.dns_server  # type: ignore[attr-defined]
        connection: socket.socket = self.request
        connection.settimeout(10)
        try:
            # Each message is preceded by its length in two bytes (RFC 1035 section 4.2.2).
            while True:
                header = _read_exactly(connection, 2)
                if header is None:
                    return
                (length,) = struct.unpack("!H", header)
                wire = _read_exactly(connection, length)
                if wire is None:
                    return
                reply = server.answer(wire, None)
                if reply == b"":
                    return
                if reply is not None:
                    connection.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return


def _read_exactly(connection: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data
