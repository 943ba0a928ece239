"""The embedded Ray head's port picking (the head itself runs in tests/e2e)."""

from __future__ import annotations

import socket

from service.ray_jobs import free_ports


def test_free_ports_are_distinct_and_free() -> None:
    ports = free_ports(64)
    assert len(ports) == 64 and len(set(ports)) == 64
    for port in ports:  # each one can be bound now that free_ports let go of it
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
