"""Where the exporter listens: ``--web.listen-address`` parsed, the listening socket (IPv6 and
IPv4 on one socket for an empty host), and the open-file limit that bounds its connections.

Shared by the exporter's server and the simulator's.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from typing import Any

logger = logging.getLogger(__name__)

FD_RESERVE = 128
"""File descriptors kept free of HTTP connections: OKX connections, logs, the demo simulator."""
LISTEN_BACKLOG = 4096  # the kernel lowers it to net.core.somaxconn
_HOSTNAME_RE = re.compile(r"\A[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\.?\Z")


def _bad_address(value: str, why: str) -> ValueError:
    return ValueError(
        f"{value!r} is not a listen address: {why}; use HOST:PORT, such as :9855, "
        "127.0.0.1:9855, [::1]:9855 or localhost:9855"
    )


def parse_listen_address(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` or ``[IPv6]:PORT``; an empty host (``""``) is every interface.

    Raises ValueError with a message that says what is wrong and shows good examples.
    """
    text = value.strip()
    if "://" in text:
        raise _bad_address(value, "give HOST:PORT, not a URL")
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise _bad_address(value, "no ']:PORT' after the IPv6 address")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad_address(value, f"{host!r} in brackets is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise _bad_address(value, "no ':PORT'")
        if ":" in host:
            raise _bad_address(value, "an IPv6 address goes in brackets, as in [::1]:9855")
        if host and not _HOSTNAME_RE.match(host):
            raise _bad_address(value, f"{host!r} is not a host name or IP address")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise _bad_address(value, "the port must be a number from 0 to 65535")
    return host, int(port_text)


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one, as Go programs do; the soft limit after."""
    import resource  # Unix only

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as error:  # e.g. hard is unlimited but above fs.nr_open
            logger.debug("cannot raise the open-file limit from %d to %d: %s", soft, hard, error)
    return soft


def connection_cap(wanted: int) -> int:
    """``wanted``, lowered so that the connections leave ``FD_RESERVE`` descriptors free."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError):  # pragma: no cover - not Unix
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - FD_RESERVE))


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening socket; ``""`` and ``::`` take IPv6 and IPv4 where the system has IPv6."""
    if host in ("", "::") and socket.has_ipv6:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError:  # IPv6 switched off in the kernel
            sock = None
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:  # no dual-stack sockets on this system
                sock.close()
                sock = None
        if sock is not None:
            return _bind(sock, ("::", port))
    infos = socket.getaddrinfo(
        host or "0.0.0.0", port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    # A name with both kinds of address (localhost) listens on its IPv4 one, as Go does.
    family, _, _, _, sockaddr = min(infos, key=lambda info: info[0] != socket.AF_INET)
    return _bind(socket.socket(family, socket.SOCK_STREAM), sockaddr)


def _bind(sock: socket.socket, address: tuple[Any, ...]) -> socket.socket:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def client_address(address: tuple[Any, ...]) -> tuple[Any, ...]:
    """An IPv4 client of a dual-stack socket shown as ``127.0.0.1``, not ``::ffff:127.0.0.1``."""
    host = address[0]
    if isinstance(host, str) and host.startswith("::ffff:") and "." in host:
        return (host[7:], *address[1:2])
    return address
