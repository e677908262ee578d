"""Who sent a request: the peer, unless it is a proxy we trust; then X-Forwarded-For, read from
the right, up to the first address that is not one of our proxies."""

from __future__ import annotations

import pytest

from services.shared.client_ip import client_address, client_source, parse_networks

PROXIES = parse_networks("10.0.0.0/8, 2001:db8::/32, 192.0.2.10")


def test_without_trusted_proxies_the_peer_is_the_client_whatever_the_header_says() -> None:
    assert client_address("198.51.100.4", "6.6.6.6", ()) == "198.51.100.4"


def test_a_request_from_an_untrusted_peer_cannot_name_another_client() -> None:
    assert client_address("198.51.100.4", "6.6.6.6", PROXIES) == "198.51.100.4"


def test_behind_a_trusted_proxy_the_forwarded_address_is_the_client() -> None:
    assert client_address("10.1.1.1", "198.51.100.4", PROXIES) == "198.51.100.4"


def test_addresses_a_client_prepends_are_ignored() -> None:
    forged = "6.6.6.6, 198.51.100.4, 10.2.2.2"
    assert client_address("10.1.1.1", forged, PROXIES) == "198.51.100.4"


def test_a_chain_of_trusted_proxies_ends_at_its_leftmost_address() -> None:
    assert client_address("10.1.1.1", "10.3.3.3, 192.0.2.10", PROXIES) == "10.3.3.3"


def test_a_garbled_hop_stops_trust_at_the_last_known_proxy() -> None:
    assert client_address("10.1.1.1", "198.51.100.4, not-an-ip", PROXIES) == "10.1.1.1"


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("2001:db8::1", "[2001:db8::2]:443, 198.51.100.4:5000", "198.51.100.4"),
        ("10.1.1.1", "2001:db8::7, 2a00:1450::1", "2a00:1450::1"),
    ],
)
def test_ipv6_and_ports_are_understood(peer: str, forwarded: str, client: str) -> None:
    assert client_address(peer, forwarded, PROXIES) == client


def test_no_peer_and_an_unreadable_peer_give_no_address() -> None:
    assert client_address(None, "198.51.100.4", PROXIES) is None
    assert client_address("testclient", None, PROXIES) is None


def test_a_bad_proxy_entry_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.300'"):
        parse_networks("10.0.0.0/8, 10.0.0.300")


@pytest.mark.parametrize(
    ("address", "source"),
    [
        ("198.51.100.4", "198.51.100.4"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),  # same subscriber
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),  # the next one
        ("::ffff:198.51.100.4", "198.51.100.4"),  # IPv4 spoken over IPv6 is that IPv4 address
        (None, "unknown"),
    ],
)
def test_budgets_and_failures_count_per_address_and_per_ipv6_subscriber_network(
    address: str | None, source: str
) -> None:
    assert client_source(address) == source
