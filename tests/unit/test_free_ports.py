"""Ports picked for local servers: from the range given, free, and never handed out twice."""

from __future__ import annotations

import socket

import pytest

from services.devstack import ports
from services.devstack.ports import FREE_PORT_RANGE, PortInUse, free_port


def test_ports_come_from_the_range_and_none_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "_handed_out", set())
    monkeypatch.setenv(FREE_PORT_RANGE, "23900-23909")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 23905))
        taken.listen()
        picked = [free_port() for _ in range(9)]
        with pytest.raises(PortInUse, match="no free port left"):
            free_port()
    assert sorted(picked) == [p for p in range(23900, 23910) if p != 23905]


def test_without_a_range_the_kernel_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FREE_PORT_RANGE)
    assert 0 < free_port() < 65536
