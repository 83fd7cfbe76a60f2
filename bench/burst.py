"""The hot-resource client: every ticket gets its own connection, all connections are opened first,
then every request is written at once (an asyncio event is the barrier) and each answer is timed.

    python -m bench.burst <host:port> <tickets file>

wrk cannot release its connections together, so the races use this; it sends only one request per
ticket (200), so a Python client costs little. Prints one line like wrk's script: "BENCH {json}", with
``cpu_s`` the client's own CPU from the release to the last answer. Standard library only.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

from bench.stats import percentile


def raw_request(line: str, address: str) -> bytes:
    method, path, token, body = line.rstrip("\n").split("\t", 3)
    payload = body.encode()
    authorization = f"Authorization: Token {token}\r\n" if token != "-" else ""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {address}\r\n{authorization}"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + payload


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, float, bytes]:
    """Send one request and read its answer: (status, seconds, body). A connection that closes or resets
    before the answer is complete counts as status 0 (a socket error)."""
    started = time.perf_counter()
    try:
        writer.write(request)
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
    except (OSError, IndexError, asyncio.IncompleteReadError):
        return 0, time.perf_counter() - started, b""
    finally:
        writer.close()
    return status, time.perf_counter() - started, body


def outcome(body: bytes) -> str | None:
    """The ``status`` field of a JSON object body: seeds/004 answers every booking 201 and says in
    the body whether it was CONFIRMED or FAILED."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document.get("status") if isinstance(document, dict) and isinstance(document.get("status"), str) else None


async def connect(addresses: list[str]) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """One open connection per address (host:port), all opened before anything is sent."""
    return await asyncio.gather(
        *(asyncio.open_connection(host, int(port)) for host, port in (a.rsplit(":", 1) for a in addresses))
    )


async def at_once(connections: list, requests: list[bytes]) -> list[tuple[int, float, bytes]]:
    """Send each request on its connection, all at once; each answer as (status, seconds, body), in order."""
    return await asyncio.gather(
        *(exchange(reader, writer, request) for (reader, writer), request in zip(connections, requests, strict=True))
    )


async def burst(address: str, requests: list[bytes]) -> dict:
    connections = await connect([address] * len(requests))
    cpu, started = time.process_time(), time.perf_counter()
    answers = [(status, seconds, outcome(body)) for status, seconds, body in await at_once(connections, requests)]
    duration, cpu = time.perf_counter() - started, time.process_time() - cpu
    latencies = [seconds * 1e6 for _, seconds, _ in answers]
    return {
        "requests": len(answers),
        "duration_us": round(duration * 1e6),
        **{f"p{p}_us": round(percentile(latencies, p)) for p in (50, 95, 99)},
        "max_us": round(max(latencies)),
        "statuses": dict(Counter(str(status) for status, _, _ in answers)),
        "outcomes": dict(Counter(f"{status}:{body}" for status, _, body in answers if body)),
        "socket_errors": sum(1 for status, _, _ in answers if status == 0),
        "cpu_s": cpu,
    }


def main() -> None:
    address, tickets = sys.argv[1:3]
    with open(tickets) as lines:
        requests = [raw_request(line, address) for line in lines if line.strip()]
    print("BENCH " + json.dumps(asyncio.run(burst(address, requests))))


if __name__ == "__main__":
    main()
