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
) -> tuple[int, float, str | None]:
    started = time.perf_counter()
    writer.write(request)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length)
    writer.close()
    return status, time.perf_counter() - started, outcome(body)


def outcome(body: bytes) -> str | None:
    """The ``status`` field of a JSON object body: seeds/004 answers every booking 201 and says in
    the body whether it was CONFIRMED or FAILED."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document.get("status") if isinstance(document, dict) and isinstance(document.get("status"), str) else None


async def burst(address: str, requests: list[bytes]) -> dict:
    host, port = address.rsplit(":", 1)
    connections = await asyncio.gather(*(asyncio.open_connection(host, int(port)) for _ in requests))
    cpu, started = time.process_time(), time.perf_counter()
    answers = await asyncio.gather(
        *(exchange(reader, writer, request) for (reader, writer), request in zip(connections, requests, strict=True))
    )
    duration, cpu = time.perf_counter() - started, time.process_time() - cpu
    latencies = [seconds * 1e6 for _, seconds, _ in answers]
    return {
        "requests": len(answers),
        "duration_us": round(duration * 1e6),
        **{f"p{p}_us": round(percentile(latencies, p)) for p in (50, 95, 99)},
        "max_us": round(max(latencies)),
        "statuses": dict(Counter(str(status) for status, _, _ in answers)),
        "outcomes": dict(Counter(f"{status}:{body}" for status, _, body in answers if body)),
        "socket_errors": 0,
        "cpu_s": cpu,
    }


def main() -> None:
    address, tickets = sys.argv[1:3]
    with open(tickets) as lines:
        requests = [raw_request(line, address) for line in lines if line.strip()]
    print("BENCH " + json.dumps(asyncio.run(burst(address, requests))))


if __name__ == "__main__":
    main()
