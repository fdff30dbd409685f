"""A region's network edge in the sandbox: a TCP forwarder in front of a service shared by every region.

The sandbox runs one S3 endpoint (moto's server) for all regions; the primary region's clients (its
connection, its application instances) reach it through this gateway, so the region can lose its
object storage for real (`sandbox.isolate_region`: the gateway stops and every connection to its
port is refused) and get it back with nothing lost (the data lives behind the gateway).

    python -m continuity_lab.gateway --listen 41001 --upstream 41000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

CHUNK = 1 << 16


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()  # backpressure: never more than one chunk buffered per direction
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(*, listen: int, upstream: int, host: str = "127.0.0.1") -> None:
    async def forward(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, upstream)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pump(client_reader, upstream_writer), _pump(upstream_reader, client_writer))

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
    args = parser.parse_args(argv)
    asyncio.run(serve(listen=args.listen, upstream=args.upstream))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
