"""The floor under the gateway's added latency: the least a durable relay can do.

A TCP relay on asyncio streams that appends every chunk a client sends to a file, fdatasyncs
it on the spot, then forwards the bytes upstream; answers come back untouched. No HTTP parsing,
no threads, no bookkeeping: what any write-ahead proxy in Python pays on this machine for one
more hop and one fsync. ``bench/gateway_overhead.py`` starts it beside the gateway.

    python bench/durable_relay.py --upstream 127.0.0.1:9200 --log /tmp/relay.log
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                log_fd: int | None) -> None:
    try:
        while chunk := await reader.read(65536):
            if log_fd is not None:
                os.write(log_fd, chunk)
                os.fdatasync(log_fd)
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _serve(upstream: tuple[str, int], log_fd: int) -> None:
    async def relay(client_reader: asyncio.StreamReader,
                    client_writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*upstream)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, up_writer, log_fd),
                             _pipe(up_reader, client_writer, None))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="host:port")
    parser.add_argument("--log", required=True, help="file the relay appends to")
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    log_fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve((host, int(port)), log_fd))
    sys.exit(0)


if __name__ == "__main__":
    main()
