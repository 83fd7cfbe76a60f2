"""One webhook POST, safely: http(s) only, no private addresses (checked after DNS, and the checked
address is the one connected to), no redirects, a timeout, and a capped read of the answer.

docs/decisions/0013-webhooks.md says why urllib3 and how the address is pinned.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3
from django.conf import settings

READ_LIMIT = 4096  # bytes of an answer read at most; the rest is never read
SNIPPET = 1000  # characters of it kept with the attempt


class UnsafeURL(ValueError):
    """The URL is not one webhooks may be sent to; the message says why."""


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    duration_ms: int
    error: str = ""
    snippet: str = ""

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def url_problem(url: str) -> str | None:
    """Why ``url`` may not be an endpoint (its form, or a private address it names or resolves to),
    or None. A host that does not resolve now is accepted: delivery retries it."""
    try:
        host, port = _host_port(url)
        if not settings.WEBHOOKS_ALLOW_PRIVATE_URLS:
            _addresses(host, port)
    except UnsafeURL as refused:
        return str(refused)
    except OSError:
        return None
    return None


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> Outcome:
    """POST ``body`` to ``url`` once. Never raises: a refused URL, a network error or a timeout is an
    Outcome with no status code and the error said."""
    started = time.monotonic()

    def outcome(status_code: int | None = None, error: str = "", snippet: str = "") -> Outcome:
        return Outcome(status_code, int((time.monotonic() - started) * 1000), error[:500], snippet)

    try:
        host, port = _host_port(url)
        address = _addresses(host, port)[0]
    except UnsafeURL as refused:
        return outcome(error=f"refused: {refused}")
    except OSError as exc:
        return outcome(error=f"DNS: {exc}")
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default_port = 443 if parts.scheme == "https" else 80
    name = f"[{host}]" if ":" in host else host  # an IPv6 literal
    headers = {**headers, "Host": name if port == default_port else f"{name}:{port}"}
    pool: urllib3.HTTPConnectionPool
    if parts.scheme == "https":  # the certificate is checked against the name, the connection goes to the address
        pool = urllib3.HTTPSConnectionPool(address, port, server_hostname=host, assert_hostname=host, maxsize=1)
    else:
        pool = urllib3.HTTPConnectionPool(address, port, maxsize=1)
    try:
        response = pool.urlopen(
            "POST",
            target,
            body=body,
            headers=headers,
            redirect=False,
            retries=False,
            assert_same_host=False,
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            preload_content=False,
        )
        try:
            answer = response.read(READ_LIMIT, decode_content=False)
        finally:
            response.release_conn()
        return outcome(response.status, snippet=answer.decode("utf-8", "replace")[:SNIPPET])
    except urllib3.exceptions.NewConnectionError as exc:  # before TimeoutError: urllib3 makes it a subclass
        return outcome(error=f"connection failed: {exc.__cause__ or exc}")
    except urllib3.exceptions.TimeoutError:
        return outcome(error=f"timeout: no answer within {timeout:g} s")
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        return outcome(error=f"{type(exc).__name__}: {exc}")
    finally:
        pool.close()


def _host_port(url: str) -> tuple[str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL("the URL must be http or https")
    if not parts.hostname:
        raise UnsafeURL("the URL has no host")
    if parts.username or parts.password:
        raise UnsafeURL("the URL may not carry credentials")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _addresses(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, when every one of them may be sent to."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not settings.WEBHOOKS_ALLOW_PRIVATE_URLS:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if not ip.is_global or ip.is_multicast:
                raise UnsafeURL(f"{host} is a private, loopback or link-local address ({ip})")
    return addresses
