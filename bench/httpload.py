"""A small asyncio HTTP/1.1 load client: keep-alive connections, bounded count and time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    """What one load run measured."""

    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    # When each latency's request was due (open loop) or sent (closed loop), on
    # time.perf_counter's clock, so a timeline can bin them.
    started: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Successful requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        """Latency percentile in milliseconds."""
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The status and body of one HTTP/1.1 response (Content-Length framed)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _read_response(reader: asyncio.StreamReader) -> int:
    return (await read_response(reader))[0]


async def _worker(
    host: str,
    port: int,
    make: Callable[[int], bytes],
    counter: list[int],
    total: int,
    deadline: float,
    result: LoadResult,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            index = counter[0]
            if index >= total:
                return
            counter[0] += 1
            request = make(index)
            started = time.perf_counter()
            writer.write(request)
            status = await _read_response(reader)
            result.latencies.append(time.perf_counter() - started)
            result.started.append(started)
            if status == 200:
                result.requests += 1
            else:
                result.errors += 1
    finally:
        writer.close()


def run_load(
    host: str,
    port: int,
    make: Callable[[int], bytes],
    total: int,
    concurrency: int,
    max_seconds: float,
) -> LoadResult:
    """Send `total` requests built by `make(i)` over `concurrency` connections."""
    result = LoadResult(0, 0, 0.0, [])

    async def main() -> None:
        counter = [0]
        deadline = time.perf_counter() + max_seconds
        started = time.perf_counter()
        await asyncio.gather(
            *(
                _worker(host, port, make, counter, total, deadline, result)
                for _ in range(concurrency)
            )
        )
        result.seconds = time.perf_counter() - started

    asyncio.run(main())
    return result


@dataclass(frozen=True)
class Paced:
    """An open-loop stream: request `i`, built by `make(i)`, is due at start + i / rate."""

    make: Callable[[int], bytes]
    rate: float
    total: int
    concurrency: int


async def _paced_worker(
    host: str,
    port: int,
    stream: Paced,
    counter: list[int],
    started: float,
    deadline: float,
    result: LoadResult,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while (index := counter[0]) < stream.total:
            due = started + index / stream.rate
            if due >= deadline:
                return
            counter[0] += 1
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            try:
                writer.write(stream.make(index))
                status = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError):
                result.errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            # Timed from when the request was due, not when it went out: a send held back
            # by busy connections is the service's delay too (no coordinated omission).
            result.latencies.append(time.perf_counter() - due)
            result.started.append(due)
            if status == 200:
                result.requests += 1
            else:
                result.errors += 1
    finally:
        writer.close()


def run_paced(host: str, port: int, streams: list[Paced], max_seconds: float) -> list[LoadResult]:
    """Run open-loop streams side by side for at most `max_seconds`; a result per stream."""
    results = [LoadResult(0, 0, 0.0, []) for _ in streams]

    async def main() -> None:
        started = time.perf_counter()
        deadline = started + max_seconds
        workers = []
        for stream, result in zip(streams, results, strict=True):
            counter = [0]
            workers += [
                _paced_worker(host, port, stream, counter, started, deadline, result)
                for _ in range(stream.concurrency)
            ]
        await asyncio.gather(*workers)
        for result in results:
            result.seconds = time.perf_counter() - started

    asyncio.run(main())
    return results


def post_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """The bytes of one HTTP/1.1 POST."""
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: bench",
        f"Content-Length: {len(body)}",
        "Content-Type: application/json",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def get_request(path: str, headers: dict[str, str] | None = None) -> bytes:
    """The bytes of one HTTP/1.1 GET."""
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: bench",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
