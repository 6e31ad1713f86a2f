"""Test ports come from below the kernel's ephemeral range, so outgoing connections never take them."""

from __future__ import annotations

import socket

from libs.testing.process import _ephemeral_range, free_port


def test_ports_are_bindable_distinct_and_below_the_ephemeral_range() -> None:
    low, _ = _ephemeral_range()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= p < low for p in ports)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", ports[0]))
