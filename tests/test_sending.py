"""gateway.testing.sending.deliver returns the reply to DATA, whatever the server answers to QUIT."""

from __future__ import annotations

import socket
import threading

from gateway.testing.sending import deliver


def _server_answering_quit_with(quit_reply: bytes) -> tuple[int, threading.Thread]:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = listener.accept()
        with connection, listener, connection.makefile("rb") as lines:
            connection.sendall(b"220 test ESMTP\r\n")
            in_data = False
            for line in lines:
                if in_data:
                    if line == b".\r\n":
                        in_data = False
                        connection.sendall(b"250 2.0.0 Filed\r\n")
                    continue
                verb = line[:4].upper()
                if verb == b"DATA":
                    in_data = True
                    connection.sendall(b"354 go on\r\n")
                elif verb == b"QUIT":
                    # A stopping gateway: 421 to every session (RFC 5321 3.8), or just closing.
                    connection.sendall(quit_reply)
                    return
                else:
                    connection.sendall(b"250 ok\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


def test_a_421_or_a_close_after_the_data_reply_leaves_the_reply():
    for quit_reply in (b"421 4.3.2 Shutting down\r\n", b""):
        port, thread = _server_answering_quit_with(quit_reply)
        reply = deliver(b"Subject: x\r\n\r\nbody\r\n", "note@example.com", port=port, mail_from="a@example.com",
                        timeout=5)
        assert reply == "250 2.0.0 Filed"
        thread.join(5)
