"""A TCP proxy that adds a fixed one-way delay in each direction (there is no netem here).

Each chunk is delivered `delay` after it was read, in order, with no bandwidth cap worth
noticing; a new connection first waits one round trip, as a TCP handshake would (moto
closes every connection after one response, so every request pays it, as it would over a
real network). Run: `python -m benchmarks.latency_proxy --listen PORT --upstream HOST:PORT
--delay-ms 20`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

CHUNK = 256 * 1024


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            at, data = await queue.get()
            wait = at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    delivery = asyncio.create_task(deliver())
    try:
        while data := await reader.read(CHUNK):
            queue.put_nowait((loop.time() + delay, data))
    except OSError:
        pass
    queue.put_nowait((loop.time() + delay, None))
    with contextlib.suppress(OSError):
        await delivery


async def handle(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    upstream: tuple[str, int],
    delay: float,
) -> None:
    try:
        await asyncio.sleep(2 * delay)  # the handshake's round trip
        up_reader, up_writer = await asyncio.open_connection(*upstream)
    except OSError:
        client_writer.close()
        return
    try:
        await asyncio.gather(
            pump(client_reader, up_writer, delay), pump(up_reader, client_writer, delay)
        )
    finally:
        up_writer.close()
        client_writer.close()


async def serve(listen: int, upstream: tuple[str, int], delay: float) -> None:
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, upstream, delay), "127.0.0.1", listen, backlog=1024
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="host:port")
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay")
    args = parser.parse_args()
    host, port = args.upstream.rsplit(":", 1)
    asyncio.run(serve(args.listen, (host, int(port)), args.delay_ms / 1000))


if __name__ == "__main__":
    main()
