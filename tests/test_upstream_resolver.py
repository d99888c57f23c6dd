"""proxy.upstream.Resolver: a pool host is looked up once for every connection made to it within the
TTL, concurrent lookups of one host are one, and every address is tried in order, as
`create_connection` does with a host name. Real sockets on loopback, `localhost` from /etc/hosts; a DNS
server cannot exist here, so its failures and its slowness are a wrapper around `loop.getaddrinfo`."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ledger.options import ConfigError
from proxy.app import ProxyApp
from proxy.config import ProxyConfig, load_config
from proxy.upstream import PoolURL, Resolver
from simulation import Fleet, SimulatedPool
from simulation.hotkeys import hotkeys

HOST = "127.0.0.1"


async def _listener() -> tuple[asyncio.Server, int]:
    server = await asyncio.get_running_loop().create_server(asyncio.Protocol, HOST, 0)
    return server, server.sockets[0].getsockname()[1]


def _patch_getaddrinfo(
    monkeypatch: pytest.MonkeyPatch, loop: asyncio.AbstractEventLoop, wrap: Callable[..., Awaitable[Any]]
) -> None:
    monkeypatch.setattr(loop, "getaddrinfo", wrap)


def test_one_lookup_serves_every_connection_within_the_ttl_and_concurrent_ones_share_it() -> None:
    async def scenario() -> None:
        server, port = await _listener()
        resolver = Resolver(ttl=60.0)
        url = PoolURL("localhost", port)
        try:
            opened = await asyncio.gather(*(resolver.connect(url, asyncio.Protocol) for _ in range(50)))
            assert resolver.lookups == 1
            assert all(t.get_extra_info("peername")[:2] == (HOST, port) for t, _ in opened)
            again, _ = await resolver.connect(url, asyncio.Protocol)
            assert resolver.lookups == 1
            for transport in [t for t, _ in opened] + [again]:
                transport.close()
            expiring = Resolver(ttl=0.05)
            await expiring.addresses(url)
            await asyncio.sleep(0.1)
            await expiring.addresses(url)
            assert expiring.lookups == 2  # looked up again once the TTL ran out
        finally:
            server.close()

    asyncio.run(scenario())


def test_an_ip_address_is_never_looked_up() -> None:
    async def scenario() -> None:
        resolver = Resolver()
        assert await resolver.addresses(PoolURL(HOST, 1)) == [HOST]
        assert await resolver.addresses(PoolURL("::1", 1)) == ["::1"]
        assert resolver.lookups == 0

    asyncio.run(scenario())


def test_every_address_is_tried_in_order_and_a_host_that_refused_on_all_is_looked_up_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server, port = await _listener()
        closed = socket.socket()
        closed.bind((HOST, 0))  # bound, not listening: connecting to it is refused
        dead = closed.getsockname()[1]
        answers = [("127.0.0.2", "127.0.0.1")]

        async def getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[0]]

        _patch_getaddrinfo(monkeypatch, loop, getaddrinfo)
        resolver = Resolver()
        try:
            # 127.0.0.2 listens on nothing (loopback answers for all of 127/8): refused, then 127.0.0.1.
            transport, _ = await resolver.connect(PoolURL("pool.test", port), asyncio.Protocol)
            assert transport.get_extra_info("peername")[:2] == (HOST, port)
            transport.close()
            assert resolver.lookups == 1
            with pytest.raises(ConnectionRefusedError):
                await resolver.connect(PoolURL("gone.test", dead), asyncio.Protocol)
            with pytest.raises(ConnectionRefusedError):
                await resolver.connect(PoolURL("gone.test", dead), asyncio.Protocol)
            assert resolver.lookups == 3  # refused everywhere: not kept, the pool may have moved
        finally:
            closed.close()
            server.close()

    asyncio.run(scenario())


def test_a_failed_lookup_is_not_kept_and_a_waiter_that_gives_up_does_not_cancel_it_for_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        real = loop.getaddrinfo
        failing = [True]

        async def slow_dns(host: str, port: int, **kwargs: Any) -> list[Any]:
            await asyncio.sleep(0.05)
            if failing[0]:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return await real("localhost", port, **kwargs)

        _patch_getaddrinfo(monkeypatch, loop, slow_dns)
        resolver = Resolver()
        url = PoolURL("pool.test", 3333)
        with pytest.raises(socket.gaierror):
            await resolver.addresses(url)
        failing[0] = False
        impatient = asyncio.ensure_future(asyncio.wait_for(resolver.addresses(url), 0.01))
        patient = asyncio.ensure_future(resolver.addresses(url))
        with pytest.raises(TimeoutError):
            await impatient
        assert await patient == [HOST]
        assert resolver.lookups == 2

    asyncio.run(scenario())


def test_the_proxy_looks_its_pool_up_once_for_all_its_sessions(tmp_path: Path) -> None:
    found: dict[str, Any] = {}

    async def scenario() -> None:
        async with SimulatedPool(difficulty=2.0**-26, seed=3) as pool:
            config = ProxyConfig(
                listen=f"{HOST}:0",
                upstream=(f"stratum+tcp://localhost:{pool.port}",),
                data_dir=tmp_path,
                metrics=f"{HOST}:0",
                proxy_id="dns",
                ledger_flush_interval=0.05,
            )
            app = ProxyApp(config)
            await app.start()
            try:
                fleet = Fleet.for_hotkeys(HOST, app.port, hotkeys(3, namespace="dns"), 6, max_shares=3)
                await fleet.run(timeout=60)
                found["accepted"], found["asics"] = fleet.accepted, len(fleet)
                found["lookups"] = app.stratum.upstreams.resolver.lookups
                found["pool connections"] = pool.connections_total
            finally:
                await app.stop()

    asyncio.run(scenario())
    assert found["accepted"] > 0
    assert found["asics"] > 1 and found["pool connections"] == found["asics"]  # passthrough: one per ASIC...
    assert found["lookups"] == 1  # ...and one lookup for all of them


def test_the_ttl_is_the_operators_to_set_and_never_negative(tmp_path: Path) -> None:
    pool = ["--upstream", "stratum+tcp://localhost:3333", "--data-dir", str(tmp_path)]
    config = load_config([*pool, "--upstream-dns-ttl", "5"])
    assert config.upstream_dns_ttl == 5.0
    assert ProxyApp(config).stratum.upstreams.resolver.ttl == 5.0
    assert load_config(pool).upstream_dns_ttl == 60.0
    with pytest.raises(ConfigError, match="upstream_dns_ttl"):
        load_config(pool, environ={"IH_UPSTREAM_DNS_TTL": "-1"})
