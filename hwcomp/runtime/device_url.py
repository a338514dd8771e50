"""Device URLs: ``local``, ``rpc://HOST:PORT`` or ``tracker://HOST:PORT/KEY``."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

LOCALHOST = "127.0.0.1"
URL_FORMS = "'local', 'rpc://HOST:PORT' or 'tracker://HOST:PORT/KEY'"


# ----------------------------------------------------------------------------- device URLs


class DeviceURLError(ValueError):
    """A device URL that is not one of the accepted forms."""


@dataclass(frozen=True)
class DeviceURL:
    """A parsed device URL: where a session comes from."""

    kind: Literal["local", "rpc", "tracker"]
    host: str = ""
    port: int = 0
    key: str = ""

    def __str__(self) -> str:
        if self.kind == "local":
            return "local"
        host = f"[{self.host}]" if ":" in self.host else self.host
        tail = f"/{self.key}" if self.kind == "tracker" else ""
        return f"{self.kind}://{host}:{self.port}{tail}"


def parse_device_url(url: str) -> DeviceURL:
    """Parse ``local``, ``rpc://HOST:PORT`` or ``tracker://HOST:PORT/KEY``."""
    text = url.strip()
    if text == "local":
        return DeviceURL("local")
    try:
        parts = urlsplit(text)  # raises ValueError itself, e.g. "Invalid IPv6 URL" for rpc://[::1:9090
    except ValueError as err:
        raise DeviceURLError(f"bad device URL {url!r}: {err}; use {URL_FORMS}") from None
    if parts.scheme not in ("rpc", "tracker"):
        raise DeviceURLError(f"bad device URL {url!r}: unknown scheme {parts.scheme!r}; use {URL_FORMS}")
    try:
        port = parts.port
    except ValueError as err:  # non-numeric or out of range
        raise DeviceURLError(f"bad device URL {url!r}: {err}; use {URL_FORMS}") from None
    if not parts.hostname or any(c.isspace() for c in parts.hostname) or port is None or port == 0:
        raise DeviceURLError(f"bad device URL {url!r}: needs HOST:PORT; use {URL_FORMS}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise DeviceURLError(f"bad device URL {url!r}: unexpected parts; use {URL_FORMS}")
    key = parts.path.strip("/")
    if parts.scheme == "rpc":
        if key:
            raise DeviceURLError(f"bad device URL {url!r}: rpc:// takes no /KEY (that is tracker://)")
        return DeviceURL("rpc", parts.hostname, port)
    if not key or "/" in key or " " in key:
        raise DeviceURLError(f"bad device URL {url!r}: tracker:// needs exactly one /KEY; use {URL_FORMS}")
    return DeviceURL("tracker", parts.hostname, port, key)


def _check_reachable(host: str, port: int, what: str, timeout: float = 5.0) -> None:
    # Refuse an address nobody listens on at once, with a clear message, before TVM's client tries it.
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        raise ConnectionError(f"no {what} reachable at {host}:{port}: {err}") from None
