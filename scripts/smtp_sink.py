#!/usr/bin/env python3
"""A real SMTP server (aiosmtpd) for tests, whose answers a test controls.

    smtp_sink.py PORT DIR [ADDRESS]   (ADDRESS: 127.0.0.1 unless given)

Each accepted message is saved as DIR/<n>.eml. Before accepting DATA it looks in DIR:
- a file `reject` makes it answer 550 (permanent) while the file exists;
- a file `tempfail` holding N makes it answer 451 (transient) to the next N messages;
- a file `hold` makes it wait before answering each message for as long as the file
  exists (a file `held-N` exists for each message waiting), then refuse it with 451:
  a held message is never accepted (its sender is typically killed meanwhile).
A client that hung up before the reply gets no mail stored: it never saw the server
accept it, and will send it again.
Prints `listening PORT` once it accepts connections; runs until killed.
"""

import asyncio
import itertools
import os
import signal
import socket
import sys
from pathlib import Path

from aiosmtpd.controller import Controller


def client_gone(server) -> bool:
    """Whether the client closed its end (a peek at its socket reads end-of-file)."""
    transport = server.transport
    if transport is None or transport.is_closing():
        return True
    sock = transport.get_extra_info("socket")
    if sock is None:
        return True
    peer = socket.fromfd(sock.fileno(), socket.AF_INET, socket.SOCK_STREAM)
    try:
        return peer.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        peer.close()


class Handler:
    def __init__(self, directory: Path):
        self.directory = directory
        self.counter = itertools.count(1)
        self.holds = itertools.count(1)

    async def handle_DATA(self, server, session, envelope):
        hold = self.directory / "hold"
        if hold.exists():
            held = self.directory / f"held-{next(self.holds)}"
            held.touch()
            while hold.exists():
                await asyncio.sleep(0.02)
            held.unlink(missing_ok=True)
            return "451 4.3.2 Held, not accepted"
        # A client that hung up before the final reply never learnt the message was
        # accepted: like a careful MTA, do not deliver it (it will be sent again).
        if client_gone(server):
            return "451 4.4.2 The client went away"
        if (self.directory / "reject").exists():
            return "550 5.7.1 Rejected by the test's rule"
        tempfail = self.directory / "tempfail"
        if tempfail.exists():
            left = int(tempfail.read_text().strip() or "0")
            if left > 0:
                tempfail.write_text(str(left - 1))
                return "451 4.3.0 Try again later"
        n = next(self.counter)
        with open(self.directory / "log", "a") as log:
            log.write(f"stored {n} from {session.peer}\n")
        temp = self.directory / f".{n}.tmp"
        temp.write_bytes(envelope.original_content or envelope.content)
        os.replace(temp, self.directory / f"{n:06}.eml")
        return "250 OK"


def main() -> None:
    port, directory = int(sys.argv[1]), Path(sys.argv[2])
    directory.mkdir(parents=True, exist_ok=True)
    hostname = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
    controller = Controller(Handler(directory), hostname=hostname, port=port)
    controller.start()
    print(f"listening {port}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    controller.stop()


if __name__ == "__main__":
    main()
