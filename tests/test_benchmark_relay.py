"""benchmarks.relay: the bare byte relay the benchmark measures passthrough's floor with. Bytes pass
both ways unchanged (those sent before its pool connection is up too), and a close on either side
closes the other."""

from __future__ import annotations

import asyncio
import sys

from benchmarks.common import HOST, Child


async def _through_relay() -> dict[str, object]:
    pool_side: list[bytes] = []
    pool_closed = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def pool(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while line := await reader.readline():
            pool_side.append(line)
            writer.write(b"answer:" + line)
        pool_closed.set()

    server = await asyncio.start_server(pool, HOST, 0)
    relay = Child(
        "relay", [sys.executable, "-m", "benchmarks.relay", "--upstream-port", str(server.sockets[0].getsockname()[1])]
    )
    try:
        port = int((await asyncio.to_thread(relay.receive, 60))["port"])
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(
            b'{"id":1,"method":"mining.subscribe","params":[]}\n\xff\x00 raw\n'
        )  # at once: before the pool link
        first = await asyncio.wait_for(reader.readline(), 10)
        second = await asyncio.wait_for(reader.readline(), 10)
        writer.close()  # the miner leaves: the relay closes its pool connection
        await asyncio.wait_for(pool_closed.wait(), 10)
        reader2, writer2 = await asyncio.open_connection(HOST, port)
        writer2.write(b"x\n")
        await asyncio.wait_for(reader2.readline(), 10)
        writers[-1].close()  # the pool leaves: the relay closes the miner's connection
        eof = await asyncio.wait_for(reader2.read(), 10)
        writer2.close()
    finally:
        relay.close()
        server.close()
    return {"pool_side": pool_side, "first": first, "second": second, "eof": eof}


def test_the_relay_passes_bytes_unchanged_and_a_close_on_either_side_closes_the_other() -> None:
    seen = asyncio.run(_through_relay())
    assert seen["pool_side"] == [b'{"id":1,"method":"mining.subscribe","params":[]}\n', b"\xff\x00 raw\n", b"x\n"]
    assert seen["first"] == b'answer:{"id":1,"method":"mining.subscribe","params":[]}\n'
    assert seen["second"] == b"answer:\xff\x00 raw\n"
    assert seen["eof"] == b""  # closed by the relay once its pool connection went
