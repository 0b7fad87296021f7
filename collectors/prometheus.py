"""Prometheus as a source: the collector's readings from a Prometheus server's HTTP API instead of
each server's page, for fleets Prometheus (or Thanos, or Mimir behind the same API) already scrapes.

A reading is each series' newest raw sample, not an `increase()` or a `rate()`: one instant query
per pass for every due server, of the families slatune reads, of `up`, and of `up`'s timestamp,
which is when Prometheus last scraped each server:

    {__name__=~"nv_inference_request_success|...|nv_(?:gpu|cpu)_.+|up", server=~"a|b"}
      or label_replace(timestamp(up{server=~"a|b"}), "slatune_scraped_at", "1", "", "")

One query is one consistent read of Prometheus' storage, and a scrape's samples are committed
together, so each server's values are those of the scrape `timestamp(up)` names. A series the
scrape no longer had (a model unloaded) carries Prometheus' stale marker and is not returned. Each
server's reading is stamped with its scrape's time. Windows are then made exactly as from pages
(`collectors.window`): the same counters, so the same increases, resets, bucket-wise histograms and
quantiles, with window edges at Prometheus' scrape times rather than the collector's. Prometheus'
extrapolating `increase()` would give fractional counts over edges slatune does not choose; the raw
samples give Triton's own integers.

Servers are told apart by a label every series of theirs carries (`server`, which
`slatune prometheus config` sets on each target). A server Prometheus has not scraped within
`lookback_s` fails with reason `no_data`, one whose last scrape failed (`up` 0) with `unreachable`
(both are marked stale and retried with backoff); a Prometheus that does not answer fails every
server. A server not scraped again since the last pass gives no window that pass. Trace files are
the servers' own disks: this source has none, so a window's latency comes from the models'
histograms or Triton's summary.
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
SCRAPED_LABEL = "slatune_scraped_at"
"""The label that marks the series of `timestamp(up)` in a pass's answer."""
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
"""A query's answer past this is refused (every due server fails `too_large`)."""


def selector(targets: list[Target], server_label: str) -> str:
    """The query of one pass: the families slatune reads and `up`, of the due servers, and when
    Prometheus last scraped each."""
    names = "|".join([*READ_FAMILIES, DEVICE_FAMILIES, "up"])
    servers = f'{server_label}=~"{"|".join(_re2_literal(t.server) for t in targets)}"'
    # `or` matches series on their labels without the name: the timestamps take a label of their own
    # so as not to be taken for `up` itself.
    scraped = f'label_replace(timestamp(up{{{servers}}}), "{SCRAPED_LABEL}", "1", "", "")'
    return f'{{__name__=~"{names}",{servers}}} or {scraped}'


def _re2_literal(name: str) -> str:
    """`name` as an RE2 pattern matching itself only, inside a PromQL double-quoted string."""
    out = "".join(c if c.isalnum() or c in "_:" else "\\\\" + c for c in name)
    return out.replace('"', '\\"')


def readings(
    result: list[dict[str, Any]], targets: list[Target], server_label: str, lookback_s: float, now: float
) -> list[Reading | ScrapeFailed]:
    """Each target's reading from an instant vector answering `selector`. Pure."""
    samples: dict[str, list[tuple[str, dict[str, str], float]]] = defaultdict(list)
    scraped: dict[str, float] = {}
    up: dict[str, float] = {}
    for item in result:
        labels = dict(item.get("metric", {}))
        server = labels.get(server_label, "")
        try:
            value = float(item["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            value = math.nan  # refused by the same checks as a page's NaN counter
        name = labels.pop("__name__", None)
        if SCRAPED_LABEL in labels:  # timestamp(up): when Prometheus last scraped the server
            scraped[server] = max(scraped.get(server, value), value)
        elif name == "up":
            up[server] = max(up.get(server, value), value)
        elif name is not None:
            samples[server].append((name, labels, value))
    out: list[Reading | ScrapeFailed] = []
    for target in targets:
        at = scraped.get(target.server)
        if at is None or not now - at <= lookback_s:
            out.append(ScrapeFailed("no_data", f"Prometheus has not scraped it in the last {lookback_s:g} s"))
        elif up.get(target.server) == 0:
            out.append(ScrapeFailed("unreachable", "Prometheus' last scrape of it failed (up 0)"))
        else:
            out.append(Reading(at, samples=samples.get(target.server, [])))
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
        """`lookback_s`: a server Prometheus has not scraped for longer fails `no_data`; two or
        more of Prometheus' scrape intervals (the default, 60 s, is four of its default 15 s)."""
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
        now = self.clock()
        try:
            result = await self._query(selector(targets, self.server_label), now)
        except ScrapeFailed as exc:
            return [exc for _ in targets]
        return readings(result, targets, self.server_label, self.lookback_s, now)

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
        if data.get("resultType") != "vector":
            raise ScrapeFailed("malformed", f"Prometheus answered a {data.get('resultType')}, not a vector")
        result: list[dict[str, Any]] = data.get("result") or []
        return result
