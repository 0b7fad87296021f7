"""Server-side end-to-end latency of every request, from Triton's trace files.

A server slatune starts runs with Triton's trace API on (`runtime.server.trace_flags`): every
request, at level TIMESTAMPS, one file per request (`log-frequency=1`, so a trace is on disk as
soon as its request is released, never held back until a batch of traces fills). A trace holds,
in the server's monotonic clock (ns), the frontend's stamps (HTTP_RECV_START .. HTTP_SEND_END,
GRPC_WAITREAD_END .. GRPC_SEND_END) and the core's (REQUEST_START, QUEUE_START, COMPUTE_START,
COMPUTE_END, REQUEST_END). A request's latency here is from its arrival (the frontend began reading
it) to the end of the last response's send: queue time included, for every request, whoever sent
it. What it leaves out is the network and the client's own time, nothing on loopback.

`TraceReader` reads the new files of one server on each collector pass, deletes them, and keeps
cumulative per-model histograms (the `"server"` origin of `ModelSample.latency`), so that a window
is the bucket-wise increase between two passes, as for every other histogram. The parsing is pure
(`trace_latencies`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain.windows import Histogram
from runtime.demo_models.support import LATENCY_BUCKETS_MS as BUILTIN_BUCKETS_MS
from runtime.server import TRACE_FILE

log = logging.getLogger("slatune.collectors.trace")

# Millisecond bounds, the built-in models' own (runtime/demo_models/support.py): past any client
# timeout in use (30 s), then +Inf.
LATENCY_BUCKETS_MS = (*(float(b) for b in BUILTIN_BUCKETS_MS), float("inf"))
# Arrival: the frontend began reading the request (HTTP), or had read it (gRPC: its WAITREAD_START
# is when the handler began waiting, before the request came). REQUEST_START where neither is.
ARRIVAL = ("HTTP_RECV_START", "GRPC_WAITREAD_END", "REQUEST_START")
# Done: the last response sent (a streamed request sends one per token), else the request's end.
DONE = ("HTTP_SEND_END", "GRPC_SEND_END", "REQUEST_END", "INFER_RESPONSE_COMPLETE")
MAX_FILES_PER_READ = 50_000
"""Files one pass reads at most (the rest wait for the next): bounds a pass after a long pause."""
PARTIAL_GRACE_S = 5.0
"""A file that does not parse may still be being written: it is retried for this long, then dropped."""


FIRST_SENT = ("HTTP_SEND_END", "GRPC_SEND_END")
"""A streamed request sends one response per token, each with its own send stamps: the first one's
end, from arrival, is its time to first token as the server saw it, queue included."""


@dataclass(frozen=True)
class TracedRequest:
    model: str
    latency_ms: float
    queue_ms: float | None
    first_response_ms: float | None = None
    """From arrival to the end of the first response's send (None without a send stamp)."""


def trace_latencies(records: Iterable[Mapping[str, Any]]) -> list[TracedRequest]:
    """The requests of one trace file's records (Triton writes a trace as several records with the
    same id: one naming the model, one per timestamp). A trace without a model, an arrival or an
    end (a child trace, a request cut off) gives nothing."""
    traces: dict[Any, dict[str, Any]] = {}
    for r in records:
        t = traces.setdefault(r.get("id"), {"stamps": {}, "first": None})
        if "model_name" in r:
            t["model"] = str(r["model_name"])
        if "parent_id" in r:
            t["child"] = True
        for s in r.get("timestamps") or ():
            name, ns = s.get("name"), s.get("ns")
            if isinstance(name, str) and isinstance(ns, int):
                stamps = t["stamps"]
                # A streamed request sends many responses: keep the first arrival, the last send.
                stamps[name] = (
                    max(stamps.get(name, ns), ns) if name in DONE else min(stamps.get(name, ns), ns)
                )
                if name in FIRST_SENT:
                    t["first"] = ns if t["first"] is None else min(t["first"], ns)
    out = []
    for t in traces.values():
        stamps = t["stamps"]
        if "model" not in t or t.get("child"):
            continue
        start = next((stamps[n] for n in ARRIVAL if n in stamps), None)
        ends = [stamps[n] for n in DONE if n in stamps]
        if start is None or not ends or max(ends) < start:
            continue
        queue = None
        if "QUEUE_START" in stamps and "COMPUTE_START" in stamps:
            queue = max(stamps["COMPUTE_START"] - stamps["QUEUE_START"], 0) / 1e6
        first = None if t["first"] is None else max(t["first"] - start, 0) / 1e6
        out.append(TracedRequest(t["model"], (max(ends) - start) / 1e6, queue, first))
    return out


def observe(h: Histogram, value_ms: float, bounds: Iterable[float] = LATENCY_BUCKETS_MS) -> None:
    """Add one observation to a cumulative histogram (every bound at or above it counts it)."""
    for le in bounds:
        if value_ms <= le:
            h.buckets[le] = h.buckets.get(le, 0.0) + 1.0
        else:
            h.buckets.setdefault(le, 0.0)
    h.count += 1.0
    h.sum += value_ms


@dataclass
class TraceReader:
    """One server's trace directory: read, counted into cumulative histograms, deleted."""

    directory: Path
    streaming: frozenset[str] = frozenset()
    """The models that stream: their first response is timed too (`first_responses`)."""
    histograms: dict[str, Histogram] = field(default_factory=dict)
    """Per model, every traced request since the reader began (never reset: a window is the increase)."""
    first_responses: dict[str, Histogram] = field(default_factory=dict)
    """Per streaming model, every traced request's time to first response, likewise."""
    read_files: int = 0
    dropped_files: int = 0
    """Files that never parsed (kept `PARTIAL_GRACE_S`, then removed)."""

    def read(self) -> dict[str, Histogram]:
        """Take every complete trace file written since the last read; the cumulative histograms."""
        try:
            names = [n for n in os.listdir(self.directory) if n.startswith(TRACE_FILE + ".")]
        except FileNotFoundError:
            return self.histograms
        names.sort(key=_index)
        for name in names[:MAX_FILES_PER_READ]:
            path = self.directory / name
            try:
                text = path.read_text()
                records = json.loads(text)
                if not isinstance(records, list):
                    raise ValueError("not a list of trace records")
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                self._partial(path, exc)
                continue
            for req in trace_latencies(r for r in records if isinstance(r, dict)):
                observe(self.histograms.setdefault(req.model, Histogram()), req.latency_ms)
                if req.model in self.streaming and req.first_response_ms is not None:
                    observe(self.first_responses.setdefault(req.model, Histogram()), req.first_response_ms)
            path.unlink(missing_ok=True)
            self.read_files += 1
        return self.histograms

    def _partial(self, path: Path, exc: Exception) -> None:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return
        if age > PARTIAL_GRACE_S:
            log.warning("trace file %s does not parse, dropped: %s", path, exc)
            path.unlink(missing_ok=True)
            self.dropped_files += 1


def _index(name: str) -> int:
    tail = name.rsplit(".", 1)[-1]
    return int(tail) if tail.isdigit() else -1
