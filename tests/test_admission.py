"""`proxy.admission.Admission`: the one rule for who holds a session slot, in both modes."""

from __future__ import annotations

from proxy.admission import ABUSE, SHED, Admission
from proxy.config import Limits
from proxy.metrics import ProxyMetrics


class Connection:
    def __init__(self, peer_ip: str = "10.0.0.1") -> None:
        self.peer_ip = peer_ip
        self.closed_for: str | None = None

    def close(self, reason: str) -> None:
        self.closed_for = reason


def refused(metrics: ProxyMetrics, reason: str) -> float:
    return metrics.registry.get_sample_value("ih_connections_refused_total", {"reason": reason}) or 0.0


def test_at_the_limit_the_oldest_never_authorized_is_shed_and_authorized_ones_never_are() -> None:
    metrics = ProxyMetrics()
    slots: Admission[Connection] = Admission(Limits(max_sessions=3), metrics)
    slots.accepting = True
    first, second, third = Connection(), Connection(), Connection()
    for connection in (first, second, third):
        assert slots.admit(connection) is None
    slots.authorized(first)
    fourth = Connection()
    assert slots.admit(fourth) is None
    # The oldest that never authorized, not the oldest: `first` authorized.
    assert second.closed_for == SHED and first.closed_for is None and third.closed_for is None
    assert list(slots.holders) == [first, third, fourth]
    slots.authorized(third)
    slots.authorized(fourth)
    assert slots.admit(Connection()) == "too many sessions"
    assert len(slots) == 3 and refused(metrics, "shed") == 1 and refused(metrics, "too many sessions") == 1
    slots.release(second)  # already released when shed: its close decision must not free a slot twice
    slots.release(first)
    slots.release(first)
    assert len(slots) == 2 and slots.admit(Connection()) is None
    assert metrics.registry.get_sample_value("ih_connections_total") == 5


def test_per_address_abuse_and_shutdown_refusals() -> None:
    metrics = ProxyMetrics()
    slots: Admission[Connection] = Admission(Limits(max_sessions_per_ip=2, address_strike_limit=1), metrics)
    assert slots.admit(Connection()) == "shutting down"
    slots.accepting = True
    nat = [Connection("192.0.2.7") for _ in range(3)]
    assert [slots.admit(c) for c in nat] == [None, None, "too many sessions from one address"]
    slots.release(nat[0])
    assert slots.admit(nat[2]) is None  # the address's slot came back with the release
    flooder = Connection("198.51.100.9")
    assert slots.admit(flooder) is None
    slots.release(flooder)
    slots.strike(flooder, "cost over the hard limit (1,234)")
    assert slots.admit(Connection("198.51.100.9")) is ABUSE
    assert slots.admit(Connection("198.51.100.10")) is None  # other addresses pay nothing
    assert refused(metrics, ABUSE) == 1 and refused(metrics, "too many sessions from one address") == 1


def test_an_ipv6_host_cannot_take_more_sessions_by_moving_within_its_64() -> None:
    metrics = ProxyMetrics()
    slots: Admission[Connection] = Admission(Limits(max_sessions_per_ip=2), metrics)
    slots.accepting = True
    # A host given 2001:db8:1:2::/64 may source each connection from another address in it.
    host = [Connection(f"2001:db8:1:2::{n:x}") for n in (1, 2, 3)]
    assert [slots.admit(c) for c in host] == [None, None, "too many sessions from one address"]
    assert slots.admit(Connection("2001:db8:1:3::1")) is None  # the next /64 is another address
    assert slots.admit(Connection("::ffff:192.0.2.7")) is None  # IPv4-mapped: counted as the IPv4 address
    assert slots.admit(Connection("192.0.2.7")) is None
    assert slots.admit(Connection("192.0.2.7")) == "too many sessions from one address"
    slots.release(host[1])  # a release under another address of the /64 frees the /64's slot
    assert slots.admit(Connection("2001:db8:1:2::ffff")) is None
    assert len(slots) == 5 and refused(metrics, "too many sessions from one address") == 2
