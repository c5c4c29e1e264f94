"""Listening addresses, `[HOST:]PORT`, as --metrics-addr and the dashboard's --addr take them."""

from __future__ import annotations

import ipaddress
import re

DEFAULT_HOST = "127.0.0.1"
"""The host of an address that names none: never listen beyond this machine unless asked."""
MAX_PORT = 65535

_PORT = re.compile(r"[0-9]{1,5}")
_HOST_NAME = re.compile(r"[A-Za-z0-9._-]+")


def parse_addr(text: str, *, what: str, example_port: int) -> tuple[str, int]:
    """'9464' or ':9464' -> ('127.0.0.1', 9464) (loopback unless an address says otherwise);
    '0.0.0.0:9464', '127.0.0.1:9464', '[::1]:9464', 'localhost:9464' as given. Bad input: ValueError with a
    clear message that starts with `what` and the text (port must be 0..65535; 0 picks a free port)."""
    spec = text.strip()
    if "://" in spec:
        raise ValueError(f"{what} {text!r}: give host:port, not a URL")
    if spec.startswith("["):
        host, bracket, port_text = spec[1:].partition("]")
        if not bracket or port_text[:1] not in ("", ":"):  # "[::1" or "[::1]9464"
            raise ValueError(f"{what} {text!r}: write an IPv6 address as in [::1]:{example_port}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{what} {text!r}: {host!r} is not an IPv6 address") from None
        port_text = port_text[1:]
    else:
        host, colon, port_text = spec.rpartition(":")
        if not colon or not host:
            host = DEFAULT_HOST
        elif ":" in host:
            raise ValueError(f"{what} {text!r}: put an IPv6 address in brackets, as in [::1]:{example_port}")
        elif not _HOST_NAME.fullmatch(host):
            raise ValueError(f"{what} {text!r}: {host!r} is not a host name or address")
    if not _PORT.fullmatch(port_text) or int(port_text) > MAX_PORT:
        raise ValueError(
            f"{what} {text!r}: port must be 0..{MAX_PORT} (0 picks a free port), "
            f"as in {example_port}, :{example_port} or 0.0.0.0:{example_port}"
        )
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host`: 127.0.0.0/8, ::1 or the name localhost. Any other name
    counts as reachable from elsewhere (it may resolve to anything)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
