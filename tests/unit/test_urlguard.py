from __future__ import annotations

import pytest

from services.common.urlguard import internal_address

INTERNAL = [
    "127.0.0.1", "127.255.255.254", "::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::127.0.0.1", "2002:7f00:1::",
    "2001:0:4136:e378:8000:63bf:80ff:fffe", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254",
    "fe80::1", "fe80::1%eth0", "fc00::1", "fd00::1", "100.64.0.1", "0.0.0.0", "::", "224.0.0.1", "ff02::1",
    "255.255.255.255", "198.18.0.1", "192.0.2.1", "240.0.0.1",
]  # fmt: skip
PUBLIC = ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111", "::ffff:1.1.1.1", "172.32.0.1", "192.169.0.1"]


@pytest.mark.parametrize("address", INTERNAL)
def test_internal_addresses_in_every_spelling(address: str) -> None:
    assert internal_address(address)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert not internal_address(address)
