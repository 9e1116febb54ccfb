"""Which addresses a user-given URL (a callback, an HTTP tool) may reach, and an httpx transport that
connects only to an address it checked. One rule for both services, so a spelling refused in one place
is refused in the other.

Checking a name and then letting httpx resolve it again to connect leaves a gap: a DNS answer that
changes in between (DNS rebinding) reaches whatever the second answer names. ``guarded_client`` closes
it where the socket is opened: its network backend resolves the name once, checks every address of
the answer, and connects to a checked one. The name stays what the connection is for (Host header,
TLS SNI and certificate check, and the pool's key), so only the socket's address changes hands.

Errors::

    AgentstreamError
     ├── RefusedAddress   (not retriable: the host is, or resolves to, a non-public address)
     └── UnresolvedHost   (retriable: DNS gave no answer)
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import httpcore
import httpx

from services.common.errors import AgentstreamError

_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d
_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's defaults


def internal_address(address: str) -> bool:
    """True for loopback, private, link-local, shared, reserved, multicast and unspecified addresses,
    also when an IPv6 address carries one of them inside (IPv4-mapped, IPv4-compatible, 6to4, Teredo)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # a zone id (fe80::1%eth0) does not change the range
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # the socket talks IPv4 to the inner address: judge that one
            return internal_address(str(ip.ipv4_mapped))
        if ip in _IPV4_COMPATIBLE and int(ip) > 1:
            return internal_address(str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))) or ip.is_reserved
        tunnelled = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if tunnelled is not None and internal_address(str(tunnelled)):
            return True
    return not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_loopback or ip.is_private or ip.is_link_local


class RefusedAddress(AgentstreamError):
    """The host is, or resolves to, a loopback, private, link-local or otherwise non-public address."""

    retriable = False


class UnresolvedHost(AgentstreamError):
    retriable = True


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses ``host`` has now, in the order to try them; raises UnresolvedHost."""
        ...


class SystemResolver:
    """The operating system's resolver (``getaddrinfo``, run off the event loop by asyncio)."""

    async def resolve(self, host: str, port: int) -> list[str]:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise UnresolvedHost(f"{host!r} does not resolve: {exc}") from exc
        return list(dict.fromkeys(str(info[4][0]) for info in infos))


class ScriptedResolver:
    """In memory, for tests: each host answers its scripted answers in turn, the last one from then on.

    ``ScriptedResolver({"hooks.test": [["93.184.215.14"], ["127.0.0.1"]]})`` answers a public address
    once (the check) and loopback afterwards (the rebinding). Unknown hosts do not resolve."""

    def __init__(self, answers: Mapping[str, Sequence[Sequence[str]]]) -> None:
        self._answers = {host.lower(): [list(a) for a in seq] for host, seq in answers.items()}
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        answers = self._answers.get(host.lower().rstrip("."))
        if not answers:
            raise UnresolvedHost(f"{host!r} does not resolve (not scripted)")
        return answers.pop(0) if len(answers) > 1 else list(answers[0])


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


async def public_addresses(host: str, port: int, resolver: Resolver, *, allow_private: bool) -> list[str]:
    """Resolve ``host`` once; every address of the answer must be public (one bad address refuses the
    whole answer: which one a client would pick is not ours to guess), unless ``allow_private``."""
    literal = _literal(host)
    addresses = [literal] if literal is not None else await resolver.resolve(host, port)
    if not addresses:
        raise UnresolvedHost(f"{host!r} has no addresses")
    if not allow_private:
        refused = [a for a in addresses if internal_address(a)]
        if refused:
            shown = host if literal is not None else f"{host} ({', '.join(refused)})"
            raise RefusedAddress(f"{shown} is a loopback, private or link-local address; refused")
    return addresses


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, except that a name is resolved here, checked, and the socket is
    opened to a checked address. httpcore passes the URL's host; TLS is started by httpcore afterwards
    with that same host as SNI and for the certificate check."""

    def __init__(self, resolver: Resolver, *, allow_private: bool) -> None:
        self._resolver = resolver
        self._allow_private = allow_private
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):  # the connect timeout covers the lookup too
                addresses = await public_addresses(host, port, self._resolver, allow_private=self._allow_private)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host!r} took longer than {timeout}s") from exc
        except UnresolvedHost as exc:  # what httpx raises for a name that does not resolve: callers retry it
            raise httpcore.ConnectError(str(exc)) from exc
        failure: Exception | None = None
        for address in addresses:  # in the resolver's order, like getaddrinfo's callers do
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise RefusedAddress("unix sockets are not reachable through a guarded client")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (its request, response and error mapping), over a connection pool whose
    connections are opened by ``_CheckedBackend``. No proxy: through a proxy, the proxy resolves the
    name and the check would not hold (a client given a transport ignores the proxy variables)."""

    def __init__(
        self,
        *,
        resolver: Resolver | None = None,
        allow_private: bool = False,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits = _LIMITS,
    ) -> None:
        super().__init__(verify=verify, limits=limits)
        # httpx 0.28 takes no network backend; httpcore's pool does. Same settings as httpx's own pool,
        # same TLS context (certifi or SSL_CERT_FILE, hostname check on).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_CheckedBackend(resolver or SystemResolver(), allow_private=allow_private),
        )


def guarded_client(
    *, timeout: float | httpx.Timeout, allow_private: bool = False, resolver: Resolver | None = None, verify: ssl.SSLContext | bool = True
) -> httpx.AsyncClient:
    """An httpx client for user-given URLs: connects only to checked addresses and follows no redirects
    (each hop would be one more name to trust; callers see the 3xx and refuse it)."""
    transport = GuardedTransport(resolver=resolver, allow_private=allow_private, verify=verify)
    return httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=False)
