"""Which Nexudus account a warehouse or a ledger belongs to: the API's base URL and the user, never a secret."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit


def is_loopback(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Account:
    """Compared as Nexudus reads them: the scheme and host in any case, with or without a trailing `/`,
    and the user's email in any case.

    A server on this machine (a simulator) listens on whatever port was free when it started, so
    its port is not part of the account: the user tells two of them apart.
    """

    base_url: str
    username: str

    @classmethod
    def of(cls, base_url: str, username: str) -> Account:
        parts = urlsplit(base_url.strip())
        host = (parts.hostname or "").lower()
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None and not is_loopback(host):
            netloc = f"{netloc}:{parts.port}"
        url = urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), "", ""))
        return cls(base_url=url, username=username.strip().casefold())

    def __str__(self) -> str:
        return f"{self.username} at {self.base_url}"
