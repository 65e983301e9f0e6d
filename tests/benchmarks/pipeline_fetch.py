"""(b) The fetch ceiling: httpx reads every details response, nothing else.

    python -m tests.benchmarks.pipeline_fetch --url URL --ledger FILE --concurrency 6

The requests are the archiver's (``POST /idpass/details`` with ``return_images``, the
pass's cipher key, the same headers, one ``httpx.AsyncClient`` limited to
``--concurrency`` connections, that many requests in flight); each body is read whole
and dropped (breaking httpx's response/stream reference cycle, so it is freed at
once): no JSON parsing, no Base64, no hashing. Prints one JSON line: seconds,
responses, bytes. The token comes from ``$BENCH_API_TOKEN``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import httpx
import orjson


async def fetch_all(url: str, token: str, passes: list[dict[str, str]], concurrency: int) -> int:
    queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    for p in passes:
        queue.put_nowait(p)
    total = 0
    async with httpx.AsyncClient(
        base_url=url,
        headers={
            "Authorization": f"Bearer {token}",
            "User-Agent": "bench-fetch",
            "Accept": "application/json",
            "Content-Type": "application/json",
        },
        timeout=httpx.Timeout(60.0, connect=5.0),
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    ) as client:

        async def worker() -> None:
            nonlocal total
            while not queue.empty():
                p = queue.get_nowait()
                body = {
                    "id": p["id"],
                    "return_images": True,
                    "return_documents": False,
                    "return_logs": False,
                    "cipher_key": p["cipher_key"],
                }
                response = await client.post("/idpass/details", content=orjson.dumps(body))
                response.raise_for_status()
                total += len(response.content)
                # httpx links a Response and its BoundAsyncStream in a reference cycle, so
                # without this each ~7 MB body lives until the cyclic GC's next collection
                # of its generation (peak RSS grew to 1 GB at N=500): break the cycle.
                response.stream = httpx.ByteStream(b"")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.pipeline_fetch")
    parser.add_argument("--url", required=True)
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=6)
    args = parser.parse_args()
    passes = [orjson.loads(line) for line in args.ledger.read_bytes().splitlines() if line]
    t0 = time.perf_counter()
    nbytes = asyncio.run(
        fetch_all(args.url, os.environ["BENCH_API_TOKEN"], passes, args.concurrency)
    )
    seconds = time.perf_counter() - t0
    print(orjson.dumps({"seconds": seconds, "responses": len(passes), "bytes": nbytes}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
