"""Host names and ports: where to connect to a server that was told to listen on ``host``.

One rule for every caller (the process manager's port check, health checks, base URLs):
a server bound to a wildcard address is reached on the loopback address of its family.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}


def connect_host(host: str) -> str:
    """The address to connect to for a server listening on ``host``."""
    host = host.strip()
    if host in _WILDCARDS:
        return _WILDCARDS[host]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def base_url(host: str, port: int) -> str:
    h = connect_host(host)
    return f"http://[{h}]:{port}" if ":" in h else f"http://{h}:{port}"


def port_in_use(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts connections on ``port`` (of the loopback, for a wildcard host)."""
    try:
        with socket.create_connection((connect_host(host), port), timeout=timeout):
            return True
    except OSError:
        return False


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names this machine's loopback (127.0.0.0/8, ::1, localhost): traffic never leaves it."""
    host = connect_host(host).rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other name may resolve anywhere


def is_loopback_url(url: str) -> bool:
    return is_loopback_host(urlsplit(url).hostname or "")
