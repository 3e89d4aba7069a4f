"""common.net.free_port: ports no outgoing connection can take, never handed out twice."""

from __future__ import annotations

import socket

from common import net


def test_free_ports_are_below_the_ephemeral_range_distinct_and_bindable():
    low = net._ephemeral_low()
    ports = [net.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(10_000 <= p < low for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))


def test_a_port_in_use_is_not_handed_out(monkeypatch):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        candidates = iter([taken, taken, *range(10_000, 65536)])
        monkeypatch.setattr(net._random, "randrange", lambda lo, hi: next(candidates))
        monkeypatch.setattr(net, "_ephemeral_low", lambda: 65536)
        port = net.free_port()
        assert port != taken and port >= 10_000
