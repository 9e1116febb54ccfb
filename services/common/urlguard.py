"""Which addresses a user-given URL (a callback, an HTTP tool) may not reach: anything not plainly
public. One rule for both services, so a spelling refused in one place is refused in the other."""

from __future__ import annotations

import ipaddress

_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d


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
