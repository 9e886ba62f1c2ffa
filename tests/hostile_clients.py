"""Hostile HTTP clients against one server, all at once, for a bounded time (loopback use only).

Run as its own process (``python tests/hostile_clients.py 127.0.0.1 9855 --seconds 20``) so its
threads do not compete for the GIL with the process that measures the server. It keeps up:

- header bombs: requests of 100 headers of 64 KB each, sent over and over;
- idle sockets: ``--idle`` connections (1,100) that send nothing, reopened when the server closes
  them;
- byte-drip clients: connections sending one byte of a request head every half second;
- a wrong-password flood: requests with a valid user name and a wrong basic-auth password.

It prints ``attacking`` once every idle socket is opened, and one JSON line of counts when it
stops (after ``--seconds``, or at SIGTERM).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import json
import resource
import selectors
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable

BOMB_HEADERS = 100
BOMB_HEADER_BYTES = 64 * 1000
DRIP_INTERVAL = 0.5
DRIP_HEAD = b"GET /metrics HTTP/1.1\r\nHost: hostile\r\nX-Drip: " + b"d" * 4000


class Attack:
    """The attack's clock, stop flag and counts, shared by its threads."""

    def __init__(self, host: str, port: int, seconds: float) -> None:
        self.address = (host, port)
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.until = time.monotonic() + seconds
        self.stopped = False  # a plain flag: set from a signal handler, where no lock may be taken
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def running(self) -> bool:
        return not self.stopped and time.monotonic() < self.until

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.counts[what] += n

    def connect(self, timeout: float = 5.0) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.address)
        except BaseException:
            sock.close()
            raise
        return sock

    def connect_nowait(self) -> socket.socket:
        """A connection started but not waited for: a full backlog does not stall the attacker."""
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            raise OSError(code, "connect failed")
        return sock


def read_status(sock: socket.socket) -> str:
    """The status code of the answer on ``sock``, or what happened instead."""
    try:
        first = sock.recv(64)
    except TimeoutError:
        return "timeout"
    except OSError:
        return "reset"
    if not first:
        return "closed"
    parts = first.split(b" ", 2)
    return parts[1].decode("ascii", "replace") if len(parts) > 1 else "garbage"


def header_bomb(attack: Attack) -> None:
    line = b"X-Bomb-%03d: " + b"b" * BOMB_HEADER_BYTES + b"\r\n"
    while attack.running():
        try:
            with attack.connect() as sock:
                attack.count("bomb_sent")
                try:
                    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: hostile\r\n")
                    for index in range(BOMB_HEADERS):
                        sock.sendall(line.replace(b"%03d", b"%03d" % index))
                    sock.sendall(b"\r\n")
                except OSError:
                    pass  # the server hung up while we were still sending: what it should do
                attack.count(f"bomb_answer_{read_status(sock)}")
        except OSError:
            attack.count("bomb_connect_failed")
            time.sleep(0.05)


def idle_sockets(attack: Attack, count: int, ready: threading.Event) -> None:
    """Keep ``count`` connections open that never send a byte; reopen those the server closes."""
    selector = selectors.DefaultSelector()
    scratch = bytearray(4096)

    def open_one() -> None:
        try:
            sock = attack.connect_nowait()
        except OSError:
            attack.count("idle_connect_failed")
            return
        selector.register(sock, selectors.EVENT_READ)
        attack.count("idle_opened")

    for _ in range(count):
        open_one()
    ready.set()
    while attack.running():
        for key, _ in selector.select(timeout=0.1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv_into(scratch)
            except BlockingIOError:
                continue
            except OSError:
                data = 0
            if not data:  # closed by the server: open another
                selector.unregister(sock)
                sock.close()
                attack.count("idle_closed_by_server")
                if attack.running():
                    open_one()
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    selector.close()


def byte_drip(attack: Attack, count: int) -> None:
    """``count`` connections that each send one more byte of a request head every half second."""
    clients: list[tuple[socket.socket, int]] = []

    def open_one() -> tuple[socket.socket, int] | None:
        try:
            return attack.connect_nowait(), 0
        except OSError:
            attack.count("drip_connect_failed")
            return None

    clients = [client for client in (open_one() for _ in range(count)) if client]
    while attack.running():
        time.sleep(DRIP_INTERVAL)
        kept = []
        for sock, sent in clients:
            try:
                sock.send(DRIP_HEAD[sent % len(DRIP_HEAD) : sent % len(DRIP_HEAD) + 1])
                kept.append((sock, sent + 1))
                attack.count("drip_bytes")
            except BlockingIOError:
                kept.append((sock, sent))  # still connecting
            except OSError:
                sock.close()
                attack.count("drip_closed_by_server")
                replacement = open_one()
                if replacement:
                    kept.append(replacement)
        clients = kept
    for sock, _ in clients:
        sock.close()


def wrong_passwords(attack: Attack, user: str, password: str) -> None:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = (
        f"GET /metrics HTTP/1.1\r\nHost: hostile\r\nAuthorization: Basic {token}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    while attack.running():
        try:
            with attack.connect(timeout=10.0) as sock:
                sock.sendall(request)
                attack.count(f"flood_answer_{read_status(sock)}")
        except OSError:
            attack.count("flood_connect_failed")
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--seconds", type=float, default=20.0, help="stop after this long")
    parser.add_argument("--bombs", type=int, default=4, help="header-bomb threads")
    parser.add_argument("--idle", type=int, default=1100, help="idle sockets kept open")
    parser.add_argument("--drip", type=int, default=50, help="byte-drip connections")
    parser.add_argument("--floods", type=int, default=8, help="wrong-password threads")
    parser.add_argument("--user", default="prometheus")
    parser.add_argument("--wrong-password", default="not-the-password")
    args = parser.parse_args(argv)

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    attack = Attack(args.host, args.port, args.seconds)
    signal.signal(signal.SIGTERM, lambda *_: setattr(attack, "stopped", True))
    idle_ready = threading.Event()
    jobs: list[tuple[Callable[..., None], tuple[object, ...]]] = [
        (idle_sockets, (attack, args.idle, idle_ready)),
        (byte_drip, (attack, args.drip)),
    ]
    jobs += [(header_bomb, (attack,))] * args.bombs
    jobs += [(wrong_passwords, (attack, args.user, args.wrong_password))] * args.floods
    threads = [threading.Thread(target=job, args=job_args, daemon=True) for job, job_args in jobs]
    for thread in threads:
        thread.start()
    idle_ready.wait(timeout=30)
    print("attacking", flush=True)
    while attack.running():
        time.sleep(0.1)
    attack.stopped = True
    for thread in threads:
        thread.join(timeout=15)
    print(json.dumps(dict(sorted(attack.counts.items()))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
