"""The download policy judges an IPv6 address that carries an IPv4 one as that IPv4 address.

NAT64, 6to4, Teredo, IPv4-mapped, -compatible and -translated addresses reach the IPv4 address
inside them: ``http://[64:ff9b::a9fe:a9fe]/`` is the cloud metadata service behind a NAT64
gateway. With ``allow_private_addresses=False`` each one is refused before any connection, as
its IPv4 address would be; the same spellings of a public address stay allowed.
"""

from __future__ import annotations

import io

import pytest

from airflow_provider_reve.results.download import ReveUnsafeURLError, download, is_public_address

PRIVATE_INSIDE_IPV6 = {
    "NAT64 of the metadata service 169.254.169.254": "64:ff9b::a9fe:a9fe",
    "NAT64 of 10.0.0.1": "64:ff9b::a00:1",
    "NAT64 local-use prefix": "64:ff9b:1::a00:1",
    "6to4 of 127.0.0.1": "2002:7f00:1::1",
    "6to4 of 192.168.1.1": "2002:c0a8:101::1",
    "IPv4-mapped 127.0.0.1": "::ffff:7f00:1",
    "IPv4-compatible 10.0.0.1": "::a00:1",
    "IPv4-translated 10.0.0.1": "::ffff:0:a00:1",
    "Teredo with client 10.8.8.8 (stored inverted)": "2001:0:4136:e378:8000:63bf:f5f7:f7f7",
}

PUBLIC_INSIDE_IPV6 = {
    "NAT64 of 8.8.8.8": "64:ff9b::808:808",
    "6to4 of 8.8.8.8": "2002:808:808::1",
    "IPv4-mapped 8.8.8.8": "::ffff:808:808",
}


@pytest.mark.parametrize("address", PRIVATE_INSIDE_IPV6.values(), ids=PRIVATE_INSIDE_IPV6.keys())
def test_a_result_url_at_a_private_ipv4_address_spelled_in_ipv6_is_refused_before_connecting(
    address: str,
) -> None:
    with pytest.raises(ReveUnsafeURLError, match="not a public address"):
        download(f"http://[{address}]/latest/meta-data/iam/", io.BytesIO(), allow_private_addresses=False)


@pytest.mark.parametrize("address", PRIVATE_INSIDE_IPV6.values(), ids=PRIVATE_INSIDE_IPV6.keys())
def test_a_private_ipv4_address_spelled_in_ipv6_is_not_public(address: str) -> None:
    assert is_public_address(address) is False


@pytest.mark.parametrize("address", PUBLIC_INSIDE_IPV6.values(), ids=PUBLIC_INSIDE_IPV6.keys())
def test_a_public_ipv4_address_spelled_in_ipv6_stays_public(address: str) -> None:
    assert is_public_address(address) is True
