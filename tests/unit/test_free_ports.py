"""Ports for the services a demo or benchmark starts: chosen together, they are distinct
(one at a time, the kernel can hand the same just-released port to two services: the
silent-failure suite's stuck-field seed 5 run gave features and performance one port)."""

from __future__ import annotations

import socket

from streamml.broker import free_ports


def test_ports_chosen_together_are_distinct_and_free() -> None:
    ports = free_ports(64)
    assert len(set(ports)) == 64
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))  # nothing holds it after the call
