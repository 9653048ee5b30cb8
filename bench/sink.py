"""The baseline server: aiosmtpd with a handler that accepts every message and does nothing with it."""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiosmtpd.smtp import SMTP


class Sink:
    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's hook name)
        return "250 2.0.0 OK"


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    # The same protocol options the gateway uses, so only the work behind DATA differs.
    server = await loop.create_server(
        lambda: SMTP(Sink(), decode_data=False, hostname="sink.localhost", data_size_limit=20 * 1024 * 1024,
                     ident="sink"), host="127.0.0.1", port=port)
    stop = asyncio.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sink")
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
