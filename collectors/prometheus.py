"""Prometheus as a source: the collector's readings from a Prometheus server's HTTP API instead of
each server's page, for fleets Prometheus (or Thanos, or Mimir behind the same API) already scrapes.

A reading is each series' newest raw sample, not an `increase()` or a `rate()`: one instant query
per pass for every due server, a range selector over the last `lookback_s` (raw samples with their
timestamps, from one consistent read of the TSDB), of the families slatune reads:

    {__name__=~"nv_inference_request_success|...|nv_(?:gpu|cpu)_.+", server=~"a|b"}[60s]

Each server's reading is the samples of its newest Prometheus scrape, stamped with that scrape's
time. Windows are then made exactly as from pages (`collectors.window`): the same counters, so the
same increases, resets, bucket-wise histograms and quantiles, with window edges at Prometheus'
scrape times rather than the collector's. Prometheus' extrapolating `increase()` would give
fractional counts over edges slatune does not choose; the raw samples give Triton's own integers.

Servers are told apart by a label every series of theirs carries (`server`, which
`slatune prometheus config` sets on each target). A server without a sample in the lookback fails
with reason `no_data` (marked stale, retried with backoff, like an unreachable one); a Prometheus
that does not answer fails every server, `unreachable` or `http_error`. A server whose newest
sample is the one already read gives no window that pass. Trace files are the servers' own disks:
this source has none, so a window's latency comes from the models' histograms or Triton's summary.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import httpx

from collectors.parse import READ_FAMILIES
from collectors.sources import Reading, ScrapeFailed, Target

DEVICE_FAMILIES = "nv_(?:gpu|cpu)_.+"
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
"""A query's answer past this is refused (every due server fails `too_large`)."""


def selector(targets: list[Target], server_label: str, lookback_s: float) -> str:
    """The range selector of one pass: the families slatune reads, of the due servers."""
    names = "|".join([*READ_FAMILIES, DEVICE_FAMILIES])
    servers = "|".join(_re2_literal(t.server) for t in targets)
    return f'{{__name__=~"{names}",{server_label}=~"{servers}"}}[{max(round(lookback_s * 1000), 1)}ms]'


def _re2_literal(name: str) -> str:
    """`name` as an RE2 pattern matching itself only, inside a PromQL double-quoted string."""
    out = "".join(c if c.isalnum() or c in "_:" else "\\\\" + c for c in name)
    return out.replace('"', '\\"')


def readings(
    result: list[dict[str, Any]], targets: list[Target], server_label: str, lookback_s: float
) -> list[Reading | ScrapeFailed]:
    """Each target's reading from a matrix result: its series' samples from its newest scrape
    (series whose last sample is older belong to a model or a device that has gone). Pure."""
    by_server: dict[str, list[tuple[float, dict[str, str], str]]] = defaultdict(list)
    for item in result:
        labels = dict(item.get("metric", {}))
        values = item.get("values") or []
        if not values:
            continue
        stamp, raw = values[-1]
        by_server[labels.get(server_label, "")].append((float(stamp), labels, raw))
    out: list[Reading | ScrapeFailed] = []
    for target in targets:
        series = by_server.get(target.server, [])
        if not series:
            out.append(
                ScrapeFailed("no_data", f"Prometheus has no sample of it in the last {lookback_s:g} s")
            )
            continue
        newest = max(at for at, _, _ in series)
        samples = []
        for stamp, labels, raw in series:
            if not math.isclose(stamp, newest, abs_tol=1e-6):
                continue
            name = labels.pop("__name__", "")
            try:
                value = float(raw)
            except ValueError:
                value = math.nan  # refused by the same checks as a page's NaN counter
            samples.append((name, labels, value))
        out.append(Reading(newest, samples=samples))
    return out


class PrometheusSource:
    """Readings from the Prometheus at `url` (its API: `url`/api/v1/query)."""

    def __init__(
        self,
        url: str,
        *,
        lookback_s: float = 60.0,
        server_label: str = "server",
        deadline_s: float = 5.0,
        clock: Callable[[], float],
        transport: httpx.AsyncBaseTransport | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """`lookback_s` must cover at least one of Prometheus' scrape intervals (two, to ride out
        a missed scrape): its default, 60 s, is four of Prometheus' default 15 s."""
        self.url = url.rstrip("/")
        self.lookback_s = lookback_s
        self.server_label = server_label
        self.deadline_s = deadline_s
        self.clock = clock
        self._http = httpx.AsyncClient(
            timeout=deadline_s, trust_env=False, transport=transport, headers=headers or {}
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def read(self, targets: list[Target]) -> list[Reading | ScrapeFailed]:
        try:
            result = await self._query(selector(targets, self.server_label, self.lookback_s), self.clock())
        except ScrapeFailed as exc:
            return [exc for _ in targets]
        return readings(result, targets, self.server_label, self.lookback_s)

    async def _query(self, query: str, at: float) -> list[dict[str, Any]]:
        try:
            resp = await self._http.post(
                f"{self.url}/api/v1/query", data={"query": query, "time": f"{at:.3f}"}
            )
        except httpx.TimeoutException:
            raise ScrapeFailed("timeout", f"Prometheus gave no answer within {self.deadline_s:g} s") from None
        except httpx.HTTPError as exc:
            raise ScrapeFailed("unreachable", f"Prometheus: {exc.__class__.__name__}: {exc}") from None
        if len(resp.content) > MAX_RESPONSE_BYTES:
            raise ScrapeFailed("too_large", f"Prometheus' answer is {len(resp.content)} bytes")
        if resp.status_code >= 400:
            raise ScrapeFailed("http_error", f"Prometheus: HTTP {resp.status_code}: {resp.text[:200]}")
        try:
            body = resp.json()
        except ValueError:
            raise ScrapeFailed("malformed", "Prometheus' answer is not JSON") from None
        if body.get("status") != "success":
            raise ScrapeFailed("malformed", f"Prometheus: {body.get('error', 'no success')}")
        data = body.get("data") or {}
        if data.get("resultType") != "matrix":
            raise ScrapeFailed("malformed", f"Prometheus answered a {data.get('resultType')}, not a matrix")
        result: list[dict[str, Any]] = data.get("result") or []
        return result
