"""A raw asyncio SMTP client that sends prepared messages over a number of concurrent connections."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class Sent:
    """One message as the client saw it: when DATA's end went out, when the reply came, the reply."""

    index: int
    data_sent: float
    replied: float
    reply: str

    @property
    def seconds(self) -> float:
        return self.replied - self.data_sent

    @property
    def accepted(self) -> bool:
        return self.reply.startswith("250")


@dataclass
class Run:
    sent: list[Sent] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    refused_sessions: int = 0
    # Sessions the server closed or that failed after the greeting (a 421 in the middle, a reset).
    broken_sessions: int = 0

    @property
    def deferred(self) -> int:
        """Messages that got a 4xx reply at MAIL, RCPT, DATA or its end: the client would retry them."""
        return sum(1 for item in self.sent if item.reply[:1] == "4")

    @property
    def refused(self) -> int:
        return sum(1 for item in self.sent if item.reply[:1] == "5")

    @property
    def accepted(self) -> int:
        return sum(1 for item in self.sent if item.accepted)

    @property
    def rate(self) -> float:
        """Accepted messages per second of wall time."""
        return self.accepted / max(self.ended - self.started, 1e-9)


class SmtpError(Exception):
    pass


def dot_stuff(raw: bytes) -> bytes:
    """The DATA payload of a message: CRLF lines, leading dots doubled, ended by CRLF.CRLF (RFC 5321 4.5.2)."""
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"


class Connection:
    """One SMTP session; no smtplib, so that the client costs little CPU next to the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        connection = cls(reader, writer)
        try:
            greeting = await connection.reply()
            if not greeting.startswith("220"):
                raise SmtpError(greeting)
            ehlo = await connection.command(b"EHLO bench.example.com")
            if not ehlo.startswith("250"):
                raise SmtpError(ehlo)
        except (SmtpError, ConnectionError):
            # A server at its session limit answers 421 and closes (RFC 5321 section 3.8): an
            # outcome the caller counts, not a crash of the bench.
            writer.close()
            raise
        return connection

    async def reply(self) -> str:
        lines = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise SmtpError("connection closed")
            lines.append(line.decode("latin-1").rstrip("\r\n"))
            if len(line) < 4 or line[3:4] != b"-":
                return lines[-1] if len(lines) == 1 else lines[0][:4] + " ".join(item[4:] for item in lines)

    async def command(self, line: bytes) -> str:
        self.writer.write(line + b"\r\n")
        return await self.reply()

    async def send(self, index: int, mail_from: str, rcpt: str, payload: bytes) -> Sent:
        """Send one message whose ``payload`` is already dot-stuffed and terminated."""
        for line in (f"MAIL FROM:<{mail_from}>".encode(), f"RCPT TO:<{rcpt}>".encode()):
            reply = await self.command(line)
            if not reply.startswith("250"):
                await self.command(b"RSET")
                now = time.perf_counter()
                return Sent(index, now, now, reply)
        reply = await self.command(b"DATA")
        if not reply.startswith("354"):
            now = time.perf_counter()
            return Sent(index, now, now, reply)
        self.writer.write(payload)
        data_sent = time.perf_counter()
        reply = await self.reply()
        return Sent(index, data_sent, time.perf_counter(), reply)

    async def close(self) -> None:
        try:
            await self.command(b"QUIT")
        except (SmtpError, ConnectionError):
            pass
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


async def blast(port: int, messages: list[tuple[str, str, bytes]], concurrency: int) -> Run:
    """Send every message as fast as the server takes them, over ``concurrency`` connections.

    Each message is (mail_from, rcpt, dot-stuffed payload). Connections are opened before the
    clock starts, so the rate measures mail, not TCP handshakes.
    """
    run = Run()
    connections = await asyncio.gather(*(Connection.open(port) for _ in range(concurrency)))
    next_index = iter(range(len(messages)))

    async def worker(connection: Connection) -> None:
        for index in next_index:
            mail_from, rcpt, payload = messages[index]
            run.sent.append(await connection.send(index, mail_from, rcpt, payload))

    run.started = time.perf_counter()
    await asyncio.gather(*(worker(connection) for connection in connections))
    run.ended = time.perf_counter()
    await asyncio.gather(*(connection.close() for connection in connections))
    return run


async def paced(port: int, messages: list[tuple[str, str, bytes]], rate: float, connections: int) -> Run:
    """Send one message every 1/rate seconds (an open loop: a slow reply does not slow the arrivals).

    A message waits for a free connection from a pool of ``connections``; keep the pool large
    enough that none ever waits, or the arrivals are no longer steady.
    """
    run = Run()
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for connection in await asyncio.gather(*(Connection.open(port) for _ in range(connections))):
        pool.put_nowait(connection)

    async def one(index: int) -> None:
        connection = await pool.get()
        mail_from, rcpt, payload = messages[index]
        run.sent.append(await connection.send(index, mail_from, rcpt, payload))
        pool.put_nowait(connection)

    tasks = []
    run.started = time.perf_counter()
    for index in range(len(messages)):
        delay = run.started + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index)))
    await asyncio.gather(*tasks)
    run.ended = time.perf_counter()
    while not pool.empty():
        await pool.get_nowait().close()
    return run


async def burst(port: int, messages: list[tuple[str, str, bytes]]) -> Run:
    """Open one session per message, all at once, and send every message at the same time.

    Sessions the server turns away at the greeting (421, its max_sessions) or that break later are
    counted, not retried: the point is what the load costs the server, not that all of it gets through.
    """
    run = Run()
    start = asyncio.Event()

    async def one(index: int) -> None:
        try:
            connection = await Connection.open(port)
        except (SmtpError, ConnectionError):
            run.refused_sessions += 1
            return
        await start.wait()
        mail_from, rcpt, payload = messages[index]
        try:
            run.sent.append(await connection.send(index, mail_from, rcpt, payload))
        except (SmtpError, ConnectionError):
            run.broken_sessions += 1
        finally:
            await connection.close()

    tasks = [asyncio.create_task(one(index)) for index in range(len(messages))]
    await asyncio.sleep(0.5)  # Let every session reach its greeting before the data flows.
    run.started = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    run.ended = time.perf_counter()
    return run
