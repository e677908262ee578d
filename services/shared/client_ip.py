"""Who sent a request, pure: its client's address (`client_address`), and the source that budgets
and failure counts are kept for (`client_source`)."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(spec: str) -> tuple[IPNetwork, ...]:
    """`10.0.0.0/8, 192.168.1.7` into networks; raises ValueError naming a bad entry."""
    networks = []
    for entry in (part.strip() for part in spec.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or CIDR network: {entry!r}") from None
    return tuple(networks)


# Pure, and asked for every request (peers repeat): parsed once per recent address.
@functools.lru_cache(maxsize=4096)
def _address(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(address: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


@functools.lru_cache(maxsize=4096)  # pure, and asked for every request
def client_address(
    peer: str | None, forwarded_for: str | None, trusted_proxies: tuple[IPNetwork, ...]
) -> str | None:
    """The client's address as text, or None if nothing believable names one: the peer address,
    or behind trusted proxies, the nearest address in `X-Forwarded-For` that is not one of them.

    `X-Forwarded-For` is read right to left: each proxy appends the address it received the
    request from, so only entries added by proxies we trust are believable. The first untrusted
    address from the right is the client; anything further left was written by the client
    itself and may be forged."""
    address = _address(peer) if peer else None
    if address is None or not forwarded_for or not _trusted(address, trusted_proxies):
        return str(address) if address is not None else None
    for hop in reversed(forwarded_for.split(",")[-32:]):
        hop_address = _address(hop)
        if hop_address is None:
            return str(address)  # a garbled hop: trust stops at the last proxy we know
        address = hop_address
        if not _trusted(address, trusted_proxies):
            return str(address)
    return str(address)  # every hop is a trusted proxy: the leftmost is the best we know


# An IPv6 subscriber is given a whole /64 and may send from any address in it.
_IPV6_SOURCE_PREFIX = 64


@functools.lru_cache(maxsize=4096)  # pure, and asked for every request
def client_source(address: str | None) -> str:
    """Whose refusals and failed verifications a request counts towards: its address, or for
    IPv6 the /64 network around it (else every request could come from a fresh address)."""
    parsed = _address(address) if address else None
    if parsed is None:
        return "unknown"
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, _IPV6_SOURCE_PREFIX), strict=False))
    return str(parsed)
