"""Where a collector's readings come from: one class per source, each turning a list of targets into
one reading (or one failure) per target. The collector (`collectors.collector`) does the rest the
same way whatever the source: windows from two readings, the store, failures, backoff.

- `PageSource`: each server's own metrics page over HTTP (direct scraping), under a deadline and a
  size cap.
- `collectors.prometheus.PrometheusSource`: the samples a Prometheus server scraped from the same
  pages, read through its HTTP API: how slatune reaches fleets it does not scrape itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import httpx

from collectors.parse import Scrape, parse, scrape_of


@dataclass(frozen=True)
class Target:
    server: str
    metrics_url: str
    models: frozenset[str] | None = None
    """The models the fleet gives this server: a model its page names beyond them gets no windows
    from it. None takes every model on the page (a target built by hand)."""
    trace_dir: Path | None = None
    """Where the server writes a trace per request (servers slatune starts): read on every pass
    for each request's server-side latency, queue included (`collectors.trace`)."""
    streaming: frozenset[str] = frozenset()
    """The models that stream tokens: their traces give time to first token too."""
    cores: frozenset[int] | None = None
    """The host cores the server is pinned to (a server slatune starts on cpu devices that are
    sets of cores): its cpu device windows take those cores' utilization, not the host's."""


class ScrapeFailed(Exception):
    """A reading that brought nothing to parse; `reason` is its metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class Reading:
    """One server's counters at one time (`at`, Unix seconds): a page's text, or samples already
    split (name, labels, value). Parsed by the collector, where a `ParseError` fails the server."""

    at: float
    text: str | None = None
    samples: Sequence[tuple[str, Mapping[str, str], float]] = ()

    def scrape(self) -> Scrape:
        return parse(self.text) if self.text is not None else scrape_of(self.samples)


class Source(Protocol):
    """A source of readings. `read` is called once a pass with the targets that are due, on the
    collector's event loop, and returns one reading or failure per target, in order; it never
    raises. `aclose` is called once, when the collector closes."""

    async def read(self, targets: list[Target]) -> list[Reading | ScrapeFailed]: ...

    async def aclose(self) -> None: ...


class PageSource:
    """Every target's page fetched at once, each under a total deadline (`deadline_s`) enforced by
    cancelling its request, not by httpx's per-read timeouts (a page trickled a byte a second never
    trips those), and with a size cap: the body is streamed and the read stops past the cap."""

    def __init__(
        self,
        *,
        deadline_s: float,
        max_page_bytes: int,
        clock: Callable[[], float],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.deadline_s = deadline_s
        self.max_page_bytes = max_page_bytes
        self.clock = clock
        self._http = httpx.AsyncClient(
            timeout=deadline_s,  # per operation; the total deadline is `_scrape`'s own
            trust_env=False,
            headers={"accept-encoding": "identity"},  # the cap counts the bytes that get parsed
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def read(self, targets: list[Target]) -> list[Reading | ScrapeFailed]:
        pages = list(await asyncio.gather(*(self._scrape(t) for t in targets)))
        # A cancelled scrape leaves httpx's inner body generators to be finalised by tasks the loop
        # schedules: let them run now, while the loop runs, rather than be dropped pending.
        for _ in range(3):
            await asyncio.sleep(0)
        return pages

    async def _scrape(self, target: Target) -> Reading | ScrapeFailed:
        try:
            body = await asyncio.wait_for(self._fetch(target), self.deadline_s)
        except ScrapeFailed as exc:
            return exc
        except (TimeoutError, httpx.TimeoutException):
            return ScrapeFailed("timeout", f"no whole page within {self.deadline_s:g} s")
        except httpx.HTTPError as exc:
            return ScrapeFailed("unreachable", f"{exc.__class__.__name__}: {exc}")
        try:
            return Reading(self.clock(), text=body.decode("utf-8"))
        except UnicodeDecodeError as exc:
            return ScrapeFailed("malformed", f"not UTF-8: {exc}")

    async def _fetch(self, target: Target) -> bytes:
        """The page's bytes, streamed: refused as soon as it passes the size cap."""
        cap = self.max_page_bytes
        async with self._http.stream("GET", target.metrics_url) as resp:
            if resp.status_code >= 400:
                raise ScrapeFailed("http_error", f"HTTP {resp.status_code}")
            encoding = resp.headers.get("content-encoding", "identity").lower()
            if encoding != "identity":  # asked for none: a compressed page could inflate past the cap
                raise ScrapeFailed("malformed", f"content-encoding {encoding!r}, asked for identity")
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise ScrapeFailed("too_large", f"{int(declared)} bytes declared, the cap is {cap}")
            body = bytearray()
            # identity: the bytes as sent; closed here, not left for the loop to finalise later
            chunks = cast(AsyncGenerator[bytes, None], resp.aiter_bytes())
            try:
                async with aclosing(chunks):
                    async for chunk in chunks:
                        body += chunk
                        if len(body) > cap:
                            raise ScrapeFailed("too_large", f"past the cap of {cap} bytes; not read further")
            except httpx.RemoteProtocolError as exc:  # the server closed before the whole body
                raise ScrapeFailed("truncated", f"{exc}") from None
            return bytes(body)
