"""A region's network edge in the sandbox: a TCP forwarder in front of a service shared by every region.

The sandbox runs one S3 endpoint (moto's server) for all regions; the primary region's clients (its
connection, its application instances) reach it through this gateway, so the region can lose its
object storage for real (`sandbox.isolate_region`: the gateway stops and every connection to its
port is refused) and get it back with nothing lost (the data lives behind the gateway). With `--rate`, each
connection carries at most that many bytes per second each way: the region's storage slowed, not cut
(`sandbox.slow_storage`).

    python -m continuity_lab.gateway --listen 41001 --upstream 41000 [--rate 1048576]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

CHUNK = 1 << 16


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, rate: int | None = None) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()  # backpressure: never more than one chunk buffered per direction
            if rate:
                await asyncio.sleep(len(data) / rate)
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(*, listen: int, upstream: int, host: str = "127.0.0.1", rate: int | None = None) -> None:
    async def forward(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, upstream)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pump(client_reader, upstream_writer, rate=rate),
                             _pump(upstream_reader, client_writer, rate=rate))

    server = await asyncio.start_server(forward, host, listen, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="continuity_lab.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    parser.add_argument("--rate", type=int, default=None, help="bytes per second per connection and direction")
    args = parser.parse_args(argv)
    if args.rate is not None and args.rate <= 0:
        parser.error(f"--rate must be a positive number of bytes per second, not {args.rate}")
    asyncio.run(serve(listen=args.listen, upstream=args.upstream, rate=args.rate))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
